"""A small month written into a store sample by sample, and its energy per project worked out by hand.

Four GPUs of the test inventory (`tests.conftest.inventory_text`) scraped every minute for three hours from
2025-03-01T00:00Z: on alpha, job 101 of alpha-train holds GPUs 0 and 1 of alphn0001 for the first two hours,
then job 102 of alpha-play holds GPU 0 for the third while GPU 1 idles; job 103 of alpha-play holds GPU 0 of
alphn0002 from minute 31 to minute 150; on beta, job 201 of beta-science holds GPU 0 of betan0001 throughout.
Each GPU draws a whole number of watts that changes every minute; its counter starts at (index + 1) MJ.
Beside them: each node's BMC power and alpha's facility meter, so that node, IT and facility figures exist.
The first two hours are rolled up into the hourly tables; the third is left for each reader to compute.

With `previous_month=True` the store also holds two hours of February, 20:00 to 22:00 on the 28th (`PREVIOUS_*`, for
month-over-month):
only alphn0009 reports (a node retired at the month's end); job 091 of alpha-train holds its GPU 0 at 500 W throughout,
GPU 1 idles at 100 W and misses the scrapes of minutes 61 to 69 (one 10-minute interval: its energy still counts, its
time is not covered), the node's BMC reads 1500 W and alpha's facility meter of the time (feed `old`, replaced by
`main` at the month's turn) 2500 W; the March nodes and beta are silent. No February meter runs on into March: the
ledger bridges a meter's silence however long (counters exactly, power as an estimate), so meters that reported in
both months would carry energy into February's last two hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from aifmon.rollups.hourly import SETTLE_MS, HourlyRollups
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key
from aifmon.telemetry.inventory import Inventory

MONTH = "2025-03"
START_MS = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp() * 1000)
REPORT_AT_MS = int(datetime(2025, 4, 1, 6, tzinfo=UTC).timestamp() * 1000)  # when the monthly report is made: the month is over
STEP_MS = 60_000
SCRAPES = 181  # minute 0 to minute 180: three hours of intervals
HOUR_MS = 3_600_000
ACCESS_MODE = {"alpha-train": "Large Scale", "alpha-play": "Playground", "beta-science": "AI for Science"}
GPUS = [  # factory, system, node, gpu, model
    ("alpha", "alpha-gpu", "alphn0001", "0", "H100-SXM5-80GB"),
    ("alpha", "alpha-gpu", "alphn0001", "1", "H100-SXM5-80GB"),
    ("alpha", "alpha-gpu", "alphn0002", "0", "H100-SXM5-80GB"),
    ("beta", "beta-gpu", "betan0001", "0", "A100-SXM4-40GB"),
]
NODE_POWER_W = {("alpha", "alpha-gpu", "alphn0001"): 1900.0, ("alpha", "alpha-gpu", "alphn0002"): 1300.0,
                ("beta", "beta-gpu", "betan0001"): 1100.0}
ALPHA_FACILITY_W = 4000.0

PREVIOUS_MONTH = "2025-02"
PREVIOUS_START_MS = int(datetime(2025, 2, 28, 20, tzinfo=UTC).timestamp() * 1000)
PREVIOUS_SCRAPES = 121  # minute 0 (20:00) to minute 120 (22:00): two hours of intervals
PREVIOUS_GPU_W = (500.0, 100.0)  # GPUs 0 and 1 of alphn0001
PREVIOUS_MISSED = range(61, 70)  # scrapes GPU 1 misses
PREVIOUS_NODE_W = 1500.0
PREVIOUS_FACILITY_W = 2500.0
ALLOCATION_MWH = {"alpha-train": 0.0015, "alpha-play": 0.002}  # beta-science has none


def with_allocations(inventory_text: str) -> str:
    """The test inventory's text with `ALLOCATION_MWH` added to its projects."""
    for project, mwh in ALLOCATION_MWH.items():
        head = f"  - id: {project}\n"
        at = inventory_text.index(head)
        inventory_text = inventory_text[:at] + head + f"    allocation_mwh: {mwh}\n" + inventory_text[at + len(head):]
    return inventory_text


def job_of(gpu: int, minute: int) -> tuple[str, str] | None:
    """(job, project) holding `gpu` (an index into GPUS) in the minute that ends at scrape `minute`; None: idle."""
    if gpu in (0, 1) and minute <= 120:
        return "101", "alpha-train"
    if gpu == 0:
        return "102", "alpha-play"
    if gpu == 2 and 31 <= minute <= 150:
        return "103", "alpha-play"
    if gpu == 3:
        return "201", "beta-science"
    return None


def power_w(gpu: int, minute: int) -> float:
    """The GPU's draw over the minute that ends at scrape `minute`, W: 60-70 W idle, 250-640 W in a job."""
    if job_of(gpu, minute) is None:
        return 60.0 + (minute + gpu) % 11
    return 250.0 + 100 * gpu + (7 * minute + 13 * gpu) % 90


@dataclass(frozen=True)
class Truth:
    """Per project (and `(unallocated)`): GPU energy, kWh; GPU-hours held by jobs, h; share of node energy apart
    from the GPUs, kWh."""

    energy_kwh: dict[str, float]
    gpu_hours: dict[str, float]
    node_other_kwh: dict[str, float]


def truth() -> Truth:
    """Every minute of every GPU, added up: the minute's energy goes to the job holding the GPU in it. Per node and
    clock hour, what the node drew beyond its GPUs is split by the GPU-seconds each job held there; the GPU-time no
    job held carries the rest, as `(unallocated)`."""
    energy_j: dict[str, float] = {}
    seconds: dict[str, float] = {}
    gpu_j: dict[tuple[str, int], float] = {}  # per (node, hour)
    held_s: dict[tuple[str, int, str], float] = {}  # per (node, hour, project)
    for gpu, (_, _, node, _, _) in enumerate(GPUS):
        for minute in range(1, SCRAPES):
            held = job_of(gpu, minute)
            project = held[1] if held else "(unallocated)"
            hour = (minute - 1) // 60  # the clock hour the minute ends in
            energy_j[project] = energy_j.get(project, 0.0) + power_w(gpu, minute) * 60.0
            gpu_j[(node, hour)] = gpu_j.get((node, hour), 0.0) + power_w(gpu, minute) * 60.0
            held_s[(node, hour, project)] = held_s.get((node, hour, project), 0.0) + 60.0
            if held:
                seconds[project] = seconds.get(project, 0.0) + 60.0
    other_j: dict[str, float] = {}
    for (node, hour, project), s in held_s.items():
        node_j = next(w for (_, _, n), w in NODE_POWER_W.items() if n == node) * 3600.0
        gpu_seconds = 3600.0 * sum(1 for g in GPUS if g[2] == node)
        other_j[project] = other_j.get(project, 0.0) + (node_j - gpu_j[(node, hour)]) * s / gpu_seconds
    return Truth({p: j / 3.6e6 for p, j in energy_j.items()}, {p: s / 3600.0 for p, s in seconds.items()},
                 {p: j / 3.6e6 for p, j in other_j.items()})


def write_store(path: Path, inventory: Inventory, previous_month: bool = False) -> None:
    """Write the three hours into a new DuckDB store at `path` (with `previous_month`, February's two hours before
    them) and roll up every hour up to March's first two."""
    store = DuckDBStore(path)
    energy = store.series_ids([series_key("aif_gpu_energy_joules_total", {
        "factory": f, "system": s, "node": n, "gpu": g, "uuid": f"GPU-{i:08x}", "model": m}) for i, (f, s, n, g, m) in enumerate(GPUS)])
    nodes = store.series_ids([series_key("aif_node_power_watts", {"factory": f, "system": s, "node": n, "source": "bmc"})
                              for f, s, n in NODE_POWER_W])
    facility = store.series_ids([series_key("aif_facility_power_watts", {"factory": "alpha", "feed": "main"})])
    if previous_month:
        _write_previous(store)
    jobs: dict[tuple[int, str], int] = {}
    counters = np.array([1e6 * (i + 1) for i in range(len(GPUS))])
    for minute in range(SCRAPES):
        t_ms = START_MS + minute * STEP_MS
        if minute:
            counters += [power_w(gpu, minute) * 60.0 for gpu in range(len(GPUS))]
        held = [(gpu, job_of(gpu, minute)) for gpu in range(len(GPUS))] if minute else []
        for gpu, job in held:
            if job is not None and (gpu, job[0]) not in jobs:
                f, s, n, g, _ = GPUS[gpu]
                jobs[(gpu, job[0])] = int(store.series_ids([series_key("aif_gpu_job_info", {
                    "factory": f, "system": s, "node": n, "gpu": g, "job": job[0], "project": job[1],
                    "access_mode": ACCESS_MODE[job[1]]})])[0])
        info = [jobs[(gpu, job[0])] for gpu, job in held if job is not None]
        ids = np.concatenate([energy, nodes, facility, np.array(info, dtype=energy.dtype)])
        values = np.concatenate([counters, list(NODE_POWER_W.values()), [ALPHA_FACILITY_W], np.ones(len(info))])
        store.append(ids, np.full(len(ids), t_ms, dtype=np.int64), values)
    HourlyRollups(store, inventory).catch_up(now_ms=START_MS + 2 * HOUR_MS + SETTLE_MS)
    store.close()


def _write_previous(store: DuckDBStore) -> None:
    """February's two hours (module docstring): GPUs 0 and 1 of alphn0009, its BMC and alpha's old facility meter."""
    node_labels = {"factory": "alpha", "system": "alpha-gpu", "node": "alphn0009"}
    energy = store.series_ids([series_key("aif_gpu_energy_joules_total", {**node_labels, "gpu": str(g), "uuid": f"GPU-old-{g}",
                                                                          "model": "H100-SXM5-80GB"}) for g in (0, 1)])
    node = store.series_ids([series_key("aif_node_power_watts", {**node_labels, "source": "bmc"})])
    facility = store.series_ids([series_key("aif_facility_power_watts", {"factory": "alpha", "feed": "old"})])
    job = store.series_ids([series_key("aif_gpu_job_info", {**node_labels, "gpu": "0", "job": "091", "project": "alpha-train",
                                                            "access_mode": "Large Scale"})])
    for minute in range(PREVIOUS_SCRAPES):
        counters = np.array([50_000.0 + w * 60.0 * minute for w in PREVIOUS_GPU_W])
        gpus = [0] if minute in PREVIOUS_MISSED else [0, 1]
        ids = np.concatenate([energy[gpus], node, facility, job if minute else job[:0]])
        values = np.concatenate([counters[gpus], [PREVIOUS_NODE_W, PREVIOUS_FACILITY_W], np.ones(1 if minute else 0)])
        store.append(ids, np.full(len(ids), PREVIOUS_START_MS + minute * STEP_MS, dtype=np.int64), values)
