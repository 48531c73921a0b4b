"""Series texts → the store's series keys (metric name and canonical JSON labels), in C (`_scan.c`), without a Python
object per series.

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

from aifmon.ingest import _scan
from aifmon.ingest.parser import gather
from aifmon.stores.texts import Texts
from aifmon.telemetry.exposition import ExpositionError

PROBLEMS = ("", "invalid metric name", "unterminated label set", "invalid labels", "bytes that are not UTF-8", "a label name is repeated")
"""What `_scan.series_keys` found wrong with a text, by its code (0: nothing)."""


class BadSeries(ExpositionError):
    """A new series text that is not a valid series; `text` is the text."""

    def __init__(self, text: str, message: str):
        super().__init__(message)
        self.text = text


def series_keys(texts: Texts, labels: dict[str, str]) -> tuple[Texts, Texts]:
    """(metric names, canonical JSON label texts) of series `texts` with the target's `labels` added; raises BadSeries
    naming the first text that is not a valid series."""
    offsets, data = np.ascontiguousarray(texts.offsets, np.int64), texts.data
    # The target's labels go in as JSON already (names too: json.dumps escapes keys as it does values), sorted by name.
    names = [json.dumps(k)[1:-1] for k in sorted(labels)]
    values = [json.dumps(labels[k])[1:-1] for k in sorted(labels)]
    target_names = np.frombuffer("".join(names).encode() or b"\0", np.uint8)
    target_values = np.frombuffer("".join(values).encode() or b"\0", np.uint8)
    name_ends = np.cumsum([0] + [len(k) for k in names], dtype=np.int64)
    value_ends = np.cumsum([0] + [len(v) for v in values], dtype=np.int64)
    capacity = 2 * int(offsets[-1] - offsets[0]) + len(texts) * (int(value_ends[-1] + name_ends[-1]) + 8 * len(names) + 2) + 64
    metric_start, metric_end, out_offsets = np.zeros(len(texts), np.int64), np.zeros(len(texts), np.int64), np.zeros(len(texts) + 1, np.int64)
    while True:
        out = np.empty(capacity, np.uint8)
        bad, problem = _scan.series_keys(data, offsets, target_names, name_ends, target_values, value_ends, out, metric_start, metric_end, out_offsets)
        if problem >= 0:
            break
        capacity *= 2  # problem -1: the labels did not fit (a text of many escapes or non-ASCII characters)
    if problem:
        text = bytes(data[offsets[bad]:offsets[bad + 1]]).decode("utf-8", errors="replace")
        raise BadSeries(text, f"{PROBLEMS[problem]} in {text[:120]!r}")
    return gather(data, metric_start, metric_end), Texts(out_offsets, out[:out_offsets[-1]])
