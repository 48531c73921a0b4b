"""The monthly report: figures from hourly rollups equal a direct rollup; the executive summary is the hand-computed
month of tests/hand_month.py against its previous month, for a whole month and for one to date with hours
missing; report.html is self-contained; report.pdf (Chromium print-to-PDF) opens and has a page per section;
summary.csv and summary.json."""

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
from aifmon.rollups.hourly import HourlyRollups
from aifmon.rollups.ledger import energy_rollup, month_range, previous_month
from aifmon.rollups.monthly_report import SECTIONS, build_monthly_report, write_monthly_report
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.inventory import carbon_intensity_table, parse_inventory
from tests.conftest import inventory_text, require_binary
from tests.golden_files import assert_same_json
from tests.hand_month import (
    ALLOCATION_MWH,
    ALPHA_FACILITY_W,
    MONTH,
    NODE_POWER_W,
    PREVIOUS_FACILITY_W,
    PREVIOUS_GPU_W,
    PREVIOUS_MISSED,
    PREVIOUS_MONTH,
    PREVIOUS_NODE_W,
    REPORT_AT_MS,
    START_MS,
    truth,
    with_allocations,
    write_store,
)

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
    assert previous_month("2025-01") == "2024-12" and previous_month("2025-03") == "2025-02"
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_range("March")


def test_report_figures_equal_a_direct_rollup_and_reconcile(month_store):
    store, inv, _ = month_store
    steps = []
    r = build_monthly_report(store, inv, "2025-03", now_ms=(T + 4 * 3600) * 1000, progress=steps.append)
    # the ledger's rule: rows for settled hours (ended 3 h before now or more), samples for the two after
    assert r.provenance["hours_computed_from_samples"] == 2 and r.provenance["hours_with_data"] == 5
    assert "2025-03-10T02:00:00Z to 2025-03-10T03:00:00Z computed from samples" in steps
    direct = energy_rollup(store, inv, (T - 7200) * 1000, (T + 3 * 3600) * 1000, by="project").rows.set_index("project")
    by_project = r.by["project"].rows.set_index("project")
    for col in ("energy_kwh", "node_other_kwh", "gpu_hours", "cost_eur", "co2e_kg"):
        assert by_project[col].sort_index().to_numpy() == pytest.approx(direct[col].sort_index().to_numpy(), rel=1e-9), col
    total = r.by["total"].rows.iloc[0]
    assert r.by["factory"].rows["it_kwh"].sum() == pytest.approx(total["it_kwh"], rel=1e-12)
    assert 1.1 < total["pue"] < 1.3  # the simulator's facility meter runs at the design PUE 1.2 +- 0.03
    # the samples stop a minute before the last hour ends; the month's elapsed GPU-time is 9 days and 3 hours
    assert r.provenance["coverage_of_hours_with_data"] == pytest.approx(1 - 60 / (5 * 3600))
    assert r.provenance["hours_elapsed"] == 9 * 24 + 3 and r.provenance["to_date"] and not r.provenance["settled"]
    assert r.provenance["coverage"] == pytest.approx((5 * 3600 - 60) / ((9 * 24 + 3) * 3600))
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
    assert page.count("Plotly.newPlot") >= 8 and page.count("function(") > 1000  # eight figures; plotly.js itself is in the page

    text = subprocess.run([pdftotext, "-layout", str(tmp_path / "out" / "report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    pages = text.split("\f")
    assert "Executive summary" in pages[0] and "to date" in pages[0]  # the summary first; the month is not over at T + 4 h
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


@pytest.fixture(scope="module")
def hand_month(tmp_path_factory):
    """tests/hand_month.py's store with February's hours, and the test inventory with the projects' allocations."""
    inventory = parse_inventory(with_allocations(inventory_text()), "small-inventory.yaml")
    path = tmp_path_factory.mktemp("hand") / "month.duckdb"
    write_store(path, inventory, previous_month=True)
    store = DuckDBStore(path, read_only=True)
    yield store, inventory
    store.close()


KWH = 3.6e6  # J
GRID = {c: carbon_intensity_table()[c].gco2e_per_kwh / 1000.0 for c in ("DE", "FI")}  # kg CO2e/kWh: alpha is in DE, beta in FI
PRICE = 0.15  # EUR/kWh, both factories
HOURS = 3  # March's hours with data, both factories
ALPHA_NODES_W = sum(w for (f, _, _), w in NODE_POWER_W.items() if f == "alpha")
BETA_NODES_W = NODE_POWER_W[("beta", "beta-gpu", "betan0001")]
PREV_HOURS = 2


def test_executive_summary_is_the_hand_computed_month_against_february(hand_month):
    store, inventory = hand_month
    r = build_monthly_report(store, inventory, MONTH, now_ms=REPORT_AT_MS)
    s = r.summary
    scopes = {x["name"]: x for x in s["scopes"]}
    alpha, beta, total = scopes["alpha"], scopes["beta"], scopes["EuroHPC"]
    # March: 3 hours of both factories' node power; February: 2 hours of alphn0001 only
    it = {"alpha": ALPHA_NODES_W * HOURS / 1000, "beta": BETA_NODES_W * HOURS / 1000}
    prev_it = PREVIOUS_NODE_W * PREV_HOURS / 1000
    assert alpha["it_kwh"] == pytest.approx(it["alpha"]) and alpha["it_kwh_previous"] == pytest.approx(prev_it)
    assert alpha["it_kwh_change"] == pytest.approx(it["alpha"] / prev_it - 1)
    assert alpha["cost_eur"] == pytest.approx(it["alpha"] * PRICE) and alpha["cost_eur_previous"] == pytest.approx(prev_it * PRICE)
    assert alpha["co2e_kg"] == pytest.approx(it["alpha"] * GRID["DE"]) and alpha["co2e_kg_previous"] == pytest.approx(prev_it * GRID["DE"])
    assert alpha["pue"] == pytest.approx(ALPHA_FACILITY_W / ALPHA_NODES_W)
    assert alpha["pue_change"] == pytest.approx(ALPHA_FACILITY_W / ALPHA_NODES_W - PREVIOUS_FACILITY_W / PREVIOUS_NODE_W)
    # the busiest hour: alpha's facility meter; beta has none, so its IT power x the design PUE 1.2; caps 15 and 10 kW
    assert alpha["peak_mw"] == pytest.approx(ALPHA_FACILITY_W / 1e6) and alpha["peak_share_of_cap"] == pytest.approx(4000 / 15000)
    assert alpha["peak_share_of_cap_change"] == pytest.approx(4000 / 15000 - PREVIOUS_FACILITY_W / 15000)
    assert beta["peak_mw"] == pytest.approx(BETA_NODES_W * 1.2 / 1e6) and beta["peak_share_of_cap"] == pytest.approx(1320 / 10000)
    # beta reported nothing in February: no previous figure, no change
    assert beta["it_kwh"] == pytest.approx(it["beta"]) and beta["it_kwh_previous"] is None and beta["it_kwh_change"] is None
    assert beta["pue"] is None and beta["peak_share_of_cap_change"] is None
    march = it["alpha"] + it["beta"]
    assert total["it_kwh"] == pytest.approx(march) and total["it_kwh_change"] == pytest.approx(march / prev_it - 1)
    assert total["co2e_kg"] == pytest.approx(it["alpha"] * GRID["DE"] + it["beta"] * GRID["FI"])
    assert total["co2e_kg_change"] == pytest.approx((it["alpha"] * GRID["DE"] + it["beta"] * GRID["FI"]) / (prev_it * GRID["DE"]) - 1)

    # allocations: GPU energy against allocation_mwh; alpha-train's February is job 091's 500 W for 2 hours
    projects = {p["project"]: p for p in s["projects"]}
    assert set(projects) == set(ALLOCATION_MWH)  # beta-science has none
    train = truth().energy_kwh["alpha-train"] / (ALLOCATION_MWH["alpha-train"] * 1000)
    assert projects["alpha-train"]["share"] == pytest.approx(train) and projects["alpha-train"]["named"] and train > 0.85
    assert projects["alpha-train"]["share_previous"] == pytest.approx(PREVIOUS_GPU_W[0] * PREV_HOURS / 1000 / 1.5)
    assert projects["alpha-play"]["share"] == pytest.approx(truth().energy_kwh["alpha-play"] / 2.0) and not projects["alpha-play"]["named"]
    assert [p["project"] for p in s["projects"]] == ["alpha-train", "alpha-play"]  # most used first

    # averages over the hours with data, not the month's 744
    factory = r.by["factory"].rows.set_index("factory")
    assert factory.loc["alpha", "avg_power_kw"] == pytest.approx(ALPHA_NODES_W / 1000) and factory.loc["alpha", "hours_with_data"] == HOURS
    assert factory.loc["beta", "avg_power_kw"] == pytest.approx(BETA_NODES_W / 1000)
    assert r.by["total"].rows.iloc[0]["avg_power_kw"] == pytest.approx(march / HOURS)
    assert r.by["project"].rows.set_index("project").loc["alpha-train", "avg_power_kw"] == pytest.approx(
        (truth().energy_kwh["alpha-train"] + truth().node_other_kwh["alpha-train"]) / HOURS)
    day = r.daily_power.set_index("factory").loc["alpha"]
    assert day["hours"] == HOURS and day["avg_mw"] == pytest.approx(ALPHA_FACILITY_W / 1e6)  # the edge hour at 03:00 holds no data

    # coverage: 3 of the month's 744 hours, each fully scraped
    p = r.provenance
    assert (p["hours_with_data"], p["hours_elapsed"], p["hours_in_month"]) == (HOURS, 744, 744)
    assert p["coverage"] == pytest.approx(HOURS / 744) and p["coverage_of_hours_with_data"] == pytest.approx(1.0)
    assert p["settled"] and not p["to_date"] and p["previous_period"].startswith("2025-02: 2025-02-01T00:00:00Z to 2025-03-01T00:00:00Z")
    assert s["coverage_text"] == ["Energy telemetry covers 3 of 744 hours of the month (0.4%) at alpha, beta: their figures are for those "
                                  "hours only, and averages are over them."]
    text = " ".join(s["text"])
    assert "12.9 kWh of IT energy" in text and "EUR 1.93" in text and "Our World in Data" in text and "2023" in text
    assert f"Against February 2025: energy {(march / prev_it - 1) * 100:+.1f} %" in text
    assert "1 of the 2 projects with an energy allocation used 85% of it or more: alpha-train (91.6% of 0.0015 MWh)." in s["text"]
    assert "Closest to its power cap: alpha" in text and s["illustrative"].startswith("The inventory (small-inventory.yaml) is illustrative")


def test_february_has_hours_and_scrapes_missing_and_no_previous_month(hand_month):
    """A month of 672 hours with 2 hours of data from one factory, whose idle GPU missed 9 scrapes; January has none."""
    store, inventory = hand_month
    r = build_monthly_report(store, inventory, PREVIOUS_MONTH, now_ms=REPORT_AT_MS)
    covered = 2 * PREV_HOURS * 3600 - (len(PREVIOUS_MISSED) + 1) * 60  # GPU 1's 10-minute interval is not covered
    assert r.provenance["coverage_of_hours_with_data"] == pytest.approx(covered / (2 * PREV_HOURS * 3600))
    assert r.provenance["coverage"] == pytest.approx(covered / (2 * 672 * 3600))
    alpha = {x["name"]: x for x in r.summary["scopes"]}["alpha"]
    # the gap's energy still counts: the counter bridges it
    assert r.by["factory"].rows.set_index("factory").loc["alpha", "energy_kwh"] == pytest.approx(sum(PREVIOUS_GPU_W) * PREV_HOURS / 1000)
    assert alpha["it_kwh_previous"] is None and alpha["it_kwh_change"] is None
    assert r.summary["coverage_text"] == [
        "No data from beta in 672 hours of the month: no figure is shown for it, which is not the same as no use.",
        "Energy telemetry covers 2 of 672 hours of the month (0.3%) at alpha: its figures are for those hours only, and averages are over them.",
        "Within their hours with data, scrapes cover 95.8% of alpha's GPU-time; energy across a gap still counts where a GPU's counter "
        "bridges it."]
    assert "No data in January 2025 to compare with." in r.summary["text"]


def test_month_to_date_compares_with_as_many_hours_of_the_previous_month(hand_month):
    """At 05:30 on March 1st: five finished hours, three with data (one computed from samples), against February's first
    five hours, which have none."""
    store, inventory = hand_month
    r = build_monthly_report(store, inventory, MONTH, now_ms=START_MS + 5 * 3_600_000 + 1_800_000)
    p = r.provenance
    assert p["to_date"] and not p["settled"] and p["through"] == "2025-03-01T05:00:00Z"
    assert (p["hours_with_data"], p["hours_elapsed"]) == (HOURS, 5) and p["coverage"] == pytest.approx(HOURS / 5)
    assert p["previous_period"] == "2025-02: 2025-02-01T00:00:00Z to 2025-02-01T05:00:00Z"
    s = r.summary
    assert s["period"] == "March 2025 to date (through 2025-03-01T05:00:00Z)" and s["previous_period"] == "the first 5 hours of February 2025"
    assert s["coverage_text"][0] == ("Energy telemetry covers 3 of the 5 hours so far this month (60.0%) at alpha, beta: their figures are "
                                     "for those hours only, and averages are over them.")
    total = s["scopes"][0]
    assert total["it_kwh"] == pytest.approx((ALPHA_NODES_W + BETA_NODES_W) * HOURS / 1000) and total["it_kwh_change"] is None
    assert {p["project"]: p["share_previous"] for p in s["projects"]} == {"alpha-train": None, "alpha-play": None}


def test_summary_json_is_the_golden_file(hand_month, tmp_path):
    """summary.json of tests/hand_month.py's month, every figure and label (AIFMON_UPDATE_GOLDEN=1 rewrites the file)."""
    store, inventory = hand_month
    report = build_monthly_report(store, inventory, MONTH, now_ms=REPORT_AT_MS)
    write_monthly_report(report, tmp_path / "out", pdf=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # the one figure that is not the store's, the month's or the inventory's: the version installed here
    assert summary["provenance"]["software_version"].startswith("aifmon ")
    summary["provenance"]["software_version"] = "aifmon <version>"
    assert_same_json("monthly_summary.json", summary)
