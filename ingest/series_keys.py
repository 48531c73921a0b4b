"""Series texts → the store's series keys (metric name and canonical JSON labels), compiled, without a Python object
per series.

`name{a="1",b="x\\"y"}` with the target's labels `{"instance": "h:9100"}` becomes the metric `name` and the labels text
`{"a": "1", "b": "x\\"y", "instance": "h:9100"}`: exactly what `json.dumps(labels, sort_keys=True)` writes (the store's
canonical form, `DuckDBStore.series_ids`), byte for byte, non-ASCII as `\\uXXXX` included. A label the exporter sets
itself wins over the target's. The grammar is `aifmon.telemetry.exposition.parse_series`'s (whitespace around names,
`=` and commas, a trailing comma, escapes `\\\\`, `\\"` and `\\n` in values), and a repeated label name is refused, as
Prometheus refuses it. A first scrape of a whole factory (400,000 series) is registered at the cost of its bytes, not
of 400,000 dicts and tuples.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from aifmon.ingest.parser import _compiled, _strings
from aifmon.telemetry.exposition import ExpositionError

PROBLEMS = ("", "invalid metric name", "unterminated label set", "invalid labels", "bytes that are not UTF-8", "a label name is repeated")
"""What `_keys` found wrong with a text, by its code (0: nothing)."""


class BadSeries(ExpositionError):
    """A new series text that is not a valid series; `text` is the text."""

    def __init__(self, text: str, message: str):
        super().__init__(message)
        self.text = text


def series_keys(texts: pa.StringArray, labels: dict[str, str]) -> tuple[pa.StringArray, pa.StringArray]:
    """(metric names, canonical JSON label texts) of series `texts` with the target's `labels` added; raises BadSeries
    naming the first text that is not a valid series."""
    offsets = np.frombuffer(texts.buffers()[1], np.int32)[texts.offset:texts.offset + len(texts) + 1].astype(np.int64)
    data = np.frombuffer(texts.buffers()[2] or b"", np.uint8)
    # The target's labels go in as JSON already (names too: json.dumps escapes keys as it does values), sorted by name.
    names = [json.dumps(k)[1:-1] for k in sorted(labels)]
    values = [json.dumps(labels[k])[1:-1] for k in sorted(labels)]
    target_names = np.frombuffer("".join(names).encode() or b"\0", np.uint8)
    target_values = np.frombuffer("".join(values).encode() or b"\0", np.uint8)
    name_ends = np.cumsum([0] + [len(k) for k in names], dtype=np.int64)
    value_ends = np.cumsum([0] + [len(v) for v in values], dtype=np.int64)
    capacity = 2 * int(offsets[-1] - offsets[0]) + len(texts) * (int(value_ends[-1] + name_ends[-1]) + 8 * len(names) + 2) + 64
    while True:
        metric_start, metric_end, out, out_offsets, bad, problem = _keys(data, offsets, target_names, name_ends, target_values,
                                                                         value_ends, np.empty(capacity, np.uint8))
        if problem >= 0:
            break
        capacity *= 2  # problem -1: the labels did not fit (a text of many escapes or non-ASCII characters)
    if problem:
        text = bytes(data[offsets[bad]:offsets[bad + 1]]).decode("utf-8", errors="replace")
        raise BadSeries(text, f"{PROBLEMS[problem]} in {text[:120]!r}")
    labels_text = pa.StringArray.from_buffers(len(texts), pa.py_buffer(out_offsets.astype(np.int32)), pa.py_buffer(out[:out_offsets[-1]]))
    return _strings(data, metric_start, metric_end), labels_text


@_compiled
def _is_space(c):  # pragma: no cover - compiled
    return c == 32 or 9 <= c <= 13


@_compiled
def _name_char(c, first, colon):  # pragma: no cover - compiled
    """Whether byte c may be in a metric (colon) or label name, at its first position or later."""
    letter = 65 <= c <= 90 or 97 <= c <= 122 or c == 95 or (colon and c == 58)
    return letter or (not first and 48 <= c <= 57)


@_compiled
def _same_bytes(a, a0, a1, b, b0, b1):  # pragma: no cover - compiled
    if a1 - a0 != b1 - b0:
        return False
    for k in range(a1 - a0):  # noqa: SIM110 - Numba compiles no generator expressions
        if a[a0 + k] != b[b0 + k]:
            return False
    return True


@_compiled
def _before(a, a0, a1, b, b0, b1):  # pragma: no cover - compiled
    """Whether bytes a[a0:a1] sort before b[b0:b1]."""
    for k in range(min(a1 - a0, b1 - b0)):
        if a[a0 + k] != b[b0 + k]:
            return a[a0 + k] < b[b0 + k]
    return a1 - a0 < b1 - b0


_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


@_compiled
def _put_escaped(out, o, cp, hexdigits):  # pragma: no cover - compiled
    """Write code point cp as json.dumps (ensure_ascii) writes it inside a string; returns the new output position."""
    if cp == 34 or cp == 92:  # " and \
        out[o] = 92
        out[o + 1] = cp
        return o + 2
    if 32 <= cp <= 126:
        out[o] = cp
        return o + 1
    short = 98 if cp == 8 else 102 if cp == 12 else 110 if cp == 10 else 114 if cp == 13 else 116 if cp == 9 else 0
    if short:  # \b \f \n \r \t
        out[o] = 92
        out[o + 1] = short
        return o + 2
    if cp >= 0x10000:  # a surrogate pair, as Python writes it
        cp -= 0x10000
        o = _put_escaped(out, o, 0xD800 + (cp >> 10), hexdigits)
        cp = 0xDC00 + (cp & 0x3FF)
    out[o] = 92
    out[o + 1] = 117  # u
    for k in range(4):
        out[o + 2 + k] = hexdigits[(cp >> (12 - 4 * k)) & 15]
    return o + 6


@_compiled
def _keys(data, offsets, t_names, t_name_ends, t_values, t_value_ends, out):  # pragma: no cover - compiled; tested against json.dumps
    """Per text: metric name range, canonical JSON labels into `out` (end offsets `out_offsets`); `bad` is the first
    text with a problem and `problem` its code (PROBLEMS), 0 if none, -1 if `out` is too small."""
    n = len(offsets) - 1
    metric_start = np.zeros(n, np.int64)
    metric_end = np.zeros(n, np.int64)
    out_offsets = np.zeros(n + 1, np.int64)
    n_target = len(t_name_ends) - 1
    longest = 0
    for i in range(n):
        longest = max(longest, offsets[i + 1] - offsets[i])
    cap = longest // 4 + 1 + n_target  # a label takes 4 bytes at least: a=""
    name0 = np.empty(cap, np.int64)
    name1 = np.empty(cap, np.int64)
    value0 = np.empty(cap, np.int64)
    value1 = np.empty(cap, np.int64)
    source = np.empty(cap, np.int64)  # 0: the exporter's (escaped as exposition text), 1: the target's (JSON already)
    order = np.empty(cap, np.int64)
    o = 0
    for i in range(n):
        a, e = offsets[i], offsets[i + 1]
        brace = a
        while brace < e and data[brace] != 123:  # {
            brace += 1
        s0, s1 = a, brace
        while s0 < s1 and _is_space(data[s0]):
            s0 += 1
        while s1 > s0 and _is_space(data[s1 - 1]):
            s1 -= 1
        ok = s1 > s0
        for p in range(s0, s1):
            ok = ok and _name_char(data[p], p == s0, True)
        if not ok:
            return metric_start, metric_end, out, out_offsets, i, 1
        metric_start[i], metric_end[i] = s0, s1
        count = 0
        if brace < e:
            end = e
            while end > brace + 1 and _is_space(data[end - 1]):
                end -= 1
            if data[end - 1] != 125:  # }
                return metric_start, metric_end, out, out_offsets, i, 2
            end -= 1
            p = brace + 1
            while p < end:
                while p < end and _is_space(data[p]):
                    p += 1
                n0 = p
                while p < end and _name_char(data[p], p == n0, False):
                    p += 1
                n1 = p
                while p < end and _is_space(data[p]):
                    p += 1
                if n1 == n0 or p >= end or data[p] != 61:  # =
                    return metric_start, metric_end, out, out_offsets, i, 3
                p += 1
                while p < end and _is_space(data[p]):
                    p += 1
                if p >= end or data[p] != 34:  # "
                    return metric_start, metric_end, out, out_offsets, i, 3
                p += 1
                v0 = p
                while p < end and data[p] != 34:
                    p += 2 if data[p] == 92 else 1
                if p >= end:
                    return metric_start, metric_end, out, out_offsets, i, 3
                v1 = p
                p += 1
                while p < end and _is_space(data[p]):
                    p += 1
                if p < end and data[p] == 44:  # ,
                    p += 1
                for k in range(count):
                    if _same_bytes(data, name0[k], name1[k], data, n0, n1):
                        return metric_start, metric_end, out, out_offsets, i, 5
                name0[count], name1[count], value0[count], value1[count], source[count] = n0, n1, v0, v1, 0
                count += 1
        exporter = count
        for t in range(n_target):
            mine = False
            for k in range(exporter):
                mine = mine or _same_bytes(data, name0[k], name1[k], t_names, t_name_ends[t], t_name_ends[t + 1])
            if not mine:
                name0[count], name1[count], value0[count], value1[count], source[count] = \
                    t_name_ends[t], t_name_ends[t + 1], t_value_ends[t], t_value_ends[t + 1], 1
                count += 1
        for k in range(count):  # insertion sort by name: a handful of labels
            order[k] = k
            j = k
            while j > 0:
                x, y = order[j - 1], order[j]
                bx = data if source[x] == 0 else t_names
                by = data if source[y] == 0 else t_names
                if not _before(by, name0[y], name1[y], bx, name0[x], name1[x]):
                    break
                order[j - 1], order[j] = y, x
                j -= 1
        need = 2
        for k in range(count):  # at most: quotes, ': ', ', ' and 6 bytes per value byte (\u00XX)
            need += 8 + name1[k] - name0[k] + 6 * (value1[k] - value0[k])
        if o + need > len(out):
            return metric_start, metric_end, out, out_offsets, i, -1
        out[o] = 123
        o += 1
        for k in range(count):
            x = order[k]
            if k:
                out[o], out[o + 1] = 44, 32
                o += 2
            out[o] = 34
            o += 1
            names = data if source[x] == 0 else t_names
            for p in range(name0[x], name1[x]):
                out[o] = names[p]
                o += 1
            out[o], out[o + 1], out[o + 2], out[o + 3] = 34, 58, 32, 34
            o += 4
            if source[x] == 1:
                for p in range(value0[x], value1[x]):
                    out[o] = t_values[p]
                    o += 1
            else:
                p = value0[x]
                while p < value1[x]:
                    c = data[p]
                    if c == 92:  # an exposition escape: \n is a newline, \x is x
                        p += 1
                        c = 10 if data[p] == 110 else data[p]
                    p += 1
                    if c < 128:
                        o = _put_escaped(out, o, c, _HEX)
                        continue
                    more = 1 if 0xC2 <= c <= 0xDF else 2 if 0xE0 <= c <= 0xEF else 3 if 0xF0 <= c <= 0xF4 else -1
                    if more < 0 or p + more > value1[x]:
                        return metric_start, metric_end, out, out_offsets, i, 4
                    cp = c & (0x1F if more == 1 else 0x0F if more == 2 else 0x07)
                    for _ in range(more):
                        c = data[p]
                        if c < 0x80 or c > 0xBF:
                            return metric_start, metric_end, out, out_offsets, i, 4
                        cp = (cp << 6) | (c & 0x3F)
                        p += 1
                    if (more == 2 and (cp < 0x800 or 0xD800 <= cp <= 0xDFFF)) or (more == 3 and not 0x10000 <= cp <= 0x10FFFF):
                        return metric_start, metric_end, out, out_offsets, i, 4
                    o = _put_escaped(out, o, cp, _HEX)
            out[o] = 34
            o += 1
        out[o] = 125
        o += 1
        out_offsets[i + 1] = o
    return metric_start, metric_end, out, out_offsets, -1, 0


def warm_up() -> None:
    """Compile `_keys` now, or load it from Numba's cache: a collector's first scrape would otherwise be late by it."""
    text = b'm{a="1"}'  # built from buffers: pa.array() would load pandas (47 MB) into the collector's process
    series_keys(pa.StringArray.from_buffers(1, pa.py_buffer(np.array([0, len(text)], np.int32)), pa.py_buffer(text)), {"b": "2"})
