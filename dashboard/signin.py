"""The dashboard's sign-in rules, apart from Flask: failed-sign-in backoff and server-side sessions.

Both take a clock (`time.monotonic` unless given) so their rules can be checked with exact numbers.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class SignInPolicy:
    """How sign-in is throttled and how long a session lasts (every duration in seconds).

    After `attempts` failed sign-ins for one user name, or from one client address, that name or client is
    refused for `backoff_s`, doubling with every further failure up to `max_backoff_s`; failures are forgotten
    after `window_s` without one. A session ends after `idle_s` without a request, `max_age_s` after its
    sign-in, at sign-out, or when its user leaves the users file or gets a new password.
    """

    attempts: int = 5
    backoff_s: float = 10.0
    max_backoff_s: float = 900.0
    window_s: float = 900.0
    idle_s: float = 8 * 3600.0
    max_age_s: float = 7 * 86400.0
    secure_cookie: bool = False  # Secure on every cookie; without it, only on requests that came over HTTPS

    def __post_init__(self) -> None:
        for name in ("attempts", "backoff_s", "max_backoff_s", "window_s", "idle_s", "max_age_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sign-in policy: {name} must be positive, not {getattr(self, name)!r}")


@dataclass
class _Failures:
    count: int
    last: float
    locked_until: float


class Throttle:
    """Failed sign-ins per key (a user name or a client address), with exponential backoff."""

    MAX_KEYS = 100_000  # a spray of made-up user names cannot grow memory without bound: the oldest go first

    def __init__(self, policy: SignInPolicy, clock: Clock = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._keys: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def wait_s(self, key: str) -> int:
        """Whole seconds until `key` may try again; 0 when it may now."""
        with self._lock:
            entry = self._keys.get(key)
            left = entry.locked_until - self._clock() if entry is not None else 0.0
        return math.ceil(left) if left > 0 else 0

    def failed(self, key: str) -> float:
        """Count a failed sign-in; from the `attempts`-th within the window on, lock the key.
        Returns how long it is now locked, s (0 if not)."""
        p = self._policy
        now = self._clock()
        with self._lock:
            entry = self._keys.pop(key, None)
            if entry is None or now - entry.last > p.window_s:
                entry = _Failures(0, now, 0.0)
            entry.count += 1
            entry.last = now
            locked = min(p.max_backoff_s, p.backoff_s * 2.0 ** min(entry.count - p.attempts, 60)) if entry.count >= p.attempts else 0.0
            entry.locked_until = now + locked
            self._keys[key] = entry
            while len(self._keys) > self.MAX_KEYS:
                self._keys.popitem(last=False)
        return locked

    def forget(self, key: str) -> None:
        """A good sign-in clears the key's failures."""
        with self._lock:
            self._keys.pop(key, None)


@dataclass
class Session:
    user: str
    password_hash: bytes  # the hash signed in against: a new password in the users file ends the session
    started: float
    seen: float


class Sessions:
    """Sessions held on the server; the cookie carries only the id. Ending one makes every copy of its cookie
    useless, and a restart of the dashboard ends them all."""

    def __init__(self, policy: SignInPolicy, clock: Clock = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, user: str, password_hash: bytes) -> str:
        """A new session for `user`; returns its id (random, 256 bits)."""
        now = self._clock()
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if self._live(s, now)}
            self._sessions[sid] = Session(user, password_hash, now, now)
        return sid

    def get(self, sid: object) -> Session | None:
        """The live session `sid`, marked as seen now; None if there is none or it expired (then it is ended)."""
        if not isinstance(sid, str):
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if not self._live(session, now):
                del self._sessions[sid]
                return None
            session.seen = now
            return session

    def end(self, sid: object) -> None:
        if isinstance(sid, str):
            with self._lock:
                self._sessions.pop(sid, None)

    def _live(self, s: Session, now: float) -> bool:
        return now - s.seen <= self._policy.idle_s and now - s.started <= self._policy.max_age_s
