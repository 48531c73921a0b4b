"""`aifmon efficiency hpl`: Green500-style GFlops/W of an HPL run, with the EEHPC level it qualifies for."""

from __future__ import annotations

import argparse

from aifmon.cli.arguments import Commands, command, group
from aifmon.telemetry.errors import UserError, user_input


def register(commands: Commands) -> None:
    eff = group(commands, "efficiency", "Green500-style energy efficiency", "WHAT")
    c = command(eff, "hpl", hpl, "GFlops/W of an HPL run over its core phase, with the EEHPC v2.0 level it qualifies for")
    rmax = c.add_mutually_exclusive_group(required=True)
    rmax.add_argument("--hpl-output", help="HPL output file: Rmax and the core phase (HPL_pdgesv start and end times)")
    rmax.add_argument("--rmax-gflops", type=float, help="Rmax, GFlop/s")
    c.add_argument("--hpl-timezone", default="UTC", help="time zone of the times in the HPL output (default UTC)")
    c.add_argument("--core-start", help="core phase start (default: from the HPL output)")
    c.add_argument("--core-end", help="core phase end (default: from the HPL output)")
    c.add_argument("--trace", help="OpenMetrics file with the power or energy trace (default: read --store)")
    c.add_argument("--metric", default="aif_node_power_watts", help="power (W) or energy counter (J, *_total) metric of the trace")
    c.add_argument("--match", action="append", default=[], metavar="LABEL=VALUE", help="keep series with this label (repeatable)")
    c.add_argument("--nodes", help="measured nodes, Slurm host list (e.g. node[001-016])")
    c.add_argument("--measured-nodes", type=int, help="nodes the trace measures (default: its number of series)")
    c.add_argument("--total-nodes", type=int, help="nodes of the whole machine (default: the --system's in the inventory)")
    c.add_argument("--system", help="system id from the inventory (node count; name in the league and --record)")
    c.add_argument("--subsystems", choices=["gpu-boards", "compute", "all-estimated", "all-measured"],
                   help="what the trace measures (default: gpu-boards for aif_gpu_* metrics, else compute)")
    c.add_argument("--meter-accuracy-pct", type=float, help="meter accuracy, %% (Level 2 needs 2, Level 3 1)")
    c.add_argument("--run-start", help="whole HPL run start, for the full-run average (Level 2)")
    c.add_argument("--run-end")
    c.add_argument("--idle-start", help="an idle window before or after the run, for idle power (Level 2)")
    c.add_argument("--idle-end")
    c.add_argument("--record", action="store_true", help="store the result for the monthly report's efficiency league")
    c.add_argument("--format", choices=["table", "json"], default="table")


def hpl(args: argparse.Namespace) -> None:
    from aifmon.rollups.efficiency import format_efficiency, measure_hpl, read_hpl_file, record_efficiency, trace_store
    from aifmon.rollups.slurm_accounting import expand_nodelist
    from aifmon.stores.store import RowWriter, open_store
    from aifmon.telemetry.config import parse_time
    from aifmon.telemetry.exposition import ExpositionError
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    run = read_hpl_file(args.hpl_output, args.hpl_timezone) if args.hpl_output else None
    start = parse_time(args.core_start) if args.core_start else run and run.core_start_ms
    end = parse_time(args.core_end) if args.core_end else run and run.core_end_ms
    if not start or not end:
        raise UserError("no core phase: give --core-start and --core-end (the HPL output has no HPL_pdgesv() times)")
    system = next((s for f in inventory.factories for s in f.systems if s.id == args.system), None) if args.system else None
    if args.system and system is None:
        raise UserError(f"no system {args.system!r} in {inventory.source}")
    total = args.total_nodes or (system.node_count if system else None)
    if not total:
        raise UserError("give --total-nodes or --system (the whole machine's node count scales the measured power)")
    match = dict(m.split("=", 1) for m in args.match if "=" in m)
    windows = {w: (parse_time(getattr(args, f"{w}_start")), parse_time(getattr(args, f"{w}_end")))
               for w in ("run", "idle") if getattr(args, f"{w}_start") and getattr(args, f"{w}_end")}
    nodes = expand_nodelist(args.nodes) if args.nodes else None
    with user_input(ExpositionError), user_input(OSError, about=f"cannot read {args.trace}"), \
            trace_store(args.trace, args.store) as store:
        result = measure_hpl(store, run.rmax_gflops if run else args.rmax_gflops, start, end, total, args.metric, match or None,
                             nodes, args.measured_nodes, args.subsystems, args.meter_accuracy_pct, windows.get("run"), windows.get("idle"))
    if args.record:  # into --store, also when the trace came from a file
        factory = next((f.id for f in inventory.factories if system in f.systems), "")
        with open_store(args.store, needs=RowWriter) as rows:
            record_efficiency(rows, result, factory, args.system or "measured system")
    print(format_efficiency(result, args.format))
