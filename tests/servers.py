"""Real servers from Debian's packages, started on free loopback ports with temporary data folders."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port, require_binary, wait_for_http


@contextlib.contextmanager
def _child_server(args: list[str], workdir: Path, name: str, ready_path: str) -> Iterator[str]:
    """Run a server binary on a free loopback port (`{port}` in `args`), wait for `ready_path`; yields its base URL."""
    port = free_port()
    log = open(workdir / f"{name}.log", "w")
    proc = subprocess.Popen([a.format(port=port) for a in args], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + ready_path, timeout_s=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@contextlib.contextmanager
def prometheus(config: str, workdir: Path, storage: Path | None = None) -> Iterator[str]:
    """A Prometheus server running `config` (on `storage`, e.g. blocks from promtool); yields its base URL."""
    (workdir / "prometheus.yml").write_text(config)
    with _child_server(
        [require_binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={storage or workdir / 'tsdb'}",
         "--storage.tsdb.retention.time=30d", "--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        workdir, "prometheus", "/-/ready",
    ) as url:
        yield url


@contextlib.contextmanager
def prometheus_of(openmetrics: Path, workdir: Path) -> Iterator[str]:
    """A Prometheus serving the samples of an OpenMetrics file, made into TSDB blocks by promtool (as a site backfills
    history); yields its store URL, `prometheus+http://...`."""
    blocks = workdir / "prom-blocks"
    made = subprocess.run([require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(blocks)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    (workdir / "prom").mkdir()
    with prometheus("global: {scrape_interval: 1m}\n", workdir / "prom", storage=blocks) as url:
        yield url.replace("http://", "prometheus+http://")


def promql(base_url: str, query: str, at: float | None = None) -> list[dict]:
    """Instant query result vector, evaluated now or at Unix time `at` (s)."""
    params = {"query": query} if at is None else {"query": query, "time": f"{at:.3f}"}
    with urllib.request.urlopen(f"{base_url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


VM_DURABLE_AFTER_S = 7.0


class VictoriaMetrics:
    """A single-node VictoriaMetrics child process that a test can kill and restart on the same port and data."""

    def __init__(self, workdir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()):
        self.binary = require_binary("victoria-metrics")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_path = workdir / "victoria-metrics-data"
        self.log_path = workdir / "victoria-metrics.log"
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                # latencyOffset=0s: samples are visible to queries as soon as they are flushed, not 30 s later
                [self.binary, f"-storageDataPath={self.data_path}", f"-httpListenAddr=127.0.0.1:{self.port}",
                 "-search.latencyOffset=0s", "-loggerLevel=WARN", *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_for_http(self.url + "/health", timeout_s=60)
        except TimeoutError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: no shutdown flush. VictoriaMetrics has no write-ahead log, so samples it took in the last
        few seconds are lost; call `make_durable()` first when a test needs them to survive."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def force_flush(self) -> None:
        """Make every sample taken so far visible to queries (not durable: see `make_durable`)."""
        urllib.request.urlopen(self.url + "/internal/force_flush", timeout=30).read()

    def make_durable(self) -> None:
        """Wait until every sample taken so far would survive a SIGKILL. Measured on Debian's 1.79.5: after
        `force_flush`, samples are lost by a kill within 4 s and kept after 5 s (its periodic flush to disk);
        there is no endpoint that forces it, so wait with a margin."""
        self.force_flush()
        time.sleep(VM_DURABLE_AFTER_S)

    def export(self, match: str) -> list[dict]:
        """Raw samples of the series `match` selects (`/api/v1/export`: one JSON object per series, with
        `metric`, `values`, `timestamps` in ms), duplicates included."""
        self.force_flush()
        query = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=60) as r:
            return [json.loads(line) for line in r.read().splitlines() if line.strip()]


@contextlib.contextmanager
def victoria_metrics(workdir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()) -> Iterator[VictoriaMetrics]:
    """A running VictoriaMetrics (`.url` is its base URL); stopped on exit, also after a `kill()`/`start()`."""
    vm = VictoriaMetrics(workdir, port, extra_args)
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()


@contextlib.contextmanager
def alertmanager(config: str, workdir: Path) -> Iterator[str]:
    """A Prometheus Alertmanager (Debian's `prometheus-alertmanager`) running `config`, clustering off; yields its base URL."""
    (workdir / "alertmanager.yml").write_text(config)
    with _child_server(
        [require_binary("prometheus-alertmanager"), f"--config.file={workdir / 'alertmanager.yml'}",
         f"--storage.path={workdir / 'alertmanager-data'}", "--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         "--log.level=warn"],
        workdir, "alertmanager", "/-/ready",
    ) as url:
        yield url


@dataclass(frozen=True)
class PostgreSQL:
    """A PostgreSQL server of this test: the rows store URL, and the environment that gives it its credentials."""

    url: str
    env: dict[str, str]


def _postgres_program(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them off PATH, in /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else require_binary(name)


@contextlib.contextmanager
def postgresql() -> Iterator[PostgreSQL]:
    """A PostgreSQL server of its own (initdb, pg_ctl) on a free loopback port, with user `aifmon` (password in a
    file, scram-sha-256) and database `aifmon`. Run as the `postgres` user when the tests run as root, as initdb
    refuses root; in a folder of its own under /tmp, since pytest's are closed to other users."""
    initdb, pg_ctl = _postgres_program("initdb"), _postgres_program("pg_ctl")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="aifmon-pg-"))
    port, password = free_port(), secrets.token_urlsafe(16)
    (home / "password").write_text(password)
    if as_postgres:
        shutil.chown(home, "postgres")
        shutil.chown(home / "password", "postgres")
    data, log = home / "data", home / "server.log"
    try:
        subprocess.run([*as_postgres, initdb, "-D", str(data), "-U", "aifmon", "--auth=scram-sha-256", f"--pwfile={home / 'password'}",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
                        "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"], check=True, capture_output=True, timeout=90)
        subprocess.run([*as_postgres, _postgres_program("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "aifmon", "aifmon"],
                       check=True, capture_output=True, timeout=60, env={**os.environ, "PGPASSWORD": password})
        yield PostgreSQL(f"postgresql://127.0.0.1:{port}/aifmon",
                         {"AIFMON_POSTGRES_USER": "aifmon", "AIFMON_POSTGRES_PASSWORD_FILE": str(home / "password")})
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)
