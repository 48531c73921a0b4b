"""Every consumer of the energy ledger gives the hand-computed energy and coverage, on every store it runs on.

Four hours of one node's four GPUs across the month boundary 2025-04-01T00:00Z, scraped every minute:
- GPU 0 at 300 W: job 11 (alpha-train) to 23:30, then job 12 (alpha-play): the job changes between two scrapes;
- GPU 1 at 200 W, no job: reported 22:00-23:00, gone (its counter still) until 01:00, back to 02:00: comes and goes;
- GPU 2 at 250 W, job 13 (alpha-train): silent from 23:40 to 00:20, across the hour and the month boundary, its counter
  running on (the 40 minutes of energy are bridged exactly and split between the months by time);
- GPU 3 at 450 W, job 14 (alpha-play): its driver reloaded at 00:30 (the counter restarted from zero).

Consumers: `aifmon rollup energy` (a subprocess), the Projects page's rows, the monthly report's figures and the
energy-budget evaluator's month. Stores: DuckDB with its hourly rows; VictoriaMetrics with the rows in PostgreSQL;
Prometheus alone (reads only: every hour computed from samples).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from aifmon.alerts.evaluator import AlertEvaluator
from aifmon.dashboard.accounting import month_energy
from aifmon.dashboard.pages.projects import project_rows
from aifmon.ingest.openmetrics import export_openmetrics
from aifmon.rollups.hourly import HourlyRollups
from aifmon.rollups.ledger import read_ledger
from aifmon.rollups.monthly_report import build_monthly_report
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.split_store import SplitStore
from aifmon.stores.store import RowStore, SampleReader, SampleWriter, open_store, series_key
from aifmon.telemetry.inventory import Inventory, load_inventory
from tests.conftest import inventory_text
from tests.servers import postgresql, prometheus_of, victoria_metrics

ROOT = Path(__file__).resolve().parent.parent
H, MIN = 3_600_000, 60_000
M = int(datetime(2025, 4, 1, tzinfo=UTC).timestamp() * 1000)  # the month boundary
START, END = M - 2 * H, M + 2 * H
NOW = M + 6 * H  # every hour settled (past the 3 h late window)
MARCH = (int(datetime(2025, 3, 1, tzinfo=UTC).timestamp() * 1000), M)
GPU = {"factory": "alpha", "system": "alpha-gpu", "node": "alphn0001"}
MODE = {"alpha-train": "Large Scale", "alpha-play": "Playground"}

# Hand-computed truth, J per project and month
TRUTH = {
    "2025-03": {"alpha-train": 300 * 5400 + 250 * 7200, "alpha-play": 300 * 1800 + 450 * 7200, "(unallocated)": 200 * 3600},
    "2025-04": {"alpha-train": 250 * 7200, "alpha-play": 300 * 7200 + 450 * 7200, "(unallocated)": 200 * 3600},
}
# covered GPU-time (intervals of at most 60 s) per month: 22:00-23:00 all four GPUs; 23:00-24:00 GPUs 0 and 3, GPU 2 to
# 23:40; 00:00-01:00 GPUs 0 and 3, GPU 2 from 00:20; 01:00-02:00 all four. Four GPUs every hour (GPU 1's bridged gap).
COVERED_S = {"2025-03": 4 * 3600 + 3600 + 2400 + 3600, "2025-04": 3600 + 2400 + 3600 + 4 * 3600}
MARCH_COVERAGE = COVERED_S["2025-03"] / (4 * 31 * 24 * 3600)


def _series() -> Iterator[tuple[str, dict[str, str], np.ndarray, np.ndarray]]:
    """(metric, labels, t_ms, values) of the four hours described in the module docstring."""
    t = np.arange(START, END + 1, MIN)

    def counter(gpu: int, times: np.ndarray, values: np.ndarray) -> tuple[str, dict[str, str], np.ndarray, np.ndarray]:
        return "aif_gpu_energy_joules_total", {**GPU, "gpu": str(gpu), "uuid": f"GPU-{gpu}", "model": "H100"}, times, values

    def jobs(gpu: int, times: np.ndarray, job: str, project: str) -> tuple[str, dict[str, str], np.ndarray, np.ndarray]:
        labels = {**GPU, "gpu": str(gpu), "job": job, "project": project, "access_mode": MODE[project]}
        return "aif_gpu_job_info", labels, times, np.ones(len(times))

    yield counter(0, t, 1e6 + 300.0 * (t - START) / 1000)
    yield jobs(0, t[t <= M - 30 * MIN], "11", "alpha-train")
    yield jobs(0, t[t > M - 30 * MIN], "12", "alpha-play")
    seen = (t <= M - H) | (t >= M + H)
    on_s = np.minimum(t - START, H) / 1000 + np.maximum(t - (M + H), 0) / 1000  # seconds GPU 1 was powered
    yield counter(1, t[seen], 5e5 + 200.0 * on_s[seen])
    heard = (t <= M - 20 * MIN) | (t >= M + 20 * MIN)
    yield counter(2, t[heard], 250.0 * (t[heard] - START) / 1000)
    yield jobs(2, t[heard], "13", "alpha-train")
    reload_at = M + 30 * MIN
    yield counter(3, t, np.where(t < reload_at, 7e6 + 450.0 * (t - START) / 1000, 450.0 * (t - reload_at + MIN) / 1000))
    yield jobs(3, t, "14", "alpha-play")


def _write(store: SampleWriter) -> None:
    for metric, labels, t, values in _series():
        sid = store.series_ids([series_key(metric, labels)])[0]
        store.append(np.full(len(t), sid), t, values)


@dataclass
class Figures:
    """What each consumer says: J per project for March (and coverage), for April's finished hours (the evaluator)."""

    march: dict[str, dict[str, float]]
    coverage: dict[str, float]
    april: dict[str, dict[str, float]]


def _cli(args: list[str], env: dict[str, str], start: str, end: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "aifmon", "--quiet", "rollup", "energy", *args, "--start", start, "--end", end,
                           "--by", "project", "--format", "json"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _figures(store: SampleReader, inventory: Inventory, cli_args: list[str], env: dict[str, str], tmp: Path) -> Figures:
    kwh = 3.6e6
    cli_march = _cli(cli_args, env, "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z")
    cli_april = _cli(cli_args, env, "2025-04-01T00:00:00Z", "2025-04-01T06:00:00Z")
    page = month_energy(store, inventory, "2025-03", NOW)
    report = build_monthly_report(store, inventory, "2025-03", now_ms=NOW)
    evaluator = AlertEvaluator(store, inventory, state_path=tmp / "state.json", notifiers=[])
    return Figures(
        march={"rollup energy": {r["project"]: r["energy_kwh"] * kwh for r in cli_march["rows"]},
               "Projects page": {r["project"]: r["energy_kwh"] * kwh for r in project_rows(page, inventory).to_dict("records")},
               "monthly report": {r["project"]: r["energy_kwh"] * kwh for r in report.by["project"].rows.to_dict("records")}},
        coverage={"rollup energy": cli_march["coverage"], "Projects page": page.by(inventory, "total").coverage,
                  "monthly report": report.provenance["coverage"]},
        april={"rollup energy": {r["project"]: r["energy_kwh"] * kwh for r in cli_april["rows"]},
               "budget evaluator": evaluator._month_energy(NOW).to_dict()},
    )


@pytest.fixture(scope="module", params=["duckdb", "victoriametrics+postgresql", "prometheus"])
def figures(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Figures]:
    tmp = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    inventory = load_inventory(_inventory_file(tmp))
    inv = ["--inventory", str(tmp / "inventory.yaml")]
    duck = DuckDBStore(tmp / "samples.duckdb")
    _write(duck)
    if request.param == "duckdb":
        HourlyRollups(duck, inventory).catch_up(now_ms=NOW)
        duck.close()
        with DuckDBStore(tmp / "samples.duckdb", read_only=True) as store:
            yield _figures(store, inventory, [*inv, "--store", f"duckdb:///{tmp / 'samples.duckdb'}"], {}, tmp)
    elif request.param == "prometheus":
        with (tmp / "samples.om").open("w") as fh:
            export_openmetrics(duck, fh, 0, 2**62)
        duck.close()
        with prometheus_of(tmp / "samples.om", tmp) as url, open_store(url, needs=SampleReader) as store:
            yield _figures(store, inventory, [*inv, "--store", url], {}, tmp)
    else:
        duck.close()
        with victoria_metrics(tmp, extra_args=("-retentionPeriod=100y",)) as vm, postgresql() as pg:
            vm_url = vm.url.replace("http://", "victoriametrics+http://")
            os.environ.update(pg.env)  # the rows store's credentials, as the site stack's environment gives them
            try:
                with open_store(vm_url, needs=SampleWriter) as writer:
                    _write(writer)
                vm.force_flush()
                with open_store(vm_url, needs=SampleReader) as samples, open_store(pg.url, needs=RowStore) as rows:
                    split = SplitStore(samples, rows, since_ms=START)
                    HourlyRollups(split, inventory).catch_up(now_ms=NOW)
                    yield _figures(split, inventory, [*inv, "--store", vm_url, "--rows-store", pg.url], pg.env, tmp)
            finally:
                for name in pg.env:
                    os.environ.pop(name, None)


@pytest.mark.parametrize("consumer", ["rollup energy", "Projects page", "monthly report"])
def test_march_energy_and_coverage_are_the_hand_computed_truth(figures: Figures, consumer: str) -> None:
    got = {p: j for p, j in figures.march[consumer].items() if j}
    assert got == pytest.approx(TRUTH["2025-03"], rel=1e-9)
    assert figures.coverage[consumer] == pytest.approx(MARCH_COVERAGE, rel=1e-9)


@pytest.mark.parametrize("consumer", ["rollup energy", "budget evaluator"])
def test_april_energy_is_the_hand_computed_truth(figures: Figures, consumer: str) -> None:
    got = {p: j for p, j in figures.april[consumer].items() if j}
    assert got == pytest.approx(TRUTH["2025-04"], rel=1e-9)


def test_a_range_without_data_says_so(tmp_path: Path) -> None:
    """A read of hours the store has no sample or row for is empty and says so (the CLI prints it as a warning)."""
    inventory = load_inventory(_inventory_file(tmp_path))
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        _write(store)
        read = read_ledger(store, inventory, START - 48 * H, START - 24 * H, NOW)
    assert read.empty and read.windows_from_samples == 0  # the hours before the first sample are not even read
    assert read.notes["no_data"] == "no samples or ledger rows from 2025-03-29T22:00:00Z to 2025-03-30T22:00:00Z"
    assert read.by(inventory, "project").coverage == 0.0


def _inventory_file(folder: Path) -> Path:
    (folder / "inventory.yaml").write_text(inventory_text())
    return folder / "inventory.yaml"


def test_a_store_without_rows_reads_each_settled_hour_once(tmp_path: Path) -> None:
    """On Prometheus alone every hour comes from samples: a month's read computes only the hours that hold samples (the
    span asked in one query), and a second read none of the settled ones (kept in the process's memory)."""
    inventory = load_inventory(_inventory_file(tmp_path))
    with DuckDBStore(tmp_path / "s.duckdb") as duck:
        _write(duck)
        with (tmp_path / "s.om").open("w") as fh:
            export_openmetrics(duck, fh, 0, 2**62)
    with prometheus_of(tmp_path / "s.om", tmp_path) as url, open_store(url, needs=SampleReader) as store:
        computed: list[list[str]] = [[], []]
        for steps in computed:
            read = read_ledger(store, inventory, *MARCH, NOW, progress=steps.append)
            assert {p: j for p, j in read.by(inventory, "project").rows.set_index("project")["energy_kwh"].items() if j} == \
                pytest.approx({p: j / 3.6e6 for p, j in TRUTH["2025-03"].items()}, rel=1e-9)
    assert computed[0] == ["2025-03-31T22:00:00Z to 2025-03-31T23:00:00Z computed from samples",
                           "2025-03-31T23:00:00Z to 2025-04-01T00:00:00Z computed from samples"]
    assert computed[1] == []


def test_the_embedded_store_reads_each_hour_once_until_it_is_written(tmp_path: Path) -> None:
    """DuckDB without rows: a second read computes no hour (kept in memory), and after a write (late samples of a fifth
    GPU, then a compaction) both hours are computed again and the late energy is in: the store counts its writes."""
    inventory = load_inventory(_inventory_file(tmp_path))
    hours = ["2025-03-31T22:00:00Z to 2025-03-31T23:00:00Z computed from samples",
             "2025-03-31T23:00:00Z to 2025-04-01T00:00:00Z computed from samples"]
    late = 100.0 * 3600  # GPU 4 at 100 W, no job, 22:00-23:00, written after the first reads

    def march(store: DuckDBStore) -> tuple[list[str], dict[str, float]]:
        steps: list[str] = []
        rows = read_ledger(store, inventory, *MARCH, NOW, progress=steps.append).by(inventory, "project").rows
        return steps, {p: j * 3.6e6 for p, j in rows.set_index("project")["energy_kwh"].items() if j}

    with DuckDBStore(tmp_path / "s.duckdb") as store:
        _write(store)
        assert march(store) == (hours, pytest.approx(TRUTH["2025-03"], rel=1e-9))
        assert march(store) == ([], pytest.approx(TRUTH["2025-03"], rel=1e-9))
        t = np.arange(START, M - H + 1, MIN)
        labels = {**GPU, "gpu": "4", "uuid": "GPU-4", "model": "H100"}
        store.append(np.full(len(t), store.series_ids([series_key("aif_gpu_energy_joules_total", labels)])[0]), t, 100.0 * (t - START) / 1000)
        with_late = {**TRUTH["2025-03"], "(unallocated)": TRUTH["2025-03"]["(unallocated)"] + late}
        assert march(store) == (hours, pytest.approx(with_late, rel=1e-9))
        store.compact(NOW)
        assert march(store) == (hours, pytest.approx(with_late, rel=1e-9))
        assert march(store) == ([], pytest.approx(with_late, rel=1e-9))
