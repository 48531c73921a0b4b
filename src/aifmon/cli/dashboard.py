"""`aifmon dashboard`: serve the dashboard (also what `aifmon up` serves)."""

from __future__ import annotations

import argparse
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifmon.cli.arguments import Commands, command
from aifmon.telemetry.config import DEFAULT_DASHBOARD_LISTEN
from aifmon.telemetry.errors import user_input

if TYPE_CHECKING:
    from aifmon.stores.store import SampleReader
    from aifmon.telemetry.inventory import Inventory


def register(commands: Commands) -> None:
    c = command(commands, "dashboard", serve, "serve the dashboard")
    c.add_argument("--listen", default=DEFAULT_DASHBOARD_LISTEN)
    c.add_argument("--refresh", type=float, default=5.0, help="live page refresh, s")
    add_options(c)


def add_options(c: argparse.ArgumentParser) -> None:
    """The dashboard's options that `aifmon up` shares."""
    c.add_argument("--users", help="dashboard users YAML (roles operator|board, bcrypt hashes; default: $AIFMON_DASHBOARD_USERS); "
                                   "sign-in is required beyond loopback")
    c.add_argument("--reports-dir", default="data/reports", help="monthly reports to list, one folder per month (default data/reports)")


def start(store: SampleReader, inventory: Inventory, args: argparse.Namespace, **kwargs: Any) -> Any:
    """Serve the dashboard of `store` on `args.listen` in a thread, with users from `args.users` (or the environment)
    and reports from `args.reports_dir`; `kwargs` go to `create_app`. Returns the server: `close()` it."""
    from aifmon.dashboard.app import create_app, make_server
    from aifmon.dashboard.auth import load_users

    users = load_users(args.users)
    app = create_app(store, inventory, users=users, reports_dir=Path(args.reports_dir), **kwargs)
    # ValueError: refused beyond loopback without users (the message says what to do)
    with user_input(ValueError), user_input(OSError, about=f"cannot listen on {args.listen}"):
        server = make_server(app, args.listen)
    threading.Thread(target=server.run, name="dashboard", daemon=True).start()
    return server


def serve(args: argparse.Namespace) -> None:
    from aifmon.stores.store import SampleReader, open_store
    from aifmon.supervisor import wait_for_signal
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    with open_store(args.store, read_only=True, needs=SampleReader) as store, closing(start(store, inventory, args, refresh_s=args.refresh)):
        print(f"aifmon: dashboard on http://{args.listen}/", file=sys.stderr, flush=True)
        wait_for_signal()
