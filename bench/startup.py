"""Start-up benchmark: the wall time of commands in a fresh process, and of a fresh process's first parse (the
collector's start: the parser's import and its C scan); the median of several runs of each.

    .venv/bin/python bench/startup.py [--runs 9] [--source DIR]

Target (issue 14): the commands that touch no data (`--help`, `inventory show`, `exporter node --help`,
`alerts export-rules`) under 150 ms. Writes bench/results/startup.json and prints a table. `--source DIR` times
another checkout instead, e.g. the commit before a change (`git archive COMMIT | tar -x -C DIR`), and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "startup.json"
sys.path.insert(0, str(ROOT))

TARGET_S = 0.150
"""What a command that touches no data may take, s."""

FIRST_PARSE = "from aifmon.ingest.series_index import SeriesIndex; from aifmon.ingest.parser import parse_exposition; parse_exposition(b'm{a=\"1\"} 0.5\\n').series"
"""A fresh process's first parse: what the collector imports, and one exposition parsed."""


def wall_s(command: list[str], env: dict[str, str]) -> float:
    """Seconds from starting `command` to its exit (output discarded); a failure stops the benchmark. It runs outside
    the repository, so that `python -c` finds aifmon where PYTHONPATH or the install says, not in the working directory."""
    started = time.perf_counter()
    run = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, timeout=300, cwd=tempfile.gettempdir())
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({run.returncode}): {run.stderr[-2000:]}")
    return elapsed


def median_s(runs: int, command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Median and fastest of `runs` runs of `command`, after one untimed run (which fills the OS's file cache)."""
    wall_s(command, env)
    times = []
    for _ in range(runs):
        times.append(wall_s(command, env))
    return {"median_s": statistics.median(times), "min_s": min(times)}


def tiny_store(folder: Path) -> tuple[Path, Path, int]:
    """A DuckDB store with two hours of a small simulated site (2 factories, 32 GPUs, a snapshot a minute):
    (its inventory file, its file, the start of the history, Unix s)."""
    from aifmon.exporters.backfill import backfill
    from aifmon.exporters.simulation import FactorySimulation
    from aifmon.stores.duckdb_store import DuckDBStore
    from aifmon.telemetry.inventory import load_inventory
    from tests.conftest import inventory_text

    inventory_path, store_path, epoch = folder / "inventory.yaml", folder / "tiny.duckdb", 1_790_000_000
    inventory_path.write_text(inventory_text())
    inventory = load_inventory(inventory_path)
    with DuckDBStore(store_path) as store:
        for f in inventory.live_factories():
            backfill(store, FactorySimulation(f, inventory.projects_of(f.id), epoch=epoch, step_s=5.0), epoch, epoch + 7200, 60.0)
    return inventory_path, store_path, epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=9, help="timed runs of each command (default 9)")
    p.add_argument("--source", type=Path, help="time this checkout of aifmon (put first on PYTHONPATH) and write nothing")
    args = p.parse_args()

    env = {**os.environ, "PYTHONPATH": str(args.source.resolve())} if args.source else dict(os.environ)
    aifmon = str(Path(sys.executable).with_name("aifmon"))
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="aifmon-startup-") as tmp:
        inventory, store, epoch = tiny_store(Path(tmp))
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "aifmon --help": [aifmon, "--help"],
            "aifmon inventory show": [aifmon, "inventory", "show"],
            "aifmon exporter node --help": [aifmon, "exporter", "node", "--help"],
            "aifmon alerts export-rules": [aifmon, "alerts", "export-rules"],
            "aifmon rollup energy (tiny DuckDB store)": [aifmon, "--quiet", "rollup", "energy", "--inventory", str(inventory),
                                                        "--store", f"duckdb:///{store}", "--start", str(epoch), "--end", str(epoch + 7200)],
        }
        for name, command in commands.items():
            figures[name] = median_s(args.runs, command, env)
        figures["first parse in a fresh process"] = median_s(args.runs, [sys.executable, "-c", FIRST_PARSE], env)

    print(f"{'':44} {'median ms':>10} {'min ms':>8}")
    for name, f in figures.items():
        print(f"{name:44} {f['median_s'] * 1000:10.0f} {f['min_s'] * 1000:8.0f}")
    if args.source:
        return
    RESULTS.write_text(json.dumps({
        "runs": args.runs, "cpus": os.cpu_count(), "python": platform.python_version(),
        "target_s": TARGET_S, "commands": figures,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
