"""The node exporter as a whole: the schema's metrics from every source, faults isolated, BMC off the
scrape path, TLS and basic auth, and `aifmon exporter node` scraped by a real Prometheus."""

from __future__ import annotations

import base64
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pynvml
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifmon.exporters.http import serve_exposition
from aifmon.exporters.hwmon import HwmonSource
from aifmon.exporters.node import NodeExporter
from aifmon.exporters.nvml_source import NvmlSource
from aifmon.exporters.rapl import RaplSource
from aifmon.exporters.redfish import RedfishClient, RedfishPower
from aifmon.exporters.slurm_jobs import JobMappings
from aifmon.exporters.web_config import load_web_config
from aifmon.telemetry.schema import BY_NAME, THROTTLE_REASONS
from tests.conftest import free_port, require_binary, wait_for_http, wait_until
from tests.fake_nvml import gh200_node, h100_node
from tests.golden_files import assert_same_text
from tests.node_fixtures import BmcGate, Powercap, build_hwmon, redfish_bmc, self_signed_cert
from tests.servers import prometheus, promql

ROOT = Path(__file__).resolve().parent.parent
NODE_METRICS = {m.name for m in BY_NAME.values()} - {"aif_facility_power_watts"}  # a facility meter is no node's
# series only Grace Hopper (module power), AMD (packages) or HPE Cray EX nodes (pm_counters) have: tests/test_node_amd.py
NOT_ON_NVIDIA_BOARDS = {"aif_gpu_module_power_watts", "aif_gpu_package_info", "aif_node_energy_joules_total",
                        "aif_node_component_power_watts", "aif_node_power_limit_watts"}


def samples(body: bytes) -> list:
    return [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]


def check_schema(body: bytes) -> None:
    """Only schema metrics, each with exactly the schema's labels (no factory/system: the scrape config adds them)."""
    for s in samples(body):
        assert s.name in BY_NAME, s.name
        assert tuple(s.labels) == BY_NAME[s.name].labels, s


def promtool_check(body: bytes) -> None:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0 and result.stdout == b"" and result.stderr == b"", result


def checked_body(exporter: NodeExporter) -> bytes:
    """Poll the exporter once more, stop it, and return its body after `promtool check metrics` and the schema check."""
    exporter.poll_host()
    exporter.poll_gpu()
    body = exporter.body()
    exporter.stop()
    promtool_check(body)
    check_schema(body)
    return body


def fake_hardware_node(tmp_path: Path) -> NodeExporter:
    """Node gn001 on fake hardware, polled twice one second apart on a fixed clock: 8 H100s (GPU 2 in MIG mode with
    two instances, GPU 5 capped by software, GPU 7 without an energy counter, GPU 0 running job 12 of project p1),
    two sockets drawing 100 W package and 10 W DRAM each in that second (RAPL), a CPU temperature chip (hwmon),
    and a 150 W baseline for the rest of the node."""
    lib = h100_node(8)
    lib.gpus[2].mig_uuids = ("MIG-1", "MIG-2")
    lib.gpus[5].throttle = pynvml.nvmlClocksThrottleReasonSwPowerCap
    lib.gpus[7].unsupported = {"nvmlDeviceGetTotalEnergyConsumption"}
    tree = Powercap(tmp_path / "powercap", sockets=2)
    build_hwmon(tmp_path / "hwmon")
    clock = [0.0]
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / f"{lib.gpus[0].uuid}_12").write_text("job=12\naccount=p1\npartition=gpu\nqos=normal\n")
    exporter = NodeExporter("gn001", nvml=NvmlSource(lib=lib, clock=lambda: clock[0]),
                            rapl=RaplSource(tmp_path / "powercap", clock=lambda: clock[0]),
                            hwmon=HwmonSource(tmp_path / "hwmon", clock=lambda: clock[0]),
                            jobs=JobMappings(tmp_path / "jobs"), baseline_w=150.0)
    exporter.poll_host()
    exporter.poll_gpu()
    for socket in (0, 1):
        tree.draw((socket, "package"), 100_000_000)
        tree.draw((socket, "dram"), 10_000_000)
    clock[0] = 1.0
    lib.advance(1)
    exporter.poll_host()
    exporter.poll_gpu()
    return exporter


def test_every_schema_metric_from_fake_hardware(tmp_path):
    exporter = fake_hardware_node(tmp_path)
    body = exporter.body()
    exporter.stop()
    check_schema(body)
    promtool_check(body)
    names = {s.name for s in samples(body)}
    assert names == NODE_METRICS - NOT_ON_NVIDIA_BOARDS  # every node metric of the schema an H100 node has, nothing else
    by = {}
    for s in samples(body):
        by.setdefault(s.name, []).append(s)
    assert len(by["aif_gpu_power_watts"]) == 8  # MIG: board power once per physical GPU
    assert len(by["aif_gpu_utilization_ratio"]) == 7  # NOT_SUPPORTED in MIG mode: left out, not 0
    assert len(by["aif_gpu_throttled"]) == 8 * len(THROTTLE_REASONS)
    capped = [s for s in by["aif_gpu_throttled"] if s.value == 1]
    assert [(s.labels["gpu"], s.labels["reason"]) for s in capped] == [("5", "sw_power_cap")]
    assert "GPU 7: no NVML energy counter" in body.decode()  # the HELP says which GPU is integrated
    gpu_w = sum(s.value for s in by["aif_gpu_power_watts"])
    node = by["aif_node_power_watts"]
    assert [s.labels["source"] for s in node] == ["estimate"]
    assert node[0].value == pytest.approx(150.0 + gpu_w + 220.0)  # baseline + GPUs + CPU and DRAM (RAPL)
    assert {s.labels["source"] for s in by["aif_exporter_errors_total"]} == {"nvml", "rapl", "hwmon", "slurm"}
    assert all(s.value == 0 for s in by["aif_exporter_errors_total"])
    assert by["aif_gpu_job_info"][0].labels == {"node": "gn001", "gpu": "0", "job": "12", "project": "p1", "access_mode": "normal"}


def test_metrics_body_is_the_golden_file(tmp_path):
    """The whole /metrics body of the fake node, byte for byte: names, HELP and TYPE lines, label order, numbers."""
    exporter = fake_hardware_node(tmp_path)
    body = exporter.body().decode()
    exporter.stop()
    # the one thing not set by the fake hardware and the fixed clock: how long each poll took on this machine
    body, timings = re.subn(r'^(aif_exporter_collect_seconds\{source="\w+"\}) \S+$', r"\1 <seconds>", body, flags=re.M)
    assert timings == 4  # nvml, rapl, hwmon, slurm
    assert_same_text("node_exporter_metrics.txt", body)


def test_a_lost_gpu_reports_up_0_and_the_others_carry_on():
    lib = h100_node(4)
    exporter = NodeExporter("gn002", nvml=NvmlSource(lib=lib, xid_events=False))
    exporter.poll_gpu()
    lib.gpus[1].lost = True
    lib.advance(1)
    exporter.poll_gpu()
    by = {}
    for s in samples(exporter.body()):
        by.setdefault(s.name, {})[s.labels.get("gpu")] = s.value
    assert by["aif_gpu_up"] == {"0": 1.0, "1": 0.0, "2": 1.0, "3": 1.0}  # not silently dropped (dcgm-exporter #348)
    assert set(by["aif_gpu_power_watts"]) == {"0", "2", "3"}
    assert by["aif_gpu_energy_joules_total"]["1"] == 2000.0  # its counter stays at its last reading
    assert by["aif_exporter_errors_total"][None] == 1.0  # its one failed poll; it is looked up again after 10 s


def test_nvml_missing_leaves_cpu_and_node_power_served(tmp_path, caplog):
    lib = h100_node(8)
    lib.library_present = False
    Powercap(tmp_path, sockets=1)
    exporter = NodeExporter("cpu01", nvml=NvmlSource(lib=lib), rapl=RaplSource(tmp_path))
    for _ in range(3):
        exporter.poll_host()
        exporter.poll_gpu()
    body = exporter.body()
    promtool_check(body)
    names = {s.name for s in samples(body)}
    assert not any(n.startswith("aif_gpu_") for n in names)
    assert {"aif_cpu_energy_joules_total", "aif_node_power_watts"} <= names
    errors = {s.labels["source"]: s.value for s in samples(body) if s.name == "aif_exporter_errors_total"}
    assert errors["nvml"] == 1 and errors["rapl"] == 0  # one attempt so far (retried every 10 s)
    assert caplog.text.count("NVML unavailable") == 1


def test_the_bmc_is_polled_off_the_scrape_path():
    gate = BmcGate()  # the BMC holds its answers until released
    with redfish_bmc("dmtf-public-rackmount1", gate=gate) as url:
        exporter = NodeExporter("gn003", bmc=RedfishPower(RedfishClient(url, timeout_s=60)), bmc_poll_s=0.5)
        exporter.start()
        try:
            assert gate.arrived.wait(30), "the BMC loop asked the BMC"
            # a scrape while the BMC's answer is held back is served at once, without node power (a scrape that
            # waited for the BMC would return only once the gate gives way, with it)
            assert b"aif_node_power_watts" not in exporter.body()
            gate.release.set()
            wait_until(lambda: b'aif_node_power_watts{node="gn003",source="bmc"} 374.0' in exporter.body(), 30,
                       "node power from the BMC once it answers")
        finally:
            exporter.stop()


def test_a_bmc_without_power_data_falls_back_to_the_estimate():
    with redfish_bmc("openbmc-stock") as url:
        exporter = NodeExporter("gn004", bmc=RedfishPower(RedfishClient(url, timeout_s=5)), baseline_w=300.0)
        exporter.poll_bmc()
        assert b'aif_node_power_watts{node="gn004",source="estimate"} 300.0' in exporter.body()
        assert b'aif_exporter_errors_total{source="bmc"} 0.0' in exporter.body()


def test_the_platform_power_meter_is_the_node_power_when_there_is_no_bmc(tmp_path):
    build_hwmon(tmp_path, meter_uw=1_234_500_000)
    exporter = NodeExporter("gn006", hwmon=HwmonSource(tmp_path))
    exporter.poll_host()
    node = [s for s in samples(exporter.body()) if s.name == "aif_node_power_watts"]
    assert [(s.labels["source"], s.value) for s in node] == [("hwmon", 1234.5)]


def test_a_failing_bmc_is_counted_not_guessed():
    exporter = NodeExporter("gn005", bmc=RedfishPower(RedfishClient(f"http://127.0.0.1:{free_port()}", timeout_s=1)))
    exporter.poll_bmc()
    exporter.poll_bmc()
    body = exporter.body().decode()
    assert "aif_node_power_watts" not in body
    assert 'aif_exporter_errors_total{source="bmc"} 2.0' in body


def _web_config(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = self_signed_cert(tmp_path)
    hashed = bcrypt.hashpw(b"scrape-me", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\nbasic_auth_users:\n  prometheus: '{hashed}'\n")
    return web, cert


def test_tls_and_basic_auth_from_a_web_config_file(tmp_path):
    web, cert = _web_config(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    server = serve_exposition(address, lambda: b"aif_gpu_up 1\n", "test", web=load_web_config(str(web)))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"https://{address}/metrics", context=ctx, timeout=5)
        assert refused.value.code == 401
        for password, code in ((b"wrong", 401), (b"scrape-me", 200), (b"scrape-me", 200)):
            req = urllib.request.Request(f"https://{address}/metrics", headers={
                "Authorization": "Basic " + base64.b64encode(b"prometheus:" + password).decode()})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                    assert (r.status, r.read()) == (code, b"aif_gpu_up 1\n")
            except urllib.error.HTTPError as e:
                assert e.code == code
        with pytest.raises(OSError):  # plain HTTP gets no answer from a TLS port
            urllib.request.urlopen(f"http://{address}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("text, message", [
    ("basic_auth_users:\n  prometheus: hunter2\n", "bcrypt hash"),
    ("tls_server_config:\n  cert_file: /nonexistent\n", "key_file is required"),
    ("tls_server_config:\n  cert_file: /nonexistent\n  key_file: /nonexistent\n", "cannot load"),
    ("http_server_config:\n  http2: true\n", "unknown key"),
])
def test_web_config_errors_say_what_to_fix(tmp_path, text, message):
    f = tmp_path / "web.yml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_web_config(str(f))


def test_prometheus_scrapes_aifmon_exporter_node_over_tls_with_basic_auth(tmp_path):
    """The real command on fake hardware: fake NVML (8 GPUs), built sysfs trees, a Redfish BMC from a mockup."""
    web, cert = _web_config(tmp_path)
    Powercap(tmp_path / "powercap", sockets=2)
    build_hwmon(tmp_path / "hwmon")
    creds = tmp_path / "bmc-credentials"
    creds.write_text("monitor:bmc-pass\n")
    os.chmod(creds, 0o600)
    port = free_port()
    with redfish_bmc("hpe-apollo6500-xl675d-a100", username="monitor", password="bmc-pass") as bmc_url:
        log = open(tmp_path / "exporter.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "aifmon", "exporter", "node", "--listen", f"127.0.0.1:{port}", "--node", "gn042",
             "--web-config", str(web), "--nvml-module", "tests.fake_nvml", "--powercap-root", str(tmp_path / "powercap"),
             "--hwmon-root", str(tmp_path / "hwmon"), "--bmc-url", bmc_url, "--bmc-credentials-file", str(creds),
             "--bmc-poll", "1", "--job-dir", str(tmp_path / "jobs")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "AIFMON_FAKE_NVML_GPUS": "8"})
        try:
            ctx = ssl.create_default_context(cafile=str(cert))
            auth = {"Authorization": "Basic " + base64.b64encode(b"prometheus:scrape-me").decode()}
            deadline = time.time() + 30
            body = b""
            while time.time() < deadline and b'aif_node_power_watts{' not in body:
                try:
                    req = urllib.request.Request(f"https://127.0.0.1:{port}/metrics", headers=auth)
                    body = urllib.request.urlopen(req, context=ctx, timeout=2).read()
                except OSError:
                    time.sleep(0.2)
            assert b'aif_node_power_watts{node="gn042",source="bmc"} 894.0' in body, (tmp_path / "exporter.log").read_text()
            promtool_check(body)
            check_schema(body)
            config = f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: node
    scheme: https
    tls_config: {{ca_file: {cert}}}
    basic_auth: {{username: prometheus, password: scrape-me}}
    honor_labels: true
    static_configs: [{{targets: ["127.0.0.1:{port}"], labels: {{factory: alpha, system: alpha-gpu}}}}]
"""
            with prometheus(config, tmp_path) as url:
                wait_until(lambda: len(promql(url, "aif_gpu_energy_joules_total")) == 8, 60, "Prometheus's first scrape of the node",
                           poll_s=0.5)
                assert promql(url, 'up{job="node"}')[0]["value"][1] == "1"
                assert len(promql(url, 'aif_gpu_power_watts{factory="alpha", node="gn042"}')) == 8
                assert promql(url, 'aif_node_power_watts{source="bmc"}')[0]["value"][1] == "894"
                # The fake's GPU i draws 300 + 10 i W, counted in whole seconds: what each counter rose by between two
                # of Prometheus's readings 5 s apart is a whole number of seconds of that power.
                def risen() -> list[dict]:
                    rises = promql(url, "aif_gpu_energy_joules_total - aif_gpu_energy_joules_total offset 5s")
                    return rises if len(rises) == 8 and all(float(r["value"][1]) > 0 for r in rises) else []

                for rise in wait_until(risen, 30, "every GPU's energy counter rising in Prometheus"):
                    seconds = float(rise["value"][1]) / (300 + 10 * int(rise["metric"]["gpu"]))
                    assert seconds == round(seconds) >= 1, rise
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def test_the_command_serves_cpu_metrics_without_nvml_and_listens_on_loopback(tmp_path):
    Powercap(tmp_path / "powercap", sockets=1)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aifmon", "exporter", "node", "--listen", f":{port}", "--node", "cpu7",
         "--nvml-module", "tests.fake_nvml", "--powercap-root", str(tmp_path / "powercap"),
         "--hwmon-root", str(tmp_path / "hwmon"), "--job-dir", str(tmp_path / "jobs")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "AIFMON_FAKE_NVML": "missing"})
    try:
        body = wait_for_http(f"http://127.0.0.1:{port}/metrics", timeout_s=30)
        assert b'aif_cpu_energy_joules_total{node="cpu7",socket="0",domain="package"}' in body
        assert b'aif_exporter_errors_total{source="nvml"} 1.0' in body
        assert b"aif_gpu_" not in body
        promtool_check(body)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert out.count("NVML unavailable") == 1 and "libnvidia-ml.so.1 not found" in out


def test_gh200_module_power_is_its_own_series_never_added_to_board_power(tmp_path):
    """Four GH200 superchips: board power (GPU) and module power (GPU + Grace + memory) each once per GPU, and the
    estimate takes the module figure, without the board figure or any CPU power beside it (both are inside it)."""
    lib = gh200_node(4)
    tree = Powercap(tmp_path, sockets=1)
    clock = [0.0]
    exporter = NodeExporter("jpbo-001", nvml=NvmlSource(lib=lib, clock=lambda: clock[0], xid_events=False),
                            rapl=RaplSource(tmp_path, clock=lambda: clock[0]), baseline_w=100.0)
    exporter.poll_host()
    exporter.poll_gpu()
    tree.draw((0, "package"), 50_000_000)  # 50 W of CPU power that must not be added again
    clock[0] = 1.0
    lib.advance(1)
    body = checked_body(exporter)
    by: dict[str, dict] = {}
    for s in samples(body):
        by.setdefault(s.name, {})[s.labels.get("gpu")] = s.value
    assert by["aif_gpu_power_watts"] == {str(i): 400.0 + 10 * i for i in range(4)}
    assert by["aif_gpu_module_power_watts"] == {str(i): 560.0 + 10 * i for i in range(4)}
    assert by["aif_node_power_watts"] == {None: 100.0 + sum(560.0 + 10 * i for i in range(4))}
    assert by["aif_gpu_energy_joules_total"] == {str(i): (2_000_000 * (i + 1) + 400_000 + 10_000 * i) / 1000 for i in range(4)}
    assert "aif_gpu_package_info" not in by  # each superchip is its own package
