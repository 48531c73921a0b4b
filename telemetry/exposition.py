"""Prometheus text exposition (format 0.0.4): rendering for the exporters, and label parsing.

Rendering works on whole label and value columns so an exporter renders a factory once per poll.
Parsing whole bodies is in `aifmon.ingest.parser` (it needs Arrow, which an exporter on a node does not).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from aifmon.telemetry.schema import Metric

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




_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_UNESCAPE = re.compile(r"\\(.)")


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
