"""Dashboard pages, one module each. Every page module has:

- `PATH`, `TITLE`, `PREFIX` (its component ids all start with it) and `ROLES` (who may open it);
- `layout(ctx, query) -> component`: the page for a URL query string (state lives in the URL);
- `register(app, ctx)`: its callbacks.

This module holds what the pages share: the context they read, and small view helpers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from dash import dcc, html

from aifmon.stores.store import SampleReader
from aifmon.telemetry.inventory import Inventory

GRAPH_CONFIG: dcc.Graph.Config = {"displaylogo": False, "displayModeBar": "hover", "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
EVERYONE = frozenset({"operator", "board"})
OPERATOR = frozenset({"operator"})


@dataclass
class PageContext:
    """What every page reads: the store, the inventory, the live refresh period (s), where the monthly
    reports are (`aifmon report monthly --out DIR/YYYY-MM`), and the alert evaluator's state file."""

    store: SampleReader
    inventory: Inventory
    refresh_s: float
    reports_dir: Path
    alert_state: Path
    timings: CallbackTimings = field(default_factory=lambda: CallbackTimings())


class CallbackTimings:
    """The last server time of each page's callbacks, so a page's one interval can be kept longer than
    its slowest callback: a refresh never starts while the previous one is still being computed."""

    def __init__(self) -> None:
        self._last_s: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def record(self, page: str, callback: str, seconds: float) -> None:
        with self._lock:
            self._last_s.setdefault(page, {})[callback] = seconds

    def interval_ms(self, page: str, refresh_s: float) -> int:
        """The refresh period, or twice the slowest callback of `page` if that is longer (ms)."""
        with self._lock:
            slowest = max(self._last_s.get(page, {}).values(), default=0.0)
        return int(max(refresh_s, 2.0 * slowest) * 1000)


class timed:
    """`with timed(ctx, PREFIX, "live"):` records the block's wall time in `ctx.timings`."""

    def __init__(self, ctx: PageContext, page: str, callback: str) -> None:
        self.ctx, self.page, self.callback = ctx, page, callback

    def __enter__(self) -> timed:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ctx.timings.record(self.page, self.callback, time.perf_counter() - self.t0)


def kpi(label: str, value: str, kid: str, level: str = "") -> html.Div:
    """A big figure with its label; `value` carries its unit."""
    return html.Div([html.Div(value, className=f"kpi-value level-{level}" if level else "kpi-value", id=kid),
                     html.Div(label, className="kpi-label")], className="kpi")


def query_string(values: dict[str, object]) -> str:
    """`?a=1&b=2` from the non-empty values (the URL a view can be linked by)."""
    kept = {k: v for k, v in values.items() if v not in (None, "")}
    return "?" + urlencode(kept) if kept else ""


def parse_query(search: str | None) -> dict[str, list[str]]:
    """A URL query string as parse_qs gives it (`?factory=x` -> {"factory": ["x"]})."""
    return parse_qs((search or "").lstrip("?"))


def utc(ms: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))
