"""Exact energy from cumulative counters, and energy from power samples where no counter exists.

Both work on flat NumPy arrays of samples: a stream code (one per physical meter: a GPU, a node, a RAPL
domain), the sample time in ms and the value. A stream may come from several store series (the same
GPU scraped by an HA pair of Prometheus servers), so the rules below never trust the
store's order and never count a sample twice:

- Samples are put in (stream, time) order; when they already are (the usual case), nothing is sorted.
- Duplicate samples (same stream, same time) count once. If their values differ, the largest is kept:
  a counter cannot be at two values at one instant, and the largest is the one that never makes the
  next increment look like a reset.
- A counter increment covers (previous sample, sample]. A drop is either a **wrap** (RAPL: the counter
  passed `max_energy_range` and restarted; increment = range - previous + value) or a **reset** (a
  driver reload: the counter restarted from zero; increment = value). With a wrap range given, a drop
  is a wrap when the wrapped increment is physically possible within the interval (at most
  `max_power_w` on average), otherwise a reset.
- Gaps are bridged by the counter: the increment across a gap is exact, whatever its length.
- Power samples (no counter) are integrated with the trapezoid rule; an interval longer than the
  caller's `max_gap_s` is still integrated (linear between its ends) but flagged as estimated.
- Nothing is extrapolated before a stream's first sample or after its last.
- An interval that straddles the range's start or end is split in proportion to time (for power:
  the interpolated power at the edge), so consecutive ranges add up exactly to the whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Intervals:
    """Per-interval results, clipped to the range; all arrays have one entry per interval that overlaps it."""

    stream: np.ndarray  # int64 stream code
    t_end_ms: np.ndarray  # int64, the interval's closing sample time, ms
    energy_j: np.ndarray  # float64, energy inside the range, J
    seconds: np.ndarray  # float64, duration inside the range, s
    interval_s: np.ndarray  # float64, the whole interval's duration, s
    resets: int = 0  # counter drops read as resets
    wraps: int = 0  # counter drops read as wraps
    duplicates: int = 0  # samples dropped as duplicates of another at the same stream and time


def _ordered(stream: np.ndarray, t_ms: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(stream, t, value) in (stream, time) order with duplicates removed; and how many were removed."""
    stream = np.asarray(stream, dtype=np.int64)
    t_ms = np.asarray(t_ms, dtype=np.int64)
    value = np.asarray(value, dtype=np.float64)
    if len(t_ms) == 0:
        return stream, t_ms, value, 0
    ds, dt = np.diff(stream), np.diff(t_ms)
    if not ((ds > 0) | ((ds == 0) & (dt > 0))).all():
        order = np.lexsort((value, t_ms, stream))  # value last: among duplicates the largest comes last
        stream, t_ms, value = stream[order], t_ms[order], value[order]
        ds, dt = np.diff(stream), np.diff(t_ms)
        last = np.append((ds != 0) | (dt != 0), True)  # the last of each (stream, time) run
        if not last.all():
            removed = int((~last).sum())
            return stream[last], t_ms[last], value[last], removed
    return stream, t_ms, value, 0


@dataclass(frozen=True)
class _Pairs:
    """Consecutive samples (previous, this) of one stream whose interval overlaps the range."""

    stream: np.ndarray
    prev_t: np.ndarray
    t: np.ndarray
    prev_v: np.ndarray
    v: np.ndarray
    lo: np.ndarray  # the interval's part inside the range: [lo, hi], ms
    hi: np.ndarray
    overlap: np.ndarray  # hi - lo, ms


def _pairs(stream: np.ndarray, t_ms: np.ndarray, value: np.ndarray, start_ms: int, end_ms: int) -> tuple[_Pairs, int]:
    """The ordered, de-duplicated samples as intervals (prev_t, t] overlapping [start_ms, end_ms]; and the
    number of duplicates dropped."""
    stream, t_ms, value, duplicates = _ordered(stream, t_ms, value)
    same = stream[1:] == stream[:-1]
    prev_t, t = t_ms[:-1], t_ms[1:]
    lo = np.maximum(prev_t, start_ms)
    hi = np.minimum(t, end_ms)
    overlap = np.clip(hi - lo, 0, None)
    keep = same & (overlap > 0)
    return _Pairs(stream[1:][keep], prev_t[keep], t[keep], value[:-1][keep], value[1:][keep], lo[keep], hi[keep],
                  overlap[keep]), duplicates


def counter_increments(stream: np.ndarray, t_ms: np.ndarray, value: np.ndarray, start_ms: int, end_ms: int,
                       wrap_j: float | None = None, max_power_w: float | None = None) -> Intervals:
    """Exact counter increments (J) per interval, clipped to [start_ms, end_ms] (rules: module docstring).

    `wrap_j`: the counter's wrap range in J (RAPL `max_energy_range_uj` / 1e6), or None for counters that
    only reset. `max_power_w`: the largest plausible average power of one stream, W, used to tell a wrap
    from a reset; None reads every drop as a wrap when `wrap_j` is given.
    """
    p, duplicates = _pairs(stream, t_ms, value, start_ms, end_ms)
    prev_t, t, prev_v, v, overlap = p.prev_t, p.t, p.prev_v, p.v, p.overlap
    span_ms = t - prev_t
    inc = v - prev_v
    drop = inc < 0
    wraps = np.zeros_like(drop)
    if wrap_j is not None and drop.any():
        wrapped = wrap_j - prev_v + v
        wraps = drop & (wrapped >= 0)
        if max_power_w is not None:
            wraps &= wrapped <= max_power_w * span_ms / 1000.0
        inc = np.where(wraps, wrapped, inc)
    resets = drop & ~wraps
    inc = np.where(resets, v, inc)  # a reset: the counter restarted from zero
    return Intervals(p.stream, t, inc * (overlap / span_ms), overlap / 1000.0, span_ms / 1000.0,
                     resets=int(resets.sum()), wraps=int(wraps.sum()), duplicates=duplicates)


def power_integral(stream: np.ndarray, t_ms: np.ndarray, watts: np.ndarray, start_ms: int, end_ms: int) -> Intervals:
    """Energy (J) per interval between power samples by the trapezoid rule, clipped to [start_ms, end_ms].

    At a range edge inside an interval the power is interpolated linearly, so the clipped parts of an
    interval add up to the whole. The caller flags intervals longer than its gap limit (`interval_s`).
    """
    p, duplicates = _pairs(stream, t_ms, watts, start_ms, end_ms)
    prev_t, t, p0, p1, lo, hi, overlap = p.prev_t, p.t, p.prev_v, p.v, p.lo, p.hi, p.overlap
    span_ms = (t - prev_t).astype(np.float64)
    slope = (p1 - p0) / span_ms
    p_lo = p0 + slope * (lo - prev_t)
    p_hi = p0 + slope * (hi - prev_t)
    return Intervals(p.stream, t, (p_lo + p_hi) / 2 * overlap / 1000.0, overlap / 1000.0, span_ms / 1000.0,
                     duplicates=duplicates)
