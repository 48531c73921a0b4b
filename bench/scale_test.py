"""Scale test of the site path: simulators → a real Prometheus (scraping, remote-writing) → VictoriaMetrics → aifmon.

For each scrape interval (1 s, 15 s) the GPU count is doubled until a step fails. A step starts
VictoriaMetrics, `SIMS` `aifmon exporter sim` processes sharing the GPUs (one factory each, re-rendering
every interval), and Prometheus with the configuration `aifmon deploy prometheus-config` writes
(remote write to VictoriaMetrics); after a warm-up of two intervals it watches a window, then reads
back through aifmon's store interface from VictoriaMetrics (victoriametrics+http://): the energy
rollup over the window and the dashboard's factory status.

A step *holds* when, over the window: every target was scraped at every interval (Prometheus' own
`up` samples: count = window / interval per target, ±1 for the window's edges) and every scrape
succeeded; no scrape took longer than its interval; Prometheus' remote write dropped or failed no
sample and had less than one scrape's samples in flight at the end; and VictoriaMetrics holds as many `aif_gpu_power_watts` samples for
the window as Prometheus does.

Resource use per part over the window: CPU (cores, from /proc utime + stime) and peak RSS (VmHWM).
Figures go to bench/results/scale_test.json (read by bench/capacity_plan.py) and standard output.

Run by hand (not in CI; about 10 minutes on 2 cores):
    .venv/bin/python bench/scale_test.py --intervals 1 --start-gpus 4000 --window 30
    .venv/bin/python bench/scale_test.py --intervals 15 --start-gpus 16000 --window 45
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifmon.dashboard.panels import factory_status
from aifmon.deploy.prometheus_config import write_prometheus_config
from aifmon.rollups.ledger import energy_rollup
from aifmon.stores.store import SampleReader, open_store
from aifmon.telemetry.inventory import parse_inventory
from bench.ingest import installed
from tests.conftest import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "scale_test.json"
SIMS = 4  # simulator processes per step: Prometheus scrapes 4 targets in parallel, as it would many nodes
GPUS_PER_NODE = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")


def inventory_text(gpus: int, ports: list[int]) -> str:
    """`len(ports)` factories sharing `gpus` GPUs (4 per node), each scraped on its port: inventory YAML."""
    nodes = max(1, gpus // GPUS_PER_NODE // len(ports))
    factories = "".join(f"""
  - id: f{i}
    name: Factory {i}
    country: DE
    latitude: 50.9
    longitude: 6.4
    power_cap_mw: {nodes * GPUS_PER_NODE * 0.002:.3f}
    design_pue: 1.1
    energy_price_eur_per_kwh: 0.15
    targets: ["127.0.0.1:{port}"]
    systems:
      - id: f{i}-gpu
        name: Booster {i}
        node_groups:
          - {{prefix: n{i}x, count: {nodes}, gpus_per_node: {GPUS_PER_NODE}, gpu_model: H100-SXM5-80GB}}""" for i, port in enumerate(ports))
    projects = "".join(f"""
  - {{id: p{i}, name: P{i}, access_mode: Large Scale, sector: Technology & Digital, factory: f{i}}}""" for i in range(len(ports)))
    return f"name: scale test\nfactories:{factories}\nprojects:{projects}\n"


def cpu_s(pid: int) -> float:
    """CPU time (user + system) of a process, s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def query(base: str, promql: str, at: float) -> float:
    """The first value of an instant query (NaN when empty)."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
    result = json.load(urllib.request.urlopen(url, timeout=120))["data"]["result"]
    return float(result[0]["value"][1]) if result else float("nan")


def own_metric(base: str, name: str) -> float:
    """Sum of one of a server's own metrics from its /metrics page (Prometheus here does not scrape itself)."""
    body = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.split("{")[0].split(" ")[0] == name]
    return sum(values) if values else float("nan")


def run_step(gpus: int, interval_s: float, window_s: float, work: Path) -> dict:
    """One step: start everything, watch the window, read back, stop; returns its figures."""
    ports = [free_port() for _ in range(SIMS)]
    inv_file = work / "inventory.yaml"
    inv_file.write_text(inventory_text(gpus, ports))
    inv = parse_inventory(inv_file.read_text(), str(inv_file))
    vm_port, prom_port = free_port(), free_port()
    procs: dict[str, list[subprocess.Popen]] = {"simulators": [], "prometheus": [], "victoria-metrics": []}
    logs = open(work / "servers.log", "a")
    try:
        procs["victoria-metrics"].append(subprocess.Popen(
            [installed("victoria-metrics", "victoria-metrics"), f"-storageDataPath={work / 'vm'}", f"-httpListenAddr=127.0.0.1:{vm_port}",
             "-search.latencyOffset=0s", "-loggerLevel=ERROR"], stdout=logs, stderr=subprocess.STDOUT))
        vm = f"http://127.0.0.1:{vm_port}"
        wait_http(vm + "/health")
        epoch = time.time()
        for f in inv.live_factories():
            procs["simulators"].append(subprocess.Popen(
                [sys.executable, "-m", "aifmon", "--quiet", "exporter", "sim", "--inventory", str(inv_file), "--factory", f.id,
                 "--epoch", str(epoch), "--step", str(interval_s), "--poll", str(interval_s)],
                cwd=Path(__file__).resolve().parent.parent, stdout=logs, stderr=subprocess.STDOUT))
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/metrics")
        config, _ = write_prometheus_config(inv, work / "prom", interval_s, remote_write_url=vm + "/api/v1/write")
        procs["prometheus"].append(subprocess.Popen(
            [installed("prometheus", "prometheus"), f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=error"], stdout=logs, stderr=subprocess.STDOUT))
        prom = f"http://127.0.0.1:{prom_port}"
        wait_http(prom + "/-/ready")
        time.sleep(2 * interval_s + 3)  # warm-up: first scrapes, series created, remote-write shards started
        cpu0 = {name: sum(cpu_s(p.pid) for p in ps) for name, ps in procs.items()}
        t0 = time.time()
        time.sleep(window_s)
        t1 = time.time()
        cpu = {name: (sum(cpu_s(p.pid) for p in ps) - cpu0[name]) / (t1 - t0) for name, ps in procs.items()}
        rss = {name: sum(peak_rss_mb(p.pid) for p in ps) for name, ps in procs.items()}
        time.sleep(interval_s + 5)  # let the window's last samples reach VictoriaMetrics
        w = f"{int(t1 - t0)}s"
        expected = int(t1 - t0) / interval_s
        scrapes = {t: query(prom, f'count_over_time(up{{instance="{t}"}}[{w}])', t1) for f in inv.live_factories() for t in f.targets}
        samples_per_scrape = query(prom, "sum(scrape_samples_scraped)", t1)
        failed_scrapes = query(prom, f"sum(count_over_time(up[{w}])) - sum(sum_over_time(up[{w}]))", t1)
        max_scrape_duration_s = query(prom, f"max(max_over_time(scrape_duration_seconds[{w}]))", t1)
        remote_write_failed = own_metric(prom, "prometheus_remote_storage_samples_failed_total")
        remote_write_dropped = own_metric(prom, "prometheus_remote_storage_samples_dropped_total")
        remote_write_pending = own_metric(prom, "prometheus_remote_storage_samples_pending")
        figures: dict[str, object] = {
            "gpus": inv.factories[0].gpu_count * SIMS, "interval_s": interval_s, "window_s": round(t1 - t0, 1),
            "samples_per_scrape": samples_per_scrape,
            "scrapes_expected_per_target": expected, "scrapes_min_per_target": min(scrapes.values()),
            "failed_scrapes": failed_scrapes, "max_scrape_duration_s": max_scrape_duration_s,
            "remote_write_failed": remote_write_failed, "remote_write_dropped": remote_write_dropped,
            "remote_write_pending": remote_write_pending,
            "cpu_cores": {k: round(v, 3) for k, v in cpu.items()}, "peak_rss_mb": {k: round(v) for k, v in rss.items()},
        }
        urllib.request.urlopen(vm + "/internal/force_flush", timeout=120).read()
        in_prom = query(prom, f"sum(count_over_time(aif_gpu_power_watts[{w}]))", t1)
        in_vm = query(vm, f"sum(count_over_time(aif_gpu_power_watts[{w}]))", t1)
        figures.update(power_samples_prometheus=in_prom, power_samples_victoriametrics=in_vm)
        figures["samples_per_s"] = samples_per_scrape / interval_s
        store = open_store(f"victoriametrics+http://127.0.0.1:{vm_port}", read_only=True, needs=SampleReader)
        started = time.perf_counter()
        rollup = energy_rollup(store, inv, int(t0 * 1000), int(t1 * 1000), by="factory")
        figures["rollup_from_vm_s"] = round(time.perf_counter() - started, 2)
        figures["rollup_factories"] = len(rollup.rows)
        figures["rollup_coverage"] = round(rollup.coverage, 3)
        started = time.perf_counter()
        status = factory_status(store, inv, lookback_s=max(60.0, 3 * interval_s))
        figures["factory_status_from_vm_s"] = round(time.perf_counter() - started, 2)
        it_power_w = round(float(status["it_power_watts"].sum()))
        figures["factory_status_it_power_w"] = it_power_w
        figures["vm_storage_bytes"] = sum(p.stat().st_size for p in (work / "vm").rglob("*") if p.is_file())
        figures["held"] = bool(
            min(scrapes.values()) >= expected - 1 and failed_scrapes <= 0.5
            and max_scrape_duration_s < interval_s and remote_write_failed == 0
            and remote_write_dropped == 0 and remote_write_pending < samples_per_scrape and in_prom > 0 and in_vm == in_prom
            and it_power_w > 0 and len(rollup.rows) > 0)
        return figures
    finally:
        for ps in procs.values():
            for p in ps:
                p.terminate()
        for ps in procs.values():
            for p in ps:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        logs.close()


def main() -> None:
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so each step's servers are stopped, not orphaned
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intervals", default="1,15", help="scrape intervals to test, s, comma-separated")
    ap.add_argument("--start-gpus", type=int, default=2000)
    ap.add_argument("--max-gpus", type=int, default=128_000)
    ap.add_argument("--window", type=float, default=45.0, help="watched window per step, s (at least 3 intervals)")
    args = ap.parse_args()
    intervals = [float(x) for x in args.intervals.split(",")]
    # runs for other intervals are kept, so each interval can be run on its own with its own --start-gpus
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"steps": [], "largest_held": {}}
    results["steps"] = [s for s in results["steps"] if s["interval_s"] not in intervals]
    results["largest_held"] = {k: v for k, v in results["largest_held"].items() if v["interval_s"] not in intervals}
    results.update(machine={"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
                   simulators_per_step=SIMS)
    for interval in intervals:
        gpus = args.start_gpus
        while gpus <= args.max_gpus:
            with tempfile.TemporaryDirectory(prefix="aifmon-scale-") as tmp:
                figures = run_step(gpus, interval, max(args.window, 3 * interval), Path(tmp))
            results["steps"].append(figures)
            print(json.dumps(figures), flush=True)
            if figures["held"]:
                results["largest_held"][f"{interval:g}s"] = figures
            RESULTS.parent.mkdir(exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")  # after every step: a long run stopped early keeps its figures
            if not figures["held"]:
                break
            gpus *= 2
    for key, f in results["largest_held"].items():
        print(f"interval {key}: held at {f['gpus']:,} GPUs ({f['samples_per_s']:,.0f} samples/s); CPU cores {f['cpu_cores']}, "
              f"peak RSS MB {f['peak_rss_mb']}; rollup from VictoriaMetrics {f['rollup_from_vm_s']} s, "
              f"factory status {f['factory_status_from_vm_s']} s")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
