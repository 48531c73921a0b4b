"""The cost of `SampleReader.edges` on the embedded DuckDB store, beside the reads the energy ledger makes anyway.

A store of `--gpus` GPUs' energy counters and power gauges, one sample a minute each for `--hours` hours; of the GPUs,
`--stopped` stopped 20 h before the measured hour (decommissioned: their last sample is that old) and `--silent` are
silent for 3 h across its start. Measured, each the median of `--repeat` runs, for the hour [24 h, 25 h):
`range_arrays` of the hour (what the ledger reads of it), the two 15-minute margins the ledger read before `edges`
existed, and `edges`, on the store as written (no extents yet: series are searched to the store's oldest and newest
samples) and after `compact` (extents: each series inside its own).

Run: .venv/bin/python bench/store_edges.py [--gpus 25000 --hours 30 --stopped 1000 --silent 100 --repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key

H, MIN = 3_600_000, 60_000
ENERGY, POWER = "aif_gpu_energy_joules_total", "aif_gpu_power_watts"


def build(store: DuckDBStore, gpus: int, hours: int, stopped: int, silent: int, t0: int, start: int) -> None:
    """One append per hour of data (both metrics, in time order)."""
    keys = [series_key(m, {"factory": "f", "node": f"n{g // 8}", "gpu": str(g % 8)}) for m in (ENERGY, POWER) for g in range(gpus)]
    ids = store.series_ids(keys)
    gpu = np.tile(np.arange(gpus), 2)
    for h in range(hours):
        t = t0 + h * H + MIN * np.arange(60)
        tt = np.repeat(t, len(ids))
        gg = np.tile(gpu, len(t))
        keep = ~((gg < stopped) & (tt > start - 20 * H))
        keep &= ~((gg >= stopped) & (gg < stopped + silent) & (tt > start - 90 * MIN) & (tt < start + 90 * MIN))
        value = np.where(np.tile(np.arange(len(ids)) < gpus, len(t)), (tt - t0) * 0.3, 300.0)
        store.append(np.tile(ids, len(t))[keep], tt[keep], value[keep])


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    """(median seconds, what `fn()` returns: the samples it read)."""
    times, n = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=25_000)
    ap.add_argument("--hours", type=int, default=30)
    ap.add_argument("--stopped", type=int, default=1000)
    ap.add_argument("--silent", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    t0 = (int(time.time() * 1000) // H - args.hours - 1) * H
    start, end = t0 + 24 * H, t0 + 25 * H
    with tempfile.TemporaryDirectory() as d:
        store = DuckDBStore(Path(d) / "edges.duckdb")
        began = time.perf_counter()
        build(store, args.gpus, args.hours, args.stopped, args.silent, t0, start)
        print(f"{args.gpus} GPUs x 2 series, {args.hours} h at 60 s: {store.sample_count():,} samples, built in {time.perf_counter() - began:.0f} s")
        for label in ("as written (no extents)", "after compact (extents)"):
            if label.startswith("after"):
                began = time.perf_counter()
                store.compact(now_ms=t0 + (args.hours + 1) * H)
                print(f"compact: {time.perf_counter() - began:.1f} s")
            rows = {
                "range_arrays of the hour": lambda: len(store.range_arrays(ENERGY, start, end).t_ms),
                "old 15-min margins (2 reads)": lambda: sum(len(store.range_arrays(ENERGY, a, b).t_ms)
                                                            for a, b in ((start - 15 * MIN, start - 1), (end + 1, end + 15 * MIN))),
                "edges": lambda: len(store.edges(ENERGY, start, end).t_ms),
            }
            for name, fn in rows.items():
                s, n = timed(fn, args.repeat)
                print(f"{label:26s} {name:30s} {s * 1000:8.1f} ms  {n:>10,} samples")
        store.close()


if __name__ == "__main__":
    main()
