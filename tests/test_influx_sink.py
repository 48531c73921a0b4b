"""The InfluxDB sink against a real VictoriaMetrics (its `/api/v2/write` speaks InfluxDB 2 line protocol):
server killed and restarted mid-stream, acknowledgements lost, the sink itself SIGKILLed; every point
present exactly once afterwards, counted and summed on the server."""

from __future__ import annotations

import errno
import http.server
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from influxdb_client import Point, WritePrecision

from aifmon.stores import influx_sink
from aifmon.stores.influx_sink import InfluxSink, open_influx_sink
from aifmon.stores.store import RowStore, SampleReader, StoreConfigError, StoreError, open_store, series_key
from tests.conftest import free_port
from tests.servers import VictoriaMetrics, victoria_metrics

REPO = Path(__file__).resolve().parent.parent
TOKEN = "aifmon-test-token-3f9c1e0b7d"
GPUS = 20
BASE_MS = (int(time.time()) - 6 * 3600) * 1000  # inside VictoriaMetrics' retention, clear of "now"


@pytest.fixture(autouse=True)
def token_env(monkeypatch):
    monkeypatch.delenv(influx_sink.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv(influx_sink.TOKEN_ENV, TOKEN)


def gpu_keys() -> list:
    return [series_key("aif_gpu_power_watts", {"node": f"n{g // 4:03d}", "gpu": str(g % 4), "factory": "alpha"}) for g in range(GPUS)]


def step_values(step: int) -> np.ndarray:
    """Quarter-watt values, so sums of thousands of them are exact in float64."""
    return 50.0 + ((step * GPUS + np.arange(GPUS)) % 1000) * 0.25


def write_steps(sink: InfluxSink, ids: np.ndarray, steps: range) -> int:
    """One append call holding every GPU at each of `steps` (1 s apart); returns the points written."""
    t = np.repeat([BASE_MS + s * 1000 for s in steps], GPUS)
    sink.append(np.tile(ids, len(steps)), t, np.concatenate([step_values(s) for s in steps]))
    return GPUS * len(steps)


def exported(vm: VictoriaMetrics, metric: str = "aif_gpu_power_watts_value") -> dict[tuple, list[tuple[int, float]]]:
    """Every stored sample of `metric`, duplicates included: series labels -> [(t_ms, value)]."""
    out = {}
    for s in vm.export(f'{{__name__="{metric}"}}'):
        labels = tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__"))
        out[labels] = list(zip(s["timestamps"], s["values"]))
    return out


def expected_stream(steps: range) -> tuple[int, float, set[tuple[int, int]]]:
    """(count, sum, {(gpu, t_ms)}) of the points written for `steps`."""
    points = {(g, BASE_MS + s * 1000) for s in steps for g in range(GPUS)}
    return len(points), float(sum(step_values(s).sum() for s in steps)), points


def test_server_killed_and_restarted_mid_stream_every_point_once(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # Calls of 20 points, every 10th of 60; 50 lines a request, so big calls are split and replay
    # joins small segments into one request.
    sizes = [3 if j % 10 == 0 else 1 for j in range(200)]
    calls = [range(s, s + k) for s, k in zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes)]
    n, total, points = expected_stream(range(calls[-1].stop))
    with victoria_metrics(tmp_path) as vm:
        sink = InfluxSink(vm.url, "o", "b", TOKEN, tmp_path / "spool", batch_lines=50, retry_interval_s=0.3)
        ids = sink.series_ids(gpu_keys())
        written = sum(write_steps(sink, ids, c) for c in calls[:80])
        assert sink.points_sent == written and sink.spool_backlog_points == 0

        # VictoriaMetrics has no write-ahead log: what it acknowledged in its last seconds dies with a
        # SIGKILL. Let that settle first, so every loss the test could see would be the sink's.
        vm.make_durable()
        vm.kill()
        started = time.monotonic()
        down = sum(write_steps(sink, ids, c) for c in calls[80:140])
        assert time.monotonic() - started < 20  # a down server costs a refused connection, not a stall
        assert sink.spool_backlog_points == down and sink.points_spooled == down
        time.sleep(1.0)
        vm.start()  # same port, same data path

        for c in calls[140:]:
            written += write_steps(sink, ids, c)
            time.sleep(0.01)
        assert sink.spool_backlog_points == 0, "the backlog is replayed while the stream goes on, not only at close"
        sink.close()
        assert written + down == n
        # whatever went to the spool (the down period, and calls queued behind its backlog) was replayed
        assert sink.points_replayed == sink.points_spooled > down and sink.points_sent + sink.points_replayed == n
        assert not list((tmp_path / "spool").glob("*.lp"))

        stored = exported(vm)
        samples = [(labels, t, v) for labels, tv in stored.items() for t, v in tv]
        assert len(stored) == GPUS
        assert len(samples) == n == 4800, "each point exactly once: no loss, no duplicate"
        assert sum(v for _, _, v in samples) == total
        by_gpu = {labels: i for i, labels in enumerate(sorted(stored, key=lambda lb: (dict(lb)["node"], dict(lb)["gpu"])))}
        assert {(by_gpu[labels], t) for labels, t, _ in samples} == points
    assert TOKEN not in caplog.text
    assert "spooling to" in caplog.text and "takes writes again" in caplog.text


class DroppingProxy(http.server.ThreadingHTTPServer):
    """Forwards writes to VictoriaMetrics and records them; for the requests numbered in `drop_acks`,
    the server applies the write but the sink never hears back (the connection closes unanswered)."""

    def __init__(self, upstream: str, drop_acks: set[int]):
        self.upstream, self.drop_acks = upstream, drop_acks
        self.requests: list[tuple[bytes, bool]] = []  # (body, acknowledged)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                forward = urllib.request.Request(server.upstream + self.path, data=body, method="POST",
                                                 headers={"Content-Type": self.headers["Content-Type"]})
                with urllib.request.urlopen(forward, timeout=10) as r:
                    status = r.status
                acknowledged = len(server.requests) not in server.drop_acks
                server.requests.append((body, acknowledged))
                if acknowledged:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                # else: return without a word; HTTP/1.0 closes the connection

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_lost_acknowledgement_replays_and_the_server_overwrites(tmp_path):
    # With -dedup.minScrapeInterval=1ms VictoriaMetrics keeps one sample per series and ms, as InfluxDB
    # keeps one value per (series, field, timestamp): the semantics the sink's exactly-once relies on.
    with victoria_metrics(tmp_path, extra_args=("-dedup.minScrapeInterval=1ms",)) as vm:
        proxy = DroppingProxy(vm.url, drop_acks={3, 7})
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            sink = InfluxSink(f"http://127.0.0.1:{proxy.server_address[1]}", "o", "b", TOKEN, tmp_path / "spool",
                              batch_lines=100, retry_interval_s=0.0)
            ids = sink.series_ids(gpu_keys())
            for s in range(30):
                write_steps(sink, ids, range(s, s + 1))
            sink.close()
        finally:
            proxy.shutdown()
            proxy.server_close()
        n, total, points = expected_stream(range(30))
        dropped = [body for body, ok in proxy.requests if not ok]
        # each unacknowledged call was spooled, the next call queued behind it, and both replayed in one request
        assert len(dropped) == 2 and sink.points_replayed == sink.points_spooled == 4 * GPUS
        # The server received the unacknowledged requests twice: first alone, then replayed.
        received = b"".join(body for body, _ in proxy.requests)
        assert all(received.count(body) == 2 for body in dropped)
        # In order, exactly once: the acknowledged requests, concatenated, are the stream as written.
        acked_lines = b"".join(body for body, ok in proxy.requests if ok).decode().splitlines()
        assert [int(line.rsplit(" ", 1)[1]) for line in acked_lines] == sorted(t for _, t in points)
        assert len(acked_lines) == n

        samples = [tv for tvs in exported(vm).values() for tv in tvs]
        assert len(samples) == n == 600
        assert sum(v for _, v in samples) == total


CHILD = textwrap.dedent("""
    import logging, sys, time
    import numpy as np
    from aifmon.stores.influx_sink import open_influx_sink
    from aifmon.stores.store import series_key
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # everything the process logs, the client's too
    sink = open_influx_sink(sys.argv[1])
    ids = sink.series_ids([series_key("aif_gpu_power_watts", {"node": "n1", "gpu": str(g)}) for g in range(25)])
    base = int(sys.argv[2])
    for j in range(1_000_000):
        sink.append(ids, base + j * 1000, np.full(25, 100.0 + j))
        print("ack", j, flush=True)
""")


def test_sink_sigkilled_while_server_down_loses_nothing_acknowledged(tmp_path):
    port = free_port()  # nothing listens here yet: the server is down
    url = f"influxdb+http://127.0.0.1:{port}?org=o&bucket=b&spool={tmp_path / 'spool'}"
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(BASE_MS)], cwd=REPO, env={**os.environ},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        acked = -1
        while acked < 40:
            line = child.stdout.readline()
            assert line, child.stderr.read()
            acked = int(line.split()[1])
        cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes()
    finally:
        child.send_signal(signal.SIGKILL)
    rest, stderr = child.communicate(timeout=30)
    acked = max([acked] + [int(line.split()[1]) for line in rest.splitlines()])
    assert TOKEN.encode() not in cmdline
    assert TOKEN not in stderr and "spooling to" in stderr
    assert not any(TOKEN.encode() in f.read_bytes() for f in (tmp_path / "spool").iterdir() if f.is_file())

    with victoria_metrics(tmp_path, port=port) as vm:
        sink = open_influx_sink(url)  # a new sink on the same spool replays it
        sink.close()
        stored = exported(vm)
    assert len(stored) == 25
    # The server holds a prefix of the stream, each point once; at least every acknowledged call (the
    # kill may land after a call's segment is durable but before its "ack" line is printed).
    calls = {(t - BASE_MS) // 1000 for tvs in stored.values() for t, _ in tvs}
    m = max(calls) + 1
    assert calls == set(range(m)) and m >= acked + 1
    for tvs in stored.values():
        assert sorted(t for t, _ in tvs) == [BASE_MS + j * 1000 for j in range(m)]
        assert sum(v for _, v in tvs) == sum(100.0 + j for j in range(m))
    assert sink.points_replayed == 25 * m
    print(f"acknowledged calls {acked + 1}, replayed calls {m}, points {25 * m}")


def test_rollup_rows_and_nan_samples(tmp_path):
    with victoria_metrics(tmp_path) as vm:
        sink = open_influx_sink(f"influxdb+http://127.0.0.1:{vm.port}?org=o&bucket=b&spool={tmp_path / 'spool'}")
        hour = BASE_MS // 3_600_000 * 3_600_000
        rows = pd.DataFrame({"window_start_ms": hour, "factory": ["alpha", "alpha"], "job": ["17", "(unallocated)"],
                             "energy_j": [3.6e6, 1.5], "gpu_seconds": [7200, 0]})
        sink.replace_rows("gpu_energy_hourly", hour, rows)
        sink.replace_rows("gpu_energy_hourly", hour, rows.assign(energy_j=[4.0e6, 2.5]))  # a recomputed hour
        ids = sink.series_ids([series_key("aif_gpu_up", {"node": "n 1,x=y", "gpu": "0"})])
        sink.append(np.repeat(ids, 3), np.array([BASE_MS, BASE_MS + 1000, BASE_MS + 2000]), np.array([1.0, np.nan, 0.0]))
        sink.close()
        assert sink.points_skipped == 1
        energy = exported(vm, "gpu_energy_hourly_energy_j")
        seconds = exported(vm, "gpu_energy_hourly_gpu_seconds")
        up = exported(vm, "aif_gpu_up_value")
    assert {dict(k)["job"]: [t for t, _ in v] for k, v in energy.items()} == {"17": [hour, hour], "(unallocated)": [hour, hour]}
    assert {dict(k)["job"]: sorted(v for _, v in tvs) for k, tvs in energy.items()} == {"17": [3.6e6, 4.0e6], "(unallocated)": [1.5, 2.5]}
    assert sorted(v for tvs in seconds.values() for _, v in tvs) == [0, 0, 7200, 7200]
    # a label value with a space, comma and '=' survives escaping; the NaN sample is not sent
    assert list(up) == [(("gpu", "0"), ("node", "n 1,x=y"))] and up[next(iter(up))] == [(BASE_MS, 1.0), (BASE_MS + 2000, 0.0)]


def test_full_disk_while_server_down_is_a_clear_error_and_nothing_half_spooled(tmp_path, monkeypatch):
    sink = open_influx_sink(f"influxdb+http://127.0.0.1:{free_port()}?org=o&bucket=b&spool={tmp_path / 'spool'}")
    ids = sink.series_ids(gpu_keys())
    write_steps(sink, ids, range(0, 1))
    real = influx_sink._write_durably
    writes = []

    def full_after_one(path, data):
        if writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        writes.append(path)
        real(path, data)

    monkeypatch.setattr(influx_sink, "_write_durably", full_after_one)
    sink.batch_lines = 8  # three segments: the first lands, the second finds the disk full
    with pytest.raises(StoreError, match=r"No space left on device.*20 points were NOT stored; free disk space"):
        write_steps(sink, ids, range(1, 2))
    assert sink.spool_backlog_points == GPUS  # the earlier, acknowledged call only
    assert sorted(p.name for p in (tmp_path / "spool").iterdir() if p.suffix in (".lp", ".tmp")) == ["00000000000000000001-20.lp"]
    monkeypatch.setattr(influx_sink, "_write_durably", real)
    write_steps(sink, ids, range(1, 2))
    assert sink.spool_backlog_points == 2 * GPUS
    sink.close(timeout_s=1)


def test_the_sink_is_write_only_and_says_where_to_read(tmp_path):
    url = f"influxdb+http://127.0.0.1:{free_port()}?org=o&bucket=b&spool={tmp_path}"
    with open_store(url) as sink:
        assert not isinstance(sink, SampleReader) and not isinstance(sink, RowStore)
    for opening in (lambda: open_store(url, read_only=True), lambda: open_store(url, needs=SampleReader),
                    lambda: open_store(url, needs=RowStore)):
        with pytest.raises(StoreConfigError, match="the InfluxDB sink is write-only; read the same data through the PromQL backend"):
            opening()


@pytest.mark.parametrize("url, message", [
    ("influxdb+http://127.0.0.1:8086", "missing org= and bucket="),
    ("influxdb+http://127.0.0.1:8086?org=o", "missing bucket="),
    ("influxdb+http://:8086?org=o&bucket=b", "names no host"),
    ("influxdb+http://127.0.0.1:port?org=o&bucket=b", "Port could not be cast"),
    ("influxdb+http://127.0.0.1:8086/api/v2?org=o&bucket=b", "unexpected path '/api/v2'"),
    ("influxdb+http://127.0.0.1:8086?org=o&bucket=b&precision=s", "unknown parameter.s. precision"),
    ("influxdb+http://127.0.0.1:8086?org=o&org=p&bucket=b", "org= must be given once"),
    ("influxdb+http://127.0.0.1:8086?org=&bucket=b", "org= must be given once, not empty"),
    ("influxdb://127.0.0.1:8086?org=o&bucket=b", r"expected influxdb\+http://host:8086\?org=O&bucket=B"),
])
def test_bad_url_is_a_clear_error(url, message):
    with pytest.raises(StoreConfigError, match=message) as e:
        open_influx_sink(url)
    assert "expected influxdb+http://host:8086?org=O&bucket=B" in str(e.value)


@pytest.mark.parametrize("url", ["influxdb+http://user:s3cret-tok@127.0.0.1:8086?org=o&bucket=b",
                                 "influxdb+http://127.0.0.1:8086?org=o&bucket=b&token=s3cret-tok"])
def test_token_in_url_is_refused_without_echoing_it(url):
    with pytest.raises(StoreConfigError, match="a token never goes in the URL; set AIFMON_INFLUXDB_TOKEN") as e:
        open_influx_sink(url)
    assert "s3cret-tok" not in str(e.value)


def test_token_comes_from_the_environment_or_a_file(tmp_path, monkeypatch):
    url = f"influxdb+http://127.0.0.1:{free_port()}?org=o&bucket=b&spool={tmp_path / 'spool'}"
    monkeypatch.delenv(influx_sink.TOKEN_ENV)
    with pytest.raises(StoreConfigError, match="no InfluxDB token: set AIFMON_INFLUXDB_TOKEN, or AIFMON_INFLUXDB_TOKEN_FILE"):
        open_influx_sink(url)
    monkeypatch.setenv(influx_sink.TOKEN_FILE_ENV, str(tmp_path / "absent"))
    with pytest.raises(StoreConfigError, match="cannot read the InfluxDB token file"):
        open_influx_sink(url)
    (tmp_path / "token").write_text("\n")
    monkeypatch.setenv(influx_sink.TOKEN_FILE_ENV, str(tmp_path / "token"))
    with pytest.raises(StoreConfigError, match="is empty"):
        open_influx_sink(url)
    (tmp_path / "token").write_text(TOKEN + "\n")
    sink = open_influx_sink(url)
    assert sink._client.token == TOKEN and TOKEN not in sink.url  # the newline is stripped
    sink.close()
    monkeypatch.setenv(influx_sink.TOKEN_ENV, TOKEN)
    with pytest.raises(StoreConfigError, match="set only one"):
        open_influx_sink(url)


def test_spool_has_one_owner_and_one_target(tmp_path):
    port = free_port()
    spool = tmp_path / "spool"
    first = open_influx_sink(f"influxdb+http://127.0.0.1:{port}?org=o&bucket=b&spool={spool}")
    with pytest.raises(StoreError, match="is held by another InfluxDB sink"):
        open_influx_sink(f"influxdb+http://127.0.0.1:{port}?org=o&bucket=b&spool={spool}")
    write_steps(first, first.series_ids(gpu_keys()), range(0, 1))  # server down: spooled
    first.close(timeout_s=1)
    with pytest.raises(StoreError, match=f"holds 20 unsent points for http://127.0.0.1:{port} org=o bucket=b, not for .* bucket=other"):
        open_influx_sink(f"influxdb+http://127.0.0.1:{port}?org=o&bucket=other&spool={spool}")


# Label values with every character line protocol treats specially, alone, inside and at the end.
SPECIAL = [",", "=", " ", "\\", '"']
SPECIAL_VALUES = [v for c in SPECIAL for v in (c, f"a{c}b", f"ab{c}", f"{c}{c}")] + ["C:\\", "a\\,b", "a\\ b", "a\\=b", "a\\\\"]


def client_series(labels: dict[str, str]) -> str:
    """The measurement and tags of the line influxdb-client's own Point renders (the field and time follow
    the last two spaces)."""
    point = Point("m").field("value", 1.0).time(BASE_MS, WritePrecision.MS)
    for k, v in labels.items():
        point = point.tag(k, v)
    return point.to_line_protocol().rsplit(" ", 2)[0]


def sink_series(sink: InfluxSink, labels: dict[str, str]) -> str:
    """The measurement and tags the sink renders for a series."""
    (i,) = sink.series_ids([series_key("m", labels)])
    return sink._prefixes[i]


@pytest.mark.parametrize("char", SPECIAL + ["\n"])
def test_escaping_equals_the_client_library_except_for_backslashes(char, tmp_path):
    sink = open_influx_sink(f"influxdb+http://127.0.0.1:{free_port()}?org=o&bucket=b&spool={tmp_path}")
    labels = {"a": f"x{char}y", "b": f"{char}", "c": "z"}
    if char == "\\":
        # The client leaves a backslash as it is and puts a space after one at the end (stored as `\ `
        # read as an escaped space); the sink doubles it, which the server reads as one backslash.
        assert client_series(labels) == "m,a=x\\y,b=\\ ,c=z"
        assert sink_series(sink, labels) == "m,a=x\\\\y,b=\\\\,c=z"
    else:
        assert sink_series(sink, labels) == client_series(labels)
    sink.close(timeout_s=1)


def test_every_special_character_in_a_label_round_trips_through_a_real_server(tmp_path):
    with victoria_metrics(tmp_path) as vm:
        sink = open_influx_sink(f"influxdb+http://127.0.0.1:{vm.port}?org=o&bucket=b&spool={tmp_path / 'spool'}")
        # the special value in each position: first, middle and last tag
        keys = [series_key("aif_gpu_up", {"a": v, "n": str(i), "source": "bmc"}) for i, v in enumerate(SPECIAL_VALUES)]
        keys += [series_key("aif_gpu_up", {"a": "first", "n": f"m{i}", "z": v}) for i, v in enumerate(SPECIAL_VALUES)]
        sink.append(sink.series_ids(keys), BASE_MS, np.arange(len(keys), dtype=np.float64))
        sink.close()
        assert sink.points_sent == len(keys) and sink.points_skipped == 0
        stored = exported(vm, "aif_gpu_up_value")
    assert set(stored) == {tuple(sorted(labels)) for _, labels in keys}  # every label, exactly, none swallowed
    assert sorted(v for tvs in stored.values() for _, v in tvs) == list(range(len(keys)))
