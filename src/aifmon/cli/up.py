"""`aifmon up`: the whole stack on the embedded store, for a demo or a laptop (`make up`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from aifmon.cli import dashboard
from aifmon.cli.arguments import Commands, command
from aifmon.telemetry.config import DEFAULT_DASHBOARD_LISTEN, DEFAULT_SCRAPE_INTERVAL_S
from aifmon.telemetry.errors import UserError

if TYPE_CHECKING:
    from aifmon.stores.duckdb_store import DuckDBStore
    from aifmon.telemetry.inventory import Inventory

log = logging.getLogger("aifmon")

SIM_STEP_S = 5.0
"""Simulation tick of the demo, s: as fine as the scrape interval, cheap enough for 2 cores."""


def register(commands: Commands) -> None:
    c = command(commands, "up", up, "the whole stack on the embedded store: simulators, collector, rollups, dashboard")
    c.add_argument("--listen", default=DEFAULT_DASHBOARD_LISTEN, help="dashboard address")
    c.add_argument("--backfill-hours", type=float, default=24.0, help="simulated history written before going live, h")
    c.add_argument("--interval", type=float, default=DEFAULT_SCRAPE_INTERVAL_S, help="scrape interval, s")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--alert-rules", help="alert rules YAML for the embedded evaluator (default: the built-in thresholds)")
    dashboard.add_options(c)


def up(args: argparse.Namespace) -> int:
    """Simulators (child processes), backfill, then collector, hourly rollups, compactor and alert evaluator (workers)
    and the dashboard, until Ctrl-C or SIGTERM (0) or until a simulator exits (1)."""
    from aifmon.cli.alerts import alert_evaluator
    from aifmon.ingest.collector import Collector, targets_of
    from aifmon.rollups.hourly import HourlyRollups
    from aifmon.stores.duckdb_store import Compactor, DuckDBStore
    from aifmon.stores.store import open_store
    from aifmon.supervisor import child_processes, run_workers
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    simulated = [(f.id, f.targets[0]) for f in inventory.live_factories() if f.targets]
    status = 0
    with open_store(args.store, needs=DuckDBStore) as store:
        epoch = demo_epoch(store, args.seed, args.backfill_hours)
        commands = [[sys.executable, "-m", "aifmon", "--quiet", "exporter", "sim", "--factory", factory, "--listen", target,
                     "--epoch", str(epoch), "--seed", str(args.seed), "--step", str(SIM_STEP_S)]
                    + (["--inventory", args.inventory] if args.inventory else []) for factory, target in simulated]
        with child_processes(commands) as sims, closing(dashboard.start(store, inventory, args)):
            print(f"aifmon: dashboard on http://{args.listen}/  (Ctrl-C stops everything)", file=sys.stderr, flush=True)
            try:
                _backfill(store, inventory, args.seed, epoch)
                log.info("live: scraping %d simulators every %g s", len(sims), args.interval)
                exited = run_workers([Collector(store, targets_of(inventory), interval_s=args.interval), HourlyRollups(store, inventory),
                                      Compactor(store), alert_evaluator(store, inventory, args.alert_rules)], sims)
                if exited is not None:
                    factory, target = simulated[sims.index(exited)]
                    print(f"aifmon: the simulator of {factory} (on {target}) exited with status {exited.returncode}", file=sys.stderr, flush=True)
                    status = 1
            finally:
                print("aifmon: stopping...", file=sys.stderr, flush=True)
    print("aifmon: stopped; store closed cleanly", file=sys.stderr, flush=True)
    return status


def demo_epoch(store: DuckDBStore, seed: int, backfill_hours: float) -> float:
    """The simulation epoch of the demo store, Unix s: kept across runs (in a file beside it), so counters and job
    ids continue; a new store starts `backfill_hours` before the current hour."""
    state = Path(str(store.path) + ".demo.json")
    if state.exists():
        saved = json.loads(state.read_text())
        if saved.get("seed") == seed and time.time() - saved["epoch"] < 7 * 86400:
            return float(saved["epoch"])
        if store.time_bounds() is not None:
            raise UserError(f"the demo store {store.path} was simulated with another seed or over a week ago; "
                            "move it aside (or delete it) to start a fresh demo")
    epoch = time.time() // 3600 * 3600 - backfill_hours * 3600
    state.write_text(json.dumps({"epoch": epoch, "seed": seed}))
    return epoch


def _backfill(store: DuckDBStore, inventory: Inventory, seed: int, epoch: float) -> None:
    """Write the simulated history, one snapshot a minute, from the store's newest sample (or `epoch`) to now."""
    from tqdm import tqdm

    from aifmon.exporters.backfill import backfill
    from aifmon.exporters.simulation import FactorySimulation

    bounds = store.time_bounds()
    now = time.time() // 60 * 60
    start = max(epoch, (bounds[1] // 1000 // 60 + 1) * 60) if bounds else epoch
    steps = max(0, int((now - start) // 60))
    if not steps:
        return
    factories = inventory.live_factories()
    with tqdm(total=steps * len(factories), desc="backfill", unit="snapshot", file=sys.stderr) as bar:
        for f in factories:
            simulation = FactorySimulation(f, inventory.projects_of(f.id), seed=seed, epoch=epoch, step_s=SIM_STEP_S)
            backfill(store, simulation, start, now, 60.0, progress=bar.update)
