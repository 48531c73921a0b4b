"""Retention and downsampling of the embedded store: old raw samples become per-minute aggregates, energy stays exact."""

import numpy as np
import pytest

from aifmon.rollups.ledger import energy_rollup
from aifmon.stores.duckdb_store import DuckDBStore, Retention
from aifmon.stores.store import StoreConfigError, open_store, series_key

T0 = 497_222 * 3_600_000  # a whole hour, ms
STEP = 15_000


def _fill(store, hours=5):
    gpu = {"factory": "alpha", "system": "alpha-gpu", "node": "alphn0001", "gpu": "0"}
    energy, power, job = store.series_ids([
        series_key("aif_gpu_energy_joules_total", gpu), series_key("aif_gpu_power_watts", gpu),
        series_key("aif_gpu_job_info", {**gpu, "job": "7", "project": "alpha-train", "access_mode": "Large Scale"})])
    t = T0 + np.arange(0, hours * 3_600_000 + 1, STEP)
    watts = np.where((t // 60_000) % 2 == 0, 400.0, 600.0)  # alternating minutes: a gauge whose mean matters
    joules = np.concatenate(([0.0], np.cumsum(watts[:-1] * STEP / 1000)))  # exact integral of that power
    for k in range(len(t)):
        store.append(np.array([energy, power, job]), np.full(3, t[k]), np.array([joules[k], watts[k], 1.0]))
    return t, joules


def test_compaction_keeps_energy_exact_and_drops_what_retention_says(tmp_path, small_inventory):
    store = DuckDBStore(tmp_path / "r.duckdb", retention=Retention(raw_days=1 / 24, minute_days=4 / 24))
    t, joules = _fill(store)
    now = int(t[-1]) + 1
    # Past the raw retention there is one sample per minute (its last, at hh:mm:45): a range starting on one
    # is exact; elsewhere its edge is resolved to the minute.
    start = now - 3 * 3_600_000 + 45_000 - 1
    before = energy_rollup(store, small_inventory, start, now - 60_000, by="project").rows
    done = store.compact(now_ms=now)
    assert done["minutes_written"] == 5 * 60 * 3 - 2 * 3  # three series, every minute settled (two minutes still raw)
    with store._cursor() as cur:
        oldest_raw = cur.execute("SELECT min(t_ms) FROM samples").fetchone()[0]
        oldest_minute = cur.execute("SELECT min(t_ms) FROM samples_1m").fetchone()[0]
    assert now - 3_600_000 <= oldest_raw < now - 3_600_000 + STEP, "raw samples older than raw_days are gone"
    assert oldest_minute >= now - 4 * 3_600_000 - 60_000
    after = energy_rollup(store, small_inventory, start, now - 60_000, by="project").rows
    # a range that starts in the downsampled past and ends in raw data: same energy, same job, to the joule
    assert after.set_index("project")["energy_kwh"]["alpha-train"] == pytest.approx(
        before.set_index("project")["energy_kwh"]["alpha-train"], rel=1e-12)
    old = store.range("aif_gpu_power_watts", now - 3 * 3_600_000, now - 2 * 3_600_000)
    assert set(np.round(old["value"], 6)) == {400.0, 600.0}, "gauges are per-minute means"
    assert store.compact(now_ms=now)["minutes_written"] == 0, "compaction is incremental"
    store.close()


def test_retention_options_come_from_the_store_url(tmp_path):
    store = open_store(f"duckdb:///{tmp_path}/u.duckdb?raw_days=2&minute_days=30")
    assert store.retention == Retention(2.0, 30.0)
    store.close()
    with pytest.raises(StoreConfigError, match="raw_days"):
        open_store(f"duckdb:///{tmp_path}/u.duckdb?raw_days=9&minute_days=3")
    with pytest.raises(StoreConfigError, match="unknown option"):
        open_store(f"duckdb:///{tmp_path}/u.duckdb?keep=forever")


def test_dcgm_exporters_energy_counter_ages_into_its_last_value_like_any_counter(tmp_path):
    """dcgm-exporter names its energy counter without `_total`; past the raw retention its minute is its last value (an
    exact counter reading), not the minute's mean, so energy read from aged data stays exact."""
    store = DuckDBStore(tmp_path / "d.duckdb", retention=Retention(raw_days=1 / 24, minute_days=4 / 24))
    (sid,) = store.series_ids([series_key("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", {"Hostname": "n1", "gpu": "0", "UUID": "GPU-1"})])
    t = T0 + np.arange(0, 3 * 3_600_000 + 1, STEP)
    mj = np.arange(len(t)) * 5_000_000.0  # 5 kJ per 15 s
    for k in range(len(t)):
        store.append(np.array([sid]), np.array([t[k]]), np.array([mj[k]]))
    store.compact(now_ms=int(t[-1]) + 1)
    old = store.range_arrays("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", T0, T0 + 3_600_000)
    readings = dict(zip(t.tolist(), mj.tolist()))
    assert len(old.t_ms) >= 59 and all(readings[int(ts)] == v for ts, v in zip(old.t_ms, old.value)), "each minute is a real reading"
