"""Incremental hourly rollups: attributed energy per hour, so that month-long reports read aggregates.

Each hour is computed from the samples with the rules of `aifmon.rollups.energy` and written with
`replace_rows` into three derived tables, so running an hour twice leaves the same rows:
- `gpu_energy_hourly`: (factory, system, job, project, access_mode) -> `energy_j` (GPU, J), `gpu_seconds` (s);
- `node_energy_hourly`: the same keys -> `node_other_j`, each job's share of its nodes' non-GPU energy (J);
- `site_energy_hourly`: per factory -> `gpu_energy_j`, `it_energy_j`, `facility_energy_j` (J), `estimated_j`,
  `covered_s`, `expected_s` (coverage), `gpus`, and `energy_samples`, `job_samples`: the inputs the hour saw.

Late data re-opens its hour: hours that ended less than `late_window_s` ago are recomputed every
`recheck_every_s`, and an hour whose inputs changed (more samples arrived, e.g. a collector catching
up after an outage) is replaced and logged. Older history loaded later (`aifmon store import`) is
re-opened explicitly: `reopen(start, end)`, or `aifmon rollup hourly --from T`.

Every reader goes through `aifmon.rollups.ledger`, which takes the rows of settled hours instead of their samples: an
hour that ended at least `LATE_WINDOW_S` ago, past the late window in which the rollups still recheck it, and whose
site row is stored (the site table is written last, so its row says the hour's three tables are complete).
As VictoriaMetrics trusts its rollup result cache for data older than its `-search.cacheTimestampOffset`,
such rows are not compared with the samples again: comparing their sample counts would read every sample
of the range, the cost the rows are there to save. Samples that arrive later still for a settled hour count
once the hour is re-opened (`aifmon store import` re-opens the hours it loads samples into). The inventory enters the rows only for GPUs without an energy
counter (their power is integrated where the inventory counts more GPUs than counters): aifmon's processes
give the rollups the inventory they load; re-open the hours after changing a factory's GPU count there.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pandas as pd

from aifmon.rollups.counters import HOUR_MS
from aifmon.rollups.energy import DEFAULT_MAX_GAP_S, JOB_KEYS, SETTLE_MS, Ledger, compute_ledger
from aifmon.stores.store import RollupStore, RowStore, RowWriter, SampleReader, Store
from aifmon.telemetry.inventory import Inventory

log = logging.getLogger(__name__)

TABLE = "gpu_energy_hourly"
NODE_TABLE = "node_energy_hourly"
SITE_TABLE = "site_energy_hourly"
LATE_WINDOW_S = 3 * 3600.0  # hours that ended less than this ago are rechecked for late data (HourlyRollups' default)
SITE_COLUMNS = ["gpu_energy_j", "it_energy_j", "facility_energy_j", "estimated_j", "covered_s", "expected_s", "gpus",
                "energy_samples", "job_samples"]


def rollup_hour(store: RollupStore, hour_start_ms: int, inventory: Inventory | None = None) -> pd.DataFrame:
    """Compute and store one hour; returns its `gpu_energy_hourly` rows (energy_j in J, gpu_seconds in s).

    `inventory` lets GPUs without an energy counter fall back to integrated power (see `aifmon.rollups.energy`).
    """
    return _store_hour(store, hour_start_ms, _hour_ledger(store, hour_start_ms, inventory))


def hour_rows(store: SampleReader, hour_start_ms: int, inventory: Inventory | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The rows of the three hourly tables for one hour, computed from samples, not stored."""
    ledger = _hour_ledger(store, hour_start_ms, inventory)
    return table_rows(ledger.jobs, ledger.sites)


def _hour_ledger(store: SampleReader, hour_start_ms: int, inventory: Inventory | None) -> Ledger:
    if hour_start_ms % HOUR_MS:
        raise ValueError("an hour starts on a whole hour (ms since the epoch divisible by 3,600,000)")
    return compute_ledger(store, inventory, hour_start_ms, hour_start_ms + HOUR_MS, max_gap_s=DEFAULT_MAX_GAP_S)


def _store_hour(store: RowWriter, hour_start_ms: int, ledger: Ledger) -> pd.DataFrame:
    """Replace the hour's rows in the three tables (the site table last: its row says the hour is complete); returns the
    `gpu_energy_hourly` rows."""
    jobs, nodes, sites = table_rows(ledger.jobs, ledger.sites)
    store.replace_rows(TABLE, hour_start_ms, jobs)
    store.replace_rows(NODE_TABLE, hour_start_ms, nodes)
    store.replace_rows(SITE_TABLE, hour_start_ms, sites)
    return jobs


def table_rows(jobs: pd.DataFrame, sites: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A ledger's per-hour rows (`aifmon.rollups.energy.Ledger`) in the three tables' columns and types."""
    gpu = jobs[["window_start_ms"] + JOB_KEYS + ["energy_j", "gpu_seconds"]]
    node = jobs.loc[jobs["node_other_j"] != 0, ["window_start_ms"] + JOB_KEYS + ["node_other_j"]]
    site = sites.reindex(columns=["window_start_ms", "factory"] + SITE_COLUMNS)
    site = site.astype({c: np.float64 for c in SITE_COLUMNS if c not in ("gpus", "energy_samples", "job_samples")})
    site = site.astype({c: np.int64 for c in ("window_start_ms", "gpus", "energy_samples", "job_samples")})
    return gpu.reset_index(drop=True), node.reset_index(drop=True), site.reset_index(drop=True)


def _stored_hours(store: RowStore, start_ms: int, end_ms: int) -> tuple[list[int], pd.DataFrame]:
    """The hours starting in [start_ms, end_ms) that have their `site_energy_hourly` row (written last, so the hour's
    three tables are complete), and those rows."""
    site = store.read_rows(SITE_TABLE, start_ms, end_ms)
    return (sorted(set(site["window_start_ms"].astype(np.int64).tolist())) if len(site) else []), site


def reroll_stored_hours(store: Store, first_ms: int, last_ms: int, inventory: Inventory | None = None) -> int:
    """Recompute the stored hours that samples in [first_ms, last_ms] can change (history loaded after they were
    rolled up), so that the ledger does not read them stale; returns how many (none on a store that does not
    both give samples back and keep rollup rows). An interval is split between the hours it spans and a ledger
    looks 15 min past its hour, so the neighbouring hours are included."""
    if not isinstance(store, RollupStore):
        return 0
    hours, _ = _stored_hours(store, (first_ms - HOUR_MS) // HOUR_MS * HOUR_MS, last_ms + HOUR_MS + 1)
    for hour in hours:
        rollup_hour(store, hour, inventory)
    return len(hours)


class HourlyRollups:
    """Keeps the hourly tables up to date: every finished hour once, and recent hours again when late data arrives."""

    def __init__(self, store: RollupStore, inventory: Inventory | None = None, check_every_s: float = 60.0,
                 late_window_s: float = LATE_WINDOW_S, recheck_every_s: float = 600.0):
        self.store = store
        self.inventory = inventory
        self.check_every_s = check_every_s
        self.late_window_s = late_window_s
        self.recheck_every_s = recheck_every_s
        self._done: set[int] = set()
        self._loaded = False
        self._again: set[int] = set()  # hours re-opened by `reopen`
        self._last_recheck_ms = 0
        self._stop = threading.Event()
        self.caught_up = threading.Event()
        """Set once a `catch_up` has written every finished hour it found (`aifmon up` starts its alert evaluator then)."""

    def catch_up(self, now_ms: int | None = None) -> int:
        """Roll up every finished, settled hour not yet done, and re-open recent hours whose inputs changed;
        returns how many hours were (re)written."""
        bounds = self.store.time_bounds()
        if bounds is None:  # no samples: nothing to catch up on
            self.caught_up.set()
            return 0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        first = bounds[0] // HOUR_MS * HOUR_MS
        # hours starting before this one are finished and may hold samples (none after the store's newest: a
        # store of old history would otherwise have every empty hour up to now computed)
        last = min((now_ms - SETTLE_MS) // HOUR_MS, bounds[1] // HOUR_MS + 1) * HOUR_MS
        if not self._loaded:
            existing = self.store.read_rows(SITE_TABLE, first, last)
            if existing.empty:  # a store rolled up before the site table existed: its GPU table says what is done
                existing = self.store.read_rows(TABLE, first, last)
            self._done = set(existing["window_start_ms"].astype(np.int64).tolist()) if not existing.empty else set()
            self._loaded = True
        written: set[int] = set()
        for hour in range(first, last, HOUR_MS):
            if hour not in self._done or hour in self._again:
                ledger = _hour_ledger(self.store, hour, self.inventory)
                _store_hour(self.store, hour, ledger)
                self._done.add(hour)
                self._again.discard(hour)
                self._reopen_silence(hour, ledger)
                written.add(hour)
        changed = 0
        if now_ms - self._last_recheck_ms >= self.recheck_every_s * 1000:
            self._last_recheck_ms = now_ms
            changed = self._recheck(max(first, (now_ms - int(self.late_window_s * 1000)) // HOUR_MS * HOUR_MS), last, written)
        self.caught_up.set()
        return len(written) + changed

    def _recheck(self, start_ms: int, end_ms: int, just_written: set[int]) -> int:
        """Recompute the done hours in [start_ms, end_ms) whose inputs changed; returns how many. The hours of
        `just_written` are left to the next recheck: they were computed from the same samples moments ago (at the start
        of `aifmon up` these are the backfilled day's last 3 hours, the only ones of the 25,000-GPU factory: computing
        them a second time took 5-11 s, with swings of up to 140 MB, in two runs)."""
        stored = self.store.read_rows(SITE_TABLE, start_ms, end_ms)
        changed = 0
        for hour in range(start_ms, end_ms, HOUR_MS):
            if hour not in self._done or hour in just_written:
                continue
            ledger = _hour_ledger(self.store, hour, self.inventory)
            before = stored[stored["window_start_ms"] == hour] if not stored.empty else stored
            if _fingerprint(before) != _fingerprint(table_rows(ledger.jobs, ledger.sites)[2]):
                log.info("hourly rollups: late data re-opened the hour starting %s", pd.Timestamp(hour, unit="ms", tz="UTC"))
                _store_hour(self.store, hour, ledger)
                self._reopen_silence(hour, ledger)
                changed += 1
        return changed

    def _reopen_silence(self, hour_ms: int, ledger: Ledger) -> None:
        """A meter that came back in this hour after a silence from an earlier one: the done hours since its last sample
        before it were rolled up without the sample that closes the silence, and are computed again at the next
        `catch_up`, however long ago the silence began."""
        if ledger.reopen_from_ms is None:
            return
        hours = {h for h in range(ledger.reopen_from_ms // HOUR_MS * HOUR_MS, hour_ms, HOUR_MS) if h in self._done}
        if hours - self._again:
            log.info("hourly rollups: a meter silent since %s reported again: %d earlier hour(s) re-opened",
                     pd.Timestamp(ledger.reopen_from_ms, unit="ms", tz="UTC"), len(hours - self._again))
        self._again |= hours

    def reopen(self, start_ms: int, end_ms: int) -> None:
        """Mark the hours overlapping [start_ms, end_ms) for recomputation at the next `catch_up` (history loaded late)."""
        self._again |= set(range(start_ms // HOUR_MS * HOUR_MS, end_ms, HOUR_MS))

    def run(self) -> None:
        while True:
            try:
                n = self.catch_up()
                if n:
                    log.info("hourly rollups: %d hour(s) computed", n)
            except Exception:
                log.exception("hourly rollup failed; retrying at the next check")
            if self._stop.wait(self.check_every_s):
                return

    def stop(self) -> None:
        self._stop.set()


def _fingerprint(sites: pd.DataFrame) -> set[tuple[str, int, int]]:
    """(factory, energy samples, job samples) of an hour; factories seen only in the neighbouring hours' margin
    (no sample inside the hour) leave it out, so samples arriving next door do not re-open the hour."""
    if sites.empty:
        return set()
    seen = (sites["energy_samples"] > 0) | (sites["job_samples"] > 0)
    return set(zip(sites["factory"][seen], sites["energy_samples"][seen].astype(int), sites["job_samples"][seen].astype(int)))
