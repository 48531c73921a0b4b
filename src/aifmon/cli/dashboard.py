"""`aifmon dashboard`: serve the dashboard (also what `aifmon up` serves)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifmon.cli.arguments import Commands, add_rows_store, command, samples_and_rows
from aifmon.telemetry.config import DEFAULT_DASHBOARD_LISTEN
from aifmon.telemetry.errors import user_input

if TYPE_CHECKING:
    from aifmon.stores.store import SampleReader
    from aifmon.telemetry.inventory import Inventory


def register(commands: Commands) -> None:
    c = command(commands, "dashboard", serve, "serve the dashboard")
    c.add_argument("--listen", default=DEFAULT_DASHBOARD_LISTEN)
    c.add_argument("--refresh", type=float, default=5.0, help="live page refresh, s")
    add_rows_store(c)
    add_options(c)


def add_options(c: argparse.ArgumentParser) -> None:
    """The dashboard's options that `aifmon up` shares."""
    from aifmon.dashboard.signin import SignInPolicy
    from aifmon.telemetry.passwords import DEFAULT_CONCURRENCY

    d = SignInPolicy()
    c.add_argument("--users", help="dashboard users YAML (roles operator|board, bcrypt hashes; default: $AIFMON_DASHBOARD_USERS); "
                                   "sign-in is required beyond loopback; the file is re-read when it changes")
    c.add_argument("--reports-dir", default="data/reports", help="monthly reports to list, one folder per month (default data/reports)")
    s = c.add_argument_group("sign-in (with users; docs/security.md)")
    s.add_argument("--secure-cookie", action="store_true",
                   help="mark the session cookie Secure on every request (it is on HTTPS requests without this flag)")
    s.add_argument("--trusted-proxy", metavar="IP", type=_ip,
                   help="the TLS proxy in front: only from this address are X-Forwarded-For and X-Forwarded-Proto believed")
    s.add_argument("--signin-attempts", type=_positive(int), default=d.attempts, metavar="N",
                   help=f"failed sign-ins per user name or client before a lock (default {d.attempts})")
    s.add_argument("--signin-backoff", type=_positive(float), default=d.backoff_s, metavar="S",
                   help=f"the first lock, s; doubles with every further failure, up to {d.max_backoff_s:g} s (default {d.backoff_s:g})")
    s.add_argument("--signin-concurrency", type=_positive(int), default=DEFAULT_CONCURRENCY, metavar="N",
                   help=f"password (bcrypt) checks at once; more are refused at once with 503 (default {DEFAULT_CONCURRENCY})")
    s.add_argument("--session-idle", type=_positive(float), default=d.idle_s, metavar="S",
                   help=f"a session ends after this long without a request, s (default {d.idle_s:g}: 8 h)")
    s.add_argument("--session-max", type=_positive(float), default=d.max_age_s, metavar="S",
                   help=f"a session ends this long after its sign-in, s (default {d.max_age_s:g}: 7 days)")


def _positive(kind: type[int] | type[float]):
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number above 0")
        return value
    return parse


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address (waitress compares the peer's address with it)") from None


def start(store: SampleReader, inventory: Inventory, args: argparse.Namespace, **kwargs: Any) -> Any:
    """Serve the dashboard of `store` on `args.listen` in a thread, with users from `args.users` (or the environment)
    and reports from `args.reports_dir`; `kwargs` go to `create_app`. Returns the server: `close()` it."""
    from aifmon.dashboard.app import create_app, make_server
    from aifmon.dashboard.auth import load_users
    from aifmon.dashboard.signin import SignInPolicy

    users = load_users(args.users, concurrency=args.signin_concurrency)
    policy = SignInPolicy(attempts=args.signin_attempts, backoff_s=args.signin_backoff, idle_s=args.session_idle,
                          max_age_s=args.session_max, secure_cookie=args.secure_cookie)
    app = create_app(store, inventory, users=users, reports_dir=Path(args.reports_dir), signin=policy, **kwargs)
    # ValueError: refused beyond loopback without users (the message says what to do)
    with user_input(ValueError), user_input(OSError, about=f"cannot listen on {args.listen}"):
        server = make_server(app, args.listen, trusted_proxy=args.trusted_proxy)
    threading.Thread(target=server.run, name="dashboard", daemon=True).start()
    return server


def serve(args: argparse.Namespace) -> None:
    from aifmon.supervisor import wait_for_signal
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    with samples_and_rows(args) as store, closing(start(store, inventory, args, refresh_s=args.refresh)):
        print(f"aifmon: dashboard on http://{args.listen}/", file=sys.stderr, flush=True)
        wait_for_signal()
