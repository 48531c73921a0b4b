"""Checking passwords against bcrypt hashes (dashboard users, exporter basic auth).

bcrypt is slow on purpose (tens to hundreds of ms a check); a password that matched once is
remembered as its SHA-256, so the cost is paid once per user and process, not on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import threading


class BcryptChecker:
    """Checks (user, password) against a bcrypt hash, remembering good passwords per user."""

    def __init__(self) -> None:
        self._verified: dict[str, bytes] = {}  # user -> SHA-256 of a password that matched
        self._lock = threading.Lock()

    def check(self, username: str, password: str, hashed: bytes) -> bool:
        digest = hashlib.sha256(password.encode()).digest()
        with self._lock:
            known = self._verified.get(username)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        import bcrypt  # only sites that configure users need it

        if bcrypt.checkpw(password.encode(), hashed):
            with self._lock:
                self._verified[username] = digest
            return True
        return False
