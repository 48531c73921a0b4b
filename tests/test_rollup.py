"""Energy rollups against truths computed by hand, and against the simulator's own counters."""

import numpy as np
import pytest

from aifmon.exporters.backfill import backfill
from aifmon.exporters.simulation import FactorySimulation
from aifmon.rollups.energy import UNALLOCATED
from aifmon.rollups.hourly import NODE_TABLE, SITE_TABLE, TABLE, HourlyRollups, rollup_hour
from aifmon.rollups.ledger import energy_rollup
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.split_store import SplitStore
from aifmon.stores.store import RowWriter, series_key

T0 = 497_222 * 3_600_000  # a whole hour, in ms
GPUS = {  # (factory, node, gpu) -> counter function of seconds since T0, sample times, job by sample time
    ("alpha", "alphn0001", "0"): (lambda t: 500.0 * t, range(0, 3601, 60), lambda t: ("101", "alpha-train") if 0 < t <= 1800 else None),
    ("alpha", "alphn0002", "0"): (lambda t: 400.0 * t, range(0, 3601, 60), lambda t: ("101", "alpha-train") if 0 < t <= 1800 else None),
    # driver reload at t = 1170 s: the counter restarts from zero
    ("alpha", "alphn0001", "1"): (lambda t: 1000 + 300.0 * t if t <= 1140 else 300.0 * (t - 1170), range(0, 3601, 60),
                                  lambda t: ("102", "alpha-play")),
    # no samples between 600 s and 1500 s: the counter bridges the gap
    ("beta", "betan0001", "0"): (lambda t: 200.0 * t, [t for t in range(0, 3601, 60) if not 600 < t < 1500],
                                 lambda t: ("201", "beta-science")),
}
MODES = {"alpha-train": "Large Scale", "alpha-play": "Playground", "beta-science": "AI for Science"}

# Hand-computed truth over [T0, T0 + 1 h], in joules:
ALPHA_TRAIN = 500 * 1800 + 400 * 1800  # two nodes, first half hour
ALPHA_PLAY = 300 * 1140 + 300 * 30 + 300 * 2400  # before the reset; the reset interval counts its new value; after
BETA_SCIENCE = 200 * 3600
IDLE = 500 * 1800 + 400 * 1800  # both alpha-train GPUs after the job ended
TOTAL = ALPHA_TRAIN + ALPHA_PLAY + BETA_SCIENCE + IDLE


@pytest.fixture
def store(tmp_path):
    s = DuckDBStore(tmp_path / "r.duckdb")
    for (factory, node, gpu), (counter, times, job) in GPUS.items():
        base = {"factory": factory, "system": f"{factory}-gpu", "node": node, "gpu": gpu}
        sid = s.series_ids([series_key("aif_gpu_energy_joules_total", {**base, "uuid": "GPU-x", "model": "m"})])[0]
        s.append(np.full(len(times), sid), np.array([T0 + t * 1000 for t in times]), np.array([counter(t) for t in times]))
        for t in times:
            if job(t):
                j, p = job(t)
                labels = {"factory": factory, "system": f"{factory}-gpu", "node": node, "gpu": gpu, "job": j, "project": p,
                          "access_mode": MODES[p]}
                s.append(s.series_ids([series_key("aif_gpu_job_info", labels)]), np.array([T0 + t * 1000]), np.array([1.0]))
    yield s
    s.close()


def test_energy_per_project_matches_the_hand_computed_truth(store, small_inventory):
    r = energy_rollup(store, small_inventory, T0, T0 + 3_600_000, by="project")
    kwh = r.rows.set_index("project")["energy_kwh"]
    assert kwh["alpha-train"] == pytest.approx(ALPHA_TRAIN / 3.6e6, rel=1e-12)
    assert kwh["alpha-play"] == pytest.approx(ALPHA_PLAY / 3.6e6, rel=1e-12)
    assert kwh["beta-science"] == pytest.approx(BETA_SCIENCE / 3.6e6, rel=1e-12)
    assert kwh[UNALLOCATED] == pytest.approx(IDLE / 3.6e6, rel=1e-12)
    assert r.total_energy_kwh == pytest.approx(TOTAL / 3.6e6, rel=1e-12)
    gpu_h = r.rows.set_index("project")["gpu_hours"]
    assert gpu_h["alpha-train"] == pytest.approx(1.0) and gpu_h[UNALLOCATED] == 0.0
    # cost at 0.15 EUR/kWh; CO2e at DE 381 g/kWh for alpha-train
    row = r.rows.set_index("project").loc["alpha-train"]
    assert row["cost_eur"] == pytest.approx(0.45 * 0.15) and row["co2e_kg"] == pytest.approx(0.45 * 0.381)
    assert "Our World in Data" in r.carbon_source and "2023" in r.carbon_source
    # coverage: the 900 s gap of one of four GPUs
    assert r.coverage == pytest.approx((3 * 3600 + 2700) / (4 * 3600))


def test_groupings_reconcile_to_the_same_total(store, small_inventory):
    for by in ("job", "access_mode", "sector", "system", "factory", "country", "total"):
        r = energy_rollup(store, small_inventory, T0, T0 + 3_600_000, by=by)
        assert r.rows["energy_kwh"].sum() == pytest.approx(TOTAL / 3.6e6, rel=1e-12), by
    by_job = energy_rollup(store, small_inventory, T0, T0 + 3_600_000, by="job").rows.set_index("job")
    assert by_job.loc["101", "energy_kwh"] == pytest.approx(ALPHA_TRAIN / 3.6e6)  # one job across two nodes
    sectors = energy_rollup(store, small_inventory, T0, T0 + 3_600_000, by="sector").rows.set_index("sector")["energy_kwh"]
    assert sectors["Health & Life Sciences"] == pytest.approx(ALPHA_TRAIN / 3.6e6)


def test_range_edges_split_an_interval_in_proportion_to_time(store, small_inventory):
    r = energy_rollup(store, small_inventory, T0 + 30_000, T0 + 90_000, by="job")
    assert r.rows.set_index("job").loc["101", "energy_kwh"] == pytest.approx((500 + 400) * 60 / 3.6e6, rel=1e-12)
    halves = [energy_rollup(store, small_inventory, a, b, by="total").total_energy_kwh
              for a, b in ((T0, T0 + 1_234_567), (T0 + 1_234_567, T0 + 3_600_000))]
    assert sum(halves) == pytest.approx(TOTAL / 3.6e6, rel=1e-12)


def test_bad_rollup_arguments(store, small_inventory):
    with pytest.raises(ValueError, match="cannot group by"):
        energy_rollup(store, small_inventory, T0, T0 + 1, by="colour")
    with pytest.raises(ValueError, match="after its start"):
        energy_rollup(store, small_inventory, T0, T0, by="project")


def test_hourly_rollup_is_idempotent_and_matches_the_raw_rollup(store, small_inventory):
    first = rollup_hour(store, T0)
    again = rollup_hour(store, T0)
    assert first.equals(again)
    stored = store.read_rows(TABLE, T0, T0 + 1)
    assert len(stored) == len(first)
    assert stored["energy_j"].sum() == pytest.approx(TOTAL, rel=1e-12)
    with pytest.raises(ValueError, match="whole hour"):
        rollup_hour(store, T0 + 1)


class WrittenRows(RowWriter):
    """A write-only row sink, as the InfluxDB sink is: keeps what it is given, gives nothing back."""

    url = "test://rows"

    def __init__(self):
        self.written = {}

    def replace_rows(self, table, window_start_ms, rows):
        self.written[(table, window_start_ms)] = rows

    def close(self):
        pass


def test_hourly_rollups_over_a_split_store_read_its_samples_and_write_its_rows(store, tmp_path):
    """`rollup schedule --rows-store`: samples from one store, rows to another; rows a write-only sink cannot give back
    are computed again by the next process, rows a DuckDB file keeps are not."""
    now = T0 + 2 * 3_600_000  # the hour at T0 is finished, and (late_window_s=0) not rechecked for late data
    sink = WrittenRows()
    assert HourlyRollups(SplitStore(store, sink, since_ms=T0), late_window_s=0).catch_up(now_ms=now) == 1
    assert set(sink.written) == {(TABLE, T0), (NODE_TABLE, T0), (SITE_TABLE, T0)}
    assert sink.written[(TABLE, T0)]["energy_j"].sum() == pytest.approx(TOTAL, rel=1e-12)
    assert HourlyRollups(SplitStore(store, sink, since_ms=T0), late_window_s=0).catch_up(now_ms=now) == 1

    with DuckDBStore(tmp_path / "rows.duckdb") as rows:
        split = SplitStore(store, rows, since_ms=T0)
        assert HourlyRollups(split, late_window_s=0).catch_up(now_ms=now) == 1
        assert split.read_rows(TABLE, T0, T0 + 1)["energy_j"].sum() == pytest.approx(TOTAL, rel=1e-12)
        assert HourlyRollups(split, late_window_s=0).catch_up(now_ms=now) == 0


def test_rollup_of_a_simulated_day_equals_the_simulators_counters(tmp_path, small_inventory):
    """End to end: simulated history in the store, rolled up hour by hour, equals the simulator's own counters."""
    epoch = T0 / 1000 - 7200
    store = DuckDBStore(tmp_path / "sim.duckdb")
    truth = 0.0
    for fid in ("alpha", "beta"):
        f = small_inventory.factory(fid)
        backfill(store, FactorySimulation(f, small_inventory.projects_of(fid), epoch=epoch, step_s=5.0), epoch, epoch + 4 * 3600 + 1, 60.0)
        check = FactorySimulation(f, small_inventory.projects_of(fid), epoch=epoch, step_s=5.0)
        start, end = check.snapshot(T0 / 1000), check.snapshot(T0 / 1000 + 7200)
        truth += (end.gpu_energy_joules - start.gpu_energy_joules).sum()
    HourlyRollups(store).catch_up(now_ms=T0 + 3 * 3_600_000)
    hourly = store.read_rows(TABLE, T0, T0 + 2 * 3_600_000)
    assert hourly["energy_j"].sum() == pytest.approx(truth, rel=1e-9)
    direct = energy_rollup(store, small_inventory, T0, T0 + 7_200_000, by="project")
    assert direct.total_energy_kwh * 3.6e6 == pytest.approx(truth, rel=1e-9)
    assert direct.coverage == pytest.approx(1.0)
    store.close()
