"""`aifmon deploy ...`: configuration files for a site deployment, from the inventory and the alert rules."""

from __future__ import annotations

import argparse
from pathlib import Path

from aifmon.cli.arguments import Commands, command, group
from aifmon.telemetry.errors import user_input


def register(commands: Commands) -> None:
    dep = group(commands, "deploy", "configuration for site deployments", "WHAT")
    c = command(dep, "prometheus-config", prometheus_config, "write prometheus.yml and file_sd targets from the inventory", store=False)
    c.add_argument("--out", default="deploy/prometheus", help="directory to write (default deploy/prometheus)")
    c.add_argument("--interval", type=float, default=15.0, help="scrape interval, s")
    c.add_argument("--alertmanager", action="append", help="host:port of an Alertmanager the rules fire to (repeatable)")
    c.add_argument("--remote-write", help="remote-write URL, e.g. http://victoria-metrics:8428/api/v1/write")
    c = command(dep, "alertmanager-config", alertmanager_config,
                "write alertmanager.yml whose receivers are the alert rules file's notifiers", store=False)
    c.add_argument("--rules", help="alert rules YAML (default: the built-in thresholds, no notifiers)")
    c.add_argument("--out", default="deploy/alertmanager", help="directory to write (default deploy/alertmanager)")
    c.add_argument("--secrets-dir", default="/run/secrets",
                   help="where Alertmanager finds secrets given as environment variables in the rules file (default /run/secrets)")
    c = command(dep, "vmagent-config", vmagent_config, "write vmagent.yml and file_sd targets from the inventory", store=False)
    c.add_argument("--out", default="deploy/vmagent", help="directory to write (default deploy/vmagent)")
    c.add_argument("--interval", type=float, default=15.0, help="scrape interval, s")
    c.add_argument("--remote-write", default="http://127.0.0.1:8428/api/v1/write", help="VictoriaMetrics write URL")
    c.add_argument("--members", type=int, default=1, help="vmagents sharing the targets (each scrapes about 1/MEMBERS)")


def prometheus_config(args: argparse.Namespace) -> None:
    from aifmon.deploy.prometheus_config import write_prometheus_config
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    with user_input(ValueError), user_input(OSError, about=f"cannot write into {args.out}"):  # ValueError: --interval, --alertmanager, --remote-write
        paths = write_prometheus_config(inventory, Path(args.out), args.interval, alertmanagers=args.alertmanager,
                                        remote_write_url=args.remote_write)
    for path in paths:
        print(f"wrote {path}")


def alertmanager_config(args: argparse.Namespace) -> None:
    from aifmon.cli.alerts import alert_config
    from aifmon.deploy.alertmanager_config import secret_files, write_alertmanager_config
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    config = alert_config(args.rules, inventory)
    with user_input(OSError, about=f"cannot write into {args.out}"):
        paths = write_alertmanager_config(inventory, config, Path(args.out), args.secrets_dir)
    for path in paths:
        print(f"wrote {path}")
    for secret in secret_files(config, args.secrets_dir):
        print(f"reads the secret file {secret} (create it where Alertmanager runs)")


def vmagent_config(args: argparse.Namespace) -> None:
    from aifmon.deploy.vmagent_config import write_vmagent_config
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    with user_input(ValueError), user_input(OSError, about=f"cannot write into {args.out}"):  # ValueError: --interval, --members
        paths = write_vmagent_config(inventory, Path(args.out), args.interval, args.remote_write, args.members)
    for path in paths:
        print(f"wrote {path}")
