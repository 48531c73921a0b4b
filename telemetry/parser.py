"""Parsing whole expositions (Prometheus text and OpenMetrics) into columns, vectorised.

Each sample's series text (`name{labels}`) is kept as its key, so the collector resolves labels only
for series it has not seen before (`telemetry.series_index`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from telemetry.exposition import ExpositionError

_HASH, _SPACE, _CLOSE = ord("#"), ord(" "), ord("}")


@dataclass(frozen=True)
class Samples:
    """The samples of one exposition, as columns: series text, value, timestamp (ms; -1 where none)."""

    series: pa.StringArray
    values: np.ndarray
    t_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def parse_exposition(body: bytes, timestamp_unit: str = "ms") -> Samples:
    """Parse Prometheus text (timestamps in ms) or OpenMetrics text (`timestamp_unit="s"`) into columns.

    Vectorised: line, series and value boundaries are found with NumPy over the whole body, series
    texts become an Arrow string array through a string-view array over the body, and values are
    converted in one call. A large body is cut at line ends and its pieces parsed on all cores
    (NumPy and Arrow release the GIL).
    The series text is the line up to its value, e.g. `aif_gpu_power_watts{node="n1",gpu="0"}`; its
    labels are parsed later, once per new series (`parse_series`). Raises ExpositionError naming the
    first bad line.
    """
    if timestamp_unit not in ("ms", "s"):
        raise ValueError("timestamp_unit is 'ms' (Prometheus text) or 's' (OpenMetrics)")
    pieces = _pieces(body)
    if len(pieces) == 1:
        return _parse(body, timestamp_unit)
    parsed = []
    for (start, _), future in zip(pieces, [_POOL.submit(_parse, body[a:b], timestamp_unit) for a, b in pieces]):
        try:
            parsed.append(future.result())
        except ExpositionError as e:
            number, _, rest = str(e).removeprefix("line ").partition(":")
            before = body.count(b"\n", 0, start)
            raise ExpositionError(f"line {int(number) + before}:{rest}") from None
    return Samples(pa.concat_arrays([p.series for p in parsed]), np.concatenate([p.values for p in parsed]),
                   np.concatenate([p.t_ms for p in parsed]))


_PARALLEL_FROM_BYTES = 8 * 1024 * 1024
_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="parse")


def _pieces(body: bytes) -> list[tuple[int, int]]:
    """[start, end) byte ranges that cut `body` at line ends into one piece per core (one if it is small)."""
    n = min(os.cpu_count() or 1, max(1, len(body) // _PARALLEL_FROM_BYTES))
    cuts = [0]
    for k in range(1, n):
        cut = body.find(b"\n", len(body) * k // n) + 1
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(len(body))
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a] or [(0, len(body))]


def _parse(body: bytes, timestamp_unit: str) -> Samples:
    # Trailing newlines are empty lines (skipped); they end an unterminated last line and let every
    # field start read 12 bytes ahead without running off the buffer (see _strings).
    if len(body) >= 2**31 - 16:
        raise ExpositionError("an exposition of 2 GiB or more cannot be parsed in one piece (Arrow string offsets are 32-bit)")
    buf = np.frombuffer(body + b"\n" * 16, np.uint8)
    ends = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    first = buf[starts]
    data = (ends > starts) & (first != _HASH)
    line_no = np.flatnonzero(data) + 1
    starts, ends = starts[data], ends[data]
    if not len(starts):
        return Samples(pa.array([], pa.string()), np.zeros(0), np.zeros(0, np.int64))
    # Sentinels at both ends keep every lookup in bounds (-1: none before; len + 1: none after).
    spaces = np.concatenate(([-1], np.flatnonzero(buf == _SPACE), [len(buf) + 1]))
    braces = np.concatenate(([-1], np.flatnonzero(buf == _CLOSE)))
    # The series ends after the line's last '}' or, without labels, at its first space.
    brace = braces[np.searchsorted(braces, ends) - 1]
    series_end = np.where(brace >= starts, brace + 1, spaces[np.searchsorted(spaces, starts)])
    last_space = spaces[np.searchsorted(spaces, ends) - 1]
    has_ts = last_space > series_end
    value_end = np.where(has_ts, last_space, ends)
    bad = (series_end >= ends) | (series_end <= starts) | (value_end <= series_end + 1)
    bad[~bad] = buf[series_end[~bad]] != _SPACE
    if bad.any():
        _raise_at(body, starts, ends, line_no, int(np.argmax(bad)))
    try:
        values = _numbers(buf, series_end + 1, value_end)
        t_ms = np.full(len(starts), -1, dtype=np.int64)
        if has_ts.any():
            ts = _numbers(buf, last_space[has_ts] + 1, ends[has_ts])
            t_ms[has_ts] = np.round(ts * 1000) if timestamp_unit == "s" else ts
    except (pa.ArrowInvalid, ValueError):
        _raise_at(body, starts, ends, line_no, _first_unparsable(buf, series_end + 1, ends))
    return Samples(_strings(buf, starts, series_end), values, t_ms)


def _strings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.StringArray:
    """The byte ranges [starts, ends) of `buf` as one Arrow string array, without per-item Python.

    The ranges are first described as an Arrow string *view* array over `buf` (16 bytes per item,
    built with NumPy: length, then the bytes themselves when there are at most 12, else a 4-byte
    prefix, buffer 0 and the offset); Arrow's C++ cast then copies them into a plain string array.
    """
    n = len(starts)
    lengths = (ends - starts).astype(np.int32)
    head = np.lib.stride_tricks.sliding_window_view(buf, 12)[starts]  # 12 bytes from each start, in one copy
    head = np.where(np.arange(12) < lengths[:, None], head, 0).astype(np.uint8).view(np.int32)  # (n, 3)
    short = lengths <= 12
    views = np.empty((n, 4), np.int32)
    views[:, 0] = lengths
    views[:, 1] = head[:, 0]  # inline bytes 0-3, or the prefix of a longer string
    views[:, 2] = np.where(short, head[:, 1], 0)  # inline bytes 4-7, or buffer 0
    views[:, 3] = np.where(short, head[:, 2], starts)  # inline bytes 8-11, or the offset into the buffer
    array = pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views), pa.py_buffer(buf)])
    return array.cast(pa.string())


def _numbers(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The byte ranges as float64 (Arrow's C++ parser: accepts NaN, +Inf, -Inf and exponents)."""
    return _strings(buf, starts, ends).cast(pa.float64()).to_numpy(zero_copy_only=False)


def _first_unparsable(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> int:
    """Index of the first line whose value or timestamp is not a number (error path only)."""
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        fields = bytes(buf[a:b]).split(b" ")
        try:
            if not 1 <= len(fields) <= 2:
                raise ValueError
            [float(f) for f in fields]
        except ValueError:
            return i
    return 0


def _raise_at(body: bytes, starts: np.ndarray, ends: np.ndarray, line_no: np.ndarray, i: int) -> None:
    line = body[starts[i]:ends[i]].decode("utf-8", errors="replace")
    raise ExpositionError(f"line {line_no[i]}: expected 'name{{labels}} value [timestamp]', got {line[:120]!r}")
