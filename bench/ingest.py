"""Ingest benchmark: exposition text → durable store, aifmon's embedded path against VictoriaMetrics.

Same data, same run: a simulated factory's exposition (default 25,000 GPUs) is ingested K times with
new timestamps, by
  - aifmon: compiled parse (Numba) → series ids (byte comparison with the last scrape, Arrow hash lookup for the
    rest) → one DuckDB transaction per scrape;
  - VictoriaMetrics (Debian package, started here on a free loopback port): POST to
    /api/v1/import/prometheus, then /internal/force_flush so the samples are durable and queryable.
Also times the reads the live panels need: 1 h of per-GPU power for the factory page (25,000 GPUs ×
1 h at 15 s), and the latest value per series for 100,000 GPUs.

Run by hand (not in the test suite):  .venv/bin/python bench/ingest.py [--gpus 25000] [--scrapes 5]
Writes its figures to bench/results/ingest.json (bench/capacity_plan.py reads them).
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifmon.exporters.sim import SimExporter
from aifmon.exporters.simulation import FactorySimulation
from aifmon.ingest.parser import parse_exposition
from aifmon.ingest.series_index import SeriesIndex
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key
from aifmon.telemetry.inventory import parse_inventory
from tests.conftest import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"

def factory_inventory(gpus: int):
    nodes = gpus // 4
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
          - {{prefix: bign, count: {nodes}, gpus_per_node: 4, gpu_model: H100-SXM5-80GB}}
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


def peak_rss_mb(pid: int | None = None) -> float:
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_aifmon(body: bytes, scrapes: int, work: Path) -> tuple[float, float, float, float, float]:
    """(samples/s, seconds, and the seconds of those spent parsing, finding series ids and committing) of the
    embedded path, after the scrapes that register the series and compile the parser."""
    store = DuckDBStore(work / "bench.duckdb")
    index = SeriesIndex(store, {"instance": "bench"})
    for _ in range(2):  # the first scrape registers the series, the second compiles the series comparison
        index.ids(parse_exposition(body))  # (Numba compiles on first use): steady state is what we time
    n = 0
    phases = np.zeros(3)
    for k in range(scrapes):
        t0 = time.perf_counter()
        s = parse_exposition(body)
        t1 = time.perf_counter()
        ids = index.ids(s)
        t2 = time.perf_counter()
        store.append(ids, np.full(len(ids), 1_790_000_000_000 + k * 15_000), s.values)
        phases += (t1 - t0, t2 - t1, time.perf_counter() - t2)
        n += len(ids)
    store.close()
    elapsed = float(phases.sum())
    parse_s, ids_s, commit_s = phases.tolist()
    return n / elapsed, elapsed, parse_s, ids_s, commit_s


def small_body_parse_us(body: bytes, calls: int = 2000) -> tuple[int, float]:
    """(lines, µs per parse) of one 4-GPU node's share of the exposition: what a node exporter target sends."""
    node = body[body.index(b'node="'):].split(b'"')[1]
    small = b"".join(line + b"\n" for line in body.split(b"\n") if b'node="%s"' % node in line)
    parse_exposition(small)
    started = time.perf_counter()
    for _ in range(calls):
        parse_exposition(small)
    return small.count(b"\n"), (time.perf_counter() - started) / calls * 1e6


def bench_vm(body: bytes, scrapes: int, work: Path) -> tuple[float, float, float]:
    port = free_port()
    proc = subprocess.Popen([installed("victoria-metrics", "victoria-metrics"), f"-storageDataPath={work}", f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=ERROR"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        lines = [line for line in body.split(b"\n") if line and not line.startswith(b"#")]

        def post(k: int) -> None:
            stamped = b"".join(line + b" %d\n" % (1_790_000_000_000 + k * 15_000) for line in lines)
            request = urllib.request.Request(url + "/api/v1/import/prometheus", data=stamped, method="POST")
            urllib.request.urlopen(request, timeout=600).read()

        post(-1)  # the first import registers the series, as for aifmon
        urllib.request.urlopen(url + "/internal/force_flush", timeout=600).read()
        # stamping is done before the clock starts: VictoriaMetrics is timed on the import alone
        bodies = [b"".join(line + b" %d\n" % (1_790_000_000_000 + k * 15_000) for line in lines) for k in range(scrapes)]
        started = time.perf_counter()
        for stamped in bodies:
            request = urllib.request.Request(url + "/api/v1/import/prometheus", data=stamped, method="POST")
            urllib.request.urlopen(request, timeout=600).read()
        urllib.request.urlopen(url + "/internal/force_flush", timeout=600).read()
        elapsed = time.perf_counter() - started
        return len(lines) * scrapes / elapsed, elapsed, peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_reads(work: Path, gpus_page: int = 25_000, gpus_latest: int = 100_000) -> tuple[float, float, float, int, int]:
    """(factory page range read s, the same read unsorted with labels once per series s, latest-value read s, rows of
    the range and latest reads): synthetic power series in DuckDB."""
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
        rate, seconds, parse_s, ids_s, commit_s = bench_aifmon(body_path.read_bytes(), scrapes, Path(tmp))
    print(rate, seconds, peak_rss_mb(), parse_s, ids_s, commit_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=25_000)
    ap.add_argument("--scrapes", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each side is reported")
    ap.add_argument("--child-ingest", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_ingest:
        child_ingest(args.child_ingest, args.scrapes)
        return
    inv = factory_inventory(args.gpus)
    f = inv.factory("big")
    body = SimExporter(FactorySimulation(f, inv.projects_of("big"), epoch=time.time() - 4 * 3600, step_s=15.0)).body()
    samples = len(parse_exposition(body))
    print(f"exposition: {args.gpus:,} GPUs, {samples:,} samples, {len(body) / 1e6:.1f} MB per scrape; "
          f"{args.scrapes} scrapes per round, best of {args.rounds} alternating rounds")
    ours, vms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        body_path = work / "body.prom"
        body_path.write_bytes(body)
        for k in range(args.rounds):
            vms.append(bench_vm(body, args.scrapes, work / f"vm{k}"))
            out = subprocess.run([sys.executable, __file__, "--child-ingest", str(body_path), "--scrapes", str(args.scrapes)],
                                 capture_output=True, text=True, check=True).stdout.split()
            ours.append(tuple(float(x) for x in out))
        range_s, arrays_s, latest_s, page_rows, latest_rows = bench_reads(work)
    ours_rate, ours_s, ours_rss, parse_s, ids_s, commit_s = max(ours)
    lines, small_us = small_body_parse_us(body)
    vm_rate, vm_s, vm_rss = max(vms)
    print(f"{'path':<44}{'samples/s':>12}{'time s':>9}{'peak RSS MB':>13}")
    print(f"{'aifmon parse + DuckDB commit (durable)':<44}{ours_rate:>12,.0f}{ours_s:>9.2f}{ours_rss:>13.0f}")
    print(f"{'VictoriaMetrics import + force_flush':<44}{vm_rate:>12,.0f}{vm_s:>9.2f}{vm_rss:>13.0f}")
    print(f"ratio aifmon / VictoriaMetrics: {ours_rate / vm_rate:.2f}x (rounds: "
          + ", ".join(f"{o[0] / v[0]:.2f}x" for o, v in zip(ours, vms)) + ")")
    per_scrape = 1000 / args.scrapes
    print(f"aifmon per scrape (best round): parse {parse_s * per_scrape:.0f} ms, series ids {ids_s * per_scrape:.0f} ms, "
          f"DuckDB commit {commit_s * per_scrape:.0f} ms; one node's {lines}-line body parses in {small_us:.0f} µs")
    print(f"factory page read, 25,000 GPUs x 1 h at 15 s ({page_rows:,} rows): {range_s:.2f} s sorted with labels on every row "
          f"(`range`), {arrays_s:.2f} s unsorted with labels once per series (`range_arrays`)")
    print(f"latest value per series, 100,000 GPUs ({latest_rows:,} rows): {latest_s:.3f} s")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "gpus": args.gpus, "samples_per_scrape": samples, "scrapes": args.scrapes, "rounds": args.rounds, "cpus": os.cpu_count(),
        "aifmon_duckdb_samples_per_s": ours_rate, "victoriametrics_import_samples_per_s": vm_rate,
        "victoriametrics_peak_rss_mb": vm_rss, "factory_page_read_s": range_s, "factory_page_read_arrays_s": arrays_s, "latest_read_s": latest_s,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
