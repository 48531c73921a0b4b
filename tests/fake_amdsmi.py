"""A fake `amdsmi` (AMD's ROCm SMI Python library, 7.0 API) for tests without AMD GPUs or ROCm.

The real package cannot be imported here at all: importing it loads libamd_smi.so and fails without it.
So this module re-declares what the exporter touches with the real package's names, signatures, return
dicts, units and error semantics (amdsmi 7.0.2's amdsmi_interface.py and amdsmi_exception.py):
  - AmdSmiException > AmdSmiLibraryException(err_code) (code made positive, `get_error_code()`, err_info),
    AmdSmiRetryException and AmdSmiTimeoutException, AmdSmiParameterException for a wrong argument type;
  - status codes as amdsmi_wrapper.AMDSMI_STATUS_* has them; enums with the real members and values;
  - values the library cannot read come back as the string "N/A", as _validate_if_max_uint returns them.

Tests build a `FakeAmdSmi` and hand it to `AmdsmiSource(lib=...)`. A subprocess (`aifmon exporter node --gpu
amdsmi --amdsmi-module tests.fake_amdsmi`) gets the module-level instance: AIFMON_FAKE_AMDSMI_GCDS GCDs of
MI250X (default 8, four packages); energy then advances with wall-clock time.

Truth: per GCD, `lifetime_counts` is every count of energy drawn, never reset, beside `counts`, the
accumulator amdsmi reports, which restarts at a driver reload or GPU reset.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

# amdsmi_wrapper.AMDSMI_STATUS_*
AMDSMI_STATUS_SUCCESS = 0
AMDSMI_STATUS_INVAL = 1
AMDSMI_STATUS_NOT_SUPPORTED = 2
AMDSMI_STATUS_TIMEOUT = 8
AMDSMI_STATUS_RETRY = 9
AMDSMI_STATUS_NO_PERM = 10
AMDSMI_STATUS_IO = 12
AMDSMI_STATUS_INIT_ERROR = 18
AMDSMI_STATUS_NOT_FOUND = 31
AMDSMI_STATUS_NOT_INIT = 32
AMDSMI_STATUS_DRIVER_NOT_LOADED = 34

_ERR_INFO = {
    AMDSMI_STATUS_INVAL: "AMDSMI_STATUS_INVAL - Invalid parameters",
    AMDSMI_STATUS_NOT_SUPPORTED: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
    AMDSMI_STATUS_TIMEOUT: "AMDSMI_STATUS_TIMEOUT - Timeout in API call",
    AMDSMI_STATUS_RETRY: "AMDSMI_STATUS_RETRY - Retry operation",
    AMDSMI_STATUS_NO_PERM: "AMDSMI_STATUS_NO_PERM - Permission Denied",
    AMDSMI_STATUS_IO: "AMDSMI_STATUS_IO - I/O Error",
    AMDSMI_STATUS_INIT_ERROR: "AMDSMI_STATUS_INIT_ERROR - Initialization error",
    AMDSMI_STATUS_NOT_FOUND: "AMDSMI_STATUS_NOT_FOUND - Device Not found",
    AMDSMI_STATUS_NOT_INIT: "AMDSMI_STATUS_NOT_INIT - Device not initialized",
    AMDSMI_STATUS_DRIVER_NOT_LOADED: "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded",
}


class AmdSmiException(Exception):
    """Base smi exception class"""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int):
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        self.err_info = _ERR_INFO.get(err_code, "AMDSMI_STATUS_UNKNOWN_ERROR - An unknown error occurred")

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_code(self) -> int:
        return self.err_code


class AmdSmiRetryException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(AMDSMI_STATUS_RETRY)


class AmdSmiTimeoutException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(AMDSMI_STATUS_TIMEOUT)


class AmdSmiParameterException(AmdSmiException):
    def __init__(self, received: object, expected: object):
        super().__init__(None)
        self.err_code = None
        self.err_msg = f"Invalid parameter:\nActual type: {type(received)}\nExpected type: {expected}"

    def __str__(self) -> str:
        return self.err_msg


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1
    INIT_AMD_GPUS = 2
    INIT_AMD_APUS = 3
    INIT_NON_AMD_CPUS = 4
    INIT_NON_AMD_GPUS = 8


class AmdSmiClkType(IntEnum):
    SYS = 0
    GFX = 0
    DF = 1
    DCEF = 2
    SOC = 3
    MEM = 4


class AmdSmiTemperatureType(IntEnum):
    EDGE = 0
    HOTSPOT = 1
    JUNCTION = 1
    VRAM = 2


class AmdSmiTemperatureMetric(IntEnum):
    CURRENT = 0
    MAX = 1
    MIN = 2


RESOLUTION_UJ = ctypes.c_float(15.3).value  # µJ per count on MI200/MI300, as the C float amdsmi returns reads in Python


@dataclass
class FakeGcd:
    uuid: str
    board_serial: str  # the OAM module's FRU serial: shared by the two GCDs of an MI250X
    market_name: str = "AMD Instinct MI250X"
    primary: bool = True  # MI250X: only the primary die meters the package (power, energy, power cap)
    power_w: int = 400  # the package's socket power on a primary die, W (amdsmi returns whole watts)
    counts: int = 0  # amdsmi's energy_accumulator (since driver load)
    lifetime_counts: int = 0  # the truth: never resets
    resolution_uj: float = RESOLUTION_UJ
    cap_uw: int = 560_000_000
    gfx_activity: int = 93
    vram_used_mb: int = 48_000
    hotspot_c: int = 57
    gfx_mhz: int = 1700
    mi300: bool = False  # MI300 reports current_socket_power (average is N/A) and violation status
    violations: set[str] = field(default_factory=set)  # active_* flags set, MI300 only
    unsupported: set[str] = field(default_factory=set)  # function names that raise NOT_SUPPORTED
    lost: bool = False
    hang: threading.Event | None = None  # while set to an unset Event, every call on this GCD blocks on it

    def draw(self, seconds: int) -> None:
        if self.primary:
            inc = int(self.power_w * seconds * 1e6 / self.resolution_uj)
            self.counts += inc
            self.lifetime_counts += inc


@dataclass(frozen=True)
class _Handle:  # stands for amdsmi_wrapper.amdsmi_processor_handle (a c_void_p)
    gcd: FakeGcd
    generation: int


class _ModuleNames:
    """The classes the amdsmi module exports, reachable from an instance as from the module."""

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiParameterException = AmdSmiParameterException
    AmdSmiInitFlags = AmdSmiInitFlags
    AmdSmiClkType = AmdSmiClkType
    AmdSmiTemperatureType = AmdSmiTemperatureType
    AmdSmiTemperatureMetric = AmdSmiTemperatureMetric


class FakeAmdSmi(_ModuleNames):
    """The amdsmi functions the node exporter calls, over a list of `FakeGcd`s in enumeration order."""

    def __init__(self, gcds: list[FakeGcd], live: bool = False):
        self.gcds = gcds
        self.driver_loaded = True
        self.initialised = False
        self.generation = 0
        self.calls = 0
        self._live_since = time.monotonic() if live else None
        self._lock = threading.Lock()

    # -- test controls -----------------------------------------------------------------------
    def advance(self, seconds: int) -> None:
        """Every GCD draws its power for `seconds` s (a lost one too: only the way to read it is gone)."""
        if self.driver_loaded:
            for g in self.gcds:
                g.draw(seconds)

    def unload_driver(self) -> None:
        """`modprobe -r amdgpu`: every call fails until the driver is back and amdsmi is initialised again."""
        self.driver_loaded = False
        self.initialised = False

    def load_driver(self) -> None:
        """`modprobe amdgpu`: the accumulators restart from 0."""
        self.driver_loaded = True
        self.generation += 1
        for g in self.gcds:
            g.counts = 0

    def reset_gpu(self, uuid: str) -> None:
        """`amd-smi reset -G`: the GCD answers again and its accumulator restarts from 0."""
        g = next(g for g in self.gcds if g.uuid == uuid)
        g.lost, g.counts = False, 0

    # -- library state -------------------------------------------------------------------------
    def _enter(self) -> None:
        self.calls += 1
        if self._live_since is not None:
            with self._lock:
                whole = int(time.monotonic() - self._live_since)
                if whole:
                    self._live_since += whole
                    self.advance(whole)
        if not self.initialised:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_INIT)

    def _gcd(self, handle: Any, fn: str) -> FakeGcd:
        if not isinstance(handle, _Handle):
            raise AmdSmiParameterException(handle, "amdsmi_processor_handle")
        self._enter()
        if handle.generation != self.generation:
            raise AmdSmiLibraryException(AMDSMI_STATUS_INVAL)  # a handle from before the driver reload
        g = handle.gcd
        if g.hang is not None:
            g.hang.wait(30)  # bounded: a poll that waited on it would fail its test, not hang the suite
        if g.lost:
            raise AmdSmiLibraryException(AMDSMI_STATUS_IO)  # sysfs and the KFD answer EIO for a GPU off the bus
        if fn in g.unsupported:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED)
        return g

    def amdsmi_init(self, flag: AmdSmiInitFlags = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
        if not isinstance(flag, AmdSmiInitFlags):
            raise AmdSmiParameterException(flag, AmdSmiInitFlags)
        if not self.driver_loaded:
            raise AmdSmiLibraryException(AMDSMI_STATUS_DRIVER_NOT_LOADED)
        self.initialised = True

    def amdsmi_shut_down(self) -> None:
        self._enter()
        self.initialised = False

    def amdsmi_get_processor_handles(self) -> list[_Handle]:
        self._enter()
        return [_Handle(g, self.generation) for g in self.gcds]

    def amdsmi_get_gpu_device_uuid(self, h: _Handle) -> str:
        return self._gcd(h, "amdsmi_get_gpu_device_uuid").uuid

    def amdsmi_get_gpu_board_info(self, h: _Handle) -> dict[str, str]:
        g = self._gcd(h, "amdsmi_get_gpu_board_info")
        return {"model_number": "102-D65209-00", "product_serial": g.board_serial or "N/A", "fru_id": "N/A",
                "product_name": g.market_name, "manufacturer_name": "AMD"}

    def amdsmi_get_gpu_asic_info(self, h: _Handle) -> dict[str, Any]:
        g = self._gcd(h, "amdsmi_get_gpu_asic_info")
        return {"market_name": g.market_name, "vendor_id": "0x1002", "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
                "device_id": "0x740c", "target_graphics_version": "gfx90a"}

    def amdsmi_get_power_info(self, h: _Handle) -> dict[str, Any]:
        g = self._gcd(h, "amdsmi_get_power_info")
        power = g.power_w if g.primary else 0  # a secondary die reads 0 W
        return {"socket_power": power, "current_socket_power": power if g.mi300 else "N/A",
                "average_socket_power": "N/A" if g.mi300 else power, "gfx_voltage": "N/A", "soc_voltage": "N/A",
                "mem_voltage": "N/A", "power_limit": g.cap_uw // 1_000_000 if g.primary else 0}

    def amdsmi_get_energy_count(self, h: _Handle) -> dict[str, Any]:
        g = self._gcd(h, "amdsmi_get_energy_count")
        return {"energy_accumulator": g.counts, "counter_resolution": g.resolution_uj, "timestamp": time.time_ns()}

    def amdsmi_get_power_cap_info(self, h: _Handle) -> dict[str, int]:
        g = self._gcd(h, "amdsmi_get_power_cap_info")
        cap = g.cap_uw if g.primary else 0
        return {"power_cap": cap, "default_power_cap": cap, "dpm_cap": 0, "min_power_cap": 0, "max_power_cap": cap}

    def amdsmi_get_gpu_activity(self, h: _Handle) -> dict[str, Any]:
        g = self._gcd(h, "amdsmi_get_gpu_activity")
        return {"gfx_activity": g.gfx_activity, "umc_activity": 40, "mm_activity": "N/A"}

    def amdsmi_get_gpu_vram_usage(self, h: _Handle) -> dict[str, int]:
        g = self._gcd(h, "amdsmi_get_gpu_vram_usage")
        return {"vram_total": 65520, "vram_used": g.vram_used_mb}

    def amdsmi_get_temp_metric(self, h: _Handle, sensor_type: AmdSmiTemperatureType, metric: AmdSmiTemperatureMetric) -> int:
        if not isinstance(sensor_type, AmdSmiTemperatureType):
            raise AmdSmiParameterException(sensor_type, AmdSmiTemperatureType)
        if not isinstance(metric, AmdSmiTemperatureMetric):
            raise AmdSmiParameterException(metric, AmdSmiTemperatureMetric)
        g = self._gcd(h, "amdsmi_get_temp_metric")
        assert (sensor_type, metric) == (AmdSmiTemperatureType.HOTSPOT, AmdSmiTemperatureMetric.CURRENT)
        return g.hotspot_c

    def amdsmi_get_clock_info(self, h: _Handle, clock_type: AmdSmiClkType) -> dict[str, Any]:
        if not isinstance(clock_type, AmdSmiClkType):
            raise AmdSmiParameterException(clock_type, AmdSmiClkType)
        g = self._gcd(h, "amdsmi_get_clock_info")
        return {"clk": g.gfx_mhz, "min_clk": 500, "max_clk": 1700, "clk_locked": False, "clk_deep_sleep": "N/A"}

    def amdsmi_get_violation_status(self, h: _Handle) -> dict[str, Any]:
        g = self._gcd(h, "amdsmi_get_violation_status")
        if not g.mi300:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED)  # MI200 firmware has no violation status
        flags = ("active_prochot_thrm", "active_ppt_pwr", "active_socket_thrm", "active_vr_thrm", "active_hbm_thrm")
        return {"reference_timestamp": time.time_ns(), **{f: f in g.violations for f in flags}}


def mi250x_node(packages: int = 4, live: bool = False) -> FakeAmdSmi:
    """An HPE Cray EX235a (LUMI-G) node: four MI250X, eight GCDs, the even one of each pair the primary die.
    Package k draws 400 + 20 k W; accumulators start at distinct counts."""
    gcds = []
    for k in range(packages):
        for die in range(2):
            start = 10_000_000 * (k + 1) if die == 0 else 0
            gcds.append(FakeGcd(uuid=f"{k:02x}{die:02x}74a0-0000-1000-80e1-{2 * k + die:012x}", board_serial=f"PCB0{4711 + k:05d}",
                                primary=die == 0, power_w=400 + 20 * k, counts=start, lifetime_counts=start))
    return FakeAmdSmi(gcds, live=live)


def mi300x_node(count: int = 8) -> FakeAmdSmi:
    """An eight-MI300X node: one die per package, current_socket_power and violation status reported."""
    return FakeAmdSmi([FakeGcd(uuid=f"{i:02x}ff74b5-0000-1000-80e1-{i:012x}", board_serial=f"692251{i:06d}",
                               market_name="AMD Instinct MI300X", mi300=True, power_w=650 + 5 * i, cap_uw=750_000_000,
                               counts=5_000_000, lifetime_counts=5_000_000) for i in range(count)])


_default = mi250x_node(int(os.environ.get("AIFMON_FAKE_AMDSMI_GCDS", "8")) // 2, live=True)


def __getattr__(name: str) -> Any:
    """Module-level access (`tests.fake_amdsmi.amdsmi_init`) reaches the default instance, as with amdsmi."""
    return getattr(_default, name)
