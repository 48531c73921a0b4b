"""Prometheus text exposition (format 0.0.4) and OpenMetrics: rendering for the exporters, parsing for the collector.

Rendering works on whole label and value columns so an exporter renders a factory once per poll;
parsing is vectorised and keeps each sample's series text (`name{labels}`) as the key, so the
collector resolves labels only for series it has not seen before.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from telemetry.schema import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(labels: dict[str, str]) -> str:
    """`a="1",b="2"` (no braces), values escaped, in the given order."""
    return ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in labels.items())


def format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render_family(metric: Metric, label_texts: Sequence[str], values: Iterable[float] | np.ndarray) -> str:
    """HELP, TYPE and one sample line per (label text, value) of one metric family."""
    head = f"# HELP {metric.name} {metric.help}\n# TYPE {metric.name} {metric.type}\n"
    name = metric.name
    if isinstance(values, np.ndarray):
        values = values.tolist()  # Python floats format several times faster than NumPy scalars
    return head + "".join(f"{name}{{{lt}}} {format_value(v)}\n" for lt, v in zip(label_texts, values))


class ExpositionError(ValueError):
    """A line that is not valid exposition text; says which line and why."""


_HASH, _SPACE, _CLOSE = ord("#"), ord(" "), ord("}")


_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_UNESCAPE = re.compile(r"\\(.)")


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
    texts are cut out in one gather into an Arrow string array, and values are converted in one call.
    The series text is the line up to its value, e.g. `aif_gpu_power_watts{node="n1",gpu="0"}`; its
    labels are parsed later, once per new series (`parse_series`). Raises ExpositionError naming the
    first bad line.
    """
    if timestamp_unit not in ("ms", "s"):
        raise ValueError("timestamp_unit is 'ms' (Prometheus text) or 's' (OpenMetrics)")
    buf = np.frombuffer(body, np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(buf) and buf[-1] != 10:
        ends = np.append(ends, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    first = buf[np.minimum(starts, max(len(buf) - 1, 0))] if len(buf) else np.zeros(0, np.uint8)
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
        values = _fixed_width(buf, series_end + 1, value_end).astype(np.float64)
        raw_ts = _fixed_width(buf, last_space + 1, np.where(has_ts, ends, last_space + 1))
        t_ms = np.full(len(starts), -1, dtype=np.int64)
        if has_ts.any():
            ts = raw_ts[has_ts].astype(np.float64)
            t_ms[has_ts] = np.round(ts * 1000) if timestamp_unit == "s" else ts
    except ValueError:
        _raise_at(body, starts, ends, line_no, _first_unparsable(buf, series_end + 1, ends))
    return Samples(_strings(buf, starts, series_end), values, t_ms)


def _strings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.StringArray:
    """The byte ranges [starts, ends) of `buf` as one Arrow string array (one gather, no per-item Python)."""
    lengths = (ends - starts).astype(np.int32)
    offsets = np.zeros(len(starts) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    # int32 halves the memory traffic of the largest array here (a body is far below 2 GiB)
    index = np.repeat((starts - offsets[:-1]).astype(np.int32), lengths)
    index += np.arange(offsets[-1], dtype=np.int32)
    return pa.StringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(buf[index]))


def _fixed_width(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Byte ranges as a NumPy bytes array (short fields: values and timestamps)."""
    width = int((ends - starts).max()) if len(starts) else 1
    index = starts[:, None] + np.arange(max(width, 1))
    chars = buf[np.minimum(index, len(buf) - 1)]
    chars[index >= ends[:, None]] = 0  # NumPy bytes strings end at the first NUL
    return np.ascontiguousarray(chars).view(f"S{max(width, 1)}").ravel()


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


def parse_series(series_text: str) -> tuple[str, dict[str, str]]:
    """Split `name{a="1"}` into ("name", {"a": "1"}), unescaping values."""
    name, brace, rest = series_text.partition("{")
    name = name.strip()
    if not _NAME.match(name):
        raise ExpositionError(f"invalid metric name {name!r}")
    labels: dict[str, str] = {}
    if brace:
        body = rest.rstrip()
        if not body.endswith("}"):
            raise ExpositionError(f"unterminated label set in {series_text[:120]!r}")
        body = body[:-1]
        pos = 0
        while pos < len(body):
            m = _LABEL.match(body, pos)
            if not m:
                raise ExpositionError(f"invalid labels in {series_text[:120]!r}")
            labels[m.group(1)] = _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))
            pos = m.end()
    return name, labels
