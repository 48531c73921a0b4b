"""The NVML source on a fake NVML that raises the real pynvml errors: every fault, energy exact."""

from __future__ import annotations

import logging
import threading

import pynvml
import pytest

from aifmon.exporters.nvml_source import NvmlSource
from tests.conftest import wait_until
from tests.fake_nvml import FakeGpu, FakeNVML, h100_node


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def source(lib: FakeNVML, clock: Clock, **kwargs) -> NvmlSource:
    kwargs.setdefault("call_timeout_s", 0.3)
    return NvmlSource(lib=lib, clock=clock, slow_every_s=10, retry_s=10, **kwargs)


def step(lib: FakeNVML, clock: Clock, src: NvmlSource, seconds: int = 1) -> None:
    """The GPUs draw power for `seconds`, then the exporter polls."""
    lib.advance(seconds)
    clock.t += seconds
    src.poll()


def by_uuid(src: NvmlSource) -> dict:
    return {g.uuid: g for g in src.gpus()}


def assert_energy_exact(lib: FakeNVML, src: NvmlSource) -> None:
    got = by_uuid(src)
    for g in lib.gpus:
        assert got[g.uuid].energy == g.lifetime_mj, g.uuid  # integer mJ: exact, not approximately
        assert got[g.uuid].energy_j == g.lifetime_mj / 1000


def test_reads_every_field_with_units_and_mig_once_per_physical_gpu():
    lib = h100_node(4)
    lib.gpus[1].throttle = pynvml.nvmlClocksThrottleReasonSwPowerCap | pynvml.nvmlClocksThrottleReasonHwThermalSlowdown
    lib.gpus[2].mig_uuids = ("MIG-aaaa", "MIG-bbbb", "MIG-cccc")
    clock = Clock()
    src = source(lib, clock, xid_events=False)
    src.poll()
    gpus = src.gpus()
    assert [g.index for g in gpus] == [0, 1, 2, 3] and all(g.up for g in gpus)
    g0 = gpus[0]
    assert g0.power_w == 300.0 and g0.limit_w == 700.0 and g0.utilization_ratio == 0.87
    assert g0.memory_used_bytes == 40 * 2**30 and g0.temperature_c == 61 and g0.sm_clock_hz == 1755e6
    assert g0.energy == 1_000_000 and g0.model == "NVIDIA H100 80GB HBM3"
    assert gpus[1].throttled == {"sw_power_cap", "hw_thermal"} and gpus[0].throttled == frozenset()
    # MIG: board power once, on the physical GPU; utilisation is NOT_SUPPORTED in MIG mode, so left out
    assert len(gpus) == 4 and gpus[2].power_w == 320.0 and gpus[2].utilization_ratio is None
    assert gpus[2].mig_uuids == ("MIG-aaaa", "MIG-bbbb", "MIG-cccc")
    assert src.uuid_index()["MIG-bbbb"] == 2 and src.errors == 0  # NOT_SUPPORTED is not an error


def test_energy_exact_across_driver_reload_with_gpus_renumbered():
    lib = h100_node(4)
    clock = Clock()
    src = source(lib, clock, xid_events=False)
    src.poll()
    for _ in range(5):
        step(lib, clock, src)
    assert_energy_exact(lib, src)
    before = {g.uuid: g.energy for g in src.gpus()}

    lib.unload_driver()
    step(lib, clock, src)  # every call now fails: all GPUs down, counters kept
    assert not any(g.up for g in src.gpus()) and src.reason and "Uninitialized" in src.reason
    assert {g.uuid: g.energy for g in src.gpus()} == before
    order = [g.uuid for g in reversed(lib.gpus)]
    lib.load_driver(order)  # counters restart from 0 and the indices change
    for _ in range(12):  # the exporter retries every 10 s
        step(lib, clock, src)
    gpus = by_uuid(src)
    assert all(g.up for g in gpus.values())
    assert [gpus[u].index for u in order] == [0, 1, 2, 3]
    assert_energy_exact(lib, src)
    assert all(gpus[u].energy > before[u] for u in order)  # monotonic


def test_gpu_lost_mid_run_others_keep_reporting_and_energy_stays_exact(caplog):
    lib = h100_node(4)
    clock = Clock()
    src = source(lib, clock, xid_events=False)
    src.poll()
    step(lib, clock, src)
    lost = lib.gpus[1]
    lost.lost = True  # NVML_ERROR_GPU_IS_LOST from now on
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            step(lib, clock, src)
    gpus = by_uuid(src)
    assert not gpus[lost.uuid].up and gpus[lost.uuid].power_w is None
    assert gpus[lost.uuid].energy is not None  # the counter stays exported at its last value
    assert all(g.up and g.power_w for u, g in gpus.items() if u != lost.uuid)
    assert sum("GpuIsLost" in r.message for r in caplog.records) == 1  # logged once, not every poll
    assert src.errors == 1  # the poll that found it lost; it is looked up again only after retry_s (10 s)
    # it comes back without a reset: the counter ran on, and all of it is counted
    lost.lost = False
    for _ in range(10):
        step(lib, clock, src)
    assert by_uuid(src)[lost.uuid].up
    assert_energy_exact(lib, src)
    # lost again, then reset at once (what it drew in between, its counter forgot): it restarts from 0
    lost.lost = True
    clock.t += 1
    src.poll()
    lib.reset_gpu(lost.uuid)
    for _ in range(11):
        step(lib, clock, src)
    assert by_uuid(src)[lost.uuid].up
    assert_energy_exact(lib, src)


def test_a_hung_call_times_out_and_the_gpu_comes_back_when_it_returns():
    lib = h100_node(4)
    clock = Clock()
    src = source(lib, clock, xid_events=False, call_timeout_s=0.2)
    src.poll()
    hung = lib.gpus[3]
    hung.hang = threading.Event()
    lib.advance(1)
    clock.t += 1
    src.poll()  # returns while the call still hangs: the GPU is given up after one time box, not waited for
    assert src.box.stuck == 1
    gpus = by_uuid(src)
    assert not gpus[hung.uuid].up and gpus[hung.uuid].busy
    assert all(g.up for u, g in gpus.items() if u != hung.uuid)
    for _ in range(3):  # while the call is stuck, the GPU is skipped (no pile of stuck threads)
        step(lib, clock, src)
    assert src.box.stuck == 1
    hung.hang.set()  # the call returns at last
    hung.hang = None
    wait_until(lambda: src.box.stuck == 0, 5, "the stuck call's worker returning", poll_s=0.01)
    for _ in range(11):
        step(lib, clock, src)
    assert by_uuid(src)[hung.uuid].up
    assert_energy_exact(lib, src)


def test_not_supported_energy_counter_is_integrated_from_power():
    lib = FakeNVML([FakeGpu(uuid="GPU-old", name="Tesla P100-PCIE-16GB", power_mw=250_000,
                            unsupported={"nvmlDeviceGetTotalEnergyConsumption"})])
    clock = Clock()
    src = source(lib, clock, xid_events=False)
    src.poll()
    for _ in range(10):
        step(lib, clock, src)
    g = src.gpus()[0]
    assert g.integrated and g.energy == pytest.approx(250 * 10 * 1000, rel=1e-12)  # 250 W for 10 s
    assert src.errors == 0


def test_nvml_missing_is_logged_once_and_counted_every_retry(caplog):
    lib = h100_node(2)
    lib.library_present = False
    clock = Clock()
    src = source(lib, clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(25):
            step(lib, clock, src)
    assert src.gpus() == () and not src.initialised
    assert src.errors == 3  # tried at t=0, 10 and 20 s
    messages = [r.message for r in caplog.records if "NVML unavailable" in r.message]
    assert len(messages) == 1 and "libnvidia-ml.so.1 not found" in messages[0]


def test_xid_errors_are_counted_per_gpu():
    lib = h100_node(2)
    clock = Clock()
    src = source(lib, clock)
    src.poll()
    lib.xid(lib.gpus[1].uuid, 79)
    lib.xid(lib.gpus[1].uuid, 48)
    wait_until(lambda: src.xid_errors().get(lib.gpus[1].uuid) == 2, 5, "both XID events counted", poll_s=0.01)
    assert src.xid_errors() == {lib.gpus[0].uuid: 0, lib.gpus[1].uuid: 2}
    src.close()
