"""Node input power from the BMC over Redfish, both schema generations.

Where the reading lives, tried per chassis in this order:
  1. `Chassis/{id}/EnvironmentMetrics` → `PowerWatts.Reading` (Redfish 2020.4 and later);
  2. `Chassis/{id}/Power` → `PowerControl[i].PowerConsumedWatts`, the first numeric one (legacy,
     deprecated but what most deployed BMCs serve);
  3. `Chassis/{id}/Sensors/ChassisVoltageRegulator0InputPower` or `Sensors/TotalPower` with
     `ReadingType` "Power" (HPE Cray EX blades keep node power only in Sensors).
Discovery walks the tree once and remembers one URL; each poll then costs one GET. Enclosure chassis
are dropped when a node chassis also reports power (their figure is the enclosure's, not the node's);
a BMC serving several nodes (a Cray EX235n blade) needs `--bmc-chassis`.

Real BMCs disagree with themselves (power figures that differ between the two models, PSU readings
that repeat the node load, error bodies saved where a resource should be, ids with trailing
slashes): nothing here sums PSUs or enclosures, a JSON error body counts as missing, and a sensor
without a numeric `Reading` gives no data rather than 0.

Credentials come from the environment or a file, never the command line; TLS certificates are
verified unless the operator says otherwise; every request has a timeout.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import ssl
import stat
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifmon.telemetry.redact import redact_url

log = logging.getLogger(__name__)

ENV_USERNAME = "AIFMON_BMC_USERNAME"
ENV_PASSWORD = "AIFMON_BMC_PASSWORD"
ENV_CREDENTIALS_FILE = "AIFMON_BMC_CREDENTIALS_FILE"
_SENSOR_IDS = re.compile(r"^(ChassisVoltageRegulator0InputPower|TotalPower)$")  # node input on Cray EX; DMTF total


class RedfishError(RuntimeError):
    """The BMC could not be asked, or answered something unusable; says which URL and why."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def load_credentials(file: str | None = None, environ: dict[str, str] | None = None) -> Credentials | None:
    """BMC credentials from `file` (or $AIFMON_BMC_CREDENTIALS_FILE), else $AIFMON_BMC_USERNAME/PASSWORD.

    The file holds one line `username:password` (the password may contain ':'). A file that others
    can read is used but warned about. None when nothing is configured (a BMC without authentication).
    """
    env = os.environ if environ is None else environ
    file = file or env.get(ENV_CREDENTIALS_FILE)
    if file:
        path = Path(file)
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise ValueError(f"BMC credentials file {file}: {e.strerror}") from None
        user, sep, password = (lines[0].strip() if lines else "").partition(":")
        if not sep or not user:
            raise ValueError(f"BMC credentials file {file}: the first line must be username:password")
        if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("BMC credentials file %s is readable by other users; chmod 600 it", file)
        return Credentials(user, password)
    if env.get(ENV_USERNAME):
        return Credentials(env[ENV_USERNAME], env.get(ENV_PASSWORD, ""))
    return None


class RedfishClient:
    """GETs JSON from one BMC: basic auth, TLS verified by default, a timeout on every request."""

    def __init__(self, base_url: str, credentials: Credentials | None = None, verify_tls: bool = True,
                 ca_file: str | None = None, timeout_s: float = 5.0):
        shown = redact_url(base_url)  # the messages end up in logs: never the URL's credentials
        try:
            parsed = urllib.parse.urlsplit(base_url)
            port = parsed.port
        except ValueError as e:
            raise ValueError(f"BMC URL {shown!r}: {e}; expected http(s)://host[:port] with a port from 1 to 65535") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname or port == 0:
            raise ValueError(f"BMC URL {shown!r} is not http(s)://host[:port] with a port from 1 to 65535")
        if parsed.username is not None or parsed.password is not None:
            raise ValueError(f"BMC URL {shown!r}: credentials never go in the URL (it is shown in logs and process lists); "
                             f"put username:password in the file --bmc-credentials-file names (chmod 600), or set "
                             f"{ENV_CREDENTIALS_FILE}, or {ENV_USERNAME} and {ENV_PASSWORD}")
        self.base = f"{parsed.scheme}://{parsed.netloc}"
        self.timeout_s = timeout_s
        handlers: list[urllib.request.BaseHandler] = []
        if parsed.scheme == "https":
            ctx = ssl.create_default_context(cafile=ca_file)
            if not verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        self._opener = urllib.request.build_opener(*handlers)
        self._auth = None
        if credentials is not None:
            token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
            self._auth = f"Basic {token}"

    def get(self, odata_id: str) -> dict[str, Any] | None:
        """The resource at `odata_id` (a path; fragment ignored), or None if missing (404 or an error body)."""
        path = odata_id.split("#", 1)[0]
        req = urllib.request.Request(self.base + path, headers={"Accept": "application/json", "OData-Version": "4.0"})
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with self._opener.open(req, timeout=self.timeout_s) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if e.code in (401, 403):
                raise RedfishError(f"{path}: the BMC refused the credentials (HTTP {e.code})") from None
            raise RedfishError(f"{path}: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:  # refused, unreachable, TLS failure, timeout
            raise RedfishError(f"{path}: {getattr(e, 'reason', e)}") from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise RedfishError(f"{path}: the answer is not JSON") from None
        if not isinstance(doc, dict) or ("error" in doc and "@odata.id" not in doc):
            return None  # a saved error body where a resource should be
        return doc


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _link(doc: dict[str, Any], key: str) -> str | None:
    v = doc.get(key)
    return v.get("@odata.id") if isinstance(v, dict) else None


@dataclass(frozen=True)
class PowerResource:
    """Where one chassis' node power is read: a URL and how to pick the number out of it."""

    chassis: str
    chassis_type: str
    url: str
    kind: str  # "EnvironmentMetrics" | "Power" | "Sensor"
    has_system: bool

    def extract(self, doc: dict[str, Any]) -> float | None:
        if self.kind == "EnvironmentMetrics":
            pw = doc.get("PowerWatts")
            return _number(pw.get("Reading")) if isinstance(pw, dict) else None
        if self.kind == "Power":
            for pc in doc.get("PowerControl") or []:
                if isinstance(pc, dict) and _number(pc.get("PowerConsumedWatts")) is not None:
                    return _number(pc["PowerConsumedWatts"])
            return None
        if doc.get("ReadingType") not in (None, "Power"):
            return None
        return _number(doc.get("Reading"))


class RedfishPower:
    """Finds the node's power reading on the BMC once, then reads it (one GET) per `read()`."""

    def __init__(self, client: RedfishClient, chassis: str | None = None):
        self.client = client
        self.chassis = chassis
        self.resource: PowerResource | None = None

    def discover(self) -> PowerResource | None:
        """The resource to poll; None when the BMC answers but reports no node power (then estimate)."""
        root = self.client.get("/redfish/v1")
        if root is None:
            raise RedfishError("/redfish/v1: no Redfish service root")
        coll_url = _link(root, "Chassis")
        coll = self.client.get(coll_url) if coll_url else None
        found: list[PowerResource] = []
        names: list[str] = []
        for member in (coll or {}).get("Members", []):
            url = member.get("@odata.id") if isinstance(member, dict) else None
            if not url:
                continue
            chassis = self.client.get(url)
            if chassis is None:
                continue
            cid = str(chassis.get("Id") or url.rstrip("/").rsplit("/", 1)[-1])
            names.append(cid)
            if self.chassis is not None and self.chassis not in (cid, url.rstrip("/"), url.rstrip("/").rsplit("/", 1)[-1]):
                continue
            res = self._power_of(cid, chassis)
            if res is not None:
                found.append(res)
        if self.chassis is not None and self.chassis not in names:
            raise RedfishError(f"chassis {self.chassis!r} not found on the BMC; it has: {', '.join(names) or 'none'}")
        if len(found) > 1:
            nodes = [r for r in found if r.chassis_type != "Enclosure"] or found
            found = [r for r in nodes if r.has_system] or nodes
        if len(found) > 1:
            raise RedfishError("several chassis report node power (" + ", ".join(r.chassis for r in found)
                               + "); choose this node's with --bmc-chassis")
        self.resource = found[0] if found else None
        return self.resource

    def _power_of(self, cid: str, chassis: dict[str, Any]) -> PowerResource | None:
        ctype = str(chassis.get("ChassisType") or "")
        has_system = bool((chassis.get("Links") or {}).get("ComputerSystems"))
        candidates = []
        if (u := _link(chassis, "EnvironmentMetrics")):
            candidates.append(PowerResource(cid, ctype, u, "EnvironmentMetrics", has_system))
        if (u := _link(chassis, "Power")):
            candidates.append(PowerResource(cid, ctype, u, "Power", has_system))
        for res in candidates:
            doc = self.client.get(res.url)
            if doc is not None and res.extract(doc) is not None:
                return res
        if (u := _link(chassis, "Sensors")):
            for member in (self.client.get(u) or {}).get("Members", []):
                url = member.get("@odata.id", "") if isinstance(member, dict) else ""
                if _SENSOR_IDS.match(url.rstrip("/").rsplit("/", 1)[-1]):
                    res = PowerResource(cid, ctype, url, "Sensor", has_system)
                    doc = self.client.get(url)
                    if doc is not None and res.extract(doc) is not None:
                        return res
        return None

    def read(self) -> float | None:
        """Node input power now, W; None if the resource no longer carries a reading."""
        if self.resource is None:
            return None
        doc = self.client.get(self.resource.url)
        return None if doc is None else self.resource.extract(doc)
