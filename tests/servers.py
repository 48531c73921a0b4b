"""Real servers from Debian's packages, started on free loopback ports with temporary data folders."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port, require_binary, wait_for_http


@contextlib.contextmanager
def prometheus(config: str, workdir: Path) -> Iterator[str]:
    """A Prometheus server running `config`; yields its base URL."""
    binary = require_binary("prometheus")
    port = free_port()
    (workdir / "prometheus.yml").write_text(config)
    log = open(workdir / "prometheus.log", "w")
    proc = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/-/ready", timeout_s=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def promql(base_url: str, query: str) -> list[dict]:
    """Instant query result vector."""
    with urllib.request.urlopen(f"{base_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]
