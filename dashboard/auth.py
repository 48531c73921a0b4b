"""Dashboard users and roles: who may sign in, and which pages each role may open.

Users come from a YAML file (`aifmon dashboard --users FILE`) or, without one, from the environment
variable `AIFMON_DASHBOARD_USERS`; passwords are stored only as bcrypt hashes:

    users:
      alice: {role: operator, password_hash: "$2b$12$..."}
      board-chair: {role: board, password_hash: "$2b$12$..."}

    AIFMON_DASHBOARD_USERS='alice:operator:$2b$12$...,board-chair:board:$2b$12$...'

Make a hash with `python -m aifmon.dashboard.auth` (asks for the password twice, prints the hash).
Roles: `operator` opens every page; `board` the overview, projects, efficiency and reports.

Sign-in is a form that sets a signed session cookie (Flask's), so every page, callback and download
of the app is checked on the server: a board user cannot read an operator page's callbacks either.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from aifmon.telemetry.errors import UserError
from aifmon.telemetry.passwords import BcryptChecker

log = logging.getLogger(__name__)

ROLES = ("operator", "board")
USERS_ENV = "AIFMON_DASHBOARD_USERS"
SECRET_ENV = "AIFMON_DASHBOARD_SECRET"
_HASH_PREFIXES = ("$2a$", "$2b$", "$2y$")


class UsersError(UserError, ValueError):
    """A users file or variable that cannot be used; the message names it and says what is expected."""


@dataclass
class Users:
    """User name -> (role, bcrypt hash). `check` caches a good password's SHA-256 so bcrypt's deliberate
    cost (~0.2 s at cost 12) is paid once per user and process, not on every sign-in."""

    entries: dict[str, tuple[str, bytes]]
    source: str
    _checker: BcryptChecker = field(default_factory=BcryptChecker)

    def check(self, username: str, password: str) -> str | None:
        """The user's role if the password matches, else None."""
        entry = self.entries.get(username)
        if entry is None:
            return None
        role, hashed = entry
        return role if self._checker.check(username, password, hashed) else None


def _entry(source: str, user: str, role: object, hashed: object) -> tuple[str, tuple[str, bytes]]:
    if role not in ROLES:
        raise UsersError(f"{source}: user {user!r}: role {role!r}; expected one of {', '.join(ROLES)}")
    if not isinstance(hashed, str) or not hashed.startswith(_HASH_PREFIXES):
        raise UsersError(f"{source}: user {user!r}: expected a bcrypt hash ($2b$...), never a plain password; "
                         "make one with `python -m aifmon.dashboard.auth`")
    return user, (str(role), hashed.encode())


def load_users(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Users | None:
    """Users from the file at `path`, else from `AIFMON_DASHBOARD_USERS`; None when neither is given."""
    env = os.environ if environ is None else environ
    if path is not None:
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise UsersError(f"users file {path}: {e}") from None
        users = doc.get("users") if isinstance(doc, dict) else None
        if not isinstance(users, dict) or not users:
            raise UsersError(f"users file {path}: expected a mapping 'users:' of name -> {{role, password_hash}}")
        entries = {}
        for user, spec in users.items():
            if not isinstance(spec, dict) or set(spec) != {"role", "password_hash"}:
                raise UsersError(f"users file {path}: users.{user}: expected exactly the keys role and password_hash")
            name, entry = _entry(f"users file {path}", str(user), spec["role"], spec["password_hash"])
            entries[name] = entry
        return Users(entries, str(path))
    text = env.get(USERS_ENV, "").strip()
    if not text:
        return None
    entries = {}
    for item in text.split(","):
        parts = item.strip().split(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise UsersError(f"{USERS_ENV}: {item.strip()[:20]!r}...: expected user:role:bcrypt-hash, comma-separated")
        name, entry = _entry(USERS_ENV, parts[0], parts[1], parts[2])
        entries[name] = entry
    return Users(entries, USERS_ENV)


def install(server, users: Users, allowed: Callable[[str, str, dict | None], bool]) -> None:
    """Guard every request of the Flask `server`: sign-in form at /login, sign-out at /logout.

    `allowed(role, path, body)` says whether a signed-in role may have a request (page, callback or file).
    Unsigned requests for pages are sent to the form; others (callbacks, files) get 401.
    """
    from flask import Response, redirect, request, session

    server.secret_key = os.environ.get(SECRET_ENV) or secrets.token_bytes(32)  # random: sessions end with the process
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    open_paths = {"/login", "/assets/aifmon.css", "/_favicon.ico"}

    @server.before_request
    def guard():
        if request.path in open_paths:
            return None
        role = session.get("role")
        if role is None or session.get("user") not in users.entries:
            if request.method == "GET" and not request.path.startswith(("/_dash", "/reports/files")):
                return redirect(f"/login?next={_local(request.full_path)}")
            return Response("sign in first", status=401)
        if not allowed(role, request.path, request.get_json(silent=True) if request.is_json else None):
            return Response(f"the {role} role may not open this", status=403)
        return None

    @server.route("/login", methods=["GET", "POST"])
    def login():
        target = _local(request.values.get("next", "/"))
        if request.method == "GET":
            return _form(target, "")
        user = request.form.get("username", "")
        role = users.check(user, request.form.get("password", ""))
        if role is None:
            log.warning("dashboard: refused sign-in for user %r from %s", user, request.remote_addr)
            return _form(target, "Wrong user name or password."), 401
        session.clear()
        session.update(user=user, role=role)
        return redirect(target)

    @server.route("/logout")
    def logout():
        session.clear()
        return redirect("/login")


def _local(target: str) -> str:
    """Only a path on this site may follow sign-in (no open redirect to another host)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target.rstrip("?") or "/"


def _form(target: str, error: str) -> str:
    message = f'<p class="banner error" id="login-error">{escape(error)}</p>' if error else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>aifmon: sign in</title>
<link rel="stylesheet" href="/assets/aifmon.css"></head><body>
<header class="topbar"><span class="brand">aifmon</span><span class="site">sign in</span></header>
<main><form method="post" action="/login" class="panel login">
<h1>Sign in to the aifmon dashboard</h1>{message}
<input type="hidden" name="next" value="{escape(target)}">
<label>User name <input name="username" id="login-user" autocomplete="username" required autofocus></label>
<label>Password <input name="password" id="login-password" type="password" autocomplete="current-password" required></label>
<button type="submit" id="login-submit">Sign in</button></form></main></body></html>"""


def _hash_from_prompt() -> int:
    import bcrypt

    password = getpass.getpass("password: ")
    if password != getpass.getpass("again: "):
        print("the two passwords differ", file=sys.stderr)
        return 1
    if len(password) < 12:
        print("use at least 12 characters", file=sys.stderr)
        return 1
    print(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=12)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(_hash_from_prompt())
