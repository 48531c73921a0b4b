"""hwmon power and energy sensors (`/sys/class/hwmon/hwmon*`), where the platform has them.

Two kinds are used, both by the hwmon sysfs ABI (`powerN_input` µW, `energyN_input` µJ, `*_label`):
  - the ACPI power meter (`name` = `power_meter`, driver acpi_power_meter): the platform's own
    measurement of node input power → `aif_node_power_watts{source="hwmon"}` when no BMC is configured;
  - per-socket CPU energy counters labelled `Esocket<N>` (driver amd_energy) → the package energy of
    sockets RAPL does not cover. The driver accumulates them in 64 bits; a drop means the driver was
    reloaded and is treated as a restart from 0.
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

HWMON_ROOT = Path("/sys/class/hwmon")
_SOCKET = re.compile(r"^Esocket(\d+)$")


@dataclass
class SocketEnergy(EnergyCounter):
    """One amd_energy `Esocket<N>` counter (it restarts from zero, it does not wrap)."""

    socket: int
    path: Path


def _read(path: Path) -> str:
    return path.read_text().strip()


class HwmonSource:
    """Finds the sensors once; `poll()` reads them."""

    def __init__(self, root: Path = HWMON_ROOT, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.errors = 0  # for aif_exporter_errors_total{source="hwmon"}
        self.meter_path: Path | None = None
        self.node_power_w: float | None = None
        self.sockets: list[SocketEnergy] = []
        for chip in sorted(root.glob("hwmon*")):
            try:
                name = _read(chip / "name")
                if name == "power_meter" and self.meter_path is None and (chip / "power1_input").exists():
                    self.meter_path = chip / "power1_input"
                for label in sorted(chip.glob("energy*_label")):
                    m = _SOCKET.match(_read(label))
                    if m:
                        self.sockets.append(SocketEnergy(int(m.group(1)), chip / label.name.replace("_label", "_input")))
            except OSError as e:
                log.debug("hwmon %s skipped: %s", chip, e)

    def poll(self) -> None:
        now = self.clock()
        if self.meter_path is not None:
            try:
                self.node_power_w = int(_read(self.meter_path)) / 1e6
            except (OSError, ValueError) as e:
                self.errors += 1
                self.node_power_w = None
                log.debug("hwmon power meter: %s", e)
        for s in self.sockets:
            try:
                raw = int(_read(s.path))
            except (OSError, ValueError) as e:
                self.errors += 1
                log.debug("hwmon %s: %s", s.path, e)
                continue
            s.add_reading(raw, now)
