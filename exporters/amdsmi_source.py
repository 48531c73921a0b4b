"""AMD Instinct GPU telemetry through AMD's own Python library, `amdsmi` (ROCm's amd-smi), polled on a loop.

The polling engine (time boxes, error kinds, UUID keys, monotonic energy) is exporters/gpu_poll.py's, the
same as NVML's; this module names amdsmi's calls, units and errors. Every field (amdsmi 7.0 Python API):
  power        amdsmi_get_power_info: `current_socket_power` (MI300), else `average_socket_power` (MI200), W
  energy       amdsmi_get_energy_count: `energy_accumulator` (a 64-bit count) x `counter_resolution` µJ
  limit        amdsmi_get_power_cap_info: `power_cap`, µW
  utilisation  amdsmi_get_gpu_activity: `gfx_activity`, %
  memory       amdsmi_get_gpu_vram_usage: `vram_used`, MiB (amdsmi says MB; it divides bytes by 2^20)
  temperature  amdsmi_get_temp_metric(HOTSPOT, CURRENT): the junction (die) temperature, °C
  clock        amdsmi_get_clock_info(GFX): `clk`, MHz
  throttle     amdsmi_get_violation_status: `active_*` flags (MI300 and later; NOT_SUPPORTED on MI200)
amdsmi reports a value it cannot read as the string "N/A"; such a field is left out, as NOT_SUPPORTED is.

One series set per GCD (what Slurm, ROCm and amdsmi each call a GPU). An MI250X carries two GCDs in one
package, and its firmware meters the package on the primary die only: the secondary die reads an energy
counter of 0, a power cap of 0 and power "N/A" (the test rocm-smi uses to print "N/A (Secondary die)"). So
power, energy and the power cap of a secondary die are left out, never exported as 0, and the package
figure on the primary die is counted once. `aif_gpu_package_info` names the package of every GCD: the
board's FRU serial number (`amdsmi_get_gpu_board_info`'s `product_serial`), which both GCDs of one OAM
module share.

Energy: amdsmi keeps the count in 64 bits, so it wraps only after 2^64 counts (about 2.8e8 GJ at
15.3 µJ): a reading that is small while the previous one was past 2^63 has wrapped. Otherwise a reading
more than 1 % below the previous one has restarted from zero (driver reload, GPU reset: the energy since
is small beside a count that ran since the last driver load), and one less than 1 % below it is a glitch
the firmware is known to produce (ROCm/amdsmi#115 shows steps of 0.3 % back): it adds nothing, and the
counter is measured from its highest reading on.

The `amdsmi` package loads libamd_smi.so when it is imported and fails to import without it (no ROCm on
the node), so it is imported by the caller, not here; its error classes are read off the module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from aifmon.exporters.gpu_poll import ErrorKind, FieldUnavailable, Found, Gpu, GpuPoller
from aifmon.exporters.timebox import CallTimeout

log = logging.getLogger(__name__)

# amdsmi_status_t codes (amdsmi.h; amdsmi_wrapper.AMDSMI_STATUS_*), as AmdSmiLibraryException.err_code carries them
STATUS_NOT_SUPPORTED = 2
STATUS_NOT_YET_IMPLEMENTED = 3
STATUS_FAIL_LOAD_MODULE = 4
STATUS_FAIL_LOAD_SYMBOL = 5
STATUS_NO_PERM = 10
STATUS_INIT_ERROR = 18
STATUS_NOT_INIT = 32
STATUS_DRIVER_NOT_LOADED = 34
_GONE = {STATUS_FAIL_LOAD_MODULE, STATUS_FAIL_LOAD_SYMBOL, STATUS_INIT_ERROR, STATUS_NOT_INIT, STATUS_DRIVER_NOT_LOADED}
_UNAVAILABLE = {STATUS_NOT_SUPPORTED, STATUS_NOT_YET_IMPLEMENTED, STATUS_NO_PERM}
_EXPLAIN = {
    STATUS_DRIVER_NOT_LOADED: "the amdgpu kernel driver is not loaded",
    STATUS_NOT_INIT: "amdsmi is not initialised (driver reloaded?)",
    STATUS_INIT_ERROR: "amdsmi could not initialise (no amdgpu device, or no permission on /dev/kfd and /dev/dri)",
    STATUS_FAIL_LOAD_MODULE: "libamd_smi.so could not load a module it needs",
    STATUS_NOT_SUPPORTED: "not supported on this GPU",
    STATUS_NO_PERM: "no permission",
}

COUNTER_BITS = 64
_WRAP = 1 << COUNTER_BITS
GLITCH_FRACTION = 100  # a reading less than 1/100 below the previous one is a glitch, further below a restart

# violation flags (`active_*`) by the schema's throttle reason: PVIOL is the package power limit, TVIOL the
# firmware's thermal limit (socket or HBM, as NVML's software thermal slowdown covers GPU and memory), a VR
# over temperature is a hardware thermal limit, PROCHOT an external hardware slowdown; none is a power brake.
THROTTLE_FLAGS: dict[str, tuple[str, ...]] = {
    "sw_power_cap": ("active_ppt_pwr",),
    "hw_slowdown": ("active_prochot_thrm",),
    "sw_thermal": ("active_socket_thrm", "active_hbm_thrm"),
    "hw_thermal": ("active_vr_thrm",),
    "hw_power_brake": (),
}


def _number(value: Any) -> int | float:
    """amdsmi's value, or FieldUnavailable where it says "N/A"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldUnavailable(value)
    return value


def add_energy_count(gpu: Gpu, raw: int) -> bool:
    """Fold one reading of amdsmi's energy accumulator (counts) into the GPU's monotonic total; False for a
    glitch (a reading just below the previous one), which adds nothing."""
    last = gpu.last_raw
    if gpu.energy is None or last is None:
        gpu.energy = raw  # first reading: the energy since driver load, so a restarted exporter continues
    elif raw >= last:
        gpu.energy += raw - last
    elif last >= _WRAP // 2 and raw < _WRAP // 4:
        gpu.energy += _WRAP - last + raw  # wrapped past 2^64 once
    elif raw < last - last // GLITCH_FRACTION:
        gpu.energy += raw  # restarted from zero (driver reload, GPU reset)
    else:
        return False  # keep `last_raw` at the highest reading: the counter is measured from there on
    gpu.last_raw = raw
    return True


class AmdsmiSource(GpuPoller):
    """AMD GPUs (GCDs) of this node as amdsmi reports them; the same interface as NvmlSource."""

    name = "amdsmi"
    title = "amdsmi"
    fast_fields = ("power", "energy")
    slow_fields = ("limit", "utilization", "memory", "temperature", "sm_clock", "throttle")
    help_overrides: ClassVar[Mapping[str, str]] = {
        "aif_gpu_power_watts": "GPU package power draw, W (amdsmi socket power; an MI250X package's on its primary GCD only).",
        "aif_gpu_energy_joules_total": "GPU package energy, J: amdsmi's energy accumulator since driver load, kept monotonic across "
                                       "driver reloads and GPU resets (an MI250X package's on its primary GCD only).",
        "aif_gpu_utilization_ratio": "GPU graphics engine (GFX) activity over the last sample period, 0-1.",
        "aif_gpu_temperature_celsius": "GPU junction (hotspot) temperature, degrees Celsius.",
        "aif_gpu_sm_clock_hertz": "GPU GFX clock, Hz.",
        "aif_gpu_up": "1 while amdsmi answers for this GPU (GCD), else 0.",
    }

    def __init__(self, lib: Any, call_timeout_s: float = 0.5, slow_every_s: float = 10.0, retry_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(lib, call_timeout_s, slow_every_s, retry_s, clock)
        self.library_errors = (lib.AmdSmiException,)
        self.glitches = 0  # energy readings below the previous one that were not a restart (ROCm/amdsmi#115)
        self._readers_bound: dict[str, Callable[[Any], Any]] = {
            "power": self._power,
            "energy": self._energy,
            "limit": lambda h: _number(lib.amdsmi_get_power_cap_info(h)["power_cap"]),
            "utilization": lambda h: _number(lib.amdsmi_get_gpu_activity(h)["gfx_activity"]),
            "memory": lambda h: _number(lib.amdsmi_get_gpu_vram_usage(h)["vram_used"]),
            "temperature": lambda h: _number(lib.amdsmi_get_temp_metric(h, lib.AmdSmiTemperatureType.HOTSPOT,
                                                                        lib.AmdSmiTemperatureMetric.CURRENT)),
            "sm_clock": lambda h: _number(lib.amdsmi_get_clock_info(h, lib.AmdSmiClkType.GFX)["clk"]),
            "throttle": self._throttle,
        }

    # -- the library -------------------------------------------------------------------------
    def _init_library(self) -> None:
        self.lib.amdsmi_init(self.lib.AmdSmiInitFlags.INIT_AMD_GPUS)

    def _shutdown_library(self) -> None:
        self.lib.amdsmi_shut_down()

    def _enumerate(self) -> list[Found]:
        lib = self.lib
        out = []
        for i, h in enumerate(lib.amdsmi_get_processor_handles()):
            uuid = lib.amdsmi_get_gpu_device_uuid(h)
            serial = lib.amdsmi_get_gpu_board_info(h)["product_serial"]
            package = serial if serial and serial != "N/A" else None
            secondary = self._secondary_die(h)
            if secondary:
                log.info("GPU %d (%s) is the secondary die of package %s: its power and energy are on the primary die", i, uuid, package)
            out.append(Found(i, h, uuid, lib.amdsmi_get_gpu_asic_info(h)["market_name"], package,
                             frozenset({"power", "energy", "limit"}) if secondary else frozenset()))
        return out

    def _secondary_die(self, h: Any) -> bool:
        """An MI200's secondary die has no power management: energy counter 0 and power cap 0 (rocm-smi's test)."""
        try:
            return self.lib.amdsmi_get_energy_count(h)["energy_accumulator"] == 0 and self.lib.amdsmi_get_power_cap_info(h)["power_cap"] == 0
        except self.lib.AmdSmiLibraryException as e:
            if self._kind(e) != "unavailable":
                raise
            return False

    def _lookup(self, uuid: str) -> tuple[Any, int]:
        """amdsmi has no lookup by UUID: the handles are enumerated again (a handful of calls, only while a GPU is down)."""
        lib = self.lib
        for i, h in enumerate(lib.amdsmi_get_processor_handles()):
            try:
                if lib.amdsmi_get_gpu_device_uuid(h) == uuid:
                    return h, i
            except lib.AmdSmiLibraryException as e:
                if self._kind(e) == "gone":
                    raise
                # another GPU that is down: not the one looked for
        raise lib.AmdSmiLibraryException(31)  # AMDSMI_STATUS_NOT_FOUND, as a lookup by BDF raises it

    def _readers(self) -> dict[str, Callable[[Any], Any]]:
        return self._readers_bound

    def _power(self, h: Any) -> int | float:
        info = self.lib.amdsmi_get_power_info(h)
        try:
            return _number(info["current_socket_power"])
        except FieldUnavailable:
            return _number(info["average_socket_power"])

    def _energy(self, h: Any) -> tuple[int, float]:
        e = self.lib.amdsmi_get_energy_count(h)
        return int(e["energy_accumulator"]), float(e["counter_resolution"])

    def _throttle(self, h: Any) -> frozenset[str]:
        status = self.lib.amdsmi_get_violation_status(h)
        if all(status.get(flag) == "N/A" for flags in THROTTLE_FLAGS.values() for flag in flags):
            raise FieldUnavailable("N/A")
        return frozenset(reason for reason, flags in THROTTLE_FLAGS.items() if any(status.get(f) is True for f in flags))

    def _kind(self, e: BaseException) -> ErrorKind:
        code = getattr(e, "err_code", None)
        if code in _GONE:
            return "gone"
        if code in _UNAVAILABLE:
            return "unavailable"
        return "gpu"

    def describe(self, e: BaseException) -> str:
        if isinstance(e, CallTimeout):
            return str(e)
        code = getattr(e, "err_code", None)
        if code is None:
            return f"{type(e).__name__}: {e}"
        return f"{type(e).__name__}: {_EXPLAIN.get(code, f'amdsmi status {code}')}"

    def _apply(self, gpu: Gpu, v: dict[str, Any], now: float) -> None:
        if "power" in v:
            gpu.power_w = float(v["power"])
        if "energy" in v:
            raw, resolution_uj = v["energy"]
            gpu.energy_unit_j = resolution_uj * 1e-6
            if not add_energy_count(gpu, raw):
                self.glitches += 1
                log.debug("GPU %d: energy count %d below the previous %d; not a restart, ignored", gpu.index, raw, gpu.last_raw)
        if "limit" in v:
            gpu.limit_w = v["limit"] / 1e6
        if "utilization" in v:
            gpu.utilization_ratio = v["utilization"] / 100.0
        if "memory" in v:
            gpu.memory_used_bytes = float(v["memory"] * 2**20)
        if "temperature" in v:
            gpu.temperature_c = float(v["temperature"])
        if "sm_clock" in v:
            gpu.sm_clock_hz = v["sm_clock"] * 1e6
        if "throttle" in v:
            gpu.throttled = v["throttle"]
