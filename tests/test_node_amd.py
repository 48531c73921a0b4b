"""AMD GPUs through amdsmi, on a fake amdsmi that raises the library's own exception classes: every field with
its unit, an MI250X's package metered once, energy exact across resets, wraps and glitches, faults isolated."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aifmon.exporters.amdsmi_source import AmdsmiSource, add_energy_count
from aifmon.exporters.gpu_poll import Gpu
from aifmon.exporters.node import NodeExporter
from aifmon.exporters.nvml_source import NvmlSource
from tests.conftest import free_port, wait_for_http, wait_until
from tests.fake_amdsmi import RESOLUTION_UJ, AmdSmiLibraryException, FakeAmdSmi, mi250x_node, mi300x_node
from tests.fake_nvml import h100_node
from tests.node_fixtures import CrayPmCounters
from tests.test_node_exporter import check_schema, promtool_check, samples

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def source(lib: FakeAmdSmi, clock: Clock, timeout_s: float = 0.3) -> AmdsmiSource:
    return AmdsmiSource(lib=lib, clock=clock, call_timeout_s=timeout_s, slow_every_s=10, retry_s=10)


def step(lib: FakeAmdSmi, clock: Clock, src: AmdsmiSource, seconds: int = 1) -> None:
    lib.advance(seconds)
    clock.t += seconds
    src.poll()


def assert_energy_exact(lib: FakeAmdSmi, src: AmdsmiSource) -> None:
    """Each primary die's total is its lifetime count x the resolution, to 1e-9 J; secondary dies have none."""
    got = {g.uuid: g for g in src.gpus()}
    for g in lib.gcds:
        if not g.primary:
            assert got[g.uuid].energy_j is None
            continue
        assert got[g.uuid].energy == g.lifetime_counts, g.uuid  # integer counts: exact
        assert got[g.uuid].energy_j == pytest.approx(g.lifetime_counts * RESOLUTION_UJ / 1e6, abs=1e-9)


def test_mi250x_fields_units_and_the_package_metered_on_its_primary_die_only():
    lib = mi250x_node(4)
    lib.gcds[2].gfx_activity, lib.gcds[2].vram_used_mb, lib.gcds[2].hotspot_c, lib.gcds[2].gfx_mhz = 41, 1024, 71, 1500
    clock = Clock()
    src = source(lib, clock)
    src.poll()
    gpus = src.gpus()
    assert [g.index for g in gpus] == list(range(8)) and all(g.up for g in gpus)
    primary, secondary = gpus[2], gpus[3]
    assert primary.model == "AMD Instinct MI250X" and primary.package == secondary.package == "PCB004712"
    assert primary.power_w == 420.0 and primary.limit_w == 560.0  # socket power W, power cap µW
    assert primary.utilization_ratio == 0.41 and primary.memory_used_bytes == 1024 * 2**20
    assert primary.temperature_c == 71.0 and primary.sm_clock_hz == 1500e6
    assert primary.energy == 20_000_000 and primary.energy_unit_j == RESOLUTION_UJ * 1e-6
    # the secondary die reads 0 W, an energy counter of 0 and a power cap of 0: none of them is its own, all left out
    assert secondary.power_w is None and secondary.energy is None and secondary.limit_w is None
    assert secondary.utilization_ratio == 0.93 and secondary.up  # its own activity is reported
    # MI200 firmware has no violation status: throttle reasons left out, not reported as 0
    assert primary.throttled is None and src.errors == 0
    # the package's power is counted once: the sum over GCDs is the sum over packages
    assert sum(g.power_w or 0 for g in gpus) == sum(400 + 20 * k for k in range(4))


def test_mi300x_current_power_and_violation_flags_map_to_throttle_reasons():
    lib = mi300x_node(2)
    lib.gcds[1].violations = {"active_ppt_pwr", "active_hbm_thrm"}
    src = source(lib, Clock())
    src.poll()
    g0, g1 = src.gpus()
    assert g0.power_w == 650.0 and g1.power_w == 655.0  # current_socket_power (average is N/A on MI300X)
    assert g0.package == "692251000000" and g0.limit_w == 750.0
    assert g0.throttled == frozenset() and g1.throttled == {"sw_power_cap", "sw_thermal"}


def test_energy_exact_across_driver_reload_and_gpu_reset():
    lib = mi250x_node(2)
    clock = Clock()
    src = source(lib, clock)
    src.poll()
    for _ in range(5):
        step(lib, clock, src)
    assert_energy_exact(lib, src)
    lib.unload_driver()
    step(lib, clock, src)
    assert not any(g.up for g in src.gpus()) and "not initialised" in (src.reason or "")
    lib.load_driver()  # accumulators restart from 0
    for _ in range(12):  # re-initialised within 10 s
        step(lib, clock, src)
    assert all(g.up for g in src.gpus())
    assert_energy_exact(lib, src)
    # one GCD lost, then reset while lost: what it drew in between its counter forgot, the rest is counted
    lost = lib.gcds[0]
    lost.lost = True
    clock.t += 1
    src.poll()  # found lost before it drew anything more: what its counter forgets at the reset was all read
    assert not src.gpus()[0].up and src.gpus()[0].energy is not None and all(g.up for g in src.gpus()[1:])
    lib.reset_gpu(lost.uuid)
    for _ in range(11):
        step(lib, clock, src)
    assert src.gpus()[0].up
    assert_energy_exact(lib, src)


def test_a_64_bit_wrap_and_a_backward_glitch_are_not_restarts():
    gpu = Gpu(uuid="x", index=0, model="m", energy_unit_j=RESOLUTION_UJ * 1e-6)
    truth = 0
    readings = [2**64 - 3_000, 2**64 - 1_000, 500, 700,  # wrapped once between the 2nd and 3rd: 1 000 + 500 counts
                695, 800,  # a reading 5 counts (0.7 %) back (ROCm/amdsmi#115): nothing added, measured from 700 on
                780]  # 2.5 % back: a restart, and 780 new counts
    for i, raw in enumerate(readings):
        add_energy_count(gpu, raw)
        truth = raw if i == 0 else truth + {1: 2_000, 2: 1_500, 3: 200, 4: 0, 5: 100, 6: 780}[i]
        assert gpu.energy == truth, (i, raw)
    assert gpu.energy == 2**64 + 1_580  # counts past 2^64: a Python int, exact (a float64 of the joules could not be)


def test_a_hung_call_is_time_boxed_and_the_other_gcds_carry_on():
    lib = mi250x_node(2)
    clock = Clock()
    src = source(lib, clock, timeout_s=0.2)
    src.poll()
    hung = lib.gcds[2]
    hung.hang = threading.Event()
    step(lib, clock, src)
    assert src.box.stuck == 1
    by = {g.uuid: g for g in src.gpus()}
    assert not by[hung.uuid].up and all(g.up for u, g in by.items() if u != hung.uuid)
    hung.hang.set()
    hung.hang = None
    wait_until(lambda: src.box.stuck == 0, 5, "the stuck call returning", poll_s=0.01)
    for _ in range(11):
        step(lib, clock, src)
    assert all(g.up for g in src.gpus())
    assert_energy_exact(lib, src)


def test_not_supported_fields_are_left_out_and_a_missing_driver_logged_once(caplog):
    lib = mi250x_node(1)
    lib.gcds[0].unsupported = {"amdsmi_get_gpu_activity"}
    clock = Clock()
    src = source(lib, clock)
    src.poll()
    assert src.gpus()[0].utilization_ratio is None and src.errors == 0
    down = mi250x_node(1)
    down.driver_loaded = False
    src2 = source(down, clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(25):
            step(down, clock, src2)
    assert src2.errors == 3 and src2.gpus() == ()
    messages = [r.message for r in caplog.records if "amdsmi unavailable" in r.message]
    assert len(messages) == 1 and "amdgpu kernel driver is not loaded" in messages[0]


def test_the_fake_raises_the_real_exception_shape():
    e = AmdSmiLibraryException(-34)
    assert e.err_code == 34 and e.get_error_code() == 34 and "DRIVER_NOT_LOADED" in str(e)


def test_lumi_node_exposition_every_gcd_its_package_and_promtool_silent():
    lib = mi250x_node(4)
    clock = Clock()
    exporter = NodeExporter("nid005000", amdsmi=source(lib, clock), baseline_w=300.0)
    exporter.poll_gpu()
    lib.advance(1)
    clock.t += 1
    exporter.poll_gpu()
    body = exporter.body()
    exporter.stop()
    promtool_check(body)
    check_schema(body)
    assert b"# HELP aif_gpu_up 1 while amdsmi answers for this GPU (GCD), else 0.\n" in body  # not the schema's NVML wording
    assert b"# HELP aif_gpu_sm_clock_hertz GPU GFX clock, Hz.\n" in body
    by: dict[str, list] = {}
    for s in samples(body):
        by.setdefault(s.name, []).append(s)
    assert len(by["aif_gpu_up"]) == 8 and len(by["aif_gpu_utilization_ratio"]) == 8
    assert [s.labels["gpu"] for s in by["aif_gpu_power_watts"]] == ["0", "2", "4", "6"]  # primary dies: the package
    assert [s.labels["gpu"] for s in by["aif_gpu_energy_joules_total"]] == ["0", "2", "4", "6"]
    packages = {s.labels["gpu"]: s.labels["package"] for s in by["aif_gpu_package_info"]}
    assert packages == {str(2 * k + d): f"PCB0{4711 + k:05d}" for k in range(4) for d in range(2)}
    assert "aif_gpu_throttled" not in by and "aif_gpu_xid_errors_total" not in by
    [node] = by["aif_node_power_watts"]
    assert node.labels["source"] == "estimate" and node.value == 300.0 + 400 + 420 + 440 + 460
    errors = {s.labels["source"]: s.value for s in by["aif_exporter_errors_total"]}
    assert errors == {"amdsmi": 0.0}
    for s in by["aif_gpu_energy_joules_total"]:
        g = lib.gcds[int(s.labels["gpu"])]
        assert s.value == pytest.approx(g.lifetime_counts * RESOLUTION_UJ / 1e6, abs=1e-9)


def test_one_gpu_library_per_node():
    with pytest.raises(ValueError, match="one GPU library per node"):
        NodeExporter("n", nvml=NvmlSource(lib=h100_node(1)), amdsmi=source(mi250x_node(1), Clock()))


def test_the_command_on_a_lumi_g_node_amdsmi_and_pm_counters_promtool_silent(tmp_path):
    """`aifmon exporter node --gpu amdsmi` on the fake MI250X node and a pm_counters tree: the real command's body."""
    pm = CrayPmCounters(tmp_path / "pm_counters", {"node": 2150, "cpu": 180, "memory": 60, "accel0": 460})
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aifmon", "exporter", "node", "--listen", f"127.0.0.1:{port}", "--node", "nid005001",
         "--gpu", "amdsmi", "--amdsmi-module", "tests.fake_amdsmi", "--cray-pm-root", str(pm.root),
         "--powercap-root", str(tmp_path / "powercap"), "--hwmon-root", str(tmp_path / "hwmon"), "--job-dir", str(tmp_path / "jobs")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "AIFMON_FAKE_AMDSMI_GCDS": "8"})
    try:
        body = wait_for_http(f"http://127.0.0.1:{port}/metrics", timeout_s=30)
        assert body.count(b"aif_gpu_up{") == 8 and body.count(b"aif_gpu_energy_joules_total{") == 4
        assert b'aif_node_power_watts{node="nid005001",source="cray_pm"} 2150.0' in body
        assert b'aif_node_energy_joules_total{node="nid005001",component="accel0"} 4000000.0' in body
        assert b'aif_exporter_errors_total{source="amdsmi"} 0.0' in body
        promtool_check(body)
        check_schema(body)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_amdsmi_without_rocm_exits_2_naming_the_module(tmp_path):
    """The real amdsmi package fails its import with KeyError when libamd_smi.so is missing: a stand-in does the same."""
    (tmp_path / "amdsmi_no_rocm.py").write_text("_libraries = {}\nfree = _libraries['libamd_smi.so']\n")
    result = subprocess.run([sys.executable, "-m", "aifmon", "exporter", "node", "--listen", f"127.0.0.1:{free_port()}",
                             "--gpu", "amdsmi", "--amdsmi-module", "amdsmi_no_rocm", "--job-dir", str(tmp_path / "jobs")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot load amdsmi's Python module 'amdsmi_no_rocm'" in result.stderr and "libamd_smi.so" in result.stderr
