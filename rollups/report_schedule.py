"""The board's monthly reports, written without being asked: a worker for `aifmon up` and `aifmon rollup schedule`.

Into `reports_dir`, where the dashboard's Reports page lists every folder holding a summary.json:
- `YYYY-MM-to-date/`: the current month's report to date (its finished hours), written at the first check when there
  is none (so a fresh `make up` has one to open), then again at the first check of each UTC day, replacing the last.
  The previous month's figures in it are those of the previous month's first as many hours.
- `YYYY-MM/`: the month just ended, once, when its hours have settled: `LATE_WINDOW_S` after the month ends (on the
  1st, from 03:00 UTC), when the hourly rollups stop rechecking its last hours for late data. It then replaces that
  month's `-to-date` folder, which is removed. A month that already has a settled report (`aifmon report monthly`
  run by hand after it settled counts) is not written again; a month the store holds no sample of is not written.

Until the hourly rollups have written the newest finished hour (at start, `aifmon up` has a day of backfill for them)
the first report waits, up to `rollup_wait_s`: written earlier, it would compute those hours from samples a second
time, on the same cores. A report is written into a hidden folder and swapped into place, so the page never lists a
half-written one. report.pdf needs Chromium: where it is missing or fails, the report is written without it and a
warning is logged. A report that fails is tried again an hour later; the other workers never wait for this one (it
runs in its own thread, and `stop()` breaks off a report being built at its next step).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aifmon.rollups.counters import HOUR_MS
from aifmon.rollups.hourly import LATE_WINDOW_S, SETTLE_MS, SITE_TABLE
from aifmon.rollups.ledger import iso_utc, month_of, month_range, previous_month
from aifmon.rollups.monthly_report import ReportPdfError, build_monthly_report, print_to_pdf, write_monthly_report
from aifmon.stores.store import RowStore, SampleReader, StoreError
from aifmon.telemetry.inventory import Inventory

log = logging.getLogger(__name__)

TO_DATE_SUFFIX = "-to-date"
RETRY_AFTER_S = 3600.0
"""A report that failed is tried again this long after, s."""
WAITING_CHECK_S = 10.0
"""How often to look again while waiting for the hourly rollups, s."""


class _Stopped(Exception):
    """`stop()` was called while a report was being built."""


class ReportScheduler:
    """Writes the month-to-date report daily and the month just ended once (module docstring). A worker: `run()` in
    its own thread until `stop()`."""

    def __init__(self, store: SampleReader, inventory: Inventory, reports_dir: Path, pdf: bool = True, check_every_s: float = 60.0,
                 rollup_wait_s: float = 900.0, clock: Callable[[], float] = time.time):
        """`clock` gives the time in s since the epoch (tests drive it); `rollup_wait_s` bounds the wait for the hourly rollups."""
        self.store = store
        self.inventory = inventory
        self.reports_dir = Path(reports_dir)
        self.pdf = pdf
        self.check_every_s = check_every_s
        self.rollup_wait_s = rollup_wait_s
        self.clock = clock
        self._started_ms: int | None = None
        self._retry_at: dict[str, int] = {}  # folder -> ms
        self._waiting = False  # for the hourly rollups (logged once)
        self._stop = threading.Event()

    def due(self, now_ms: int) -> list[tuple[str, str]]:
        """(month, folder) of each report to write now: the month just ended, then the current month to date."""
        out = []
        current = month_of(now_ms)
        ended = previous_month(current)
        start, end = month_range(ended)
        if now_ms >= end + LATE_WINDOW_S * 1000 and not _settled(self.reports_dir / ended) and self._has_data(start, end):
            out.append((ended, ended))
        start, end = month_range(current)
        folder = current + TO_DATE_SUFFIX
        written = _generated_at(self.reports_dir / folder)
        if now_ms - SETTLE_MS >= start + HOUR_MS and (written is None or written[:10] < iso_utc(now_ms)[:10]) and self._has_data(start, end):
            out.append((current, folder))
        return [(m, f) for m, f in out if self._retry_at.get(f, 0) <= now_ms]

    def check(self, now_ms: int | None = None) -> list[Path]:
        """Write every report that is due (unless the hourly rollups are still catching up); returns their folders."""
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        if self._started_ms is None:
            self._started_ms = now_ms
        due = self.due(now_ms)
        if not due or self._rollups_behind(now_ms):
            return []
        written = []
        for month, folder in due:
            try:
                written.append(self._write(month, folder, now_ms))
            except _Stopped:
                raise
            except Exception:
                log.exception("reports: the report %s failed; trying again in %g s", folder, RETRY_AFTER_S)
                self._retry_at[folder] = now_ms + int(RETRY_AFTER_S * 1000)
                continue
            if folder == month:  # the month's settled report replaces its report to date
                shutil.rmtree(self.reports_dir / (month + TO_DATE_SUFFIX), ignore_errors=True)
        return written

    def _write(self, month: str, folder: str, now_ms: int) -> Path:
        began = time.perf_counter()
        report = build_monthly_report(self.store, self.inventory, month, now_ms=now_ms, progress=self._step)
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        partial = self.reports_dir / f".{folder}.writing"  # hidden: the Reports page skips it
        shutil.rmtree(partial, ignore_errors=True)
        write_monthly_report(report, partial, pdf=False)
        pdf = "without report.pdf"
        if self.pdf:
            try:
                print_to_pdf(partial / "report.html", partial / "report.pdf")
                pdf = "with report.pdf"
            except ReportPdfError as e:
                log.warning("reports: %s written without report.pdf: %s", folder, e)
        target = self.reports_dir / folder
        old = self.reports_dir / f".{folder}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        partial.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        log.info("reports: wrote %s (%s, %d of %d hours with data, %s) in %.1f s", target, report.summary["period"],
                 report.provenance["hours_with_data"], report.provenance["hours_elapsed"], pdf, time.perf_counter() - began)
        return target

    def _step(self, what: str) -> None:
        if self._stop.is_set():
            raise _Stopped(what)

    def _has_data(self, start_ms: int, end_ms: int) -> bool:
        """Whether the store holds samples in [start_ms, end_ms); a store that cannot say (a PromQL server) is asked
        by the report itself."""
        try:
            bounds = self.store.time_bounds()
        except StoreError:
            return True
        return bounds is not None and bounds[0] < end_ms and bounds[1] >= start_ms

    def _rollups_behind(self, now_ms: int) -> bool:
        """Whether the hourly rollups have yet to write the newest finished hour they will write (for at most
        `rollup_wait_s` after the first check). A store that keeps no rollup rows has nothing to wait for."""
        if not isinstance(self.store, RowStore) or self._started_ms is None or now_ms - self._started_ms >= self.rollup_wait_s * 1000:
            return False
        try:
            bounds = self.store.time_bounds()
        except StoreError:
            return False
        if bounds is None:
            return False
        newest = min((now_ms - SETTLE_MS) // HOUR_MS, bounds[1] // HOUR_MS + 1) * HOUR_MS - HOUR_MS  # as HourlyRollups.catch_up
        if newest < bounds[0] // HOUR_MS * HOUR_MS:
            return False
        behind = self.store.read_rows(SITE_TABLE, newest, newest + HOUR_MS).empty
        if behind and not self._waiting:
            log.info("reports: waiting for the hourly rollups to reach the hour starting %s", iso_utc(newest))
        self._waiting = behind
        return behind

    def run(self) -> None:
        while True:
            try:
                self.check()
            except _Stopped:
                return
            except Exception:
                log.exception("reports: check failed; retrying at the next")
            # while the hourly rollups catch up, look again sooner: the first report is the one people wait for
            if self._stop.wait(min(self.check_every_s, WAITING_CHECK_S) if self._waiting else self.check_every_s):
                return

    def stop(self) -> None:
        self._stop.set()


def _provenance(folder: Path) -> dict:
    try:
        doc = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    prov = doc.get("provenance") if isinstance(doc, dict) else None
    return prov if isinstance(prov, dict) else {}


def _settled(folder: Path) -> bool:
    """Whether `folder` holds a report made after its month's hours settled."""
    return _provenance(folder).get("settled") is True


def _generated_at(folder: Path) -> str | None:
    """When the report in `folder` was made (ISO 8601, UTC), or None without a readable one."""
    at = _provenance(folder).get("generated_at")
    return at if isinstance(at, str) else None
