"""`SampleReader.edges`: each series' last sample at or before a range and its first at or after it, however long the
silence, on the embedded store (raw samples, then the per-minute aggregates that replace them), a real VictoriaMetrics
and a real Prometheus (issue #12, "exact across any silence")."""

from __future__ import annotations

import time

import numpy as np
import pytest

import aifmon.stores.duckdb_store as duckdb_store
from aifmon.ingest.openmetrics import export_openmetrics, import_openmetrics
from aifmon.stores.duckdb_store import DuckDBStore, Retention
from aifmon.stores.store import EDGE_FIRST_WINDOW_MS, SampleReader, SampleWriter, SeriesSamples, open_store, series_key
from tests.servers import prometheus_of, victoria_metrics

H, MIN, DAY = 3_600_000, 60_000, 86_400_000
NOW = int(time.time() * 1000)
T0 = (NOW // H - 20 * 24) * H  # 20 days ago, on the hour: inside VictoriaMetrics' month and Prometheus' 30 days
S = T0 + 8 * DAY  # the range [S, E]: 12 days ago, older than the raw samples' 7 days
E = S + H
ENERGY, POWER = "aif_gpu_energy_joules_total", "aif_gpu_power_watts"
TIMES = T0 + MIN * np.arange(16 * 24 * 60)  # one sample a minute for 16 days, on the minute: samples fall on S and E exactly
SILENT = {  # gpu label -> the times it is silent (open intervals), or the only times it reports
    "steady": None,
    "gap40m": (S - 25 * MIN, S + 15 * MIN),
    "gap3h": (E - H, E + 2 * H),
    "gap10d": (S - 4 * DAY, E + 6 * DAY),
}


def _history() -> list[tuple[str, dict[str, str], np.ndarray, np.ndarray]]:
    """(metric, labels, times, values) of every series: counters with silences of 40 min, 3 h and 10 days across the
    range's ends, one that ended 5 days before it, one that started 5 days after it, one in another factory at other
    seconds, and a power gauge sampled every 30 s (two samples a minute: its minute aggregates are averages)."""
    out = []
    for gpu, silence in SILENT.items():
        keep = np.ones(len(TIMES), dtype=bool) if silence is None else ~((silence[0] < TIMES) & (silence[1] > TIMES))
        out.append((ENERGY, {"factory": "f1", "gpu": gpu}, TIMES[keep], 1e6 + 250.0 * 60 * np.flatnonzero(keep)))
    ended, started = TIMES < S - 5 * DAY, TIMES > E + 5 * DAY
    out.append((ENERGY, {"factory": "f1", "gpu": "ended"}, TIMES[ended], 7.0 * np.arange(int(ended.sum()))))
    out.append((ENERGY, {"factory": "f1", "gpu": "started"}, TIMES[started], 3.0 + 9.0 * np.arange(int(started.sum()))))
    out.append((ENERGY, {"factory": "f2", "gpu": "steady"}, TIMES + 7_000, 5e5 + 100.0 * np.arange(len(TIMES))))
    half = T0 + 30_000 * np.arange(2 * len(TIMES))
    gauge = ~((half > S - 3 * H) & (half < S + 10 * MIN))
    out.append((POWER, {"factory": "f1", "gpu": "steady"}, half[gauge], 200.0 + (np.arange(len(half)) % 7)[gauge]))
    return out


def _fill(store: SampleWriter) -> None:
    for metric, labels, t, v in _history():
        store.append(store.series_ids([series_key(metric, labels)] * len(t)), t, v)


def _truth(metric: str, start_ms: int, end_ms: int, factory: str | None = None) -> set[tuple]:
    """(labels, t_ms, value) of each series' last sample at or before the start and first at or after the end, by hand."""
    out = set()
    for m, labels, t, v in _history():
        if m != metric or (factory is not None and labels["factory"] != factory):
            continue
        key = tuple(sorted(labels.items()))
        before, after = np.flatnonzero(t <= start_ms), np.flatnonzero(t >= end_ms)
        out |= {(key, int(t[i]), float(v[i])) for i in ([before[-1]] if len(before) else []) + ([after[0]] if len(after) else [])}
    return out


def _got(samples: SeriesSamples) -> set[tuple]:
    labels = samples.series.set_index("series_id")
    names = [c for c in labels.columns]
    got = set()
    for sid, t, v in zip(samples.series_id.tolist(), samples.t_ms.tolist(), samples.value.tolist()):
        row = labels.loc[sid]
        got.add((tuple(sorted((k, row[k]) for k in names if isinstance(row[k], str))), int(t), float(v)))
    assert len(got) == len(samples.t_ms), "one sample per series and side"
    return got


def _full_read_brackets(store: SampleReader, metric: str, start_ms: int, end_ms: int) -> set[tuple]:
    """The brackets a read of everything the store holds implies: what `edges` must equal once aggregates replace raw samples."""
    every = store.range_arrays(metric, 0, NOW + DAY)
    out = set()
    for sid in np.unique(every.series_id):
        row = every.series.set_index("series_id").loc[sid]
        key = tuple(sorted((k, x) for k, x in row.items() if isinstance(x, str)))
        mine = np.flatnonzero(every.series_id == sid)
        mine = mine[np.argsort(every.t_ms[mine])]  # range_arrays keeps no order
        t, v = every.t_ms[mine], every.value[mine]
        for pick in (np.flatnonzero(t <= start_ms)[-1:], np.flatnonzero(t >= end_ms)[:1]):
            out |= {(key, int(t[i]), float(v[i])) for i in pick}
    return out


RANGES = [(S, E), (S + 1, E - 1), (S - 20 * MIN, S + 5 * MIN), (E + 90 * MIN, E + 100 * MIN)]


def test_hand_set_silences_on_the_embedded_store_before_and_after_compaction(tmp_path):
    store = DuckDBStore(tmp_path / "edges.duckdb", retention=Retention(raw_days=7))
    _fill(store)
    truth = _truth(ENERGY, S, E)
    by_gpu = {dict(k)["gpu"] + "/" + dict(k)["factory"]: sorted(t for kk, t, _ in truth if kk == k) for k, _, _ in truth}
    # by hand: the 40 min and 10 day silences bridge the start, the 3 h one the end; the ended and started series one side each
    assert by_gpu["gap40m/f1"] == [S - 25 * MIN, E] and by_gpu["gap3h/f1"] == [S, E + 2 * H]
    assert by_gpu["gap10d/f1"] == [S - 4 * DAY, E + 6 * DAY] and by_gpu["ended/f1"] == [S - 5 * DAY - MIN]
    assert by_gpu["started/f1"] == [E + 5 * DAY + MIN] and by_gpu["steady/f2"] == [S - MIN + 7_000, E + 7_000]
    for start, end in RANGES:
        assert _got(store.edges(ENERGY, start, end)) == _truth(ENERGY, start, end), (start - S, end - S)
    assert _got(store.edges(POWER, S, E)) == _truth(POWER, S, E)
    assert _got(store.edges(ENERGY, S, E, match={"factory": "f2"})) == _truth(ENERGY, S, E, "f2")
    assert len(store.edges(ENERGY, S, E, match={"factory": "f3"}).t_ms) == 0

    done = store.compact(now_ms=NOW)
    assert done["raw_dropped"] > 0  # the range's samples are per-minute aggregates now
    for start, end in RANGES:  # counters: the minute's last sample, as it was (one a minute)
        assert _got(store.edges(ENERGY, start, end)) == _truth(ENERGY, start, end), (start - S, end - S)
    power = _got(store.edges(POWER, S, E))  # the gauge's minutes are averages, stamped at the minute's last sample
    assert power == _full_read_brackets(store, POWER, S, E) and power != _truth(POWER, S, E)
    assert _got(store.edges(ENERGY, S, E, match={"factory": "f2"})) == _truth(ENERGY, S, E, "f2")
    store.close()


def test_a_series_that_stopped_weeks_before_costs_one_small_read(tmp_path, monkeypatch):
    """After compaction each series is searched inside its extent: the one that ended 5 days before the range and the one
    that started 5 days after it are each read in one first-size window at their own last or first sample, not in windows
    growing across the days between; the 10-day silence alone is searched outward (about 8 times its length at most)."""
    store = DuckDBStore(tmp_path / "edges.duckdb", retention=Retention(raw_days=7))
    _fill(store)
    store.compact(now_ms=NOW)
    reads: list[tuple[int, int, int, int]] = []
    real = duckdb_store._edge_reads

    def counted(cur, sid, side, lo, hi, minute_value, raw_from):
        reads.extend(zip(sid.tolist(), side.tolist(), lo.tolist(), hi.tolist()))
        return real(cur, sid, side, lo, hi, minute_value, raw_from)

    monkeypatch.setattr(duckdb_store, "_edge_reads", counted)
    assert _got(store.edges(ENERGY, S, E)) == _truth(ENERGY, S, E)
    ids = {row.gpu + "/" + row.factory: row.series_id for row in store._series_of(ENERGY).itertuples()}
    span = {name: sum(hi - lo + 1 for s, _, lo, hi in reads if s == sid) for name, sid in ids.items()}
    assert span["ended/f1"] <= EDGE_FIRST_WINDOW_MS + 1 and span["started/f1"] <= EDGE_FIRST_WINDOW_MS + 1
    assert span["steady/f1"] == 2 * (EDGE_FIRST_WINDOW_MS + 1)
    assert 10 * DAY < span["gap10d/f1"] < 2 * 8 * 6 * DAY
    # samples written into minutes compaction already aggregated (an import of history) widen the extents at once
    late = S - 2 * DAY
    store.append(store.series_ids([series_key(ENERGY, {"factory": "f1", "gpu": "ended"})]), np.array([late]), np.array([1e9]))
    got = {(dict(k)["gpu"], t, v) for k, t, v in _got(store.edges(ENERGY, S, E, match={"gpu": "ended"}))}
    assert got == {("ended", late, 1e9)}
    store.close()


@pytest.fixture(scope="module")
def openmetrics(tmp_path_factory):
    """The history as OpenMetrics text (what `store export` writes), for the servers to load."""
    work = tmp_path_factory.mktemp("edges")
    store = DuckDBStore(work / "source.duckdb")
    _fill(store)
    path = work / "history.om"
    with path.open("w") as fh:
        export_openmetrics(store, fh, 0, 2**62)
    store.close()
    return path, work


def _check_server(store: SampleReader) -> None:
    for start, end in RANGES:
        assert _got(store.edges(ENERGY, start, end)) == _truth(ENERGY, start, end), (start - S, end - S)
    assert _got(store.edges(POWER, S, E)) == _truth(POWER, S, E)
    assert _got(store.edges(ENERGY, S, E, match={"factory": "f2"})) == _truth(ENERGY, S, E, "f2")
    assert len(store.edges(ENERGY, S, E, match={"factory": "f3"}).t_ms) == 0


def test_hand_set_silences_on_a_real_victoriametrics(openmetrics):
    path, work = openmetrics
    (work / "vm").mkdir()
    with victoria_metrics(work / "vm") as vm:
        store = open_store(vm.url.replace("http://", "victoriametrics+http://"), needs=SampleWriter)
        import_openmetrics(store, path)
        vm.force_flush()
        assert isinstance(store, SampleReader)
        _check_server(store)


def test_hand_set_silences_on_a_real_prometheus(openmetrics):
    path, work = openmetrics
    with prometheus_of(path, work) as url:
        _check_server(open_store(url, needs=SampleReader))
