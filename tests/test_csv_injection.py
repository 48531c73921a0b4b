"""CSV formula injection: every CSV aifmon writes (the Projects page's download, the monthly report's
summary.csv, `rollup energy --format csv`) carries a text cell that a spreadsheet would run as a formula
with a single quote in front (OWASP), and keeps numbers, negative ones included, as numbers."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import dash
import pandas as pd
import pytest

from aifmon.dashboard.pages import PageContext, projects
from aifmon.rollups.energy import EnergyRollup
from aifmon.rollups.monthly_report import build_monthly_report, write_monthly_report
from aifmon.rollups.report_format import format_energy_rollup
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.csv_cells import csv_safe, neutralise_cell
from aifmon.telemetry.inventory import parse_inventory
from tests.conftest import inventory_text
from tests.hand_month import MONTH, REPORT_AT_MS, write_store

HOSTILE = ["=cmd|' /C calc'!A0", '=HYPERLINK("http://x")', "+1", "@SUM(1)", "-2+3", "\tpayload"]
SAFE = ["'" + v for v in HOSTILE]


def csv_rows(text: str) -> list[dict[str, str]]:
    """The cells of a CSV file, as text, exactly as a spreadsheet program would read them."""
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_text_cells_are_neutralised_and_numbers_are_not():
    assert [neutralise_cell(v) for v in HOSTILE + ["\rpayload"]] == SAFE + ["'\rpayload"]
    assert [neutralise_cell(v) for v in ("alpha-train", "(unallocated)", "a=b", "", -2.5, 3)] == ["alpha-train", "(unallocated)", "a=b", "", -2.5, 3]
    frame = pd.DataFrame({"job": HOSTILE, "energy_kwh": [-1.5] * len(HOSTILE), "gpus": range(len(HOSTILE))})
    safe = csv_safe(frame)
    assert safe["job"].tolist() == SAFE and frame["job"].tolist() == HOSTILE  # a copy: the caller's frame is unchanged
    assert safe["energy_kwh"].dtype == "float64" and safe["gpus"].dtype == "int64"


def test_rollup_energy_csv_neutralises_job_labels_and_keeps_negative_energy_a_number():
    rows = pd.DataFrame({"job": HOSTILE, "energy_kwh": [-0.25] + [1.0] * (len(HOSTILE) - 1), "gpu_hours": 2.0})
    rollup = EnergyRollup(rows=rows, by="job", start_ms=0, end_ms=3_600_000, coverage=1.0, carbon_source="=carbon", total_energy_kwh=5.75)
    cells = csv_rows(format_energy_rollup(rollup, "csv"))
    assert [c["job"] for c in cells] == SAFE
    assert cells[0]["energy_kwh"] == "-0.250000" and float(cells[0]["energy_kwh"]) == -0.25
    assert {c["carbon_intensity_source"] for c in cells} == {"'=carbon"}  # every text column, not only the key


@pytest.fixture(scope="module")
def hostile_month(tmp_path_factory) -> tuple[Path, str]:
    """tests/hand_month.py's store, with an inventory whose project names are formulas."""
    names = {"Alpha training": HOSTILE[0], "Alpha playground": HOSTILE[1], "Beta science": HOSTILE[2]}
    text = inventory_text()
    for name, hostile in names.items():
        text = text.replace(f"name: {name}", f"name: '{hostile.replace(chr(39), chr(39) * 2)}'")
    path = tmp_path_factory.mktemp("csv") / "month.duckdb"
    write_store(path, parse_inventory(text, "hostile.yaml"))
    return path, text


def test_monthly_summary_csv_neutralises_project_labels(hostile_month, tmp_path):
    path, text = hostile_month
    store = DuckDBStore(path, read_only=True)
    report = build_monthly_report(store, parse_inventory(text, "hostile.yaml"), MONTH, now_ms=REPORT_AT_MS)
    store.close()
    # Project labels come from the exporters' job metadata, so any text can arrive; one figure made negative.
    real = report.by["project"]
    rows = real.rows.iloc[[i % len(real.rows) for i in range(len(HOSTILE))]].reset_index(drop=True)
    rows = rows.assign(project=HOSTILE, energy_kwh=[-1.25] + rows["energy_kwh"].tolist()[1:])
    report.by["project"] = dataclasses.replace(real, rows=rows)
    write_monthly_report(report, tmp_path, pdf=False)
    cells = [c for c in csv_rows((tmp_path / "summary.csv").read_text()) if c["scope"] == "project"]
    assert [c["name"] for c in cells] == SAFE
    assert cells[0]["energy_kwh"] == "-1.250000" and float(cells[0]["energy_kwh"]) == -1.25


def test_projects_page_csv_neutralises_project_names(hostile_month, tmp_path):
    path, text = hostile_month
    store = DuckDBStore(path, read_only=True)
    app = dash.Dash(__name__)
    projects.register(app, PageContext(store, parse_inventory(text, "hostile.yaml"), 10.0, tmp_path, tmp_path / "alerts.json"))
    download = app.callback_map[projects.PREFIX + "csv.data"]["callback"].__wrapped__
    sent = download(1, MONTH)
    store.close()
    cells = {c["project"]: c for c in csv_rows(sent["content"])}
    assert [cells[p]["name"] for p in ("alpha-train", "alpha-play", "beta-science")] == SAFE[:3]
    assert float(cells["alpha-train"]["energy_kwh"]) > 0  # figures stay numbers
