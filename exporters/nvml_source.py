"""NVIDIA GPU telemetry through NVML (`pynvml`, from the nvidia-ml-py package), polled on a background loop.

The polling engine (time boxes, error kinds, UUID keys, monotonic energy) is exporters/gpu_poll.py's; this
module names NVML's calls and errors:
  - the library is gone: not installed, driver not loaded, uninitialised after a driver reload;
  - one GPU failed: lost off the bus, reset required, hung;
  - a field is not supported on that GPU (MIG mode, older boards, module power off a GH200): left out.

Energy is NVML's counter since driver load, in integer millijoules, so the exported joules are exact; a
counter that goes backwards has restarted (driver reload, GPU reset).
MIG: only physical GPUs are enumerated, so board power and energy appear once per physical GPU;
MIG instance UUIDs are resolved to their parent GPU for Slurm job attribution only.
Grace Hopper (GH200): `nvmlDeviceGetPowerUsage` is the GPU's own power; the superchip module's power
(GPU + Grace CPU + memory) is the field NVML_FI_DEV_POWER_INSTANT read with scope NVML_POWER_SCOPE_MODULE,
exported once per module as `aif_gpu_module_power_watts`. It includes the board figure, so the two are
never added (the node power estimate takes the module figure instead of board power and CPU power).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeAlias

import pynvml

from aifmon.exporters.gpu_poll import ErrorKind, Found, Gpu, GpuPoller, add_energy_reading
from aifmon.exporters.timebox import CallTimeout
from aifmon.telemetry.schema import THROTTLE_REASONS

__all__ = ["THROTTLE_BITS", "Gpu", "NvmlSource", "describe_nvml_error"]

Nvml: TypeAlias = Any
"""The NVML library: the `pynvml` module, or an object with its functions (tests.fake_nvml.FakeNVML).
Any, because pynvml ships no type information to write a protocol against."""

log = logging.getLogger(__name__)

# NVML clock-event (throttle) reason bits, by the schema's reason label
THROTTLE_BITS: dict[str, int] = {
    "sw_power_cap": pynvml.nvmlClocksThrottleReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksThrottleReasonHwSlowdown,
    "sw_thermal": pynvml.nvmlClocksThrottleReasonSwThermalSlowdown,
    "hw_thermal": pynvml.nvmlClocksThrottleReasonHwThermalSlowdown,
    "hw_power_brake": pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown,
}
assert tuple(THROTTLE_BITS) == THROTTLE_REASONS

# Errors that mean NVML as a whole is unusable until it is initialised again.
_LIBRARY_GONE = (pynvml.NVMLError_Uninitialized, pynvml.NVMLError_DriverNotLoaded, pynvml.NVMLError_LibraryNotFound,
                 pynvml.NVMLError_FunctionNotFound)
_NOT_AVAILABLE = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_NoPermission)

_EXPLAIN = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "libnvidia-ml.so.1 not found (no NVIDIA driver installed on this node?)",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded",
    pynvml.NVML_ERROR_UNINITIALIZED: "NVML is not initialised (driver reloaded?)",
    pynvml.NVML_ERROR_GPU_IS_LOST: "the GPU has fallen off the bus or is otherwise inaccessible",
    pynvml.NVML_ERROR_RESET_REQUIRED: "the GPU needs a reset",
    pynvml.NVML_ERROR_NO_PERMISSION: "no permission",
    pynvml.NVML_ERROR_NOT_SUPPORTED: "not supported on this GPU",
}

# GH200 module power: instant power (mW) of the whole superchip module
MODULE_POWER_FIELD = (pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_POWER_SCOPE_MODULE)


def describe_nvml_error(e: BaseException) -> str:
    """A sentence a person can act on; pynvml's own str() needs the library loaded to say anything."""
    if isinstance(e, CallTimeout):
        return str(e)
    if isinstance(e, pynvml.NVMLError):
        return f"{type(e).__name__}: {_EXPLAIN.get(e.value, f'NVML error code {e.value}')}"
    return f"{type(e).__name__}: {e}"


def _throttle(lib: Nvml, h: Any) -> int:
    # renamed "clocks event reasons" in driver 535; the old name stays for older libraries
    fn = getattr(lib, "nvmlDeviceGetCurrentClocksEventReasons", None) or lib.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(fn(h))


def _mig_uuids(lib: Nvml, h: Any) -> tuple[str, ...]:
    current, _pending = lib.nvmlDeviceGetMigMode(h)
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return ()
    uuids = []
    for i in range(lib.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            uuids.append(lib.nvmlDeviceGetUUID(lib.nvmlDeviceGetMigDeviceHandleByIndex(h, i)))
        except pynvml.NVMLError_NotFound:
            continue  # an unused MIG slot
    return tuple(uuids)


def _module_power(lib: Nvml, h: Any) -> int:
    """mW. nvmlDeviceGetFieldValues succeeds as a call and reports each field's own status: a board without
    module scope (anything but a Grace superchip) answers NOT_SUPPORTED there, raised as pynvml would."""
    value = lib.nvmlDeviceGetFieldValues(h, [MODULE_POWER_FIELD])[0]
    if value.nvmlReturn != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(value.nvmlReturn)
    return int(value.value.uiVal)


_READERS: dict[str, Callable[[Nvml, Any], Any]] = {
    "power": lambda lib, h: lib.nvmlDeviceGetPowerUsage(h),  # mW
    "energy": lambda lib, h: lib.nvmlDeviceGetTotalEnergyConsumption(h),  # mJ since driver load
    "module_power": _module_power,  # mW, GH200 only
    "limit": lambda lib, h: lib.nvmlDeviceGetEnforcedPowerLimit(h),  # mW
    "utilization": lambda lib, h: lib.nvmlDeviceGetUtilizationRates(h).gpu,  # percent
    "memory": lambda lib, h: lib.nvmlDeviceGetMemoryInfo(h).used,  # bytes
    "temperature": lambda lib, h: lib.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),  # degC
    "sm_clock": lambda lib, h: lib.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),  # MHz
    "throttle": _throttle,
    "mig": _mig_uuids,
}


class NvmlSource(GpuPoller):
    """Physical GPUs of this node as NVML reports them; `poll()` reads them, `gpus()` is the latest state.

    Call `poll()` from one thread only (the NVML loop); `gpus()` and `xid_errors()` from any.
    """

    name = "nvml"
    title = "NVML"
    fast_fields = ("power", "energy", "module_power")
    slow_fields = ("limit", "utilization", "memory", "temperature", "sm_clock", "throttle", "mig")
    library_errors = (pynvml.NVMLError,)

    def __init__(self, lib: Nvml = pynvml, call_timeout_s: float = 0.5, slow_every_s: float = 10.0,
                 retry_s: float = 10.0, clock: Callable[[], float] = time.monotonic, xid_events: bool = True):
        super().__init__(lib, call_timeout_s, slow_every_s, retry_s, clock)
        self._readers_bound: dict[str, Callable[[Any], Any]] = {name: functools.partial(fn, lib) for name, fn in _READERS.items()}
        self._xid_lock = threading.Lock()
        self._xid: dict[str, int] = {}
        self._xid_supported: set[str] = set()
        self._xid_events = xid_events
        self._event_set: Any = None
        self._stop = threading.Event()
        self._xid_thread: threading.Thread | None = None

    def xid_errors(self) -> dict[str, int]:
        """XID error count per GPU UUID, for GPUs whose driver delivers XID events."""
        with self._xid_lock:
            return {u: self._xid.get(u, 0) for u in self._xid_supported}

    # -- the library -------------------------------------------------------------------------
    def _init_library(self) -> None:
        self.lib.nvmlInit()

    def _shutdown_library(self) -> None:
        self.lib.nvmlShutdown()

    def _enumerate(self) -> list[Found]:
        lib = self.lib
        out = []
        for i in range(lib.nvmlDeviceGetCount()):
            h = lib.nvmlDeviceGetHandleByIndex(i)
            out.append(Found(i, h, lib.nvmlDeviceGetUUID(h), lib.nvmlDeviceGetName(h)))
        return out

    def _lookup(self, uuid: str) -> tuple[Any, int]:
        h = self.lib.nvmlDeviceGetHandleByUUID(uuid)
        return h, self.lib.nvmlDeviceGetIndex(h)

    def _readers(self) -> dict[str, Callable[[Any], Any]]:
        return self._readers_bound

    def _kind(self, e: BaseException) -> ErrorKind:
        if isinstance(e, _LIBRARY_GONE):
            return "gone"
        if isinstance(e, _NOT_AVAILABLE):
            return "unavailable"
        return "gpu"

    def describe(self, e: BaseException) -> str:
        return describe_nvml_error(e)

    def _apply(self, gpu: Gpu, v: dict[str, Any], now: float) -> None:
        if "power" in v:
            gpu.power_w = v["power"] / 1000.0
        if "module_power" in v:
            gpu.module_power_w = v["module_power"] / 1000.0
        if "energy" in v:
            add_energy_reading(gpu, int(v["energy"]))
        if "limit" in v:
            gpu.limit_w = v["limit"] / 1000.0
        if "utilization" in v:
            gpu.utilization_ratio = v["utilization"] / 100.0
        if "memory" in v:
            gpu.memory_used_bytes = float(v["memory"])
        if "temperature" in v:
            gpu.temperature_c = float(v["temperature"])
        if "sm_clock" in v:
            gpu.sm_clock_hz = v["sm_clock"] * 1e6
        if "throttle" in v:
            gpu.throttled = frozenset(reason for reason, bit in THROTTLE_BITS.items() if v["throttle"] & bit)
        if "mig" in v:
            gpu.mig_uuids = v["mig"]

    def _after_init(self) -> None:
        if self._xid_events:
            self._register_xid_events()

    def _after_revive(self, gpu: Gpu) -> None:
        if self._event_set is not None and gpu.uuid in self._xid_supported:
            try:
                self.box.call(self.lib.nvmlDeviceRegisterEvents, gpu.handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set)
            except (pynvml.NVMLError, CallTimeout) as e:
                self.errors += 1
                log.warning("GPU %d: cannot register for XID events again: %s", gpu.index, describe_nvml_error(e))

    # -- XID errors ------------------------------------------------------------------------
    def _register_xid_events(self) -> None:
        """A fresh event set after every (re)initialisation; the old one died with the old NVML session."""
        lib = self.lib

        def register(gpus: list[Gpu]) -> tuple[Any, list[str]]:
            es = lib.nvmlEventSetCreate()
            ok = []
            for g in gpus:
                try:
                    lib.nvmlDeviceRegisterEvents(g.handle, pynvml.nvmlEventTypeXidCriticalError, es)
                    ok.append(g.uuid)
                except pynvml.NVMLError_NotSupported:
                    log.info("GPU %d (%s): XID events not supported; aif_gpu_xid_errors_total left out", g.index, g.uuid)
            return es, ok

        try:
            es, ok = self.box.call(register, [g for g in self._gpus.values() if g.up])
        except (pynvml.NVMLError, CallTimeout) as e:
            self.errors += 1
            log.warning("cannot register for XID events: %s", describe_nvml_error(e))
            return
        with self._xid_lock:
            self._xid_supported.update(ok)
        self._event_set = es
        if self._xid_thread is None:
            self._xid_thread = threading.Thread(target=self._xid_loop, name="nvml-xid", daemon=True)
            self._xid_thread.start()

    def _xid_loop(self) -> None:
        """Blocks in nvmlEventSetWait (1 s at a time) and counts XID errors per GPU UUID."""
        lib = self.lib
        while not self._stop.is_set():
            es = self._event_set
            if es is None:
                self._stop.wait(1.0)
                continue
            try:
                data = lib.nvmlEventSetWait_v2(es, 1000)
                if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                    continue
                uuid = lib.nvmlDeviceGetUUID(data.device)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError as e:
                if self._event_set is es:
                    self._event_set = None  # the NVML loop registers a new set when it re-initialises
                log.debug("XID event wait ended: %s", describe_nvml_error(e))
                continue
            with self._xid_lock:
                self._xid[uuid] = self._xid.get(uuid, 0) + 1
            log.warning("XID %d on GPU %s", data.eventData, uuid)

    def close(self) -> None:
        self._stop.set()
        super().close()
