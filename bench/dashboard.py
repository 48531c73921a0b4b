"""The dashboard's heaviest updates, beside the straightforward Plotly Express version of the same figures.

1. Factory live at 25,000 GPUs (3,125 nodes x 8 B200): one live refresh of the page, i.e. the two callbacks
   an interval tick runs (heatmap + KPIs + breakdown + top jobs/projects + throttling + coverage, and the
   6 h power history), and the first render of the page (full figures).
2. Overview at 100,000 GPUs: four such factories; one refresh of the overview (map, bars, 24 h heatmap,
   energy today, table).

Server time is the wall time of the request through the app's own WSGI stack (Flask test client, so the
store reads, figure building and JSON encoding are all in it); payload is the response body in bytes,
uncompressed (waitress sends it as is). The Plotly Express versions read the same store the same way
(`SampleReader.latest`/`range`) and build the same figures the obvious way: `px.density_heatmap` over the long
(node, gpu, watts) frame, `px.line` over raw samples, the whole figure re-sent on every refresh; they
are timed as read + build + `plotly.io.to_json`, the work a Dash callback returning them would do.

The store holds 3 scrapes 5 s apart of every GPU, node and throttle series, and 24 h of the facility
meters every 5 s. 2-core machine: read the figures as relative.

Run: .venv/bin/python bench/dashboard.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import plotly.express as px
import plotly.io as pio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifmon.dashboard.app import create_app
from aifmon.dashboard.panels import factory_power_history, factory_status
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key
from aifmon.telemetry.inventory import Inventory, nodes_of, parse_inventory
from aifmon.telemetry.schema import THROTTLE_REASONS

SCRAPE_S, SCRAPES = 5, 3
SITES = [("gf-north", "North Gigafactory", "FI", 64.2, 27.7), ("gf-west", "West Gigafactory", "FR", 48.7, 2.2),
         ("gf-south", "South Gigafactory", "ES", 41.4, 2.1), ("gf-east", "East Gigafactory", "PL", 50.1, 19.9)]


def inventory() -> Inventory:
    """Four factories of 3,125 nodes x 8 B200 = 25,000 GPUs each (100,000 in all), 30 MW caps."""
    factories = "".join(f"""  - id: {fid}
    name: {name}
    country: {country}
    latitude: {lat}
    longitude: {lon}
    power_cap_mw: 30
    design_pue: 1.12
    energy_price_eur_per_kwh: 0.12
    systems:
      - id: {fid}-hall1
        name: {name} hall 1
        power_cap_kw: 26000
        node_groups:
          - {{prefix: {fid.replace('-', '')}n, count: 3125, gpus_per_node: 8, gpu_model: B200-SXM-180GB, node_base_watts: 1500}}
""" for fid, name, country, lat, lon in SITES)
    projects = "".join(f"""  - {{id: {fid}-p{i}, name: Project {i}, access_mode: Large Scale, sector: Technology & Digital, factory: {fid}}}
""" for fid, *_ in SITES for i in range(20))
    return parse_inventory(f"name: dashboard bench\nillustrative: true\nfactories:\n{factories}projects:\n{projects}", "bench")


def fill(store: DuckDBStore, inv: Inventory, now_ms: int) -> int:
    rng = np.random.default_rng(1)
    written = 0
    for f in inv.factories:
        nodes = list(nodes_of(f))
        gpu = [{"factory": f.id, "system": n.system, "node": n.name, "gpu": str(g), "uuid": f"GPU-{n.name}-{g}",
                "model": n.gpu_model.name, "instance": f"{n.name}:9400"} for n in nodes for g in range(n.gpus)]
        node = [{"factory": f.id, "system": n.system, "node": n.name, "source": "bmc", "instance": f"{n.name}:9400"} for n in nodes]
        busy = rng.random(len(nodes)) < 0.85  # whole nodes in jobs of 4 nodes each
        held = [(i, g) for i, n in enumerate(nodes) if busy[i] for g in range(n.gpus)]
        jobs = [{"factory": f.id, "system": nodes[i].system, "node": nodes[i].name, "gpu": str(g), "job": f"{f.id}-{i // 4}",
                 "project": f"{f.id}-p{(i // 4) % 20}", "access_mode": "Large Scale", "instance": f"{nodes[i].name}:9400"} for i, g in held]
        util = np.where(np.repeat(busy, 8), rng.uniform(0.6, 1.0, len(gpu)), 0.0)
        gpu_w = 140 + 860 * util
        throttled = np.zeros(len(gpu) * len(THROTTLE_REASONS))
        throttled[rng.choice(len(gpu), len(gpu) // 100, replace=False)] = 1.0
        node_w = gpu_w.reshape(len(nodes), -1).sum(axis=1) + 1500
        families = [("aif_gpu_power_watts", gpu, gpu_w), ("aif_gpu_utilization_ratio", gpu, util),
                    ("aif_gpu_throttled", [lb | {"reason": r} for r in THROTTLE_REASONS for lb in gpu], throttled),
                    ("aif_gpu_job_info", jobs, np.ones(len(jobs))), ("aif_node_power_watts", node, node_w)]
        ids = np.concatenate([store.series_ids([series_key(m, lb) for lb in labels]) for m, labels, _ in families])
        values = np.concatenate([v for _, _, v in families])
        for k in range(SCRAPES):
            store.append(ids, np.full(len(ids), now_ms - (SCRAPES - 1 - k) * SCRAPE_S * 1000, dtype=np.int64), values)
        meter = store.series_ids([series_key("aif_facility_power_watts", {"factory": f.id, "feed": "main", "instance": "meter"})])
        t = np.arange(now_ms - 86_400_000, now_ms + 1, SCRAPE_S * 1000, dtype=np.int64)
        facility = node_w.sum() * 1.12 * (0.9 + 0.1 * np.sin(t / 3.6e6))
        store.append(np.repeat(meter, len(t)), t, facility)
        written += len(ids) * SCRAPES + len(t)
    return written


def _request(app, output_prefix: str, inputs: Mapping[str, object], state: Mapping[str, object] | None = None) -> tuple[float, int, dict]:
    """POST one callback as the browser would; (server s, response bytes, parsed response)."""
    key = next(k for k in app.callback_map if output_prefix in k)
    spec = app.callback_map[key]
    outputs = [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in key.strip(".").split("...")]
    body = {"output": key, "outputs": outputs,
            "inputs": [{"id": i["id"], "property": i["property"], "value": inputs.get(i["id"])} for i in spec["inputs"]],
            "state": [{"id": s["id"], "property": s["property"], "value": (state or {}).get(s["id"])} for s in spec["state"]],
            "changedPropIds": [f"{next(iter(inputs))}.n_intervals"]}
    client = app.server.test_client()
    t = time.perf_counter()
    r = client.post("/_dash-update-component", json=body)
    elapsed = time.perf_counter() - t
    assert r.status_code == 200, r.data[:500]
    return elapsed, len(r.data), json.loads(r.data)


def _px_factory(store: DuckDBStore, fid: str, now_ms: int) -> tuple[float, int]:
    """The same factory refresh, the straightforward way: long frames straight into Plotly Express."""
    t = time.perf_counter()
    power = store.latest("aif_gpu_power_watts", now_ms, 60, {"factory": fid})
    jobs = store.latest("aif_gpu_job_info", now_ms, 60, {"factory": fid})
    store.latest("aif_gpu_throttled", now_ms, 60, {"factory": fid})
    heat = px.density_heatmap(power, x="gpu", y="node", z="value", histfunc="avg", nbinsy=power["node"].nunique())
    joined = power.merge(jobs[["node", "gpu", "job", "project"]], on=["node", "gpu"], how="left")
    top = px.bar(joined.groupby("job", as_index=False)["value"].sum().nlargest(10, "value"), x="value", y="job")
    hist = store.range("aif_facility_power_watts", now_ms - 6 * 3_600_000, now_ms, {"factory": fid})
    line = px.line(hist, x=hist["t_ms"].astype("datetime64[ms]"), y="value")
    size = sum(len(pio.to_json(fig)) for fig in (heat, top, line))
    return time.perf_counter() - t, size


def _px_overview(store: DuckDBStore, inv: Inventory, now_ms: int) -> tuple[float, int]:
    t = time.perf_counter()
    status = factory_status(store, inv, now_ms)
    raw = store.range("aif_facility_power_watts", now_ms - 86_400_000, now_ms)
    geo = px.scatter_geo(status, lat="latitude", lon="longitude", size="facility_power_watts", color="share_of_cap", scope="europe")
    bars = px.bar(status, x="share_of_cap", y="name", orientation="h")
    hist = factory_power_history(store, inv, now_ms - 86_400_000, now_ms)
    heat = px.density_heatmap(hist, x="t_ms", y="factory", z="share_of_cap", histfunc="avg")
    line = px.line(raw, x=raw["t_ms"].astype("datetime64[ms]"), y="value", color="factory")  # energy today, drawn raw
    size = sum(len(pio.to_json(fig)) for fig in (geo, bars, heat, line))
    return time.perf_counter() - t, size


def _stats(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:,.0f} ms, max {max(values) * 1000:,.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed refreshes after a warm-up")
    args = ap.parse_args()
    inv = inventory()
    fid = inv.factories[0].id
    with tempfile.TemporaryDirectory() as tmp:
        store = DuckDBStore(Path(tmp) / "bench.duckdb")
        now_ms = int(time.time() * 1000) // 1000 * 1000
        t = time.perf_counter()
        n = fill(store, inv, now_ms)
        print(f"store: {n:,} samples ({sum(f.gpu_count for f in inv.factories):,} GPUs) written in {time.perf_counter() - t:.0f} s")
        app = create_app(store, inv, refresh_s=5.0)
        controls = {"factory-tick": 1, "factory-factory": fid, "factory-metric": "power"}
        # First render: full figures (hover names included); then live ticks: z patched, history extended.
        _request(app, "factory-heatmap.figure", controls)  # warm-up: labels parsed once per metric, grid laid out once
        full = [_request(app, "factory-heatmap.figure", controls) for _ in range(args.repeat)]
        hist_full = [_request(app, "factory-history.figure", {"factory-tick": 1, "factory-factory": fid, "factory-range": "6h"})
                     for _ in range(args.repeat)]
        live = [_request(app, "factory-heatmap.figure", controls, {"factory-grid-key": f"{fid}|power"}) for _ in range(args.repeat)]
        state = {"factory-history-state": {"key": f"{fid}|6h", "next_ms": now_ms - 60_000}}
        hist_live = [_request(app, "factory-history.figure", {"factory-tick": 2, "factory-factory": fid, "factory-range": "6h"}, state)
                     for _ in range(args.repeat)]
        z = live[-1][2]["response"]["factory-heatmap"]["figure"]
        assert "bdata" in json.dumps(z), "the live tick sends z as a typed array"
        px_factory = [_px_factory(store, fid, now_ms) for _ in range(args.repeat + 1)][1:]

        print("\nFactory live, 25,000 GPUs (one tick = the live callback + the history callback)")
        tick_s = [a[0] + b[0] for a, b in zip(live, hist_live)]
        tick_b = live[-1][1] + hist_live[-1][1]
        first_s = [a[0] + b[0] for a, b in zip(full, hist_full)]
        first_b = full[-1][1] + hist_full[-1][1]
        print(f"| aifmon, live tick (Patch z + extendData) | {_stats(tick_s)} | {tick_b / 1e6:.3f} MB |")
        print(f"| aifmon, first render (full figures) | {_stats(first_s)} | {first_b / 1e6:.3f} MB |")
        print(f"| Plotly Express, every refresh | {_stats([s for s, _ in px_factory])} | {px_factory[-1][1] / 1e6:.3f} MB |")
        print(f"  live callback alone: {_stats([s for s, _, _ in live])}, {live[-1][1] / 1e6:.3f} MB; "
              f"history callback: {_stats([s for s, _, _ in hist_live])}, {hist_live[-1][1]:,} B")

        _request(app, "factories-kpis.children", {"factories-tick": 1})
        overview = [_request(app, "factories-kpis.children", {"factories-tick": 1}) for _ in range(args.repeat)]
        px_over = [_px_overview(store, inv, now_ms) for _ in range(args.repeat + 1)][1:]
        print("\nOverview, 100,000 GPUs in 4 factories (one refresh)")
        print(f"| aifmon | {_stats([s for s, _, _ in overview])} | {overview[-1][1] / 1e6:.3f} MB |")
        print(f"| Plotly Express | {_stats([s for s, _ in px_over])} | {px_over[-1][1] / 1e6:.3f} MB |")
        print("\ntargets: factory update < 300 ms server time and < 1.5 MB on the wire")
        store.close()


if __name__ == "__main__":
    main()
