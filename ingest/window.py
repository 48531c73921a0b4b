"""Which sample timestamps ingest accepts: a window around now for the collector, a floor and a ceiling for imports.

A sample that carries its own timestamp is refused when the timestamp is no time (NaN, +-Inf, or so large it is
no date: 1e30), older than the window (a BMC whose clock reset to 1970; Prometheus likewise refuses samples older
than its head block as out of bounds) or ahead of it (a clock set years ahead). Samples without a timestamp get
their scrape's start time and are never refused. The collector counts refused samples per target and reason and
keeps the other samples of the scrape; `aifmon store import` refuses the whole file, naming the line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: the CLI reads the defaults below at start-up, without NumPy
    import numpy as np

MAX_SAMPLE_AGE_S = 3600.0
"""Default oldest sample time a scrape may carry, s before its start (Prometheus' head block takes about 1 h back)."""
MAX_SAMPLE_AHEAD_S = 600.0
"""Default newest sample time a scrape or an import may carry, s after now (clocks that drift, not clocks that are wrong)."""
EARLIEST_MS = 946_684_800_000
"""No sample before 2000-01-01T00:00:00Z is taken, an import's history included (ms since the Unix epoch)."""

NO_TIMESTAMP = -1
"""`Samples.t_ms` of a sample without a timestamp (the parser's)."""
NOT_A_TIME = -(2**63)
"""`Samples.t_ms` of a timestamp that is no time: NaN, +-Inf, beyond +-2**62 ms, or exactly -1 ms (the parser's)."""

REASONS = {
    "not_a_time": "is not a time (NaN, infinite or out of range)",
    "too_old": "is older than the window",
    "too_new": "is ahead of the window",
}
"""Why a sample is refused: the `reason` label of `scrape_samples_refused_total`, and its explanation."""


@dataclass(frozen=True)
class SampleWindow:
    """Sample times accepted: from `max_age_s` before now (None: any age; never before EARLIEST_MS) to `max_ahead_s`
    after now, seconds."""

    max_age_s: float | None = MAX_SAMPLE_AGE_S
    max_ahead_s: float = MAX_SAMPLE_AHEAD_S

    def __post_init__(self) -> None:
        if (self.max_age_s is not None and not self.max_age_s > 0) or not self.max_ahead_s >= 0:
            raise ValueError(f"sample window: the age limit must be positive and the lead limit 0 or more "
                             f"(got {self.max_age_s} s and {self.max_ahead_s} s)")

    def bounds(self, now_ms: int) -> tuple[int, int]:
        """The oldest and newest sample time accepted at `now_ms`, ms since the Unix epoch."""
        oldest = EARLIEST_MS if self.max_age_s is None else max(EARLIEST_MS, now_ms - int(self.max_age_s * 1000))
        return oldest, now_ms + int(self.max_ahead_s * 1000)

    def refused(self, t_ms: np.ndarray, now_ms: int) -> tuple[np.ndarray | None, Counter[str]]:
        """(which samples are refused, as a bool array, or None when none is; how many per reason) of the sample
        times `t_ms` (ms since the Unix epoch, as the parser gives them) at `now_ms`."""
        oldest, newest = self.bounds(now_ms)
        # One pass in the usual case, where every timestamp is absent or inside the window.
        outside = (t_ms != NO_TIMESTAMP) & ((t_ms < oldest) | (t_ms > newest))
        if not outside.any():
            return None, Counter()
        not_a_time = t_ms == NOT_A_TIME
        too_new = t_ms > newest
        counts = Counter({"not_a_time": int(not_a_time.sum()), "too_new": int(too_new.sum()),
                          "too_old": int(outside.sum() - not_a_time.sum() - too_new.sum())})
        return outside, +counts  # unary plus drops the reasons counted 0

    def reason(self, t_ms: int, now_ms: int) -> str:
        """Why sample time `t_ms` (ms, outside the window at `now_ms`) is refused: a key of REASONS."""
        return "not_a_time" if t_ms == NOT_A_TIME else "too_new" if t_ms > self.bounds(now_ms)[1] else "too_old"

    def explain(self, reason: str, now_ms: int) -> str:
        """Why a sample of `reason` was refused, with the window's bounds."""
        import datetime

        def iso(ms: int) -> str:
            return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="seconds")

        return f"{REASONS[reason]} ({' to '.join(map(iso, self.bounds(now_ms)))})"


SCRAPE_WINDOW = SampleWindow()
"""The collector's default window: MAX_SAMPLE_AGE_S back, MAX_SAMPLE_AHEAD_S ahead."""
IMPORT_WINDOW = SampleWindow(max_age_s=None)
"""`store import`'s default: history of any age since EARLIEST_MS, nothing beyond MAX_SAMPLE_AHEAD_S ahead."""
