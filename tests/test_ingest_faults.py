"""Ingest faults against real HTTP targets on 127.0.0.1: one target's NaN, HTML, bad line, 10 MB line or trickled answer
never costs the other targets a sample, and NaN/+-Inf are stored as values without poisoning energy sums."""

import contextlib
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from aifmon.ingest.collector import Collector, Target, targets_of
from aifmon.rollups.energy import compute_ledger
from aifmon.stores.duckdb_store import DuckDBStore
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
    assert ledger.sites.set_index("factory").loc["odd", "gpu_energy_j"] == (CYCLES - 1) * JOULES_PER_CYCLE
    store.close()


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

