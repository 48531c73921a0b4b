"""Job info as runs (issue #12): DuckDB finds the runs in SQL, a PromQL server's samples give the same runs in NumPy, and
attribution joins intervals with runs, so a job-info sample lost in a scrape does not lose the job its interval."""

from __future__ import annotations

import numpy as np
import pytest

from aifmon.rollups.energy import compute_ledger
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import RUN_GAP_MS, SampleWriter, open_store, runs_of, series_key
from tests.servers import victoria_metrics

H, S = 3_600_000, 15_000
T0 = 1_790_000_000_000 // H * H
GPU = {"factory": "f", "system": "s", "node": "n1", "gpu": "0"}


def _info(job: str, project: str) -> dict[str, str]:
    return {**GPU, "job": job, "project": project, "access_mode": "Regular"}


@pytest.fixture
def store(tmp_path):
    """One GPU at 100 W, scraped every 15 s for an hour: job 1 to minute 20 (its info sample at minute 10 lost), nothing
    for 10 minutes, job 2 from minute 30; job 3's series reads 0 throughout (no job)."""
    s = DuckDBStore(tmp_path / "runs.duckdb")
    t = T0 + S * np.arange(241)
    s.append(np.full(len(t), s.series_ids([series_key("aif_gpu_energy_joules_total", GPU)])[0]), t, 100.0 * (t - T0) / 1000.0)
    one = t[(t > T0) & (t <= T0 + 20 * 60_000) & (t != T0 + 10 * 60_000)]
    two = t[t > T0 + 30 * 60_000]
    for labels, times, value in ((_info("1", "p1"), one, 1.0), (_info("2", "p2"), two, 1.0), (_info("3", "p3"), t, 0.0)):
        s.append(np.full(len(times), s.series_ids([series_key("aif_gpu_job_info", labels)])[0]), times, np.full(len(times), value))
    yield s
    s.close()


def _as_set(runs) -> set[tuple[str, int, int]]:
    jobs = runs.series.set_index("series_id")["job"]
    return {(jobs[i], int(a), int(b)) for i, a, b in zip(runs.series_id, runs.t_ms, runs.value)}


def test_duckdb_finds_the_runs_numpy_finds_from_samples(store):
    in_sql = _as_set(store.runs("aif_gpu_job_info", T0, T0 + H))
    from_samples = _as_set(runs_of(store.range_arrays("aif_gpu_job_info", T0, T0 + H)))
    assert in_sql == from_samples == {("1", T0 + S, T0 + 20 * 60_000), ("2", T0 + 30 * 60_000 + S, T0 + H)}
    assert RUN_GAP_MS >= 2 * S  # the lost sample at minute 10 leaves one run


def test_intervals_go_to_the_job_whose_run_covers_their_end(store):
    ledger = compute_ledger(store, None, T0, T0 + H)
    by_job = ledger.jobs.groupby("job")["energy_j"].sum().to_dict()
    # job 1: (0, 20 min] including the interval ending at the lost sample; idle (20, 30 min]; job 2: (30, 60 min]
    assert by_job == pytest.approx({"1": 100.0 * 1200, "(unallocated)": 100.0 * 600, "2": 100.0 * 1800}, rel=1e-12)


def test_duckdb_and_victoriametrics_find_the_same_runs(tmp_path):
    """DuckDB's runs (found in SQL) are those VictoriaMetrics' samples give (`runs_of`), on the cases that split a run,
    end one or look as if they might: a 5-minute gap, a 0 and a NaN between ones (DuckDB orders NaN above every number),
    a lone sample, samples exactly at the bounds; over the hour and over a window inside it."""
    t = T0 + S * np.arange(241)
    cases = {"4": (t[(t < T0 + 20 * 60_000) | (t > T0 + 25 * 60_000)], 1.0),  # gap of 5 min + 15 s
             "5": (t, np.where(t == T0 + 30 * 60_000, 0.0, 1.0)),
             "6": (t, np.where(t == T0 + 40 * 60_000, np.nan, 1.0)),
             "7": (t[t == T0 + 33 * 60_000], 1.0),
             "8": (t[(t == T0) | (t == T0 + H)], 1.0)}
    one = t[(t > T0) & (t <= T0 + 20 * 60_000) & (t != T0 + 10 * 60_000)]
    cases.update({"1": (one, 1.0), "2": (t[t > T0 + 30 * 60_000], 1.0), "3": (t, 0.0)})
    duck = DuckDBStore(tmp_path / "runs.duckdb")
    with victoria_metrics(tmp_path, extra_args=("-retentionPeriod=100y",)) as server:
        vm = open_store(f"victoriametrics+{server.url}", needs=SampleWriter)
        for job, (times, value) in cases.items():
            for store in (duck, vm):
                store.append(np.full(len(times), store.series_ids([series_key("aif_gpu_job_info", _info(job, "p"))])[0]), times,
                             np.broadcast_to(value, times.shape).astype(float))
        server.force_flush()
        for start, end in ((T0, T0 + H), (T0 + 10 * 60_000, T0 + 40 * 60_000)):
            assert _as_set(duck.runs("aif_gpu_job_info", start, end)) == _as_set(vm.runs("aif_gpu_job_info", start, end))
        whole = _as_set(vm.runs("aif_gpu_job_info", T0, T0 + H))
    duck.close()
    assert {r for r in whole if r[0] in "45678"} == {
        ("4", T0, T0 + 20 * 60_000 - S), ("4", T0 + 25 * 60_000 + S, T0 + H),
        ("5", T0, T0 + H), ("6", T0, T0 + H),  # a 0 or a NaN is no sample of the run: 30 s between its neighbours
        ("7", T0 + 33 * 60_000, T0 + 33 * 60_000),
        ("8", T0, T0), ("8", T0 + H, T0 + H)}
