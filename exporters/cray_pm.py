"""HPE Cray EX node power and energy from `/sys/cray/pm_counters/` (the blade controller's meters, in-band).

Files (HPE "User access to compute node power data"; GEOPM's CNL IOGroup, Slurm's pm_counters plugin):
  power, energy                  the whole node (accelerators included): `<W> W <µs> us`, `<J> J <µs> us`
  cpu_power/_energy, cpuN_...    the CPU domain, or socket N where the blade meters sockets apart
  memory_power/_energy           the memory domain
  accelN_power/_energy           accelerator N (on an EX235a, one MI250X package of two GCDs)
  power_cap                      `<W> W`; 0 means uncapped
  freshness                      a counter the controller advances at every update of the set
  startup                        changes when the controller restarts its counters (they count again from 0)
  generation                     changes when the power-management configuration changes (a new power cap)
  raw_scan_hz, version           the update rate and the interface version (not exported)
Energies are whole joules, so the totals here are integers and exact.

A read is one consistent set: `freshness` is read before and after the other files, and a set read while
the controller updated it (the two differ) is read again (three tries, then the poll is skipped and
counted as an error). `freshness` unchanged since the last poll means no new data: the poll is skipped,
so a stale set is never taken for a second reading of the same second.

Resets: a changed `startup` restarts every counter: its reading is all new energy. A counter below its
last reading restarted as well (a blade controller reset the file did not announce). A changed
`generation` alone is logged and changes nothing else: a new power cap does not restart the counters,
and taking it for a restart would add a node's whole energy since boot a second time.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aifmon.exporters.sysfs_energy import EnergyCounter

log = logging.getLogger(__name__)

PM_ROOT = Path("/sys/cray/pm_counters")
_METER = re.compile(r"^(?:(?P<component>cpu\d*|memory|accel\d*)_)?(?P<kind>power|energy)$")
READ_TRIES = 3


@dataclass
class PmEnergy(EnergyCounter):
    """One pm_counters energy file (`component` "node" for the node total), kept monotonic in µJ."""

    component: str

    @property
    def energy_j(self) -> float:
        """The monotonic total, J (0 before the first reading)."""
        return (self.energy_uj or 0) / 1e6


def _first_int(path: Path) -> int:
    """The leading integer of a pm_counters file (`123 W 1700000000123456 us` → 123)."""
    return int(path.read_text().split()[0])


class CrayPmSource:
    """Finds the meters once; `poll()` reads a consistent, fresh set."""

    def __init__(self, root: Path = PM_ROOT, clock: Callable[[], float] = time.monotonic):
        self.root = root
        self.clock = clock
        self.errors = 0  # for aif_exporter_errors_total{source="cray_pm"}
        self.stale_reads = 0  # polls that found no new data (freshness unchanged)
        self.present = (root / "freshness").is_file()
        self.power_w: dict[str, float] = {}  # component ("node", "cpu0", "memory", "accel0", ...) → W, latest set
        self.power_cap_w: float | None = None
        self._energy: dict[str, PmEnergy] = {}
        self._power_files: dict[str, Path] = {}
        self._energy_files: dict[str, Path] = {}
        self._cap_file: Path | None = None  # found once: a blade has the file or not; no stat per poll
        self._freshness: int | None = None
        self._startup: int | None = None
        self._generation: int | None = None
        if not self.present:
            return
        if (root / "power_cap").is_file():
            self._cap_file = root / "power_cap"
        for f in sorted(root.iterdir()):
            m = _METER.match(f.name)
            if m:
                files = self._power_files if m["kind"] == "power" else self._energy_files
                files[m["component"] or "node"] = f

    def energies(self) -> list[PmEnergy]:
        """Counters with at least one reading, node first."""
        return sorted((e for e in self._energy.values() if e.energy_uj is not None), key=lambda e: (e.component != "node", e.component))

    def poll(self) -> None:
        if not self.present:
            return
        try:
            read = self._read_set()
        except (OSError, ValueError, IndexError) as e:
            self.errors += 1
            log.debug("pm_counters %s: %s", self.root, e)
            return
        if read is None:
            return
        freshness, startup, generation, powers, energies, cap = read
        now = self.clock()
        restarted = self._startup is not None and startup != self._startup
        if restarted:
            log.info("pm_counters: the controller restarted (startup %d → %d); its counters count from 0 again", self._startup, startup)
        if self._generation is not None and generation != self._generation:
            log.info("pm_counters: generation %d → %d (power management reconfigured)", self._generation, generation)
        for component, joules in energies.items():
            counter = self._energy.setdefault(component, PmEnergy(component=component))
            if restarted and counter.last_raw_uj is not None:
                counter.last_raw_uj = 0  # the whole reading is energy since the restart
            counter.add_reading(joules * 1_000_000, now)
        self.power_w = {c: float(w) for c, w in powers.items()}
        self.power_cap_w = float(cap) if cap else None
        self._freshness, self._startup, self._generation = freshness, startup, generation

    def _read_set(self) -> tuple[int, int, int, dict[str, int], dict[str, int], int | None] | None:
        """One consistent set, or None when there is no new data or the controller kept updating it."""
        fresh_path = self.root / "freshness"
        for _ in range(READ_TRIES):
            before = _first_int(fresh_path)
            if before == self._freshness:
                self.stale_reads += 1
                return None
            startup, generation = _first_int(self.root / "startup"), _first_int(self.root / "generation")
            powers = {c: _first_int(p) for c, p in self._power_files.items()}
            energies = {c: _first_int(p) for c, p in self._energy_files.items()}
            cap = _first_int(self._cap_file) if self._cap_file is not None else None
            if _first_int(fresh_path) == before:
                return before, startup, generation, powers, energies, cap
        self.errors += 1
        log.debug("pm_counters changed during %d reads in a row; poll skipped", READ_TRIES)
        return None
