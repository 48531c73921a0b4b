"""Exact energy per job, project, access mode, sector, system, factory, country and EuroHPC total.

Rules (so that every figure can be traced; the counter rules themselves are in `rollups.counters`):
- **GPU energy** comes from `aif_gpu_energy_joules_total` increments. A GPU is one stream whatever the
  series it arrives in (HA scrapers, backfill then live: its `factory`, `node`, `gpu` labels), so
  duplicates count once and out-of-order samples are put in order. Counter resets are detected; gaps
  are bridged exactly. A GPU of a live factory that has no counter (NVML before Volta has none) has its
  `aif_gpu_power_watts` integrated instead, and that energy is reported as estimated.
- **Attribution, from job info**: an increment covers (previous sample, sample] and belongs to the job
  whose `aif_gpu_job_info` sample for that GPU carries the same timestamp as the interval's end (the
  collector stamps one scrape's samples alike). If two jobs ever show on one GPU at once, one is kept so
  energy is not counted twice.
- **Attribution, from Slurm accounting** (`sacct` records, see `rollups.slurm_accounting`): an interval
  belongs to the jobs running on the GPU's node at the interval's end; a job holding k of a node's N
  GPUs gets k/N of each of the node's GPU intervals (sacct does not say which GPUs it held).
- **Node energy apart from the GPUs** (CPUs, memory, NICs, fans): per node, node energy is the
  integral of `aif_node_power_watts` (the BMC's reading, else hwmon's, else the estimate), or where a
  node has no power reading the GPU energy plus its RAPL CPU and DRAM counters
  (`aif_cpu_energy_joules_total`, resets and wraps detected). Its non-GPU part (node - GPUs, at least
  0) is split among the node's jobs **in proportion to the GPU-seconds each held on the node in each
  clock hour** (UTC; an interval counts in the hour its end falls in); the share of GPU-seconds no job
  held is `(unallocated)`. On a shared node a job that holds 2 of 8 GPUs for a whole hour thus carries
  a quarter of that hour's CPU, memory and fan energy. Splitting per hour makes a range's figures the
  sum of its hours', so month reports from hourly rollups agree with a direct rollup.
- Energy with no job is its own line, `(unallocated)`, so jobs + unallocated = measured total.
- **Coverage** is the share of GPU-time in the range covered by intervals no longer than `max_gap_s`;
  energy across a longer gap is still exact where a counter bridges it, but lowers the coverage.
- **Facility energy** integrates `aif_facility_power_watts` (all feeds of a factory); PUE = facility
  energy / IT energy (the sum of node energies) where a factory has a facility meter.
- **Derived figures**: kWh = J / 3.6e6; cost = attributed IT kWh (GPU + node share) x the factory's
  price; CO2e = the same kWh x the country's intensity from the shipped table, whose source and year
  travel with every result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rollups.counters import Intervals, counter_increments, power_integral
from rollups.slurm_accounting import JobAllocation
from telemetry.inventory import Inventory, carbon_intensity_table
from telemetry.store import Store

ENERGY_METRIC = "aif_gpu_energy_joules_total"
GPU_POWER_METRIC = "aif_gpu_power_watts"
JOB_METRIC = "aif_gpu_job_info"
NODE_POWER_METRIC = "aif_node_power_watts"
CPU_ENERGY_METRIC = "aif_cpu_energy_joules_total"
FACILITY_METRIC = "aif_facility_power_watts"
NODE_SOURCES = ("bmc", "hwmon", "estimate")  # which node power reading is used, best first
UNALLOCATED = "(unallocated)"
GROUPINGS = ("job", "project", "access_mode", "sector", "system", "factory", "country", "total")
EUROHPC = "EuroHPC"
JOB_KEYS = ["factory", "system", "job", "project", "access_mode"]
GPU_KEYS = ["factory", "system", "node", "gpu"]
_MARGIN_MS = 15 * 60 * 1000  # how far past each end of the range to look for the samples that straddle it
HOUR_MS = 3_600_000
_T_BITS = 42  # (stream << 42) | time offset in ms: one sortable int64 key; 2**42 ms is 139 years


@dataclass(frozen=True)
class Ledger:
    """Energy over one window, attributed: what the hourly rollups store and every report groups.

    `jobs`: one row per (factory, system, job, project, access_mode), `(unallocated)` included:
    `energy_j` GPU energy (J), `gpu_seconds` GPU-time the job held (s; 0 for unallocated),
    `node_other_j` the job's share of its nodes' non-GPU energy (J).
    `sites`: one row per factory: `gpu_energy_j`, `it_energy_j` (all node energy), `facility_energy_j`
    (NaN without meter samples), `estimated_j` (energy integrated from power across gaps, or from GPU
    power where no counter exists), `covered_s` and `expected_s` (GPU-time covered by short intervals,
    and the GPU-time of the window), `energy_samples`, `job_samples` (inputs seen: a fingerprint).
    """

    jobs: pd.DataFrame
    sites: pd.DataFrame
    start_ms: int
    end_ms: int
    resets: int = 0
    wraps: int = 0
    duplicates: int = 0
    attribution: str = "aif_gpu_job_info"


@dataclass(frozen=True)
class EnergyRollup:
    """Rows per group, and the provenance every figure carries."""

    rows: pd.DataFrame
    by: str
    start_ms: int
    end_ms: int
    coverage: float  # 0-1, see module docstring
    carbon_source: str
    total_energy_kwh: float  # GPU energy, kWh
    notes: dict = field(default_factory=dict)  # attribution source, resets, wraps, duplicates, estimated energy


class _Codes:
    """Dense integer codes for label tuples (GPUs, nodes, jobs), shared across metrics."""

    def __init__(self) -> None:
        self.index: dict[tuple, int] = {}

    def per_sample(self, frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
        """The code of each sample's `keys` labels; labels are looked up once per series, not per sample."""
        series, first = _first_of_each_series(frame)
        labels = frame[[k for k in keys if k in frame]].iloc[first].astype(object).fillna("")
        for k in keys:
            if k not in labels:
                labels[k] = ""
        per_series = np.fromiter((self.index.setdefault(t, len(self.index)) for t in labels[keys].itertuples(index=False, name=None)),
                                 dtype=np.int64, count=len(labels))
        return per_series[series]

    def frame(self, keys: list[str]) -> pd.DataFrame:
        return pd.DataFrame(list(self.index), columns=keys) if self.index else pd.DataFrame(columns=keys)


def _first_of_each_series(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(dense series code per sample, row of each series' first sample)."""
    sid = frame["series_id"].to_numpy()
    if len(sid) and (sid[1:] >= sid[:-1]).all():  # stores return samples by series: no hashing needed
        change = np.empty(len(sid), dtype=bool)
        change[0] = True
        np.not_equal(sid[1:], sid[:-1], out=change[1:])
        return np.cumsum(change) - 1, np.flatnonzero(change)
    codes, uniques = pd.factorize(sid)
    first = np.empty(len(uniques), dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
    return codes, first


def _sum_by(codes: np.ndarray, weights: np.ndarray, minlength: int) -> np.ndarray:
    """Sum of `weights` per code, float64 even when nothing is summed (np.bincount then gives int64)."""
    return np.bincount(codes, weights=weights, minlength=minlength).astype(np.float64, copy=False)


def _key(stream: np.ndarray, t_ms: np.ndarray, base_ms: int) -> np.ndarray:
    return (stream.astype(np.int64) << _T_BITS) | (t_ms.astype(np.int64) - base_ms)


def compute_ledger(store: Store, inventory: Inventory | None, start_ms: int, end_ms: int, max_gap_s: float = 60.0,
                   accounting: list[JobAllocation] | None = None, accounting_factory: str | None = None) -> Ledger:
    """Attributed energy over [start_ms, end_ms] (rules: module docstring).

    Without an inventory, GPUs that have no energy counter are not looked for (their power is not read),
    and accounting records cannot name access modes from projects (the QoS stands in).
    """
    if end_ms <= start_ms:
        raise ValueError("the range's end must be after its start")
    lo, hi = start_ms - _MARGIN_MS, end_ms + _MARGIN_MS
    gpus, nodes, jobs = _Codes(), _Codes(), _Codes()

    e = store.range(ENERGY_METRIC, lo, hi)
    gpu_of = gpus.per_sample(e, GPU_KEYS) if len(e) else np.zeros(0, np.int64)
    t_e = e["t_ms"].to_numpy() if len(e) else np.zeros(0, np.int64)
    iv = counter_increments(gpu_of, t_e, e["value"].to_numpy() if len(e) else np.zeros(0), start_ms, end_ms)
    from_power = _power_for_gpus_without_counter(store, inventory, gpus, lo, hi, start_ms, end_ms)
    estimated = np.zeros(len(iv.stream), dtype=bool)
    if from_power is not None:
        iv = _concat(iv, from_power)
        estimated = np.append(estimated, np.ones(len(from_power.stream), dtype=bool))
    gpu_table = gpus.frame(GPU_KEYS)
    node_of_gpu = np.fromiter((nodes.index.setdefault(fn, len(nodes.index)) for fn in
                               gpu_table[["factory", "node"]].itertuples(index=False, name=None)), dtype=np.int64, count=len(gpu_table))
    gpu_node = node_of_gpu[iv.stream]
    node_system = dict(zip(node_of_gpu.tolist(), gpu_table["system"].tolist()))

    if accounting is None:
        (idx, job_of), share, job_samples = _attribute_job_info(store, gpus, jobs, iv, lo, hi, start_ms, end_ms)
        attribution = "aif_gpu_job_info samples (per GPU)"
    else:
        (idx, job_of), share = _attribute_accounting(accounting, accounting_factory, inventory, nodes, jobs, node_of_gpu, gpu_node, iv)
        job_samples = pd.Series(dtype=np.int64)
        attribution = f"Slurm accounting records ({len(accounting)} jobs; shared nodes split by GPU count)"

    # Node energy apart from the GPUs, split per node and clock hour (so that a range's figures are the sum of
    # its hours') by the GPU-seconds each job held there; the free GPU-time's share is unallocated.
    hours = _Hours(start_ms, end_ms)
    measured, cpu, node_gap, node_system_extra, rapl = _node_energy(store, nodes, hours, lo, hi, start_ms, end_ms, max_gap_s)
    n_nodes, n_jobs = len(nodes.index), len(jobs.index) + 1  # job -1 (unallocated) is shifted to 0
    nh = gpu_node * hours.count + hours.of(iv.t_end_ms)  # (node, hour) cell of every interval
    cell_codes, cells = pd.factorize(nh[idx] * n_jobs + (job_of + 1))
    energy = _sum_by(cell_codes, iv.energy_j[idx] * share, minlength=len(cells))
    held = _sum_by(cell_codes, iv.seconds[idx] * share, minlength=len(cells))
    cell_nh, cell_job = np.divmod(np.asarray(cells, dtype=np.int64), n_jobs)
    held[cell_job == 0] = 0.0  # GPU-hours count allocated time only
    cells_n = n_nodes * hours.count
    has = np.flatnonzero(np.bincount(nh, minlength=cells_n))  # the (node, hour) cells with GPU intervals
    gpu_j = pd.Series(_sum_by(nh, iv.energy_j, minlength=cells_n)[has], index=has)
    gpu_s = pd.Series(_sum_by(nh, iv.seconds, minlength=cells_n)[has], index=has)
    all_nh = gpu_j.index.union(measured.index).union(cpu.index)
    gpu_j, gpu_s = gpu_j.reindex(all_nh, fill_value=0.0), gpu_s.reindex(all_nh, fill_value=0.0)
    it_j = measured.reindex(all_nh).fillna(gpu_j + cpu.reindex(all_nh, fill_value=0.0))
    other_j = (it_j - gpu_j).clip(lower=0.0)
    frac = np.divide(held, gpu_s.reindex(cell_nh).to_numpy(), out=np.zeros_like(held), where=gpu_s.reindex(cell_nh).to_numpy() > 0)
    taken = pd.Series(frac).groupby(cell_nh).sum()
    # every (node, hour) gets an unallocated cell for what no job held, even one without GPU intervals
    unalloc = pd.DataFrame({"nh": all_nh.to_numpy(), "job": 0, "energy_j": 0.0, "held": 0.0,
                            "frac": 1.0 - taken.reindex(all_nh, fill_value=0.0).to_numpy()})
    table = pd.concat([pd.DataFrame({"nh": cell_nh, "job": cell_job, "energy_j": energy, "held": held,
                                     "frac": np.where(cell_job == 0, 0.0, frac)}), unalloc], ignore_index=True)
    table["other_j"] = table["frac"] * other_j.reindex(table["nh"]).to_numpy()
    node_c = table["nh"].to_numpy() // hours.count
    job_c = table["job"].to_numpy()

    node_table = nodes.frame(["factory", "node"])
    systems = np.array([node_system.get(c, node_system_extra.get(c, "")) for c in range(n_nodes)], dtype=object)
    job_table = jobs.frame(["factory", "job", "project", "access_mode"])
    labels = {col: np.append(np.array([UNALLOCATED], dtype=object), job_table[col].to_numpy(dtype=object))
              for col in ("job", "project", "access_mode")}
    rows = pd.DataFrame({
        "factory": node_table["factory"].to_numpy()[node_c] if len(node_c) else np.zeros(0, dtype=object),
        "system": systems[node_c] if len(node_c) else np.zeros(0, dtype=object),
        **{col: labels[col][job_c] for col in labels},
        "energy_j": table["energy_j"].to_numpy(),
        "gpu_seconds": table["held"].to_numpy(),
        "node_other_j": table["other_j"].to_numpy(),
    })
    rows = rows.groupby(JOB_KEYS, as_index=False)[["energy_j", "gpu_seconds", "node_other_j"]].sum()
    rows = rows[(rows["energy_j"] != 0) | (rows["gpu_seconds"] != 0) | (rows["node_other_j"] != 0)].reset_index(drop=True)
    node_gpu_j = _sum_by(gpu_node, iv.energy_j, minlength=n_nodes)
    node_it_j = _sum_by(np.asarray(all_nh, dtype=np.int64) // hours.count, it_j.to_numpy(), minlength=n_nodes)
    node_gap_j = _sum_by(np.asarray(node_gap.index, dtype=np.int64) // hours.count, node_gap.to_numpy(), minlength=n_nodes)

    # per factory: measured totals, coverage, estimated energy, and the inputs seen (a fingerprint for late data)
    short = iv.interval_s <= max_gap_s
    streams = np.flatnonzero(np.bincount(iv.stream, minlength=len(gpu_table)))
    per_node = pd.DataFrame({
        "factory": node_table["factory"].to_numpy(),
        "gpu_energy_j": node_gpu_j,
        "it_energy_j": node_it_j,
        "covered_s": _sum_by(gpu_node[short], iv.seconds[short], minlength=n_nodes),
        "gpus": np.bincount(node_of_gpu[streams], minlength=n_nodes),
        "estimated_j": _sum_by(gpu_node[estimated], iv.energy_j[estimated], minlength=n_nodes) + node_gap_j,
    })
    sites = per_node.groupby("factory", as_index=False).sum()
    sites["expected_s"] = sites["gpus"] * (end_ms - start_ms) / 1000.0
    in_range = (t_e >= start_ms) & (t_e < end_ms)  # half-open, so each sample is counted in one hour
    energy_samples = _count_by_factory(gpu_of[in_range], gpu_table["factory"].to_numpy())
    sites = _with_facility(store, sites, lo, hi, start_ms, end_ms)
    sites["energy_samples"] = sites["factory"].map(energy_samples).fillna(0).astype(np.int64)
    sites["job_samples"] = sites["factory"].map(job_samples).fillna(0).astype(np.int64)
    return Ledger(rows, sites, start_ms, end_ms, iv.resets + rapl[0], iv.wraps + rapl[1], iv.duplicates + rapl[2], attribution)


def _count_by_factory(codes: np.ndarray, factory_of_code: np.ndarray) -> pd.Series:
    """Samples per factory, counted on integer codes (a string per sample would cost more than the rollup)."""
    per_code = np.bincount(codes, minlength=len(factory_of_code))
    return pd.Series(per_code).groupby(factory_of_code).sum() if len(factory_of_code) else pd.Series(dtype=np.int64)


def _concat(a: Intervals, b: Intervals) -> Intervals:
    return Intervals(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in ("stream", "t_end_ms", "energy_j", "seconds", "interval_s")),
                     resets=a.resets + b.resets, wraps=a.wraps + b.wraps, duplicates=a.duplicates + b.duplicates)


def _power_for_gpus_without_counter(store: Store, inventory: Inventory | None, gpus: _Codes, lo: int, hi: int,
                                    start_ms: int, end_ms: int) -> Intervals | None:
    """Integrated power of the GPUs that have no energy counter, read only for factories where the
    inventory counts more GPUs than the counters show."""
    if inventory is None:
        return None
    with_counter: dict[str, int] = {}
    for f, *_ in gpus.index:
        with_counter[f] = with_counter.get(f, 0) + 1
    short = [f.id for f in inventory.live_factories() if 0 < with_counter.get(f.id, 0) < f.gpu_count]
    frames = [p for p in (store.range(GPU_POWER_METRIC, lo, hi, match={"factory": f}) for f in short) if len(p)]
    if not frames:
        return None
    power = pd.concat(frames, ignore_index=True)
    power["series_id"] = pd.factorize(pd.Series(list(zip(power["factory"], power["series_id"]))))[0]
    known = len(gpus.index)
    code = gpus.per_sample(power, GPU_KEYS)
    new = code >= known  # GPUs the counters did not show
    if not new.any():
        return None
    return power_integral(code[new], power["t_ms"].to_numpy()[new], power["value"].to_numpy()[new], start_ms, end_ms)


def _attribute_job_info(store: Store, gpus: _Codes, jobs: _Codes, iv: Intervals, lo: int, hi: int, start_ms: int,
                        end_ms: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, pd.Series]:
    """((interval index, job code or -1), share 1.0, job samples per factory): each interval goes to the job
    whose info sample for that GPU shares the interval's end time."""
    n = len(iv.stream)
    everyone, ones = np.arange(n), np.ones(n)
    j = store.range(JOB_METRIC, lo, hi)
    if j.empty or not n:
        return (everyone, np.full(n, -1, dtype=np.int64)), ones, pd.Series(dtype=np.int64)
    t = j["t_ms"].to_numpy()
    known_gpus = len(gpus.index)
    gpu = gpus.per_sample(j, GPU_KEYS)
    job = jobs.per_sample(j, ["factory", "job", "project", "access_mode"])
    use = (j["value"].to_numpy() > 0) & (gpu < known_gpus)  # an info sample of 0 is no job; a GPU without energy has nothing to share
    counted = use & (t >= start_ms) & (t < end_ms)
    job_factory = np.array([f for f, *_ in jobs.index], dtype=object)
    samples = _count_by_factory(job[counted], job_factory)
    keys = _key(gpu[use], t[use], lo)
    order = np.argsort(keys, kind="stable")  # each series' run is sorted already: a stable merge is cheap
    keys, job = keys[order], job[use][order]
    first = np.append(True, keys[1:] != keys[:-1])  # one job per GPU and instant, so energy is never doubled
    keys, job = keys[first], job[first]
    if not len(keys):
        return (everyone, np.full(n, -1, dtype=np.int64)), ones, samples
    want = _key(iv.stream, iv.t_end_ms, lo)
    at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    return (everyone, np.where(keys[at] == want, job[at], -1)), ones, samples


def _attribute_accounting(accounting: list[JobAllocation], factory: str | None, inventory: Inventory | None, nodes: _Codes, jobs: _Codes,
                          node_of_gpu: np.ndarray, gpu_node: np.ndarray, iv: Intervals) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """((interval index, job code or -1), share of the interval's energy) from sacct allocations.

    Intervals are ordered by (node, end time), so the intervals of one job on one node are one contiguous
    slice found by two binary searches. A job holding k of a node's N GPUs takes k/N of each interval;
    whatever share no job took is unallocated.
    """
    by_name: dict[str, tuple[str, int]] = {}
    for (f, name), code in nodes.index.items():
        if factory is not None and f != factory:
            continue
        if name in by_name:
            raise ValueError(f"node {name!r} is in factories {by_name[name][0]!r} and {f!r}; "
                             "say which factory the accounting records are from")
        by_name[name] = (f, code)
    gpus_on = np.bincount(node_of_gpu, minlength=len(nodes.index))
    a_node, a_start, a_end, a_job, a_share = [], [], [], [], []
    for a in accounting:
        project = inventory.project_by_id.get(a.account) if inventory is not None else None
        mode = project.access_mode if project else a.qos
        for name in a.nodes:
            if name not in by_name:
                continue  # a node this data holds no GPU for (another cluster, a CPU partition)
            f, code = by_name[name]
            if a.gpus_per_node > gpus_on[code]:
                raise ValueError(f"job {a.job}: {a.gpus_per_node} GPUs on node {name}, which shows {gpus_on[code]} in the data")
            a_node.append(code)
            a_start.append(a.start_ms)
            a_end.append(a.end_ms if a.end_ms is not None else np.iinfo(np.int64).max >> 2)
            a_job.append(jobs.index.setdefault((f, a.job, a.account, mode), len(jobs.index)))
            a_share.append(a.gpus_per_node / gpus_on[code])
    n = len(iv.stream)
    if not a_node or not n:
        return (np.arange(n), np.full(n, -1, dtype=np.int64)), np.ones(n)
    node, start, end = np.array(a_node), np.array(a_start, dtype=np.int64), np.array(a_end, dtype=np.int64)
    share = np.array(a_share)
    _check_no_overbooking(node, start, end, share, nodes)
    base = int(min(iv.t_end_ms.min(), start.min()))
    keys = _key(gpu_node, iv.t_end_ms, base)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    # a job runs over (start, end]: the interval that ends at its start belongs to what ran before
    first = np.searchsorted(keys, _key(node, np.maximum(start, base), base), side="right")
    last = np.searchsorted(keys, _key(node, np.clip(end, base, iv.t_end_ms.max()), base), side="right")
    counts = np.maximum(last - first, 0)
    idx = np.concatenate([order[a:b] for a, b in zip(first, last) if b > a] or [np.zeros(0, np.int64)])
    job, part = np.repeat(np.array(a_job), counts), np.repeat(share, counts)
    taken = _sum_by(idx, part, minlength=n)
    rest = np.flatnonzero(taken < 1.0 - 1e-12)
    return ((np.concatenate([idx, rest]), np.concatenate([job, np.full(len(rest), -1, dtype=np.int64)])),
            np.concatenate([part, 1.0 - taken[rest]]))


def _check_no_overbooking(node: np.ndarray, start: np.ndarray, end: np.ndarray, share: np.ndarray, nodes: _Codes) -> None:
    """Refuse records that put more GPUs on a node at once than it has: their energy would be counted twice."""
    t = np.concatenate([start, end])
    d = np.concatenate([share, -share])
    n = np.concatenate([node, node])
    order = np.lexsort((d, t, n))  # at equal times, ends (negative) come first
    n, d = n[order], d[order]
    running = pd.Series(d).groupby(n).cumsum().to_numpy()
    if (running > 1.0 + 1e-9).any():
        bad = list(nodes.index)[int(n[np.argmax(running)])][1]
        raise ValueError(f"the accounting records put more GPUs on node {bad} at once than it has")


class _Hours:
    """Clock hours (UTC) of a range, numbered from 0: an interval belongs to the hour its end falls in."""

    def __init__(self, start_ms: int, end_ms: int):
        self.first = start_ms // HOUR_MS
        self.count = (end_ms - 1) // HOUR_MS - self.first + 1

    def of(self, t_end_ms: np.ndarray) -> np.ndarray:
        return np.clip((t_end_ms - 1) // HOUR_MS - self.first, 0, self.count - 1)


def _node_energy(store: Store, nodes: _Codes, hours: _Hours, lo: int, hi: int, start_ms: int, end_ms: int,
                 max_gap_s: float) -> tuple[pd.Series, pd.Series, pd.Series, dict[int, str], tuple[int, int, int]]:
    """Per (node, hour) cell (node code x hours.count + hour): energy from the node's power reading (J; cells
    without one are absent), RAPL CPU + DRAM energy (J), and energy integrated across gaps longer than
    `max_gap_s` (J); the systems of nodes seen only here; and the RAPL counters' (resets, wraps, duplicates).

    RAPL counters are read only when some node lacks a power reading: they are the fallback.
    """
    measured = cpu = gap = pd.Series(dtype=np.float64)
    systems: dict[int, str] = {}
    counts = (0, 0, 0)
    known_nodes = len(nodes.index)
    p = store.range(NODE_POWER_METRIC, lo, hi)
    if len(p):
        ranks = {s: i for i, s in enumerate(NODE_SOURCES)}
        rank = p["source"].map(ranks).fillna(len(NODE_SOURCES)).to_numpy() if "source" in p else np.zeros(len(p))
        code = nodes.per_sample(p, ["factory", "node"])
        keep = rank == pd.Series(rank).groupby(code).transform("min").to_numpy()  # the best source each node has
        integ = power_integral(code[keep], p["t_ms"].to_numpy()[keep], p["value"].to_numpy()[keep], start_ms, end_ms)
        nh = integ.stream * hours.count + hours.of(integ.t_end_ms)
        measured = pd.Series(integ.energy_j).groupby(nh).sum()
        long = integ.interval_s > max_gap_s
        gap = pd.Series(integ.energy_j[long]).groupby(nh[long]).sum()
        if "system" in p:
            _, first = _first_of_each_series(p)
            systems = dict(zip(code[first].tolist(), p["system"].iloc[first].fillna("").tolist()))
    with_power = set((np.asarray(measured.index, dtype=np.int64) // hours.count).tolist())
    if len(with_power) < known_nodes:
        c = store.range(CPU_ENERGY_METRIC, lo, hi)
        if len(c):
            domains = _Codes()
            domain = domains.per_sample(c, ["factory", "node", "socket", "domain"])
            inc = counter_increments(domain, c["t_ms"].to_numpy(), c["value"].to_numpy(), start_ms, end_ms)
            node_of_domain = np.fromiter((nodes.index.setdefault((f, n), len(nodes.index)) for f, n, _, _ in domains.index),
                                         dtype=np.int64, count=len(domains.index))
            cpu = pd.Series(inc.energy_j).groupby(node_of_domain[inc.stream] * hours.count + hours.of(inc.t_end_ms)).sum()
            counts = (inc.resets, inc.wraps, inc.duplicates)
    return measured, cpu, gap, systems, counts


def _with_facility(store: Store, sites: pd.DataFrame, lo: int, hi: int, start_ms: int, end_ms: int) -> pd.DataFrame:
    """Add `facility_energy_j` per factory (all feeds; NaN where the factory has no meter samples)."""
    facility = store.range(FACILITY_METRIC, lo, hi)
    sites = sites.assign(facility_energy_j=np.nan)
    if facility.empty:
        return sites
    feeds = _Codes()
    code = feeds.per_sample(facility, ["factory", "feed"])
    integ = power_integral(code, facility["t_ms"].to_numpy(), facility["value"].to_numpy(), start_ms, end_ms)
    feed_factory = feeds.frame(["factory", "feed"])["factory"].to_numpy()
    per_factory = pd.Series(integ.energy_j).groupby(feed_factory[integ.stream]).sum()
    only_meter = per_factory.index.difference(sites["factory"])
    if len(only_meter):
        sites = pd.concat([sites, pd.DataFrame({"factory": only_meter})], ignore_index=True)
        sites = sites.fillna({c: 0 for c in sites.columns if c not in ("factory", "facility_energy_j")})
    sites["facility_energy_j"] = sites["factory"].map(per_factory)
    return sites


def energy_rollup(store: Store, inventory: Inventory, start_ms: int, end_ms: int, by: str = "project", max_gap_s: float = 60.0,
                  accounting: list[JobAllocation] | None = None, accounting_factory: str | None = None) -> EnergyRollup:
    """Energy, GPU-hours, average power, cost and CO2e per group over [start_ms, end_ms] (rules: module docstring)."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}; expected one of {', '.join(GROUPINGS)}")
    ledger = compute_ledger(store, inventory, start_ms, end_ms, max_gap_s, accounting, accounting_factory)
    notes = {"attribution": ledger.attribution, "counter_resets": ledger.resets, "counter_wraps": ledger.wraps,
             "duplicate_samples": ledger.duplicates, "estimated_energy_kwh": float(ledger.sites["estimated_j"].sum() / 3.6e6)
             if len(ledger.sites) else 0.0}
    return summarise(ledger.jobs, ledger.sites, inventory, by, start_ms, end_ms, notes)


def carbon_source() -> str:
    """'source, year' of the shipped carbon-intensity table (every output names it)."""
    src = next(iter(carbon_intensity_table().values()))
    return f"{src.source}, {src.year}"


def summarise(jobs: pd.DataFrame, sites: pd.DataFrame, inventory: Inventory, by: str, start_ms: int, end_ms: int,
              notes: dict | None = None) -> EnergyRollup:
    """Group ledger rows (from `compute_ledger`, or summed hourly rollups) by `by`.

    Columns: `energy_kwh` (GPU), `node_other_kwh` (the group's share of node energy apart from GPUs),
    `it_kwh` (both), `share` (of all GPU energy), `gpu_hours`, `avg_power_kw` (IT energy / range length),
    `cost_eur`, `co2e_kg` (of `it_kwh`), and for factory, country and total also `facility_kwh` and `pue`
    (NaN where no facility meter reported).
    """
    iv = _with_inventory(jobs, inventory)
    iv["kwh"] = iv["energy_j"] / 3.6e6
    iv["other_kwh"] = iv["node_other_j"] / 3.6e6
    it_kwh = iv["kwh"] + iv["other_kwh"]
    iv["cost_eur"] = it_kwh * iv["price_eur_per_kwh"]
    iv["co2e_kg"] = it_kwh * iv["gco2e_per_kwh"] / 1000.0
    keys = {"job": ["factory", "job", "project"], "total": ["total"]}.get(by, [by])
    agg = {"energy_kwh": ("kwh", "sum"), "node_other_kwh": ("other_kwh", "sum"), "gpu_hours": ("gpu_seconds", "sum"),
           "cost_eur": ("cost_eur", "sum"), "co2e_kg": ("co2e_kg", "sum")}
    rows = iv.assign(total=EUROHPC).groupby(keys, dropna=False).agg(**agg).reset_index()
    rows.insert(len(keys) + 2, "it_kwh", rows["energy_kwh"] + rows["node_other_kwh"])
    rows["gpu_hours"] /= 3600.0
    hours = (end_ms - start_ms) / 3.6e6
    rows["avg_power_kw"] = rows["it_kwh"] / hours
    total = float(rows["energy_kwh"].sum())
    rows["share"] = rows["energy_kwh"] / total if total else 0.0
    if by in ("factory", "country", "total") and len(sites):
        s = _site_inventory(sites, inventory).assign(total=EUROHPC)
        metered = s["facility_energy_j"].notna()
        pue = s[metered].groupby(by).agg(facility=("facility_energy_j", "sum"), it=("it_energy_j", "sum"))
        rows["facility_kwh"] = rows[by].map(pue["facility"] / 3.6e6)
        rows["pue"] = rows[by].map((pue["facility"] / pue["it"]).where(pue["it"] > 0))
    rows = rows.sort_values("energy_kwh", ascending=False, kind="stable").reset_index(drop=True)
    expected = float(sites["expected_s"].sum()) if len(sites) else 0.0
    coverage = float(min(1.0, sites["covered_s"].sum() / expected)) if expected else 0.0
    return EnergyRollup(rows, by, start_ms, end_ms, coverage, carbon_source(), total, dict(notes or {}))


def _site_inventory(sites: pd.DataFrame, inventory: Inventory) -> pd.DataFrame:
    countries = {f.id: f.country for f in inventory.factories}
    return sites.assign(country=sites["factory"].map(countries).fillna("(factory not in inventory)"))


def _with_inventory(rows: pd.DataFrame, inventory: Inventory) -> pd.DataFrame:
    """Add sector (from the project), country, energy price and carbon intensity (from the factory)."""
    intensity = carbon_intensity_table()
    factories = pd.DataFrame(
        [(f.id, f.country, f.energy_price_eur_per_kwh, intensity[f.country].gco2e_per_kwh) for f in inventory.factories],
        columns=["factory", "country", "price_eur_per_kwh", "gco2e_per_kwh"],
    )
    sectors = pd.DataFrame([(p.id, p.sector) for p in inventory.projects], columns=["project", "sector"])
    rows = rows.merge(factories, on="factory", how="left").merge(sectors, on="project", how="left")
    rows["sector"] = rows["sector"].where(rows["project"].eq(UNALLOCATED) | rows["sector"].notna(), "(project not in inventory)")
    rows["sector"] = rows["sector"].where(rows["project"].ne(UNALLOCATED), UNALLOCATED)
    return rows
