"""`aifmon alerts export-rules|evaluate`: the alert rules as a Prometheus rule file, or evaluated here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aifmon.cli.arguments import Commands, add_rows_store, command, group, samples_and_rows
from aifmon.telemetry.errors import user_input

if TYPE_CHECKING:
    from aifmon.alerts.config import AlertConfig
    from aifmon.alerts.evaluator import AlertEvaluator
    from aifmon.stores.store import SampleReader
    from aifmon.telemetry.inventory import Inventory

log = logging.getLogger("aifmon")


def register(commands: Commands) -> None:
    al = group(commands, "alerts", "power-cap and energy-budget alerts", "ACTION")
    c = command(al, "export-rules", export_rules, "write the alert rules as a Prometheus rule file", store=False)
    c.add_argument("--rules", help="alert rules YAML (default: the built-in thresholds)")
    c.add_argument("--out", help="write the rule file here (default: standard output)")
    c = command(al, "evaluate", evaluate, "evaluate the alert rules over the store and notify (every interval, or --once)")
    c.add_argument("--rules", help="alert rules YAML (default: the built-in thresholds); re-read when it changes")
    c.add_argument("--once", action="store_true", help="evaluate once, print the pending and firing alerts, and exit")
    add_rows_store(c)
    c.add_argument("--format", choices=["table", "json"], default="table")


def alert_config(rules: str | None, inventory: Inventory) -> AlertConfig:
    """The alert rules file `rules` (None: the built-in thresholds), validated against `inventory`."""
    from aifmon.alerts.config import load_alert_config

    return load_alert_config(rules, inventory)


def alert_evaluator(store: SampleReader, inventory: Inventory, rules: str | None) -> AlertEvaluator:
    """The evaluator of the rules file `rules` over `store` (it validates the file first, as `alert_config` does)."""
    from aifmon.alerts.evaluator import AlertEvaluator

    return AlertEvaluator(store, inventory, rules)


def export_rules(args: argparse.Namespace) -> None:
    from aifmon.alerts.prometheus import render_rules
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    text = render_rules(inventory, alert_config(args.rules, inventory))
    if args.out:
        with user_input(OSError, about=f"cannot write {args.out}"):
            Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def evaluate(args: argparse.Namespace) -> None:
    from aifmon.supervisor import run_workers
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    with samples_and_rows(args, read_only=args.once) as store:
        evaluator = alert_evaluator(store, inventory, args.rules)
        if not args.once:
            log.info("evaluating %d alert rules every %g s", len(evaluator.rules), evaluator.config.evaluation_interval_s)
            run_workers([evaluator])
            return
        active = sorted(evaluator.evaluate(), key=lambda a: (a.state, a.labels.get("alertname", ""), sorted(a.labels.items())))
    if args.format == "json":
        print(json.dumps([a.to_json() for a in active], indent=2))
        return
    from aifmon.rollups.report_format import text_table

    rows = [[a.state, a.labels["alertname"], a.labels.get("severity", ""),
             " ".join(f"{k}={v}" for k, v in a.labels.items() if k not in ("alertname", "severity")),
             a.annotations.get("value", ""), a.annotations.get("cap", ""), a.annotations.get("percentage", "")] for a in active]
    print(text_table(["state", "alert", "severity", "labels", "value", "cap", "share"], rows) if rows else "no pending or firing alerts")
