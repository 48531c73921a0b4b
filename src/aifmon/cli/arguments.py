"""What the command groups share: how a command is declared, with the options most of them take."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from aifmon.telemetry.config import DEFAULT_STORE_URL

if TYPE_CHECKING:
    from aifmon.stores.store import SampleReader

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


def add_rows_store(c: argparse.ArgumentParser) -> None:
    """`--rows-store`, for a command that reads the ledger's hourly rows beside a --store that keeps none."""
    c.add_argument("--rows-store", help="where the hourly rollup rows are kept when --store keeps none (a PromQL server): "
                                        "postgresql://host:5432/database, where `rollup schedule --rows-store` writes them")


@contextmanager
def samples_and_rows(args: argparse.Namespace, read_only: bool = True) -> Iterator[SampleReader]:
    """The samples store `--store` names, with the rows of `--rows-store` beside it where one is given."""
    from aifmon.stores.split_store import SplitStore
    from aifmon.stores.store import RowStore, SampleReader, open_store

    with open_store(args.store, read_only=read_only, needs=SampleReader) as samples:
        if not args.rows_store:
            yield samples
            return
        with open_store(args.rows_store, needs=RowStore) as rows:
            yield SplitStore(samples, rows, since_ms=int(time.time()) // 3600 * 3_600_000)
