"""A month's attributed energy for the Projects and Efficiency pages, from the hourly rollup tables.

Hours of the month that have samples but no rollup row yet (the hour in progress, a store whose rollups
lag) are computed from the samples in memory, newest first and at most `MAX_COMPUTED_HOURS` per read,
so a page callback stays bounded; the result says how many hours it covers and how many are missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from aifmon.rollups.energy import JOB_KEYS, EnergyRollup, compute_ledger, summarise
from aifmon.rollups.hourly import HOUR_MS, NODE_TABLE, SITE_COLUMNS, SITE_TABLE, TABLE
from aifmon.stores.store import RowStore, SampleReader
from aifmon.telemetry.inventory import Inventory

MAX_COMPUTED_HOURS = 3
"""Hours without a rollup computed per read (each reads that hour's raw samples of every GPU)."""


@dataclass(frozen=True)
class MonthEnergy:
    """Attributed energy of one month: `jobs` (JOB_KEYS + energy_j, gpu_seconds, node_other_j) and `sites`
    (factory + SITE_COLUMNS), summed over the hours read; `hours_rolled_up` came from the tables,
    `hours_computed` from samples, `hours_missing` had samples but were left out (see module docstring)."""

    month: str
    start_ms: int
    end_ms: int
    jobs: pd.DataFrame
    sites: pd.DataFrame
    hours_rolled_up: int
    hours_computed: int
    hours_missing: int

    def by(self, inventory: Inventory, key: str) -> EnergyRollup:
        """Group by `key` (project, access_mode, sector, factory, ...) with `aifmon.rollups.energy.summarise`."""
        return summarise(self.jobs, self.sites, inventory, key, self.start_ms, self.end_ms)


def month_bounds(month: str) -> tuple[int, int]:
    """[start, end) of calendar month `YYYY-MM` in UTC, ms since the epoch."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"month {month!r}: expected YYYY-MM") from None
    end = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def months_with_data(store: SampleReader, now_ms: int | None = None) -> list[str]:
    """`YYYY-MM` of every month from the store's oldest sample to now, newest first."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    bounds = store.time_bounds()
    first = pd.Timestamp(bounds[0] if bounds else now_ms, unit="ms").to_period("M")  # naive timestamps are UTC here
    last = pd.Timestamp(now_ms, unit="ms").to_period("M")
    return [str(p) for p in pd.period_range(first, last, freq="M")][::-1]


def month_energy(store: SampleReader, inventory: Inventory, month: str, now_ms: int | None = None) -> MonthEnergy:
    """The month's hourly rollup rows, plus up to `MAX_COMPUTED_HOURS` hours computed from samples."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    start_ms, end_ms = month_bounds(month)
    if isinstance(store, RowStore):
        gpu, node, site = (store.read_rows(t, start_ms, end_ms) for t in (TABLE, NODE_TABLE, SITE_TABLE))
    else:  # a PromQL store keeps no derived tables
        gpu = node = site = pd.DataFrame()
    done = set(site["window_start_ms"]) if len(site) else set(gpu["window_start_ms"]) if len(gpu) else set()
    bounds = store.time_bounds()
    todo: list[int] = []
    if bounds is not None:
        first = max(start_ms, bounds[0] // HOUR_MS * HOUR_MS)
        last = min(end_ms, now_ms, bounds[1] + 1)
        todo = [h for h in range(first, last, HOUR_MS) if h not in done]
    computed = sorted(todo)[-MAX_COMPUTED_HOURS:]
    jobs_parts = [gpu.drop(columns="window_start_ms")] if len(gpu) else []
    node_parts = [node.drop(columns="window_start_ms")] if len(node) else []
    site_parts = [site.drop(columns="window_start_ms")] if len(site) else []
    for hour in computed:
        ledger = compute_ledger(store, inventory, hour, min(hour + HOUR_MS, now_ms))
        jobs_parts.append(ledger.jobs[JOB_KEYS + ["energy_j", "gpu_seconds"]])
        node_parts.append(ledger.jobs[JOB_KEYS + ["node_other_j"]])
        site_parts.append(ledger.sites.reindex(columns=["factory"] + SITE_COLUMNS))
    empty_jobs = pd.DataFrame(columns=JOB_KEYS + ["energy_j", "gpu_seconds", "node_other_j"])
    if jobs_parts:
        jobs = pd.concat(jobs_parts, ignore_index=True).groupby(JOB_KEYS, as_index=False)[["energy_j", "gpu_seconds"]].sum()
        other = (pd.concat(node_parts, ignore_index=True).groupby(JOB_KEYS, as_index=False)["node_other_j"].sum()
                 if node_parts else pd.DataFrame(columns=JOB_KEYS + ["node_other_j"]))
        jobs = jobs.merge(other, on=JOB_KEYS, how="outer").fillna({"energy_j": 0.0, "gpu_seconds": 0.0, "node_other_j": 0.0})
    else:
        jobs = empty_jobs
    sites = _sum_sites(pd.concat(site_parts, ignore_index=True)) if site_parts else pd.DataFrame(columns=["factory"] + SITE_COLUMNS)
    span_end = max(start_ms + HOUR_MS, min(end_ms, now_ms))
    return MonthEnergy(month, start_ms, span_end, jobs, sites, len(done), len(computed), len(todo) - len(computed))


def _sum_sites(site: pd.DataFrame) -> pd.DataFrame:
    """Per factory sums; facility energy only over the hours a meter reported (NaN elsewhere), as the report does."""
    sums = site.groupby("factory", as_index=False)[[c for c in SITE_COLUMNS if c != "facility_energy_j"]].sum()
    metered = site[site["facility_energy_j"].notna()].groupby("factory")["facility_energy_j"].sum()
    sums["facility_energy_j"] = sums["factory"].map(metered)
    return sums
