"""Exact energy per job, project, access mode, sector, system, factory, country and EuroHPC total.

Rules (so that every figure can be traced; the counter rules themselves are in `aifmon.rollups.counters`):
- **GPU energy** comes from `aif_gpu_energy_joules_total` increments, and from dcgm-exporter's energy counter read
  through `aifmon.rollups.dcgm`'s mapping (aifmon's series win where both report a GPU). A GPU is one stream whatever the
  series it arrives in (HA scrapers, backfill then live: its `factory`, `node`, `gpu` labels), so
  duplicates count once and out-of-order samples are put in order. Counter resets are detected; gaps
  are bridged exactly. A GPU of a live factory that has no counter (NVML before Volta has none) has its
  `aif_gpu_power_watts` integrated instead, and that energy is reported as estimated.
- **Attribution, from job info**: an increment covers (previous sample, sample] and belongs to the job
  holding the GPU at the interval's end: the job whose `aif_gpu_job_info` run on that GPU covers that time (a run:
  the job's info samples, no more than `RUN_GAP_MS` apart; `SampleReader.runs`). If two jobs ever show on one GPU at
  once, one is kept (the one whose info series the store registered first) so energy is not counted twice.
- **Attribution, from Slurm accounting** (`sacct` records, see `aifmon.rollups.slurm_accounting`): an interval
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
- **Silences**: every meter's samples are read with the ones that bracket the window however long it was silent
  (`SampleReader.edges`), so an interval across the window's start or end is counted, cut there by time: a counter's
  exactly, a power reading's as an estimate.
- **Windows**: `compute_ledger` gives its rows per clock hour; every reader goes through `aifmon.rollups.ledger`,
  which takes settled hours from the hourly rows and computes the rest from samples, one hour at a time, so a range's
  figures are the sum of its hours' whichever way each was read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aifmon.rollups import dcgm
from aifmon.rollups.counters import HOUR_MS, Intervals, counter_increments, power_integral, series_row
from aifmon.rollups.slurm_accounting import JobAllocation
from aifmon.stores.store import SampleReader, SeriesSamples, range_with_edges
from aifmon.telemetry.inventory import Inventory, carbon_intensity_table

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
DEFAULT_MAX_GAP_S = 60.0  # coverage counts scrape intervals up to this long, s; the hourly rollups use it
SETTLE_MS = 120_000  # the hourly rollups compute an hour this long after it ends, so the last scrapes of the hour are in
JOB_INFO_ATTRIBUTION = "aif_gpu_job_info samples (per GPU)"
T_BITS = 42  # (stream << 42) | time offset in ms: one sortable int64 key; 2**42 ms is 139 years


@dataclass(frozen=True)
class Ledger:
    """Energy over one window, attributed, per clock hour (UTC): what the hourly rollups store and every report groups.

    `jobs`: one row per hour (`window_start_ms`, the clock hour's start, ms) and (factory, system, job, project,
    access_mode), `(unallocated)` included: `energy_j` GPU energy (J), `gpu_seconds` GPU-time the job held (s; 0 for
    unallocated), `node_other_j` the job's share of its nodes' non-GPU energy (J).
    `sites`: one row per hour and factory: `gpu_energy_j`, `it_energy_j` (all node energy), `facility_energy_j`
    (NaN without meter samples), `estimated_j` (energy integrated from power across gaps, or from GPU
    power where no counter exists), `covered_s` and `expected_s` (GPU-time covered by short intervals, and the
    GPU-time of the hour's part in the window), `gpus` (GPUs with an interval in the hour), `energy_samples`,
    `job_samples` (inputs seen: a fingerprint).
    """

    jobs: pd.DataFrame
    sites: pd.DataFrame
    start_ms: int
    end_ms: int
    resets: int = 0
    wraps: int = 0
    duplicates: int = 0
    attribution: str = "aif_gpu_job_info"
    reopen_from_ms: int | None = None  # a meter's last sample before a silence across the window's start (`_late_closing`)

    def factories(self) -> pd.DataFrame:
        """One site row per factory for the whole window (`range_sites`)."""
        return range_sites(self.sites, self.start_ms, self.end_ms)


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


class LabelCodes:
    """Dense integer codes for label tuples (GPUs, nodes, jobs), shared across metrics."""

    def __init__(self) -> None:
        self.index: dict[tuple, int] = {}

    def of_series(self, samples: SeriesSamples, keys: list[str], row: np.ndarray) -> np.ndarray:
        """The code of each series' `keys` labels (a label the series lacks reads ""), aligned with `samples.series`;
        -1 for series without samples, which get no code. `row`: each sample's series row (`series_row`).
        Codes are given in series order, so they do not depend on the order the store returned samples in."""
        has = np.flatnonzero(np.bincount(row, minlength=len(samples.series)))
        labels = samples.series.iloc[has].reindex(columns=keys).astype(object).fillna("")
        code = np.full(len(samples.series), -1, dtype=np.int64)
        code[has] = np.fromiter((self.index.setdefault(t, len(self.index)) for t in labels.itertuples(index=False, name=None)),
                                dtype=np.int64, count=len(has))
        return code

    def of(self, samples: SeriesSamples, keys: list[str]) -> np.ndarray:
        """The code of each sample's `keys` labels (`of_series`, taken by every sample of the series)."""
        row = series_row(samples)
        return self.of_series(samples, keys, row)[row]

    def frame(self, keys: list[str]) -> pd.DataFrame:
        return pd.DataFrame(list(self.index), columns=keys) if self.index else pd.DataFrame(columns=keys)


def _sum_runs(key: np.ndarray, *weights: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(each distinct key, the sum of each of `weights` per key). Runs of equal keys are summed first: intervals
    come in (GPU, time) order, so one GPU's hour (or one job's hour on it) is one run, and millions of intervals
    become thousands of runs to group."""
    if not len(key):
        return key, [np.zeros(0) for _ in weights]
    starts = np.flatnonzero(np.append(True, key[1:] != key[:-1]))
    codes, uniques = pd.factorize(key[starts])
    return np.asarray(uniques), [_sum_by(codes, np.add.reduceat(w, starts), len(uniques)) for w in weights]


def _sum_by(codes: np.ndarray, weights: np.ndarray, minlength: int) -> np.ndarray:
    """Sum of `weights` per code, float64 even when nothing is summed (np.bincount then gives int64)."""
    return np.bincount(codes, weights=weights, minlength=minlength).astype(np.float64, copy=False)


def stream_time_key(stream: np.ndarray, t_ms: np.ndarray, base_ms: int) -> np.ndarray:
    """(stream << 42) | (t_ms - base_ms): one sortable int64 per (stream, time)."""
    key = np.left_shift(stream, T_BITS, dtype=np.int64)
    key += t_ms
    key -= base_ms
    return key


def compute_ledger(store: SampleReader, inventory: Inventory | None, start_ms: int, end_ms: int, max_gap_s: float = DEFAULT_MAX_GAP_S,
                   accounting: list[JobAllocation] | None = None, accounting_factory: str | None = None) -> Ledger:
    """Attributed energy over [start_ms, end_ms] (rules: module docstring).

    Without an inventory, GPUs that have no energy counter are not looked for (their power is not read),
    and accounting records cannot name access modes from projects (the QoS stands in).
    """
    if end_ms <= start_ms:
        raise ValueError("the range's end must be after its start")
    gpus, nodes, jobs = LabelCodes(), LabelCodes(), LabelCodes()

    e, segment = dcgm.gpu_energy(store, ENERGY_METRIC, start_ms, end_ms)
    late = [_late_closing(e, start_ms)]
    row = series_row(e)
    gpu_of = gpus.of_series(e, GPU_KEYS, row)[row]
    if segment is None:
        iv = counter_increments(gpu_of, e.t_ms, e.value, start_ms, end_ms)
    else:  # one counter per GPU and exporter segment (aifmon.rollups.dcgm); (GPU, segment, time) order is (GPU, time) order
        iv = counter_increments(gpu_of * dcgm.SEGMENTS + segment, e.t_ms, e.value, start_ms, end_ms)
        iv = dataclasses.replace(iv, stream=iv.stream // dcgm.SEGMENTS)
    from_power = _power_for_gpus_without_counter(store, inventory, gpus, e, start_ms, end_ms)
    estimated = np.zeros(len(iv.stream), dtype=bool)
    if from_power is not None:
        iv = _concat(iv, from_power)
        estimated = np.append(estimated, np.ones(len(from_power.stream), dtype=bool))
    gpu_table = gpus.frame(GPU_KEYS)
    node_of_gpu = np.fromiter((nodes.index.setdefault(fn, len(nodes.index)) for fn in
                               gpu_table[["factory", "node"]].itertuples(index=False, name=None)), dtype=np.int64, count=len(gpu_table))
    gpu_node = node_of_gpu[iv.stream]
    node_system = dict(zip(node_of_gpu.tolist(), gpu_table["system"].tolist()))

    # Node energy apart from the GPUs, split per node and clock hour (so that a range's figures are the sum of
    # its hours') by the GPU-seconds each job held there; the free GPU-time's share is unallocated.
    hours = _Hours(start_ms, end_ms)
    nh = gpu_node * hours.count
    nh += hours.of(iv.until_ms)  # (node, hour) cell of every piece of an interval
    if accounting is None:
        job_of, job_samples = _attribute_job_info(dcgm.job_info(store, JOB_METRIC, e, start_ms, end_ms), gpus, jobs, iv, start_ms, end_ms)
        n_jobs = len(jobs.index) + 1  # job -1 (unallocated) is shifted to 0
        cell_of = nh * n_jobs
        cell_of += job_of
        cell_of += 1
        cells, (energy, held) = _sum_runs(cell_of, iv.energy_j, iv.seconds)
        attribution = JOB_INFO_ATTRIBUTION
    else:
        (idx, job_of), share = _attribute_accounting(accounting, accounting_factory, inventory, nodes, jobs, node_of_gpu, gpu_node, iv)
        n_jobs = len(jobs.index) + 1
        cells, (energy, held) = _sum_runs(nh[idx] * n_jobs + (job_of + 1), iv.energy_j[idx] * share, iv.seconds[idx] * share)
        job_samples = pd.Series(dtype=np.int64)
        attribution = f"Slurm accounting records ({len(accounting)} jobs; shared nodes split by GPU count)"
    measured, cpu, node_gap, node_system_extra, rapl = _node_energy(store, nodes, hours, start_ms, end_ms, max_gap_s, late)
    n_nodes = len(nodes.index)
    cell_nh, cell_job = np.divmod(cells, n_jobs)
    held[cell_job == 0] = 0.0  # GPU-hours count allocated time only
    # per (node, hour) cell with GPU intervals: GPU energy, GPU-time, the part of it in short intervals, estimated energy
    short = iv.interval_s <= max_gap_s
    gpu_nh, (nh_gpu_j, nh_gpu_s, nh_covered_s) = _sum_runs(nh, iv.energy_j, iv.seconds, np.where(short, iv.seconds, 0.0))
    estimated_nh, (nh_estimated_j,) = _sum_runs(nh[estimated], iv.energy_j[estimated])
    all_nh = pd.Index(gpu_nh).union(measured.index).union(cpu.index)
    gpu_j = pd.Series(nh_gpu_j, index=gpu_nh).reindex(all_nh, fill_value=0.0)
    gpu_s = pd.Series(nh_gpu_s, index=gpu_nh).reindex(all_nh, fill_value=0.0)
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
    node_c, hour_c = np.divmod(table["nh"].to_numpy(), hours.count)
    job_c = table["job"].to_numpy()

    node_table = nodes.frame(["factory", "node"])
    node_factory = node_table["factory"].to_numpy(dtype=object)
    systems = np.array([node_system.get(c, node_system_extra.get(c, "")) for c in range(n_nodes)], dtype=object)
    job_table = jobs.frame(["factory", "job", "project", "access_mode"])
    labels = {col: np.append(np.array([UNALLOCATED], dtype=object), job_table[col].to_numpy(dtype=object))
              for col in ("job", "project", "access_mode")}
    rows = pd.DataFrame({
        "window_start_ms": hours.start_ms(hour_c),
        "factory": node_factory[node_c] if len(node_c) else np.zeros(0, dtype=object),
        "system": systems[node_c] if len(node_c) else np.zeros(0, dtype=object),
        **{col: labels[col][job_c] for col in labels},
        "energy_j": table["energy_j"].to_numpy(),
        "gpu_seconds": table["held"].to_numpy(),
        "node_other_j": table["other_j"].to_numpy(),
    })
    rows = rows.groupby(["window_start_ms"] + JOB_KEYS, as_index=False)[["energy_j", "gpu_seconds", "node_other_j"]].sum()
    rows = rows[(rows["energy_j"] != 0) | (rows["gpu_seconds"] != 0) | (rows["node_other_j"] != 0)].reset_index(drop=True)

    # per clock hour and factory: measured totals, coverage, estimated energy, and the inputs seen (a fingerprint for
    # late data). A GPU counts in an hour when a piece of one of its intervals lies in it.
    gpu_hours = np.unique(iv.stream * hours.count + hours.of(iv.until_ms))
    present = node_of_gpu[gpu_hours // hours.count] * hours.count + gpu_hours % hours.count
    cells = pd.Index(all_nh).union(pd.Index(estimated_nh)).union(node_gap.index).union(pd.Index(np.unique(present)))
    per_cell = pd.DataFrame({
        "gpu_energy_j": pd.Series(nh_gpu_j, index=gpu_nh),
        "it_energy_j": it_j,
        "covered_s": pd.Series(nh_covered_s, index=gpu_nh),
        "gpus": pd.Series(1, index=present).groupby(level=0).sum(),
        "estimated_j": pd.Series(nh_estimated_j, index=estimated_nh).add(node_gap, fill_value=0.0),
    }, index=cells).fillna(0.0)
    cell_node, cell_hour = np.divmod(np.asarray(cells, dtype=np.int64), hours.count)
    per_cell.insert(0, "factory", node_factory[cell_node] if len(cells) else np.zeros(0, dtype=object))
    per_cell.insert(0, "window_start_ms", hours.start_ms(cell_hour))
    # every factory the window's samples name gets a row in every hour, zeros where it has nothing there: the hourly
    # rollups' site row says an hour is done
    every = pd.MultiIndex.from_product([hours.start_ms(np.arange(hours.count)), pd.unique(node_factory)], names=["window_start_ms", "factory"])
    sites = per_cell.groupby(["window_start_ms", "factory"]).sum().reindex(every, fill_value=0.0).reset_index()
    sites["gpus"] = sites["gpus"].astype(np.int64)
    sites["expected_s"] = sites["gpus"] * hours.seconds_in_range(sites["window_start_ms"].to_numpy())
    sites = _with_facility(store, sites, hours, start_ms, end_ms, late)
    for column, counts in (("energy_samples", _count_by_hour(e.series, row, e.t_ms, start_ms, end_ms)), ("job_samples", job_samples)):
        at = pd.MultiIndex.from_frame(sites[["window_start_ms", "factory"]])
        sites[column] = counts.reindex(at).fillna(0).astype(np.int64).to_numpy() if len(counts) else np.int64(0)
    reopen = [t for t in late if t is not None]
    return Ledger(rows, sites, start_ms, end_ms, iv.resets + rapl[0], iv.wraps + rapl[1], iv.duplicates + rapl[2], attribution,
                  min(reopen) if reopen else None)


def _late_closing(samples: SeriesSamples, start_ms: int) -> int | None:
    """The earliest last sample before `start_ms` of the series that were silent from before `start_ms` until more than
    `SETTLE_MS` after it: the hours before the window were rolled up without the sample that closes that interval (they
    are computed `SETTLE_MS` after they end), so they are to be computed again. None when no series was."""
    t = samples.t_ms
    if not len(t):
        return None
    # a meter by its labels: a read with edges lists a series once per read (`concat_samples`)
    meters = LabelCodes()
    row = meters.of(samples, [c for c in samples.series.columns if c != "series_id"])
    n = len(meters.index)
    before = t < start_ms
    last_before = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last_before, row[before], t[before])  # one edge sample per series: few
    settle = start_ms + SETTLE_MS
    heard, later = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    heard[row[(t >= start_ms) & (t <= settle)]] = True
    later[row[t > settle]] = True
    late = (last_before > np.iinfo(np.int64).min) & ~heard & later
    return int(last_before[late].min()) if late.any() else None


def _count_by_hour(series: pd.DataFrame, row: np.ndarray, t_ms: np.ndarray, start_ms: int, end_ms: int) -> pd.Series:
    """How many samples (their series' rows in `series`, their times) have start_ms <= t < end_ms (half-open, so each
    is counted once), per clock hour (its start, ms) and factory label. Counted per (series, hour) first: a label per
    sample would cost more than the rollup."""
    inside = (t_ms >= start_ms) & (t_ms < end_ms)
    if not inside.any():
        return pd.Series(dtype=np.int64)
    hour = t_ms[inside] // HOUR_MS
    first = int(hour.min())
    span = int(hour.max()) - first + 1
    counts = np.bincount(row[inside] * span + (hour - first), minlength=len(series) * span)
    cell = np.flatnonzero(counts)
    factory = (series["factory"].fillna("") if "factory" in series else pd.Series("", index=series.index)).to_numpy(dtype=object)
    return pd.Series(counts[cell]).groupby([(cell % span + first) * HOUR_MS, factory[cell // span]]).sum()


def _concat(a: Intervals, b: Intervals) -> Intervals:
    arrays = {f: np.concatenate([getattr(a, f), getattr(b, f)]) for f in ("stream", "t_end_ms", "until_ms", "energy_j", "seconds", "interval_s")}
    return Intervals(**arrays, resets=a.resets + b.resets, wraps=a.wraps + b.wraps, duplicates=a.duplicates + b.duplicates)


def _power_for_gpus_without_counter(store: SampleReader, inventory: Inventory | None, gpus: LabelCodes, energy: SeriesSamples,
                                    start_ms: int, end_ms: int) -> Intervals | None:
    """Integrated power of the GPUs that have no energy counter, read only for factories where the
    inventory counts more GPUs than the counters (`energy`, the samples read) show."""
    if inventory is None:
        return None
    with_counter: dict[str, int] = {}
    for f, *_ in gpus.index:
        with_counter[f] = with_counter.get(f, 0) + 1
    short = [f.id for f in inventory.live_factories() if 0 < with_counter.get(f.id, 0) < f.gpu_count]
    reads = [dcgm.gpu_power(store, GPU_POWER_METRIC, start_ms, end_ms, {"factory": f}, energy) for f in short]
    known = len(gpus.index)
    code = np.concatenate([np.zeros(0, np.int64)] + [gpus.of(p, GPU_KEYS) for p in reads])
    new = code >= known  # GPUs the counters did not show
    if not new.any():
        return None
    t_ms = np.concatenate([p.t_ms for p in reads])
    watts = np.concatenate([p.value for p in reads])
    return power_integral(code[new], t_ms[new], watts[new], start_ms, end_ms)


def _attribute_job_info(j: SeriesSamples, gpus: LabelCodes, jobs: LabelCodes, iv: Intervals, start_ms: int,
                        end_ms: int) -> tuple[np.ndarray, pd.Series]:
    """(job code of each piece of an interval, -1 for none; job-info runs per hour and factory): each interval goes to
    the job holding the GPU at its closing sample, the job of a run of `j` (`dcgm.job_info`: `t_ms` the run's first
    sample, `value` its last, ms) that covers the interval's end time; where runs on one GPU overlap, the first
    registered job's. `iv` is in (GPU, end time) order, as the counter kernel gives it (GPUs integrated from power follow
    those with counters: their codes are larger); the pieces an interval is cut into at clock hours are adjacent and all
    go to its job."""
    whole = np.ones(len(iv.stream), dtype=bool)
    whole[1:] = (iv.stream[1:] != iv.stream[:-1]) | (iv.t_end_ms[1:] != iv.t_end_ms[:-1])
    job_of, runs = _match_job_runs(j, gpus, jobs, iv.stream[whole], iv.t_end_ms[whole], start_ms, end_ms)
    return job_of[np.cumsum(whole) - 1], runs


def _match_job_runs(j: SeriesSamples, gpus: LabelCodes, jobs: LabelCodes, stream: np.ndarray, t_end_ms: np.ndarray, start_ms: int,
                    end_ms: int) -> tuple[np.ndarray, pd.Series]:
    """`_attribute_job_info` over whole intervals (their GPU codes and closing sample times, ms, in that order): an interval
    join, two binary searches per run, so its cost grows with jobs, not with samples."""
    n = len(stream)
    none = np.full(n, -1, dtype=np.int64)
    if not len(j.t_ms) or not n:
        return none, pd.Series(dtype=np.int64)
    row = series_row(j)
    gpu_of_series = gpus.of_series(j, GPU_KEYS, row)
    job_of_series = jobs.of_series(j, ["factory", "job", "project", "access_mode"], row)
    use = (gpu_of_series < len(gpus.index))[row]  # a GPU without energy has nothing to share
    row, first, last = row[use], j.t_ms[use], j.value[use].astype(np.int64)
    runs = _count_by_hour(j.series, row, first, start_ms, end_ms)
    if not len(first):
        return none, runs
    gpu, job = gpu_of_series[row], job_of_series[row]
    base = min(int(first.min()), int(t_end_ms.min()))
    ends = stream_time_key(stream, t_end_ms, base)  # sorted: (GPU, end time) order
    lo = np.searchsorted(ends, stream_time_key(gpu, first, base), side="left")
    length = np.searchsorted(ends, stream_time_key(gpu, last, base), side="right") - lo
    at = np.repeat(lo - (np.cumsum(length) - length), length) + np.arange(int(length.sum()))
    job_of = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(job_of, at, np.repeat(job, length))  # overlapping runs: the lowest code, the first registered job
    job_of[job_of == np.iinfo(np.int64).max] = -1
    return job_of, runs


def _attribute_accounting(accounting: list[JobAllocation], factory: str | None, inventory: Inventory | None, nodes: LabelCodes, jobs: LabelCodes,
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
    keys = stream_time_key(gpu_node, iv.t_end_ms, base)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    # a job runs over (start, end]: the interval that ends at its start belongs to what ran before
    first = np.searchsorted(keys, stream_time_key(node, np.maximum(start, base), base), side="right")
    last = np.searchsorted(keys, stream_time_key(node, np.clip(end, base, iv.t_end_ms.max()), base), side="right")
    counts = np.maximum(last - first, 0)
    idx = np.concatenate([order[a:b] for a, b in zip(first, last) if b > a] or [np.zeros(0, np.int64)])
    job, part = np.repeat(np.array(a_job), counts), np.repeat(share, counts)
    taken = _sum_by(idx, part, minlength=n)
    rest = np.flatnonzero(taken < 1.0 - 1e-12)
    return ((np.concatenate([idx, rest]), np.concatenate([job, np.full(len(rest), -1, dtype=np.int64)])),
            np.concatenate([part, 1.0 - taken[rest]]))


def _check_no_overbooking(node: np.ndarray, start: np.ndarray, end: np.ndarray, share: np.ndarray, nodes: LabelCodes) -> None:
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
    """Clock hours (UTC) of a range, numbered from 0: a piece of an interval belongs to the hour its end falls in."""

    def __init__(self, start_ms: int, end_ms: int):
        self.start, self.end = start_ms, end_ms
        self.first = start_ms // HOUR_MS
        self.count = (end_ms - 1) // HOUR_MS - self.first + 1

    def start_ms(self, hour: np.ndarray) -> np.ndarray:
        """The start of each numbered hour, ms since the epoch (int64)."""
        return (np.asarray(hour, dtype=np.int64) + self.first) * HOUR_MS

    def seconds_in_range(self, hour_start_ms: np.ndarray) -> np.ndarray:
        """How much of each hour (by its start, ms) lies in the range, s."""
        return (np.minimum(hour_start_ms + HOUR_MS, self.end) - np.maximum(hour_start_ms, self.start)) / 1000.0

    def of(self, t_end_ms: np.ndarray) -> np.ndarray:
        hour = t_end_ms - 1  # in place from here: one array of millions rather than four
        hour //= HOUR_MS
        hour -= self.first
        return np.clip(hour, 0, self.count - 1, out=hour)


def _node_energy(store: SampleReader, nodes: LabelCodes, hours: _Hours, start_ms: int, end_ms: int,
                 max_gap_s: float, late: list[int | None]) -> tuple[pd.Series, pd.Series, pd.Series, dict[int, str], tuple[int, int, int]]:
    """Per (node, hour) cell (node code x hours.count + hour): energy from the node's power reading (J; cells
    without one are absent), RAPL CPU + DRAM energy (J), and energy integrated across gaps longer than
    `max_gap_s` (J); the systems of nodes seen only here; and the RAPL counters' (resets, wraps, duplicates). A
    late-closing silence of a meter goes to `late` (`_late_closing`).

    RAPL counters are read only when some node lacks a power reading: they are the fallback.
    """
    measured = cpu = gap = pd.Series(dtype=np.float64)
    systems: dict[int, str] = {}
    counts = (0, 0, 0)
    known_nodes = len(nodes.index)
    p = range_with_edges(store, NODE_POWER_METRIC, start_ms, end_ms)
    late.append(_late_closing(p, start_ms))
    if len(p.t_ms):
        row = series_row(p)
        node_of_series = nodes.of_series(p, ["factory", "node"], row)
        ranks = {s: i for i, s in enumerate(NODE_SOURCES)}
        rank = (p.series["source"].map(ranks).fillna(len(NODE_SOURCES)).to_numpy() if "source" in p.series
                else np.zeros(len(p.series)))
        with_samples = node_of_series >= 0
        best = pd.Series(rank[with_samples]).groupby(node_of_series[with_samples]).min()
        keep = np.flatnonzero((rank == best.reindex(node_of_series).to_numpy())[row])  # the best source each node has
        integ = power_integral(node_of_series[row[keep]], p.t_ms[keep], p.value[keep], start_ms, end_ms)
        nh = integ.stream * hours.count + hours.of(integ.until_ms)
        measured = pd.Series(integ.energy_j).groupby(nh).sum()
        long = integ.interval_s > max_gap_s
        gap = pd.Series(integ.energy_j[long]).groupby(nh[long]).sum()
        if "system" in p.series:
            systems = dict(zip(node_of_series[with_samples].tolist(), p.series["system"][with_samples].fillna("").tolist()))
    with_power = set((np.asarray(measured.index, dtype=np.int64) // hours.count).tolist())
    if len(with_power) < known_nodes:
        c = range_with_edges(store, CPU_ENERGY_METRIC, start_ms, end_ms)
        late.append(_late_closing(c, start_ms))
        if len(c.t_ms):
            domains = LabelCodes()
            domain = domains.of(c, ["factory", "node", "socket", "domain"])
            inc = counter_increments(domain, c.t_ms, c.value, start_ms, end_ms)
            node_of_domain = np.fromiter((nodes.index.setdefault((f, n), len(nodes.index)) for f, n, _, _ in domains.index),
                                         dtype=np.int64, count=len(domains.index))
            cpu = pd.Series(inc.energy_j).groupby(node_of_domain[inc.stream] * hours.count + hours.of(inc.until_ms)).sum()
            counts = (inc.resets, inc.wraps, inc.duplicates)
    return measured, cpu, gap, systems, counts


def _with_facility(store: SampleReader, sites: pd.DataFrame, hours: _Hours, start_ms: int, end_ms: int,
                   late: list[int | None]) -> pd.DataFrame:
    """Add `facility_energy_j` per clock hour and factory (all feeds; NaN where the factory's meters have no interval
    in the hour); a late-closing silence of a meter goes to `late` (`_late_closing`)."""
    facility = range_with_edges(store, FACILITY_METRIC, start_ms, end_ms)
    late.append(_late_closing(facility, start_ms))
    sites = sites.assign(facility_energy_j=np.nan)
    if not len(facility.t_ms):
        return sites
    feeds = LabelCodes()
    code = feeds.of(facility, ["factory", "feed"])
    integ = power_integral(code, facility.t_ms, facility.value, start_ms, end_ms)
    feed_factory = feeds.frame(["factory", "feed"])["factory"].to_numpy()
    cell = [hours.start_ms(hours.of(integ.until_ms)), feed_factory[integ.stream]]
    metered = pd.Series(integ.energy_j).groupby(cell).sum().rename_axis(["window_start_ms", "factory"])
    sites = sites.set_index(["window_start_ms", "factory"])
    only_meter = metered.index.difference(sites.index)
    if len(only_meter):  # hours in which a factory has a facility meter and no GPU or node reading
        sites = pd.concat([sites, pd.DataFrame(index=only_meter)])
        sites = sites.fillna({c: 0 for c in sites.columns if c != "facility_energy_j"})
        sites = sites.astype({c: np.int64 for c in ("gpus",) if c in sites})
    sites["facility_energy_j"] = metered.reindex(sites.index).to_numpy()
    return sites.reset_index()


def range_sites(sites: pd.DataFrame, start_ms: int, end_ms: int) -> pd.DataFrame:
    """One row per factory for [start_ms, end_ms) from its per-hour site rows (`Ledger.sites`, or the stored hourly rows):
    sums; facility energy over the hours its meter reported (NaN if none did); and the range's expected GPU-time from
    the most GPUs any hour saw, times the range's length (the one coverage rule, `aifmon.rollups.ledger`)."""
    sites = sites[sites["factory"].notna()] if len(sites) else sites
    if not len(sites):
        return pd.DataFrame(columns=["factory", "gpu_energy_j", "it_energy_j", "facility_energy_j", "estimated_j", "covered_s",
                                     "expected_s", "gpus", "energy_samples", "job_samples"])
    by_factory = sites.groupby("factory")
    summed = by_factory[["gpu_energy_j", "it_energy_j", "estimated_j", "covered_s", "energy_samples", "job_samples"]].sum()
    summed["facility_energy_j"] = by_factory["facility_energy_j"].sum(min_count=1)
    summed["gpus"] = by_factory["gpus"].max().astype(np.int64)
    summed["expected_s"] = summed["gpus"] * (end_ms - start_ms) / 1000.0
    return summed.reset_index()


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
