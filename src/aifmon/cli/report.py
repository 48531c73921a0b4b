"""`aifmon report monthly`: the governance board's monthly report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aifmon.cli.arguments import Commands, add_rows_store, command, group, samples_and_rows
from aifmon.telemetry.errors import user_input


def register(commands: Commands) -> None:
    rep = group(commands, "report", "reports", "WHAT")
    c = command(rep, "monthly", monthly, "the governance board's monthly report: report.html, report.pdf, summary.csv, summary.json")
    c.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    c.add_argument("--out", required=True, help="directory to write the report into")
    c.add_argument("--no-pdf", action="store_true", help="skip report.pdf (needs Chromium)")
    add_rows_store(c)


def monthly(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from aifmon.rollups.ledger import month_range
    from aifmon.rollups.monthly_report import build_monthly_report, write_monthly_report
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    month_range(args.month)  # a bad --month is refused before the store is opened
    with tqdm(desc=f"report {args.month}", unit="step", file=sys.stderr) as bar:
        def step(what: str) -> None:
            bar.set_postfix_str(what[:40])
            bar.update()

        with samples_and_rows(args) as store:
            report = build_monthly_report(store, inventory, args.month, progress=step)
        with user_input(OSError, about=f"cannot write the report into {args.out}"):
            paths = write_monthly_report(report, Path(args.out), pdf=not args.no_pdf, progress=step)
    for path in paths:
        print(f"wrote {path}")
