"""Node exporter benchmark: scrape latency, CPU per poll and RSS of `aifmon exporter node`, beside the same
metrics rendered on every scrape by prometheus-client (a custom Collector on a CollectorRegistry, the way
most Python exporters are written), for three nodes on fake libraries that behave like the real ones:
  h100    8 H100 (fake NVML), 2 sockets RAPL, 8 job files
  mi250x  an HPE Cray EX235a (LUMI-G): 4 MI250X = 8 GCDs (fake amdsmi), pm_counters, 8 job files
  gh200   4 GH200 superchips (fake NVML with module power), 4 job files

    .venv/bin/python bench/node_exporter.py [--node h100|mi250x|gh200|all] [--scrapes 2000] [--polls 2000] [--idle-seconds 20]

Targets (issues 3 and 16): a scrape under 0.2 ms, polling under 1 % of a core at 1 Hz, RSS under 60 MB.
Writes each node's figures, with the series per GPU and per node, to bench/results/node_exporter.json
(h100, which bench/capacity_plan.py reads), node_exporter_mi250x.json and node_exporter_gh200.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
RESULT_FILE = {"h100": "node_exporter.json", "mi250x": "node_exporter_mi250x.json", "gh200": "node_exporter_gh200.json"}
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, generate_latest, start_http_server  # noqa: E402
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from aifmon.exporters.amdsmi_source import AmdsmiSource  # noqa: E402
from aifmon.exporters.cray_pm import CrayPmSource  # noqa: E402
from aifmon.exporters.http import serve_exposition  # noqa: E402
from aifmon.exporters.node import NodeExporter  # noqa: E402
from aifmon.exporters.nvml_source import NvmlSource  # noqa: E402
from aifmon.exporters.rapl import RaplSource  # noqa: E402
from aifmon.exporters.slurm_jobs import JobMappings  # noqa: E402
from aifmon.telemetry.schema import BY_NAME  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fake_amdsmi import mi250x_node  # noqa: E402
from tests.fake_nvml import gh200_node, h100_node  # noqa: E402
from tests.node_fixtures import CrayPmCounters, Powercap  # noqa: E402

EX235A_W = {"node": 2150, "cpu": 180, "memory": 60, "accel0": 460, "accel1": 440, "accel2": 450, "accel3": 430}


class SameMetricsCollector:
    """prometheus-client's way: build every family from the exporter's state at each scrape."""

    def __init__(self, families: list) -> None:
        self.families = families  # (name, type, help, [(labels dict, value)]) parsed from our own output

    def collect(self):
        for name, mtype, help_text, series in self.families:
            base = name[: -len("_total")] if mtype == "counter" else name
            labels = list(series[0][0])
            fam = (CounterMetricFamily if mtype == "counter" else GaugeMetricFamily)(base, help_text, labels=labels)
            for lb, v in series:
                fam.add_metric([lb[k] for k in labels], v)
            yield fam


def build_node(tmp: Path, kind: str) -> tuple[NodeExporter, Callable[[], None], list]:
    clock = [0.0]
    (tmp / "jobs").mkdir()
    tree = pm = None
    if kind == "mi250x":
        amd = mi250x_node(4)
        uuids = [g.uuid for g in amd.gcds]
        pm = CrayPmCounters(tmp / "pm_counters", EX235A_W)
        exporter = NodeExporter("nid005000", amdsmi=AmdsmiSource(amd, clock=lambda: clock[0]),
                                cray=CrayPmSource(pm.root, clock=lambda: clock[0]), jobs=JobMappings(tmp / "jobs"))
        advance = amd.advance
    else:
        lib = gh200_node(4) if kind == "gh200" else h100_node(8)
        uuids = [g.uuid for g in lib.gpus]
        if kind == "h100":
            tree = Powercap(tmp / "powercap", sockets=2)
        exporter = NodeExporter("gn001", nvml=NvmlSource(lib=lib, clock=lambda: clock[0]), jobs=JobMappings(tmp / "jobs"),
                                rapl=RaplSource(tmp / "powercap", clock=lambda: clock[0]) if tree is not None else None)
        advance = lib.advance
    for u in uuids:
        (tmp / "jobs" / f"{u}_1234").write_text("job=1234\naccount=alpha-train\npartition=booster\nqos=ls\n")

    def tick() -> None:  # one second of the node's life, then the polls the loops would run
        clock[0] += 1.0
        advance(1)
        if tree is not None:
            for key in tree.zones:
                tree.draw(key, 150_000_000 if key[1] == "package" else 20_000_000)
        if pm is not None:
            pm.draw(1)
        exporter.poll_gpu()
        exporter.poll_host()

    tick()
    tick()
    families = []
    for f in text_string_to_metric_families(exporter.body().decode()):
        families.append((BY_NAME[f.name + ("_total" if f.type == "counter" else "")].name, f.type, f.documentation,
                         [(s.labels, s.value) for s in f.samples]))
    return exporter, tick, families


def percentiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[int(len(xs) * 0.99) - 1]


def http_latencies(port: int, n: int, keep_alive: bool) -> list[float]:
    out = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(n):
        if not keep_alive:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        t = time.perf_counter()
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        r.read()
        out.append(time.perf_counter() - t)
        if not keep_alive:
            conn.close()
    conn.close()
    return out


def subprocess_figures(tmp: Path, idle_s: float, kind: str) -> tuple[float, float]:
    """RSS (MB) and CPU (% of a core) of a real `aifmon exporter node` on the fake node at 1 Hz."""
    port = free_port()
    gpu = {"mi250x": ["--gpu", "amdsmi", "--amdsmi-module", "tests.fake_amdsmi", "--cray-pm-root", str(tmp / "pm_counters")],
           "gh200": ["--nvml-module", "tests.fake_nvml"], "h100": ["--nvml-module", "tests.fake_nvml"]}[kind]
    env = {"mi250x": {"AIFMON_FAKE_AMDSMI_GCDS": "8"}, "gh200": {"AIFMON_FAKE_NVML_GPUS": "4", "AIFMON_FAKE_NVML_MODEL": "gh200"},
           "h100": {"AIFMON_FAKE_NVML_GPUS": "8"}}[kind]
    proc = subprocess.Popen([sys.executable, "-m", "aifmon", "--quiet", "exporter", "node", "--listen", f"127.0.0.1:{port}",
                             *gpu, "--powercap-root", str(tmp / "powercap"), "--hwmon-root", str(tmp / "hwmon"),
                             "--job-dir", str(tmp / "jobs")],
                            cwd=ROOT, env={**os.environ, **env})
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(2)  # past start-up

        def cpu_s() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        c0, t0 = cpu_s(), time.time()
        time.sleep(idle_s)
        cpu_pct = (cpu_s() - c0) / (time.time() - t0) * 100
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
        return rss_kb / 1024, cpu_pct
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def measure(kind: str, scrapes: int, polls: int, idle_s: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        exporter, tick, families = build_node(tmp, kind)
        n_samples = sum(len(f[3]) for f in families)
        gpu_samples = sum(1 for f in families for labels, _ in f[3] if "gpu" in labels)  # per-GPU series (job info included)
        gpus = len({labels["gpu"] for f in families for labels, _ in f[3] if "gpu" in labels})
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SameMetricsCollector(families))

        # CPU per poll: one simulated second per iteration (slow fields every 10th, as at 1 Hz)
        c0 = time.process_time()
        for _ in range(polls):
            tick()
        poll_cpu_s = (time.process_time() - c0) / polls

        def render_times(fn) -> list[float]:
            out = []
            for _ in range(scrapes):
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
            return out

        ours_render = render_times(exporter.body)
        client_render = render_times(lambda: generate_latest(registry))
        port = free_port()
        server = serve_exposition(f"127.0.0.1:{port}", exporter.body, "bench")
        ours_http_ka = http_latencies(port, scrapes, keep_alive=True)
        ours_http = http_latencies(port, scrapes, keep_alive=False)
        server.shutdown()
        pc_port = free_port()
        pc_server, _ = start_http_server(pc_port, addr="127.0.0.1", registry=registry)
        client_http = http_latencies(pc_port, scrapes, keep_alive=False)
        pc_server.shutdown()
        rss_mb, idle_cpu_pct = subprocess_figures(tmp, idle_s, kind)

    def ms(xs: list[float]) -> str:
        med, p99 = percentiles(xs)
        return f"{med * 1e3:.3f} / {p99 * 1e3:.3f}"

    def us(xs: list[float]) -> str:
        med, p99 = percentiles(xs)
        return f"{med * 1e6:.2f} / {p99 * 1e6:.2f}"

    rows = [
        ("server work per scrape, µs (median / p99)", us(ours_render) + "  (cached bytes)", us(client_render) + "  (generate_latest)"),
        ("HTTP scrape, new connection, ms (median / p99)", ms(ours_http), ms(client_http)),
        ("HTTP scrape, keep-alive, ms (median / p99)", ms(ours_http_ka), "n/a (closes each connection)"),
        (f"CPU per 1 Hz poll ({DESCRIBE[kind]}), ms", f"{poll_cpu_s * 1e3:.3f}  = {poll_cpu_s * 100:.3f} % of a core", "-"),
        (f"`aifmon exporter node` process, {idle_s:g} s at 1 Hz", f"{idle_cpu_pct:.2f} % of a core, RSS {rss_mb:.1f} MB", "-"),
    ]
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / RESULT_FILE[kind]).write_text(json.dumps({
        "node": kind, "gpus_per_node": gpus, "samples_per_scrape": n_samples, "gpu_samples": gpu_samples,
        "node_samples": n_samples - gpu_samples, "scrape_keepalive_ms_median": percentiles(ours_http_ka)[0] * 1e3,
        "scrape_new_connection_ms_median": percentiles(ours_http)[0] * 1e3,
        "client_scrape_new_connection_ms_median": percentiles(client_http)[0] * 1e3,
        "render_us_median": percentiles(ours_render)[0] * 1e6, "client_render_us_median": percentiles(client_render)[0] * 1e6,
        "poll_cpu_ms": poll_cpu_s * 1e3, "process_cpu_pct_of_core": idle_cpu_pct, "process_rss_mb": rss_mb, "cpus": os.cpu_count(),
    }, indent=2) + "\n")
    print(f"node exporter benchmark, {kind}: {DESCRIBE[kind]}; {n_samples} samples per scrape; "
          f"{scrapes} scrapes, {polls} polls; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    widths = [max(len(r[i]) for r in rows + [("measure", "aifmon", "prometheus-client")]) for i in range(3)]
    for r in [("measure", "aifmon", "prometheus-client")] + [tuple("-" * w for w in widths)] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print()


DESCRIBE = {"h100": "8 H100 (fake NVML), 2 sockets RAPL, 8 job files",
            "mi250x": "8 MI250X GCDs (fake amdsmi), Cray pm_counters, 8 job files",
            "gh200": "4 GH200 (fake NVML, module power), 4 job files"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--node", choices=(*RESULT_FILE, "all"), default="all")
    ap.add_argument("--scrapes", type=int, default=2000)
    ap.add_argument("--polls", type=int, default=2000)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    args = ap.parse_args()
    for kind in RESULT_FILE if args.node == "all" else (args.node,):
        measure(kind, args.scrapes, args.polls, args.idle_seconds)


if __name__ == "__main__":
    main()
