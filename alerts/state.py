"""Where the evaluator keeps its alert state, and how to read it: what the dashboard needs of the alerts without
loading the evaluator (and with it the rollups).

The state is a JSON file beside the store (`<store>.alerts.json`), written by `aifmon.alerts.evaluator`.
"""

from __future__ import annotations

import json
from pathlib import Path

from aifmon.stores.store import Store

STATE_VERSION = 1


def state_path_for(store: Store) -> Path:
    """Where the alert state of `store` lives: beside its file (`data/aifmon.duckdb.alerts.json`)."""
    # Only a file store has a path; a server store's state goes where the default store's would.
    return Path(str(getattr(store, "path", "data/aifmon.duckdb")) + ".alerts.json")


def load_state(path: Path) -> dict:
    """The saved state file as a dict (`alerts`, `rules_error`, `saved_ms`...); empty state when there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": STATE_VERSION, "alerts": [], "rules_error": None, "saved_ms": None}
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"alert state {path} has version {data.get('version')}, expected {STATE_VERSION}; move it aside")
    return data
