"""Storage benchmark: bytes on disk per sample, per backend, for aifmon's series at 1 s and 15 s.

One simulated factory's history (`--gpus` GPUs; `--minutes` of it at each interval) is written by
`aifmon.exporters.backfill` into aifmon's embedded DuckDB store, exported from it as OpenMetrics
(`aifmon store export`'s code), and loaded from that file into
  - Prometheus TSDB blocks: `promtool tsdb create-blocks-from openmetrics` (compacted blocks, as
    Prometheus keeps data older than 2 h; its WAL for the last 2 h is not counted);
  - VictoriaMetrics (Debian package, loopback port): `aifmon store import` into victoriametrics+http://,
    then force_flush, and a wait for its background merges to settle.
Bytes per sample = folder size / samples. Each series holds minutes × 60 / interval samples, so the
per-series index weighs a little more here than over months of history (an upper bound).
InfluxDB: no server can be installed here, not measured.

Writes bench/results/storage.json (read by bench/capacity_plan.py).
    .venv/bin/python bench/storage.py [--gpus 250] [--minutes 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifmon.exporters.backfill import backfill
from aifmon.exporters.simulation import FactorySimulation
from aifmon.ingest.openmetrics import export_openmetrics, import_openmetrics
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import SampleWriter, open_store
from bench.ingest import factory_inventory, installed
from tests.conftest import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "storage.json"
VM_SETTLE_S = 20.0  # VictoriaMetrics merges freshly flushed parts in the background; sizes settle within seconds


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(gpus: int, minutes: float, interval_s: float, work: Path) -> dict:
    """Bytes per sample of each backend for one interval."""
    inv = factory_inventory(gpus)
    f = inv.factory("big")
    end = time.time() // 60 * 60
    start = end - minutes * 60
    sim = FactorySimulation(f, inv.projects_of("big"), epoch=start, step_s=interval_s)
    store = DuckDBStore(work / "aifmon.duckdb")
    samples = backfill(store, sim, start, end, interval_s)
    store.close()
    duckdb_bytes = (work / "aifmon.duckdb").stat().st_size + sum(p.stat().st_size for p in work.glob("aifmon.duckdb.wal"))
    store = DuckDBStore(work / "aifmon.duckdb", read_only=True)
    with open(work / "history.om", "w", encoding="utf-8") as out:
        exported = export_openmetrics(store, out, int(start * 1000), int(end * 1000))
    store.close()
    promtool = subprocess.run([installed("promtool", "prometheus"), "tsdb", "create-blocks-from", "openmetrics", str(work / "history.om"),
                               str(work / "blocks")], capture_output=True, text=True)
    if promtool.returncode:
        raise RuntimeError(promtool.stderr)
    port = free_port()
    vm = subprocess.Popen([installed("victoria-metrics", "victoria-metrics"), f"-storageDataPath={work / 'vm'}", f"-httpListenAddr=127.0.0.1:{port}",
                           "-loggerLevel=ERROR"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        target = open_store(f"victoriametrics+http://127.0.0.1:{port}", needs=SampleWriter)
        imported = import_openmetrics(target, work / "history.om").samples
        urllib.request.urlopen(f"http://127.0.0.1:{port}/internal/force_flush", timeout=600).read()
        time.sleep(VM_SETTLE_S)
        vm_bytes = folder_bytes(work / "vm" / "data") + folder_bytes(work / "vm" / "indexdb")
    finally:
        vm.terminate()
        vm.wait(timeout=60)
    assert samples == exported == imported, (samples, exported, imported)
    return {"interval_s": interval_s, "gpus": gpus, "minutes": minutes, "samples": samples,
            "samples_per_series": minutes * 60 / interval_s,
            "bytes_per_sample": {"duckdb": duckdb_bytes / samples, "prometheus": folder_bytes(work / "blocks") / samples,
                                 "victoriametrics": vm_bytes / samples},
            "openmetrics_bytes_per_sample": (work / "history.om").stat().st_size / samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=250)
    ap.add_argument("--minutes", type=float, default=60.0, help="history per interval, min")
    ap.add_argument("--intervals", default="1,15")
    args = ap.parse_args()
    runs = []
    for interval in [float(x) for x in args.intervals.split(",")]:
        with tempfile.TemporaryDirectory(prefix="aifmon-storage-") as tmp:
            run = measure(args.gpus, args.minutes, interval, Path(tmp))
        runs.append(run)
        print(f"interval {interval:g} s: {run['samples']:,} samples ({run['samples_per_series']:.0f} per series); bytes per sample "
              + ", ".join(f"{k} {v:.2f}" for k, v in run["bytes_per_sample"].items()), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"cpus": os.cpu_count(), "runs": runs}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
