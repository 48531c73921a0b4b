"""Capacity plan: series, samples/s, storage per day, CPU and memory for one AI Factory and one gigafactory,
at 1 s and 15 s, per backend, computed from the figures the benchmarks measured (bench/results/*.json).

Inputs, all measured except the two scenarios' shapes:
- node_exporter.json (bench/node_exporter.py): series per GPU and per node of `aifmon exporter node`;
- storage.json (bench/storage.py): bytes on disk per sample for DuckDB, Prometheus blocks, VictoriaMetrics;
- scale_test.json (bench/scale_test.py): CPU and peak memory of Prometheus (scrape + remote write) and
  VictoriaMetrics per sample/s and per active series, at the largest step that held each interval;
- ingest.json (bench/ingest.py): aifmon's embedded ingest rate (one process, parse + DuckDB commit).
Scenarios: the gigafactory is the demo inventory's planning scenario (`gigafactory-scenario`: its GPU and
node counts); the AI Factory is 25,000 GPUs in 4-GPU nodes (GH200/H100 boards, as in EuroHPC's AI Factories).

    .venv/bin/python bench/capacity_plan.py   # docs/capacity-plan.md's plan, then docs/benchmarks.md's scale-test table (Markdown)

tests/test_docs.py checks that both pages hold what this computes from the committed results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifmon.telemetry.inventory import load_inventory

RESULTS = Path(__file__).resolve().parent / "results"
AI_FACTORY_GPUS, AI_FACTORY_GPUS_PER_NODE = 25_000, 4
INTERVALS_S = (1.0, 15.0)
DAY_S = 86_400


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run bench/{name}.py first")
    return json.loads(path.read_text())


def scenarios() -> list[tuple[str, int, int]]:
    """(name, GPUs, nodes) of the two sites planned for."""
    giga = next(f for f in load_inventory().factories if f.planning_only and f.kind == "gigafactory")
    return [(f"AI Factory ({AI_FACTORY_GPUS:,} GPUs, {AI_FACTORY_GPUS_PER_NODE} per node)", AI_FACTORY_GPUS,
             AI_FACTORY_GPUS // AI_FACTORY_GPUS_PER_NODE),
            (f"gigafactory ({giga.gpu_count:,} GPUs, {giga.gpu_count // giga.node_count} per node)", giga.gpu_count, giga.node_count)]


def plan() -> dict:
    """Every figure of the plan, with the measured inputs it came from."""
    node = load("node_exporter")
    storage = {run["interval_s"]: run["bytes_per_sample"] for run in load("storage")["runs"]}
    scale = load("scale_test")
    ingest = load("ingest")
    per_gpu = node["gpu_samples"] / node["gpus_per_node"]
    per_node = node["node_samples"]
    held = scale["largest_held"]
    rows = []
    for name, gpus, nodes in scenarios():
        series = gpus * per_gpu + nodes * per_node
        for interval in INTERVALS_S:
            rate = series / interval
            row = {"scenario": name, "interval_s": interval, "series": series, "samples_per_s": rate, "backends": {}}
            for backend in ("duckdb", "prometheus", "victoriametrics"):
                b: dict = {"gb_per_day": rate * DAY_S * storage[interval][backend] / 1e9}
                if backend == "duckdb":
                    b["ingest_processes"] = rate / ingest["aifmon_duckdb_samples_per_s"]
                else:
                    part = "prometheus" if backend == "prometheus" else "victoria-metrics"
                    ref = held.get(f"{interval:g}s") or next(iter(held.values()))
                    b["cpu_cores"] = rate * ref["cpu_cores"][part] / ref["samples_per_s"]
                    b["memory_gb"] = series * ref["peak_rss_mb"][part] / ref["samples_per_scrape"] / 1024
                row["backends"][backend] = b
            rows.append(row)
    return {"series_per_gpu": per_gpu, "series_per_node": per_node, "rows": rows, "held": held,
            "machine_cpus": scale["machine"]["cpus"], "storage": storage, "ingest": ingest}


def markdown(p: dict) -> str:
    """docs/capacity-plan.md's plan: series per GPU and node, the table, and the measured inputs it came from."""
    out = [f"Series: {p['series_per_gpu']:.2f} per GPU and {p['series_per_node']:.0f} per node (measured on "
           "`aifmon exporter node`; Prometheus adds 5 per target: `up`, `scrape_*`).", "",
           "| site | interval | series | samples/s | DuckDB GB/day | Prometheus GB/day | VictoriaMetrics GB/day | "
           "Prometheus cores / RAM GB | VictoriaMetrics cores / RAM GB | aifmon embedded: share of one process's ingest rate |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in p["rows"]:
        b = r["backends"]
        out.append(f"| {r['scenario']} | {r['interval_s']:g} s | {r['series']:,.0f} | {r['samples_per_s']:,.0f} | "
                   f"{b['duckdb']['gb_per_day']:,.0f} | {b['prometheus']['gb_per_day']:,.0f} | {b['victoriametrics']['gb_per_day']:,.0f} | "
                   f"{b['prometheus']['cpu_cores']:.1f} / {b['prometheus']['memory_gb']:.1f} | "
                   f"{b['victoriametrics']['cpu_cores']:.1f} / {b['victoriametrics']['memory_gb']:.1f} | "
                   f"{b['duckdb']['ingest_processes']:.2f} |")
    out.append("")
    out.append("Measured inputs: bytes per sample on disk " + "; ".join(
        f"at {i:g} s: " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()) for i, s in sorted(p["storage"].items()))
        + f"; aifmon embedded ingest {p['ingest']['aifmon_duckdb_samples_per_s']:,.0f} samples/s per process; "
        + "; ".join(f"scale test at {k}: held {h['gpus']:,} GPUs ({h['samples_per_s']:,.0f} samples/s) on "
                    f"{p['machine_cpus']} cores, Prometheus {h['cpu_cores']['prometheus']:.2f} cores / {h['peak_rss_mb']['prometheus']} MB, "
                    f"VictoriaMetrics {h['cpu_cores']['victoria-metrics']:.2f} cores / {h['peak_rss_mb']['victoria-metrics']} MB"
                    for k, h in sorted(p["held"].items())) + ".")
    return "\n".join(out) + "\n"


def scale_markdown(scale: dict) -> str:
    """docs/benchmarks.md's scale-test table: every step bench/scale_test.py ran."""
    out = ["| interval | GPUs | samples/s | held | slowest scrape s | CPU cores: simulators / Prometheus / VictoriaMetrics | "
           "peak RSS MB: simulators / Prometheus / VictoriaMetrics | rollup from VictoriaMetrics s | factory status s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(scale["steps"], key=lambda s: (s["interval_s"], s["gpus"])):
        c, m = s["cpu_cores"], s["peak_rss_mb"]
        out.append(f"| {s['interval_s']:g} s | {s['gpus']:,} | {s['samples_per_s']:,.0f} | {'yes' if s['held'] else '**no**'} | "
                   f"{s['max_scrape_duration_s']:.2f} | {c['simulators']:.2f} / {c['prometheus']:.2f} / {c['victoria-metrics']:.2f} | "
                   f"{m['simulators']:,} / {m['prometheus']:,} / {m['victoria-metrics']:,} | {s['rollup_from_vm_s']:.1f} | "
                   f"{s['factory_status_from_vm_s']:.1f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(plan()) + "\n" + scale_markdown(load("scale_test")))
