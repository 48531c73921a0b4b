"""`aifmon up`: the whole stack on the embedded store, for a demo or a laptop (`make up`)."""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from aifmon.cli import dashboard
from aifmon.cli.arguments import Commands, command
from aifmon.cli.ingest import add_window_options, sample_window
from aifmon.telemetry.config import DEFAULT_DASHBOARD_LISTEN, DEFAULT_SCRAPE_INTERVAL_S
from aifmon.telemetry.errors import UserError

if TYPE_CHECKING:
    from aifmon.stores.duckdb_store import DuckDBStore
    from aifmon.supervisor import Worker
    from aifmon.telemetry.inventory import Inventory

log = logging.getLogger("aifmon")

SIM_STEP_S = 5.0
"""Simulation tick of the demo, s: as fine as the scrape interval, cheap enough for 2 cores."""

BACKFILL_GPU_MINUTES = 4_500_000
"""Most history one factory's backfill writes, in GPUs x one-minute snapshots: the demo's 25,000-GPU factory gets its
last 3 h (about a minute of start-up on 2 cores, 0.2 s a snapshot), a factory of a few hundred GPUs the whole
`--backfill-hours`."""

STORE_MEMORY_MB = 256
"""DuckDB's buffer pool in `aifmon up`, MB (its default is 80 % of the machine's memory): after the backfill it held
325 MB of cached blocks, a third of the stack's 1 GB target, which it re-reads from the file as needed."""

MALLOC_ARENAS = 2
"""glibc malloc arenas of `up` and its simulator (default 8 per core): each worker thread that allocates in an arena of
its own keeps the freed blocks of its peak there."""

MALLOC_MMAP_THRESHOLD = 128 * 1024
"""Blocks of this many bytes or more get pages of their own from glibc malloc, returned when freed, in `up` and its
simulator: glibc's default threshold starts here but rises to the largest block freed so far (up to 32 MB), after which
the multi-MB arrays of every scrape and the simulator's exposition text (63 MB at 25,000 GPUs, rendered every 5 s)
are carved from the heaps, and the heaps keep their peak. Fixed, the simulator held 150 MB instead of 248 MB."""

ALERTS_WAIT_S = 600.0
"""Longest the alert evaluator waits at start for the hourly rollups to catch up on the backfilled history, s. Its
first cycle reads this month's project energy from the ledger (budget rules): started with the rollups, it computed
every backfilled hour of the month from samples while the rollups computed the same hours, on the same 2 cores: a first
cycle of 38-100 s and up to 270 MB more in `up`, and a catch-up of 55-130 s, which ran into the third minute. Waiting,
the catch-up took 30-62 s and the evaluator's first cycle 8-12 s (the hours still open to late data, from samples);
alerts start that much later, against `for` durations of minutes."""

REPORTS_WAIT_S = 900.0
"""Longest the report scheduler waits at start for the alert evaluator's first cycle, s: the first month-to-date report
computes the hours still open to late data from samples, as that cycle does (the 25,000-GPU factory's: 8-12 s and
200-270 MB each); at the same time, they added up."""


def register(commands: Commands) -> None:
    c = command(commands, "up", up, "the whole stack on the embedded store: simulators, collector, rollups, dashboard")
    c.add_argument("--listen", default=DEFAULT_DASHBOARD_LISTEN, help="dashboard address")
    c.add_argument("--backfill-hours", type=float, default=24.0, help="simulated history written before going live, h")
    c.add_argument("--interval", type=float, default=DEFAULT_SCRAPE_INTERVAL_S, help="scrape interval, s")
    add_window_options(c)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--alert-rules", help="alert rules YAML for the embedded evaluator (default: the built-in thresholds)")
    dashboard.add_options(c)


def up(args: argparse.Namespace) -> int:
    """One simulator child process for every live factory, backfill, then collector, hourly rollups, compactor and alert
    evaluator (workers) and the dashboard, until Ctrl-C or SIGTERM (0) or until the simulator exits (1)."""
    _tune_malloc()  # before pyarrow is imported: it picks its memory pool then
    from aifmon.cli.alerts import alert_evaluator
    from aifmon.ingest.collector import Collector, targets_of
    from aifmon.rollups.hourly import HourlyRollups
    from aifmon.rollups.ledger_service import LedgerService
    from aifmon.rollups.report_schedule import ReportScheduler
    from aifmon.stores.duckdb_store import Compactor, DuckDBStore
    from aifmon.stores.store import open_store
    from aifmon.supervisor import child_processes, run_workers
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    window = sample_window(args)
    simulated = [f for f in inventory.live_factories() if f.targets]
    status = 0
    with open_store(args.store, needs=DuckDBStore) as store:
        store.limit_memory(STORE_MEMORY_MB)
        epochs = demo_epochs(store, inventory, args.seed, args.backfill_hours)
        # One process simulates every factory (one HTTP server each, on its target), re-rendering once per scrape
        # interval: 13 processes of their own held 800 MB, and a 25,000-GPU exposition costs 0.25 s to render.
        command = [sys.executable, "-m", "aifmon", "--quiet", "exporter", "sim", "--seed", str(args.seed), "--step", str(SIM_STEP_S),
                   "--poll", str(args.interval)] + (["--inventory", args.inventory] if args.inventory else [])
        for f in simulated:
            command += ["--factory", f.id, "--epoch", str(epochs[f.id])]
        with child_processes([command] if simulated else []) as sims, closing(dashboard.start(store, inventory, args)):
            print(f"aifmon: dashboard on http://{args.listen}/  (Ctrl-C stops everything)", file=sys.stderr, flush=True)
            try:
                _backfill(store, inventory, args.seed, epochs)
                log.info("live: scraping %d simulated factories every %g s", len(simulated), args.interval)
                rollups, evaluator = HourlyRollups(store, inventory), alert_evaluator(store, inventory, args.alert_rules)
                alerts = StartAfter(rollups.caught_up.is_set, evaluator, ALERTS_WAIT_S,
                                    "the alert evaluator", "the hourly rollups to catch up on the backfilled history")
                reports = StartAfter(lambda: evaluator.cycles > 0, ReportScheduler(store, inventory, Path(args.reports_dir)),
                                     REPORTS_WAIT_S, "the report scheduler", "the alert evaluator's first cycle")
                exited = run_workers([Collector(store, targets_of(inventory), interval_s=args.interval, window=window),
                                      rollups, Compactor(store), alerts, reports, LedgerService(store, store.path)], sims)
                if exited is not None:
                    served = ", ".join(f"{f.id} on {f.targets[0]}" for f in simulated)
                    print(f"aifmon: the simulator ({served}) exited with status {exited.returncode}", file=sys.stderr, flush=True)
                    status = 1
            finally:
                print("aifmon: stopping...", file=sys.stderr, flush=True)
    print("aifmon: stopped; store closed cleanly", file=sys.stderr, flush=True)
    return status


class StartAfter:
    """A worker that runs `worker` once `ready()` is true (asked every `POLL_S`), or once `limit_s` s have passed; `name`
    and `what` (what it waits for) are for the log."""

    POLL_S = 0.5

    def __init__(self, ready: Callable[[], bool], worker: Worker, limit_s: float, name: str, what: str):
        self.ready = ready
        self.worker = worker
        self.limit_s = limit_s
        self.name = name
        self.what = what
        self._stop = threading.Event()

    def run(self) -> None:
        if not self.ready():
            began = time.monotonic()
            log.info("%s waits for %s (at most %g s)", self.name, self.what, self.limit_s)
            while not self.ready():
                if self._stop.wait(self.POLL_S):
                    return
                if time.monotonic() - began >= self.limit_s:
                    log.warning("%s starts without waiting longer for %s (%g s)", self.name, self.what, self.limit_s)
                    break
            else:
                log.info("%s starts after waiting %.0f s for %s", self.name, time.monotonic() - began, self.what)
        if not self._stop.is_set():
            self.worker.run()

    def stop(self) -> None:
        self._stop.set()
        self.worker.stop()  # before its run() too: it then returns at once


_MALLOC_SETTINGS = (("MALLOC_ARENA_MAX", -8, MALLOC_ARENAS), ("MALLOC_MMAP_THRESHOLD_", -3, MALLOC_MMAP_THRESHOLD))
"""(environment variable, mallopt's parameter number from glibc's malloc.h, value) of each glibc setting `_tune_malloc` makes."""

ARROW_POOL = ("ARROW_DEFAULT_MEMORY_POOL", "system")
"""Arrow allocates with glibc's malloc (tuned above), not its own mimalloc pool, whose 1 GiB reservation held 63-137 MB
in `up` after the backfill. Set in the environment, read once when pyarrow is first imported, the choice covers Arrow's
C++ kernels too: `pyarrow.set_memory_pool` covers only the allocations made through pyarrow's Python API, and with it
alone the mimalloc reservation stayed."""


def _tune_malloc() -> None:
    """`MALLOC_ARENAS` arenas, `MALLOC_MMAP_THRESHOLD` and `ARROW_POOL` in this process (before its threads start and
    before pyarrow is imported) and in the children it starts (their environment), each unless its environment variable
    is set already: glibc has then read it at start-up, and the children inherit it."""
    if ARROW_POOL[0] not in os.environ:
        os.environ[ARROW_POOL[0]] = ARROW_POOL[1]
    unset = [(name, param, value) for name, param, value in _MALLOC_SETTINGS if name not in os.environ]
    for name, _param, value in unset:
        os.environ[name] = str(value)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): another allocator, nothing to set
        return
    if hasattr(libc, "mallopt"):
        for _name, param, value in unset:
            libc.mallopt(param, value)


def history_hours(gpus: int, backfill_hours: float) -> float:
    """Hours of simulated history a factory of `gpus` GPUs gets: `backfill_hours`, or fewer where that would exceed
    `BACKFILL_GPU_MINUTES` (whole hours, at least one)."""
    return min(backfill_hours, max(1.0, BACKFILL_GPU_MINUTES // max(gpus, 1) // 60))


def demo_epochs(store: DuckDBStore, inventory: Inventory, seed: int, backfill_hours: float) -> dict[str, float]:
    """The simulation epoch of each live factory of the demo store, Unix s, kept across runs (in a file beside the
    store) so that counters and job ids continue. A new store starts `backfill_hours` before the current hour; a
    large factory's history starts later (`history_hours`), its counters from zero there."""
    state = Path(str(store.path) + ".demo.json")
    saved: dict = {}
    if state.exists():
        saved = json.loads(state.read_text())
        if saved.get("seed") != seed or time.time() - saved["epoch"] >= 7 * 86400:
            if store.time_bounds() is not None:
                raise UserError(f"the demo store {store.path} was simulated with another seed or over a week ago; "
                                "move it aside (or delete it) to start a fresh demo")
            saved = {}
    hour = time.time() // 3600 * 3600
    epoch = float(saved.get("epoch", hour - backfill_hours * 3600))
    live = inventory.live_factories()
    # A state file written before per-factory epochs ran every factory from the one epoch.
    known: dict[str, float] = saved.get("epochs", {f.id: epoch for f in live} if saved else {})
    epochs = {f.id: float(known.get(f.id, max(epoch, hour - history_hours(f.gpu_count, backfill_hours) * 3600))) for f in live}
    state.write_text(json.dumps({"epoch": epoch, "seed": seed, "epochs": epochs}))
    return epochs


def _backfill(store: DuckDBStore, inventory: Inventory, seed: int, epochs: dict[str, float]) -> None:
    """Write the simulated history, one snapshot a minute, from each factory's epoch (or the store's newest sample) to now."""
    from tqdm import tqdm

    from aifmon.exporters.backfill import backfill
    from aifmon.exporters.simulation import FactorySimulation

    now = time.time() // 60 * 60
    # the newest sample up to now: one stamped in the future (a clock gone wrong) must not skip the minutes before it
    last_ms = store.newest_sample_ms(int(now * 1000))
    newest = (last_ms // 1000 // 60 + 1) * 60 if last_ms is not None else 0.0
    starts = {f.id: max(epochs[f.id], newest) for f in inventory.live_factories()}
    steps = {fid: max(0, int((now - start) // 60)) for fid, start in starts.items()}
    if not any(steps.values()):
        return
    epoch = min(epochs.values())
    for f in inventory.live_factories():
        if steps[f.id] and epochs[f.id] > epoch:
            log.info("backfill: %s (%d GPUs) for its last %.1f h only, to keep start-up short", f.id, f.gpu_count, (now - starts[f.id]) / 3600)
    with tqdm(total=sum(steps.values()), desc="backfill", unit="snapshot", file=sys.stderr) as bar:
        for f in inventory.live_factories():
            if steps[f.id]:
                simulation = FactorySimulation(f, inventory.projects_of(f.id), seed=seed, epoch=epochs[f.id], step_s=SIM_STEP_S)
                backfill(store, simulation, starts[f.id], now, 60.0, progress=bar.update)
