"""Ingest faults against real HTTP targets on 127.0.0.1: one target's NaN, HTML, bad line, 10 MB line, trickled answer,
repeated label name or timestamps from 1970, 5138 or NaN never cost the other targets a sample, and NaN/+-Inf are stored as
values without poisoning energy sums; a half-bad `store import` stores nothing."""

import contextlib
import datetime
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from aifmon.ingest.collector import FAILURES, REFUSED, Collector, Target, targets_of
from aifmon.ingest.openmetrics import import_openmetrics
from aifmon.rollups.energy import compute_ledger
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key
from aifmon.telemetry.exposition import ExpositionError
from aifmon.telemetry.inventory import parse_inventory
from tests.conftest import free_port, inventory_text, wait_until

CYCLES = 5
NAN_CYCLE = 2  # the cycle in which the odd target's energy counter reads NaN
JOULES_PER_CYCLE = 1000.0
TIMEOUT_S = 1.0  # each scrape's total deadline
MAX_BODY_BYTES = 12_000_000  # above the 10 MB line, below the large body


@pytest.fixture
def serve():
    """Start an HTTP server on a free loopback port whose GET answers with `answer(handler, request_number)`;
    returns its address. Servers are stopped, and their answers told to end, after the test."""
    servers: list[ThreadingHTTPServer] = []
    done = threading.Event()

    def start(answer: Callable[[BaseHTTPRequestHandler, int], None]) -> str:
        requests = iter(range(10**9))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with contextlib.suppress(OSError):  # the collector hung up at its deadline
                    answer(self, next(requests))

            def log_message(self, *a):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    start.done = done
    yield start
    done.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def fixed(content_type: str, body: bytes) -> Callable[[BaseHTTPRequestHandler, int], None]:
    def answer(h: BaseHTTPRequestHandler, _: int) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return answer


def odd_values(h: BaseHTTPRequestHandler, n: int) -> None:
    """NaN, +Inf and -Inf gauges, and an energy counter that rises 1000 J a scrape but reads NaN in scrape NAN_CYCLE."""
    energy = "NaN" if n == NAN_CYCLE else f"{n * JOULES_PER_CYCLE:.1f}"
    body = (f"odd_nan NaN\nodd_pinf +Inf\nodd_ninf -Inf\n"
            f'aif_gpu_energy_joules_total{{system="odd-gpu",node="oddn1",gpu="0"}} {energy}\n').encode()
    fixed("text/plain; version=0.0.4", body)(h, n)


def trickle(done: threading.Event) -> Callable[[BaseHTTPRequestHandler, int], None]:
    """An answer of one byte a second, without end (until the test is over or the client hangs up)."""
    def answer(h: BaseHTTPRequestHandler, _: int) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"slow_metric 1\n" * 10**6:
            if done.wait(1.0):
                return
            h.wfile.write(bytes([byte]))
            h.wfile.flush()

    return answer


def test_one_targets_bad_values_or_body_cost_the_others_nothing(tmp_path, sim_server, serve):
    healthy = f"127.0.0.1:{free_port()}"
    inv = parse_inventory(inventory_text({"alpha": healthy}), "t.yaml")
    sim_server(inv, "alpha", address=healthy)
    bad = {
        "odd": serve(odd_values),
        "html": serve(fixed("text/html", b"<html><body>login required</body></html>")),
        "malformed": serve(fixed("text/plain", b'good 1\nbad{x=y} 2\n')),
        "huge_line": serve(fixed("text/plain", b'huge{label="' + b"x" * 10_000_000 + b'"} 1\n')),
        "not_utf8": serve(fixed("text/plain", b'latin{name="caf\xe9"} 1\n')),
        "too_large": serve(fixed("text/plain", b"large 1\n" * 2_000_000)),
        "slow": serve(trickle(serve.done)),
    }
    targets = targets_of(inv) + [Target(address, {"factory": name, "instance": address}) for name, address in bad.items()]
    store = DuckDBStore(tmp_path / "f.duckdb")
    collector = Collector(store, targets, interval_s=1.0, timeout_s=TIMEOUT_S, max_body_bytes=MAX_BODY_BYTES)
    for _ in range(CYCLES):
        collector.collect_once()

    up = store.range("up", 0, 2**62)
    assert up.groupby("factory")["value"].agg(list).to_dict() == {
        "alpha": [1.0] * CYCLES, "odd": [1.0] * CYCLES,
        **{name: [0.0] * CYCLES for name in ("html", "malformed", "huge_line", "not_utf8", "too_large", "slow")}}
    assert dict(collector.failures) == {
        (bad["html"], "content_type"): CYCLES, (bad["malformed"], "bad_body"): CYCLES, (bad["huge_line"], "bad_body"): CYCLES,
        (bad["not_utf8"], "bad_body"): CYCLES, (bad["too_large"], "too_large"): CYCLES, (bad["slow"], "timeout"): CYCLES}
    power = store.range("aif_gpu_power_watts", 0, 2**62)
    gpus = inv.factory("alpha").gpu_count
    assert len(power) == gpus * CYCLES and (power.groupby("series_id")["t_ms"].nunique() == CYCLES).all(), \
        "every GPU of the healthy target has a sample of every cycle"
    assert not {"huge", "latin", "good", "large"} & set(store.metric_names())

    assert [math.isnan(v) for v in store.range("odd_nan", 0, 2**62)["value"]] == [True] * CYCLES
    assert store.range("odd_pinf", 0, 2**62)["value"].tolist() == [math.inf] * CYCLES
    assert store.range("odd_ninf", 0, 2**62)["value"].tolist() == [-math.inf] * CYCLES
    assert math.isnan(store.latest("odd_nan", lookback_s=300)["value"].iloc[0]), "NaN is the latest value, not a stale series"
    energy = store.range("aif_gpu_energy_joules_total", 0, 2**62, match={"factory": "odd"})
    assert np.isnan(energy["value"].iloc[NAN_CYCLE]) and len(energy) == CYCLES

    # The NaN counter sample is left out of the rollups' read; the next increment bridges it, so the sum is exact.
    ledger = compute_ledger(store, None, int(energy["t_ms"].iloc[0]), int(energy["t_ms"].iloc[-1]))
    assert ledger.factories().set_index("factory").loc["odd", "gpu_energy_j"] == (CYCLES - 1) * JOULES_PER_CYCLE
    store.close()


def test_the_deadline_counts_waiting_on_the_target_with_one_timer_per_fetch(serve, monkeypatch):
    """A body read in chunks: the time spent on each chunk between reads (parsing, registering) is not the target's, so a
    scrape whose processing outlasts the deadline still succeeds; and one timer thread serves the whole fetch, not one
    per read (thousands of thread starts a second at a site of many targets)."""
    from aifmon.ingest import collector

    timers = []

    class Counted(threading.Timer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            timers.append(self)

    monkeypatch.setattr(collector.threading, "Timer", Counted)
    body = b"".join(b'm{n="%d"} 1\n' % k for k in range(1_000_000))  # 14 MB: four chunks
    address = serve(fixed("text/plain; version=0.0.4", body))
    with collector.fetch(address, timeout_s=5.0, max_bytes=len(body)) as (_, chunks):
        assert b"".join(chunks) == body and len(body) > 3 * collector.CHUNK_BYTES
    assert len(timers) == 1, "a timer per wait would be 7: connect, request and five reads"
    got = []
    with collector.fetch(address, timeout_s=0.5, max_bytes=len(body)) as (_, chunks):
        for chunk in chunks:
            got.append(chunk)
            time.sleep(0.25)  # the scrape's own work on the chunk: 1 s in all, twice the deadline
    assert b"".join(got) == body


def test_stop_is_not_held_up_by_a_target_that_trickles(tmp_path, sim_server, serve):
    healthy = f"127.0.0.1:{free_port()}"
    inv = parse_inventory(inventory_text({"alpha": healthy}), "t.yaml")
    sim_server(inv, "alpha", address=healthy)
    slow = serve(trickle(serve.done))
    store = DuckDBStore(tmp_path / "s.duckdb")
    collector = Collector(store, targets_of(inv) + [Target(slow, {"factory": "slow", "instance": slow})],
                          interval_s=1.0, timeout_s=TIMEOUT_S)
    worker = threading.Thread(target=collector.run)
    worker.start()
    wait_until(lambda: collector.cycles >= 3, 30, "three cycles while a target trickles")
    collector.stop()
    worker.join(timeout=10 * TIMEOUT_S)
    assert not worker.is_alive(), "the collector stops within its scrape deadline, not when the slow target ends"
    assert collector.failures[slow, "timeout"] == collector.cycles
    up = store.range("up", 0, 2**62)
    assert (up[up["factory"] == "alpha"]["value"] == 1.0).sum() == collector.cycles
    store.close()


def test_minute_aggregates_and_rollup_reads_leave_non_finite_values_out(tmp_path):
    store = DuckDBStore(tmp_path / "m.duckdb")
    gauge, counter = store.series_ids([("g", (("n", "1"),)), ("c_total", (("n", "1"),))])
    minute = 28_333_333 * 60_000  # a minute of November 2023, ms
    t = minute + np.arange(4, dtype=np.int64) * 15_000  # four samples in one minute
    store.append(np.full(4, gauge), t, np.array([1.0, math.nan, 3.0, math.inf]))
    store.append(np.full(4, counter), t, np.array([10.0, 20.0, 30.0, math.nan]))
    assert np.isnan(store.range("g", 0, 2**62)["value"].iloc[1]), "raw reads keep NaN"
    assert sorted(store.range_arrays("g", 0, 2**62).value.tolist()) == [1.0, 3.0]
    store.compact(now_ms=minute + 8 * 86_400_000)  # the minute is downsampled and its raw samples dropped
    assert store.range("g", 0, 2**62)["value"].tolist() == [2.0], "the minute's avg is over its finite samples"
    assert store.range("c_total", 0, 2**62)["value"].tolist() == [30.0], "the minute's last is its last finite sample"
    store.close()



YEAR_5138_MS = int(datetime.datetime(5138, 1, 1, tzinfo=datetime.UTC).timestamp() * 1000)


def stamped(h: BaseHTTPRequestHandler, n: int) -> None:
    """Per scrape: one sample stamped 10 s ago (kept, with its own time) and one without a timestamp, both good, beside
    a reset BMC clock's 1970 sample, one from the year 5138 and three timestamps that are no time (NaN, 1e30, +Inf)."""
    now_ms = int(time.time() * 1000)
    body = (f"kept_stamped {n} {now_ms - 10_000}\nkept_plain {n}\n"
            f'bmc_power_watts{{node="n1"}} 500 1000\nfuture_power_watts 1 {YEAR_5138_MS}\n'
            "nan_time 1 NaN\nhuge_time 1 1e30\ninf_time 1 +Inf\n").encode()
    fixed("text/plain; version=0.0.4", body)(h, n)


def test_samples_outside_the_window_are_refused_and_counted_the_rest_of_their_scrape_kept(tmp_path, sim_server, serve):
    healthy = f"127.0.0.1:{free_port()}"
    inv = parse_inventory(inventory_text({"alpha": healthy}), "t.yaml")
    sim_server(inv, "alpha", address=healthy)
    odd = serve(stamped)
    repeated = serve(fixed("text/plain", b'fine 1\nrepeated{a="1",b="x",a="2"} 1\n'))
    store = DuckDBStore(tmp_path / "w.duckdb")
    earlier = store.series_ids([("earlier", (("n", "1"),))])  # what the store held before: must come through unharmed
    store.append(np.repeat(earlier, 100), 1_700_000_000_000 + np.arange(100) * 1000, np.arange(100.0))
    targets = targets_of(inv) + [Target(odd, {"factory": "odd", "instance": odd}),
                                 Target(repeated, {"factory": "repeated", "instance": repeated})]
    collector = Collector(store, targets, interval_s=1.0, timeout_s=TIMEOUT_S)
    started_ms = int(time.time() * 1000)
    for _ in range(CYCLES):
        collector.collect_once()
    ended_ms = int(time.time() * 1000)

    assert dict(collector.refused) == {(odd, "too_old"): CYCLES, (odd, "too_new"): CYCLES, (odd, "not_a_time"): 3 * CYCLES}
    assert dict(collector.failures) == {(repeated, "bad_body"): CYCLES}, "a repeated label name fails the scrape, as in Prometheus"
    up = store.range("up", 0, 2**62).groupby("factory")["value"].agg(list).to_dict()
    assert up == {"alpha": [1.0] * CYCLES, "odd": [1.0] * CYCLES, "repeated": [0.0] * CYCLES}
    power = store.range("aif_gpu_power_watts", 0, 2**62)
    assert len(power) == inv.factory("alpha").gpu_count * CYCLES and (power.groupby("series_id")["t_ms"].nunique() == CYCLES).all()
    for metric in ("kept_stamped", "kept_plain"):
        assert store.range(metric, 0, 2**62)["value"].tolist() == [float(n) for n in range(CYCLES)], metric
    stamped_t = store.range("kept_stamped", 0, 2**62)["t_ms"]
    assert ((stamped_t >= started_ms - 10_000 - 1000) & (stamped_t <= ended_ms - 10_000 + 1000)).all(), "a sample in the window keeps its own time"
    for metric in ("bmc_power_watts", "future_power_watts", "nan_time", "huge_time", "inf_time", "fine", "repeated"):
        assert store.range(metric, 0, 2**62).empty, metric
    assert store.range("earlier", 0, 2**62)["value"].tolist() == list(np.arange(100.0))
    lo, hi = store.time_bounds()
    assert lo == 1_700_000_000_000 and hi <= ended_ms, "no refused time reached the store"

    # The counts are stored as counters per target and reason, from the first one on: an operator can graph and alert on them.
    refused = store.range(REFUSED, 0, 2**62)
    counts = refused.groupby(["instance", "reason"])["value"].agg(list).to_dict()
    assert counts == {(odd, "too_old"): [1.0, 2, 3, 4, 5], (odd, "too_new"): [1.0, 2, 3, 4, 5], (odd, "not_a_time"): [3.0, 6, 9, 12, 15]}
    assert set(refused["factory"]) == {"odd"}
    assert store.range(FAILURES, 0, 2**62, match={"reason": "bad_body"})["value"].tolist() == [1.0, 2, 3, 4, 5]
    store.close()


def history(lines: int, t0_s: int = 1_790_000_000) -> bytes:
    """OpenMetrics history: `lines` samples of 100 series, one per series a second from `t0_s`, no `# EOF` yet."""
    k = np.arange(lines)
    return "".join(f'hist_power_watts{{node="n{i % 100:02d}"}} {i % 7}.5 {t0_s + i // 100}\n' for i in k.tolist()).encode()


@pytest.mark.parametrize(("last", "why"), [
    ('hist_power_watts{node="n00"} 1 1.0', "older than the window (2000-01-01T00:00:00+00:00"),
    (f'hist_power_watts{{node="n00"}} 1 {YEAR_5138_MS / 1000:.3f}', "ahead of the window"),
    ('hist_power_watts{node="n00"} 1 NaN', "not a time"),
    ('hist_power_watts{node="n00"} 1 1e30', "not a time"),
    ('hist_power_watts{node="n00"} 1', "no timestamp"),
    ('hist_power_watts{node="n00",node="n01"} 1 1790000000', "label name is repeated"),
    ('hist_power_watts{node="n00"} one 1790000000', "expected 'name{labels} value [timestamp]'"),
])
@pytest.mark.parametrize("chunk_bytes", [32 * 2**20, 10_000])  # the whole file in one chunk, or the bad line in its ninth
def test_a_half_bad_import_stores_nothing_and_names_the_line(tmp_path, monkeypatch, last, why, chunk_bytes):
    from aifmon.ingest import openmetrics

    monkeypatch.setattr(openmetrics, "_CHUNK_BYTES", chunk_bytes)
    path = tmp_path / "half-bad.om"
    path.write_bytes(history(2000) + last.encode() + b"\n# EOF\n")
    store = DuckDBStore(tmp_path / "i.duckdb")
    before = store.series_ids([series_key("before", {"n": "1"})])
    store.append(before, np.array([1_700_000_000_000]), np.array([42.0]))
    with pytest.raises(ExpositionError) as refused:
        import_openmetrics(store, path)
    assert f"{path}: line 2001: " in str(refused.value) and why in str(refused.value) and "nothing of it was stored" in str(refused.value)
    assert (store.sample_count(), store.metric_names()) == (1, ["before"]), "nothing of the file, the earlier sample intact"
    # The transaction's series ids were forgotten with it: the good part imports afterwards with ids of its own.
    path.write_bytes(history(2000) + b"# EOF\n")
    assert import_openmetrics(store, path).samples == 2000
    assert store.range("hist_power_watts", 0, 2**62).groupby("node")["t_ms"].count().tolist() == [20] * 100
    assert store.range("before", 0, 2**62)["value"].tolist() == [42.0]
    store.close()


def test_store_import_of_40_mb_with_a_bad_last_line_exits_2_and_commits_nothing(tmp_path):
    """Across the import's 32 MB chunks: the first is parsed and written before the bad line is read, and still rolled back."""
    path = tmp_path / "big.om"
    lines = 1_000_000  # 44 MB
    with path.open("wb") as fh:
        for part in range(0, lines, 100_000):
            fh.write(history(100_000, t0_s=1_790_000_000 + part // 100))
        fh.write(b'hist_power_watts{node="n00"} 1 1.000\n# EOF\n')  # a BMC whose clock was reset
    assert path.stat().st_size > 40_000_000
    store_path = tmp_path / "big.duckdb"
    with DuckDBStore(store_path) as store:
        store.append(store.series_ids([series_key("before", {"n": "1"})]), np.array([1_700_000_000_000]), np.array([42.0]))
    result = subprocess.run([sys.executable, "-m", "aifmon", "--quiet", "store", "import", str(path), "--store", f"duckdb:///{store_path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"{path}: line {lines + 1}: the timestamp is older than the window" in result.stderr and "Traceback" not in result.stderr
    with DuckDBStore(store_path, read_only=True) as store:
        assert (store.sample_count(), store.metric_names()) == (1, ["before"])
