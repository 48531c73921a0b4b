"""The report scheduler: the month to date at start and daily, the month just ended once its hours have settled,
driven by an injected clock over tests/hand_month.py's store; the Reports page lists what it wrote; `aifmon rollup
schedule --reports-dir` runs it."""

import json
import logging
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aifmon.dashboard.pages.reports import find_reports
from aifmon.exporters.backfill import backfill
from aifmon.exporters.simulation import FactorySimulation
from aifmon.rollups.hourly import HOUR_MS, HourlyRollups
from aifmon.rollups.ledger import month_of, month_range
from aifmon.rollups.report_schedule import ReportScheduler
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.inventory import parse_inventory
from tests.conftest import inventory_text, wait_until
from tests.hand_month import with_allocations, write_store

ROOT = Path(__file__).resolve().parent.parent


def at(text: str) -> int:
    """ISO 8601 UTC -> ms since the epoch."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


class Clock:
    """The scheduler's clock, set by the test (s since the epoch)."""

    def __init__(self, iso: str):
        self.set(iso)

    def set(self, iso: str) -> None:
        self.now_s = at(iso) / 1000

    def __call__(self) -> float:
        return self.now_s


def provenance(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())["provenance"]


@pytest.fixture
def month(tmp_path):
    """tests/hand_month.py's store (February's two hours, March's three; rolled up to 01:00 on March 1st), open for
    writing, and its inventory."""
    inventory = parse_inventory(with_allocations(inventory_text()), "small-inventory.yaml")
    write_store(tmp_path / "month.duckdb", inventory, previous_month=True)
    store = DuckDBStore(tmp_path / "month.duckdb")
    yield store, inventory
    store.close()


def test_month_to_date_daily_and_the_month_just_ended_once_settled(month, tmp_path):
    store, inventory = month
    reports = tmp_path / "reports"
    clock = Clock("2025-03-01T05:30:00")
    scheduler = ReportScheduler(store, inventory, reports, pdf=False, clock=clock)

    # February is over and settled, March has five finished hours: both are due, but the hourly rollups have yet to
    # write the hours to 03:00, so nothing is written until they have
    assert scheduler.due(at("2025-03-01T05:30:00")) == [("2025-02", "2025-02"), ("2025-03", "2025-03-to-date")]
    assert scheduler.check() == [] and not reports.exists()
    HourlyRollups(store, inventory).catch_up(now_ms=at("2025-03-01T05:30:00"))
    assert [p.name for p in scheduler.check()] == ["2025-02", "2025-03-to-date"]
    feb, mtd = provenance(reports / "2025-02"), provenance(reports / "2025-03-to-date")
    assert feb["settled"] and not feb["to_date"] and feb["hours_with_data"] == 2
    assert mtd["to_date"] and mtd["through"] == "2025-03-01T05:00:00Z" and (mtd["hours_with_data"], mtd["hours_elapsed"]) == (3, 5)
    assert sorted(p.name for p in (reports / "2025-03-to-date").iterdir()) == ["report.html", "summary.csv", "summary.json"]
    assert [(r["folder"], r["to_date"]) for r in find_reports(reports)] == [("2025-03-to-date", True), ("2025-02", False)]

    clock.set("2025-03-01T23:59:00")  # the same day: nothing to do
    assert scheduler.check() == []
    clock.set("2025-03-02T00:10:00")  # a new day: the report to date again, through the day's end
    assert [p.name for p in scheduler.check()] == ["2025-03-to-date"]
    mtd = provenance(reports / "2025-03-to-date")
    assert mtd["generated_at"] == "2025-03-02T00:10:00Z" and mtd["hours_elapsed"] == 24 and mtd["hours_with_data"] == 3

    clock.set("2025-04-01T02:59:00")  # March is over but its last hours are still open to late data; April has no sample
    assert scheduler.check() == []
    clock.set("2025-04-01T03:00:00")
    assert [p.name for p in scheduler.check()] == ["2025-03"]
    march = provenance(reports / "2025-03")
    assert march["settled"] and not march["to_date"] and (march["hours_with_data"], march["hours_elapsed"]) == (3, 744)
    # the settled report replaces the one to date; no half-written folder is left behind
    assert sorted(p.name for p in reports.iterdir()) == ["2025-02", "2025-03"]
    assert [r["month"] for r in find_reports(reports)] == ["2025-03", "2025-02"]
    clock.set("2025-04-01T04:00:00")
    assert scheduler.check() == []  # once
    (reports / ".2025-04-to-date.writing").mkdir()  # a report being written is not listed
    (reports / ".2025-04-to-date.writing" / "summary.json").write_text(json.dumps({"provenance": {"month": "2025-04"}}))
    assert [r["month"] for r in find_reports(reports)] == ["2025-03", "2025-02"]


def test_without_chromium_the_report_is_written_without_its_pdf(month, tmp_path, monkeypatch, caplog):
    store, inventory = month
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no chromium to find
    scheduler = ReportScheduler(store, inventory, tmp_path / "reports", pdf=True, rollup_wait_s=0, clock=Clock("2025-03-10T12:00:00"))
    with caplog.at_level(logging.WARNING, logger="aifmon.rollups.report_schedule"):
        written = scheduler.check()
    assert [p.name for p in written] == ["2025-02", "2025-03-to-date"]
    assert all(not (p / "report.pdf").exists() and (p / "report.html").exists() for p in written)
    assert sum("written without report.pdf" in r.getMessage() and "Chromium" in r.getMessage() for r in caplog.records) == 2


def test_a_failing_report_is_logged_and_tried_again_an_hour_later(month, tmp_path, caplog):
    store, inventory = month
    blocked = tmp_path / "reports"
    blocked.write_text("a file where the reports directory should be")
    clock = Clock("2025-03-10T12:00:00")
    scheduler = ReportScheduler(store, inventory, blocked, pdf=False, rollup_wait_s=0, clock=clock)
    with caplog.at_level(logging.ERROR, logger="aifmon.rollups.report_schedule"):
        assert scheduler.check() == []
    assert {r.getMessage().split(" failed")[0] for r in caplog.records} == {"reports: the report 2025-02", "reports: the report 2025-03-to-date"}
    clock.set("2025-03-10T12:59:00")
    assert scheduler.due(int(clock() * 1000)) == []
    blocked.unlink()
    clock.set("2025-03-10T13:00:00")
    assert [p.name for p in scheduler.check()] == ["2025-02", "2025-03-to-date"]


def test_stop_breaks_off_a_report_being_built(month, tmp_path):
    store, inventory = month
    scheduler = ReportScheduler(store, inventory, tmp_path / "reports", pdf=False, rollup_wait_s=0, clock=Clock("2025-03-10T12:00:00"))
    scheduler.stop()
    scheduler.run()  # returns: the first report stops at its first step
    assert not (tmp_path / "reports").exists()


def test_rollup_schedule_with_reports_dir_writes_the_month_to_date(tmp_path):
    """`aifmon rollup schedule --reports-dir`: the hourly rollups catch up on three simulated hours, then the report to
    date is written (on the wall clock: skipped in the first 70 minutes of a month, when no hour of it is finished)."""
    now = time.time()
    month = month_of(int(now * 1000))
    if now * 1000 - month_range(month)[0] < 70 * 60 * 1000:
        pytest.skip("no finished hour of this month yet")
    (tmp_path / "inv.yaml").write_text(inventory_text())
    inv = parse_inventory((tmp_path / "inv.yaml").read_text(), "inv.yaml")
    start = max(month_range(month)[0] / 1000, (now // 3600 - 3) * 3600)
    store = DuckDBStore(tmp_path / "s.duckdb")
    f = inv.factory("alpha")
    backfill(store, FactorySimulation(f, inv.projects_of("alpha"), epoch=start, step_s=60), start, now, 60.0)
    store.close()
    reports = tmp_path / "reports"
    log = tmp_path / "schedule.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aifmon", "rollup", "schedule", "--inventory", str(tmp_path / "inv.yaml"),
                                 "--store", f"duckdb:///{tmp_path / 's.duckdb'}", "--every", "1", "--reports-dir", str(reports),
                                 "--no-pdf"], cwd=ROOT, stderr=out)
    try:
        wait_until(lambda: (reports / f"{month}-to-date" / "summary.json").exists() or proc.poll() is not None, 120,
                   "the report to date", poll_s=0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()
    p = provenance(reports / f"{month}-to-date")
    assert p["to_date"] and p["hours_with_data"] == p["hours_elapsed"] - (start * 1000 - month_range(month)[0]) // HOUR_MS
    # every hour with data is still open to late data (the late window is 3 h), so the ledger computes it from samples
    assert p["figures_from"] == "samples" and p["hours_computed_from_samples"] >= p["hours_with_data"]
    assert "reports: wrote" in log.read_text()
