"""GPU telemetry through NVML (`pynvml`, from the nvidia-ml-py package), polled on a background loop.

Every NVML call is time-boxed (exporters/timebox.py): a GPU whose call hangs is reported down and
skipped until the call comes back, while the other GPUs keep reporting. Errors are classified:
  - the library is gone (not installed, driver not loaded, uninitialised after a driver reload):
    every GPU is down, the reason is logged once, and initialisation is retried every `retry_s`;
  - one GPU failed (lost off the bus, reset required, hung): that GPU's `aif_gpu_up` is 0;
  - a field is not supported on that GPU (MIG mode, older boards): the field is left out, no error.

Energy is keyed by GPU UUID, never by index (indices can change across a driver reload), and kept
in integer millijoules so that the exported joules are exact: NVML's counter counts from the driver
load, and a counter that goes backwards has restarted (driver reload, GPU reset).
MIG: only physical GPUs are enumerated, so board power and energy appear once per physical GPU;
MIG instance UUIDs are resolved to their parent GPU for Slurm job attribution only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pynvml

from aifmon.exporters.timebox import CallTimeout, TimeBox
from aifmon.telemetry.schema import THROTTLE_REASONS

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


def describe_nvml_error(e: BaseException) -> str:
    """A sentence a person can act on; pynvml's own str() needs the library loaded to say anything."""
    if isinstance(e, CallTimeout):
        return str(e)
    if isinstance(e, pynvml.NVMLError):
        return f"{type(e).__name__}: {_EXPLAIN.get(e.value, f'NVML error code {e.value}')}"
    return f"{type(e).__name__}: {e}"


@dataclass
class Gpu:
    """What the exporter knows of one physical GPU; fields are None while unknown or not supported."""

    uuid: str
    index: int
    model: str
    handle: Any = None
    up: bool = False
    busy: bool = False  # a call on this GPU is stuck in an abandoned worker thread
    retry_at: float = 0.0  # monotonic s: while down, when to look the GPU up again
    power_w: float | None = None
    energy_mj: int | float | None = None  # exported as energy_mj / 1000 J
    last_raw_mj: int | None = None
    integrated: bool = False  # no NVML energy counter: energy is power integrated over polls
    last_power: tuple[float, float] | None = None  # (monotonic s, W) of the previous sample, for integration
    limit_w: float | None = None
    utilization_ratio: float | None = None
    memory_used_bytes: float | None = None
    temperature_c: float | None = None
    sm_clock_hz: float | None = None
    throttle_mask: int | None = None
    unsupported: set[str] = field(default_factory=set)
    mig_uuids: tuple[str, ...] = ()

    def clear_gauges(self) -> None:
        """Drop every reading that describes 'now'; counters keep their last value."""
        self.power_w = self.limit_w = self.utilization_ratio = self.memory_used_bytes = None
        self.temperature_c = self.sm_clock_hz = None
        self.throttle_mask = None
        self.last_power = None  # never integrate across a gap: the power in between is unknown


def add_energy_reading(gpu: Gpu, raw_mj: int) -> None:
    """Fold one reading of NVML's since-driver-load counter (mJ) into the GPU's monotonic total."""
    if gpu.energy_mj is None:
        gpu.energy_mj = raw_mj  # first reading: the energy since driver load, so a restarted exporter continues
    elif gpu.last_raw_mj is None or raw_mj >= gpu.last_raw_mj:
        gpu.energy_mj += raw_mj - (gpu.last_raw_mj or raw_mj)
    else:
        gpu.energy_mj += raw_mj  # the counter restarted (driver reload, GPU reset) and has counted from 0 since
    gpu.last_raw_mj = raw_mj


def _fetch(lib: Nvml, handle: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """Read NVML fields of one GPU in one time-boxed call; each value or the exception it raised."""
    out: dict[str, Any] = {}
    for name in fields:
        try:
            out[name] = _READERS[name](lib, handle)
        except pynvml.NVMLError as e:
            out[name] = e
    return out


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


_READERS: dict[str, Callable[[Nvml, Any], Any]] = {
    "power": lambda lib, h: lib.nvmlDeviceGetPowerUsage(h),  # mW
    "energy": lambda lib, h: lib.nvmlDeviceGetTotalEnergyConsumption(h),  # mJ since driver load
    "limit": lambda lib, h: lib.nvmlDeviceGetEnforcedPowerLimit(h),  # mW
    "utilization": lambda lib, h: lib.nvmlDeviceGetUtilizationRates(h).gpu,  # percent
    "memory": lambda lib, h: lib.nvmlDeviceGetMemoryInfo(h).used,  # bytes
    "temperature": lambda lib, h: lib.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),  # degC
    "sm_clock": lambda lib, h: lib.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),  # MHz
    "throttle": _throttle,
    "mig": _mig_uuids,
}
FAST_FIELDS = ("power", "energy")
SLOW_FIELDS = ("limit", "utilization", "memory", "temperature", "sm_clock", "throttle", "mig")


class NvmlSource:
    """Physical GPUs of this node as NVML reports them; `poll()` reads them, `gpus()` is the latest state.

    Call `poll()` from one thread only (the NVML loop); `gpus()` and `xid_errors()` from any.
    """

    def __init__(self, lib: Nvml = pynvml, call_timeout_s: float = 0.5, slow_every_s: float = 10.0,
                 retry_s: float = 10.0, clock: Callable[[], float] = time.monotonic, xid_events: bool = True):
        self.lib = lib
        self.box = TimeBox("nvml", call_timeout_s)
        self.slow_every_s = slow_every_s
        self.retry_s = retry_s
        self.clock = clock
        self.errors = 0  # for aif_exporter_errors_total{source="nvml"}
        self.initialised = False
        self.reason: str | None = None  # why NVML is unusable, while it is
        self._gpus: dict[str, Gpu] = {}
        self._published: tuple[Gpu, ...] = ()
        self._last_init_attempt: float | None = None
        self._last_slow: float | None = None
        self._logged: set[tuple[str, str]] = set()
        self._xid_lock = threading.Lock()
        self._xid: dict[str, int] = {}
        self._xid_supported: set[str] = set()
        self._xid_events = xid_events
        self._event_set: Any = None
        self._stop = threading.Event()
        self._xid_thread: threading.Thread | None = None

    # -- state for the renderer -------------------------------------------------------------
    def gpus(self) -> tuple[Gpu, ...]:
        """Copies of every GPU seen since start (lost ones stay, with up False), ordered by index."""
        return self._published

    def xid_errors(self) -> dict[str, int]:
        """XID error count per GPU UUID, for GPUs whose driver delivers XID events."""
        with self._xid_lock:
            return {u: self._xid.get(u, 0) for u in self._xid_supported}

    def uuid_index(self) -> dict[str, int]:
        """GPU and MIG-instance UUID → NVML index of the physical GPU."""
        out: dict[str, int] = {}
        for g in self._published:
            out[g.uuid] = g.index
            for m in g.mig_uuids:
                out[m] = g.index
        return out

    # -- polling -----------------------------------------------------------------------------
    def poll(self) -> None:
        """One tick of the NVML loop: power and energy always, the slow fields every `slow_every_s`."""
        now = self.clock()
        if not self.initialised and (self._last_init_attempt is None or now - self._last_init_attempt >= self.retry_s):
            self._init(now)
        if self.initialised:
            slow = self._last_slow is None or now - self._last_slow >= self.slow_every_s
            if slow:
                self._last_slow = now
            for gpu in sorted(self._gpus.values(), key=lambda g: g.index):
                if gpu.busy:
                    continue
                if gpu.up:
                    self._poll_gpu(gpu, FAST_FIELDS + SLOW_FIELDS if slow else FAST_FIELDS, now)
                elif now >= gpu.retry_at:
                    self._revive(gpu, now)
                if not self.initialised:
                    break  # the library went away in the middle of this tick
        self._publish()

    def _publish(self) -> None:
        self._published = tuple(Gpu(**{**g.__dict__, "unsupported": set(g.unsupported)})
                                for g in sorted(self._gpus.values(), key=lambda g: g.index))

    def _init(self, now: float) -> None:
        self._last_init_attempt = now
        if self._gpus:  # a re-initialisation (after a driver reload, say): drop the old session first
            with contextlib.suppress(pynvml.NVMLError, CallTimeout):  # the old session may be gone: nothing to release
                self.box.call(self.lib.nvmlShutdown)
        try:
            self.box.call(self.lib.nvmlInit)
            found = self.box.call(self._enumerate)
        except (pynvml.NVMLError, CallTimeout) as e:
            self._library_gone(e)
            return
        present = set()
        for index, handle, uuid, name in found:
            gpu = self._gpus.get(uuid)
            if gpu is None:
                gpu = self._gpus[uuid] = Gpu(uuid=uuid, index=index, model=name)
            elif gpu.busy:
                continue  # its stuck call still holds it; try again once the call returns
            gpu.index, gpu.model, gpu.handle, gpu.up = index, name, handle, True
            gpu.unsupported.clear()
            present.add(uuid)
        for uuid, gpu in self._gpus.items():
            if uuid not in present and gpu.up:
                self._gpu_down(gpu, "no longer enumerated by NVML")
        if self.reason is not None:
            log.info("NVML is back: %d GPU(s)", len(present))
        self.initialised, self.reason = True, None
        self._last_slow = None
        if self._xid_events:
            self._register_xid_events()

    def _revive(self, gpu: Gpu, now: float) -> None:
        """Look a down GPU up again by UUID (a reset GPU gets a new handle, maybe a new index)."""
        gpu.retry_at = now + self.retry_s
        lib = self.lib

        def lookup() -> tuple[Any, int]:
            h = lib.nvmlDeviceGetHandleByUUID(gpu.uuid)
            return h, lib.nvmlDeviceGetIndex(h)

        def came_back() -> None:
            gpu.busy = False

        try:
            gpu.handle, gpu.index = self.box.call(lookup, on_late=came_back)
        except CallTimeout as e:
            gpu.busy = True
            self._gpu_down(gpu, describe_nvml_error(e))
            return
        except pynvml.NVMLError as e:
            if isinstance(e, _LIBRARY_GONE):
                self._library_gone(e)
            else:
                self.errors += 1  # still gone; it was logged when it went down
            return
        gpu.up = True
        self._poll_gpu(gpu, FAST_FIELDS + SLOW_FIELDS, now)
        if gpu.up:
            log.info("GPU %d (%s) is back", gpu.index, gpu.uuid)
            if self._event_set is not None and gpu.uuid in self._xid_supported:
                try:
                    self.box.call(lib.nvmlDeviceRegisterEvents, gpu.handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set)
                except (pynvml.NVMLError, CallTimeout) as e:
                    self.errors += 1
                    log.warning("GPU %d: cannot register for XID events again: %s", gpu.index, describe_nvml_error(e))

    def _enumerate(self) -> list[tuple[int, Any, str, str]]:
        lib = self.lib
        out = []
        for i in range(lib.nvmlDeviceGetCount()):
            h = lib.nvmlDeviceGetHandleByIndex(i)
            out.append((i, h, lib.nvmlDeviceGetUUID(h), lib.nvmlDeviceGetName(h)))
        return out

    def _library_gone(self, e: BaseException) -> None:
        reason = describe_nvml_error(e)
        self.errors += 1
        if reason != self.reason:  # logged once per distinct reason, not once per retry
            log.warning("NVML unavailable, GPU metrics are not collected (retrying every %g s): %s", self.retry_s, reason)
        self.reason, self.initialised = reason, False
        for gpu in self._gpus.values():
            if gpu.up:
                gpu.up = False
                gpu.clear_gauges()

    def _gpu_down(self, gpu: Gpu, reason: str) -> None:
        self.errors += 1
        if gpu.up:
            log.warning("GPU %d (%s) is down: %s", gpu.index, gpu.uuid, reason)
        gpu.up = False
        gpu.retry_at = self.clock() + self.retry_s
        gpu.clear_gauges()

    def _poll_gpu(self, gpu: Gpu, fields: tuple[str, ...], now: float) -> None:
        wanted = tuple(f for f in fields if f not in gpu.unsupported)

        def came_back() -> None:
            gpu.busy = False  # the stuck call returned; the GPU is polled again from the next tick

        try:
            values = self.box.call(_fetch, self.lib, gpu.handle, wanted, on_late=came_back)
        except CallTimeout as e:
            gpu.busy = True
            self._gpu_down(gpu, describe_nvml_error(e))
            return
        failure = next((v for v in values.values() if isinstance(v, pynvml.NVMLError) and not isinstance(v, _NOT_AVAILABLE)), None)
        if isinstance(failure, _LIBRARY_GONE):
            self._library_gone(failure)
            return
        if failure is not None:
            self._gpu_down(gpu, describe_nvml_error(failure))
            return
        for name, v in values.items():
            if isinstance(v, pynvml.NVMLError):
                gpu.unsupported.add(name)
                if (gpu.uuid, name) not in self._logged:
                    self._logged.add((gpu.uuid, name))
                    log.info("GPU %d (%s): %s %s; left out", gpu.index, gpu.uuid, name, describe_nvml_error(v))
        self._apply(gpu, values, now)

    def _apply(self, gpu: Gpu, v: dict[str, Any], now: float) -> None:
        if "power" in v and not isinstance(v["power"], Exception):
            gpu.power_w = v["power"] / 1000.0
        if "energy" in v and not isinstance(v["energy"], Exception):
            add_energy_reading(gpu, int(v["energy"]))
        elif "energy" in gpu.unsupported and gpu.power_w is not None:
            # no energy counter on this GPU: integrate board power (trapezoids between polls)
            gpu.integrated = True
            if gpu.energy_mj is None:
                gpu.energy_mj = 0.0
            if gpu.last_power is not None:
                t0, p0 = gpu.last_power
                gpu.energy_mj += (p0 + gpu.power_w) / 2 * (now - t0) * 1000.0
            gpu.last_power = (now, gpu.power_w)
        if "limit" in v and not isinstance(v["limit"], Exception):
            gpu.limit_w = v["limit"] / 1000.0
        if "utilization" in v and not isinstance(v["utilization"], Exception):
            gpu.utilization_ratio = v["utilization"] / 100.0
        if "memory" in v and not isinstance(v["memory"], Exception):
            gpu.memory_used_bytes = float(v["memory"])
        if "temperature" in v and not isinstance(v["temperature"], Exception):
            gpu.temperature_c = float(v["temperature"])
        if "sm_clock" in v and not isinstance(v["sm_clock"], Exception):
            gpu.sm_clock_hz = v["sm_clock"] * 1e6
        if "throttle" in v and not isinstance(v["throttle"], Exception):
            gpu.throttle_mask = v["throttle"]
        if "mig" in v and not isinstance(v["mig"], Exception):
            gpu.mig_uuids = v["mig"]

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
        self.box.close()
