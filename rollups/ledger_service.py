"""Ledger reads of an embedded store that another aifmon process holds.

DuckDB lets one process open a store for writing and no other process open it at all meanwhile, so while `aifmon up`
runs, `aifmon rollup energy --store duckdb:///...` cannot open the store. `aifmon up` therefore answers ledger reads
itself: `LedgerService` listens on a Unix socket in Linux's abstract namespace, named for the store's absolute path
(`socket_name`), and `ask` sends it one request and reads the answer, the text `aifmon rollup energy` prints.

Access: only the user running `aifmon up` (or root) may ask; the peer's uid is checked with SO_PEERCRED, since an
abstract socket has no file permissions. One request per connection, answered one at a time (reads of the ledger
are the rollups' own work, not a service for many clients): a newline-terminated JSON object with `start_ms`,
`end_ms`, `by`, `format`, `from_samples` and the asker's inventory YAML (its prices, intensities and projects are
the ones its figures use), answered with `{"text": ...}` or `{"error": ...}`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from aifmon.rollups.energy import GROUPINGS
from aifmon.rollups.ledger import energy_rollup
from aifmon.rollups.report_format import format_energy_rollup
from aifmon.stores.store import SampleReader, StoreError
from aifmon.telemetry.errors import UserError
from aifmon.telemetry.inventory import parse_inventory

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 << 20  # an inventory of thousands of projects fits; anything larger is refused unread
FORMATS = ("table", "json", "csv")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def socket_name(store_path: str | Path) -> str:
    """The abstract socket address (leading NUL) of the store at `store_path`: one per store, whatever the spelling."""
    digest = hashlib.sha256(str(Path(store_path).resolve()).encode()).hexdigest()[:32]
    return f"\0aifmon-ledger-{digest}"


class LedgerService:
    """Answers ledger reads of `store` (a worker: `run` until `stop`)."""

    def __init__(self, store: SampleReader, store_path: str | Path):
        self.store = store
        self.address = socket_name(store_path)
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.address)  # at construction: a second `up` on the same store fails here, not later
        self._listener.listen(8)
        self._listener.settimeout(0.5)

    def run(self) -> None:
        with self._listener:
            while not self._stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    self._serve(conn)

    def stop(self) -> None:
        self._stop.set()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30.0)
        try:
            _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if uid not in (os.getuid(), 0):
                log.warning("ledger service: refused a request from uid %d", uid)
                _send(conn, {"error": "refused: only the user running `aifmon up` may read its ledger"})
                return
            _send(conn, {"text": self.answer(_receive(conn, MAX_REQUEST_BYTES))})
        except (UserError, ValueError, StoreError) as e:
            _send(conn, {"error": str(e)})
        except OSError as e:
            log.warning("ledger service: %s", e)
        except Exception as e:  # one bad request never stops the service
            log.exception("ledger service: request failed")
            _send(conn, {"error": f"the read failed in aifmon up: {e}"})

    def answer(self, request: dict[str, Any]) -> str:
        """The text `aifmon rollup energy` prints for `request` (module docstring), read from this process's store."""
        start_ms, end_ms = _integer(request, "start_ms"), _integer(request, "end_ms")
        by, fmt = request.get("by"), request.get("format")
        if by not in GROUPINGS or fmt not in FORMATS:
            raise ValueError(f"by must be one of {', '.join(GROUPINGS)} and format one of {', '.join(FORMATS)}")
        inventory = parse_inventory(str(request.get("inventory_yaml", "")), str(request.get("inventory_source", "<inventory>")))
        result = energy_rollup(self.store, inventory, start_ms, end_ms, by=by, from_hourly=not request.get("from_samples"))
        return format_energy_rollup(result, fmt)


def ask(store_path: str | Path, request: dict[str, Any], timeout_s: float = 600.0) -> str | None:
    """The answer of the `aifmon up` holding the store at `store_path` to `request`; None when no process serves it.
    Raises StoreError with the service's message when it refuses or fails."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        try:
            conn.connect(socket_name(store_path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        _send(conn, request)
        answer = _receive(conn)
    if "error" in answer:
        raise StoreError(f"aifmon up, holding {store_path}: {answer['error']}")
    return str(answer["text"])


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _receive(conn: socket.socket, limit: int | None = None) -> dict[str, Any]:
    """One newline-terminated JSON object; at most `limit` bytes of it (None: the answer of a trusted `aifmon up`)."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        data += chunk
        if limit is not None and len(data) > limit:
            raise ValueError(f"request over {limit >> 20} MB")
    message = json.loads(data or b"{}")
    if not isinstance(message, dict):
        raise ValueError("expected a JSON object")
    return message


def _integer(request: dict[str, Any], key: str) -> int:
    value = request.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be an integer (ms since the epoch)")
    return value
