"""Parsing whole expositions (Prometheus text and OpenMetrics) into columns, compiled.

Each sample's series text (`name{labels}`) is kept as its key, so the collector resolves labels only
for series it has not seen before (`aifmon.ingest.series_index`).

The byte scanning is compiled by Numba and cached on disk (see `_compiled`): each line is found with
libc's memchr and read backwards from its end, so only the short value and timestamp fields are looked
at byte by byte, and their numbers are converted on the spot where that is exact (Clinger's fast path: at most 2**53 for the
digits and a power of ten of at most 22, so one IEEE multiplication or division gives the correctly
rounded double). Other numbers (17 significant digits, NaN, +Inf, long exponents) go to Arrow's C++
parser. Series texts stay byte ranges of the body until asked for, then become an Arrow string
array through a string-view array over the body, without per-line Python.
"""

from __future__ import annotations

import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import numba
import numpy as np
import pyarrow as pa
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from aifmon.ingest.window import NO_TIMESTAMP, NOT_A_TIME
from aifmon.telemetry.exposition import ExpositionError

_NL, _HASH, _SPACE, _CLOSE = 10, 35, 32, 125
_POW10 = np.array([10.0 ** k for k in range(23)])  # exactly representable in float64
_EXACT_DIGITS = 2 ** 53
log = logging.getLogger(__name__)

# C's memchr (SIMD in every libc) finds line ends, several times faster than a compiled byte loop. It is declared to LLVM by name, to be linked when the code is loaded: a
# ctypes function would put its address into the machine code, and Numba cannot cache such code on disk.
_BYTES = ir.IntType(8).as_pointer()
_SIZE = ir.IntType(64)


@intrinsic
def _memchr(typingctx, address, byte, length):
    """The address of the first `byte` in the `length` bytes at `address`, or 0."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_BYTES, [_BYTES, ir.IntType(32), _SIZE]), "memchr")
        return builder.ptrtoint(builder.call(fn, [builder.inttoptr(args[0], _BYTES), args[1], args[2]]), _SIZE)

    return types.uint64(types.uint64, types.int32, types.uint64), codegen


@intrinsic
def _byte(typingctx, address):
    """The byte at `address`."""
    def codegen(context, builder, signature, args):
        return builder.load(builder.inttoptr(args[0], _BYTES))

    return types.uint8(types.uint64), codegen


@intrinsic
def _load64(typingctx, address):
    """The 8 bytes at `address` (any alignment) as a little-endian uint64."""
    def codegen(context, builder, signature, args):
        return builder.load(builder.inttoptr(args[0], ir.IntType(64).as_pointer()), align=1)

    return types.uint64(types.uint64), codegen


def _compiled(fn):
    """`fn` compiled by Numba, releasing the GIL, and cached on disk so that a new process loads the machine code
    (tens of ms) instead of compiling it again (about 1 s).

    Numba keeps the cache in `$NUMBA_CACHE_DIR` where that is set, else beside this file (`__pycache__`) where
    that is writable, else in the user's cache directory (`$XDG_CACHE_HOME/numba`, by default `~/.cache/numba`:
    a read-only install). A service with none of them writable compiles in each process instead.
    """
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # Numba's "cannot cache function ...: no locator available"
        _warn_uncached()
        return numba.njit(nogil=True)(fn)


@cache  # once per process, not once per compiled function
def _warn_uncached() -> None:
    log.warning("no writable directory for Numba's cache (beside %s, nor the user's cache directory): each start compiles "
                "the parser again (about 1 s); set NUMBA_CACHE_DIR to a writable directory", __file__)


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
    one per core (the compiled scan releases the GIL). Raises ExpositionError naming the first bad line.
    """
    if timestamp_unit not in ("ms", "s"):
        raise ValueError("timestamp_unit is 'ms' (Prometheus text) or 's' (OpenMetrics)")
    if len(body) >= 2**31:
        raise ExpositionError("an exposition of 2 GiB or more cannot be parsed in one piece (Arrow string offsets are 32-bit)")
    buf = np.frombuffer(body, np.uint8)
    pieces = _pieces(body)
    scans = [_scan(buf, *pieces[0])] if len(pieces) == 1 else list(_POOL.map(lambda piece: _scan(buf, *piece), pieces))
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


def warm_up() -> None:
    """Compile the parser's scan (series hashes included) and string views now, or load them from Numba's cache (about
    0.1 s): Numba does either on first use, and a collector's first scrape would be that late (about 1 s uncached)."""
    parse_exposition(b'm{a="1"} 0.5 1790000000000\n').series_of(np.zeros(1, np.int64))


_PARALLEL_FROM_BYTES = 8 * 1024 * 1024
_CORES = os.cpu_count() or 1
_POOL = ThreadPoolExecutor(max_workers=_CORES, thread_name_prefix="parse")


def _pieces(body: bytes) -> list[tuple[int, int, int]]:
    """[start, end) byte ranges that cut `body` at line ends into one piece per core (one if it is small),
    each with the number of lines before it."""
    n = min(_CORES, len(body) // _PARALLEL_FROM_BYTES)
    if n <= 1:
        return [(0, len(body), 0)]
    cuts = [0]
    for k in range(1, n):
        cut = body.find(b"\n", len(body) * k // n) + 1
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(len(body))
    return [(a, b, body.count(b"\n", 0, a)) for a, b in itertools.pairwise(cuts) if b > a]


class _Lines(NamedTuple):
    """What `_scan` found, per data line (the first `n` entries are filled): byte offsets of the line's
    start, series end, value end and end; its line number in the body; and the numbers the fast
    path converted (NaN where it could not; `ts` is NaN also where there is no timestamp); the series text's
    hash (`_hash_series`). `bad` is the index of the first malformed line (the scan stops there), or -1."""

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


def _scan(buf: np.ndarray, lo: int, hi: int, lines_before: int) -> _Lines:
    return _Lines(*_scan_lines(buf, lo, hi, lines_before, _POW10))


@_compiled
def _scan_lines(buf, lo, hi, lines_before, pow10):  # pragma: no cover - compiled; tested through parse_exposition
    """The lines of buf[lo:hi], which `lines_before` lines precede (see `_Lines`). Each line is found by its newline (memchr), then read backwards:
    value and timestamp are the short fields after the last `}`, so the series text itself is not scanned."""
    cap = 1
    for i in range(lo, hi):
        cap += buf[i] == _NL
    start = np.empty(cap, np.int64)
    series_end = np.empty(cap, np.int64)
    value_end = np.empty(cap, np.int64)
    end = np.empty(cap, np.int64)
    line_no = np.empty(cap, np.int64)
    value = np.empty(cap, np.float64)
    ts = np.empty(cap, np.float64)
    hashes = np.empty((cap, 2), np.uint64)
    base = buf.ctypes.data
    n = 0
    pos = lo
    line = lines_before
    while pos < hi:
        line += 1
        a = pos
        found = _memchr(base + np.uint64(a), _NL, np.uint64(hi - a))
        b = hi if found == 0 else np.int64(found - base)
        pos = b + 1
        if b == a or buf[a] == _HASH:
            continue
        last_space = first_space = close = -1
        p = b - 1
        while p >= a:
            c = buf[p]
            if c == _CLOSE:
                close = p
                break
            if c == _SPACE:
                first_space = p
                if last_space < 0:
                    last_space = p
            p -= 1
        s = close + 1 if close >= 0 else first_space  # without labels, the whole line was read: its first space
        v = last_space if last_space > s else b
        start[n], series_end[n], value_end[n], end[n], line_no[n] = a, s, v, b, line
        if s >= b or s <= a or v <= s + 1 or buf[s] != _SPACE:
            return n + 1, n, start, series_end, value_end, end, line_no, value, ts, hashes
        hashes[n, 0], hashes[n, 1] = _hash_series(base, a, s)
        value[n] = _decimal(buf, s + 1, v, pow10)
        ts[n] = _decimal(buf, v + 1, b, pow10) if v < b else np.nan
        n += 1
    return n, -1, start, series_end, value_end, end, line_no, value, ts, hashes


_M1, _M2, _M3, _M4 = (np.uint64(0x87C37B91114253D5), np.uint64(0x4CF5AD432745937F), np.uint64(0x9E3779B97F4A7C15),
                      np.uint64(0xC2B2AE3D27D4EB4F))


@_compiled
def _fmix(h):  # pragma: no cover - compiled
    """MurmurHash3's 64-bit finaliser: every input bit flips each output bit with probability about 1/2."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@_compiled
def _hash_series(base, a, b):  # pragma: no cover - compiled; tested through SeriesIndex
    """Two independent 64-bit hashes of the bytes [a, b) at address `base`, eight at a time (murmur-style lanes with
    different constants): 128 bits, so two different series texts of one target share both with probability 2**-128.
    The bytes are the line's, which memchr has just read: they are in cache."""
    h1 = np.uint64(b - a) ^ _M3
    h2 = np.uint64(b - a) ^ _M4
    p = a
    while p + 8 <= b:
        w = _load64(base + np.uint64(p))
        k1 = w * _M1
        h1 = ((h1 ^ ((k1 << np.uint64(31)) | (k1 >> np.uint64(33)))) * _M2) + _M3
        k2 = w * _M2
        h2 = ((h2 ^ ((k2 << np.uint64(33)) | (k2 >> np.uint64(31)))) * _M1) + _M4
        p += 8
    w = np.uint64(0)
    for k in range(b - p):  # the last 0-7 bytes
        w |= np.uint64(_byte(base + np.uint64(p + k))) << np.uint64(8 * k)
    h1 = _fmix(h1 ^ (w * _M1))
    h2 = _fmix(h2 ^ (w * _M2) ^ h1)
    return h1, h2


@_compiled
def _decimal(buf, a, b, pow10):  # pragma: no cover - compiled
    """The decimal number in buf[a:b] when it converts exactly (see module docstring), else NaN."""
    i = a
    negative = False
    if i < b and (buf[i] == 45 or buf[i] == 43):  # '-', '+'
        negative = buf[i] == 45
        i += 1
    digits = 0
    mantissa = 0
    exponent = 0
    while i < b and 48 <= buf[i] <= 57:
        mantissa = mantissa * 10 + (buf[i] - 48)
        digits += 1
        i += 1
        if mantissa > _EXACT_DIGITS:
            return np.nan
    if i < b and buf[i] == 46:  # '.'
        i += 1
        while i < b and 48 <= buf[i] <= 57:
            mantissa = mantissa * 10 + (buf[i] - 48)
            digits += 1
            exponent -= 1
            i += 1
            if mantissa > _EXACT_DIGITS:
                return np.nan
    if digits == 0:
        return np.nan
    if i < b and (buf[i] == 101 or buf[i] == 69):  # 'e', 'E'
        i += 1
        sign = 1
        if i < b and (buf[i] == 45 or buf[i] == 43):
            sign = -1 if buf[i] == 45 else 1
            i += 1
        e = 0
        e_digits = 0
        while i < b and 48 <= buf[i] <= 57 and e < 1000:
            e = e * 10 + (buf[i] - 48)
            e_digits += 1
            i += 1
        if e_digits == 0:
            return np.nan
        exponent += sign * e
    if i != b or exponent < -22 or exponent > 22:
        return np.nan
    x = float(mantissa)
    x = x * pow10[exponent] if exponent >= 0 else x / pow10[-exponent]
    return -x if negative else x


def _strings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.StringArray:
    """The byte ranges [starts, ends) of `buf` as one Arrow string array, without per-item Python.

    The ranges are first described as an Arrow string *view* array over `buf` (16 bytes per item:
    length, then the bytes themselves when there are at most 12, else a 4-byte prefix, buffer 0 and
    the offset); Arrow's C++ cast then copies them into a plain string array.
    """
    views = _views(buf, starts, ends)
    array = pa.Array.from_buffers(pa.string_view(), len(starts), [None, pa.py_buffer(views), pa.py_buffer(buf)])
    return array.cast(pa.string())


@_compiled
def _views(buf, starts, ends):  # pragma: no cover - compiled
    views = np.zeros((len(starts), 16), np.uint8)
    for i in range(len(starts)):
        a, length = starts[i], ends[i] - starts[i]
        views[i, 0] = length & 0xFF
        views[i, 1] = (length >> 8) & 0xFF
        views[i, 2] = (length >> 16) & 0xFF
        views[i, 3] = (length >> 24) & 0xFF
        for k in range(min(length, 12 if length <= 12 else 4)):
            views[i, 4 + k] = buf[a + k]
        if length > 12:  # bytes 8-11: buffer 0; 12-15: the offset into it
            views[i, 12] = a & 0xFF
            views[i, 13] = (a >> 8) & 0xFF
            views[i, 14] = (a >> 16) & 0xFF
            views[i, 15] = (a >> 24) & 0xFF
    return views


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
