"""The `aifmon` command: parses arguments and wires the parts together, one module per command group.

Each group module declares its commands in `register` and runs them in its run functions, which import what
they use: `aifmon --help` and the commands that touch no data start without pandas, DuckDB or Dash.
Errors: a `UserError` (bad input) prints its message and exits 2, a `StoreError` (a store that failed) exits 1,
Ctrl-C exits 130, a command run on the node agent's install that needs `aifmon[site]` exits 1 saying so; anything else is a fault in aifmon and ends in a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from aifmon.cli import alerts, dashboard, deploy, efficiency, exporter, ingest, inventory, report, rollup, up
from aifmon.stores.store import StoreError
from aifmon.telemetry.errors import UserError

SITE_MODULES = frozenset({"dash", "plotly", "pandas", "duckdb", "pydantic", "pyarrow", "influxdb_client",
                          "prometheus_client", "tqdm", "waitress", "psycopg"})
"""What `aifmon[site]` brings and a compute node's install (the node agent alone) lacks."""

GROUPS = (inventory, exporter, ingest, deploy, rollup, efficiency, report, alerts, dashboard, up)
"""In the order `aifmon --help` lists them."""


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` (default: the process's arguments) names; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.run(args) or 0
    except UserError as e:
        print(f"aifmon: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"aifmon: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:  # a command of the monitoring hosts run on a node agent's install
        if (e.name or "").split(".")[0] not in SITE_MODULES:
            raise
        print(f"aifmon: this command needs {e.name}, which the node agent's install lacks: pip install 'aifmon[site]'",
              file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every group's commands under one parser."""
    p = argparse.ArgumentParser(prog="aifmon", description="Energy and power monitoring for GPU supercomputers.")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    commands = p.add_subparsers(required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return p
