"""A fake NVML library that behaves like `pynvml` and raises the real `pynvml.NVMLError_*` classes.

Tests build a `FakeNVML` and hand it to `NvmlSource(lib=...)`. A subprocess (`aifmon exporter node
--nvml-module tests.fake_nvml`) gets the module-level instance, configured by environment variables:
  AIFMON_FAKE_NVML_GPUS   number of GPUs (default 8)
  AIFMON_FAKE_NVML        "missing": nvmlInit raises NVMLError_LibraryNotFound (no driver on the node)
  AIFMON_FAKE_NVML_MODEL  "gh200": Grace Hopper superchips (module power) instead of H100 boards
In that mode energy advances with wall-clock time, so a scraping Prometheus sees counters grow.

The fake keeps, per GPU, the truth a test checks the exporter against: `lifetime_mj`, every
millijoule the GPU drew, which never resets, beside `energy_mj`, the counter NVML reports, which
restarts at a driver reload or GPU reset.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import pynvml


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    minor: int = 0  # /dev/nvidiaN; differs from the NVML index on some boards
    power_mw: int = 300_000
    energy_mj: int = 1_000_000  # NVML's counter (since driver load)
    lifetime_mj: int = 1_000_000  # the truth: never resets
    limit_mw: int = 700_000
    utilization_pct: int = 87
    memory_used: int = 40 * 2**30
    temperature_c: int = 61
    sm_mhz: int = 1755
    throttle: int = 0
    unsupported: set[str] = field(default_factory=set)  # NVML function names that raise NOT_SUPPORTED
    lost: bool = False
    hang: threading.Event | None = None  # while set to an unset Event, every call on this GPU blocks on it
    mig_uuids: tuple[str, ...] = ()
    module_power_mw: int | None = None  # GH200: the superchip module (GPU + Grace CPU + memory); None: no module scope


@dataclass(frozen=True)
class _Handle:
    gpu: FakeGpu
    generation: int


@dataclass(frozen=True)
class _MigHandle:
    parent: FakeGpu
    uuid: str


@dataclass
class _Util:
    gpu: int
    memory: int


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _Event:
    device: _Handle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


class _EventSet:
    def __init__(self) -> None:
        self.uuids: set[str] = set()
        self.pending: list[_Event] = []
        self.cond = threading.Condition()


class FakeNVML:
    """The NVML functions the node exporter calls, over a list of `FakeGpu`s in NVML index order."""

    def __init__(self, gpus: list[FakeGpu], live: bool = False):
        self.gpus = gpus
        self.driver_loaded = True
        self.library_present = True
        self.initialised = False
        self.generation = 0
        self.calls = 0
        self._event_sets: list[_EventSet] = []
        self._live_since = time.monotonic() if live else None
        self._lock = threading.Lock()

    # -- test controls -----------------------------------------------------------------------
    def advance(self, seconds: int) -> None:
        """Every reachable GPU draws its power for `seconds` s (whole seconds keep mJ exact).

        With the driver unloaded no counter runs: no one can measure that energy, so the truth skips it too.
        """
        if not self.driver_loaded:
            return
        for g in self.gpus:  # a lost GPU draws and counts on; only the way to read it is gone
            g.energy_mj += g.power_mw * seconds
            g.lifetime_mj += g.power_mw * seconds

    def unload_driver(self) -> None:
        """`rmmod nvidia`: every call fails until the driver is back and NVML is initialised again."""
        self.driver_loaded = False
        self.initialised = False

    def load_driver(self, order: list[str] | None = None) -> None:
        """`modprobe nvidia`: counters restart from 0; `order` (UUIDs) renumbers the GPUs."""
        self.driver_loaded = True
        self.generation += 1
        for g in self.gpus:
            g.energy_mj = 0
        if order is not None:
            by_uuid = {g.uuid: g for g in self.gpus}
            self.gpus = [by_uuid[u] for u in order]

    def reset_gpu(self, uuid: str) -> None:
        """`nvidia-smi -r`: the GPU is reachable again and its counter restarts from 0."""
        g = self._by_uuid(uuid)
        g.lost, g.energy_mj = False, 0

    def xid(self, uuid: str, code: int) -> None:
        for es in self._event_sets:
            if uuid in es.uuids:
                with es.cond:
                    es.pending.append(_Event(_Handle(self._by_uuid(uuid), self.generation), pynvml.nvmlEventTypeXidCriticalError, code))
                    es.cond.notify_all()

    # -- library state -------------------------------------------------------------------------
    def _enter(self) -> None:
        self.calls += 1
        if self._live_since is not None:
            with self._lock:
                now = time.monotonic()
                whole = int(now - self._live_since)
                if whole:
                    self._live_since += whole
                    self.advance(whole)
        if not self.initialised:
            raise pynvml.NVMLError_Uninitialized()

    def _gpu(self, handle: _Handle) -> FakeGpu:
        self._enter()
        if not isinstance(handle, _Handle):
            raise pynvml.NVMLError_InvalidArgument()
        if handle.generation != self.generation:
            raise pynvml.NVMLError_Uninitialized()  # a handle from before the driver reload
        g = handle.gpu
        if g.hang is not None:
            g.hang.wait(30)  # bounded: a poll that waited on it would fail its test, not hang the suite
        if g.lost:
            raise pynvml.NVMLError_GpuIsLost()
        return g

    def _check(self, g: FakeGpu, fn: str) -> FakeGpu:
        if fn in g.unsupported:
            raise pynvml.NVMLError_NotSupported()
        return g

    def _by_uuid(self, uuid: str) -> FakeGpu:
        for g in self.gpus:
            if g.uuid == uuid:
                return g
        raise pynvml.NVMLError_NotFound()

    def nvmlInit(self) -> None:
        if not self.library_present:
            raise pynvml.NVMLError_LibraryNotFound()
        if not self.driver_loaded:
            raise pynvml.NVMLError_DriverNotLoaded()
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._enter()
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._enter()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        return _Handle(self.gpus[index], self.generation)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> _Handle:
        self._enter()
        g = self._by_uuid(uuid)
        if g.lost:
            raise pynvml.NVMLError_GpuIsLost()
        return _Handle(g, self.generation)

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        return self.gpus.index(self._gpu(handle))

    def nvmlDeviceGetUUID(self, handle: _Handle | _MigHandle) -> str:
        if isinstance(handle, _MigHandle):
            self._enter()
            return handle.uuid
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._check(self._gpu(handle), "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        return self._check(self._gpu(handle), "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return self._check(self._gpu(handle), "nvmlDeviceGetEnforcedPowerLimit").limit_mw

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Util:
        g = self._check(self._gpu(handle), "nvmlDeviceGetUtilizationRates")
        if g.mig_uuids:
            raise pynvml.NVMLError_NotSupported()  # as on real GPUs in MIG mode
        return _Util(g.utilization_pct, 20)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> _Memory:
        g = self._check(self._gpu(handle), "nvmlDeviceGetMemoryInfo")
        return _Memory(80 * 2**30, 80 * 2**30 - g.memory_used, g.memory_used)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._check(self._gpu(handle), "nvmlDeviceGetTemperature").temperature_c

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock: int) -> int:
        assert clock == pynvml.NVML_CLOCK_SM
        return self._check(self._gpu(handle), "nvmlDeviceGetClockInfo").sm_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        return self._check(self._gpu(handle), "nvmlDeviceGetCurrentClocksEventReasons").throttle

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> tuple[int, int]:
        g = self._check(self._gpu(handle), "nvmlDeviceGetMigMode")
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if g.mig_uuids else pynvml.NVML_DEVICE_MIG_DISABLE
        return mode, mode

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        self._gpu(handle)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _MigHandle:
        g = self._gpu(handle)
        if index >= len(g.mig_uuids):
            raise pynvml.NVMLError_NotFound()
        return _MigHandle(g, g.mig_uuids[index])

    def nvmlDeviceGetFieldValues(self, handle: _Handle, field_ids: list) -> object:
        """pynvml's own c_nvmlFieldValue_t array: the call succeeds and each field carries its own status, as in NVML."""
        g = self._gpu(handle)
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for v, fid in zip(values, field_ids):
            v.fieldId, v.scopeId = fid if isinstance(fid, tuple) else (fid, 0)
            if (v.fieldId, v.scopeId) == (pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_POWER_SCOPE_MODULE) and g.module_power_mw is not None:
                v.nvmlReturn, v.valueType = pynvml.NVML_SUCCESS, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                v.value.uiVal = g.module_power_mw
            else:
                v.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlEventSetCreate(self) -> _EventSet:
        self._enter()
        es = _EventSet()
        self._event_sets.append(es)
        return es

    def nvmlDeviceRegisterEvents(self, handle: _Handle, event_types: int, es: _EventSet) -> None:
        g = self._check(self._gpu(handle), "nvmlDeviceRegisterEvents")
        assert event_types == pynvml.nvmlEventTypeXidCriticalError
        es.uuids.add(g.uuid)

    def nvmlEventSetWait_v2(self, es: _EventSet, timeout_ms: int) -> _Event:
        with es.cond:
            if not es.pending:
                es.cond.wait(timeout_ms / 1000)
            if not es.pending:
                raise pynvml.NVMLError_Timeout()
            return es.pending.pop(0)


def h100_node(count: int = 8, live: bool = False) -> FakeNVML:
    """An 8-GPU H100 node with distinct power draws; UUIDs as NVML prints them."""
    return FakeNVML([FakeGpu(uuid=f"GPU-{i:08x}-1111-2222-3333-{i:012x}", minor=i, power_mw=300_000 + 10_000 * i,
                             energy_mj=1_000_000 * (i + 1), lifetime_mj=1_000_000 * (i + 1)) for i in range(count)], live=live)


def gh200_node(count: int = 4, live: bool = False) -> FakeNVML:
    """A 4-superchip GH200 node (JUPITER's JEDI/JETI blades): GPU power from nvmlDeviceGetPowerUsage, and the
    module's (GPU + Grace CPU + LPDDR5X) through the module-scope power field."""
    return FakeNVML([FakeGpu(uuid=f"GPU-{i:08x}-4444-5555-6666-{i:012x}", name="NVIDIA GH200 480GB", minor=i,
                             power_mw=400_000 + 10_000 * i, module_power_mw=560_000 + 10_000 * i, limit_mw=680_000,
                             memory_used=90 * 2**30, energy_mj=2_000_000 * (i + 1), lifetime_mj=2_000_000 * (i + 1))
                     for i in range(count)], live=live)


_make = gh200_node if os.environ.get("AIFMON_FAKE_NVML_MODEL") == "gh200" else h100_node
_default = _make(int(os.environ.get("AIFMON_FAKE_NVML_GPUS", "8")), live=True)
_default.library_present = os.environ.get("AIFMON_FAKE_NVML") != "missing"


def __getattr__(name: str):
    """Module-level access (`tests.fake_nvml.nvmlInit`) reaches the default instance, as with pynvml."""
    return getattr(_default, name)
