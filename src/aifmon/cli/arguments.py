"""What the command groups share: how a command is declared, with the options most of them take."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from aifmon.telemetry.config import DEFAULT_STORE_URL

Commands = argparse._SubParsersAction
"""Where a group adds its commands (what `add_subparsers()` returns)."""

Run = Callable[[argparse.Namespace], int | None]
"""A command's run function: the parsed arguments in, an exit status (None: 0) out."""


def command(parent: Commands, name: str, run: Run, help: str, store: bool = True) -> argparse.ArgumentParser:
    """Add command `name` that calls `run`, with `--inventory` and, where it reads or writes data, `--store`."""
    c = parent.add_parser(name, help=help, description=help)
    c.add_argument("--inventory", help="site inventory YAML (default: the demo inventory)")
    if store:
        c.add_argument("--store", default=DEFAULT_STORE_URL, help=f"store URL (default {DEFAULT_STORE_URL})")
    c.set_defaults(run=run)
    return c


def group(sub: Commands, name: str, help: str, metavar: str) -> Commands:
    """Add command group `name` (e.g. `aifmon rollup ...`); returns where its commands go."""
    return sub.add_parser(name, help=help).add_subparsers(required=True, metavar=metavar)
