"""The embedded collector against real HTTP targets: simulators, a dead port, a target that answers HTML."""

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aifmon.ingest.collector import Collector, Target, targets_of
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.texts import Texts
from aifmon.telemetry.inventory import parse_inventory
from tests.conftest import free_port, inventory_text

PER_GPU = 9 + 5  # nine per-GPU metrics plus five throttle reasons
PER_NODE = 1 + 4  # BMC power, CPU package and DRAM energy for two sockets
PER_FACTORY = 1 + 2  # facility meter, exporter self metrics


@pytest.fixture
def fixed_target():
    """Start a target that always answers `body` with `content_type`; returns its address."""
    servers = []

    def start(content_type: str, body: bytes) -> str:
        class Fixed(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", free_port()), Fixed)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def test_collects_every_series_and_marks_bad_targets_down(tmp_path, sim_server, fixed_target, caplog):
    a, b, dead = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    html = fixed_target("text/html", b"<html><body>login required</body></html>")
    # valid lines first, then one whose labels do not parse: nothing of this scrape may be stored
    malformed = fixed_target("text/plain; version=0.0.4", b'aif_node_power_watts{node="n1"} 5\naif_node_power_watts{node=n2} 6\n')
    inv = parse_inventory(inventory_text({"alpha": a, "beta": b}), "t.yaml")
    sim_server(inv, "alpha", address=a)
    sim_server(inv, "beta", address=b)
    targets = targets_of(inv) + [Target(dead, {"factory": "gamma", "instance": dead}),
                                 Target(html, {"factory": "delta", "instance": html}),
                                 Target(malformed, {"factory": "epsilon", "instance": malformed})]
    store = DuckDBStore(tmp_path / "c.duckdb")
    collector = Collector(store, targets, interval_s=1.0, timeout_s=2.0)
    for _ in range(3):
        collector.collect_once()
    up = store.latest("up", lookback_s=60).set_index("factory")["value"].to_dict()
    assert up == {"alpha": 1.0, "beta": 1.0, "gamma": 0.0, "delta": 0.0, "epsilon": 0.0}
    assert sum("is down" in r.message for r in caplog.records) == 3, "a down target is logged once, not every cycle"
    assert any("text/html" in r.message for r in caplog.records)
    assert any("invalid labels" in r.message for r in caplog.records)
    assert "epsilon" not in set(store.latest("aif_node_power_watts", lookback_s=60)["factory"])

    gpus = sum(inv.factory(f).gpu_count for f in ("alpha", "beta"))
    nodes = sum(inv.factory(f).node_count for f in ("alpha", "beta"))
    fixed = sum(len(store.range(m, 0, 2**62)["series_id"].unique()) for m in store.metric_names()
                if m != "aif_gpu_job_info" and m.startswith("aif_"))
    assert fixed == PER_GPU * gpus + PER_NODE * nodes + PER_FACTORY * 2
    power = store.latest("aif_gpu_power_watts", lookback_s=60)
    assert len(power) == gpus and set(power["factory"]) == {"alpha", "beta"}
    assert {"instance", "system", "node", "gpu", "uuid", "model"} <= set(power.columns)
    jobs = store.latest("aif_gpu_job_info", lookback_s=60)
    assert "job" in jobs.columns and jobs["job"].str.isdigit().all(), "the Slurm job label is not overwritten by target labels"
    store.close()


COLLECT_THEN_COMPACT = """
import sys
from aifmon.cli import main
from aifmon.stores.duckdb_store import DuckDBStore
inventory, path = sys.argv[1:]
statuses = [main(["--quiet", "collect", "--once", "--inventory", inventory, "--store", f"duckdb:///{path}"]) for _ in range(2)]
store = DuckDBStore(path)
compacted = store.compact(now_ms=2**50)  # every minute aggregated, every raw sample past its retention
store.close()
print(statuses, compacted["raw_dropped"] > 0, sorted({"pandas", "pyarrow", "numba"} & set(sys.modules)))
"""


def test_the_collector_process_loads_neither_pandas_nor_arrow(tmp_path, sim_server):
    """`aifmon collect` registers series, appends samples and compacts without pandas (47 MB resident: DuckDB's Python
    client would import it to scan an Arrow table or bind a query parameter) and without Arrow (27 MB) or Numba."""
    address = f"127.0.0.1:{free_port()}"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(inventory_text({"alpha": address}))
    sim_server(parse_inventory(inventory.read_text(), str(inventory)), "alpha", address=address)
    run = subprocess.run([sys.executable, "-c", COLLECT_THEN_COMPACT, str(inventory), str(tmp_path / "c.duckdb")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "[0, 0] True []", run.stdout


def test_scrape_interval_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        Collector(DuckDBStore(tmp_path / "x.duckdb"), [], interval_s=0)


def test_series_index_reuses_ids_and_forgets_series_that_left(tmp_path):
    from aifmon.ingest.parser import parse_exposition
    from aifmon.ingest.series_index import SeriesIndex

    def scrape(*series: str):
        return parse_exposition("".join(f"{s} {k}.5\n" for k, s in enumerate(series)).encode())

    store = DuckDBStore(tmp_path / "i.duckdb")
    index = SeriesIndex(store, {"instance": "x"})
    first = index.ids(scrape('a{n="1"}', 'a{n="2"}', 'b{n="1"}'))
    assert len(set(first.tolist())) == 3
    again = index.ids(scrape('a{n="1"}', 'a{n="2"}', 'b{n="1"}'))
    assert again.tolist() == first.tolist()
    same_length = index.ids(scrape('a{n="1"}', 'a{n="3"}', 'b{n="1"}'))  # same line count, one text changed in place
    assert same_length[[0, 2]].tolist() == first[[0, 2]].tolist() and same_length[1] not in first
    shifted = index.ids(scrape('a{n="2"}', 'c{n="9"}', 'a{n="1"}'))  # order changed, one new
    assert shifted[0] == first[1] and shifted[2] == first[0] and shifted[1] not in first
    for k in range(600):  # many short-lived series (jobs) come and go
        index.ids(scrape(f'j{{job="{k}"}}', 'a{n="1"}'))
    assert len(index) <= 2 * 2 + 1024
    assert index.ids(scrape('a{n="1"}')).tolist() == [first[0]]
    store.close()


def test_series_of_a_target_that_went_down_are_stale_at_once(tmp_path, sim_server):
    from aifmon.exporters.http import serve_exposition

    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    inv = parse_inventory(inventory_text({"alpha": a, "beta": b}), "t.yaml")
    sim_server(inv, "alpha", address=a)
    _, beta = sim_server(inv, "beta", address=f"127.0.0.1:{free_port()}")
    beta_server = serve_exposition(b, beta.body, "beta")  # one we can stop
    store = DuckDBStore(tmp_path / "s.duckdb")
    collector = Collector(store, targets_of(inv), interval_s=1.0, timeout_s=2.0)
    collector.collect_once()
    assert set(store.latest("aif_gpu_power_watts", lookback_s=300)["factory"]) == {"alpha", "beta"}
    beta_server.shutdown()
    beta_server.server_close()
    collector.collect_once()
    power = store.latest("aif_gpu_power_watts", lookback_s=300)
    assert set(power["factory"]) == {"alpha"}, "beta's last values are not shown as live within the 300 s lookback"
    assert store.latest("up", lookback_s=300).set_index("factory")["value"].to_dict() == {"alpha": 1.0, "beta": 0.0}
    assert len(store.range("aif_gpu_power_watts", 0, 2**62)) == 16 + 16 + 16, "markers hide nothing from range reads"
    store.close()


TRICKY_SERIES = [
    "m", "m{}", ' m_1:x { a = "1" , b="2",} ', 'm{a="x\\"y",b="C:\\\\",c="l1\\nl2"}', 'm{z="é",y="😀",x="\x01\x7f\t\x08\x0c\r"}',
    'm{instance="set by the exporter",a="b"}', 'aif_gpu_power_watts{node="n00001",gpu="0",factory="big"}', 'm{a="\\é"}',
    'm{a="1" b="2"}', 'm{path="C:\\\\",source="bmc"}', 'm{a="=\\"{,}"}', 'm{a=""}',
]


def test_series_keys_are_json_dumps_of_parse_series_byte_for_byte():
    """The compiled key builder and the Python path (parse_series, json.dumps) give the same key for every text, so a
    series registered by either (collector, backfill, import) is one series."""
    import json

    from aifmon.ingest.series_keys import series_keys
    from aifmon.stores.store import series_key
    from aifmon.telemetry.exposition import parse_series

    target = {"instance": 'h:91"00', "factory": "fé"}
    metrics, labels = series_keys(Texts.of(TRICKY_SERIES), target)
    for text, metric, label_text in zip(TRICKY_SERIES, metrics.to_pylist(), labels.to_pylist()):
        name, parsed = parse_series(text)
        key = series_key(name, {**target, **parsed})
        assert (metric, label_text) == (key[0], json.dumps(dict(key[1]), sort_keys=True)), text


@pytest.mark.parametrize(("text", "problem"), [
    ('m{a="1",a="2"}', "a label name is repeated"), ("1m", "invalid metric name"), ("m{a=1}", "invalid labels"),
    ('m{a="1"', "unterminated label set"), ('m{a="x}', "invalid labels"), ('m{a="1", }', "invalid labels"),
])
def test_series_keys_refuse_what_prometheus_refuses(text, problem):
    from aifmon.ingest.series_keys import BadSeries, series_keys

    with pytest.raises(BadSeries, match=problem) as refused:
        series_keys(Texts.of(["fine", text]), {})
    assert refused.value.text == text


def test_columnar_registration_and_python_keys_give_the_same_ids(tmp_path):
    from aifmon.ingest.series_keys import series_keys
    from aifmon.stores.store import series_key
    from aifmon.telemetry.exposition import parse_series

    store = DuckDBStore(tmp_path / "k.duckdb")
    target = {"instance": "x:1"}
    keys = [series_key(name, {**target, **labels}) for name, labels in map(parse_series, TRICKY_SERIES)]
    ids = store.register(*series_keys(Texts.of(TRICKY_SERIES + TRICKY_SERIES[:3]), target))
    assert len(set(ids.tolist())) == len(set(keys)) == len(TRICKY_SERIES) - 1, "m and m{} are one series"
    assert ids[-3:].tolist() == ids[:3].tolist()
    assert store.series_ids(keys).tolist() == ids[:len(TRICKY_SERIES)].tolist()
    assert store.series_ids([("new", ())]).tolist() == [len(set(keys)) + 1], "ids continue after the largest"
    store.close()
    reopened = DuckDBStore(tmp_path / "k.duckdb")
    assert reopened.series_ids(keys[:2]).tolist() == ids[:2].tolist() and "aif_gpu_power_watts" in reopened.metric_names()
    reopened.close()


def test_series_hashes_depend_on_the_text_alone_not_its_place_in_the_body():
    """The series index trusts the parser's 128-bit hashes: the same text hashes alike at any offset (the hash reads 8
    unaligned bytes at a time) and in a body cut into pieces for the parser's threads; texts differing in one byte, or
    only in length, differ."""
    from aifmon.ingest import parser

    texts = [f'm{{a="{"x" * n}"}}' for n in range(20)] + [f'm{{a="{"x" * 9}{c}"}}' for c in "yz"] + ["m", "mm", "m_total"]
    base = parser.parse_exposition("".join(f"{t} 1\n" for t in texts).encode()).hashes
    assert len({tuple(h) for h in base.tolist()}) == len(texts)
    for shift in range(1, 9):
        moved = parser.parse_exposition((f"#{'-' * shift}\n" + "".join(f"{t} 2\n" for t in texts)).encode()).hashes
        assert moved.tolist() == base.tolist(), shift
    big = "".join(f"{t} 3\n" for t in texts).encode() * (parser._PARALLEL_FROM_BYTES * 2 // 400)
    assert len(parser._pieces(big, len(big), 0)) > 1 or parser._CORES == 1
    assert parser.parse_exposition(big).hashes.tolist() == base.tolist() * (len(big) // len("".join(f"{t} 3\n" for t in texts)))
