"""CPU package and DRAM energy from RAPL through the powercap sysfs tree (Intel and AMD alike).

Layout (`/sys/class/powercap`): `intel-rapl:N` is package N (`name` = `package-N`), its child
`intel-rapl:N:M` with `name` = `dram` is that socket's DRAM; other zones (core, uncore, psys and
the duplicate `intel-rapl-mmio:*`) are not read. `energy_uj` is a counter in µJ that wraps to 0
after `max_energy_range_uj`; node_exporter ignores that and sees a wrap as a reset.

Wrap correction: a reading below the previous one has wrapped once, so the increment is
`max_energy_range_uj + 1 - previous + reading`. (The kernel's range is 2^32 - 1 counter units, so the
true period is one unit, about 61 µJ, more than the range + 1 µJ used here: under 1e-9 of the energy
of a wrap.) A poll interval longer than a wrap period (minutes at full load) would miss wraps.

Since Linux 5.10 (CVE-2020-8694) `energy_uj` is readable by root only; without permission the CPU
energy metric is left out with one clear log message, and the exporter carries on.
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

POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE = re.compile(r"^package-(\d+)$")


@dataclass
class RaplZone(EnergyCounter):
    """One RAPL counter: a socket's package or DRAM domain; its total is wrap-corrected."""

    socket: int
    domain: str  # "package" | "dram"
    path: Path
    max_range_uj: int


def discover_zones(root: Path = POWERCAP_ROOT) -> list[RaplZone]:
    """Package and DRAM zones under `root`, sorted by (socket, domain); [] where there is no RAPL."""
    zones: list[RaplZone] = []
    for pkg in sorted(root.glob("intel-rapl:*")):
        if pkg.name.count(":") != 1:
            continue  # subzones are found under their package
        try:
            m = _PACKAGE.match((pkg / "name").read_text().strip())
            if not m:
                continue  # psys (platform) zone
            socket = int(m.group(1))
            zones.append(RaplZone(socket, "package", pkg, int((pkg / "max_energy_range_uj").read_text())))
            for sub in sorted(pkg.glob(f"{pkg.name}:*")):
                if (sub / "name").read_text().strip() == "dram":
                    zones.append(RaplZone(socket, "dram", sub, int((sub / "max_energy_range_uj").read_text())))
        except (OSError, ValueError) as e:
            log.warning("RAPL zone %s unreadable, skipped: %s", pkg, e)
    return sorted(zones, key=lambda z: (z.socket, z.domain != "package"))


class RaplSource:
    """Polls every RAPL package/DRAM counter; `zones()` is the latest state."""

    def __init__(self, root: Path = POWERCAP_ROOT, clock: Callable[[], float] = time.monotonic):
        self.root = root
        self.clock = clock
        self.errors = 0  # for aif_exporter_errors_total{source="rapl"}
        self.disabled_reason: str | None = None
        self._zones = discover_zones(root)
        if not self._zones:
            log.info("no RAPL package zones under %s; CPU energy is not exported", root)

    def zones(self) -> list[RaplZone]:
        """Zones with at least one reading (a zone never read is not exported)."""
        return [z for z in self._zones if z.energy_uj is not None] if self.disabled_reason is None else []

    def poll(self) -> None:
        if self.disabled_reason is not None:
            return
        now = self.clock()
        for z in self._zones:
            try:
                raw = int((z.path / "energy_uj").read_text())
            except PermissionError:
                self.errors += 1
                self.disabled_reason = "permission denied"
                log.error("cannot read %s: permission denied. RAPL energy counters are readable by root only since "
                          "Linux 5.10 (CVE-2020-8694); aif_cpu_energy_joules_total is left out. Run the exporter as "
                          "root, or grant it read access to intel-rapl:*/energy_uj (e.g. a udev rule or a systemd "
                          "ExecStartPre chmod), then restart it.", z.path / "energy_uj")
                return
            except (OSError, ValueError) as e:
                self.errors += 1
                log.debug("RAPL %s: %s", z.path, e)
                continue
            z.add_reading(raw, now, z.max_range_uj)

    def power_w(self) -> float | None:
        """CPU package + DRAM power over the last poll interval, W; None before two readings."""
        readings = [z.power_w for z in self.zones() if z.power_w is not None]
        return sum(readings) if readings else None
