"""Energy is exact across a meter's silence of any length (issue #12): the hourly rows of a GPU silent from :40 to :20
past the next hour, and of one silent for 3 hours, add up to the energy its counter measured, hour by hour, with each
hour's share attributed to the job running when the counter reported again. Before `edges` the ledger looked 15 minutes
past each hour's ends and lost such intervals (the 40-minute one: 240 kJ at 100 W)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from aifmon.rollups.hourly import SITE_TABLE, HourlyRollups, hour_rows
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key

H, MIN = 3_600_000, 60_000
T0 = (int(time.time() * 1000) // H - 30) * H  # a day and more ago, on the hour
TIMES = T0 + 15_000 * np.arange(6 * 240 + 1)  # a sample every 15 s for 6 hours, the last on the hour
GPUS = {  # gpu: (power W, silent from, silent until, job, project)
    "0": (100.0, T0 + H + 40 * MIN, T0 + 2 * H + 20 * MIN, "101", "p-short"),
    "1": (250.0, T0 + H + 30 * MIN, T0 + 4 * H + 30 * MIN, "202", "p-long"),
}


@pytest.fixture()
def store(tmp_path):
    """Both GPUs' counters (J, from 5 MJ at T0) and job info, as a collector writes them (one stamp per scrape); nothing is
    written while a GPU is silent. Compacted as `aifmon up` does every 10 min, so its extents bound the searches."""
    s = DuckDBStore(tmp_path / "silence.duckdb")
    for gpu, (watts, quiet_from, quiet_until, job, project) in GPUS.items():
        t = TIMES[~((quiet_from < TIMES) & (quiet_until > TIMES))]
        labels = {"factory": "f", "system": "s", "node": "n1", "gpu": gpu}
        s.append(s.series_ids([series_key("aif_gpu_energy_joules_total", labels)] * len(t)), t, 5e6 + watts * (t - T0) / 1000.0)
        info = {**labels, "job": job, "project": project, "access_mode": "Regular"}
        s.append(s.series_ids([series_key("aif_gpu_job_info", info)] * len(t)), t, np.ones(len(t)))
    s.compact(now_ms=int(time.time() * 1000))
    yield s
    s.close()


def test_each_hour_holds_exactly_the_energy_measured_across_the_silences(store):
    for hour in range(1, 6):
        start = T0 + hour * H
        gpu_rows, _, _ = hour_rows(store, start)
        by_project = gpu_rows.groupby("project")["energy_j"].sum()
        # by hand: the counters run at constant power, so each hour of each GPU holds power x 3600 s, whether the counter
        # reported in it or bridged it; the 40-minute silence straddles hour 2's start, the 3-hour one covers hours 2 and 3
        for gpu, (watts, *_, project) in GPUS.items():
            assert by_project[project] == pytest.approx(watts * 3600.0, rel=1e-9, abs=0), (hour, gpu)
        assert set(by_project.index) == {"p-short", "p-long"}  # nothing unallocated: the job at each interval's end is read
        held = gpu_rows.groupby("project")["gpu_seconds"].sum()
        assert held.to_dict() == pytest.approx({"p-short": 3600.0, "p-long": 3600.0}, rel=1e-12)
    total = sum(hour_rows(store, T0 + hour * H)[0]["energy_j"].sum() for hour in range(1, 6))
    assert total == pytest.approx((100.0 + 250.0) * 5 * 3600.0, rel=1e-9, abs=0)


def test_hourly_rollups_reopen_the_hours_of_a_silence_when_the_meter_reports_again(tmp_path):
    """Samples arrive as they would live, the rollups catching up every 10 minutes: GPU 1 falls silent at 01:30 and reports
    again at 04:30, after the 3 h late window of the hours it was silent in. When it does, those hours, rolled up without
    the sample that closes the silence, are computed again: every hour's row holds both GPUs' 350 W x 3600 s."""
    s = DuckDBStore(tmp_path / "live.duckdb")
    rollups = HourlyRollups(s, None, recheck_every_s=600.0)
    ids = {gpu: s.series_ids([series_key("aif_gpu_energy_joules_total", {"factory": "f", "system": "s", "node": "n1", "gpu": gpu})])[0]
           for gpu in GPUS}
    written = T0 - 1
    for now in range(T0 + 10 * MIN, T0 + 6 * H + 20 * MIN, 10 * MIN):
        arrived = TIMES[np.searchsorted(TIMES, written, side="right"):np.searchsorted(TIMES, now, side="right")]
        for gpu, (watts, quiet_from, quiet_until, _, _) in GPUS.items():
            t = arrived[~((quiet_from < arrived) & (quiet_until > arrived))]
            s.append(np.full(len(t), ids[gpu]), t, 5e6 + watts * (t - T0) / 1000.0)
        written = now
        rollups.catch_up(now_ms=now)
    rows = s.read_rows(SITE_TABLE, T0, T0 + 6 * H).set_index("window_start_ms")["gpu_energy_j"]
    assert rows.to_dict() == pytest.approx({T0 + h * H: 350.0 * 3600 for h in range(6)}, rel=1e-12)
    s.close()
