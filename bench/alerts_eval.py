"""One alert evaluation cycle over 100,000 GPUs' series and every inventory rule, on the embedded DuckDB store.

The site is the demo inventory's gigafactory scenario made live: 4 halls x 3,125 nodes x 8 B200 =
12,500 nodes and 100,000 GPUs, 120 MW cap, plus 50 projects with monthly energy allocations. The store
holds the last minute of a scrape every 5 s of what the evaluator reads: GPU power (100,000 series),
GPU throttle reasons (5 x 100,000), GPU power limits (100,000), node power (12,500), the facility meter;
1 % of the GPUs are held at their power limit, the site runs at 96 % of its cap, and the hourly energy
rollups hold 20 days of 50 projects. A cycle is everything `AlertEvaluator.evaluate` does: read the
store, measure every rule, step every alert, save the state, (notify: no notifiers here).

Run: .venv/bin/python bench/alerts_eval.py [--cycles 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifmon.alerts.evaluator import AlertEvaluator
from aifmon.alerts.rules import build_rules
from aifmon.rollups.hourly import TABLE as HOURLY
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key
from aifmon.telemetry.inventory import Inventory, Project, load_inventory, nodes_of
from aifmon.telemetry.schema import THROTTLE_REASONS

SCRAPE_S, SCRAPES = 5, 12


def gigafactory() -> Inventory:
    demo = load_inventory()
    giga = next(f for f in demo.factories if f.kind == "gigafactory").model_copy(update={"planning_only": False})
    projects = tuple(Project(id=f"gf-p{i}", name=f"Gigafactory project {i}", access_mode="Large Scale",
                             sector="Technology & Digital", factory=giga.id, allocation_mwh=2000.0) for i in range(50))
    return Inventory("gigafactory bench", True, "", (giga,), projects, "bench")


def fill(store: DuckDBStore, inventory: Inventory, now_ms: int) -> int:
    f = inventory.factories[0]
    nodes = list(nodes_of(f))
    gpu = [{"factory": f.id, "system": n.system, "node": n.name, "gpu": str(g), "uuid": f"GPU-{n.name}-{g}",
            "model": n.gpu_model.name, "instance": f"{n.name}:9400"} for n in nodes for g in range(n.gpus)]
    node = [{"factory": f.id, "system": n.system, "node": n.name, "source": "bmc", "instance": f"{n.name}:9400"} for n in nodes]
    rng = np.random.default_rng(1)
    gpu_w = rng.uniform(600, 1000, len(gpu))
    node_w = gpu_w.reshape(len(node), -1).sum(axis=1) + 1500 + 160
    facility_w = 0.96 * f.power_cap_mw * 1e6  # 96 % of the cap
    throttled = np.zeros(len(gpu) * len(THROTTLE_REASONS))
    throttled[rng.choice(len(gpu), len(gpu) // 100, replace=False)] = 1.0  # reason 0 is sw_power_cap
    families = [
        ("aif_gpu_power_watts", gpu, gpu_w),
        ("aif_gpu_power_limit_watts", gpu, np.full(len(gpu), 1000.0)),
        ("aif_gpu_throttled", [lb | {"reason": r} for r in THROTTLE_REASONS for lb in gpu], throttled),
        ("aif_node_power_watts", node, node_w),
        ("aif_facility_power_watts", [{"factory": f.id, "feed": "main", "instance": "meter:9400"}], np.array([facility_w])),
    ]
    ids = np.concatenate([store.series_ids([series_key(m, lb) for lb in labels]) for m, labels, _ in families])
    values = np.concatenate([v for _, _, v in families])
    for k in range(SCRAPES):
        store.append(ids, np.full(len(ids), now_ms - (SCRAPES - 1 - k) * SCRAPE_S * 1000, dtype=np.int64), values)
    hour0 = (now_ms // 3_600_000 - 480) * 3_600_000
    for h in range(480):  # 20 days of hourly rollups: 50 projects x 4 jobs an hour
        rows = pd.DataFrame({"window_start_ms": hour0 + h * 3_600_000, "factory": f.id, "system": "gf-hall1",
                             "job": [f"{h}-{j}" for j in range(200)], "project": [f"gf-p{j % 50}" for j in range(200)],
                             "access_mode": "Large Scale", "energy_j": 2.0e9, "gpu_seconds": 3600.0 * 8})
        store.replace_rows(HOURLY, hour0 + h * 3_600_000, rows)
    return len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=5, help="timed cycles after the first")
    args = ap.parse_args()
    inventory = gigafactory()
    with tempfile.TemporaryDirectory() as tmp:
        store = DuckDBStore(Path(tmp) / "bench.duckdb")
        now_ms = int(time.time() * 1000) // 1000 * 1000
        t = time.perf_counter()
        series = fill(store, inventory, now_ms)
        print(f"store: {series:,} series x {SCRAPES} scrapes written in {time.perf_counter() - t:.1f} s")
        # budget_refresh_s=0: every timed cycle re-reads the energy budgets, the evaluator's most expensive minute
        ev = AlertEvaluator(store, inventory, state_path=Path(tmp) / "state.json", notifiers=[], budget_refresh_s=0)
        rules = build_rules(inventory, ev.config)
        t = time.perf_counter()
        ev.evaluate(now_ms)
        cold = time.perf_counter() - t
        times = []
        for k in range(args.cycles):
            t = time.perf_counter()
            active = ev.evaluate(now_ms + (k + 1) * 100)  # within the scrape: every series stays fresh
            times.append(time.perf_counter() - t)
        store.close()
    states = pd.Series([a.state for a in active]).value_counts().to_dict()
    print(f"rules: {len(rules)} (1 factory, 4 systems, 4 node groups, 4 GPU partitions, 50 projects x 3 budget levels); "
          f"alerts pending/firing after the last cycle: {states}")
    print(f"first cycle (seeds forecast history from the store): {cold:.3f} s")
    print(f"one evaluation cycle over 100,000 GPUs: median {statistics.median(times):.3f} s, "
          f"max {max(times):.3f} s over {len(times)} cycles (target < 1 s)")


if __name__ == "__main__":
    main()
