"""The energy ledger: every figure of attributed energy, for every caller, read one way.

`aifmon rollup energy`, the Projects and Efficiency pages, the monthly report and the energy-budget alerts all read
energy through `read_ledger`, so they agree on the same data. The ledger is kept as rows per clock hour (UTC), per job
(`gpu_energy_hourly`, `node_energy_hourly`) and per factory (`site_energy_hourly`, with coverage and the inputs seen),
written by the hourly rollups (`aifmon.rollups.hourly`) with the rules of `aifmon.rollups.energy`. A read of
[start, end):

- takes each whole hour whose rows are **settled** (the hour ended more than the late window, `LATE_WINDOW_S`, ago, and
  its site row, written last, is stored) from the rows, on a store that keeps them (DuckDB, PostgreSQL: a `RowStore`):
  an hour still in the late window may yet receive samples its rows have not seen;
- computes every other hour, and the partial first and last hours, from the samples, **one clock hour at a time**, so
  memory is bounded by one hour of samples whatever the range, and a computed hour is exactly the row the hourly
  rollups write for it. Computed hours are kept in memory (`_HourCache`), so a month is read from samples once per
  process: on a store that counts its writes (DuckDB: `sample_generation`), every hour, until the next write; on a
  store others write to and that keeps no rows (Prometheus, VictoriaMetrics read alone), the settled hours;
- groups the rows with `summarise`.

So a range's figures are the sum of its hours', whichever source each hour came from. Coverage has one rule: covered
GPU-time over the most GPUs any hour of the range saw times the range's length, per factory (`range_sites`); a GPU
that leaves the range lowers it, a GPU replaced by another does not. Sacct attribution or another gap limit ask a
different question than the rows answer, so those reads compute every hour from samples.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from aifmon.rollups.counters import HOUR_MS
from aifmon.rollups.dcgm import DCGM_POWER
from aifmon.rollups.energy import (
    CPU_ENERGY_METRIC,
    DEFAULT_MAX_GAP_S,
    ENERGY_METRIC,
    FACILITY_METRIC,
    GPU_POWER_METRIC,
    GROUPINGS,
    JOB_INFO_ATTRIBUTION,
    JOB_KEYS,
    JOB_METRIC,
    NODE_POWER_METRIC,
    EnergyRollup,
    Ledger,
    compute_ledger,
    range_sites,
    summarise,
)
from aifmon.rollups.hourly import LATE_WINDOW_S, NODE_TABLE, SITE_COLUMNS, SITE_TABLE, TABLE
from aifmon.rollups.sample_blocks import BlockReader
from aifmon.rollups.slurm_accounting import JobAllocation
from aifmon.stores.store import RowStore, SampleReader, SeriesSamples
from aifmon.telemetry.errors import UserError
from aifmon.telemetry.inventory import Inventory
from aifmon.telemetry.schema import DCGM_ENERGY

VALUES = ["energy_j", "gpu_seconds", "node_other_j"]
LEDGER_METRICS = [ENERGY_METRIC, DCGM_ENERGY, DCGM_POWER, GPU_POWER_METRIC, JOB_METRIC, NODE_POWER_METRIC, CPU_ENERGY_METRIC, FACILITY_METRIC]
DAY_MS = 86_400_000
HOUR_COLUMNS = ["window_start_ms"] + JOB_KEYS + VALUES
SITE_HOUR_COLUMNS = ["window_start_ms", "factory"] + SITE_COLUMNS


class MonthError(UserError, ValueError):
    """A month that is not `YYYY-MM`."""


def month_range(month: str) -> tuple[int, int]:
    """[start, end) of a calendar month `YYYY-MM` in UTC, ms since the epoch."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise MonthError(f"month {month!r}: expected YYYY-MM, e.g. 2025-03") from None
    end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def month_of(ms: int) -> str:
    """The UTC calendar month `YYYY-MM` holding the instant `ms` (ms since the epoch)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m")


def previous_month(month: str) -> str:
    """The calendar month before `month` (`YYYY-MM`)."""
    return month_of(month_range(month)[0] - 1)


@dataclass(frozen=True)
class LedgerRead:
    """The ledger's rows of [start_ms, end_ms) (ms) and where they came from.

    `jobs`: per clock hour (`window_start_ms`, the hour's start) and `JOB_KEYS`: `energy_j` (GPU, J), `gpu_seconds` (s),
    `node_other_j` (the job's share of its nodes' non-GPU energy, J). `sites`: per hour and factory, `SITE_COLUMNS`.
    `hours_from_rows` hours came from stored rows, `windows_from_samples` windows (whole or partial hours) were computed
    from samples, and `hours_missing` hours of a bounded read (`max_computed_hours`) were left out."""

    start_ms: int
    end_ms: int
    jobs: pd.DataFrame
    sites: pd.DataFrame
    hours_from_rows: int
    windows_from_samples: int
    hours_missing: int
    notes: dict = field(default_factory=dict)

    @staticmethod
    def nothing(start_ms: int, end_ms: int) -> LedgerRead:
        """A read of [start_ms, end_ms) that holds no hour (a period with no finished hour yet)."""
        return LedgerRead(start_ms, end_ms, _no_jobs(), _no_sites(), 0, 0, 0)

    @property
    def empty(self) -> bool:
        """True when no hour of the range holds a sample or a row."""
        return self.sites.empty and self.jobs.empty

    def job_totals(self) -> pd.DataFrame:
        """`JOB_KEYS` and the `VALUES` summed over the range's hours."""
        if self.jobs.empty:
            return pd.DataFrame({**{k: pd.Series(dtype=object) for k in JOB_KEYS}, **{v: pd.Series(dtype=np.float64) for v in VALUES}})
        return self.jobs.groupby(JOB_KEYS, as_index=False)[VALUES].sum()

    def factories(self) -> pd.DataFrame:
        """One row per factory for the whole range (`range_sites`: sums, facility over metered hours, coverage's GPUs)."""
        return range_sites(self.sites, self.start_ms, self.end_ms)

    def by(self, inventory: Inventory, key: str) -> EnergyRollup:
        """Energy, GPU-hours, cost and CO2e grouped by `key` (one of `GROUPINGS`), with coverage and provenance."""
        return summarise(self.job_totals(), self.factories(), inventory, key, self.start_ms, self.end_ms, self.notes)


class _HourCache:
    """Hours computed from a store's samples, per store (weakly, so a closed store's go with it), its sample generation
    (`SampleReader.sample_generation`: the hours of an older one are dropped), inventory and window (ms: a whole hour,
    or the part of one a range starts or ends in); bounded by `max_hours` per store, the oldest read dropped first."""

    def __init__(self, max_hours: int = 2 * 31 * 24):
        self.max_hours = max_hours
        self._by_store: weakref.WeakKeyDictionary[object, tuple[int | None, dict[tuple[int, int, int], Ledger]]] = weakref.WeakKeyDictionary()

    def get(self, store: object, generation: int | None, inventory: Inventory | None, window: tuple[int, int]) -> Ledger | None:
        hours = self._hours(store, generation)
        found = hours.pop((id(inventory), *window), None)
        if found is not None:
            hours[(id(inventory), *window)] = found  # most recently read last
        return found

    def put(self, store: object, generation: int | None, inventory: Inventory | None, window: tuple[int, int], ledger: Ledger) -> None:
        hours = self._hours(store, generation)
        hours[(id(inventory), *window)] = ledger
        while len(hours) > self.max_hours:
            del hours[next(iter(hours))]

    def _hours(self, store: object, generation: int | None) -> dict[tuple[int, int, int], Ledger]:
        kept = self._by_store.get(store)
        if kept is None or kept[0] != generation:
            kept = generation, {}
            self._by_store[store] = kept
        return kept[1]


_CACHE = _HourCache()


def read_ledger(store: SampleReader, inventory: Inventory | None, start_ms: int, end_ms: int, now_ms: int | None = None,
                max_gap_s: float = DEFAULT_MAX_GAP_S, accounting: list[JobAllocation] | None = None,
                accounting_factory: str | None = None, from_rows: bool = True, max_computed_hours: int | None = None,
                progress: Callable[[str], None] = lambda step: None) -> LedgerRead:
    """The ledger over [start_ms, end_ms) (ms; rules: module docstring), as of `now_ms` (default now).

    `from_rows=False` computes every hour from samples, none from rows or from the hours kept in memory.
    `max_computed_hours` bounds the hours computed from samples (the newest first; for interactive callers): the rest are
    counted in `hours_missing`. `progress` is called once per window computed from samples."""
    if end_ms <= start_ms:
        raise ValueError("the range's end must be after its start")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    generation = store.sample_generation()  # before any sample is read: a write during the read makes its hours stale
    same_question = accounting is None and max_gap_s == DEFAULT_MAX_GAP_S
    stored_hours, stored_jobs, stored_sites = _settled_rows(store, start_ms, end_ms, now_ms) if from_rows and same_question \
        else ([], _no_jobs(), _no_sites())
    windows = _windows_between(start_ms, end_ms, stored_hours)
    held = store.sample_spans(LEDGER_METRICS, windows[0][0] - DAY_MS, windows[-1][1] + DAY_MS) if windows else {}
    windows = _with_samples(windows, held)
    cutoff = now_ms - LATE_WINDOW_S * 1000

    def kept(window: tuple[int, int]) -> bool:
        """Whether `window` is kept in (and read from) `_CACHE`: on a store that counts its writes, every window (until
        the next write); on one that does not, settled hours, and only where the store keeps no rows to read instead."""
        if not (same_question and from_rows):
            return False
        return generation is not None or (_settled(*window, cutoff) and not isinstance(store, RowStore))

    known = {w: _CACHE.get(store, generation, inventory, w) for w in windows if kept(w)}
    to_compute = [w for w in windows if known.get(w) is None]
    missing = 0
    if max_computed_hours is not None and len(to_compute) > max_computed_hours:
        missing = len(to_compute) - max_computed_hours
        left_out = set(to_compute[:missing])  # the oldest
        windows = [w for w in windows if w not in left_out]
    reader: SampleReader = _Held(store, set(held))
    if store.reads_are_requests:  # in blocks of hours (`sample_blocks`); the embedded store reads an hour as fast
        reader = BlockReader(reader, [w for w in windows if known.get(w) is None])
    ledgers: list[Ledger] = []
    for a, b in windows:
        ledger = known.get((a, b))
        if ledger is None:
            ledger = compute_ledger(reader, inventory, a, b, max_gap_s, accounting, accounting_factory)
            if kept((a, b)):
                _CACHE.put(store, generation, inventory, (a, b), ledger)
            progress(f"{iso_utc(a)} to {iso_utc(b)} computed from samples")
        ledgers.append(ledger)
    jobs = _concat([stored_jobs] + [ledger.jobs for ledger in ledgers], HOUR_COLUMNS)
    sites = _concat([stored_sites] + [ledger.sites.reindex(columns=SITE_HOUR_COLUMNS) for ledger in ledgers], SITE_HOUR_COLUMNS)
    notes = {"attribution": ledgers[0].attribution if ledgers else JOB_INFO_ATTRIBUTION,
             "counter_resets": sum(ledger.resets for ledger in ledgers), "counter_wraps": sum(ledger.wraps for ledger in ledgers),
             "duplicate_samples": sum(ledger.duplicates for ledger in ledgers),
             "estimated_energy_kwh": float(sites["estimated_j"].sum() / 3.6e6) if len(sites) else 0.0,
             "hours_from_hourly_rollups": len(stored_hours),
             "hours_from_samples": sum(b - a for a, b in windows) / HOUR_MS}
    if stored_hours:
        notes["counter_counts_cover"] = "the hours from samples only: hourly rollups keep no counts of resets, wraps or duplicates"
    if missing:
        notes["hours_missing"] = missing
    if sites.empty and jobs.empty:
        notes["no_data"] = f"no samples or ledger rows from {iso_utc(start_ms)} to {iso_utc(end_ms)}"
    return LedgerRead(start_ms, end_ms, jobs, sites, len(stored_hours), len(windows), missing, notes)


def energy_rollup(store: SampleReader, inventory: Inventory, start_ms: int, end_ms: int, by: str = "project",
                  max_gap_s: float = DEFAULT_MAX_GAP_S, accounting: list[JobAllocation] | None = None,
                  accounting_factory: str | None = None, from_hourly: bool = True, now_ms: int | None = None) -> EnergyRollup:
    """Energy, GPU-hours, average power, cost and CO2e per group over [start_ms, end_ms) (`read_ledger`, then grouped by
    `by`, one of `GROUPINGS`)."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}; expected one of {', '.join(GROUPINGS)}")
    return read_ledger(store, inventory, start_ms, end_ms, now_ms, max_gap_s, accounting, accounting_factory,
                       from_rows=from_hourly).by(inventory, by)


def _settled_rows(store: SampleReader, start_ms: int, end_ms: int, now_ms: int) -> tuple[list[int], pd.DataFrame, pd.DataFrame]:
    """(hour starts, job rows, site rows) of the settled hours wholly inside [start_ms, end_ms) whose site row is stored
    (written last, so the hour's three tables are complete). None on a store that keeps no rows."""
    first = -(-start_ms // HOUR_MS) * HOUR_MS
    last = min(end_ms, now_ms - int(LATE_WINDOW_S * 1000)) // HOUR_MS * HOUR_MS
    if first >= last or not isinstance(store, RowStore):
        return [], _no_jobs(), _no_sites()
    sites = store.read_rows(SITE_TABLE, first, last)
    if sites.empty:
        return [], _no_jobs(), _no_sites()
    hours = sorted(set(sites["window_start_ms"].astype(np.int64).tolist()))
    gpu, node = store.read_rows(TABLE, first, last), store.read_rows(NODE_TABLE, first, last)
    parts = [f[f["window_start_ms"].isin(hours)] for f in (gpu, node) if len(f)]
    jobs = pd.concat(parts, ignore_index=True).reindex(columns=HOUR_COLUMNS).fillna({v: 0.0 for v in VALUES}) if parts else _no_jobs()
    return hours, jobs, sites.reindex(columns=SITE_HOUR_COLUMNS)


def _settled(start_ms: int, end_ms: int, cutoff_ms: float) -> bool:
    """A whole clock hour that ended before `cutoff_ms` (past the late window): its figures no longer change."""
    return start_ms % HOUR_MS == 0 and end_ms - start_ms == HOUR_MS and end_ms <= cutoff_ms


def _windows_between(start_ms: int, end_ms: int, hours: list[int]) -> list[tuple[int, int]]:
    """The clock hours (or their parts inside the range) of [start_ms, end_ms) not among `hours` (sorted starts, ms)."""
    stored = set(hours)
    windows = []
    at = start_ms
    while at < end_ms:
        b = min(end_ms, (at // HOUR_MS + 1) * HOUR_MS)
        if at not in stored:
            windows.append((at, b))
        at = b
    return windows


def _with_samples(windows: list[tuple[int, int]], spans: dict[str, tuple[int, int]]) -> list[tuple[int, int]]:
    """The windows that can hold energy: those between the first and the last sample of any ledger metric within a day
    of the range (`spans`, from `SampleReader.sample_spans`: one query even on a PromQL server), so an old month or a
    range reaching into the future costs nothing. A meter's silence bridged across the whole of such an empty stretch
    is not seen when it is longer than the day looked past the range's ends."""
    if not spans:
        return []
    first, last = min(a for a, _ in spans.values()), max(b for _, b in spans.values())
    return [(a, b) for a, b in windows if b > first and a < last]


class _Held(SampleReader):
    """`store` for one ledger read: the reads of a ledger metric with no samples within a day of the range come back
    empty without asking it. Most sites have no dcgm-exporter, RAPL or facility series, and on a PromQL server each
    read is a request: four of five an hour."""

    def __init__(self, store: SampleReader, held: set[str]):
        self.store, self.held = store, held

    def range_arrays(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self.store.range_arrays(metric, start_ms, end_ms, match) if self._asks(metric) else _NO_SAMPLES

    def edges(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self.store.edges(metric, start_ms, end_ms, match) if self._asks(metric) else _NO_SAMPLES

    def runs(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self.store.runs(metric, start_ms, end_ms, match) if self._asks(metric) else _NO_SAMPLES

    def _asks(self, metric: str) -> bool:
        return metric in self.held or metric not in LEDGER_METRICS


_NO_SAMPLES = SeriesSamples.empty()


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True).reindex(columns=columns) if frames else pd.DataFrame(columns=columns)


def _no_jobs() -> pd.DataFrame:
    return pd.DataFrame(columns=HOUR_COLUMNS)


def _no_sites() -> pd.DataFrame:
    return pd.DataFrame(columns=SITE_HOUR_COLUMNS)


def iso_utc(ms: int) -> str:
    """ms since the epoch as ISO 8601 UTC to the second, `2025-03-01T00:00:00Z`."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

