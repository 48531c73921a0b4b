"""`aifmon inventory show`: the site inventory, validated."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from aifmon.cli.arguments import Commands, command, group


def register(commands: Commands) -> None:
    inv = group(commands, "inventory", "site inventory", "ACTION")
    c = command(inv, "show", show, "validate and show the site inventory", store=False)
    c.add_argument("--format", choices=["table", "json"], default="table")


def show(args: argparse.Namespace) -> None:
    from aifmon.telemetry.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    if args.format == "json":
        print(json.dumps({
            "name": inventory.name, "illustrative": inventory.illustrative, "note": inventory.note, "source": inventory.source,
            "factories": [f.model_dump() | {"gpus": f.gpu_count, "nodes": f.node_count} for f in inventory.factories],
            "projects": [p.model_dump() for p in inventory.projects],
        }, indent=2))
        return
    from aifmon.rollups.report_format import text_table

    rows = [[f.id, f.name, f.country, f.kind + (" (planning)" if f.planning_only else ""), f"{f.node_count:,}", f"{f.gpu_count:,}",
             f"{f.power_cap_mw:g}", f"{f.design_pue:.2f}", f"{f.energy_price_eur_per_kwh:.3f}", ", ".join(f.targets) or "-"]
            for f in inventory.factories]
    print(f"{inventory.name}  ({inventory.source})")
    if inventory.illustrative:
        print(f"ILLUSTRATIVE: {inventory.note}")
    print(text_table(["factory", "name", "country", "kind", "nodes", "GPUs", "cap MW", "PUE", "EUR/kWh", "targets"], rows))
    modes = Counter(p.access_mode for p in inventory.projects)
    print(f"\n{len(inventory.projects)} projects; by access mode: " + ", ".join(f"{m} {n}" for m, n in sorted(modes.items())))
