"""The ledger's rows in a real PostgreSQL (the site stack's rows store): the same rows as the embedded store, the same
figures for the Projects page, a reader that never sees half a window, and refusals that say what to configure."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from aifmon.dashboard.accounting import month_energy
from aifmon.dashboard.pages.projects import project_rows
from aifmon.rollups.hourly import NODE_TABLE, SITE_TABLE, TABLE, HourlyRollups
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.postgres_store import PostgresRowStore
from aifmon.stores.split_store import SplitStore
from aifmon.stores.store import RowStore, SampleReader, StoreConfigError, StoreError, open_store
from aifmon.telemetry.inventory import load_inventory
from tests.conftest import inventory_text
from tests.hand_month import MONTH, REPORT_AT_MS, START_MS, truth, write_store
from tests.servers import PostgreSQL, postgresql

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server() -> Iterator[PostgreSQL]:
    with postgresql() as pg:
        yield pg


@pytest.fixture
def rows_store(server: PostgreSQL, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresRowStore]:
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    with open_store(server.url, needs=PostgresRowStore) as store:
        yield store


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[sorted(frame.columns)]
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_the_hand_month_rolled_up_into_postgresql_gives_the_embedded_rows_and_the_truth(tmp_path, rows_store):
    """The hourly rollups over DuckDB's samples, written to PostgreSQL, are the rows DuckDB holds for the same hours;
    the Projects page reading samples plus those rows gives the hand-computed energy per project (1e-9)."""
    (tmp_path / "inventory.yaml").write_text(inventory_text())
    inventory = load_inventory(tmp_path / "inventory.yaml")
    write_store(tmp_path / "month.duckdb", inventory)
    samples = DuckDBStore(tmp_path / "month.duckdb", read_only=True)
    try:
        split = SplitStore(samples, rows_store, since_ms=START_MS)
        # three hours of intervals, and the hour that starts with the last scrape (03:00)
        assert HourlyRollups(split, inventory).catch_up(REPORT_AT_MS) == 4
        for table in (TABLE, NODE_TABLE, SITE_TABLE):
            embedded = samples.read_rows(table, START_MS, START_MS + 2 * 3_600_000)  # the two hours write_store rolled up
            ours = rows_store.read_rows(table, START_MS, START_MS + 2 * 3_600_000)
            pd.testing.assert_frame_equal(_sorted(ours), _sorted(embedded), check_dtype=False, rtol=1e-12)
        energy = month_energy(split, inventory, MONTH)
        page = {r["project"]: r["energy_kwh"] for r in project_rows(energy, inventory).to_dict("records")}
    finally:
        samples.close()
    assert energy.hours_rolled_up == 4 and energy.hours_computed == 0, "every hour read from PostgreSQL's rows"
    assert page == pytest.approx(truth().energy_kwh, rel=1e-9)


def test_a_reader_sees_the_old_window_or_the_new_never_half(rows_store, server):
    """Replacing a window is one transaction: a second connection reading all the while sees 1,000 rows or 2,000."""
    small = pd.DataFrame({"window_start_ms": 0, "project": [f"p{i}" for i in range(1000)], "energy_j": 1.0})
    large = pd.DataFrame({"window_start_ms": 0, "project": [f"p{i}" for i in range(2000)], "energy_j": 2.0})
    rows_store.replace_rows("atomicity", 0, small)
    seen: set[tuple[int, float]] = set()
    done = threading.Event()

    def read() -> None:
        with open_store(server.url, needs=RowStore) as reader:
            while not done.is_set():
                rows = reader.read_rows("atomicity", 0, 1)
                seen.add((len(rows), float(rows["energy_j"].sum())))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(20):
            rows_store.replace_rows("atomicity", 0, large if i % 2 == 0 else small)
    finally:
        done.set()
        thread.join(timeout=30)
    assert seen <= {(1000, 1000.0), (2000, 4000.0)} and len(seen) >= 1


def test_text_stays_text_and_new_columns_are_added(rows_store):
    rows_store.replace_rows("shapes", 3_600_000, pd.DataFrame({"window_start_ms": [3_600_000], "project": ["007"], "gpu_seconds": [3600]}))
    rows_store.replace_rows("shapes", 7_200_000, pd.DataFrame({"window_start_ms": [7_200_000], "project": ["=cmd"], "gpu_seconds": [1],
                                                               "energy_j": [float("nan")]}))
    rows = rows_store.read_rows("shapes", 0, 10_800_000)
    assert rows["project"].tolist() == ["007", "=cmd"] and rows["gpu_seconds"].tolist() == [3600, 1]
    assert rows["energy_j"].isna().all(), "a column added later is empty for the rows written before it, NaN stays NaN"


def test_refusals_say_what_to_configure(server, monkeypatch):
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StoreConfigError, match=r"PostgreSQL keeps the ledger's rows, not samples.*--rows-store"):
        open_store(server.url, needs=SampleReader)
    with pytest.raises(StoreConfigError, match="credentials never go in the URL") as e:
        open_store(server.url.replace("://", "://aifmon:hunter2@"), needs=RowStore)
    assert "hunter2" not in str(e.value)
    monkeypatch.setenv("AIFMON_POSTGRES_PASSWORD_FILE", str(ROOT / "pyproject.toml"))  # a wrong password
    with pytest.raises(StoreError, match=r"cannot connect to the rows store postgresql://127\.0\.0\.1"):
        open_store(server.url, needs=RowStore)
    out = subprocess.run([sys.executable, "-m", "aifmon", "--quiet", "rollup", "energy", "--store", server.url, "--start", "2025-03-01",
                          "--end", "2025-03-02"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "not samples" in out.stderr, out.stderr


def test_over_a_promql_server_the_dashboard_lists_months_from_the_first_row(rows_store):
    """A PromQL server does not say its time bounds; a split store then starts at the rows store's first window where
    that is earlier than `since` (so the dashboard lists every month with rows), and ends now."""
    from aifmon.stores.promql_store import VictoriaMetricsStore

    rows_store.replace_rows("months", 1_000 * 3_600_000, pd.DataFrame({"window_start_ms": [1_000 * 3_600_000], "energy_j": [1.0]}))
    samples = VictoriaMetricsStore("http://127.0.0.1:9", "victoriametrics+http://127.0.0.1:9")  # never asked for samples here
    first = rows_store.first_window_ms()
    assert first is not None and first <= 1_000 * 3_600_000
    start, end = SplitStore(samples, rows_store, since_ms=2_000 * 3_600_000).time_bounds() or (0, 0)
    assert start == first and end > 1_700_000_000_000
