"""Green500-style energy efficiency of an HPL run, with the EEHPC measurement level it qualifies for.

GFlops/W = Rmax / average power over the HPL core phase (the `HPL_pdgesv()` run), the measured power
scaled up by the measured fraction of the machine (Levels 1 and 2), as the EEHPC WG Power Measurement
Methodology v2.0 (2015) defines it. Its level rules, as this module checks them:

| | Level 1 | Level 2 | Level 3 |
|---|---|---|---|
| core phase | whole core phase, >= 1 min | same | same, <= 10 s of it uncovered |
| machine fraction | whole, or >= 40 kW, or the largest of 1/10 of the nodes, 15 nodes, 2 kW | whole, or the largest of 1/8, 15 nodes, 10 kW | whole machine |
| readings | - | >= 10 in the core phase, plus full-run average and idle power | integrating energy meter |
| subsystems | compute nodes | all participating, measured or estimated | all, measured |
| meter accuracy | 5 % | 2 % | 1 % |

Each level includes the ones below it. The result names the level reached and, for the next one,
every rule the measurement misses.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from aifmon.rollups.counters import counter_increments, power_integral
from aifmon.stores.store import RowStore, RowWriter, SampleReader, Store, open_store
from aifmon.telemetry.errors import UserError

HPL_TABLE = "hpl_efficiency"
TOP500_TABLE = "top500-2024-11-eurohpc.csv"
TOP500_SOURCE = "TOP500 November 2024 list (top500.org, TOP500_202411.xlsx): EuroHPC systems"
SUBSYSTEMS = ("gpu-boards", "compute", "all-estimated", "all-measured")
"""What the trace measures: GPU boards only; compute nodes (interconnect estimated at most); every
participating subsystem, some estimated; every subsystem measured."""

_RESULT = re.compile(r"^(W\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.eE+-]+)\s+([0-9.eE+-]+)\s*$")
_TIME = re.compile(r"^HPL_pdgesv\(\) (start|end) time\s+(.+?)\s*$")


class HplError(UserError, ValueError):
    """An HPL output or trace that cannot give a figure; the message says what is missing."""


@dataclass(frozen=True)
class HplRun:
    """The best passed run of an HPL output file: Rmax (GFlop/s) and its core phase (ms since the epoch, or None)."""

    rmax_gflops: float
    n: int
    time_s: float
    core_start_ms: int | None
    core_end_ms: int | None


def parse_hpl_output(text: str, tz: str = "UTC", source: str = "<HPL output>") -> HplRun:
    """The fastest run whose residual check PASSED (or that has no check) in HPL's output.

    HPL prints `HPL_pdgesv() start time` / `end time` in the node's local time without a zone: `tz` names it.
    """
    zone = ZoneInfo(tz)
    runs: list[dict] = []
    for line in text.splitlines():
        if m := _RESULT.match(line.strip()):
            runs.append({"n": int(m.group(2)), "time_s": float(m.group(6)), "gflops": float(m.group(7)), "passed": True})
        elif (m := _TIME.match(line.strip())) and runs:
            try:
                at = datetime.strptime(m.group(2), "%a %b %d %H:%M:%S %Y").replace(tzinfo=zone)
            except ValueError:
                raise HplError(f"{source}: cannot read the time {m.group(2)!r}") from None
            runs[-1][m.group(1)] = int(at.timestamp() * 1000)
        elif "FAILED" in line and runs:
            runs[-1]["passed"] = False
    passed = [r for r in runs if r["passed"]]
    if not passed:
        raise HplError(f"{source}: no HPL result line (T/V N NB P Q Time Gflops) with a passed residual check")
    best = max(passed, key=lambda r: r["gflops"])
    return HplRun(best["gflops"], best["n"], best["time_s"], best.get("start"), best.get("end"))


@dataclass(frozen=True)
class Trace:
    """Power over a window from a set of meters (streams): what the level rules look at."""

    average_w: float  # sum over meters of each meter's time-weighted average power, W
    energy_j: float  # sum over meters, J
    meters: int
    min_readings: int  # fewest readings of one meter inside the window
    uncovered_s: float  # most of the window one meter leaves without a reading interval, s
    integrating: bool  # energy counters (integrating meters), not power samples


def trace_from_store(store: SampleReader, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None,
                     nodes: list[str] | None = None) -> Trace:
    """Average power of `metric`'s series over [start_ms, end_ms]; a `_total` metric is an energy counter (J),
    anything else power samples (W). `nodes` keeps only series of those nodes."""
    margin = 15 * 60 * 1000
    frame = store.range(metric, start_ms - margin, end_ms + margin, match=match)
    if nodes is not None and len(frame):
        frame = frame[frame["node"].isin(nodes)] if "node" in frame else frame.iloc[0:0]
    if frame.empty:
        raise HplError(f"no {metric} samples{' for ' + str(match) if match else ''} around the core phase")
    stream = pd.factorize(frame["series_id"])[0].astype(np.int64)
    t, v = frame["t_ms"].to_numpy(), frame["value"].to_numpy()
    integrating = metric.endswith("_total")
    iv = (counter_increments if integrating else power_integral)(stream, t, v, start_ms, end_ms)
    meters = int(stream.max()) + 1
    covered = np.bincount(iv.stream, weights=iv.seconds, minlength=meters)
    energy = np.bincount(iv.stream, weights=iv.energy_j, minlength=meters)
    inside = (t >= start_ms) & (t <= end_ms)
    readings = np.bincount(stream[inside], minlength=meters)
    window_s = (end_ms - start_ms) / 1000.0
    if not (covered > 0).all():
        raise HplError(f"{int((covered == 0).sum())} of {meters} {metric} series have no reading interval in the core phase")
    return Trace(float((energy / covered).sum()), float(energy.sum()), meters, int(readings.min()),
                 float(window_s - covered.min()), integrating)


@dataclass(frozen=True)
class Measurement:
    """Everything the level rules judge, beside the trace."""

    rmax_gflops: float
    core_start_ms: int
    core_end_ms: int
    core: Trace
    measured_nodes: int
    total_nodes: int
    subsystems: str = "compute"
    meter_accuracy_pct: float | None = None
    full_run_average_w: float | None = None  # the whole run's average power, measured part, W
    idle_power_w: float | None = None  # idle power of the measured part, W


@dataclass(frozen=True)
class Efficiency:
    gflops_per_watt: float
    system_power_kw: float  # measured core-phase power scaled to the whole machine, kW
    level: int  # 0: not even Level 1
    why_not_next: list[str]
    measurement: Measurement
    level_rules: dict[int, list[str]] = field(default_factory=dict)  # level -> rules missed (empty: met)

    def as_dict(self) -> dict:
        m = self.measurement
        return {
            "rmax_gflops": m.rmax_gflops, "gflops_per_watt": self.gflops_per_watt, "system_power_kw": self.system_power_kw,
            "measured_power_kw": m.core.average_w / 1000.0, "measured_fraction": m.measured_nodes / m.total_nodes,
            "measured_nodes": m.measured_nodes, "total_nodes": m.total_nodes,
            "core_phase_s": (m.core_end_ms - m.core_start_ms) / 1000.0, "readings_in_core_phase": m.core.min_readings,
            "core_phase_uncovered_s": m.core.uncovered_s, "meter": "integrating energy counter" if m.core.integrating else "power samples",
            "subsystems": m.subsystems, "meter_accuracy_pct": m.meter_accuracy_pct,
            "full_run_average_kw": None if m.full_run_average_w is None else m.full_run_average_w / 1000.0,
            "idle_power_kw": None if m.idle_power_w is None else m.idle_power_w / 1000.0,
            "eehpc_level": self.level, "why_not_next_level": self.why_not_next,
            "methodology": "EEHPC WG Power Measurement Methodology v2.0 (2015): Rmax / average power over the HPL core phase",
        }


def _missed(m: Measurement, level: int) -> list[str]:
    """The rules of `level` alone (not of the levels below) that `m` misses."""
    core_s = (m.core_end_ms - m.core_start_ms) / 1000.0
    kw = m.core.average_w / 1000.0
    whole = m.measured_nodes >= m.total_nodes
    share = f"{m.measured_nodes} of {m.total_nodes} nodes ({m.measured_nodes / m.total_nodes:.1%}, {kw:.1f} kW)"
    out = []
    if level == 1:
        if core_s < 60:
            out.append(f"the core phase lasts {core_s:.0f} s; Level 1 needs at least 60 s")
        if m.core.uncovered_s > _sample_gap_s(m):
            out.append(f"{m.core.uncovered_s:.0f} s of the core phase have no reading; Level 1 measures the whole core phase")
        need = max(math.ceil(m.total_nodes / 10), min(15, m.total_nodes))
        if not (whole or kw >= 40 or (m.measured_nodes >= need and kw >= 2)):
            out.append(f"measured {share}; Level 1 needs the whole machine, or 40 kW, or at least {need} nodes (1/10, 15) and 2 kW")
        if m.subsystems == "gpu-boards":
            out.append("only GPU boards are measured; Level 1 needs the compute nodes' power")
        if m.meter_accuracy_pct is not None and m.meter_accuracy_pct > 5:
            out.append(f"meter accuracy {m.meter_accuracy_pct:g} %; Level 1 needs 5 % or better")
    elif level == 2:
        need = max(math.ceil(m.total_nodes / 8), min(15, m.total_nodes))
        if not (whole or (m.measured_nodes >= need and kw >= 10)):
            out.append(f"measured {share}; Level 2 needs the whole machine or at least {need} nodes (1/8, 15) and 10 kW")
        if m.core.min_readings < 10:
            out.append(f"{m.core.min_readings} readings in the core phase; Level 2 needs at least 10")
        if m.full_run_average_w is None:
            out.append("no full-run average power; Level 2 reports it (give the run's start and end)")
        if m.idle_power_w is None:
            out.append("no idle power; Level 2 reports it (give an idle window)")
        if m.subsystems not in ("all-estimated", "all-measured"):
            out.append(f"subsystems measured: {m.subsystems}; Level 2 needs every participating subsystem measured or estimated")
        if m.meter_accuracy_pct is None or m.meter_accuracy_pct > 2:
            out.append(f"meter accuracy {'not stated' if m.meter_accuracy_pct is None else f'{m.meter_accuracy_pct:g} %'}; Level 2 needs 2 % or better")
    else:
        if not whole:
            out.append(f"measured {share}; Level 3 measures the whole machine")
        if not m.core.integrating:
            out.append("power samples, not an integrating energy meter; Level 3 needs energy counters")
        if m.core.uncovered_s > 10:
            out.append(f"{m.core.uncovered_s:.0f} s of the core phase uncovered; Level 3 allows at most 10 s")
        if m.subsystems != "all-measured":
            out.append(f"subsystems measured: {m.subsystems}; Level 3 needs every subsystem measured")
        if m.meter_accuracy_pct is None or m.meter_accuracy_pct > 1:
            out.append(f"meter accuracy {'not stated' if m.meter_accuracy_pct is None else f'{m.meter_accuracy_pct:g} %'}; Level 3 needs 1 % or better")
    return out


def _sample_gap_s(m: Measurement) -> float:
    """What one missing reading interval at the ends of the core phase amounts to: the mean spacing, s."""
    core_s = (m.core_end_ms - m.core_start_ms) / 1000.0
    return core_s / max(m.core.min_readings, 1)


def evaluate(m: Measurement) -> Efficiency:
    """GFlops/W and the EEHPC level `m` qualifies for, with what it misses for the next level."""
    if m.total_nodes <= 0 or not 0 < m.measured_nodes <= m.total_nodes:
        raise HplError(f"measured nodes ({m.measured_nodes}) must be between 1 and the machine's nodes ({m.total_nodes})")
    if m.subsystems not in SUBSYSTEMS:
        raise HplError(f"subsystems {m.subsystems!r}: expected one of {', '.join(SUBSYSTEMS)}")
    rules = {level: _missed(m, level) for level in (1, 2, 3)}
    level = 0
    while level < 3 and not rules[level + 1]:
        level += 1
    fraction = m.measured_nodes / m.total_nodes
    system_w = m.core.average_w / fraction  # Levels 1 and 2 scale up; at Level 3 the fraction is 1
    why = rules[level + 1] if level < 3 else []
    return Efficiency(m.rmax_gflops / system_w, system_w / 1000.0, level, why, m, rules)


def league_table(measured: list[dict] | None = None) -> pd.DataFrame:
    """The EuroHPC systems of the TOP500 November 2024 list by GFlops/W of their TOP500 entry, with
    `measured` rows (system, gflops_per_watt, eehpc_level) placed among them. Systems that submitted
    no power figure are listed last, without one."""
    with (resources.files("aifmon.telemetry") / "data" / TOP500_TABLE).open(encoding="utf-8") as fh:
        rows = [{"system": f"{r['system']} {r['partition']}".strip(), "country": r["country"], "accelerator": r["accelerator"],
                 "top500_rank": int(r["top500_rank"]), "rmax_pflops": float(r["rmax_pflops"]),
                 "power_kw": float(r["power_kw"]) if r["power_kw"] else math.nan,
                 "gflops_per_watt": float(r["gflops_per_watt_entry"]) if r["gflops_per_watt_entry"] else math.nan,
                 "source": TOP500_SOURCE} for r in csv.DictReader(fh)]
    for m in measured or []:
        rows.append({"system": m["system"], "country": m.get("country", ""), "accelerator": m.get("accelerator", ""),
                     "top500_rank": None, "rmax_pflops": m["rmax_gflops"] / 1e6, "power_kw": m["system_power_kw"],
                     "gflops_per_watt": m["gflops_per_watt"], "source": f"measured by aifmon (EEHPC Level {m['eehpc_level']})"})
    table = pd.DataFrame(rows).sort_values("gflops_per_watt", ascending=False, na_position="last", kind="stable")
    return table.reset_index(drop=True)


def read_hpl_file(path: str | Path, tz: str = "UTC") -> HplRun:
    path = Path(path)
    try:
        return parse_hpl_output(path.read_text(encoding="utf-8", errors="replace"), tz, str(path))
    except OSError as e:
        raise HplError(f"{path}: cannot read: {e.strerror}") from None


def measure_hpl(store: SampleReader, rmax_gflops: float, core_start_ms: int, core_end_ms: int, total_nodes: int,
                metric: str = "aif_node_power_watts", match: dict[str, str] | None = None, nodes: list[str] | None = None,
                measured_nodes: int | None = None, subsystems: str | None = None, meter_accuracy_pct: float | None = None,
                run: tuple[int, int] | None = None, idle: tuple[int, int] | None = None) -> Efficiency:
    """GFlops/W of an HPL run from a power (W) or energy (J, `_total`) trace in `store`, with its EEHPC level.

    `measured_nodes` defaults to the number of meters (series) in the trace, `subsystems` to what the
    metric measures (GPU boards for `aif_gpu_*`, compute nodes otherwise). `run` and `idle` are
    (start, end) windows in ms for the full-run average and the idle power that Level 2 reports.
    """
    if core_end_ms <= core_start_ms:
        raise HplError("the core phase must end after it starts")
    core = trace_from_store(store, metric, core_start_ms, core_end_ms, match, nodes)
    m = Measurement(
        rmax_gflops, core_start_ms, core_end_ms, core,
        measured_nodes=measured_nodes if measured_nodes is not None else core.meters, total_nodes=total_nodes,
        subsystems=subsystems or ("gpu-boards" if metric.startswith("aif_gpu_") else "compute"),
        meter_accuracy_pct=meter_accuracy_pct,
        full_run_average_w=trace_from_store(store, metric, *run, match, nodes).average_w if run else None,
        idle_power_w=trace_from_store(store, metric, *idle, match, nodes).average_w if idle else None,
    )
    return evaluate(m)


@contextlib.contextmanager
def trace_store(trace_file: str | None, store_url: str, read_only: bool = True) -> Iterator[SampleReader]:
    """The store to read a trace from: an OpenMetrics file loaded into a temporary embedded store, or `store_url`."""
    if trace_file is None:
        with open_store(store_url, read_only=read_only, needs=SampleReader) as store:
            yield store
        return
    from aifmon.ingest.openmetrics import import_openmetrics
    from aifmon.stores.duckdb_store import DuckDBStore

    with tempfile.TemporaryDirectory(prefix="aifmon-trace-") as tmp, DuckDBStore(Path(tmp) / "trace.duckdb") as trace:
        import_openmetrics(trace, trace_file)
        yield trace


def record_efficiency(store: RowWriter, e: Efficiency, factory: str, system: str) -> None:
    """Keep a result in the derived table the monthly report's league reads (one row per run, keyed by its core start)."""
    d = e.as_dict()
    row = pd.DataFrame([{"window_start_ms": e.measurement.core_start_ms, "factory": factory, "system": system,
                         "rmax_gflops": d["rmax_gflops"], "gflops_per_watt": d["gflops_per_watt"], "system_power_kw": d["system_power_kw"],
                         "eehpc_level": d["eehpc_level"], "why_not_next_level": "; ".join(d["why_not_next_level"])}])
    store.replace_rows(HPL_TABLE, e.measurement.core_start_ms, row)


def measured_runs(store: Store, start_ms: int, end_ms: int) -> list[dict]:
    """The runs `record_efficiency` kept whose core phase started in [start_ms, end_ms) (the league's measured rows);
    none on a store that keeps no derived tables (Prometheus, VictoriaMetrics)."""
    if not isinstance(store, RowStore):
        return []
    runs = store.read_rows(HPL_TABLE, start_ms, end_ms)
    return runs.to_dict(orient="records") if len(runs) else []


def format_efficiency(e: Efficiency, fmt: str) -> str:
    """The result as JSON, or as lines a person reads."""
    d = e.as_dict()
    if fmt == "json":
        return json.dumps(d, indent=2)
    level = f"Level {e.level}" if e.level else "no level (Level 1 rules missed)"
    lines = [
        f"{d['gflops_per_watt']:.2f} GFlops/W  = Rmax {d['rmax_gflops']:,.0f} GFlop/s / {d['system_power_kw']:,.1f} kW",
        f"  measured {d['measured_power_kw']:,.2f} kW on {d['measured_nodes']} of {d['total_nodes']} nodes "
        f"({d['measured_fraction']:.1%}), scaled to the machine; core phase {d['core_phase_s']:.0f} s, "
        f"{d['readings_in_core_phase']} readings per meter, {d['meter']}",
        f"  EEHPC v2.0: {level}",
    ]
    if e.level < 3:
        lines.append(f"  not Level {e.level + 1} because:")
        lines += [f"    - {why}" for why in e.why_not_next]
    return "\n".join(lines)
