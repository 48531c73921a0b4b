"""`aifmon rollup energy` on a store another process holds: read through that process's ledger service, with the same
figures, refused to other users, and one bad request costing nobody else's answer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aifmon.rollups.ledger import energy_rollup
from aifmon.rollups.ledger_service import LedgerService, ask, socket_name
from aifmon.rollups.report_format import format_energy_rollup
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.inventory import load_inventory
from tests.conftest import inventory_text
from tests.hand_month import write_store

ROOT = Path(__file__).resolve().parent.parent
RANGE = ["--start", "2025-03-01T00:00:00Z", "--end", "2025-03-01T03:00:00Z"]


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Path, DuckDBStore]]:
    """tests/hand_month.py's store, held open for writing by this process (as `aifmon up` holds its store)."""
    (tmp_path / "inventory.yaml").write_text(inventory_text())
    write_store(tmp_path / "month.duckdb", load_inventory(tmp_path / "inventory.yaml"))
    store = DuckDBStore(tmp_path / "month.duckdb")
    yield tmp_path, store
    store.close()


@pytest.fixture
def service(held: tuple[Path, DuckDBStore]) -> Iterator[LedgerService]:
    _, store = held
    service = LedgerService(store, store.path)
    thread = threading.Thread(target=service.run)
    thread.start()
    yield service
    service.stop()
    thread.join()


def _rollup(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aifmon", "rollup", "energy", "--inventory", str(tmp_path / "inventory.yaml"),
                           "--store", f"duckdb:///{tmp_path / 'month.duckdb'}", *RANGE, "--by", "project", *extra],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_a_held_store_is_read_through_the_process_holding_it(held, service):
    tmp_path, store = held
    done = _rollup(tmp_path, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "read its ledger through it" in done.stderr
    inventory = load_inventory(tmp_path / "inventory.yaml")
    direct = energy_rollup(store, inventory, 1740787200000, 1740787200000 + 3 * 3_600_000, by="project")
    assert json.loads(done.stdout) == json.loads(format_energy_rollup(direct, "json"))
    assert json.loads(done.stdout)["rows"], "the hand month has energy in these hours"


def test_without_a_service_the_held_store_is_refused_with_what_to_do(held):
    tmp_path, _ = held
    done = _rollup(tmp_path)
    assert done.returncode != 0
    assert "held by another aifmon process" in done.stderr and "Traceback" not in done.stderr


def test_sacct_is_not_sent_to_the_service(held, service):
    tmp_path, _ = held
    (tmp_path / "sacct.txt").write_text("JobID|Account|Partition|QOS|Start|End|NodeList|AllocTRES\n")
    done = _rollup(tmp_path, "--sacct", str(tmp_path / "sacct.txt"))
    assert done.returncode == 2 and "--sacct is read by this command only" in done.stderr


def test_a_bad_request_gets_an_error_and_the_next_one_its_answer(held, service):
    tmp_path, store = held
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(socket_name(store.path))
        conn.sendall(b'{"start_ms": "yesterday"}\n')
        answer = json.loads(conn.makefile().readline())
    assert "start_ms must be an integer" in answer["error"]
    text = ask(store.path, {"start_ms": 1740787200000, "end_ms": 1740787200000 + 3_600_000, "by": "total", "format": "csv",
                            "from_samples": False, "inventory_yaml": inventory_text()})
    assert text is not None and text.splitlines()[0].startswith("total,")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root and Debian's python3")
def test_another_user_is_refused(held, service):
    """A client of another uid (Debian's python3 as `nobody`: aifmon's own interpreter lives under root's home) gets
    the refusal as soon as it connects, before it can send anything."""
    _, store = held
    probe = ("import socket, sys\n"
             "c = socket.socket(socket.AF_UNIX)\n"
             f"c.connect({socket_name(store.path)!r})\n"
             "sys.stdout.write(c.makefile().readline())\n")
    done = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"error": "refused: only the user running `aifmon up` may read its ledger"}
