"""Checking passwords against bcrypt hashes (dashboard users, exporter basic auth).

bcrypt is slow on purpose (tens to hundreds of ms a check), which makes it a lever for an attacker too:
- a password that matched once is remembered as its SHA-256 (per user and hash), so a signed-in user or a
  scraper pays the cost once per process, not on every request;
- an unknown user name is checked against a dummy hash of the same cost, so the answer takes as long as a
  known user's wrong password and user names cannot be found by timing;
- at most `concurrency` checks run at once; one more is refused at once (`PasswordCheckBusy`) rather than
  queued, so a flood of wrong logins keeps only that many threads and cores busy and everything else
  (signed-in pages, scrapes) is still served.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

DEFAULT_CONCURRENCY = 2
HASH_PREFIXES = ("$2a$", "$2b$", "$2y$")


class PasswordCheckBusy(Exception):
    """Every bcrypt slot is taken: the check was refused without running (try again in a moment)."""


def bcrypt_cost(hashed: bytes) -> int:
    """The cost (log2 rounds) of a bcrypt hash `$2b$12$...`: 12."""
    try:
        return int(hashed[4:6])
    except ValueError:
        raise ValueError(f"not a bcrypt hash: {hashed[:7]!r}...") from None


class BcryptChecker:
    """Checks (user, password) against a bcrypt hash or, for an unknown user, a dummy hash of the same cost."""

    def __init__(self, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        if concurrency < 1:
            raise ValueError(f"bcrypt concurrency {concurrency}: expected at least 1")
        self._verified: dict[tuple[str, bytes], bytes] = {}  # (user, hash) -> SHA-256 of a password that matched
        self._dummies: dict[int, bytes] = {}  # cost -> a hash of a random password nobody knows
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)

    def prepare(self, cost: int) -> None:
        """Make the dummy hash of `cost` now (one bcrypt), so the first unknown user is not slower than the rest."""
        self._dummy(cost)

    def check(self, username: str, password: str, hashed: bytes | None, unknown_cost: int) -> bool:
        """True if `password` matches `hashed`; `hashed` None (an unknown user) runs a check of `unknown_cost`
        against a dummy hash and is False. Raises `PasswordCheckBusy` when every slot is taken."""
        digest = hashlib.sha256(password.encode()).digest()
        if hashed is not None:
            with self._lock:
                known = self._verified.get((username, hashed))
            if known is not None and hmac.compare_digest(known, digest):
                return True
        import bcrypt  # only sites that configure users need it

        if not self._slots.acquire(blocking=False):
            raise PasswordCheckBusy("every password check slot is busy")
        try:
            if hashed is None:
                bcrypt.checkpw(password.encode(), self._dummy(unknown_cost))
                return False
            ok = bcrypt.checkpw(password.encode(), hashed)
        finally:
            self._slots.release()
        if ok:
            with self._lock:
                self._verified[(username, hashed)] = digest
        return ok

    def _dummy(self, cost: int) -> bytes:
        with self._lock:
            dummy = self._dummies.get(cost)
        if dummy is None:
            import bcrypt

            dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
            with self._lock:
                self._dummies[cost] = dummy
        return dummy
