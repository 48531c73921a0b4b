"""The polling engine every GPU library source shares (NVML, amdsmi): enumerate, poll, time-box, classify.

A source names its library's calls; this module owns what is the same for every vendor:
  - every library call is time-boxed (exporters/timebox.py): a GPU whose call hangs is reported down and
    skipped until the call comes back, while the other GPUs keep reporting;
  - errors are classified by the source into three kinds:
      "gone"        the library as a whole is unusable (not loaded, driver unloaded, uninitialised):
                    every GPU is down, the reason is logged once, initialisation is retried every `retry_s`;
      "unavailable" a field this GPU does not support (or has no permission for): left out, no error;
      "gpu"         this one GPU failed (off the bus, needs a reset): its `aif_gpu_up` is 0, it is looked up
                    again by UUID every `retry_s`;
  - GPUs are keyed by UUID, never by index (indices can change across a driver reload);
  - energy counters are kept as monotonic totals in integer counter units (exact), and a GPU without an
    energy counter gets its power integrated over polls.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from aifmon.exporters.timebox import CallTimeout, TimeBox

log = logging.getLogger(__name__)

ErrorKind = Literal["gone", "unavailable", "gpu"]


class FieldUnavailable(Exception):
    """A reader found no value (amdsmi's "N/A", a value the library marks invalid): the field is left out."""


@dataclass
class Gpu:
    """What the exporter knows of one physical GPU (or one GCD of a multi-die package); fields are None
    while unknown or not supported."""

    uuid: str
    index: int
    model: str
    handle: Any = None
    package: str | None = None  # physical package shared by several dies (MI250X); None: the GPU is its own package
    up: bool = False
    busy: bool = False  # a call on this GPU is stuck in an abandoned worker thread
    retry_at: float = 0.0  # monotonic s: while down, when to look the GPU up again
    power_w: float | None = None
    module_power_w: float | None = None  # GH200: the whole superchip module (GPU + CPU + memory), W
    energy: int | float | None = None  # monotonic total in counter units; exported as energy * energy_unit_j J
    energy_unit_j: float = 1e-3  # J per counter unit (NVML: mJ; amdsmi: counter_resolution µJ)
    last_raw: int | None = None
    integrated: bool = False  # no energy counter: energy is power integrated over polls (in counter units)
    last_power: tuple[float, float] | None = None  # (monotonic s, W) of the previous sample, for integration
    limit_w: float | None = None
    utilization_ratio: float | None = None
    memory_used_bytes: float | None = None
    temperature_c: float | None = None
    sm_clock_hz: float | None = None
    throttled: frozenset[str] | None = None  # the schema's THROTTLE_REASONS that hold the clocks down now
    unsupported: set[str] = field(default_factory=set)
    mig_uuids: tuple[str, ...] = ()

    @property
    def energy_j(self) -> float | None:
        """The monotonic energy total, J."""
        return None if self.energy is None else self.energy * self.energy_unit_j

    def clear_gauges(self) -> None:
        """Drop every reading that describes 'now'; counters keep their last value."""
        self.power_w = self.module_power_w = self.limit_w = self.utilization_ratio = self.memory_used_bytes = None
        self.temperature_c = self.sm_clock_hz = None
        self.throttled = None
        self.last_power = None  # never integrate across a gap: the power in between is unknown


def add_energy_reading(gpu: Gpu, raw: int) -> None:
    """Fold one reading of a since-driver-load counter into the GPU's monotonic total; a reading below the
    previous one means the counter restarted (driver reload, GPU reset) and has counted from 0 since."""
    if gpu.energy is None:
        gpu.energy = raw  # first reading: the energy since driver load, so a restarted exporter continues
    elif gpu.last_raw is None or raw >= gpu.last_raw:
        gpu.energy += raw - (gpu.last_raw if gpu.last_raw is not None else raw)
    else:
        gpu.energy += raw
    gpu.last_raw = raw


def integrate_power(gpu: Gpu, now: float) -> None:
    """No energy counter on this GPU: integrate its power (trapezoids between polls) into `energy`."""
    if gpu.power_w is None:
        return
    gpu.integrated = True
    if gpu.energy is None:
        gpu.energy = 0.0
    if gpu.last_power is not None:
        t0, p0 = gpu.last_power
        gpu.energy += (p0 + gpu.power_w) / 2 * (now - t0) / gpu.energy_unit_j
    gpu.last_power = (now, gpu.power_w)


@dataclass(frozen=True)
class Found:
    """One GPU as enumeration found it."""

    index: int
    handle: Any
    uuid: str
    model: str
    package: str | None = None
    no_meter: frozenset[str] = frozenset()  # fields this GPU never reports (an MI250X's secondary die: power, energy)


class GpuPoller(ABC):
    """Physical GPUs as one library reports them; `poll()` reads them, `gpus()` is the latest state.

    Subclasses name the library's calls (`_init_library`, `_enumerate`, `_lookup`, `_readers`), classify its
    errors (`_kind`, `describe`) and turn values into readings (`_apply`). Call `poll()` from one thread only.
    """

    name = "gpu"  # the time box's and aif_exporter_errors_total's source label
    title = "GPU library"  # the library's name in log messages
    fast_fields: tuple[str, ...] = ()
    slow_fields: tuple[str, ...] = ()
    help_overrides: ClassVar[Mapping[str, str]] = {}  # metric name → HELP text where the schema's (written for NVML) does not hold

    def __init__(self, lib: Any, call_timeout_s: float, slow_every_s: float, retry_s: float, clock: Callable[[], float]):
        self.lib = lib
        self.box = TimeBox(self.name, call_timeout_s)
        self.slow_every_s = slow_every_s
        self.retry_s = retry_s
        self.clock = clock
        self.errors = 0  # for aif_exporter_errors_total{source=<name>}
        self.initialised = False
        self.reason: str | None = None  # why the library is unusable, while it is
        self._gpus: dict[str, Gpu] = {}
        self._published: tuple[Gpu, ...] = ()
        self._last_init_attempt: float | None = None
        self._last_slow: float | None = None
        self._logged: set[tuple[str, str]] = set()

    # -- what a vendor source provides --------------------------------------------------------
    library_errors: tuple[type[BaseException], ...] = ()  # every exception class the library raises

    @abstractmethod
    def _init_library(self) -> None: ...

    @abstractmethod
    def _shutdown_library(self) -> None: ...

    @abstractmethod
    def _enumerate(self) -> list[Found]: ...

    @abstractmethod
    def _lookup(self, uuid: str) -> tuple[Any, int]:
        """(handle, index) of the GPU with this UUID, or the library's error."""

    @abstractmethod
    def _readers(self) -> dict[str, Callable[[Any], Any]]:
        """Field name → a function of the GPU handle returning the field's raw value."""

    @abstractmethod
    def _kind(self, e: BaseException) -> ErrorKind: ...

    @abstractmethod
    def _apply(self, gpu: Gpu, values: dict[str, Any], now: float) -> None:
        """Turn the raw values read (only the fields that answered) into the GPU's readings."""

    def describe(self, e: BaseException) -> str:
        return f"{type(e).__name__}: {e}"

    def _after_init(self) -> None:  # noqa: B027  (an optional hook: nothing by default)
        """Runs after every successful (re)initialisation."""

    def _after_revive(self, gpu: Gpu) -> None:  # noqa: B027  (an optional hook: nothing by default)
        """Runs when a GPU that was down answers again."""

    # -- state for the renderer -------------------------------------------------------------
    def gpus(self) -> tuple[Gpu, ...]:
        """Copies of every GPU seen since start (lost ones stay, with up False), ordered by index."""
        return self._published

    def uuid_index(self) -> dict[str, int]:
        """GPU and MIG-instance UUID → index of the physical GPU."""
        out: dict[str, int] = {}
        for g in self._published:
            out[g.uuid] = g.index
            for m in g.mig_uuids:
                out[m] = g.index
        return out

    def xid_errors(self) -> dict[str, int]:
        """XID error count per GPU UUID; only NVML delivers them."""
        return {}

    # -- polling -----------------------------------------------------------------------------
    def poll(self) -> None:
        """One tick: the fast fields always, the slow ones every `slow_every_s`."""
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
                    self._poll_gpu(gpu, self.fast_fields + self.slow_fields if slow else self.fast_fields, now)
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
            with contextlib.suppress(*self.library_errors, CallTimeout):  # the old session may be gone: nothing to release
                self.box.call(self._shutdown_library)
        try:
            self.box.call(self._init_library)
            found: list[Found] = self.box.call(self._enumerate)
        except self.library_errors + (CallTimeout,) as e:
            self._library_gone(e)
            return
        present = set()
        for f in found:
            gpu = self._gpus.get(f.uuid)
            if gpu is None:
                gpu = self._gpus[f.uuid] = Gpu(uuid=f.uuid, index=f.index, model=f.model)
            elif gpu.busy:
                continue  # its stuck call still holds it; try again once the call returns
            gpu.index, gpu.model, gpu.handle, gpu.package, gpu.up = f.index, f.model, f.handle, f.package, True
            gpu.unsupported.clear()
            gpu.unsupported.update(f.no_meter)
            present.add(f.uuid)
        for uuid, gpu in self._gpus.items():
            if uuid not in present and gpu.up:
                self._gpu_down(gpu, f"no longer enumerated by {self.title}")
        if self.reason is not None:
            log.info("%s is back: %d GPU(s)", self.title, len(present))
        self.initialised, self.reason = True, None
        self._last_slow = None
        self._after_init()

    def _revive(self, gpu: Gpu, now: float) -> None:
        """Look a down GPU up again by UUID (a reset GPU gets a new handle, maybe a new index)."""
        gpu.retry_at = now + self.retry_s

        def came_back() -> None:
            gpu.busy = False

        try:
            gpu.handle, gpu.index = self.box.call(self._lookup, gpu.uuid, on_late=came_back)
        except CallTimeout as e:
            gpu.busy = True
            self._gpu_down(gpu, self.describe(e))
            return
        except self.library_errors as e:
            if self._kind(e) == "gone":
                self._library_gone(e)
            else:
                self.errors += 1  # still gone; it was logged when it went down
            return
        gpu.up = True
        self._poll_gpu(gpu, self.fast_fields + self.slow_fields, now)
        if gpu.up:
            log.info("GPU %d (%s) is back", gpu.index, gpu.uuid)
            self._after_revive(gpu)

    def _library_gone(self, e: BaseException) -> None:
        reason = self.describe(e)
        self.errors += 1
        if reason != self.reason:  # logged once per distinct reason, not once per retry
            log.warning("%s unavailable, GPU metrics are not collected (retrying every %g s): %s", self.title, self.retry_s, reason)
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

    def _fetch(self, handle: Any, fields: tuple[str, ...]) -> dict[str, Any]:
        """Read fields of one GPU in one time-boxed call: each value, or the exception it raised."""
        readers = self._readers()
        out: dict[str, Any] = {}
        for name in fields:
            try:
                out[name] = readers[name](handle)
            except self.library_errors + (FieldUnavailable,) as e:
                out[name] = e
        return out

    def _poll_gpu(self, gpu: Gpu, fields: tuple[str, ...], now: float) -> None:
        wanted = tuple(f for f in fields if f not in gpu.unsupported)

        def came_back() -> None:
            gpu.busy = False  # the stuck call returned; the GPU is polled again from the next tick

        try:
            values = self.box.call(self._fetch, gpu.handle, wanted, on_late=came_back)
        except CallTimeout as e:
            gpu.busy = True
            self._gpu_down(gpu, self.describe(e))
            return
        failed = [v for v in values.values() if isinstance(v, BaseException) and not isinstance(v, FieldUnavailable)
                  and self._kind(v) != "unavailable"]
        gone = next((v for v in failed if self._kind(v) == "gone"), None)
        if gone is not None:
            self._library_gone(gone)
            return
        if failed:
            self._gpu_down(gpu, self.describe(failed[0]))
            return
        for name, v in list(values.items()):
            if isinstance(v, BaseException):
                del values[name]
                gpu.unsupported.add(name)
                if (gpu.uuid, name) not in self._logged:
                    self._logged.add((gpu.uuid, name))
                    log.info("GPU %d (%s): %s %s; left out", gpu.index, gpu.uuid, name,
                             "has no value" if isinstance(v, FieldUnavailable) else self.describe(v))
        self._apply(gpu, values, now)
        if "energy" in gpu.unsupported and "power" not in gpu.unsupported:
            integrate_power(gpu, now)

    def close(self) -> None:
        self.box.close()
