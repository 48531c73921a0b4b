"""`aifmon up` end to end: simulators, backfill, collector, rollups and dashboard, then a clean Ctrl-C."""

import signal
import subprocess
import sys
import time

import numpy as np

from aifmon.stores.duckdb_store import DuckDBStore
from tests.conftest import free_port, inventory_text, wait_for_http


def test_up_runs_the_stack_and_stops_cleanly(tmp_path):
    targets = {"alpha": f"127.0.0.1:{free_port()}", "beta": f"127.0.0.1:{free_port()}"}
    inv = tmp_path / "inv.yaml"
    inv.write_text(inventory_text(targets))
    dash = f"127.0.0.1:{free_port()}"
    store_path = tmp_path / "up.duckdb"
    started = time.time()
    log_path = tmp_path / "up.log"  # a file, not a pipe: a pipe nobody drains would block the stack's logging
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aifmon", "up", "--inventory", str(inv), "--store", f"duckdb:///{store_path}",
             "--listen", dash, "--backfill-hours", "2", "--interval", "1"],
            stderr=log_file, text=True,
        )
    try:
        page = wait_for_http(f"http://{dash}/", timeout_s=60)
        assert b"aifmon" in page
        for target in targets.values():
            wait_for_http(f"http://{target}/metrics", timeout_s=60)
        assert time.time() - started < 60, "the dashboard answers within a minute"
        deadline = time.time() + 90
        while "live: scraping 2 simulators" not in log_path.read_text() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(4)  # a few live scrapes
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    out = log = log_path.read_text()
    assert proc.returncode == 0, out
    assert "store closed cleanly" in out and "Traceback" not in out and "leaked" not in out
    assert "backfill" in log and "100%" in log, "the backfill shows its progress"

    store = DuckDBStore(store_path, read_only=True)
    energy = store.range("aif_gpu_energy_joules_total", 0, 2**62)
    on_the_minute = energy["t_ms"] % 60_000 == 0  # the backfill writes one snapshot a minute; scrapes land anywhere
    assert energy.loc[~on_the_minute, "t_ms"].nunique() >= 3, "the collector scraped live after the backfill"
    assert energy.loc[on_the_minute, "t_ms"].nunique() >= 100
    assert (energy.groupby(["factory", "node", "gpu"])["series_id"].nunique() == 1).all(), \
        "history and live scrapes of a GPU are one series (panels would add two up)"
    # One continuous history: per GPU, the counter never drops from backfill to live.
    for _, gpu in energy.sort_values("t_ms").groupby(["factory", "node", "gpu"]):
        assert (np.diff(gpu["value"].to_numpy()) >= 0).all()
    hourly = store.read_rows("gpu_energy_hourly", 0, 2**62)
    assert hourly["window_start_ms"].nunique() >= 1, "finished hours were rolled up"
    store.close()

    # A second start continues the same simulation (same epoch): still no counter reset.
    proc = subprocess.Popen(
        [sys.executable, "-m", "aifmon", "--quiet", "up", "--inventory", str(inv), "--store", f"duckdb:///{store_path}",
         "--listen", dash, "--interval", "1"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_http(f"http://{dash}/", timeout_s=60)
        time.sleep(6)
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, out
    store = DuckDBStore(store_path, read_only=True)
    energy = store.range("aif_gpu_energy_joules_total", 0, 2**62)
    for _, gpu in energy.sort_values("t_ms").groupby(["factory", "node", "gpu"]):
        assert (np.diff(gpu["value"].to_numpy()) >= 0).all()
    store.close()
