"""A µJ energy counter read from sysfs (RAPL `energy_uj`, hwmon `energy*_input`), kept as a running total.

The total starts at the first reading (as NVML energy does) and then grows by each increment; the power
over the last interval feeds the node power estimate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class EnergyCounter:
    energy_uj: int | None = None  # running total, µJ (exported as J)
    last_raw_uj: int | None = None
    power_w: float | None = None  # over the last two readings, W
    last_t: float | None = None

    def add_reading(self, raw_uj: int, now: float, max_range_uj: int | None = None) -> None:
        """Take a reading at `now` (s). A reading below the previous one has wrapped once when the
        counter's `max_range_uj` is known (RAPL), else restarted from zero (a reset)."""
        if self.last_raw_uj is None:
            self.energy_uj = raw_uj
        else:
            if raw_uj >= self.last_raw_uj:
                inc = raw_uj - self.last_raw_uj
            else:
                inc = raw_uj if max_range_uj is None else max_range_uj + 1 - self.last_raw_uj + raw_uj
            self.energy_uj = (self.energy_uj or 0) + inc
            if self.last_t is not None and now > self.last_t:
                self.power_w = inc / 1e6 / (now - self.last_t)
        self.last_raw_uj, self.last_t = raw_uj, now
