"""Fixtures for the node exporter's tests: sysfs trees built like the kernel's, and a Redfish BMC
serving the real mockups in tests/fixtures/redfish over HTTP(S)."""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import free_port

REDFISH_MOCKUPS = Path(__file__).resolve().parent / "fixtures" / "redfish"
RAPL_MAX_RANGE_UJ = 262143328850  # a real package zone's max_energy_range_uj (2^32 - 1 units of 61.035 µJ)


class Powercap:
    """/sys/class/powercap with `sockets` packages, each with core and (optionally) dram subzones and a psys zone."""

    def __init__(self, root: Path, sockets: int = 2, dram: bool = True, max_range_uj: int = RAPL_MAX_RANGE_UJ):
        self.root = root
        self.max_range_uj = max_range_uj
        self.zones: dict[tuple[int, str], Path] = {}
        self.truth_uj: dict[tuple[int, str], int] = {}
        for s in range(sockets):
            pkg = root / f"intel-rapl:{s}"
            self._zone(pkg, f"package-{s}", (s, "package"))
            self._zone(root / f"intel-rapl:{s}" / f"intel-rapl:{s}:0", "core", None)
            if dram:
                self._zone(root / f"intel-rapl:{s}" / f"intel-rapl:{s}:1", "dram", (s, "dram"))
        self._zone(root / f"intel-rapl:{sockets}", "psys", None)
        # the kernel also links subzones at the top level (intel-rapl:0:0 -> ...); the exporter must not count them twice
        for s in range(sockets):
            (root / f"intel-rapl:{s}:0").symlink_to(root / f"intel-rapl:{s}" / f"intel-rapl:{s}:0")

    def _zone(self, path: Path, name: str, key: tuple[int, str] | None) -> None:
        path.mkdir(parents=True)
        (path / "name").write_text(name + "\n")
        (path / "max_energy_range_uj").write_text(f"{self.max_range_uj}\n")
        (path / "energy_uj").write_text("0\n")
        if key is not None:
            self.zones[key] = path
            self.truth_uj[key] = 0

    def set(self, key: tuple[int, str], uj: int) -> None:
        """Start the counter at `uj` (the truth starts there too)."""
        self.truth_uj[key] = uj
        (self.zones[key] / "energy_uj").write_text(f"{uj % (self.max_range_uj + 1)}\n")

    def draw(self, key: tuple[int, str], uj: int) -> None:
        """The domain uses `uj` more; the counter wraps past max_energy_range_uj as the kernel's does."""
        self.set(key, self.truth_uj[key] + uj)


def build_hwmon(root: Path, meter_uw: int | None = None, amd_sockets: int = 0) -> dict[str, Path]:
    """/sys/class/hwmon with a CPU temperature chip, optionally an ACPI power meter and amd_energy."""
    paths: dict[str, Path] = {}
    chips = [("k10temp", {"temp1_input": "45000", "temp1_label": "Tctl"})]
    if meter_uw is not None:
        chips.append(("power_meter", {"power1_input": str(meter_uw), "power1_average_interval": "1000"}))
    if amd_sockets:
        files = {}
        for s in range(amd_sockets):
            files[f"energy{s + 1}_input"] = "0"
            files[f"energy{s + 1}_label"] = f"Esocket{s}"
        files[f"energy{amd_sockets + 1}_input"] = "0"
        files[f"energy{amd_sockets + 1}_label"] = "Ecore000"
        chips.append(("amd_energy", files))
    for i, (name, files) in enumerate(chips):
        chip = root / f"hwmon{i}"
        chip.mkdir(parents=True)
        (chip / "name").write_text(name + "\n")
        for fname, value in files.items():
            (chip / fname).write_text(value + "\n")
            paths[f"{name}/{fname}"] = chip / fname
    return paths


class CrayPmCounters:
    """/sys/cray/pm_counters as an HPE Cray EX blade controller writes it, in its file formats: `<W> W <µs> us`,
    `<J> J <µs> us`, bare integers for freshness, generation, startup, raw_scan_hz and version. `components`
    name the meters beside the node total ("cpu" or "cpu0", "cpu1", "memory", "accel0", ...); the truth
    (`truth_j`) is every joule drawn, which never restarts."""

    def __init__(self, root: Path, power_w: dict[str, int], cap_w: int = 0, raw_scan_hz: int = 10):
        self.root = root
        self.power_w = dict(power_w)  # component ("node" for the total) → W drawn from now on
        self.cap_w = cap_w
        self.raw_scan_hz = raw_scan_hz
        self.energy_j = {c: 1_000_000 * (i + 1) for i, c in enumerate(power_w)}  # counted since the node booted
        self.truth_j = dict(self.energy_j)
        self.freshness = 7_340
        self.generation = 3
        self.startup = 1_700_000_000_123_456
        self.t_us = 1_700_000_734_000_000
        root.mkdir(parents=True)
        self.write()

    @staticmethod
    def _file(component: str, kind: str) -> str:
        return kind if component == "node" else f"{component}_{kind}"

    def write(self) -> None:
        for c in self.power_w:
            (self.root / self._file(c, "power")).write_text(f"{self.power_w[c]} W {self.t_us} us\n")
            (self.root / self._file(c, "energy")).write_text(f"{self.energy_j[c]} J {self.t_us} us\n")
        (self.root / "power_cap").write_text(f"{self.cap_w} W {self.t_us} us\n")
        for name, value in (("freshness", self.freshness), ("generation", self.generation), ("startup", self.startup),
                            ("raw_scan_hz", self.raw_scan_hz), ("version", 2)):
            (self.root / name).write_text(f"{value}\n")

    def draw(self, seconds: int) -> None:
        """The node runs `seconds` s at `power_w` and the controller publishes a new set."""
        for c, w in self.power_w.items():
            self.energy_j[c] += w * seconds
            self.truth_j[c] += w * seconds
        self.t_us += seconds * 1_000_000
        self.freshness += seconds * self.raw_scan_hz
        self.write()

    def restart_controller(self) -> None:
        """The blade controller restarts: a new `startup`, every energy counter from 0."""
        self.startup += 86_400_000_000
        self.energy_j = dict.fromkeys(self.energy_j, 0)
        self.freshness += 1
        self.write()


class BmcGate:
    """Holds every request to a `redfish_bmc` until `release` is set (at most `hold_s`, so that a test whose code
    waits for the answer still ends, and then fails on what it finds); counts the requests that came in."""

    def __init__(self, hold_s: float = 30.0):
        self.hold_s = hold_s
        self.release = threading.Event()
        self.arrived = threading.Event()
        self.requests = 0
        self._lock = threading.Lock()

    def hold(self) -> None:
        with self._lock:
            self.requests += 1
        self.arrived.set()
        self.release.wait(self.hold_s)


class _RedfishHandler(BaseHTTPRequestHandler):
    mockup: Path
    auth: str | None
    gate: BmcGate | None

    def do_GET(self) -> None:
        if self.gate is not None:
            self.gate.hold()
        if self.auth is not None and self.headers.get("Authorization") != self.auth:
            self._reply(401, {"error": {"code": "Base.1.0.NoValidSession"}})
            return
        path = self.path.split("#", 1)[0].split("?", 1)[0].rstrip("/")  # as the mockups' README says
        f = self.mockup / path.lstrip("/") / "index.json"
        if not f.resolve().is_relative_to(self.mockup.resolve()) or not f.is_file():
            self._reply(404, {"error": {"code": "Base.1.0.ResourceMissingAtURI"}})
            return
        self._reply(200, f.read_bytes())

    def _reply(self, code: int, body: dict | bytes) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def redfish_bmc(mockup: str, username: str | None = None, password: str = "", tls: tuple[Path, Path] | None = None,
                gate: BmcGate | None = None) -> Iterator[str]:
    """Serve one mockup folder on a free loopback port; yields the base URL. With `gate`, every request waits on it."""
    handler = type("Handler", (_RedfishHandler,), {
        "mockup": REDFISH_MOCKUPS / mockup, "gate": gate,
        "auth": None if username is None else "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode(),
    })
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    server.daemon_threads = True
    scheme = "http"
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        if gate is not None:
            gate.release.set()  # requests still held end before the server does
        server.shutdown()
        server.server_close()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (openssl, as Debian ships it); returns (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key
