"""Parsing whole expositions (Prometheus text and OpenMetrics) into columns, in C.

Each sample's series text (`name{labels}`) is kept as its key, so the collector resolves labels only
for series it has not seen before (`aifmon.ingest.series_index`).

The byte scanning is C (`_scan.c`, built at install, so nothing is compiled at run time): each line is found
with libc's memchr and read backwards from its end, so only the short value and timestamp fields are looked
at byte by byte, and their numbers are converted on the spot where that is exact (Clinger's fast path: at most 2**53 for the
digits and a power of ten of at most 22, so one IEEE multiplication or division gives the correctly
rounded double). Other numbers (17 significant digits, NaN, +Inf, long exponents) go to Arrow's C++
parser. Series texts stay byte ranges of the body until asked for, then become an Arrow string
array through a string-view array over the body, without per-line Python.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from aifmon.ingest.window import NO_TIMESTAMP, NOT_A_TIME
from aifmon.telemetry.exposition import ExpositionError

try:
    from aifmon.ingest import _scan
except ImportError as e:  # the install skips an extension it cannot build (setup.py: a node agent needs none)
    raise ImportError("aifmon's exposition parser (ingest/_scan.c) was not built with this install: install a C compiler and "
                      "the Python headers (Debian: gcc python3-dev), then reinstall aifmon[site]") from e


@dataclass(frozen=True)
class Samples:
    """The samples of one exposition, as columns: value, timestamp (ms; NO_TIMESTAMP (-1) where none, NOT_A_TIME where
    it is no time, see `aifmon.ingest.window`), and each sample's
    series text as a byte range [series_start, series_end) of `body` and a 128-bit hash of it. The texts become
    strings only when asked for (`series`, `series_of`): a scrape whose series are those of the last one never needs
    them (its hashes say so)."""

    body: bytes
    series_start: np.ndarray
    series_end: np.ndarray
    values: np.ndarray
    t_ms: np.ndarray
    hashes: np.ndarray
    """Per sample, a 128-bit hash of its series text: two uint64 columns (`series_hashes`)."""

    def __len__(self) -> int:
        return len(self.values)

    @property
    def series(self) -> pa.StringArray:
        """Every sample's series text, e.g. `aif_gpu_power_watts{node="n1",gpu="0"}`: built on each use, not kept (a
        collector keeps the last scrape's Samples, and the texts would double its memory)."""
        return _strings(np.frombuffer(self.body, np.uint8), self.series_start, self.series_end)

    def series_of(self, rows: np.ndarray) -> pa.StringArray:
        """The series texts of the samples at `rows` (indices)."""
        return _strings(np.frombuffer(self.body, np.uint8), self.series_start[rows], self.series_end[rows])


def parse_exposition(body: bytes, timestamp_unit: str = "ms") -> Samples:
    """Parse Prometheus text (timestamps in ms) or OpenMetrics text (`timestamp_unit="s"`) into columns.

    The series text is the line up to its value, e.g. `aif_gpu_power_watts{node="n1",gpu="0"}`: it
    ends after the line's last `}`, or without labels at its first space. Its labels are parsed
    later, once per new series (`parse_series`). A large body is scanned in pieces cut at line ends,
    one per core (the C scan releases the GIL). Raises ExpositionError naming the first bad line.
    """
    _check_unit(timestamp_unit)
    return _parse(body, len(body), 0, timestamp_unit)


def parse_stream(chunks: Iterable[bytes], timestamp_unit: str = "ms") -> Iterator[Samples]:
    """`parse_exposition` of an exposition that arrives in chunks (a scrape's reads), a run of whole lines at a time:
    each Samples holds the complete lines of one chunk and the line the chunk before it ended inside, so what is held
    is a chunk, not the whole body. Line numbers in errors count from the exposition's start."""
    _check_unit(timestamp_unit)
    lines = 0
    for data, end in line_runs(chunks):
        yield _parse(data, end, lines, timestamp_unit)
        lines += data.count(b"\n", 0, end)


def line_runs(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, int]]:
    """The chunks of a text regrouped at line ends: (data, end), where data[:end] is the next run of whole lines (the
    last one may lack its newline) and data[end:] is carried into the next run. A chunk is copied only to join the
    line that straddles it: the run is a range of `data`, not a slice."""
    data = b""
    for chunk in chunks:
        data = data + chunk if data else chunk
        end = data.rfind(b"\n") + 1
        if end:
            yield data, end
            data = data[end:]
    if data:
        yield data, len(data)


def _check_unit(timestamp_unit: str) -> None:
    if timestamp_unit not in ("ms", "s"):
        raise ValueError("timestamp_unit is 'ms' (Prometheus text) or 's' (OpenMetrics)")


def _parse(body: bytes, hi: int, lines_before: int, timestamp_unit: str) -> Samples:
    """The lines of body[:hi], which `lines_before` lines precede (see `parse_exposition`)."""
    if hi >= 2**31:
        raise ExpositionError("an exposition of 2 GiB or more cannot be parsed in one piece (Arrow string offsets are 32-bit)")
    buf = np.frombuffer(body, np.uint8)
    pieces = _pieces(body, hi, lines_before)
    scans = [_scan_piece(body, *pieces[0])] if len(pieces) == 1 else list(_POOL.map(lambda piece: _scan_piece(body, *piece), pieces))
    for lines in scans:
        if lines.bad >= 0:
            _raise_at(body, lines.start[lines.bad], lines.end[lines.bad], lines.line_no[lines.bad])
    start, series_end, value_end, end, line_no, value, ts, hashes = (
        np.concatenate([getattr(s, f)[:s.n] for s in scans]) if len(scans) > 1 else getattr(scans[0], f)[:scans[0].n]
        for f in _Lines._fields[2:])
    has_ts = value_end < end
    try:
        slow = np.flatnonzero(np.isnan(value))  # not exact on the fast path, or NaN itself: Arrow decides
        if len(slow):
            value[slow] = _numbers(buf, series_end[slow] + 1, value_end[slow])
        slow = np.flatnonzero(has_ts & np.isnan(ts))
        if len(slow):
            ts[slow] = _numbers(buf, value_end[slow] + 1, end[slow])
    except (pa.ArrowInvalid, ValueError):
        i = _first_unparsable(buf, series_end + 1, end)
        _raise_at(body, start[i], end[i], line_no[i])
    t_ms = np.full(len(value), NO_TIMESTAMP, dtype=np.int64)
    if has_ts.any():
        t_ms[has_ts] = _times_ms(np.round(ts[has_ts] * 1000) if timestamp_unit == "s" else ts[has_ts])
    return Samples(body, start, series_end, value, t_ms, hashes)


def _times_ms(ms: np.ndarray) -> np.ndarray:
    """Timestamps (ms, float) as int64; NOT_A_TIME where one is no time: NaN, +-Inf or beyond +-2**62 (1e30 would wrap
    around in the cast, and NaN become an arbitrary number), or exactly -1, which would read as no timestamp at all."""
    times = np.full(len(ms), NOT_A_TIME, dtype=np.int64)
    fits = np.abs(ms) < 2.0**62  # False for NaN
    times[fits] = ms[fits]
    times[times == NO_TIMESTAMP] = NOT_A_TIME
    return times


_PARALLEL_FROM_BYTES = 8 * 1024 * 1024
_CORES = os.cpu_count() or 1
_POOL = ThreadPoolExecutor(max_workers=_CORES, thread_name_prefix="parse")


def _pieces(body: bytes, hi: int, lines_before: int) -> list[tuple[int, int, int]]:
    """[start, end) byte ranges that cut body[:hi] at line ends into one piece per core (one if it is small),
    each with the number of lines before it (`lines_before` precede body)."""
    n = min(_CORES, hi // _PARALLEL_FROM_BYTES)
    if n <= 1:
        return [(0, hi, lines_before)]
    cuts = [0]
    for k in range(1, n):
        cut = body.find(b"\n", hi * k // n, hi) + 1
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(hi)
    return [(a, b, lines_before + body.count(b"\n", 0, a)) for a, b in itertools.pairwise(cuts) if b > a]


class _Lines(NamedTuple):
    """What `_scan_piece` found, per data line (the first `n` entries are filled): byte offsets of the line's
    start, series end, value end and end; its line number in the body; and the numbers the fast
    path converted (NaN where it could not; `ts` is NaN also where there is no timestamp); the series text's
    128-bit hash (two murmur-style 64-bit lanes, `_scan.c`). `bad` is the index of the first malformed line (the scan
    stops there), or -1."""

    n: int
    bad: int
    start: np.ndarray
    series_end: np.ndarray
    value_end: np.ndarray
    end: np.ndarray
    line_no: np.ndarray
    value: np.ndarray
    ts: np.ndarray
    hashes: np.ndarray


def _scan_piece(body: bytes, lo: int, hi: int, lines_before: int) -> _Lines:
    """The lines of body[lo:hi], which `lines_before` lines precede (`_scan.scan_lines`: each line found by its newline,
    then read backwards: value and timestamp are the short fields after the last `}`, so the series text itself is
    only hashed, not scanned)."""
    cap = body.count(b"\n", lo, hi) + 1
    columns = [np.empty(cap, np.int64) for _ in range(5)] + [np.empty(cap), np.empty(cap), np.empty((cap, 2), np.uint64)]
    return _Lines(*_scan.scan_lines(body, lo, hi, lines_before, *columns), *columns)


def _strings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.StringArray:
    """The byte ranges [starts, ends) of `buf` as one Arrow string array, without per-item Python.

    The ranges are first described as an Arrow string *view* array over `buf` (16 bytes per item:
    length, then the bytes themselves when there are at most 12, else a 4-byte prefix, buffer 0 and
    the offset); Arrow's C++ cast then copies them into a plain string array.
    """
    views = np.zeros((len(starts), 16), np.uint8)
    _scan.string_views(buf, np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(ends, np.int64), views)
    array = pa.Array.from_buffers(pa.string_view(), len(starts), [None, pa.py_buffer(views), pa.py_buffer(buf)])
    return array.cast(pa.string())


def _numbers(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The byte ranges as float64 (Arrow's C++ parser: accepts NaN, +Inf, -Inf and exponents)."""
    values = _strings(buf, starts, ends).cast(pa.float64())  # no nulls: an unparsable number raises
    return np.frombuffer(values.buffers()[1], np.float64, len(values), values.offset * 8)  # to_numpy() would load pandas


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


def _raise_at(body: bytes, start: int, end: int, line_no: int) -> None:
    line = body[start:end].decode("utf-8", errors="replace")
    raise ExpositionError(f"line {line_no}: expected 'name{{labels}} value [timestamp]', got {line[:120]!r}")
