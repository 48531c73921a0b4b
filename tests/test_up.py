"""`aifmon up` end to end: simulators, backfill, collector, rollups and dashboard, then a clean Ctrl-C."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from aifmon.cli.up import ARROW_POOL, MALLOC_ARENAS, MALLOC_MMAP_THRESHOLD, StartAfter, demo_epochs, history_hours
from aifmon.exporters.http import serve_exposition
from aifmon.rollups.hourly import SETTLE_MS
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.inventory import load_inventory
from tests.conftest import free_port, inventory_text, wait_for_http, wait_until

GPUS = 2 * 4 * 4  # two factories of 4 nodes with 4 GPUs (inventory_text)
MINUTE_MS, HOUR_MS = 60_000, 3_600_000


@contextmanager
def probe_target() -> Iterator[tuple[str, list[int]]]:
    """A second target of factory alpha that counts the collector's scrapes (`up` simulates only a factory's first
    target and scrapes them all): (its address, a list that grows by one per scrape)."""
    address, scrapes = f"127.0.0.1:{free_port()}", []

    def body() -> bytes:
        scrapes.append(1)
        return b"aif_test_probe 1\n"

    server = serve_exposition(address, body, "scrape counter")
    try:
        yield address, scrapes
    finally:
        server.shutdown()
        server.server_close()


def start_up(inventory: Path, store: Path, dashboard: str, log: Path, *options: str) -> subprocess.Popen:
    with log.open("a") as log_file:  # a file, not a pipe: a pipe nobody drains would block the stack's logging
        return subprocess.Popen([sys.executable, "-m", "aifmon", "up", "--inventory", str(inventory), "--store", f"duckdb:///{store}",
                                 "--listen", dashboard, "--interval", "1", "--reports-dir", str(store.parent / "reports"), *options],
                                stderr=log_file, text=True)


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=60)


def gpu_energy(store_path: Path):
    """The GPU energy samples, each with `scraped`: stamped at a live scrape (the time of one of the collector's `up`
    samples), not by the backfill (one snapshot a minute, on the minute, where a scrape may land too); the hourly rows."""
    store = DuckDBStore(store_path, read_only=True)
    try:
        energy = store.range("aif_gpu_energy_joules_total", 0, 2**62)
        scrapes = store.range("up", 0, 2**62)["t_ms"]
        return energy.assign(scraped=energy["t_ms"].isin(scrapes)), store.read_rows("gpu_energy_hourly", 0, 2**62)
    finally:
        store.close()


def test_up_runs_the_stack_and_stops_cleanly(tmp_path):
    targets = {"alpha": f"127.0.0.1:{free_port()}", "beta": f"127.0.0.1:{free_port()}"}
    dash = f"127.0.0.1:{free_port()}"
    store_path, log_path, inv = tmp_path / "up.duckdb", tmp_path / "up.log", tmp_path / "inv.yaml"
    with probe_target() as (probe, scrapes):
        inv.write_text(inventory_text(targets).replace(f'targets: ["{targets["alpha"]}"]', f'targets: ["{targets["alpha"]}", "{probe}"]'))
        started_ms = int(time.time() * 1000)
        reports = tmp_path / "reports"  # beside the store (start_up)
        proc = start_up(inv, store_path, dash, log_path, "--backfill-hours", "2")
        try:
            assert b"aifmon" in wait_for_http(f"http://{dash}/", timeout_s=60)
            for target in targets.values():
                wait_for_http(f"http://{target}/metrics", timeout_s=60)
            wait_until(lambda: len(scrapes) >= 3, 120, "three live scrapes after the backfill")
            # the demo has a report to open: this month's to date, written once the backfilled hours are rolled up
            wait_until(lambda: list(reports.glob("*-to-date/summary.json")), 120, "the month-to-date report")
        finally:
            status = stop(proc)
        first_run_scrapes = len(scrapes)
        log = log_path.read_text()
        assert status == 0, log
        assert "store closed cleanly" in log and "Traceback" not in log and "leaked" not in log
        assert "backfill" in log and "100%" in log, "the backfill shows its progress"

        epoch_ms = int(json.loads((tmp_path / "up.duckdb.demo.json").read_text())["epoch"] * 1000)
        energy, hourly = gpu_energy(store_path)
        on_the_minute = ~energy["scraped"]  # the backfill's
        backfilled = np.sort(energy.loc[on_the_minute, "t_ms"].unique())
        assert backfilled[0] == epoch_ms and len(backfilled) >= 120, "two hours of history, from the demo's epoch"
        assert (np.diff(backfilled) == MINUTE_MS).all(), "one snapshot every minute, none missing"
        assert (energy.loc[on_the_minute].groupby("t_ms").size() == GPUS).all()
        live = energy.loc[~on_the_minute]
        assert len(live) == GPUS * first_run_scrapes, "every GPU in every live scrape (the collector stops after its cycle)"
        assert (energy.groupby(["factory", "node", "gpu"])["series_id"].nunique() == 1).all(), \
            "history and live scrapes of a GPU are one series (panels would add two up)"
        for _, gpu in energy.sort_values("t_ms").groupby(["factory", "node", "gpu"]):
            assert (np.diff(gpu["value"].to_numpy()) >= 0).all(), "one continuous counter from backfill to live"
        hours = sorted(hourly["window_start_ms"].unique())
        settled = [h for h in (epoch_ms, epoch_ms + HOUR_MS) if h + HOUR_MS + SETTLE_MS <= started_ms]  # as of the stack's start
        assert hours[:len(settled)] == settled and len(hours) <= 3, "the finished, settled hours of the history were rolled up"

        # A second start continues the same simulation (same epoch): still no counter reset.
        proc = start_up(inv, store_path, dash, log_path)
        try:
            wait_for_http(f"http://{dash}/", timeout_s=60)
            wait_until(lambda: len(scrapes) >= first_run_scrapes + 3, 120, "three live scrapes after the restart")
        finally:
            status = stop(proc)
        assert status == 0, log_path.read_text()
        energy, _ = gpu_energy(store_path)
        assert energy["scraped"].sum() == GPUS * len(scrapes)
        for _, gpu in energy.sort_values("t_ms").groupby(["factory", "node", "gpu"]):
            assert (np.diff(gpu["value"].to_numpy()) >= 0).all()


def test_up_stops_everything_when_a_simulator_dies(tmp_path):
    """A simulator that cannot start (its port is taken) stops the stack: exit 1, naming it, the store closed."""
    targets = {"alpha": f"127.0.0.1:{free_port()}", "beta": f"127.0.0.1:{free_port()}"}
    inv, log_path, dash = tmp_path / "inv.yaml", tmp_path / "up.log", f"127.0.0.1:{free_port()}"
    inv.write_text(inventory_text(targets))
    host, port = targets["alpha"].split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        proc = start_up(inv, tmp_path / "up.duckdb", dash, log_path, "--backfill-hours", "0")
        try:
            status = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                stop(proc)
    log = log_path.read_text()
    assert status == 1, log
    assert f"cannot listen on {targets['alpha']}" in log, "the simulator says why it stopped"
    served = f"alpha on {targets['alpha']}, beta on {targets['beta']}"  # one process simulates both: up names all it served
    assert f"the simulator ({served}) exited with status 2" in log and "store closed cleanly" in log and "Traceback" not in log


def test_a_killed_up_leaves_no_simulator_behind(tmp_path):
    """SIGKILL runs no clean-up in `aifmon up`: its simulator must die with it (PR_SET_PDEATHSIG), so that a restart
    at once finds their ports free and serves them again."""
    targets = {"alpha": f"127.0.0.1:{free_port()}", "beta": f"127.0.0.1:{free_port()}"}
    inv, log_path, dash = tmp_path / "inv.yaml", tmp_path / "up.log", f"127.0.0.1:{free_port()}"
    inv.write_text(inventory_text(targets))
    proc = start_up(inv, tmp_path / "up.duckdb", dash, log_path, "--backfill-hours", "0")
    try:
        for target in targets.values():
            wait_for_http(f"http://{target}/metrics", timeout_s=60)
        children = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(children) == 1, "one simulator process for every factory"
        environ = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{children[0]}/environ").read_bytes().split(b"\0") if b"=" in kv)
        for name, value in (("MALLOC_ARENA_MAX", MALLOC_ARENAS), ("MALLOC_MMAP_THRESHOLD_", MALLOC_MMAP_THRESHOLD), ARROW_POOL):
            assert environ[name.encode()] == os.environ.get(name, str(value)).encode(), f"the simulator allocates as up does: {name}"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    wait_until(lambda: not any(_running(pid) for pid in children), 30, "the simulators to exit with their parent")

    with probe_target() as (probe, scrapes):
        inv.write_text(inventory_text(targets).replace(f'targets: ["{targets["alpha"]}"]', f'targets: ["{targets["alpha"]}", "{probe}"]'))
        proc = start_up(inv, tmp_path / "up.duckdb", dash, log_path, "--backfill-hours", "0")
        try:
            wait_until(lambda: scrapes, 60, "the restarted stack to scrape")
            for target in targets.values():
                wait_for_http(f"http://{target}/metrics", timeout_s=60)
        finally:
            status = stop(proc)
    log = log_path.read_text()
    assert status == 0 and "Address already in use" not in log and "cannot listen" not in log, log


def _running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting for init to reap it has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_large_factory_gets_fewer_hours_of_history_and_keeps_its_epoch(tmp_path):
    """`aifmon up` backfills the demo's 25,000-GPU factory for 3 h, not the 24 h of the small ones (a snapshot of it is
    400,000 samples, 0.2 s): its simulation starts there, counters from zero. Every factory's epoch is kept across runs,
    and a state file from before per-factory epochs runs them all from its one epoch."""
    assert (history_hours(25_000, 24), history_hours(128, 24), history_hours(25_000, 2), history_hours(10**6, 24)) == (3, 24, 2, 1)
    inventory = load_inventory()
    store = DuckDBStore(tmp_path / "up.duckdb")
    try:
        epochs = demo_epochs(store, inventory, 1, 24)
        assert epochs["bsc-aif"] % 3600 == 0 and epochs["jaif"] - epochs["bsc-aif"] == 21 * 3600
        assert {e for f, e in epochs.items() if f != "jaif"} == {epochs["bsc-aif"]}, "the small factories: the whole 24 h"
        assert demo_epochs(store, inventory, 1, 6) == epochs, "kept across runs, whatever --backfill-hours says then"
        state = tmp_path / "up.duckdb.demo.json"
        state.write_text(json.dumps({"epoch": epochs["bsc-aif"], "seed": 1}))
        assert set(demo_epochs(store, inventory, 1, 24).values()) == {epochs["bsc-aif"]}
    finally:
        store.close()


class RecordingWorker:
    """A worker (the supervisor's protocol) that records whether `ready` was set when it started, and runs until stopped."""

    def __init__(self, ready: threading.Event):
        self.ready = ready
        self.ran_when_ready: bool | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        self.ran_when_ready = self.ready.is_set()
        self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()


@pytest.mark.parametrize(("limit_s", "set_ready", "stop_first", "ran_when_ready"), [
    (600.0, True, False, True),  # ready: the worker starts, after it was set
    (0.0, False, False, False),  # never ready: the worker starts at the limit
    (600.0, False, True, None),  # stopped while waiting: the worker never starts
])
def test_start_after_runs_its_worker_once_ready_or_at_its_limit_and_not_once_stopped(limit_s, set_ready, stop_first, ran_when_ready):
    """How `aifmon up` starts its alert evaluator after the hourly rollups' catch-up, its report scheduler after the first alert cycle."""
    ready = threading.Event()
    worker = RecordingWorker(ready)
    start = StartAfter(ready.is_set, worker, limit_s, "the worker", "the event")
    thread = threading.Thread(target=start.run)
    thread.start()
    if set_ready:
        ready.set()
    if not stop_first:
        wait_until(lambda: worker.ran_when_ready is not None, 10, "the worker's start")
    start.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert worker.ran_when_ready is ran_when_ready
