"""Sign-in against real `aifmon dashboard` processes (issue #13): throttling, unknown user names answered as slowly
as known ones, bcrypt bounded under a flood of wrong logins, roles re-read from the users file, sign-out, cookie
flags, and the compose stack's dashboard as docker-compose.yml runs it; the node exporter's basic auth; the rules
of the throttle and of session lifetimes with a clock of the test's own."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import yaml

from aifmon.dashboard.signin import Sessions, SignInPolicy, Throttle
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.passwords import BcryptChecker, PasswordCheckBusy
from tests.conftest import free_port, inventory_text, require_binary, wait_until

ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"olga": "operator-password-1", "bert": "board-password-22", "dora": "demoted-password-3", "tim": "timed-password-4"}
WRONG = "not-the-password"
def _hash(password: str, cost: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


def _write_users(path: Path, users: dict[str, tuple[str, str]]) -> None:
    """Write a users file: name -> (role, bcrypt hash)."""
    path.write_text("users:\n" + "".join(f"  {name}: {{role: {role}, password_hash: '{hashed}'}}\n" for name, (role, hashed) in users.items()))


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: str

    def cookie(self) -> str | None:
        """The session cookie this reply set (`session=...`), if any."""
        value = (self.headers.get("Set-Cookie") or "").split(";", 1)[0]
        return value if value.startswith("session=") and value != "session=" else None


@dataclass
class Dashboard:
    base: str
    port: int
    log: Path
    alerts_refresh: dict | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body, headers or {})
            r = conn.getresponse()
            return Reply(r.status, r.headers, r.read().decode(errors="replace"))
        finally:
            conn.close()

    def sign_in(self, user: str, password: str, headers: dict | None = None) -> Reply:
        form = urllib.parse.urlencode({"username": user, "password": password}).encode()
        return self.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})

    def session(self, user: str, password: str | None = None) -> str:
        """Sign `user` in (with a password of PASSWORDS unless given); returns the cookie header value."""
        reply = self.sign_in(user, password or PASSWORDS[user])
        cookie = reply.cookie()
        assert reply.status == 302 and cookie, (reply.status, reply.body[:300])
        return cookie

    def callback(self, cookie: str, body: dict | None = None) -> Reply:
        """Run a callback as the page would (by default the alerts page's refresh: an operator page's data)."""
        return self.request("POST", "/_dash-update-component", json.dumps(body or self._alerts_refresh(cookie)).encode(),
                            {"Content-Type": "application/json", "Cookie": cookie})

    def _alerts_refresh(self, cookie: str) -> dict:
        """The alerts page's refresh callback, as the app declares it (/_dash-dependencies, read the first time with
        `cookie`, which must then be signed in)."""
        if self.alerts_refresh is None:
            deps = json.loads(self.request("GET", "/_dash-dependencies", headers={"Cookie": cookie}).body)
            dep = next(d for d in deps if d["output"].startswith("..alerts-") and {"id": "alerts-tick", "property": "n_intervals"} in d["inputs"])
            outputs = [dict(zip(("id", "property"), o.rsplit(".", 1))) for o in dep["output"].strip(".").split("...")]
            self.alerts_refresh = {"output": dep["output"], "outputs": outputs, "changedPropIds": ["alerts-tick.n_intervals"],
                                   "inputs": [{**i, "value": 1 if i["id"] == "alerts-tick" else None} for i in dep["inputs"]],
                                   "state": [{**st, "value": None} for st in dep["state"]]}
        return self.alerts_refresh

    def page_for(self, cookie: str, path: str) -> Reply:
        """What the dashboard's router renders for `path` (the page itself, or a refusal in its place)."""
        return self.callback(cookie, {"output": "page.children", "outputs": {"id": "page", "property": "children"},
                                      "inputs": [{"id": "url", "property": "pathname", "value": path}],
                                      "state": [{"id": "url", "property": "search", "value": ""}], "changedPropIds": ["url.pathname"]})


@contextmanager
def dashboard(tmp_path: Path, args: list[str], command: str = "dashboard") -> Iterator[Dashboard]:
    """`aifmon dashboard ARGS` (a DuckDB store and the test inventory unless ARGS give them) on a free loopback port;
    with `command="up"`, the whole embedded stack serving it (its simulators on free ports, no backfill)."""
    if "--listen" not in args:
        args = [*args, "--listen", f"127.0.0.1:{free_port()}"]
    port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
    if "--inventory" not in args:
        targets = {"alpha": f"127.0.0.1:{free_port()}", "beta": f"127.0.0.1:{free_port()}"} if command == "up" else None
        (tmp_path / "inv.yaml").write_text(inventory_text(targets))
        args = [*args, "--inventory", str(tmp_path / "inv.yaml")]
    if "--store" not in args:
        DuckDBStore(tmp_path / "store.duckdb").close()
        args = [*args, "--store", f"duckdb:///{tmp_path / 'store.duckdb'}"]
    if command == "up":
        args = [*args, "--backfill-hours", "0", "--reports-dir", str(tmp_path / "reports")]
    log = tmp_path / f"dashboard-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aifmon", command, *args], stderr=out, cwd=tmp_path)
    d = Dashboard(f"http://127.0.0.1:{port}", port, log)

    def answers() -> bool:
        try:
            return d.request("GET", "/login").status == 200
        except OSError:
            return False

    try:
        wait_until(lambda: proc.poll() is not None or answers(), 60, "the dashboard's sign-in form", poll_s=0.2)
        assert proc.poll() is None, log.read_text()
        yield d
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]


@pytest.fixture(scope="module")
def throttled(tmp_path_factory) -> Iterator[Dashboard]:
    """A real `aifmon up` with users: five failures lock for 5 s; behind a trusted proxy (127.0.0.1) so X-Forwarded-For
    stands for many clients."""
    tmp = tmp_path_factory.mktemp("throttled")
    _write_users(tmp / "users.yaml", {"olga": ("operator", _hash(PASSWORDS["olga"], 4)), "bert": ("board", _hash(PASSWORDS["bert"], 4))})
    with dashboard(tmp, ["--users", str(tmp / "users.yaml"), "--signin-attempts", "5", "--signin-backoff", "5",
                         "--trusted-proxy", "127.0.0.1"], command="up") as d:
        yield d


@pytest.fixture(scope="module")
def open_door(tmp_path_factory) -> Iterator[tuple[Dashboard, Path, dict]]:
    """No practical throttle (so floods and timings reach bcrypt), Secure cookies always; `tim` hashed at the real
    cost 12, the others at 4. Yields (dashboard, users file, users)."""
    tmp = tmp_path_factory.mktemp("open")
    users = {"tim": ("operator", _hash(PASSWORDS["tim"], 12)), "olga": ("operator", _hash(PASSWORDS["olga"], 4)),
             "bert": ("board", _hash(PASSWORDS["bert"], 4)), "dora": ("operator", _hash(PASSWORDS["dora"], 4))}
    _write_users(tmp / "users.yaml", users)
    with dashboard(tmp, ["--users", str(tmp / "users.yaml"), "--signin-attempts", "1000000", "--secure-cookie"]) as d:
        yield d, tmp / "users.yaml", users


def test_failed_sign_ins_lock_the_user_name_then_the_client_with_a_clear_answer(throttled):
    d = throttled
    # five wrong passwords for olga from five clients: each a plain refusal
    statuses = [d.sign_in("olga", WRONG, {"X-Forwarded-For": f"10.0.0.{i}"}).status for i in range(1, 5)]
    before_lock = time.monotonic()  # the lock starts as the server answers the fifth
    statuses.append(d.sign_in("olga", WRONG, {"X-Forwarded-For": "10.0.0.5"}).status)
    assert statuses == [401] * 5
    sixth = d.sign_in("olga", WRONG, {"X-Forwarded-For": "10.0.0.6"})
    assert sixth.status == 429 and 1 <= int(sixth.headers["Retry-After"]) <= 5
    assert "Too many failed sign-ins for this user name; try again in" in sixth.body
    # her right password is refused too while the lock lasts, from yet another client...
    assert d.sign_in("olga", PASSWORDS["olga"], {"X-Forwarded-For": "10.0.0.7"}).status == 429
    # ...and taken once it is over
    tries: list[int] = []

    def accepted() -> bool:
        tries.append(d.sign_in("olga", PASSWORDS["olga"], {"X-Forwarded-For": "10.0.0.7"}).status)
        return tries[-1] == 302

    wait_until(accepted, 30, "olga's sign-in after the backoff", poll_s=0.25)
    assert time.monotonic() - before_lock >= 5.0, "accepted before the 5 s backoff was over"
    assert set(tries[:-1]) <= {429} and tries[-1] == 302

    # one client trying five made-up names is locked as a client, for any name, while other clients are not
    assert [d.sign_in(f"nobody{i}", WRONG, {"X-Forwarded-For": "10.0.1.1"}).status for i in range(5)] == [401] * 5
    refused = d.sign_in("bert", PASSWORDS["bert"], {"X-Forwarded-For": "10.0.1.1"})
    assert refused.status == 429 and "Too many failed sign-ins from this address" in refused.body
    assert d.sign_in("bert", PASSWORDS["bert"], {"X-Forwarded-For": "10.0.1.2"}).status == 302
    assert "refused for 5 s after repeated failures" in d.log.read_text()


def test_session_cookie_flags(throttled, open_door):
    plain = throttled.sign_in("bert", PASSWORDS["bert"], {"X-Forwarded-For": "10.0.2.1"})
    over_tls = throttled.sign_in("bert", PASSWORDS["bert"], {"X-Forwarded-For": "10.0.2.2", "X-Forwarded-Proto": "https"})
    always = open_door[0].sign_in("bert", PASSWORDS["bert"])
    flags = {name: {f.strip().split("=")[0].lower() for f in r.headers["Set-Cookie"].split(";")[1:]} | {"status:" + str(r.status)}
             for name, r in (("plain", plain), ("over_tls", over_tls), ("always", always))}
    assert flags["plain"] == {"httponly", "path", "samesite", "status:302"}
    assert flags["over_tls"] == flags["always"] == {"httponly", "path", "samesite", "secure", "status:302"}
    assert all("SameSite=Strict" in r.headers["Set-Cookie"] for r in (plain, over_tls, always))


def test_unknown_user_names_take_as_long_as_known_ones(open_door):
    d = open_door[0]
    known, unknown = [], []
    for _ in range(7):  # interleaved, so a busy moment of the machine falls on both
        for name, timings in (("tim", known), ("tom", unknown)):
            start = time.perf_counter()
            assert d.sign_in(name, WRONG).status == 401
            timings.append(time.perf_counter() - start)
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 <= ratio <= 2.0, (ratio, known, unknown)


FLOOD = """
import collections, http.client, json, sys, threading, urllib.parse
port, user, clients = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
body = urllib.parse.urlencode({"username": user, "password": "not-the-password"})
counts, lock, stop = collections.Counter(), threading.Lock(), threading.Event()
def post():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        try:
            conn.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
            r = conn.getresponse()
            r.read()
            status = r.status
        except OSError:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status = "error"
        with lock:
            counts[status] += 1
threads = [threading.Thread(target=post) for _ in range(clients)]
for t in threads:
    t.start()
sys.stdin.read()  # until the test closes stdin
stop.set()
for t in threads:
    t.join()
print(json.dumps(counts))
"""


def test_signed_in_pages_are_served_while_16_clients_post_wrong_logins(open_door):
    d = open_door[0]
    cookie = d.session("olga")
    check_s = []  # one bcrypt check at cost 12, as this machine runs it now
    for _ in range(3):
        start = time.perf_counter()
        assert d.sign_in("tim", WRONG).status == 401
        check_s.append(time.perf_counter() - start)
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(d.port), "tim", "16"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        # the flood has taken every bcrypt slot once a wrong login is turned away unchecked
        wait_until(lambda: d.sign_in("tim", WRONG).status == 503, 60, "a sign-in refused as busy during the flood", poll_s=0.05)
        served_s = []
        for _ in range(5):
            start = time.perf_counter()
            reply = d.request("GET", "/_dash-layout", headers={"Cookie": cookie})
            served_s.append(time.perf_counter() - start)
            assert reply.status == 200 and "olga (operator)" in reply.body
    finally:
        out, _ = flood.communicate("", timeout=120)
    counts = json.loads(out)
    assert set(counts) <= {"401", "503"} and counts.get("401", 0) > 0 and counts.get("503", 0) > 0, counts
    # Unbounded, 8 server threads would each run bcrypt on 2 cores and a page would wait behind them (~4 checks'
    # time); bounded, the rest of the flood is answered at once and a page waits for far less than one check.
    assert statistics.median(served_s) < 2 * statistics.median(check_s), (served_s, check_s, counts)


def test_roles_are_read_from_the_users_file_on_every_request(open_door):
    d, path, users = open_door
    cookie, olga = d.session("dora"), d.session("olga")
    assert d.callback(cookie).status == 200
    assert "not for the" not in d.page_for(cookie, "/factory").body
    try:
        _write_users(path, {**users, "dora": ("board", users["dora"][1])})  # demoted: the same cookie, the next request
        assert d.callback(cookie).status == 403
        assert "Factory live: not for the board role" in d.page_for(cookie, "/factory").body
        _write_users(path, {k: v for k, v in users.items() if k != "dora"})  # removed: signed out
        assert d.callback(cookie).status == 401
        assert d.request("GET", "/", headers={"Cookie": cookie}).status == 302  # to the sign-in form
        _write_users(path, users)
        assert d.callback(cookie).status == 401, "a user put back does not revive an ended session"
        cookie = d.session("dora")
        _write_users(path, {**users, "dora": ("operator", _hash(PASSWORDS["dora"] + "-new", 4))})  # a new password
        assert d.callback(cookie).status == 401 and d.sign_in("dora", PASSWORDS["dora"]).status == 401
        path.write_text("users: [")  # a broken file: every request refused until it is fixed, sessions kept
        assert d.callback(olga).status == 503
        assert "cannot read its users file" in d.sign_in("olga", PASSWORDS["olga"]).body
    finally:
        _write_users(path, users)
    assert d.callback(olga).status == 200
    log = d.log.read_text()
    assert "users file" in log and "every request is refused until it is fixed" in log


def test_sign_out_ends_the_session_for_every_copy_of_its_cookie(open_door):
    d = open_door[0]
    cookie, other = d.session("bert"), d.session("bert")
    assert d.request("GET", "/_dash-layout", headers={"Cookie": cookie}).status == 200
    out = d.request("GET", "/logout", headers={"Cookie": cookie})
    assert out.status == 302 and out.headers["Location"].endswith("/login") and "session=;" in out.headers["Set-Cookie"]
    # the browser drops its cookie; a copy of it, sent again, is refused: the session ended on the server
    assert d.request("GET", "/_dash-layout", headers={"Cookie": cookie}).status == 401
    assert d.request("GET", "/_dash-layout", headers={"Cookie": other}).status == 200  # bert's other session lives on


def test_compose_dashboard_signs_users_in_with_their_roles(tmp_path):
    """docker-compose.yml's dashboard service, run here as compose would: its command with the compose paths
    mapped onto files here, and the users file made by make-secrets.sh."""
    require_binary("openssl")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["dashboard"]
    command = service["command"]
    assert "--users" in command and not {"dashboard-proxy"} & set(compose["services"])
    users_secret = command[command.index("--users") + 1]
    assert users_secret.startswith("/run/secrets/") and users_secret.removeprefix("/run/secrets/") in service["secrets"]
    assert set(service.get("environment") or {}) <= {"AIFMON_POSTGRES_USER", "AIFMON_POSTGRES_PASSWORD_FILE"}, \
        "the dashboard takes nothing from the environment but where its rows store's password is"
    (tmp_path / "deploy/compose").mkdir(parents=True)
    shutil.copy(ROOT / "deploy/compose/make-secrets.sh", tmp_path / "deploy/compose/make-secrets.sh")
    made = subprocess.run(["sh", str(tmp_path / "deploy/compose/make-secrets.sh")], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert made.returncode == 0, made.stderr
    secrets = tmp_path / "deploy/compose/secrets"
    files = {f"/run/secrets/{name}": str(tmp_path / spec["file"]) for name, spec in compose["secrets"].items()}
    files["/etc/aifmon/inventory.yaml"] = str(ROOT / "deploy/compose/inventory.yaml")
    args = [files.get(a, a) for a in command[1:]]
    DuckDBStore(tmp_path / "store.duckdb").close()
    port = free_port()
    args[args.index("--store") + 1] = f"duckdb:///{tmp_path / 'store.duckdb'}"  # VictoriaMetrics is not what is tested here,
    del args[args.index("--rows-store"):args.index("--rows-store") + 2]  # nor PostgreSQL (tests/test_postgres_store.py)
    args[args.index("--listen") + 1] = f"127.0.0.1:{port}"  # the container's 0.0.0.0, on this machine's loopback
    passwords = {role: (secrets / f"dashboard-{role}-password").read_text() for role in ("operator", "board")}
    assert all(len(p) >= 40 and p not in made.stderr for p in passwords.values())  # made, and never printed
    with dashboard(tmp_path, args) as d:
        board = d.session("board", passwords["board"])
        assert d.callback(board).status == 403
        assert d.request("GET", "/factory").status == 302 and d.callback("session=x").status == 401  # nobody signed in
        for path, title in (("/factory", "Factory live"), ("/budgets", "Gigafactory budgets"), ("/alerts", "Alerts")):
            assert d.request("GET", path, headers={"Cookie": board}).status == 403  # the page's address
            assert f"{title}: not for the board role" in d.page_for(board, path).body  # and in-app navigation to it
        assert "projects-" in d.page_for(board, "/projects").body  # the board's own pages render
        operator = d.session("operator", passwords["operator"])
        assert d.callback(operator).status == 200
        assert "not for the" not in d.page_for(operator, "/factory").body
        # no proxy is trusted in the compose stack: a client claiming HTTPS gets no Secure cookie from that claim
        claim = d.sign_in("board", passwords["board"], {"X-Forwarded-Proto": "https"})
        assert claim.status == 302 and "Secure" not in claim.headers["Set-Cookie"]


def test_node_exporter_basic_auth_answers_unknown_users_as_slowly_as_known_ones(tmp_path):
    from aifmon.exporters.http import serve_exposition
    from aifmon.exporters.web_config import load_web_config

    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{_hash('scrape-me', 10)}'\n")
    port = free_port()
    server = serve_exposition(f"127.0.0.1:{port}", lambda: b"aif_gpu_up 1\n", "test", web=load_web_config(str(web)))

    def scrape(user: str) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        token = base64.b64encode(f"{user}:{WRONG}".encode()).decode()
        start = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
        assert conn.getresponse().status == 401
        conn.close()
        return time.perf_counter() - start

    try:
        known, unknown = [], []
        for _ in range(7):
            known.append(scrape("prometheus"))
            unknown.append(scrape("promethean"))
    finally:
        server.shutdown()
        server.server_close()
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 <= ratio <= 2.0, (ratio, known, unknown)


def test_bcrypt_runs_at_most_concurrency_checks_and_refuses_more_at_once():
    checker = BcryptChecker(concurrency=2)
    slow = _hash("slow", 14).encode()  # about a second a check
    fast = _hash("fast", 4).encode()
    results: list[bool] = []

    def slow_check() -> None:
        while True:  # the probe below may hold a slot for a moment as this starts
            try:
                results.append(checker.check("u", WRONG, slow, 14))
                return
            except PasswordCheckBusy:
                continue

    threads = [threading.Thread(target=slow_check) for _ in range(2)]
    for t in threads:
        t.start()
    refusals = 0

    def refused() -> bool:
        nonlocal refusals
        try:
            checker.check("v", "fast", fast, 4)
        except PasswordCheckBusy:
            refusals += 1
            return True
        return False

    wait_until(refused, 30, "a third check refused while two run")  # only the two slow checks can fill both slots
    for t in threads:
        t.join()
    assert refusals == 1 and results == [False, False]
    assert checker.check("v", "fast", fast, 4) is True  # slots free again
    assert checker.check("nobody", "x", None, 4) is False  # an unknown user: a dummy check, never True


def test_throttle_backs_off_exponentially_and_forgets():
    now = [1000.0]
    policy = SignInPolicy(attempts=3, backoff_s=10, max_backoff_s=35, window_s=100)
    throttle = Throttle(policy, clock=lambda: now[0])
    assert [throttle.failed("user:a") for _ in range(3)] == [0, 0, 10]
    assert throttle.wait_s("user:a") == 10 and throttle.wait_s("user:b") == 0
    now[0] += 9.5
    assert throttle.wait_s("user:a") == 1
    now[0] += 0.5
    assert throttle.wait_s("user:a") == 0
    assert [throttle.failed("user:a") for _ in range(3)] == [20, 35, 35]  # doubling, capped
    now[0] += 35 + 101  # the lock over, then a quiet window: forgotten
    assert throttle.failed("user:a") == 0
    for _ in range(2):
        throttle.failed("user:a")
    assert throttle.wait_s("user:a") == 10
    throttle.forget("user:a")
    assert throttle.wait_s("user:a") == 0


def test_sessions_end_when_idle_too_long_at_their_maximum_age_and_at_sign_out():
    now = [0.0]
    sessions = Sessions(SignInPolicy(idle_s=60, max_age_s=300), clock=lambda: now[0])
    busy, idle, gone = (sessions.start("u", b"h") for _ in range(3))
    for _ in range(4):  # busy is used every 50 s, idle not
        now[0] += 50
        assert sessions.get(busy) is not None
    assert sessions.get(idle) is None  # 200 s without a request
    sessions.end(gone)
    assert sessions.get(gone) is None
    now[0] += 50  # 250 s
    assert sessions.get(busy) is not None
    now[0] += 51  # 301 s after sign-in, though used 51 s ago
    assert sessions.get(busy) is None
    assert sessions.get(None) is None and sessions.get(123) is None
