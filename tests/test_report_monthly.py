"""The monthly report: figures from hourly rollups equal a direct rollup; report.html is self-contained;
report.pdf (Chromium print-to-PDF) opens and has a page per section; summary.csv and summary.json."""

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime

import pandas as pd
import pytest

from aifmon.exporters.backfill import backfill
from aifmon.exporters.simulation import FactorySimulation
from aifmon.rollups.efficiency import Measurement, Trace, evaluate, record_efficiency
from aifmon.rollups.energy import energy_rollup
from aifmon.rollups.hourly import HourlyRollups
from aifmon.rollups.monthly_report import SECTIONS, build_monthly_report, month_range, write_monthly_report
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.inventory import parse_inventory
from tests.conftest import inventory_text, require_binary
from tests.golden_files import assert_same_json
from tests.hand_month import MONTH, REPORT_AT_MS, write_store

T = int(datetime(2025, 3, 10, tzinfo=UTC).timestamp())  # s


@pytest.fixture(scope="module")
def month_store(tmp_path_factory):
    inv = parse_inventory(inventory_text(), "small-inventory.yaml")
    path = tmp_path_factory.mktemp("report") / "r.duckdb"
    store = DuckDBStore(path)
    for f in inv.live_factories():
        backfill(store, FactorySimulation(f, inv.projects_of(f.id), epoch=T - 7200, step_s=5.0), T - 7200, T + 3 * 3600, 60.0)
    # hours up to T + 2 h are rolled up; the last one is left for the report to compute from samples
    HourlyRollups(store, inv).catch_up(now_ms=(T + 2 * 3600) * 1000 + 600_000)
    core = Trace(average_w=40_000.0, energy_j=40_000.0 * 200, meters=16, min_readings=200, uncovered_s=0.0, integrating=False)
    record_efficiency(store, evaluate(Measurement(2.4e6, T * 1000, T * 1000 + 200_000, core, 16, 16, "all-estimated", 2.0)),
                      "alpha", "alpha-gpu")
    yield store, inv, path
    store.close()


def test_month_range():
    assert month_range("2025-12") == (int(datetime(2025, 12, 1, tzinfo=UTC).timestamp() * 1000),
                                       int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000))
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_range("March")


def test_report_figures_equal_a_direct_rollup_and_reconcile(month_store):
    store, inv, _ = month_store
    steps = []
    r = build_monthly_report(store, inv, "2025-03", now_ms=(T + 4 * 3600) * 1000, progress=steps.append)
    assert r.provenance["hours_computed_from_samples"] == 1 and r.provenance["hours_in_report"] == 5
    assert "hour 2025-03-10T02:00:00Z computed from samples" in steps
    direct = energy_rollup(store, inv, (T - 7200) * 1000, (T + 3 * 3600) * 1000, by="project").rows.set_index("project")
    by_project = r.by["project"].rows.set_index("project")
    for col in ("energy_kwh", "node_other_kwh", "gpu_hours", "cost_eur", "co2e_kg"):
        assert by_project[col].sort_index().to_numpy() == pytest.approx(direct[col].sort_index().to_numpy(), rel=1e-9), col
    total = r.by["total"].rows.iloc[0]
    assert r.by["factory"].rows["it_kwh"].sum() == pytest.approx(total["it_kwh"], rel=1e-12)
    assert 1.1 < total["pue"] < 1.3  # the simulator's facility meter runs at the design PUE 1.2 +- 0.03
    assert r.provenance["coverage"] == pytest.approx(1 - 60 / (5 * 3600))  # the samples stop a minute before the last hour ends
    assert r.provenance["inventory_hash"].startswith("sha256:") and "Our World in Data" in r.provenance["carbon_intensity_source"]
    assert "alpha-gpu" in r.league["system"].tolist()
    assert dict(zip(r.daily_power["factory"], r.daily_power["cap_mw"])) == {"alpha": 0.015, "beta": 0.010}  # the inventory's caps


def test_report_files_html_pdf_csv_json(month_store, tmp_path):
    store, inv, _ = month_store
    require_binary("chromium")
    pdftotext = require_binary("pdftotext")
    r = build_monthly_report(store, inv, "2025-03", now_ms=(T + 4 * 3600) * 1000)
    paths = write_monthly_report(r, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["report.html", "report.pdf", "summary.csv", "summary.json"]

    page = (tmp_path / "out" / "report.html").read_text()
    tags = re.findall(r"<script\b[^>]*>", page)
    assert tags and not any("src" in t for t in tags)  # plotly.js is inline: the file opens offline, nothing is fetched
    assert re.search(r'<link\b[^>]*href="http', page) is None
    assert page.count("Plotly.newPlot") >= 6

    text = subprocess.run([pdftotext, "-layout", str(tmp_path / "out" / "report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    pages = text.split("\f")
    found = [next((i for i, p in enumerate(pages) if name in p), None) for name in SECTIONS]
    assert None not in found, dict(zip(SECTIONS, found))
    assert found == sorted(found) and len(set(found)) == len(SECTIONS)  # each section starts its own page
    assert "Our World in Data" in text and "sha256:" in text

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["provenance"]["month"] == "2025-03" and {f["factory"] for f in summary["factory"]} == {"alpha", "beta"}
    assert summary["eurohpc"]["energy_kwh"] == pytest.approx(r.by["total"].rows.iloc[0]["energy_kwh"])
    csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert set(csv["scope"]) == {"EuroHPC", "factory", "access_mode", "sector", "project"}
    assert csv["carbon_intensity_source"].str.contains("2023").all() and csv["inventory_hash"].nunique() == 1


def test_report_command_writes_the_files_with_a_progress_bar(month_store, tmp_path):
    _, _, path = month_store
    copy = tmp_path / "copy.duckdb"
    shutil.copy(path, copy)  # the fixture holds the original open for writing; its recent writes are in the WAL
    if path.with_name(path.name + ".wal").exists():
        shutil.copy(path.with_name(path.name + ".wal"), copy.with_name(copy.name + ".wal"))
    inv = tmp_path / "inv.yaml"
    inv.write_text(inventory_text())
    result = subprocess.run([sys.executable, "-m", "aifmon", "report", "monthly", "--month", "2025-03",
                             "--out", str(tmp_path / "cli"), "--no-pdf", "--inventory", str(inv), "--store", f"duckdb:///{copy}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "report 2025-03" in result.stderr and "step" in result.stderr  # tqdm's bar
    assert (tmp_path / "cli" / "summary.json").exists() and "wrote" in result.stdout


def test_summary_json_is_the_golden_file(tmp_path):
    """summary.json of tests/hand_month.py's month, every figure and label (AIFMON_UPDATE_GOLDEN=1 rewrites the file)."""
    inventory = parse_inventory(inventory_text(), "small-inventory.yaml")
    write_store(tmp_path / "month.duckdb", inventory)
    store = DuckDBStore(tmp_path / "month.duckdb", read_only=True)
    report = build_monthly_report(store, inventory, MONTH, now_ms=REPORT_AT_MS)
    store.close()
    write_monthly_report(report, tmp_path / "out", pdf=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # the one figure that is not the store's, the month's or the inventory's: the version installed here
    assert summary["provenance"]["software_version"].startswith("aifmon ")
    summary["provenance"]["software_version"] = "aifmon <version>"
    assert_same_json("monthly_summary.json", summary)
