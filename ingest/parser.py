"""Parsing expositions (Prometheus text and OpenMetrics) into columns, in C: whole, or chunk by chunk as they arrive.

Each sample's series text (`name{labels}`) is kept as its key, so the collector resolves labels only
for series it has not seen before (`aifmon.ingest.series_index`).

The byte scanning is C (`_scan.c`, built at install, so nothing is compiled at run time): each line is found
with libc's memchr and read backwards from its end, so only the short value and timestamp fields are looked
at byte by byte, and their numbers are converted on the spot: where that is exact by one IEEE operation (Clinger's
fast path: at most 2**53 for the digits and a power of ten of at most 22), else by strtod, which rounds correctly
(17 significant digits, long exponents; NaN and +-Inf by name). Series texts stay byte ranges of the body until asked
for, then are gathered into one column (`Texts`), without per-line Python. No Arrow: the collector's process does
without its 27 MB.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from aifmon.ingest.window import NO_TIMESTAMP, NOT_A_TIME
from aifmon.stores.texts import Texts
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
    def series(self) -> Texts:
        """Every sample's series text, e.g. `aif_gpu_power_watts{node="n1",gpu="0"}`: built on each use, not kept (a
        collector keeps the last scrape's Samples, and the texts would double its memory)."""
        return gather(self.body, self.series_start, self.series_end)

    def series_of(self, rows: np.ndarray) -> Texts:
        """The series texts of the samples at `rows` (indices)."""
        return gather(self.body, self.series_start[rows], self.series_end[rows])


def parse_exposition(body: bytes, timestamp_unit: str = "ms", lines_before: int = 0) -> Samples:
    """Parse Prometheus text (timestamps in ms) or OpenMetrics text (`timestamp_unit="s"`) into columns; `lines_before`
    lines precede `body` where it is a piece of a longer text (a file read in chunks), so errors name that text's line.

    The series text is the line up to its value, e.g. `aif_gpu_power_watts{node="n1",gpu="0"}`: it
    ends after the line's last `}`, or without labels at its first space. Its labels are parsed
    later, once per new series (`parse_series`). A large body is scanned in pieces cut at line ends,
    one per core (the C scan releases the GIL). Raises ExpositionError naming the first bad line.
    """
    _check_unit(timestamp_unit)
    return _parse(body, len(body), lines_before, timestamp_unit)


def parse_stream(chunks: Iterable[bytes], timestamp_unit: str = "ms") -> Iterator[Samples]:
    """`parse_exposition` of an exposition that arrives in chunks (a scrape's reads), a run of whole lines at a time:
    each Samples holds the complete lines of one chunk and the line the chunk before it ended inside, so what is held
    is a chunk, not the whole body. Line numbers in errors count from the exposition's start."""
    _check_unit(timestamp_unit)
    lines = 0
    for data, end in line_runs(chunks):
        yield _parse(data, end, lines, timestamp_unit)
        lines += _scan.count_lines(data, 0, end)


def line_runs(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, int]]:
    """The chunks of a text regrouped at line ends: (data, end), where data[:end] is the next run of whole lines (the
    last one may lack its newline) and data[end:] is carried into the next run. A chunk is copied only to join the
    line that straddles it: the run is a range of `data`, not a slice."""
    pending: list[bytes] = []  # a line not ended yet, in pieces: joined once, so a long line costs its length, not its square
    for chunk in chunks:
        end = chunk.rfind(b"\n") + 1
        if not end:
            pending.append(chunk)
            continue
        data = b"".join([*pending, chunk]) if pending else chunk
        yield data, len(data) - len(chunk) + end
        pending = [chunk[end:]] if end < len(chunk) else []
    if pending:
        data = b"".join(pending)
        yield data, len(data)


def _check_unit(timestamp_unit: str) -> None:
    if timestamp_unit not in ("ms", "s"):
        raise ValueError("timestamp_unit is 'ms' (Prometheus text) or 's' (OpenMetrics)")


def _parse(body: bytes, hi: int, lines_before: int, timestamp_unit: str) -> Samples:
    """The lines of body[:hi], which `lines_before` lines precede (see `parse_exposition`)."""
    pieces = _pieces(body, hi, lines_before)
    scans = [_scan_piece(body, *pieces[0])] if len(pieces) == 1 else list(_POOL.map(lambda piece: _scan_piece(body, *piece), pieces))
    for lines in scans:
        if lines.bad >= 0:
            _raise_at(body, lines.start[lines.bad], lines.end[lines.bad], lines.line_no[lines.bad])
    start, series_end, value_end, end, value, ts, hashes = (
        np.concatenate([getattr(s, f)[:s.n] for s in scans]) if len(scans) > 1 else getattr(scans[0], f)[:scans[0].n]
        for f in ("start", "series_end", "value_end", "end", "value", "ts", "hashes"))
    has_ts = value_end < end
    t_ms = np.full(len(value), NO_TIMESTAMP, dtype=np.int64)
    if has_ts.any():
        with np.errstate(over="ignore"):  # seconds past 1.8e305 are +-Inf in ms: no time (`_times_ms`), not a warning
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
    return [(a, b, lines_before + _scan.count_lines(body, 0, a)) for a, b in itertools.pairwise(cuts) if b > a]


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
    cap = _scan.count_lines(body, lo, hi) + 1
    columns = [np.empty(cap, np.int64) for _ in range(5)] + [np.empty(cap), np.empty(cap), np.empty((cap, 2), np.uint64)]
    return _Lines(*_scan.scan_lines(body, lo, hi, lines_before, *columns), *columns)


def gather(buf: np.ndarray | bytes, starts: np.ndarray, ends: np.ndarray) -> Texts:
    """The byte ranges [starts, ends) of `buf` as one column of texts, copied in C without per-item Python."""
    starts, ends = np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(ends, np.int64)
    offsets = np.zeros(len(starts) + 1, np.int64)
    np.cumsum(ends - starts, out=offsets[1:])
    data = np.empty(int(offsets[-1]), np.uint8)
    _scan.gather(buf, starts, ends, data)
    return Texts(offsets, data)


def _raise_at(body: bytes, start: int, end: int, line_no: int) -> None:
    line = body[start:end].decode("utf-8", errors="replace")
    raise ExpositionError(f"line {line_no}: expected 'name{{labels}} value [timestamp]', got {line[:120]!r}")
