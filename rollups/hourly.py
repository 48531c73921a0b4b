"""Incremental hourly rollups: GPU energy per (factory, system, job, project, access mode) and hour.

Each hour is computed from the counters with the rules of `rollups.energy` and written with
`replace_rows`, so running an hour twice leaves the same rows. Longer reports read these rows
instead of raw samples.
"""

from __future__ import annotations

import logging
import threading
import time

import pandas as pd

from rollups.energy import UNALLOCATED, attribute_jobs, gpu_intervals
from telemetry.store import Store

log = logging.getLogger(__name__)

TABLE = "gpu_energy_hourly"
HOUR_MS = 3_600_000
SETTLE_MS = 120_000  # wait this long after an hour ends, so the last scrapes of the hour are in


def rollup_hour(store: Store, hour_start_ms: int) -> pd.DataFrame:
    """Compute and store one hour; returns its rows (energy_j in J, gpu_seconds in s)."""
    if hour_start_ms % HOUR_MS:
        raise ValueError("an hour starts on a whole hour (ms since the epoch divisible by 3,600,000)")
    end = hour_start_ms + HOUR_MS
    iv = attribute_jobs(store, gpu_intervals(store, hour_start_ms, end), hour_start_ms, end)
    allocated = iv["job"].notna()
    iv = iv.assign(gpu_seconds=iv["seconds"].where(allocated, 0.0))
    for col in ("job", "project", "access_mode"):
        iv[col] = iv[col].where(allocated, UNALLOCATED)
    keys = ["factory", "system", "job", "project", "access_mode"]
    rows = iv.groupby(keys).agg(energy_j=("energy_j", "sum"), gpu_seconds=("gpu_seconds", "sum")).reset_index()
    rows.insert(0, "window_start_ms", hour_start_ms)
    store.replace_rows(TABLE, hour_start_ms, rows)
    return rows


class HourlyRollups:
    """Keeps the hourly table up to date: every finished hour the store holds data for, once."""

    def __init__(self, store: Store, check_every_s: float = 60.0):
        self.store = store
        self.check_every_s = check_every_s
        self._done: set[int] = set()
        self._stop = threading.Event()

    def catch_up(self, now_ms: int | None = None) -> int:
        """Roll up every finished, settled hour not yet done; returns how many hours were computed."""
        bounds = self.store.time_bounds()
        if bounds is None:
            return 0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        first = bounds[0] // HOUR_MS * HOUR_MS
        last = (now_ms - SETTLE_MS) // HOUR_MS * HOUR_MS  # hours starting before this one are finished
        if not self._done:
            existing = self.store.read_rows(TABLE, first, last)
            self._done = set(existing["window_start_ms"].unique().tolist()) if not existing.empty else set()
        computed = 0
        for hour in range(first, last, HOUR_MS):
            if hour not in self._done:
                rollup_hour(self.store, hour)
                self._done.add(hour)
                computed += 1
        return computed

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
