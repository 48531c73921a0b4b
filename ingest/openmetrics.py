"""`aifmon store export` / `store import`: OpenMetrics text with timestamps, the format
`promtool tsdb create-blocks-from openmetrics` reads, into and out of any backend.

Timestamps are seconds with millisecond decimals; counters are declared under their family name
(without `_total`), as OpenMetrics requires; the file ends with `# EOF`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple, NoReturn, TextIO

import numpy as np

from aifmon.ingest.parser import line_runs, parse_exposition
from aifmon.ingest.series_index import SeriesIndex
from aifmon.ingest.series_keys import BadSeries
from aifmon.ingest.window import IMPORT_WINDOW, NO_TIMESTAMP, SampleWindow
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import SampleReader, SampleWriter
from aifmon.telemetry.exposition import ExpositionError, format_value, label_text
from aifmon.telemetry.schema import BY_NAME

_CHUNK_BYTES = 32 * 1024 * 1024  # read imports in pieces: bounded memory whatever the file size
_META = ("series_id", "t_ms", "value")


def family_of(metric: str) -> tuple[str, str]:
    """(OpenMetrics family name, type) of a stored metric name."""
    known = BY_NAME.get(metric)
    kind = known.type if known else ("counter" if metric.endswith("_total") else "gauge")
    return (metric.removesuffix("_total"), "counter") if kind == "counter" else (metric, "gauge")


def export_openmetrics(store: SampleReader, out: TextIO, start_ms: int, end_ms: int,
                       progress: Callable[[str], None] = lambda metric: None) -> int:
    """Write every sample in [start_ms, end_ms] as OpenMetrics text; returns the number of samples."""
    written = 0
    for metric in sorted(store.metric_names()):
        frame = store.range(metric, start_ms, end_ms)
        progress(metric)
        if frame.empty:
            continue
        family, kind = family_of(metric)
        out.write(f"# TYPE {family} {kind}\n")
        if metric in BY_NAME:
            out.write(f"# HELP {family} {BY_NAME[metric].help}\n")
        labels = [c for c in frame.columns if c not in _META]
        for _, series in frame.groupby("series_id", sort=True):
            first = series.iloc[0]
            head = f"{metric}{{{label_text({k: first[k] for k in labels if isinstance(first[k], str)})}}}"
            out.writelines(f"{head} {format_value(v)} {t / 1000:.3f}\n"
                           for t, v in zip(series["t_ms"].tolist(), series["value"].tolist()))
            written += len(series)
    out.write("# EOF\n")
    return written


class Imported(NamedTuple):
    """What an import loaded: the number of samples, and the first and last sample times (ms; None if none)."""

    samples: int
    first_ms: int | None
    last_ms: int | None


def import_openmetrics(store: SampleWriter, path: str | Path, progress: Callable[[int], None] = lambda n: None,
                       window: SampleWindow = IMPORT_WINDOW) -> Imported:
    """Load an OpenMetrics file (every sample with a timestamp inside `window`: history of any age, but nothing before
    2000 nor ahead of now) into `store`, all or nothing.

    Raises ExpositionError naming the file and the first bad line (not parsable, no timestamp or one outside the window,
    a repeated label name). On the embedded store the whole file is one transaction, so then nothing of it was stored.
    Other stores take it chunk by chunk (32 MB), and the error says up to which line the file was stored.
    The file is read in chunks whatever the store: memory is bounded by the chunk, not the file.
    """
    index = SeriesIndex(store)
    stored = 0
    bounds: tuple[int, int] | None = None  # first and last sample time, ms
    line_offset = 0

    def refuse(message: str) -> NoReturn:
        committed = "nothing of it was stored" if atomic else \
            (f"lines 1-{line_offset} ({stored} samples) were stored" if line_offset else "nothing of it was stored")
        raise ExpositionError(f"{path}: {message}; {committed}")

    atomic = isinstance(store, DuckDBStore)
    with store.transaction() if isinstance(store, DuckDBStore) else nullcontext():  # not `atomic`: mypy narrows on isinstance only
        for chunk in _chunks(Path(path)):
            try:
                samples = parse_exposition(chunk, timestamp_unit="s", lines_before=line_offset)
            except ExpositionError as e:
                refuse(str(e))
            now_ms = int(time.time() * 1000)
            refused, _ = window.refused(samples.t_ms, now_ms)
            missing = samples.t_ms == NO_TIMESTAMP
            if refused is not None or missing.any():
                first = int(np.flatnonzero(missing if refused is None else refused | missing)[0])
                why = "no timestamp (an import needs OpenMetrics seconds on every sample)" if missing[first] else \
                    f"the timestamp {window.explain(window.reason(int(samples.t_ms[first]), now_ms), now_ms)}"
                start = int(samples.series_start[first])
                end = chunk.find(b"\n", start)
                line = chunk[start:end if end >= 0 else None].decode("utf-8", errors="replace")
                refuse(f"line {line_offset + _line_of(chunk, start)}: {why}: {line[:120]!r}")
            try:
                ids = index.ids(samples)
            except BadSeries as e:
                refuse(f"line {line_offset + _line_of(chunk, _find_series(chunk, e.text))}: {e}")
            except ExpositionError as e:
                refuse(str(e))
            store.append(ids, samples.t_ms, samples.values)
            if len(samples):
                lo, hi = int(samples.t_ms.min()), int(samples.t_ms.max())
                bounds = (lo, hi) if bounds is None else (min(bounds[0], lo), max(bounds[1], hi))
            stored += len(samples)
            line_offset += chunk.count(b"\n")
            progress(len(chunk))
    return Imported(stored, *(bounds or (None, None)))


def _line_of(chunk: bytes, offset: int) -> int:
    """The line number (from 1) of byte `offset` of `chunk`."""
    return chunk.count(b"\n", 0, offset) + 1


def _find_series(chunk: bytes, text: str) -> int:
    """The byte offset of the first line of `chunk` that starts with series `text` (error path only)."""
    needle = text.encode()
    if chunk.startswith(needle):
        return 0
    return chunk.find(b"\n" + needle) + 1


def _chunks(path: Path) -> Iterator[bytes]:
    """The file in pieces of about `_CHUNK_BYTES`, each ending at a line end."""
    with path.open("rb") as fh:
        for data, end in line_runs(iter(lambda: fh.read(_CHUNK_BYTES), b"")):
            yield data[:end]
