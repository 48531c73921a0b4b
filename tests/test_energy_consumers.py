"""Three consumers of the same energy agree with a truth worked out by hand: `aifmon rollup energy --by project`,
the dashboard's Projects page and the monthly report's summary.json, on the month of tests/hand_month.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aifmon.dashboard.accounting import month_energy
from aifmon.dashboard.pages.projects import project_rows
from aifmon.rollups.monthly_report import build_monthly_report, write_monthly_report
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.inventory import load_inventory
from tests.conftest import inventory_text
from tests.hand_month import MONTH, REPORT_AT_MS, truth, write_store

ROOT = Path(__file__).resolve().parent.parent
PRICE_EUR_PER_KWH = 0.15  # both factories of the test inventory
CONSUMERS = ("rollup energy", "Projects page", "summary.json")


@pytest.fixture(scope="module")
def rows_by_consumer(tmp_path_factory) -> dict[str, dict[str, dict]]:
    """consumer -> project -> its row (energy_kwh, gpu_hours, it_kwh, cost_eur, ...)."""
    tmp = tmp_path_factory.mktemp("consumers")
    (tmp / "inventory.yaml").write_text(inventory_text())
    inventory = load_inventory(tmp / "inventory.yaml")
    path = tmp / "month.duckdb"
    write_store(path, inventory)
    cli = subprocess.run([sys.executable, "-m", "aifmon", "--quiet", "rollup", "energy", "--inventory", str(tmp / "inventory.yaml"),
                          "--store", f"duckdb:///{path}", "--start", "2025-03-01", "--end", "2025-04-01", "--by", "project",
                          "--format", "json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr
    store = DuckDBStore(path, read_only=True)
    try:
        page = project_rows(month_energy(store, inventory, MONTH), inventory).to_dict("records")
        report = build_monthly_report(store, inventory, MONTH, now_ms=REPORT_AT_MS)
    finally:
        store.close()
    write_monthly_report(report, tmp / "report", pdf=False)
    summary = json.loads((tmp / "report" / "summary.json").read_text())["project"]
    return {consumer: {r["project"]: r for r in rows}
            for consumer, rows in zip(CONSUMERS, (json.loads(cli.stdout)["rows"], page, summary))}


@pytest.mark.parametrize("consumer", CONSUMERS)
def test_energy_per_project_is_the_hand_computed_truth(rows_by_consumer, consumer):
    rows = rows_by_consumer[consumer]
    expected = truth()
    assert {p: r["energy_kwh"] for p, r in rows.items()} == pytest.approx(expected.energy_kwh, rel=1e-9)
    assert {p: r["gpu_hours"] for p, r in rows.items()} == pytest.approx({**expected.gpu_hours, "(unallocated)": 0.0}, rel=1e-9)
    it_kwh = {p: expected.energy_kwh[p] + expected.node_other_kwh[p] for p in expected.energy_kwh}
    assert {p: r["it_kwh"] for p, r in rows.items()} == pytest.approx(it_kwh, rel=1e-9)
    assert {p: r["cost_eur"] for p, r in rows.items()} == pytest.approx({p: kwh * PRICE_EUR_PER_KWH for p, kwh in it_kwh.items()},
                                                                        rel=1e-9)


def test_the_consumers_agree_on_co2e(rows_by_consumer):
    """CO2e is each factory's grid intensity times IT energy: the same figure from each."""
    co2e = [{p: r["co2e_kg"] for p, r in rows.items()} for rows in rows_by_consumer.values()]
    assert co2e[1] == pytest.approx(co2e[0], rel=1e-9) and co2e[2] == pytest.approx(co2e[0], rel=1e-9)
