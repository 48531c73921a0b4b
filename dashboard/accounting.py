"""A month's attributed energy for the Projects and Efficiency pages: the energy ledger (`aifmon.rollups.ledger`) of the
month so far, the same figures `aifmon rollup energy` and the monthly report give.

A page callback stays bounded: at most `MAX_COMPUTED_HOURS` hours are computed from samples per read (the newest
first; hours the ledger keeps in memory for a store without rows cost nothing), and the page says how many hours it
left out."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from aifmon.rollups.energy import EnergyRollup
from aifmon.rollups.ledger import LedgerRead, month_range, read_ledger
from aifmon.stores.store import SampleReader
from aifmon.telemetry.inventory import Inventory

MAX_COMPUTED_HOURS = 12
"""Hours without settled ledger rows computed from samples per read (each reads that hour's samples of every GPU)."""


@dataclass(frozen=True)
class MonthEnergy:
    """The ledger of one month up to now: `jobs` (JOB_KEYS + energy_j, gpu_seconds, node_other_j, J and s) and `sites`
    (one row per factory) summed over its hours; `hours_rolled_up` came from the ledger's rows, `hours_computed` from
    samples, `hours_missing` were left out (see module docstring)."""

    month: str
    read: LedgerRead

    @property
    def jobs(self) -> pd.DataFrame:
        return self.read.job_totals()

    @property
    def sites(self) -> pd.DataFrame:
        return self.read.factories()

    @property
    def hours_rolled_up(self) -> int:
        return self.read.hours_from_rows

    @property
    def hours_computed(self) -> int:
        return self.read.windows_from_samples

    @property
    def hours_missing(self) -> int:
        return self.read.hours_missing

    def by(self, inventory: Inventory, key: str) -> EnergyRollup:
        """Group by `key` (project, access_mode, sector, factory, ...), as `aifmon rollup energy --by` does."""
        return self.read.by(inventory, key)


def months_with_data(store: SampleReader, now_ms: int | None = None) -> list[str]:
    """`YYYY-MM` of every month from the store's oldest sample to now, newest first."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    bounds = store.time_bounds()
    first = pd.Timestamp(bounds[0] if bounds else now_ms, unit="ms").to_period("M")  # naive timestamps are UTC here
    last = pd.Timestamp(now_ms, unit="ms").to_period("M")
    return [str(p) for p in pd.period_range(first, last, freq="M")][::-1]


def month_energy(store: SampleReader, inventory: Inventory, month: str, now_ms: int | None = None) -> MonthEnergy:
    """The ledger of `month` (`YYYY-MM`) from its start to now (or its end), bounded as the module docstring says."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    start_ms, end_ms = month_range(month)
    if now_ms <= start_ms:
        return MonthEnergy(month, LedgerRead.nothing(start_ms, end_ms))
    return MonthEnergy(month, read_ledger(store, inventory, start_ms, min(end_ms, now_ms), now_ms, max_computed_hours=MAX_COMPUTED_HOURS))
