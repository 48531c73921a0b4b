"""`aifmon rollup energy|hourly|schedule`: energy per group over a range, the hourly rollups behind it, and (schedule
--reports-dir) the board's monthly reports written from them."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aifmon.cli.arguments import Commands, add_rows_store, command, group, samples_and_rows
from aifmon.telemetry.errors import UserError

if TYPE_CHECKING:
    from aifmon.stores.store import RollupStore, SampleReader, StoreHeldError
    from aifmon.telemetry.inventory import Inventory

log = logging.getLogger("aifmon")


def register(commands: Commands) -> None:
    roll = group(commands, "rollup", "rollups", "WHAT")
    c = command(roll, "energy", energy, "GPU energy, GPU-hours, cost and CO2e per group over a time range")
    c.add_argument("--start", required=True, help="ISO 8601, Unix seconds, now or -24h")
    c.add_argument("--end", default="now")
    c.add_argument("--by", default="project", choices=["job", "project", "access_mode", "sector", "system", "factory", "country", "total"])
    c.add_argument("--format", choices=["table", "json", "csv"], default="table")
    c.add_argument("--sacct", help="attribute GPU energy from Slurm accounting records (sacct --parsable2 output) instead of job info")
    c.add_argument("--sacct-timezone", default="UTC", help="time zone of the records' Start and End (default UTC)")
    c.add_argument("--sacct-factory", help="factory the records are from, where node names repeat across factories")
    c.add_argument("--from-samples", action="store_true",
                   help="compute every hour from samples, not settled hours from the hourly rollups (a cross-check)")
    add_rows_store(c)
    c = command(roll, "hourly", hourly, "compute every finished hour missing from the hourly rollup table")
    c.add_argument("--from", dest="reopen_from", help="also recompute every hour from this time on (history loaded late)")
    c = command(roll, "schedule", schedule, "keep the hourly rollups (and with --reports-dir the board's monthly reports) up to date, "
                "checking every --every s, until stopped; with a PromQL --store, the rows go to --rows-store")
    c.add_argument("--every", type=float, default=60.0, help="check for finished hours (and reports due) every EVERY s (default 60)")
    c.add_argument("--rows-store", help="where the hourly rows go when --store keeps none (a PromQL server): "
                                        "influxdb+http://… (the sink) or duckdb:///rollups.duckdb")
    c.add_argument("--since", default="now-24h", help="with --rows-store: the first hour to roll up at start (default now-24h)")
    c.add_argument("--reports-dir", help="also write the board's monthly reports into this folder (the dashboard's --reports-dir): "
                                         "YYYY-MM-to-date daily, YYYY-MM once the month has settled (docs/reports.md)")
    c.add_argument("--no-pdf", action="store_true", help="with --reports-dir: no report.pdf (it needs Chromium; without it the "
                                                         "reports are written without one and a warning is logged)")


def energy(args: argparse.Namespace) -> None:
    from aifmon.rollups.ledger import energy_rollup
    from aifmon.rollups.report_format import format_energy_rollup
    from aifmon.stores.store import StoreHeldError
    from aifmon.telemetry.config import parse_time
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    start_ms, end_ms = parse_time(args.start), parse_time(args.end)
    if end_ms <= start_ms:
        raise UserError(f"--end {args.end} is not after --start {args.start}")
    accounting = None
    if args.sacct:
        from aifmon.rollups.slurm_accounting import load_sacct

        accounting = load_sacct(args.sacct, args.sacct_timezone)
    try:
        with samples_and_rows(args) as store:
            result = energy_rollup(store, inventory, start_ms, end_ms, by=args.by, accounting=accounting,
                                   accounting_factory=args.sacct_factory, from_hourly=not args.from_samples)
    except StoreHeldError as held:
        print(_through_up(held, args, inventory, start_ms, end_ms))
        return
    if "no_data" in result.notes:
        log.warning("%s in %s", result.notes["no_data"], args.store)
    print(format_energy_rollup(result, args.format))


def _through_up(held: StoreHeldError, args: argparse.Namespace, inventory: Inventory, start_ms: int, end_ms: int) -> str:
    """The answer of the `aifmon up` that holds the store (`aifmon.rollups.ledger_service`); `held` again if none serves it."""
    from aifmon.rollups.ledger_service import ask
    from aifmon.telemetry.inventory import demo_inventory_path

    if args.sacct:
        raise UserError(f"{held}; --sacct is read by this command only: stop `aifmon up` for it, or leave --sacct out") from None
    request = {"start_ms": start_ms, "end_ms": end_ms, "by": args.by, "format": args.format, "from_samples": args.from_samples,
               "inventory_yaml": Path(args.inventory or demo_inventory_path()).read_text(encoding="utf-8"),
               "inventory_source": inventory.source}
    answer = ask(held.path, request)
    if answer is None:
        raise held
    log.info("store %s is held by aifmon up: read its ledger through it", held.path)
    return answer


def hourly(args: argparse.Namespace) -> None:
    from aifmon.rollups.hourly import HourlyRollups
    from aifmon.stores.store import RollupStore, open_store
    from aifmon.telemetry.config import parse_time
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    reopen_from_ms = parse_time(args.reopen_from) if args.reopen_from else None
    with open_store(args.store, needs=RollupStore) as store:
        rollups = HourlyRollups(store, inventory)
        if reopen_from_ms is not None:
            rollups.reopen(reopen_from_ms, int(time.time() * 1000))
        print(f"{rollups.catch_up()} hour(s) computed")


def schedule(args: argparse.Namespace) -> None:
    from aifmon.stores.split_store import SplitStore
    from aifmon.stores.store import RollupStore, RowStore, RowWriter, SampleReader, open_store
    from aifmon.telemetry.config import parse_time
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    if not args.rows_store:
        with open_store(args.store, needs=RollupStore) as store:
            _keep_up(store, store, inventory, args)
        return
    since_ms = parse_time(args.since) // 3_600_000 * 3_600_000
    with open_store(args.store, needs=SampleReader) as samples, open_store(args.rows_store, needs=RowWriter) as rows:
        split = SplitStore(samples, rows, since_ms)
        # a rows store that gives its rows back serves the reports; from a write-only sink (InfluxDB) they cannot be read,
        # so the reports compute every hour from the samples, as `aifmon report monthly` does on a PromQL store
        _keep_up(split, split if isinstance(rows, RowStore) else samples, inventory, args)


def _keep_up(store: RollupStore, reports_store: SampleReader, inventory: Inventory, args: argparse.Namespace) -> None:
    """Run the hourly rollups over `store` (and with --reports-dir the report scheduler over `reports_store`) until stopped."""
    from aifmon.rollups.hourly import HourlyRollups
    from aifmon.rollups.report_schedule import ReportScheduler
    from aifmon.supervisor import Worker, run_workers

    log.info("hourly rollups over %s, checked every %g s", store.url, args.every)
    workers: list[Worker] = [HourlyRollups(store, inventory, check_every_s=args.every)]
    if args.reports_dir:
        log.info("monthly reports from %s into %s", reports_store.url, args.reports_dir)
        workers.append(ReportScheduler(reports_store, inventory, Path(args.reports_dir), pdf=not args.no_pdf, check_every_s=args.every))
    run_workers(workers)
