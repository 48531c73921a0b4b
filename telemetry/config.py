"""Configuration shared by every command: listen addresses, store URLs, defaults."""

from __future__ import annotations

import ipaddress
import re
import time
from datetime import UTC, datetime

from aifmon.telemetry.errors import UserError

DEFAULT_STORE_URL = "duckdb:///data/aifmon.duckdb"
DEFAULT_DASHBOARD_LISTEN = "127.0.0.1:8050"
DEFAULT_SCRAPE_INTERVAL_S = 5.0


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (or `:port`, meaning 127.0.0.1) → (host, port); a UserError naming the address and the expected form."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"listen address {listen!r} is not host:port (e.g. 127.0.0.1:9101)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


_HOST_PORT = re.compile(r"^([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


def host_port(text: str) -> tuple[str, int] | None:
    """`host:port` (a name, IPv4 or `[IPv6]` address, and a port 1–65535) → (host, port), brackets removed; None otherwise."""
    m = _HOST_PORT.match(text)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        return None
    return m.group(1).strip("[]"), int(m.group(2))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_RELATIVE = re.compile(r"^(now)?-(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float | None = None) -> int:
    """A time on the command line → ms since the Unix epoch (UTC).

    Accepts `now`, relative times (`-24h`, `now-30m`, units s/m/h/d), ISO 8601 (`2026-11-23`,
    `2026-11-23T06:00`, `2026-11-23T06:00:00+01:00`; no zone means UTC) and Unix seconds; anything else is a
    UserError naming the text.
    """
    now = time.time() if now is None else now
    t = text.strip()
    if t == "now":
        return int(now * 1000)
    m = _RELATIVE.match(t)
    if m:
        return int((now - float(m.group(2)) * _UNIT_S[m.group(3)]) * 1000)
    if re.fullmatch(r"\d{9,11}(\.\d+)?", t):
        return int(float(t) * 1000)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"time {text!r} is not understood; use ISO 8601 (2026-11-23T06:00Z), now, -24h or Unix seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)
