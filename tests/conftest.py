"""Shared test helpers: free ports, real binaries from Debian's packages, small inventories, simulators."""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from aifmon.exporters.http import serve_exposition
from aifmon.exporters.sim import SimExporter
from aifmon.exporters.simulation import FactorySimulation
from aifmon.telemetry.inventory import Inventory, parse_inventory

T = TypeVar("T")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(name: str) -> str:
    """Path of a real binary; a missing one skips the test locally and fails it in CI (CI=true)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package; `make test` installs it when run as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_for_http(url: str, timeout_s: float = 30.0) -> bytes:
    """GET `url` until it answers 200; returns the body."""
    deadline = time.time() + timeout_s
    last: Exception | None = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s: {last}")


def wait_until(condition: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.1) -> T:
    """Call `condition` until it returns something truthy, and return that; fail naming `what` at the deadline.

    The way tests wait for a process or a page: on the condition itself, never for a fixed time.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(poll_s)


def inventory_text(targets: dict[str, str] | None = None, gpus_per_node: int = 4, nodes: int = 4) -> str:
    """A small two-factory inventory; `targets` maps factory id to host:port. Each system's IT power cap is 80 % of its
    factory's facility cap (alpha 12 kW of 15 kW, beta 8 kW of 10 kW)."""
    targets = targets or {}

    def factory(fid: str, name: str, country: str, lat: float, lon: float, model: str, cap_mw: float) -> str:
        target = f'\n    targets: ["{targets[fid]}"]' if fid in targets else ""
        return f"""  - id: {fid}
    name: {name}
    country: {country}
    latitude: {lat}
    longitude: {lon}
    power_cap_mw: {cap_mw}
    design_pue: 1.2
    energy_price_eur_per_kwh: 0.15{target}
    systems:
      - id: {fid}-gpu
        name: {name} GPU partition
        power_cap_kw: {cap_mw * 800:g}
        node_groups:
          - prefix: {fid[:4]}n
            count: {nodes}
            gpus_per_node: {gpus_per_node}
            gpu_model: {model}
"""

    return (
        "name: test site\nillustrative: true\nfactories:\n"
        + factory("alpha", "Alpha AI Factory", "DE", 50.9, 6.4, "H100-SXM5-80GB", 0.015)
        + factory("beta", "Beta AI Factory", "FI", 64.2, 27.7, "A100-SXM4-40GB", 0.010)
        + """projects:
  - id: alpha-train
    name: Alpha training
    access_mode: Large Scale
    sector: Health & Life Sciences
    factory: alpha
  - id: alpha-play
    name: Alpha playground
    access_mode: Playground
    sector: Technology & Digital
    factory: alpha
  - id: beta-science
    name: Beta science
    access_mode: AI for Science
    sector: Environment & Sustainability
    factory: beta
"""
    )


@pytest.fixture
def small_inventory() -> Inventory:
    return parse_inventory(inventory_text(), "small-inventory.yaml")


@pytest.fixture
def sim_server():
    """Start simulated factories on free loopback ports: `start(inventory, factory_id, **sim_kwargs) -> (address, exporter)`."""
    servers = []

    def start(inventory: Inventory, factory_id: str, address: str | None = None, **kwargs) -> tuple[str, SimExporter]:
        f = inventory.factory(factory_id)
        kwargs.setdefault("epoch", time.time() - 3 * 3600)  # jobs have arrived by then
        exporter = SimExporter(FactorySimulation(f, inventory.projects_of(f.id), **kwargs), poll_s=0.5)
        address = address or f"127.0.0.1:{free_port()}"
        servers.append((exporter, serve_exposition(address, exporter.body, f"test {factory_id}")))
        exporter.start()
        return address, exporter

    yield start
    for exporter, server in servers:
        exporter.stop()
        server.shutdown()
        server.server_close()
