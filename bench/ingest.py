"""Ingest benchmark: exposition text → durable store, aifmon's embedded path against VictoriaMetrics.

Same data, same run: a simulated factory's exposition (default 25,000 GPUs) is ingested K times with
new timestamps, by
  - aifmon, in a child process of its own (its peak RSS is the whole ingest process's: interpreter, libraries,
    the first scrape's series registration and the steady scrapes): parse (the C scan, `ingest/_scan.c`) → series ids (byte
    comparison with the last scrape, a binary search of the hashes seen for the rest; new series registered in DuckDB
    by a hash join) →
    one DuckDB transaction per scrape, durable when `append` returns (DuckDB syncs its write-ahead log on commit);
  - VictoriaMetrics (Debian package, started here on a free loopback port), fed the same text with timestamps by
    curl (`--data-binary @file`, files written before the clock starts) to /api/v1/import/prometheus, then
    /internal/force_flush, after which the samples are on disk and queryable (VictoriaMetrics acknowledges an
    import when the rows are in its in-memory buffers). curl's CPU time is reported beside the wall time: a
    client that is not the bottleneck spends a small share of it.
Both are timed after a first scrape that registers the series. Also prints what aifmon's libraries take before any
data (LIBRARY_STEPS, in a fresh interpreter). Rounds alternate (VictoriaMetrics, then aifmon);
medians over the rounds are reported, and each round's ratio.
Also times the reads the live panels need: 1 h of per-GPU power for the factory page (25,000 GPUs ×
1 h at 15 s), and the latest value per series for 100,000 GPUs.

Run by hand (not in the test suite):  .venv/bin/python bench/ingest.py [--gpus 25000] [--scrapes 5]
Writes its figures to bench/results/ingest.json (bench/capacity_plan.py reads them).

    .venv/bin/python bench/ingest.py --gpus 100000 --gpus-per-node 8 --scrapes 4 --one-core

times aifmon alone, pinned to one core (taskset), on a gigafactory's exposition: seconds per scrape against a 15 s
interval, and its memory; figures to bench/results/ingest_one_core.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifmon.ingest.collector import CHUNK_BYTES, resolve
from aifmon.ingest.parser import parse_exposition, parse_stream
from aifmon.ingest.series_index import SeriesIndex
from aifmon.stores.duckdb_store import DuckDBStore

# The child that ingests imports this module: what only the parent needs (the simulator, the inventory parser, the test
# helpers and pytest under them) is imported where it is used, so the child's memory is the ingest path's.

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"

def factory_inventory(gpus: int, per_node: int = 4):
    from aifmon.telemetry.inventory import parse_inventory

    nodes = gpus // per_node
    return parse_inventory(f"""
name: bench
factories:
  - id: big
    name: Big AI Factory
    country: DE
    latitude: 50.9
    longitude: 6.4
    power_cap_mw: {gpus * 0.001}
    design_pue: 1.1
    energy_price_eur_per_kwh: 0.15
    systems:
      - id: big-gpu
        name: Booster
        node_groups:
          - {{prefix: bign, count: {nodes}, gpus_per_node: {per_node}, gpu_model: H100-SXM5-80GB}}
projects:
  - {{id: p1, name: P1, access_mode: Large Scale, sector: Technology & Digital, factory: big}}
  - {{id: p2, name: P2, access_mode: Fast Lane, sector: Health & Life Sciences, factory: big}}
""", "bench")


def installed(binary: str, package: str) -> str:
    """The path of `binary` on PATH; exits saying which Debian package brings it when it is missing."""
    path = shutil.which(binary)
    if path is None:
        raise SystemExit(f"{binary} is not installed (Debian package {package})")
    return path


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory of process `pid` (default this one), MB: VmHWM, which starts again at exec. (getrusage's
    ru_maxrss does not: a child started by a large parent reported the parent's size.)"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """This process's resident memory now, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


LIBRARY_STEPS = (
    ("Python", "pass"),
    ("NumPy", "import numpy"),
    ("DuckDB", "import duckdb"),
    ("the parser, its C scan and the series index", "import aifmon.ingest.parser, aifmon.ingest.series_index"),
    ("the store", "import aifmon.stores.duckdb_store"),
    ("the collector, with the inventory's validation (pydantic)", "import aifmon.ingest.collector"),
)
"""What the ingest process loads before any data, in the order it loads it: (part, the code that loads it)."""


def library_memory_mb() -> dict[str, float]:
    """Resident memory each of LIBRARY_STEPS adds, MB, loaded one after the other in a fresh interpreter."""
    rss = "print(int(next(line for line in open('/proc/self/status') if line.startswith('VmRSS')).split()[1]) / 1024)"
    script = "\n".join(f"{code}\n{rss}" for _, code in LIBRARY_STEPS)
    after = [float(x) for x in subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()]
    return {name: mb - (after[k - 1] if k else 0.0) for k, ((name, _), mb) in enumerate(zip(LIBRARY_STEPS, after))}


def body_chunks(body_path: Path) -> Iterator[bytes]:
    """The body read from its file as the collector reads a target's answer: in chunks of `CHUNK_BYTES`."""
    with body_path.open("rb") as fh:
        yield from iter(lambda: fh.read(CHUNK_BYTES), b"")


def bench_aifmon(body_path: Path, scrapes: int, work: Path) -> tuple[float, float, float, float, float, float, float]:
    """(samples/s, seconds, and the seconds of those spent reading, parsing and finding series ids, and committing; RSS
    MB before the first scrape and after it; seconds of the first scrape, which registers every series) of the embedded
    path, timed after the scrapes that register the series. Each scrape reads the body from the file (page cache), in
    chunks parsed as they come (`collector.resolve`, as a scrape of a target): like a fetch, a new body each time."""
    store = DuckDBStore(work / "bench.duckdb")
    index = SeriesIndex(store, {"instance": "bench"})
    before = rss_mb()
    started = time.perf_counter()
    ids, values, _ = resolve(body_chunks(body_path), "ms", index)
    store.append(ids, np.full(len(ids), 1_790_000_000_000 - 15_000), values)
    first_s = time.perf_counter() - started
    resolve(body_chunks(body_path), "ms", index)  # steady state is what we time
    after_first = rss_mb()
    n = 0
    phases = np.zeros(2)
    for k in range(scrapes):
        t0 = time.perf_counter()
        ids, values, _ = resolve(body_chunks(body_path), "ms", index)
        t1 = time.perf_counter()
        store.append(ids, np.full(len(ids), 1_790_000_000_000 + k * 15_000), values)
        phases += (t1 - t0, time.perf_counter() - t1)
        n += len(ids)
    store.close()
    elapsed = float(phases.sum())
    parse_s, commit_s = phases.tolist()
    return n / elapsed, elapsed, parse_s, commit_s, before, after_first, first_s


def small_body_parse_us(body: bytes, calls: int = 2000) -> tuple[int, float]:
    """(lines, µs per parse) of one 4-GPU node's share of the exposition: what a node exporter target sends."""
    node = body[body.index(b'node="'):].split(b'"')[1]
    small = b"".join(line + b"\n" for line in body.split(b"\n") if b'node="%s"' % node in line)
    parse_exposition(small)
    started = time.perf_counter()
    for _ in range(calls):
        parse_exposition(small)
    return small.count(b"\n"), (time.perf_counter() - started) / calls * 1e6


def whole_and_streamed_parse_ms(body: bytes, runs: int = 10) -> tuple[float, float]:
    """Median ms to parse `body` whole (in pieces on every core) and as the collector does, a stream of CHUNK_BYTES
    chunks on one thread with each chunk's columns dropped once parsed, alternating."""
    chunks = [body[k:k + CHUNK_BYTES] for k in range(0, len(body), CHUNK_BYTES)]
    whole, streamed = [], []
    for _ in range(runs):
        started = time.perf_counter()
        parse_exposition(body)
        whole.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _samples in parse_stream(chunks):
            pass
        streamed.append(time.perf_counter() - started)
    return float(np.median(whole)) * 1000, float(np.median(streamed)) * 1000


def stamp(body: bytes, t_ms: int) -> bytes:
    """The exposition's sample lines with timestamp `t_ms` appended (what VictoriaMetrics imports)."""
    lines = [line for line in body.split(b"\n") if line and not line.startswith(b"#")]
    return b"".join(line + b" %d\n" % t_ms for line in lines)


def post_file(url: str, path: Path) -> None:
    """POST the file's bytes with curl, which streams it from disk; raises if the server refuses it."""
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", "--data-binary", f"@{path}", url], check=True)


def bench_vm(body: bytes, scrapes: int, work: Path) -> tuple[float, float, float, float]:
    """(samples/s, seconds, peak RSS MB, curl's CPU seconds) of VictoriaMetrics importing `scrapes` stamped copies of
    the exposition, durable (force_flush), after a first import that registers the series."""
    from tests.conftest import free_port, wait_for_http

    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([installed("victoria-metrics", "victoria-metrics"), f"-storageDataPath={work / 'data'}",
                             f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=ERROR"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health")
        files = []
        for k in range(-1, scrapes):  # stamping is done before the clock starts: VictoriaMetrics is timed on the import alone
            files.append(work / f"scrape{k}.prom")
            files[-1].write_bytes(stamp(body, 1_790_000_000_000 + k * 15_000))
        samples = files[0].read_bytes().count(b"\n")
        post_file(url + "/api/v1/import/prometheus", files[0])  # the first import registers the series, as for aifmon
        urllib.request.urlopen(url + "/internal/force_flush", timeout=600).read()
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        for path in files[1:]:
            post_file(url + "/api/v1/import/prometheus", path)
        urllib.request.urlopen(url + "/internal/force_flush", timeout=600).read()
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        curl_cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
        return samples * scrapes / elapsed, elapsed, peak_rss_mb(proc.pid), curl_cpu_s
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_reads(work: Path, gpus_page: int = 25_000, gpus_latest: int = 100_000) -> tuple[float, float, float, int, int]:
    """(factory page range read s, the same read unsorted with labels once per series s, latest-value read s, rows of
    the range and latest reads): synthetic power series in DuckDB."""
    from aifmon.stores.store import series_key

    store = DuckDBStore(work / "reads.duckdb")
    keys = [series_key("aif_gpu_power_watts", {"factory": "big" if g < gpus_page else "other", "node": f"n{g // 4:05d}",
                                               "gpu": str(g % 4)}) for g in range(gpus_latest)]
    ids = store.series_ids(keys)
    t0 = 1_790_000_000_000
    for step in range(240):  # one hour at 15 s
        store.append(ids, np.full(len(ids), t0 + step * 15_000), np.full(len(ids), 400.0) + step)
    started = time.perf_counter()
    page = store.range("aif_gpu_power_watts", t0, t0 + 3_600_000, match={"factory": "big"})
    range_s = time.perf_counter() - started
    started = time.perf_counter()
    arrays = store.range_arrays("aif_gpu_power_watts", t0, t0 + 3_600_000, match={"factory": "big"})
    arrays_s = time.perf_counter() - started
    assert len(arrays.value) == len(page)
    started = time.perf_counter()
    latest = store.latest("aif_gpu_power_watts", at_ms=t0 + 3_600_000, lookback_s=60)
    latest_s = time.perf_counter() - started
    store.close()
    return range_s, arrays_s, latest_s, len(page), len(latest)


def child_ingest(body_path: Path, scrapes: int) -> None:
    """Run in a child process, so its peak memory is the ingest path's alone: prints rate, seconds, peak RSS and
    the seconds spent parsing, finding ids and committing."""
    with tempfile.TemporaryDirectory() as tmp:
        result = bench_aifmon(body_path, scrapes, Path(tmp))
    print(peak_rss_mb(), *result)


def one_core(body: bytes, samples: int, args: argparse.Namespace) -> None:
    """aifmon's ingest pinned to CPU 0 (parser threads and DuckDB's included): median seconds per scrape and memory."""
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body.prom"
        body_path.write_bytes(body)
        for _ in range(args.rounds):
            out = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--child-ingest", str(body_path), "--scrapes", str(args.scrapes)],
                                 capture_output=True, text=True, check=True).stdout.split()
            rounds.append([float(x) for x in out])
    rss, rate, seconds, parse_s, commit_s, before, after_first, first_s = np.median(np.array(rounds), axis=0).tolist()
    per_scrape = seconds / args.scrapes
    print(f"one core: {samples:,} samples per scrape in {per_scrape:.2f} s (read, parse and series ids {parse_s / args.scrapes:.2f} s, "
          f"DuckDB commit {commit_s / args.scrapes:.2f} s), {rate:,.0f} samples/s: "
          f"{per_scrape / 15:.0%} of a 15 s interval; the first scrape, which registers every series, {first_s:.2f} s; RSS {before:.0f} MB before the first scrape, {after_first:.0f} MB after "
          f"two, peak {rss:.0f} MB (medians of {args.rounds} rounds)")
    (RESULTS.parent / "ingest_one_core.json").write_text(json.dumps({
        "gpus": args.gpus, "gpus_per_node": args.gpus_per_node, "samples_per_scrape": samples, "scrapes": args.scrapes,
        "rounds": args.rounds, "seconds_per_scrape": per_scrape, "first_scrape_s": first_s, "samples_per_s": rate, "rss_before_mb": before,
        "rss_after_first_scrape_mb": after_first, "peak_rss_mb": rss}, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=25_000)
    ap.add_argument("--scrapes", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median of each side is reported")
    ap.add_argument("--gpus-per-node", type=int, default=4)
    ap.add_argument("--one-core", action="store_true", help="aifmon alone, pinned to one core (no VictoriaMetrics, no reads)")
    ap.add_argument("--no-reads", action="store_true", help="skip the read timings (and do not write the results file)")
    ap.add_argument("--child-ingest", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_ingest:
        child_ingest(args.child_ingest, args.scrapes)
        return
    from aifmon.exporters.sim import SimExporter
    from aifmon.exporters.simulation import FactorySimulation

    inv = factory_inventory(args.gpus, args.gpus_per_node)
    f = inv.factory("big")
    body = SimExporter(FactorySimulation(f, inv.projects_of("big"), epoch=time.time() - 4 * 3600, step_s=15.0)).body()
    samples = len(parse_exposition(body))
    print(f"exposition: {args.gpus:,} GPUs, {samples:,} samples, {len(body) / 1e6:.1f} MB per scrape; "
          f"{args.scrapes} scrapes per round, medians of {args.rounds} alternating rounds")
    if args.one_core:
        one_core(body, samples, args)
        return
    ours, vms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        body_path = work / "body.prom"
        body_path.write_bytes(body)
        for k in range(args.rounds):
            vms.append(bench_vm(body, args.scrapes, work / f"vm{k}"))
            shutil.rmtree(work / f"vm{k}")
            out = subprocess.run([sys.executable, __file__, "--child-ingest", str(body_path), "--scrapes", str(args.scrapes)],
                                 capture_output=True, text=True, check=True).stdout.split()
            ours.append([float(x) for x in out])
            print(f"round {k + 1}: aifmon {ours[-1][1]:,.0f} samples/s, peak RSS {ours[-1][0]:.0f} MB; "
                  f"VictoriaMetrics {vms[-1][0]:,.0f} samples/s, peak RSS {vms[-1][2]:.0f} MB", flush=True)
        reads = None if args.no_reads else bench_reads(work)
    ours_rss, ours_rate, ours_s, parse_s, commit_s, rss_before, rss_after_first, first_s = np.median(np.array(ours), axis=0).tolist()
    vm_rate, vm_s, vm_rss, curl_cpu_s = np.median(np.array(vms), axis=0).tolist()
    lines, small_us = small_body_parse_us(body)
    whole_ms, streamed_ms = whole_and_streamed_parse_ms(body)
    print(f"{'path (medians)':<44}{'samples/s':>12}{'time s':>9}{'peak RSS MB':>13}")
    print(f"{'aifmon parse + DuckDB commit (durable)':<44}{ours_rate:>12,.0f}{ours_s:>9.2f}{ours_rss:>13.0f}")
    print(f"{'VictoriaMetrics import + force_flush':<44}{vm_rate:>12,.0f}{vm_s:>9.2f}{vm_rss:>13.0f}")
    print(f"ratio aifmon / VictoriaMetrics: {ours_rate / vm_rate:.2f}x (rounds: "
          + ", ".join(f"{o[1] / v[0]:.2f}x" for o, v in zip(ours, vms)) + ")")
    print(f"curl's CPU time while VictoriaMetrics imported: {curl_cpu_s:.2f} s of {vm_s:.2f} s wall ({curl_cpu_s / vm_s:.0%})")
    libraries = library_memory_mb()
    print("aifmon's libraries, loaded in a fresh interpreter: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in libraries.items()))
    print(f"aifmon RSS: {rss_before:.0f} MB with libraries loaded, {rss_after_first:.0f} MB after the first "
          f"two scrapes (series registered; the first took {first_s:.2f} s), peak {ours_rss:.0f} MB; "
          f"({rss_after_first - rss_before:.0f} MB for {samples:,} series: {(rss_after_first - rss_before) * 2**20 / samples:.0f} bytes per series)")
    per_scrape = 1000 / args.scrapes
    print(f"aifmon per scrape (medians): read, parse and series ids {parse_s * per_scrape:.0f} ms, "
          f"DuckDB commit {commit_s * per_scrape:.0f} ms; one node's {lines}-line body parses in {small_us:.0f} µs")
    print(f"the whole body parses in {whole_ms:.0f} ms on {os.cpu_count()} cores, as a stream of {CHUNK_BYTES >> 20} MB chunks in "
          f"{streamed_ms:.0f} ms on one (medians of 10)")
    if reads is None:
        return
    range_s, arrays_s, latest_s, page_rows, latest_rows = reads
    print(f"factory page read, 25,000 GPUs x 1 h at 15 s ({page_rows:,} rows): {range_s:.2f} s sorted with labels on every row "
          f"(`range`), {arrays_s:.2f} s unsorted with labels once per series (`range_arrays`)")
    print(f"latest value per series, 100,000 GPUs ({latest_rows:,} rows): {latest_s:.3f} s")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "gpus": args.gpus, "samples_per_scrape": samples, "scrapes": args.scrapes, "rounds": args.rounds, "cpus": os.cpu_count(),
        "aifmon_duckdb_samples_per_s": ours_rate, "victoriametrics_import_samples_per_s": vm_rate,
        "aifmon_peak_rss_mb": ours_rss, "aifmon_first_scrape_s": first_s, "aifmon_rss_before_mb": rss_before, "aifmon_rss_after_first_scrape_mb": rss_after_first,
        "aifmon_library_rss_mb": libraries, "whole_parse_ms": whole_ms, "streamed_parse_ms": streamed_ms,
        "victoriametrics_peak_rss_mb": vm_rss, "curl_cpu_s": curl_cpu_s, "victoriametrics_s": vm_s, "factory_page_read_s": range_s, "factory_page_read_arrays_s": arrays_s, "latest_read_s": latest_s,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
