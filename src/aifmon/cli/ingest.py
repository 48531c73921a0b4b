"""`aifmon collect` and `aifmon store import|export`: samples into and out of a store."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

from aifmon.cli.arguments import Commands, command, group
from aifmon.ingest.window import MAX_SAMPLE_AGE_S, MAX_SAMPLE_AHEAD_S, SampleWindow
from aifmon.telemetry.config import DEFAULT_SCRAPE_INTERVAL_S
from aifmon.telemetry.errors import UserError, user_input

log = logging.getLogger("aifmon")


def register(commands: Commands) -> None:
    c = command(commands, "collect", collect, "scrape the inventory's exporters into the store")
    c.add_argument("--interval", type=float, default=DEFAULT_SCRAPE_INTERVAL_S, help="scrape interval, s")
    c.add_argument("--once", action="store_true", help="scrape once and exit")
    add_window_options(c)

    st = group(commands, "store", "move samples in and out of a store", "ACTION")
    c = command(st, "import", store_import, "load an OpenMetrics file (samples with timestamps) into the store", store=True)
    c.add_argument("file", help="OpenMetrics text, e.g. from `aifmon store export`")
    c.add_argument("--max-sample-ahead", type=float, default=MAX_SAMPLE_AHEAD_S, metavar="S",
                   help=f"refuse the file if a sample is stamped more than S seconds after now (default {MAX_SAMPLE_AHEAD_S:g}); "
                        "history of any age since 2000 is taken")
    c = command(st, "export", store_export, "write the store's samples as OpenMetrics (promtool tsdb create-blocks-from openmetrics reads it)")
    c.add_argument("--start", default="1970-01-01", help="ISO 8601, Unix seconds, now or now-24h (default: everything)")
    c.add_argument("--end", default="now")
    c.add_argument("--out", help="file to write (default: standard output)")


def add_window_options(c: argparse.ArgumentParser) -> None:
    """--max-sample-age and --max-sample-ahead: the window of sample timestamps a collector accepts (`sample_window`)."""
    c.add_argument("--max-sample-age", type=float, default=MAX_SAMPLE_AGE_S, metavar="S",
                   help=f"refuse (and count) samples an exporter stamps more than S seconds before its scrape (default {MAX_SAMPLE_AGE_S:g})")
    c.add_argument("--max-sample-ahead", type=float, default=MAX_SAMPLE_AHEAD_S, metavar="S",
                   help=f"refuse (and count) samples stamped more than S seconds after it (default {MAX_SAMPLE_AHEAD_S:g})")


def sample_window(args: argparse.Namespace, any_age: bool = False) -> SampleWindow:
    """The window the options give (any age since 2000 for an import); a limit that is not a positive number (the lead
    may be 0) is a UserError naming the option."""
    if not any_age and not args.max_sample_age > 0:
        raise UserError(f"--max-sample-age must be a positive number of seconds, not {args.max_sample_age:g}")
    if not args.max_sample_ahead >= 0:
        raise UserError(f"--max-sample-ahead must be 0 or more seconds, not {args.max_sample_ahead:g}")
    return SampleWindow(None if any_age else args.max_sample_age, args.max_sample_ahead)


def collect(args: argparse.Namespace) -> None:
    from aifmon.ingest.collector import Collector, targets_of
    from aifmon.stores.duckdb_store import Compactor, DuckDBStore
    from aifmon.stores.store import SampleWriter, open_store
    from aifmon.supervisor import Worker, run_workers
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    window = sample_window(args)
    with open_store(args.store, needs=SampleWriter) as store:
        with user_input(ValueError):  # an --interval of 0 or less
            collector = Collector(store, targets_of(inventory), interval_s=args.interval, window=window)
        if args.once:
            print(f"{collector.collect_once()} samples stored in {store.url}")
            return
        log.info("collecting from %d targets every %g s into %s", len(collector.targets), args.interval, store.url)
        workers: list[Worker] = [collector]
        if isinstance(store, DuckDBStore):
            workers.append(Compactor(store))
        run_workers(workers)


def store_import(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from aifmon.ingest.openmetrics import import_openmetrics
    from aifmon.rollups.hourly import reroll_stored_hours
    from aifmon.stores.store import SampleWriter, open_store
    from aifmon.telemetry.exposition import ExpositionError
    from aifmon.telemetry.inventory import load_inventory

    window = sample_window(args, any_age=True)
    with open_store(args.store, needs=SampleWriter) as store:
        with user_input(OSError, about=f"cannot read {args.file}"), user_input(ExpositionError), \
                tqdm(total=Path(args.file).stat().st_size, unit="B", unit_scale=True, desc="import", file=sys.stderr) as bar:
            imported = import_openmetrics(store, args.file, progress=bar.update, window=window)
        rerolled = 0
        if imported.first_ms is not None and imported.last_ms is not None:  # hours rolled up before this history arrived would otherwise be read stale
            rerolled = reroll_stored_hours(store, imported.first_ms, imported.last_ms, load_inventory(args.inventory))
    print(f"{imported.samples} samples imported into {store.url}"
          + (f"; {rerolled} hourly rollup hour(s) they touch recomputed" if rerolled else ""))


def store_export(args: argparse.Namespace) -> None:
    from aifmon.ingest.openmetrics import export_openmetrics
    from aifmon.stores.store import SampleReader, open_store
    from aifmon.telemetry.config import parse_time

    start_ms, end_ms = parse_time(args.start), parse_time(args.end)
    with open_store(args.store, read_only=True, needs=SampleReader) as store:
        with user_input(OSError, about=f"cannot write {args.out}"):
            out = open(args.out, "w", encoding="utf-8") if args.out else nullcontext(sys.stdout)
        with out as text:
            n = export_openmetrics(store, text, start_ms, end_ms, progress=lambda m: log.info("exporting %s", m))
    log.info("%d samples exported", n)
