"""Inventory loading and validation: the demo file, and bad files with messages a person can act on."""

import pytest

from aifmon.telemetry.inventory import ACCESS_MODES, InventoryError, load_inventory, nodes_of, parse_inventory
from tests.conftest import inventory_text


def test_demo_inventory_has_the_13_ai_factories_and_a_gigafactory_scenario():
    inv = load_inventory()
    live = inv.live_factories()
    assert len(live) == 13
    assert {f.country for f in live} == {"ES", "IT", "FI", "SE", "DE", "GR", "LU", "AT", "BG", "FR", "PL", "SI"}
    assert inv.illustrative and "illustrative" in inv.note.lower()
    giga = [f for f in inv.factories if f.kind == "gigafactory"]
    assert len(giga) == 1 and giga[0].planning_only
    assert giga[0].gpu_count == 100_000 and giga[0].power_cap_mw == 120
    assert {p.access_mode for p in inv.projects} == set(ACCESS_MODES)
    assert all(inv.projects_of(f.id) for f in live), "every live factory needs projects for its simulator"
    # every live factory has its own scrape target
    targets = [t for f in live for t in f.targets]
    assert len(targets) == len(set(targets)) == 13


def test_nodes_are_named_from_their_group():
    inv = parse_inventory(inventory_text(nodes=3), "x.yaml")
    names = [n.name for n in nodes_of(inv.factory("alpha"))]
    assert names == ["alphn0001", "alphn0002", "alphn0003"]
    assert inv.factory("alpha").gpu_count == 12


def _line(text: str, needle: str, nth: int = 1) -> str:
    """`bad.yaml:N:` for the line holding the nth occurrence of `needle`."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return f"bad.yaml:{lines[nth - 1]}:"


def _broken(old: str, new: str) -> str:
    text = inventory_text()
    assert old in text, old
    return text.replace(old, new, 1)


BAD_INPUTS = [
    # (description, file text, expected pieces of the message)
    ("YAML syntax", _broken("    country: DE", "    country: [DE"), ["bad.yaml:", "YAML syntax"]),
    ("empty file", "", ["bad.yaml:1:", "empty"]),
    ("top level is a list", "- a\n- b\n", ["bad.yaml:1:", "mapping"]),
    ("unknown key", _UNKNOWN := _broken("    design_pue: 1.2", "    design_pue: 1.2\n    desing_pue: 1.3"),
     [_line(_UNKNOWN, "desing_pue"), "factories[0].desing_pue", "unknown key"]),
    ("missing key", _broken("    power_cap_mw: 0.015\n", ""), ["factories[0].power_cap_mw", "required key is missing"]),
    ("wrong type", _TYPE := _broken("            count: 4", "            count: many"),
     [_line(_TYPE, "count: many"), "factories[0].systems[0].node_groups[0].count", "integer", "'many'"]),
    ("negative cap", _NEG := _broken("power_cap_mw: 0.015", "power_cap_mw: -5"),
     [_line(_NEG, "power_cap_mw: -5"), "factories[0].power_cap_mw", "greater than 0", "-5"]),
    ("PUE below 1", _broken("    design_pue: 1.2", "    design_pue: 0.8"), ["factories[0].design_pue", "greater than or equal to 1"]),
    ("unknown access mode", _broken("access_mode: Large Scale", "access_mode: Huge Scale"), ["projects[0].access_mode", "'Huge Scale'", "Fast Lane"]),
    ("unknown sector", _broken("sector: Health & Life Sciences", "sector: Gaming"), ["projects[0].sector", "'Gaming'"]),
    ("unknown GPU model", _broken("gpu_model: H100-SXM5-80GB", "gpu_model: H900"), ["node_groups[0].gpu_model", "unknown GPU model", "H100-SXM5-80GB"]),
    ("unknown country", _broken("    country: DE", "    country: XX"), ["factories[0].country", "no carbon intensity", "'XX'"]),
    ("duplicate factory id", _broken("  - id: beta\n", "  - id: alpha\n"), ["factories[1].id", "duplicate factory id 'alpha'", "first at factories[0].id"]),
    ("duplicate YAML key", _DUP := _broken("    design_pue: 1.2", "    design_pue: 1.2\n    design_pue: 1.3"),
     [_line(_DUP, "design_pue", 2), "factories[0].design_pue", "duplicate key"]),
    ("project of an unknown factory", _broken("    factory: beta", "    factory: gamma"), ["projects[2].factory", "unknown factory 'gamma'"]),
    ("bad target", _broken("    energy_price_eur_per_kwh: 0.15", '    energy_price_eur_per_kwh: 0.15\n    targets: ["no-port"]'), ["factories[0].targets", "not host:port"]),
    ("bad id", _broken("  - id: alpha-train", "  - id: Alpha Train"), ["projects[0].id", "pattern"]),
]


@pytest.mark.parametrize("what,text,expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inventory_is_refused_with_file_line_path_and_expectation(what, text, expected):
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "bad.yaml")
    message = str(err.value)
    for piece in expected:
        assert piece in message, f"{what}: {piece!r} not in:\n{message}"


def test_every_problem_is_reported_at_once():
    text = _broken("power_cap_mw: 0.015", "power_cap_mw: -5").replace("gpu_model: A100-SXM4-40GB", "gpu_model: X")
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "bad.yaml")
    assert len(err.value.problems) == 2


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InventoryError, match=r"nope\.yaml: cannot read"):
        load_inventory(tmp_path / "nope.yaml")
