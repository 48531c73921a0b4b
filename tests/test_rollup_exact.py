"""Exact energy and fair attribution against truths computed by hand.

The counter kernel on arrays: resets, RAPL wraps, gaps, out-of-order and duplicate samples, power
integration with range edges. Then a 4-hour window around midnight in a store: a job across midnight
and across two nodes, a shared node with a BMC power reading, a node with RAPL counters (with a
reset), an idle hour, a facility meter; attribution from job info and from sacct records; and the
same figures when `energy_rollup` reads settled hours from the hourly rollups, late data included.
"""

from datetime import UTC

import numpy as np
import pandas as pd
import pytest

from aifmon.rollups.counters import counter_increments, power_integral
from aifmon.rollups.energy import UNALLOCATED, compute_ledger
from aifmon.rollups.hourly import LATE_WINDOW_S, NODE_TABLE, SITE_TABLE, TABLE, HourlyRollups, rollup_hour
from aifmon.rollups.ledger import energy_rollup
from aifmon.rollups.slurm_accounting import AccountingError, expand_nodelist, gpus_in_tres, parse_sacct
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key

H = 3_600_000


# -- the counter kernel --------------------------------------------------------------------------

def _inc(values, times_s, **kw):
    n = len(values)
    return counter_increments(np.zeros(n), np.array(times_s) * 1000, np.array(values, dtype=float), 0, 10**9, **kw)


def test_a_counter_reset_counts_the_new_value():
    iv = _inc([0, 100, 200, 50, 150], [0, 1, 2, 3, 4])
    assert iv.energy_j.sum() == 350 and iv.resets == 1  # 100 + 100 + 50 (restarted from 0) + 100


def test_a_rapl_wrap_is_told_from_a_reset_by_the_power_it_would_need():
    wrapped = _inc([900, 980, 30, 100], [0, 1, 2, 3], wrap_j=1000.0, max_power_w=100.0)
    assert wrapped.energy_j.sum() == 80 + (1000 - 980 + 30) + 70 and (wrapped.wraps, wrapped.resets) == (1, 0)
    # 1000 - 600 + 10 = 410 J in 1 s would be 410 W > 100 W: a reset, not a wrap
    reset = _inc([500, 600, 10, 20], [0, 1, 2, 3], wrap_j=1000.0, max_power_w=100.0)
    assert reset.energy_j.sum() == 100 + 10 + 10 and (reset.wraps, reset.resets) == (0, 1)


def test_a_gap_is_bridged_exactly_by_the_counter():
    iv = _inc([0, 50, 500, 550], [0, 10, 100, 110])  # 5 W throughout, nothing between 10 s and 100 s
    assert iv.energy_j.sum() == 550 and iv.interval_s.max() == 90


def test_out_of_order_and_duplicate_samples_count_once():
    t = [0, 1, 2, 3, 4, 5]
    v = [0.0, 10, 20, 30, 40, 50]
    rng = np.random.default_rng(7)
    order = rng.permutation(len(t))
    stream = np.zeros(len(t) + 2)
    times = np.append(np.array(t)[order], [2, 4]) * 1000  # two samples re-sent (an HA pair of scrapers)
    values = np.append(np.array(v)[order], [20, 40])
    iv = counter_increments(stream, times, values, 0, 10**9)
    assert iv.energy_j.sum() == 50 and iv.duplicates == 2 and iv.resets == 0


def test_shuffled_streams_with_conflicting_duplicates_keep_the_largest_value():
    # two streams, shuffled together; stream 0 has two samples at t = 2 s (20 and 5): keeping 5 would read the
    # next step, 5 -> 30, as a climb after a reset at 2 s (10 + 5 + 25 = 40 J and one reset) instead of 30 J
    stream = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    t = np.array([0, 1, 2, 2, 3, 0, 1, 2]) * 1000
    v = np.array([0.0, 10, 20, 5, 30, 100, 150, 210])
    order = np.random.default_rng(3).permutation(len(t))
    iv = counter_increments(stream[order], t[order], v[order], 0, 10**9)
    assert (iv.energy_j[iv.stream == 0].sum(), iv.energy_j[iv.stream == 1].sum()) == (30.0, 110.0)
    assert (iv.resets, iv.duplicates) == (0, 1)
    assert iv.t_end_ms.tolist() == [1000, 2000, 3000, 1000, 2000]  # in (stream, time) order


def test_power_is_integrated_by_trapezoids_and_split_at_range_edges():
    stream, t, w = np.zeros(2), np.array([0, 10_000]), np.array([0.0, 100.0])
    whole = power_integral(stream, t, w, 0, 10_000).energy_j.sum()
    first = power_integral(stream, t, w, 0, 5_000).energy_j.sum()
    second = power_integral(stream, t, w, 5_000, 10_000).energy_j.sum()
    assert (whole, first, second) == (500.0, 125.0, 375.0)


# -- a store around midnight ----------------------------------------------------------------------

D = 480_000 * H  # a midnight (UTC): 480,000 h = 20,000 days after the epoch
START, END = D - 2 * H, D + 2 * H
STEP_S = 60
TIMES = np.arange(START - 10 * 60_000, END + 10 * 60_000 + 1, STEP_S * 1000)  # a margin on both sides
MODES = {"alpha-train": "Large Scale", "alpha-play": "Playground"}


def _gpu_power(node: str, gpu: int, t_ms: int) -> tuple[float, str | None, str | None]:
    """(W over the interval ending at t_ms, job, project) of the scenario."""
    if node in ("alphn0001", "alphn0002") and D - H < t_ms <= D + H:
        return 400.0, "501", "alpha-train"  # across midnight and across two nodes
    if node == "alphn0003" and gpu in (0, 1) and t_ms > D - H:
        return 300.0, "601", "alpha-play"  # the shared node
    if node == "alphn0003" and gpu in (2, 3) and D - H < t_ms <= D:
        return 300.0, "602", "alpha-train"
    return 60.0, None, None  # idle; the first hour is idle everywhere


def _add(store, metric, labels, times, values):
    sid = store.series_ids([series_key(metric, labels)])[0]
    store.append(np.full(len(times), sid), np.asarray(times), np.asarray(values, dtype=float))


@pytest.fixture
def midnight(tmp_path):
    s = DuckDBStore(tmp_path / "m.duckdb")
    base = {"factory": "alpha", "system": "alpha-gpu"}
    for n in range(1, 5):
        node = f"alphn{n:04d}"
        for g in range(4):
            labels = {**base, "node": node, "gpu": str(g)}
            power = np.array([_gpu_power(node, g, int(t))[0] for t in TIMES])
            energy = np.concatenate([[1e6], 1e6 + np.cumsum(power[1:] * STEP_S)])
            _add(s, "aif_gpu_energy_joules_total", {**labels, "uuid": f"GPU-{n}-{g}", "model": "H100"}, TIMES, energy)
            for t in TIMES:
                _, job, project = _gpu_power(node, g, int(t))
                if job:
                    _add(s, "aif_gpu_job_info", {**labels, "job": job, "project": project, "access_mode": MODES[project]}, [t], [1.0])
    _add(s, "aif_node_power_watts", {**base, "node": "alphn0003", "source": "bmc"}, TIMES, np.full(len(TIMES), 2000.0))
    _add(s, "aif_node_power_watts", {**base, "node": "alphn0003", "source": "estimate"}, TIMES, np.full(len(TIMES), 1.0))
    # RAPL on alphn0001: package 100 W with a counter reset at D - 30 min, DRAM 20 W
    package = np.cumsum(np.full(len(TIMES), 100.0 * STEP_S))
    reset_at = np.searchsorted(TIMES, D - 30 * 60_000)
    package[reset_at:] -= package[reset_at - 1]  # restarted from zero at the interval's start
    _add(s, "aif_cpu_energy_joules_total", {**base, "node": "alphn0001", "socket": "0", "domain": "package"}, TIMES, package)
    _add(s, "aif_cpu_energy_joules_total", {**base, "node": "alphn0001", "socket": "0", "domain": "dram"}, TIMES,
         np.cumsum(np.full(len(TIMES), 20.0 * STEP_S)))
    _add(s, "aif_facility_power_watts", {"factory": "alpha", "feed": "main"}, TIMES, np.full(len(TIMES), 5040.0))
    yield s
    s.close()


# Hand-computed truth over [D - 2 h, D + 2 h), J
GPU_501 = 8 * 400 * 2 * 3600
GPU_601 = 2 * 300 * 3 * 3600
GPU_602 = 2 * 300 * 1 * 3600
GPU_IDLE = 8 * 60 * 2 * 3600 + 2 * 60 * 3600 + 2 * 60 * 3 * 3600 + 4 * 60 * 4 * 3600
GPU_TOTAL = GPU_501 + GPU_601 + GPU_602 + GPU_IDLE  # 40,320,000 J
# alphn0001 RAPL, 120 W for 4 h: job 501 held all 4 GPUs in hours 2 and 3 -> half
RAPL = 120 * 4 * 3600
# alphn0003: BMC 2000 W minus its GPUs, per hour: 1760 W (idle hour), 800 W (601 and 602 half each), 1280 W twice (601 half)
OTHER_501 = 120 * 2 * 3600
OTHER_601 = 400 * 3600 + 640 * 2 * 3600
OTHER_602 = 400 * 3600
OTHER_IDLE = 120 * 2 * 3600 + 1760 * 3600 + 640 * 2 * 3600
IT_TOTAL = GPU_TOTAL + RAPL + (1760 + 800 + 1280 + 1280) * 3600


def test_attribution_matches_the_hand_computed_truth(midnight, small_inventory):
    r = energy_rollup(midnight, small_inventory, START, END, by="job").rows.set_index("job")
    for job, gpu_j, other_j, gpu_h in (("501", GPU_501, OTHER_501, 16), ("601", GPU_601, OTHER_601, 6), ("602", GPU_602, OTHER_602, 2),
                                       (UNALLOCATED, GPU_IDLE, OTHER_IDLE, 0)):
        assert r.loc[job, "energy_kwh"] == pytest.approx(gpu_j / 3.6e6, rel=1e-12), job
        assert r.loc[job, "node_other_kwh"] == pytest.approx(other_j / 3.6e6, rel=1e-9), job
        assert r.loc[job, "gpu_hours"] == pytest.approx(gpu_h, rel=1e-12), job
    assert OTHER_501 + OTHER_601 + OTHER_602 + OTHER_IDLE == IT_TOTAL - GPU_TOTAL


def test_projects_and_idle_reconcile_to_the_measured_total(midnight, small_inventory):
    r = energy_rollup(midnight, small_inventory, START, END, by="project")
    rows = r.rows.set_index("project")
    assert r.total_energy_kwh == pytest.approx(GPU_TOTAL / 3.6e6, rel=1e-12)
    assert rows["it_kwh"].sum() == pytest.approx(IT_TOTAL / 3.6e6, rel=1e-9)  # well inside the 0.1 % the board asks
    assert rows.loc["alpha-train", "energy_kwh"] == pytest.approx((GPU_501 + GPU_602) / 3.6e6, rel=1e-12)
    assert r.coverage == pytest.approx(1.0)
    assert r.notes["counter_resets"] == 1  # the RAPL package reset
    total = energy_rollup(midnight, small_inventory, START, END, by="total").rows.iloc[0]
    assert total["pue"] == pytest.approx(5040 * 4 * 3600 / IT_TOTAL, rel=1e-9)
    assert total["facility_kwh"] == pytest.approx(5040 * 4 / 1000, rel=1e-12)
    # cost and CO2e on the attributed IT energy: 0.15 EUR/kWh, DE 381 g/kWh
    assert total["cost_eur"] == pytest.approx(IT_TOTAL / 3.6e6 * 0.15, rel=1e-9)
    assert total["co2e_kg"] == pytest.approx(IT_TOTAL / 3.6e6 * 0.381, rel=1e-9)


def test_a_job_across_midnight_splits_between_the_days_and_adds_up(midnight, small_inventory):
    before = energy_rollup(midnight, small_inventory, START, D, by="job").rows.set_index("job")
    after = energy_rollup(midnight, small_inventory, D, END, by="job").rows.set_index("job")
    assert before.loc["501", "energy_kwh"] == pytest.approx(GPU_501 / 2 / 3.6e6, rel=1e-12)
    assert after.loc["501", "energy_kwh"] == pytest.approx(GPU_501 / 2 / 3.6e6, rel=1e-12)
    assert "602" not in after.index
    both = before["it_kwh"].sum() + after["it_kwh"].sum()
    assert both == pytest.approx(IT_TOTAL / 3.6e6, rel=1e-9)


def test_the_idle_hour_is_all_unallocated(midnight, small_inventory):
    r = energy_rollup(midnight, small_inventory, START, START + H, by="project").rows.set_index("project")
    assert list(r.index) == [UNALLOCATED]
    assert r.loc[UNALLOCATED, "energy_kwh"] == pytest.approx(16 * 60 * 3600 / 3.6e6, rel=1e-12)
    assert r.loc[UNALLOCATED, "node_other_kwh"] == pytest.approx((120 + 1760) * 3600 / 3.6e6, rel=1e-9)
    assert r.loc[UNALLOCATED, "gpu_hours"] == 0.0


def test_hourly_rollups_sum_to_the_direct_rollup_and_late_data_reopens_its_hour(midnight, small_inventory):
    for hour in range(START, END, H):
        rollup_hour(midnight, hour, small_inventory)
        first = midnight.read_rows(TABLE, hour, hour + 1)
        rollup_hour(midnight, hour, small_inventory)
        assert midnight.read_rows(TABLE, hour, hour + 1).equals(first)  # idempotent
    gpu = midnight.read_rows(TABLE, START, END)
    node = midnight.read_rows(NODE_TABLE, START, END)
    assert gpu["energy_j"].sum() == pytest.approx(GPU_TOTAL, rel=1e-12)
    assert gpu["energy_j"].sum() + node["node_other_j"].sum() == pytest.approx(IT_TOTAL, rel=1e-9)
    sites = midnight.read_rows(SITE_TABLE, START, END)
    assert sites["it_energy_j"].sum() == pytest.approx(IT_TOTAL, rel=1e-9)

    # a GPU of beta arrives late for the hour D .. D + 1 h (a collector catching up after an outage)
    rollups = HourlyRollups(midnight, small_inventory, recheck_every_s=0)
    assert rollups.catch_up(now_ms=END + 10 * 60_000) == 1  # the hour before START (the samples' margin) was not done
    assert rollups.catch_up(now_ms=END + 10 * 60_000) == 0  # everything is done and nothing changed
    late = np.arange(D, D + H, 60_000)
    _add(midnight, "aif_gpu_energy_joules_total", {"factory": "beta", "system": "beta-gpu", "node": "betan0001", "gpu": "0",
                                                    "uuid": "GPU-b", "model": "A100"}, late, 250.0 * (late - D) / 1000)
    assert rollups.catch_up(now_ms=END + 10 * 60_000) == 1  # only the hour the late samples fall in
    hour = midnight.read_rows(TABLE, D, D + 1)
    assert hour.loc[hour["factory"] == "beta", "energy_j"].sum() == pytest.approx(250.0 * (3600 - 60), rel=1e-12)


# -- energy_rollup reads settled hours from the hourly rollups --------------------------------------------

EDGE = 20 * 60_000  # partial first and last hours
SETTLED = END + int(LATE_WINDOW_S * 1000) + H  # a "now" at which every hour of the fixture has settled
NUMBERS = ["energy_kwh", "node_other_kwh", "it_kwh", "share", "gpu_hours", "avg_power_kw", "cost_eur", "co2e_kg"]


def _same_rows(a, b, keys):
    a, b = a.rows.set_index(keys).sort_index(), b.rows.set_index(keys).sort_index()
    assert list(a.index) == list(b.index)
    pd.testing.assert_frame_equal(a[NUMBERS], b[NUMBERS], check_exact=False, rtol=1e-9, atol=0)


def test_rollups_read_for_whole_hours_give_the_raw_answer(midnight, small_inventory):
    for hour in range(START, END, H):
        rollup_hour(midnight, hour, small_inventory)
    start, end = START + EDGE, END - EDGE
    for by, keys in (("job", ["factory", "job", "project"]), ("project", ["project"]), ("access_mode", ["access_mode"])):
        reused = energy_rollup(midnight, small_inventory, start, end, by=by, now_ms=SETTLED)
        raw = energy_rollup(midnight, small_inventory, start, end, by=by, from_hourly=False)
        assert (reused.notes["hours_from_hourly_rollups"], reused.notes["hours_from_samples"]) == (2, pytest.approx(4 / 3))
        assert (raw.notes["hours_from_hourly_rollups"], raw.notes["hours_from_samples"]) == (0, pytest.approx(10 / 3))
        _same_rows(reused, raw, keys)
        assert reused.coverage == raw.coverage == pytest.approx(1.0)
    total = energy_rollup(midnight, small_inventory, start, end, by="total", now_ms=SETTLED).rows.iloc[0]
    raw_total = energy_rollup(midnight, small_inventory, start, end, by="total", from_hourly=False).rows.iloc[0]
    # by hand, W x s: 40 min all idle, the hour before midnight, the hour after, 40 min with job 601 alone
    gpu_j = 16 * 60 * 2400 + (3200 + 600 + 600 + 240) * 3600 + (3200 + 600 + 120 + 240) * 3600 + (480 + 600 + 120 + 240) * 2400
    assert total["energy_kwh"] == pytest.approx(gpu_j / 3.6e6, rel=1e-12)
    for col in ("it_kwh", "facility_kwh", "pue"):
        assert total[col] == pytest.approx(raw_total[col], rel=1e-9), col
    assert total["facility_kwh"] == pytest.approx(5040 * (4 * 3600 - 2 * 1200) / 3.6e6, rel=1e-12)


def test_late_samples_for_a_rolled_up_hour_are_read_until_it_settles_and_after_it_is_reopened(midnight, small_inventory):
    for hour in range(START, END, H):
        rollup_hour(midnight, hour, small_inventory)
    late = np.arange(D, D + H, 60_000)  # a GPU of beta, scraped for the hour after midnight, arrives after its rollup
    _add(midnight, "aif_gpu_energy_joules_total", {"factory": "beta", "system": "beta-gpu", "node": "betan0001", "gpu": "0",
                                                    "uuid": "GPU-b", "model": "A100"}, late, 250.0 * (late - D) / 1000)
    beta_kwh = 250.0 * (3600 - 60) / 3.6e6
    # inside the late window the rollups still recheck the hour, so it is computed from samples
    open_now = D + H + int(LATE_WINDOW_S * 1000) - 1
    recent = energy_rollup(midnight, small_inventory, START, END, by="factory", now_ms=open_now)
    assert recent.notes["hours_from_hourly_rollups"] == 2  # the two hours before midnight
    assert recent.rows.set_index("factory").loc["beta", "energy_kwh"] == pytest.approx(beta_kwh, rel=1e-12)
    # once settled, the rows stand for the hour as stored (VictoriaMetrics' rule for its result cache) ...
    stale = energy_rollup(midnight, small_inventory, START, END, by="factory", now_ms=SETTLED)
    assert stale.notes["hours_from_hourly_rollups"] == 4 and "beta" not in set(stale.rows["factory"])
    # ... until the hour is re-opened (`aifmon rollup hourly --from T`), as history loaded late must be
    rollups = HourlyRollups(midnight, small_inventory)
    rollups.reopen(D, D + H)
    rollups.catch_up(now_ms=END + 10 * 60_000)
    fresh = energy_rollup(midnight, small_inventory, START, END, by="factory", now_ms=SETTLED)
    assert fresh.notes["hours_from_hourly_rollups"] == 4
    assert fresh.rows.set_index("factory").loc["beta", "energy_kwh"] == pytest.approx(beta_kwh, rel=1e-12)
    _same_rows(fresh, energy_rollup(midnight, small_inventory, START, END, by="factory", from_hourly=False), ["factory"])


def test_history_imported_after_its_hours_were_rolled_up_recomputes_them(midnight, small_inventory, tmp_path):
    """What `aifmon store import` does: the hours the imported samples can change are rolled up again."""
    from aifmon.ingest.openmetrics import import_openmetrics
    from aifmon.rollups.hourly import reroll_stored_hours

    for hour in range(START, END, H):
        rollup_hour(midnight, hour, small_inventory)
    late = np.arange(D, D + H, 60_000)
    history = tmp_path / "beta.om"
    history.write_text("# TYPE aif_gpu_energy_joules counter\n" + "".join(
        f'aif_gpu_energy_joules_total{{factory="beta",system="beta-gpu",node="betan0001",gpu="0"}} {250.0 * (t - D) / 1000} {t / 1000}\n'
        for t in late) + "# EOF\n")
    imported = import_openmetrics(midnight, history)
    assert (imported.samples, imported.first_ms, imported.last_ms) == (60, D, D + H - 60_000)
    assert "beta" not in set(energy_rollup(midnight, small_inventory, START, END, by="factory", now_ms=SETTLED).rows["factory"])
    # the hour itself and its neighbours (an interval is split across the hours it spans)
    assert reroll_stored_hours(midnight, imported.first_ms, imported.last_ms, small_inventory) == 3
    fresh = energy_rollup(midnight, small_inventory, START, END, by="factory", now_ms=SETTLED)
    assert fresh.notes["hours_from_hourly_rollups"] == 4
    assert fresh.rows.set_index("factory").loc["beta", "energy_kwh"] == pytest.approx(250.0 * (3600 - 60) / 3.6e6, rel=1e-12)
    from aifmon.rollups.report_format import format_energy_rollup
    assert "Sources: 4 settled hour(s) from the hourly rollups, 0.00 h from samples" in format_energy_rollup(fresh, "table")


def test_sacct_attribution_and_another_gap_limit_are_computed_from_samples(midnight, small_inventory):
    for hour in range(START, END, H):
        rollup_hour(midnight, hour, small_inventory)
    jobs = parse_sacct(SACCT.format(m1=_iso(D - H), p1=_iso(D + H), d=_iso(D)), "sacct.txt")
    r = energy_rollup(midnight, small_inventory, START, END, by="job", accounting=jobs, now_ms=SETTLED)
    assert (r.notes["hours_from_hourly_rollups"], r.notes["hours_from_samples"]) == (0, 4)
    assert r.rows.set_index("job").loc["602", "energy_kwh"] == pytest.approx(4 * 300 * 3600 / 2 / 3.6e6, rel=1e-12)  # sacct's split
    strict = energy_rollup(midnight, small_inventory, START, END, by="total", max_gap_s=30, now_ms=SETTLED)
    assert strict.notes["hours_from_hourly_rollups"] == 0 and strict.coverage == 0.0  # 60 s scrapes: none is covered


SACCT = """JobID|Account|Partition|QOS|Start|End|NodeList|AllocTRES
501|alpha-train|booster|ls|{m1}|{p1}|alphn[0001-0002]|billing=128,cpu=128,gres/gpu=8,mem=1000G,node=2
501.batch|alpha-train|booster|ls|{m1}|{p1}|alphn0001|cpu=64,gres/gpu=4,mem=500G,node=1
601|alpha-play|booster|play|{m1}|Unknown|alphn0003|billing=16,cpu=16,gres/gpu=2,node=1
602|alpha-train|booster|ls|{m1}|{d}|alphn0003|cpu=16,gres/gpu:h100=2,node=1
700|alpha-train|booster|ls|None|Unknown|None assigned|gres/gpu=4
"""


def _iso(ms: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_attribution_from_sacct_records(midnight, small_inventory):
    jobs = parse_sacct(SACCT.format(m1=_iso(D - H), p1=_iso(D + H), d=_iso(D)), "sacct.txt")
    assert [j.job for j in jobs] == ["501", "601", "602"]  # the step and the job that never started are skipped
    assert jobs[0].nodes == ("alphn0001", "alphn0002") and jobs[0].gpus_per_node == 4 and jobs[1].end_ms is None
    r = energy_rollup(midnight, small_inventory, START, END, by="job", accounting=jobs).rows.set_index("job")
    assert r.loc["501", "energy_kwh"] == pytest.approx(GPU_501 / 3.6e6, rel=1e-12)  # whole nodes: exact
    # on the shared node sacct does not say which GPUs: 2 of 4 GPUs take half of each GPU's energy
    assert r.loc["602", "energy_kwh"] == pytest.approx(4 * 300 * 3600 / 2 / 3.6e6, rel=1e-12)
    assert r.loc["601", "energy_kwh"] == pytest.approx((4 * 300 * 3600 + (2 * 300 + 2 * 60) * 2 * 3600) / 2 / 3.6e6, rel=1e-12)
    assert r["energy_kwh"].sum() == pytest.approx(GPU_TOTAL / 3.6e6, rel=1e-12)
    assert r["it_kwh"].sum() == pytest.approx(IT_TOTAL / 3.6e6, rel=1e-9)
    assert r.loc["501", "gpu_hours"] == pytest.approx(16) and r.loc["601", "gpu_hours"] == pytest.approx(6)


def test_sacct_records_that_overbook_a_node_are_refused(midnight, small_inventory):
    text = SACCT.format(m1=_iso(D - H), p1=_iso(D + H), d=_iso(D)) + f"603|alpha-play|booster|play|{_iso(D - H)}|{_iso(D)}|alphn0003|gres/gpu=2\n"
    with pytest.raises(ValueError, match="more GPUs on node alphn0003"):
        compute_ledger(midnight, small_inventory, START, END, accounting=parse_sacct(text))


def test_host_lists_and_tres():
    assert expand_nodelist("node[001-004,007]") == ["node001", "node002", "node003", "node004", "node007"]
    assert expand_nodelist("gpu[08-10],login1") == ["gpu08", "gpu09", "gpu10", "login1"]
    assert expand_nodelist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert gpus_in_tres("cpu=64,gres/gpu=8,gres/gpu:h100=8,node=2") == 8
    assert gpus_in_tres("cpu=64,gres/gpu:a100=2,gres/gpu:h100=4") == 6
    with pytest.raises(AccountingError, match="runs backwards"):
        expand_nodelist("n[5-1]")
    with pytest.raises(AccountingError, match="missing column"):
        parse_sacct("JobID|Account\n1|a\n", "x.txt")


def test_a_gpu_without_an_energy_counter_has_its_power_integrated_and_flagged(tmp_path, small_inventory):
    s = DuckDBStore(tmp_path / "p.duckdb")
    t = np.arange(D - 5 * 60_000, D + H + 5 * 60_000 + 1, 60_000)
    gpu = {"factory": "beta", "system": "beta-gpu", "node": "betan0001", "uuid": "GPU-x", "model": "V100"}
    _add(s, "aif_gpu_energy_joules_total", {**gpu, "gpu": "0"}, t, 100.0 * (t - t[0]) / 1000)  # 100 W, counted
    keep = (t < D + 10 * 60_000) | (t > D + 40 * 60_000)  # the power-only GPU misses 30 minutes of readings
    _add(s, "aif_gpu_power_watts", {**gpu, "gpu": "1"}, t[keep], np.full(keep.sum(), 200.0))
    r = energy_rollup(s, small_inventory, D, D + H, by="total")
    assert r.total_energy_kwh == pytest.approx((100 + 200) * 3600 / 3.6e6, rel=1e-12)  # the gap is bridged linearly
    assert r.notes["estimated_energy_kwh"] == pytest.approx(200 * 3600 / 3.6e6, rel=1e-12)
    assert r.coverage == pytest.approx((3600 + 3600 - 32 * 60) / 7200)  # its 32-minute interval (D+9 to D+41 min) is not covered
    s.close()
