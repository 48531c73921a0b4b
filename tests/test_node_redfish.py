"""Redfish node power from real BMC payloads of both schema generations, served over HTTP(S) by the tests' own
server and by OpenStack's sushy-tools emulator."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from aifmon.exporters.redfish import Credentials, RedfishClient, RedfishError, RedfishPower, load_credentials
from tests.conftest import free_port, wait_for_http
from tests.node_fixtures import REDFISH_MOCKUPS, BmcGate, redfish_bmc, self_signed_cert

# mockup → (chassis, where the reading is, watts); the figures are in tests/fixtures/redfish/README.md
EXPECTED = {
    "dmtf-public-rackmount1": ("1U", "EnvironmentMetrics", 374.0),  # new model preferred; legacy Power says 344
    "hpe-proliant-dl325-gen10plus": ("1", "Power", 97.0),
    "hpe-apollo6500-xl675d-a100": ("1", "Power", 894.0),  # trailing slashes; PSUs repeat 894 four times; enclosure 988
    "hpe-cray-ex235a": ("Node0", "Sensor", 747.0),  # Sensors only; Mezz*/Power are saved 404 bodies; enclosure 99
    "gigabyte-ami": ("Self", "Power", 100.0),  # Status Critical/Disabled, yet a reading
    "intel-s2600bpb": ("Baseboard", "Power", 148.0),  # chassis id with a '/', RackMount is an error body
}


@contextlib.contextmanager
def sushy_static(mockup: str) -> Iterator[str]:
    """OpenStack's sushy-tools mockup server (`sushy-static`, a Redfish emulator nobody here wrote) serving one of
    the shipped mockups on a free loopback port; yields the base URL. It answers what it lacks with an HTML 404 page
    (not a Redfish error body), sends no Content-Length and closes each connection (HTTP/1.0)."""
    if importlib.util.find_spec("sushy_tools") is None:
        message = "sushy-tools is not installed (pip install sushy-tools; in the test extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sushy_tools.static.main", "-i", "127.0.0.1", "-p", str(port),
                               "-m", str(REDFISH_MOCKUPS / mockup / "redfish" / "v1")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # it prints every request's headers
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/redfish/v1", timeout_s=30)
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("server", [redfish_bmc, sushy_static], ids=["file-server", "sushy-tools"])
@pytest.mark.parametrize("mockup", sorted(EXPECTED))
def test_node_power_from_each_bmc(mockup, server):
    """Every shipped mockup, served by our file server and by OpenStack's sushy-tools emulator, gives the same power."""
    chassis, kind, watts = EXPECTED[mockup]
    with server(mockup) as url:
        power = RedfishPower(RedfishClient(url, timeout_s=5))
        res = power.discover()
        assert res is not None and (res.chassis, res.kind) == (chassis, kind)
        assert power.read() == watts


def test_a_blade_with_two_nodes_needs_the_chassis_named():
    with redfish_bmc("hpe-cray-ex235n") as url:
        client = RedfishClient(url, timeout_s=5)
        with pytest.raises(RedfishError, match=r"Node1, Node0|Node0, Node1"):
            RedfishPower(client).discover()
        node1 = RedfishPower(client, chassis="Node1")
        assert node1.discover() is not None and node1.read() == 534.0  # not the enclosure's 121 W
        with pytest.raises(RedfishError, match=r"chassis 'Node7' not found.*Node0"):
            RedfishPower(client, chassis="Node7").discover()


def test_a_bmc_without_power_data_says_so():
    with redfish_bmc("openbmc-stock") as url:  # PowerControl without PowerConsumedWatts, no sensors
        assert RedfishPower(RedfishClient(url, timeout_s=5)).discover() is None


def test_credentials_are_sent_and_a_refusal_is_explained():
    with redfish_bmc("hpe-proliant-dl325-gen10plus", username="monitor", password="s3:cret") as url:
        good = RedfishPower(RedfishClient(url, Credentials("monitor", "s3:cret"), timeout_s=5))
        assert good.discover() is not None and good.read() == 97.0
        with pytest.raises(RedfishError, match="refused the credentials"):
            RedfishPower(RedfishClient(url, Credentials("monitor", "wrong"), timeout_s=5)).discover()


def test_credentials_from_environment_or_file(tmp_path, caplog):
    assert load_credentials(environ={}) is None
    assert load_credentials(environ={"AIFMON_BMC_USERNAME": "u", "AIFMON_BMC_PASSWORD": "p"}) == Credentials("u", "p")
    f = tmp_path / "bmc"
    f.write_text("monitor:pa:ss\n")
    os.chmod(f, 0o600)
    assert load_credentials(str(f), environ={}) == Credentials("monitor", "pa:ss")
    assert load_credentials(environ={"AIFMON_BMC_CREDENTIALS_FILE": str(f)}) == Credentials("monitor", "pa:ss")
    os.chmod(f, 0o644)
    load_credentials(str(f), environ={})
    assert "readable by other users" in caplog.text
    f.write_text("no colon here\n")
    with pytest.raises(ValueError, match="username:password"):
        load_credentials(str(f), environ={})


def test_tls_is_verified_by_default(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    with redfish_bmc("dmtf-public-rackmount1", tls=(cert, key)) as url:
        assert url.startswith("https://")
        with pytest.raises(RedfishError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            RedfishPower(RedfishClient(url, timeout_s=5)).discover()
        trusted = RedfishPower(RedfishClient(url, ca_file=str(cert), timeout_s=5))
        assert trusted.discover() is not None and trusted.read() == 374.0
        insecure = RedfishPower(RedfishClient(url, verify_tls=False, timeout_s=5))
        assert insecure.discover() is not None


def test_a_slow_bmc_times_out():
    gate = BmcGate()  # the BMC answers nothing until the test ends
    with redfish_bmc("gigabyte-ami", gate=gate) as url:
        with pytest.raises(RedfishError, match="timed out"):
            RedfishPower(RedfishClient(url, timeout_s=0.3)).discover()
        assert gate.requests == 1  # discovery gives up at the first request that times out


def test_url_is_checked():
    with pytest.raises(ValueError, match="http"):
        RedfishClient("bmc.example.org")


def test_sushy_tools_blade_and_a_bmc_without_power():
    with sushy_static("hpe-cray-ex235n") as url:
        node1 = RedfishPower(RedfishClient(url, timeout_s=5), chassis="Node1")
        assert node1.discover() is not None and node1.read() == 534.0
    with sushy_static("openbmc-stock") as url:
        assert RedfishPower(RedfishClient(url, timeout_s=5)).discover() is None
