"""Dashboard users and roles: who may sign in, and which pages each role may open.

Users come from a YAML file (`aifmon dashboard --users FILE`) or, without one, from the environment
variable `AIFMON_DASHBOARD_USERS`; passwords are stored only as bcrypt hashes:

    users:
      alice: {role: operator, password_hash: "$2b$12$..."}
      board-chair: {role: board, password_hash: "$2b$12$..."}

    AIFMON_DASHBOARD_USERS='alice:operator:$2b$12$...,board-chair:board:$2b$12$...'

Make a hash with `python -m aifmon.dashboard.auth` (asks for the password twice, prints the hash).
Roles: `operator` opens every page; `board` the overview, projects, efficiency and reports.

Sign-in is a form; the session lives on the server and the cookie (signed, HttpOnly, SameSite=Strict,
Secure over HTTPS) carries only its id, so sign-out ends every copy of it. Every request is checked:
the users file is re-read when it changes (its role applies on the next request; a user removed from it,
or given a new password, is signed out), and a board user cannot read an operator page's callbacks either.
Failed sign-ins are throttled per user name and per client (dashboard/signin.py), unknown user names
cost as much as known ones, and bcrypt runs at most a few checks at once (telemetry/passwords.py).
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Mapping
from html import escape
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from aifmon.dashboard.signin import Sessions, SignInPolicy, Throttle
from aifmon.telemetry.errors import UserError
from aifmon.telemetry.passwords import DEFAULT_CONCURRENCY, HASH_PREFIXES, BcryptChecker, PasswordCheckBusy, bcrypt_cost
from aifmon.telemetry.safe_yaml import YAMLFileError, load_yaml_file

log = logging.getLogger(__name__)

ROLES = ("operator", "board")
USERS_ENV = "AIFMON_DASHBOARD_USERS"
SECRET_ENV = "AIFMON_DASHBOARD_SECRET"
_MAX_NAME = 256  # longer user names are cut before they become throttle keys or log lines


class UsersError(UserError, ValueError):
    """A users file or variable that cannot be used; the message names it and says what is expected."""


class User(NamedTuple):
    role: str
    password_hash: bytes


class Users:
    """User name -> `User`, from a file (re-read whenever it changes, see `refresh`) or the environment.

    `check` pays bcrypt's cost (~0.2 s at cost 12) once per user and password and process; an unknown user
    name pays it too, against a dummy hash of the file's highest cost. At most `concurrency` checks run at once.
    """

    def __init__(self, entries: dict[str, User], source: str, path: Path | None = None,
                 concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.entries = entries
        self.source = source
        self.error: str | None = None  # why the users file cannot be used now (every request is refused meanwhile)
        self._path = path
        self._stamp = _stamp(path) if path is not None else None
        self._checker = BcryptChecker(concurrency)
        self._checker.prepare(self._unknown_cost())
        self._lock = threading.Lock()

    def check(self, username: str, password: str) -> str | None:
        """The user's role if the password matches, else None (see `verify`)."""
        user = self.verify(username, password)
        return user.role if user is not None else None

    def verify(self, username: str, password: str) -> User | None:
        """The user if the password matches, else None. Raises `PasswordCheckBusy` when every bcrypt slot is
        taken (answer "try again" at once: queueing would hold a server thread per attempt)."""
        user = self.entries.get(username)
        ok = self._checker.check(username, password, user.password_hash if user else None, self._unknown_cost())
        return user if ok else None

    def refresh(self) -> None:
        """Re-read the users file if it changed since it was read (a stat per call). A file that can no longer be
        read or parsed sets `error` (logged once per change of the file) until it is fixed."""
        if self._path is None:
            return
        stamp: tuple[int, int, int] | None = None
        failure: str | None = None
        try:
            stamp = _stamp(self._path)
        except OSError as e:
            failure = f"users file {self._path}: {e.strerror}"
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return  # another request re-read it meanwhile
            self._stamp = stamp
            if failure is None:
                try:
                    self.entries = _read_file(self._path)
                    self._checker.prepare(self._unknown_cost())
                    log.info("dashboard: users file %s re-read: %d user(s)", self._path, len(self.entries))
                except UsersError as e:
                    failure = str(e)
            if failure is not None:
                log.error("dashboard: %s; every request is refused until it is fixed", failure)
            self.error = failure

    def _unknown_cost(self) -> int:
        return max((bcrypt_cost(u.password_hash) for u in self.entries.values()), default=12)


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def _entry(source: str, user: str, role: object, hashed: object) -> tuple[str, User]:
    if role not in ROLES:
        raise UsersError(f"{source}: user {user!r}: role {role!r}; expected one of {', '.join(ROLES)}")
    if not isinstance(hashed, str) or not hashed.startswith(HASH_PREFIXES) or not hashed[4:6].isdigit():
        raise UsersError(f"{source}: user {user!r}: expected a bcrypt hash ($2b$12$...), never a plain password; "
                         "make one with `python -m aifmon.dashboard.auth`")
    return user, User(str(role), hashed.encode())


def _read_file(path: Path) -> dict[str, User]:
    try:
        doc = load_yaml_file(str(path), default={})
    except YAMLFileError as e:
        raise UsersError(f"users file {e}") from None
    users = doc.get("users") if isinstance(doc, dict) else None
    if not isinstance(users, dict) or not users:
        raise UsersError(f"users file {path}: expected a mapping 'users:' of name -> {{role, password_hash}}")
    entries = {}
    for user, spec in users.items():
        if not isinstance(spec, dict) or set(spec) != {"role", "password_hash"}:
            raise UsersError(f"users file {path}: users.{user}: expected exactly the keys role and password_hash")
        name, entry = _entry(f"users file {path}", str(user), spec["role"], spec["password_hash"])
        entries[name] = entry
    return entries


def load_users(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
               concurrency: int = DEFAULT_CONCURRENCY) -> Users | None:
    """Users from the file at `path` (re-read when it changes), else from `AIFMON_DASHBOARD_USERS`; None when
    neither is given. `concurrency`: bcrypt checks at once."""
    env = os.environ if environ is None else environ
    if path is not None:
        return Users(_read_file(Path(path)), str(path), Path(path), concurrency)
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
    return Users(entries, USERS_ENV, None, concurrency)


def signed_in() -> tuple[str, str] | None:
    """(user, role) of the request being served, as the guard found them in the users file; None if nobody."""
    from flask import g

    return g.get("aifmon_signed_in")


def install(server, users: Users, allowed: Callable[[str, str, dict | None], bool], policy: SignInPolicy | None = None) -> None:
    """Guard every request of the Flask `server`: sign-in form at /login, sign-out at /logout.

    `allowed(role, path, body)` says whether a signed-in role may have a request (page, callback or file).
    Unsigned requests for pages are sent to the form; others (callbacks, files) get 401.
    """
    from flask import Response, g, redirect, request, session
    from flask.sessions import SecureCookieSessionInterface

    rules = policy or SignInPolicy()
    sessions = Sessions(rules)
    throttle = Throttle(rules)

    class CookieSessions(SecureCookieSessionInterface):
        def get_cookie_secure(self, app) -> bool:
            # request.scheme is https when the request came over TLS, or from --trusted-proxy saying so
            return rules.secure_cookie or request.scheme == "https"

    server.secret_key = os.environ.get(SECRET_ENV) or secrets.token_bytes(32)  # signs the cookie holding the session id
    server.session_interface = CookieSessions()
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    open_paths = {"/login", "/assets/aifmon.css", "/_favicon.ico"}

    @server.before_request
    def guard():
        users.refresh()
        if users.error is not None:
            return Response("sign-in is unavailable: the dashboard cannot read its users file (see its log)", status=503)
        if request.path in open_paths:
            return None
        sid = session.get("sid")
        current = sessions.get(sid)
        user = users.entries.get(current.user) if current is not None else None
        if current is not None and (user is None or user.password_hash != current.password_hash):
            sessions.end(sid)  # removed from the users file, or a new password there: signed out
            log.warning("dashboard: session of %r ended: user removed or password changed in %s", current.user, users.source)
            user = None
        if current is None or user is None:
            if sid is not None:
                session.clear()  # an ended session's cookie is deleted
            if request.method == "GET" and not request.path.startswith(("/_dash", "/reports/files")):
                return redirect(f"/login?next={_local(request.full_path)}")
            return Response("sign in first", status=401)
        g.aifmon_signed_in = (current.user, user.role)
        if not allowed(user.role, request.path, request.get_json(silent=True) if request.is_json else None):
            return Response(f"the {user.role} role may not open this", status=403)
        return None

    @server.route("/login", methods=["GET", "POST"])
    def login():
        target = _local(request.values.get("next", "/"))
        if request.method == "GET":
            return _form(target, "")
        name = request.form.get("username", "")[:_MAX_NAME]
        client = request.remote_addr or "unknown"
        keys = {"for this user name": f"user:{name}", "from this address": f"client:{client}"}  # one count each
        scope, wait = max(((scope, throttle.wait_s(key)) for scope, key in keys.items()), key=lambda sw: sw[1])
        if wait:
            return _refusal(target, f"Too many failed sign-ins {scope}; try again in {wait} s.", 429, wait)
        try:
            user = users.verify(name, request.form.get("password", ""))
        except PasswordCheckBusy:
            return _refusal(target, "The server is busy checking other sign-ins; try again in a moment.", 503, 1)
        if user is None:
            log.warning("dashboard: refused sign-in for user %r from %s", name, client)
            for key in keys.values():
                seconds = throttle.failed(key)
                if seconds:
                    log.warning("dashboard: sign-in for %r refused for %g s after repeated failures", key, seconds)
            return _form(target, "Wrong user name or password."), 401
        throttle.forget(keys["for this user name"])
        sessions.end(session.get("sid"))  # a sign-in over a live session replaces it
        session.clear()
        session["sid"] = sessions.start(name, user.password_hash)
        return redirect(target)

    @server.route("/logout")
    def logout():
        sessions.end(session.get("sid"))
        session.clear()
        return redirect("/login")

    def _refusal(target: str, message: str, status: int, retry_after_s: int):
        return Response(_form(target, message), status=status, headers={"Retry-After": str(retry_after_s)},
                        content_type="text/html; charset=utf-8")


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
