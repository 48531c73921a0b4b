"""HourlyRollups' catch-up (issue #15): each finished hour computed once, the hours it has just computed not computed a
second time by the late-data recheck of the same call (at `aifmon up`'s start: the largest factory's last 3 hours of the
backfilled day), and `caught_up` set once every finished hour is written (`aifmon up` starts its alert evaluator then)."""

from __future__ import annotations

import numpy as np
import pytest

from aifmon.rollups import hourly
from aifmon.rollups.hourly import SETTLE_MS, SITE_TABLE, HourlyRollups
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key

H, MIN = 3_600_000, 60_000
T0 = 1_700_000_000_000 // H * H  # on the hour
WATTS = 300.0


def test_catch_up_computes_each_hour_once_and_the_recheck_only_hours_computed_before(tmp_path, monkeypatch):
    store = DuckDBStore(tmp_path / "catch_up.duckdb")
    t = np.arange(T0, T0 + 5 * H + 1, MIN)  # one GPU's counter, a sample a minute for 5 hours, the last on the hour
    labels = {"factory": "f", "system": "s", "node": "n1", "gpu": "0"}
    store.append(store.series_ids([series_key("aif_gpu_energy_joules_total", labels)] * len(t)), t, WATTS * (t - T0) / 1000.0)
    computed: list[int] = []
    compute = hourly._hour_ledger

    def counted(s, hour_ms, inventory):
        computed.append(hour_ms)
        return compute(s, hour_ms, inventory)

    monkeypatch.setattr(hourly, "_hour_ledger", counted)
    rollups = HourlyRollups(store, None, recheck_every_s=0)  # rechecks the late window (3 h) at every catch-up
    assert not rollups.caught_up.is_set()
    now = T0 + 5 * H + SETTLE_MS  # five finished hours, the last three still in the late window
    assert rollups.catch_up(now_ms=now) == 5
    assert computed == [T0 + h * H for h in range(5)], "each hour once: the recheck leaves the hours it just computed"
    assert rollups.caught_up.is_set()
    site = store.read_rows(SITE_TABLE, T0, T0 + 5 * H).sort_values("window_start_ms")
    assert site["window_start_ms"].tolist() == [T0 + h * H for h in range(5)]
    assert site["gpu_energy_j"].tolist() == pytest.approx([WATTS * 3600.0] * 5, rel=1e-12)

    computed.clear()
    assert rollups.catch_up(now_ms=now) == 0  # nothing new, nothing changed
    assert computed == [T0 + h * H for h in (2, 3, 4)], "the next recheck computes the late window's hours again"
    store.close()


def test_a_store_without_samples_is_caught_up_at_once(tmp_path):
    """`aifmon up --backfill-hours 0` on a new store: its alert evaluator does not wait for the first samples."""
    store = DuckDBStore(tmp_path / "empty.duckdb")
    rollups = HourlyRollups(store, None)
    assert rollups.catch_up(now_ms=T0) == 0
    assert rollups.caught_up.is_set()
    store.close()
