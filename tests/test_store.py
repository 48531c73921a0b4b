"""The embedded DuckDB store: round trips, durability under SIGKILL, clear errors; the stores' declared capabilities."""

import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.influx_sink import InfluxSink
from aifmon.stores.promql_store import PromQLStore, VictoriaMetricsStore
from aifmon.stores.split_store import SplitStore
from aifmon.stores.store import (
    RollupStore,
    RowStore,
    RowWriter,
    SampleReader,
    SampleWriter,
    Store,
    StoreConfigError,
    StoreError,
    open_store,
    series_key,
)
from aifmon.telemetry.errors import UserError


def _fill(store):
    keys = [series_key("aif_gpu_power_watts", {"factory": "f", "node": "n1", "gpu": str(g)}) for g in range(3)]
    ids = store.series_ids(keys)
    for k in range(10):
        store.append(ids, np.full(3, 1_000_000 + k * 1000), np.array([100.0, 200.0, 300.0]) + k)
    return ids


def test_round_trip_latest_and_range(tmp_path):
    store = open_store(f"duckdb:///{tmp_path}/s.duckdb")
    ids = _fill(store)
    again = store.series_ids([series_key("aif_gpu_power_watts", {"gpu": "1", "node": "n1", "factory": "f"})])
    assert again[0] == ids[1], "label order must not make a new series"
    latest = store.latest("aif_gpu_power_watts", at_ms=1_009_500, lookback_s=60)
    assert sorted(latest["value"]) == [109.0, 209.0, 309.0]
    assert set(latest.columns) >= {"factory", "node", "gpu", "t_ms", "value"}
    r = store.range("aif_gpu_power_watts", 1_002_000, 1_004_000)
    assert len(r) == 9 and r.groupby("gpu")["value"].sum()["0"] == 102 + 103 + 104
    assert store.latest("aif_gpu_power_watts", at_ms=2_000_000, lookback_s=60).empty, "stale series are not latest"
    assert store.time_bounds() == (1_000_000, 1_009_000)
    store.close()
    reopened = open_store(f"duckdb:///{tmp_path}/s.duckdb", read_only=True)
    assert reopened.sample_count() == 30
    assert reopened.series_ids([series_key("aif_gpu_power_watts", {"factory": "f", "node": "n1", "gpu": "2"})])[0] == ids[2]
    reopened.close()


def test_range_arrays_holds_the_samples_of_range_with_labels_once_per_series(tmp_path):
    store = open_store(f"duckdb:///{tmp_path}/s.duckdb")
    ids = _fill(store)
    store.append(store.series_ids([series_key("aif_gpu_temperature_celsius", {"factory": "f", "node": "n1", "gpu": "0"})]),
                 np.array([1_003_000]), np.array([55.0]))  # another metric, not read
    flat = store.range_arrays("aif_gpu_power_watts", 1_002_000, 1_004_000)
    assert flat.series["series_id"].tolist() == ids.tolist() and flat.series["gpu"].tolist() == ["0", "1", "2"]
    framed = store.range("aif_gpu_power_watts", 1_002_000, 1_004_000)
    got = sorted(zip(flat.series_id.tolist(), flat.t_ms.tolist(), flat.value.tolist()))
    assert got == sorted(zip(framed["series_id"].tolist(), framed["t_ms"].tolist(), framed["value"].tolist())) and len(got) == 9
    one = store.range_arrays("aif_gpu_power_watts", 0, 2**62, match={"gpu": "1"})
    assert one.series["gpu"].tolist() == ["1"] and sorted(one.value.tolist()) == [200.0 + k for k in range(10)]
    assert len(store.range_arrays("aif_gpu_energy_joules_total", 0, 2**62).t_ms) == 0
    store.close()


def test_series_of_any_text_length_get_ids_in_order_and_samples_keep_nan_and_infinities(tmp_path):
    """Registration hands DuckDB fixed-width text arrays (4 bytes a character of the longest item, for every item), split
    so that one 60,000-character label (360,000 once JSON-escaped) among 3,000 short ones does not make 3,002 items that
    wide (4.3 GB): the split must keep the ids in order of first appearance."""
    store = open_store(f"duckdb:///{tmp_path}/s.duckdb")
    keys = [series_key("m", {"i": str(k)}) for k in range(3000)]
    keys.insert(1500, series_key("m", {"long": "é" * 60_000}))
    tracemalloc.start()  # NumPy's arrays are traced
    ids = store.series_ids(keys + keys[:2])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20, f"registration held {peak / 2**20:.0f} MB"
    assert ids.tolist() == list(range(1, 3002)) + [1, 2]
    assert store.series_ids(keys[::-1]).tolist() == ids[3000::-1].tolist()
    store.append(ids[1499:1502], np.full(3, 1_000), np.array([np.nan, np.inf, -np.inf]))
    got = store.range("m", 0, 2_000)
    assert got["series_id"].tolist() == [1500, 1501, 1502] and got["long"].tolist()[1] == "é" * 60_000
    assert np.isnan(got["value"][0]) and got["value"].tolist()[1:] == [np.inf, -np.inf]
    store.close()


def test_derived_rows_are_replaced_not_duplicated(tmp_path):
    import pandas as pd

    store = DuckDBStore(tmp_path / "d.duckdb")
    rows = pd.DataFrame({"window_start_ms": [3_600_000] * 2, "project": ["a", "b"], "energy_j": [1.0, 2.0]})
    store.replace_rows("t", 3_600_000, rows)
    store.replace_rows("t", 3_600_000, rows.assign(energy_j=[5.0, 6.0]))
    got = store.read_rows("t", 0, 10_000_000)
    assert list(got["energy_j"]) == [5.0, 6.0]
    assert store.read_rows("missing", 0, 1).empty
    with pytest.raises(ValueError):
        store.replace_rows("t", 0, rows)  # window mismatch
    store.close()


@pytest.mark.parametrize("url,message", [
    ("sqlite:///x.db", "not understood"),
    ("duckdb://host/x.duckdb", "expected duckdb:///relative"),
    ("prometheus+http://", "host:port"),
])
def test_bad_store_urls_say_what_is_expected(url, message):
    with pytest.raises(StoreConfigError, match=message) as e:
        open_store(url)
    assert isinstance(e.value, UserError) and not isinstance(e.value, StoreError)  # the CLI exits 2 on it


def test_read_only_store_that_does_not_exist(tmp_path):
    with pytest.raises(StoreConfigError, match="does not exist"):
        open_store(f"duckdb:///{tmp_path}/none.duckdb", read_only=True)


CAPABILITIES = (SampleWriter, SampleReader, RowWriter, RowStore)


@pytest.mark.parametrize("backend, declared", [
    (DuckDBStore, {SampleWriter, SampleReader, RowWriter, RowStore}),
    (PromQLStore, {SampleReader}),
    (VictoriaMetricsStore, {SampleWriter, SampleReader}),
    (InfluxSink, {SampleWriter, RowWriter}),
    (SplitStore, {SampleReader, RowWriter, RowStore}),
])
def test_each_backend_declares_its_capabilities_and_implements_every_method_of_them(backend, declared):
    assert {c for c in CAPABILITIES if issubclass(backend, c)} == declared
    for capability in declared | {Store}:
        for name, method in vars(capability).items():
            if callable(method) and not name.startswith("_"):
                assert getattr(backend, name) is not method, f"{backend.__name__} declares {capability.__name__} but not {name}"
    for capability in set(CAPABILITIES) - declared:
        for name in vars(capability):
            assert not hasattr(backend, name) or name.startswith("_") or name == "ability", f"{backend.__name__}.{name}"


@pytest.mark.parametrize("url, needs, message", [
    ("prometheus+http://127.0.0.1:9", SampleWriter, "cannot take samples: Prometheus ingests by scraping; .* or use VictoriaMetrics"),
    ("prometheus+http://127.0.0.1:9", RowWriter, "cannot keep rollup rows: Prometheus keeps no rollup rows; keep them in PostgreSQL"),
    ("victoriametrics+http://127.0.0.1:9", RollupStore, "VictoriaMetrics keeps no rollup rows; .*--rows-store"),
    ("influxdb+http://127.0.0.1:9?org=o&bucket=b", SampleReader, "cannot give samples back: the InfluxDB sink is write-only"),
    ("influxdb+http://127.0.0.1:9?org=o&bucket=b", DuckDBStore, "cannot be the embedded store .*: the InfluxDB sink is write-only"),
])
def test_a_store_without_the_capability_a_command_needs_names_it_and_what_to_configure(url, needs, message):
    with pytest.raises(StoreConfigError, match=message) as e:
        open_store(url, needs=needs)
    assert str(e.value).startswith(f"store {url} cannot ")


def test_a_store_opened_for_a_capability_is_that_capability_and_closes_as_a_context_manager(tmp_path):
    with open_store(f"duckdb:///{tmp_path}/c.duckdb", needs=RollupStore) as store:
        assert isinstance(store, SampleWriter) and isinstance(store, RowWriter)
        store.append(store.series_ids([series_key("m", {})]), np.array([1000]), np.array([2.5]))
    with pytest.raises(StoreError, match="is closed"):
        store.time_bounds()
    with open_store(f"duckdb:///{tmp_path}/c.duckdb", read_only=True) as again:
        assert again.time_bounds() == (1000, 1000)
    vm = open_store("victoriametrics+http://127.0.0.1:9/select/0/prometheus", needs=SampleWriter)
    assert isinstance(vm, SampleReader) and not isinstance(vm, RowWriter) and vm.base_url == "http://127.0.0.1:9/select/0/prometheus"
    with pytest.raises(StoreConfigError, match=r"store victoriametrics\+http://\S+ cannot keep rollup rows and give them back"):
        open_store("victoriametrics+http://127.0.0.1:9", needs=RowStore)


def test_second_writer_gets_a_clear_error(tmp_path):
    path = tmp_path / "locked.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from aifmon.stores.duckdb_store import DuckDBStore
        s = DuckDBStore({str(path)!r}); print("open", flush=True); time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="held by another aifmon process"):
            DuckDBStore(path)
    finally:
        holder.kill()
        holder.wait()


def test_sigkill_mid_run_loses_no_acknowledged_sample(tmp_path, small_inventory, sim_server):
    """A collector scraping flat out is killed with SIGKILL; every sample it acknowledged is in the reopened store."""
    address, _ = sim_server(small_inventory, "alpha")
    path = tmp_path / "kill.duckdb"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from aifmon.ingest.collector import Collector, Target
        from aifmon.stores.duckdb_store import DuckDBStore
        c = Collector(DuckDBStore({str(path)!r}), [Target({address!r}, {{"factory": "alpha", "instance": {address!r}}})])
        total = 0
        while True:
            total += c.collect_once()
            print("ack", total, flush=True)
    """)], stdout=subprocess.PIPE, text=True)
    acked = 0
    try:
        for _ in range(8):
            line = child.stdout.readline()
            assert line.startswith("ack"), line
            acked = int(line.split()[1])
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    store = DuckDBStore(path)  # opens again after the kill (DuckDB replays its write-ahead log)
    assert store.sample_count() >= acked > 0
    # Whole cycles only: every scrape that left an `up` sample stored the power of every GPU too.
    ups = store.range("up", 0, 2**62)
    power = store.range("aif_gpu_power_watts", 0, 2**62).groupby("t_ms").size()
    assert len(ups) >= 8
    assert (power.reindex(ups["t_ms"]) == small_inventory.factory("alpha").gpu_count).all()
    store.close()


def test_a_full_disk_is_a_clear_error_and_harms_nothing_stored(tmp_path):
    """The file size limit (RLIMIT_FSIZE) stands in for a full disk: the write fails like ENOSPC does."""
    path = tmp_path / "full.duckdb"
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, resource, signal, numpy as np
        from aifmon.stores.duckdb_store import DuckDBStore
        from aifmon.stores.store import StoreError, series_key
        store = DuckDBStore({str(path)!r})
        ids = store.series_ids([series_key("m", {{"i": str(i)}}) for i in range(1000)])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write gets EFBIG instead of the process dying
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize({str(path)!r}) + 2_000_000, hard))
        acked = 0
        try:
            for k in range(100_000):
                store.append(ids, np.full(1000, k), np.full(1000, 1.0))
                acked += 1000
        except StoreError as e:
            print("acked", acked)
            print(e)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again: writing resumes
        store.append(ids, np.full(1000, 10**9), np.full(1000, 1.0))
        store.close()
        print("resumed")
    """)], capture_output=True, text=True, timeout=120)
    lines = child.stdout.splitlines()
    assert child.returncode == 0 and lines[-1] == "resumed", child.stdout + child.stderr
    acked = int(lines[0].split()[1])
    assert "nothing of this batch was stored (no room left" in lines[1]
    store = DuckDBStore(path, read_only=True)
    assert store.sample_count() == acked + 1000 and acked > 0
    store.close()


def test_replacing_an_empty_first_window_does_not_fix_wrong_column_types(tmp_path):
    import pandas as pd

    store = DuckDBStore(tmp_path / "e.duckdb")
    store.replace_rows("t", 0, pd.DataFrame({"window_start_ms": pd.Series([], dtype="int64"), "factory": pd.Series([], dtype=object)}))
    store.replace_rows("t", 3_600_000, pd.DataFrame({"window_start_ms": [3_600_000], "factory": ["pharos"]}))
    assert store.read_rows("t", 0, 10**9)["factory"].tolist() == ["pharos"]
    store.close()


def test_newest_sample_before_a_time_ignores_samples_from_the_future(tmp_path):
    """What `aifmon up`'s backfill continues from: a sample a wrong clock stamped in the year 5138 must not make it skip
    the hours up to then (time_bounds' newest is that sample)."""
    store = DuckDBStore(tmp_path / "n.duckdb")
    assert store.newest_sample_ms(2**62) is None
    sid = store.series_ids([series_key("m", {"n": "1"})])
    store.append(np.repeat(sid, 3), np.array([1_000_000, 2_000_000, 99_972_403_200_000]), np.ones(3))
    assert store.time_bounds() == (1_000_000, 99_972_403_200_000)
    assert (store.newest_sample_ms(5_000_000), store.newest_sample_ms(1_500_000), store.newest_sample_ms(999_999)) == (2_000_000, 1_000_000, None)
    store.compact(now_ms=2_000_000 + 9 * 86_400_000)  # raw samples up to then become minute aggregates (stamped at their minute)
    assert store.newest_sample_ms(5_000_000) == 1_980_000
    store.close()


def test_series_registered_in_a_rolled_back_transaction_are_registered_again(tmp_path):
    """The ids handed out inside a transaction that rolled back are forgotten with it: registering the same series
    again stores it, and its samples are read back under its labels."""
    store = DuckDBStore(tmp_path / "t.duckdb")
    [kept] = store.series_ids([("m", (("a", "1"),))])
    with pytest.raises(RuntimeError), store.transaction():
        store.series_ids([("m", (("a", "2"),))])
        raise RuntimeError("the import failed")
    ids = store.series_ids([("m", (("a", "2"),)), ("m", (("a", "1"),))])
    assert ids[1] == kept and ids[0] != kept
    store.append(ids, np.array([1_790_000_000_000, 1_790_000_000_000]), np.array([2.0, 1.0]))
    store.close()
    reopened = DuckDBStore(tmp_path / "t.duckdb", read_only=True)
    read = reopened.range("m", 0, 2**62)
    assert sorted(zip(read["a"], read["value"])) == [("1", 1.0), ("2", 2.0)]
    reopened.close()


def test_texts_slices_share_their_parents_bytes_and_read_back_only_their_own():
    from aifmon.stores.texts import Texts

    texts = Texts.of(["ab", "c", "", "déf"])
    part = texts[1:3]
    assert part.data is texts.data and part.to_pylist() == ["c", ""] and part.bytes().tobytes() == b"c"
    assert texts[3:].to_pylist() == ["déf"] and texts[2:2].to_pylist() == [] and texts.to_pylist() == ["ab", "c", "", "déf"]
    assert texts.lengths().tolist() == [2, 1, 0, 4]
