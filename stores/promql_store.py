"""The PromQL backend: the store interface over an existing Prometheus or VictoriaMetrics (single node or cluster).

Reads fetch raw samples with range-vector instant queries (`metric[window]` evaluated at the window's
end), so rollups see exactly the samples the server holds — no `rate`/`increase` extrapolation — and
give the same answer as on the embedded store. Long ranges are read window by window.

Writes: VictoriaMetrics accepts samples on `/api/v1/import/prometheus`, so `VictoriaMetricsStore` also takes
samples (the collector and `aifmon store import` can write to it). Prometheus ingests only by scraping (or
offline blocks from `promtool tsdb create-blocks-from openmetrics`), so `PromQLStore` only reads. Neither
keeps derived tables (rollup rows).

A server behind basic auth (Prometheus' `--web.config.file`, VictoriaMetrics' `-httpAuth.*`, vmauth) gets the
user name from `AIFMON_STORE_USERNAME` and the password from the file `AIFMON_STORE_PASSWORD_FILE` names (or
`AIFMON_STORE_PASSWORD`); never from the URL. Messages show the server's URL redacted.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from aifmon.stores.store import (
    EDGE_FIRST_WINDOW_MS,
    EDGE_GROWTH,
    SampleReader,
    SampleWriter,
    SeriesKey,
    SeriesSamples,
    Store,
    StoreConfigError,
    StoreError,
    runs_of,
    series_ids_from_json,
    series_samples,
)
from aifmon.stores.texts import Texts
from aifmon.telemetry.exposition import escape_label_value, format_value, label_text
from aifmon.telemetry.redact import redact_url

_WINDOW_S = 3600  # one query per hour of data: bounds the server's and our memory per answer
_FUTURE_MS = 86_400_000  # how far past now `edges` looks for a sample after a range (a clock that runs ahead)
_SELECTORS_PER_REQUEST = 500  # series selectors per export request of `edges` (each one an index lookup on the server)
LabelKey = tuple[tuple[str, str], ...]  # a series' labels, sorted, without __name__
_IMPORT_BATCH = 200_000  # lines per import request
USERNAME_ENV, PASSWORD_ENV, PASSWORD_FILE_ENV = "AIFMON_STORE_USERNAME", "AIFMON_STORE_PASSWORD", "AIFMON_STORE_PASSWORD_FILE"
_CREDENTIALS_HINT = f"set {USERNAME_ENV} and {PASSWORD_FILE_ENV} (or {PASSWORD_ENV}) to the server's credentials"


def basic_auth() -> str | None:
    """The `Authorization` header value for the store's server from the environment; None when no user is set."""
    user, password, file = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV), os.environ.get(PASSWORD_FILE_ENV)
    if password is not None and file:
        raise StoreConfigError(f"both {PASSWORD_ENV} and {PASSWORD_FILE_ENV} are set; set only one")
    if file:
        try:
            password = open(file, encoding="utf-8").read().splitlines()[0].strip()
        except (OSError, IndexError) as e:
            why = e.strerror if isinstance(e, OSError) else "it is empty"
            raise StoreConfigError(f"cannot read the store password file {PASSWORD_FILE_ENV}={file}: {why}") from None
    if not user:
        if password is not None:
            raise StoreConfigError(f"a store password is set but no user name: set {USERNAME_ENV} too")
        return None
    return "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()


class PromQLStore(SampleReader):
    """Reads samples over the Prometheus HTTP API (`base_url`: `http(s)://host:port[/path prefix]`)."""

    kind = "Prometheus"
    reads_are_requests = True

    def __init__(self, base_url: str, url: str, timeout_s: float = 60.0):
        """`timeout_s`: per request, s."""
        self.base_url = base_url.rstrip("/")
        self.url = url
        self.timeout_s = timeout_s
        self.shown = redact_url(self.base_url)
        """The server's URL as messages show it."""
        auth = basic_auth()
        self._headers = {"Authorization": auth} if auth else {}

    @classmethod
    def instead(cls, capability: type[Store]) -> str:
        if issubclass(capability, SampleWriter):
            return ("Prometheus ingests by scraping; to load history, build blocks with `promtool tsdb create-blocks-from "
                    "openmetrics` (from `aifmon store export`), or use VictoriaMetrics (victoriametrics+http://)")
        return (f"{cls.kind} keeps no rollup rows; keep them in PostgreSQL (`--rows-store postgresql://host:5432/db`, which every "
                "reader can share) or a duckdb:/// store")

    # -- reads ---------------------------------------------------------------------------------
    def _get(self, path: str, params: dict[str, str]) -> dict:
        query = urllib.request.Request(f"{self.base_url}{path}?{urllib.parse.urlencode(params)}", headers=self._headers)
        try:
            with urllib.request.urlopen(query, timeout=self.timeout_s) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            detail = _CREDENTIALS_HINT if e.code == 401 else e.read().decode(errors="replace")[:300]
            raise StoreError(f"{self.kind} at {self.shown} refused {params.get('query', path)!r}: HTTP {e.code} {detail}") from None
        except (OSError, ValueError) as e:
            raise StoreError(f"{self.kind} at {self.shown} did not answer: {e}") from None
        if body.get("status") != "success":
            raise StoreError(f"{self.kind} at {self.shown}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def edges(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        """Each series' last sample at or before `start_ms` and first at or after `end_ms` (the contract: `SampleReader.edges`),
        with the server's exact timestamps (raw samples, as `range_arrays` reads them: no `last_over_time`, whose
        result carries the evaluation time, not the sample's).

        Per side: one read of `EDGE_FIRST_WINDOW_MS` next to the end for every series of the selector; then, for the series
        the server's series index (`/api/v1/series`, cheap: no samples are read) lists further out but that read did not
        show, reads of those series alone over windows growing `EDGE_GROWTH`-fold, each after asking the index again which
        of them still have samples further out. A series that stopped weeks before the range thus costs reads of itself
        only, down to its last sample, and none at all once the index shows nothing further (its granularity: a day on
        VictoriaMetrics, a block on Prometheus). Bounds: 1 ms past the Unix epoch before (VictoriaMetrics reads a start of 0 as
        "none given": the last day only), a day past now after."""
        selector = _selector(metric, match)
        now_ms = int(time.time() * 1000)
        picked = {**{(k, 0): v for k, v in self._edge_side(metric, selector, start_ms, True, 1).items()},
                  **{(k, 1): v for k, v in self._edge_side(metric, selector, end_ms, False, max(now_ms, end_ms) + _FUTURE_MS).items()}}
        keys = sorted({key for key, _ in picked})
        ids = {key: i for i, key in enumerate(keys)}
        series = pd.DataFrame([dict(key) for key in keys], index=range(len(keys)))
        series.insert(0, "series_id", np.arange(len(keys), dtype=np.int32))
        return SeriesSamples(series, np.fromiter((ids[key] for key, _ in picked), np.int32, len(picked)),
                             np.fromiter((t for t, _ in picked.values()), np.int64, len(picked)),
                             np.fromiter((v for _, v in picked.values()), np.float64, len(picked)))

    def _edge_side(self, metric: str, selector: str, near: int, before: bool, bound: int) -> dict[LabelKey, tuple[int, float]]:
        """{series labels: (t_ms, value)} of the newest sample at or before `near` (`before`) or the oldest at or after it,
        for every series that has one between `near` and `bound` (the search: `edges`)."""
        found: dict[LabelKey, tuple[int, float]] = {}
        width = EDGE_FIRST_WINDOW_MS
        selectors = [selector]
        pending: set[LabelKey] | None = None  # None: every series of the selector
        while True:
            lo, hi = (max(bound, near - width), near) if before else (near, min(bound, near + width))
            for i in range(0, len(selectors), _SELECTORS_PER_REQUEST):
                found.update(_pick(self._window(selectors[i:i + _SELECTORS_PER_REQUEST], lo, hi), before, pending))
            near = lo - 1 if before else hi + 1
            if (near < bound) if before else (near > bound):
                return found
            further = self._series_between(selector, bound, near) if before else self._series_between(selector, near, bound)
            pending = further - found.keys()
            if not pending:
                return found
            width *= EDGE_GROWTH
            selectors = [_selector(metric, dict(key)) for key in sorted(pending)]

    def _series_between(self, selector: str, start_ms: int, end_ms: int) -> set[LabelKey]:
        """The series of `selector` the server's index shows with samples in [start_ms, end_ms] (a superset: its granularity
        is coarser), read without reading samples."""
        # 1 ms past the end, as `_window` asks
        data = self._get("/api/v1/series", {"match[]": selector, "start": f"{start_ms / 1000:.3f}", "end": f"{(end_ms + 1) / 1000:.3f}"})
        return {tuple(sorted((k, v) for k, v in labels.items() if k != "__name__")) for labels in data}

    def _window(self, selectors: list[str], start_ms: int, end_ms: int) -> SeriesSamples:
        """The finite samples with start_ms <= t <= end_ms of the series the selectors select: one range-vector query each."""
        frames: list[pd.DataFrame] = []
        for selector in selectors:
            data = self._get("/api/v1/query", {"query": f"{selector}[{end_ms - start_ms + 1}ms]", "time": f"{end_ms / 1000:.3f}"})
            frames += [_result_frame(result, len(frames) + i) for i, result in enumerate(data["result"])]
        if not frames:
            return SeriesSamples.empty()
        return series_samples(pd.concat(frames, ignore_index=True))

    def _raw(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> pd.DataFrame:
        """Raw samples with start_ms <= t <= end_ms, one frame with `__series` (result index) and label columns."""
        frames = []
        series_ids: dict[tuple, int] = {}
        selector = _selector(metric, match)
        t = end_ms
        while t >= start_ms:
            window_ms = min(_WINDOW_S * 1000, t - start_ms + 1)  # the selector is left-open: (t - window, t]
            data = self._get("/api/v1/query", {"query": f"{selector}[{window_ms}ms]", "time": f"{t / 1000:.3f}"})
            for result in data["result"]:
                key = tuple(sorted((k, v) for k, v in result["metric"].items() if k != "__name__"))
                frames.append(_result_frame(result, series_ids.setdefault(key, len(series_ids))))
            t -= window_ms
        if not frames:
            return pd.DataFrame(columns=["series_id", "t_ms", "value"])
        return pd.concat(frames, ignore_index=True)

    def latest(self, metric: str, at_ms: int | None = None, lookback_s: float = 300.0,
               match: dict[str, str] | None = None) -> pd.DataFrame:
        at_ms = int(time.time() * 1000) if at_ms is None else at_ms
        raw = self._raw(metric, at_ms - int(lookback_s * 1000) + 1, at_ms, match)
        if raw.empty:
            return raw.drop(columns="series_id")
        newest = raw.sort_values("t_ms", kind="stable").groupby("series_id").tail(1)
        return newest.drop(columns="series_id").reset_index(drop=True)

    def range(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> pd.DataFrame:
        raw = self._raw(metric, start_ms, end_ms, match)
        return raw.sort_values(["series_id", "t_ms"], kind="stable").reset_index(drop=True)

    def range_arrays(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return series_samples(self._raw(metric, start_ms, end_ms, match))

    def metric_names(self) -> list[str]:
        return list(self._get("/api/v1/label/__name__/values", {}))

    def time_bounds(self) -> tuple[int, int] | None:
        raise StoreError(f"{self.kind} does not report the store's time bounds; give the time range explicitly")

    def runs(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        """The runs of each series (`SampleReader.runs`), found in its samples: the server cannot split them at gaps."""
        return runs_of(self.range_arrays(metric, start_ms, end_ms, match))

    def sample_spans(self, metrics: list[str], start_ms: int, end_ms: int) -> dict[str, tuple[int, int]]:
        """The hours holding samples of each metric in [start_ms, end_ms], asked in one range query (`count_over_time` over
        each clock hour at a 1 h step, labelled with its metric): the first hour's start and the last hour's end, ms
        (SampleReader.sample_spans)."""
        first = start_ms // 3_600_000 * 3_600_000
        last = -(-end_ms // 3_600_000) * 3_600_000
        # count_over_time drops the name, so each metric's count is summed alone and labelled with it
        query = " or ".join(f'label_replace(sum(count_over_time({m}[1h])), "metric", "{m}", "", "")' for m in metrics)
        # evaluated 1 ms before each hour's end, a window (t - 1 h, t] is the hour [start, end) exactly
        data = self._get("/api/v1/query_range", {"query": query, "start": f"{(first + 3_600_000 - 1) / 1000:.3f}",
                                                 "end": f"{(last - 1) / 1000:.3f}", "step": "3600"})
        spans = {}
        for result in data["result"]:
            ends = [round(float(t) * 1000) + 1 for t, v in result["values"] if float(v) > 0]
            if ends:
                spans[result["metric"]["metric"]] = (min(ends) - 3_600_000, max(ends))
        return spans

    def sample_generation(self) -> int | None:
        return None  # scraped or imported by others: their writes are not seen here

    def close(self) -> None:
        pass  # one HTTP request per read: nothing is held open


class VictoriaMetricsStore(PromQLStore, SampleWriter):
    """Reads samples as `PromQLStore` does, and takes them on VictoriaMetrics' `/api/v1/import/prometheus`."""

    kind = "VictoriaMetrics"

    def __init__(self, base_url: str, url: str, timeout_s: float = 60.0):
        super().__init__(base_url, url, timeout_s)
        self._keys: list[SeriesKey] = []
        self._ids: dict[SeriesKey, int] = {}

    def register(self, metrics: Texts, labels: Texts) -> np.ndarray:
        return series_ids_from_json(self, metrics, labels)

    def series_ids(self, keys: list[SeriesKey]) -> np.ndarray:
        for k in keys:
            if k not in self._ids:
                self._ids[k] = len(self._keys)
                self._keys.append(k)
        return np.fromiter((self._ids[k] for k in keys), dtype=np.int64, count=len(keys))

    def append(self, series_ids: np.ndarray, t_ms: np.ndarray, values: np.ndarray) -> None:
        t_ms = np.broadcast_to(np.asarray(t_ms, dtype=np.int64), np.shape(series_ids))
        texts = [f"{m}{{{label_text(dict(labels))}}}" for m, labels in self._keys]
        lines = [f"{texts[s]} {format_value(v)} {t}\n" for s, v, t in zip(np.asarray(series_ids).tolist(), np.asarray(values).tolist(), t_ms.tolist())
                 if not math.isnan(v)]  # NaN is not a sample VictoriaMetrics keeps; nothing is lost by skipping it
        for i in range(0, len(lines), _IMPORT_BATCH):
            body = "".join(lines[i:i + _IMPORT_BATCH]).encode()
            request = urllib.request.Request(f"{self.base_url}/api/v1/import/prometheus", data=body, method="POST", headers=self._headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                    r.read()
            except (OSError, urllib.error.HTTPError) as e:
                hint = f"; {_CREDENTIALS_HINT}" if isinstance(e, urllib.error.HTTPError) and e.code == 401 else ""
                raise StoreError(f"VictoriaMetrics at {self.shown} refused the import: {e}{hint}") from None

    def mark_stale(self, series_ids: np.ndarray, t_ms: int) -> None:
        pass  # scrapers write their own stale markers (vmagent as Prometheus does); imported history has none to add

    def range_arrays(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        """The raw samples from `/api/v1/export`, whose answer is one JSON line per series (its labels, then all its
        values and timestamps). The answer is read `_EXPORT_CHUNK` bytes at a time and each run of whole lines is
        parsed by Arrow's JSON reader (C++, on every core) straight into NumPy arrays: no Python object per sample,
        and no more than two chunks of text held, however long the range. Every sample comes back as
        VictoriaMetrics holds it, so the figures computed from them are those from the embedded store. The vmselect
        path of a cluster serves the same endpoint."""
        return self._window([_selector(metric, match)], start_ms, end_ms)

    def _window(self, selectors: list[str], start_ms: int, end_ms: int) -> SeriesSamples:
        """`range_arrays` of the series any of the selectors selects (one export request, its selectors in the body)."""
        selector = " or ".join(selectors)  # as messages show it
        # 1 ms past the end: VictoriaMetrics (1.79) left a sample exactly at a UTC midnight `end` out of the rollup bench's
        # export (the day's last job-info samples); the parse keeps [start, end]
        params = [*(("match[]", s) for s in selectors), ("start", f"{start_ms / 1000:.3f}"), ("end", f"{(end_ms + 1) / 1000:.3f}")]
        request = urllib.request.Request(f"{self.base_url}/api/v1/export", data=urllib.parse.urlencode(params).encode(), method="POST",
                                         headers={**self._headers, "Content-Type": "application/x-www-form-urlencoded"})
        parts: list[_Export] = []
        try:
            # one chunk is parsed (Arrow, without the GIL) while the next is read: the transfer and the parse overlap,
            # and at most two chunks of text are held
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer, ThreadPoolExecutor(1) as parser:
                parsing: Future[_Export] | None = None
                for text in _line_runs(answer):
                    if parsing is not None:
                        parts.append(parsing.result())
                    parsing = parser.submit(_parse_export, text, start_ms, end_ms)
                if parsing is not None:
                    parts.append(parsing.result())
        except urllib.error.HTTPError as e:
            detail = _CREDENTIALS_HINT if e.code == 401 else e.read().decode(errors="replace")[:300]
            raise StoreError(f"{self.kind} at {self.shown} refused the export of {selector!r}: HTTP {e.code} {detail}") from None
        except (OSError, ValueError) as e:
            raise StoreError(f"{self.kind} at {self.shown} did not answer the export of {selector!r}: {e}") from None
        offsets = np.cumsum([0] + [len(part.labels) for part in parts])
        table = pd.concat([part.labels for part in parts], ignore_index=True) if parts else pd.DataFrame()
        table.insert(0, "series_id", np.arange(len(table), dtype=np.int32))
        series_id = np.concatenate([np.zeros(0, np.int32)] + [part.line + np.int32(o) for part, o in zip(parts, offsets.tolist())])
        t_ms = np.concatenate([np.zeros(0, np.int64)] + [part.t_ms for part in parts])
        value = np.concatenate([np.zeros(0)] + [part.value for part in parts])
        return SeriesSamples(table, series_id, t_ms, value)


def _selector(metric: str, match: dict[str, str] | None) -> str:
    """`metric{label="value",...}`: the series of `metric` whose labels equal each item of `match`."""
    return metric + "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in (match or {}).items()) + "}"


def _result_frame(result: dict, series_id: int) -> pd.DataFrame:
    """One series of a range-vector query's result: `series_id`, its labels (without __name__), `t_ms`, `value`."""
    values = np.array(result["values"], dtype=object)
    return pd.DataFrame({
        "series_id": np.int32(series_id),
        **{k: v for k, v in result["metric"].items() if k != "__name__"},
        "t_ms": np.round(values[:, 0].astype(np.float64) * 1000).astype(np.int64),
        "value": values[:, 1].astype(np.float64),
    })


def _pick(window: SeriesSamples, newest: bool, among: set[LabelKey] | None) -> dict[LabelKey, tuple[int, float]]:
    """{series labels: (t_ms, value)} of each series' newest sample in `window` (`newest`) or its oldest, for the series in
    `among` (None: all). At one instant the largest value, as the counter rules keep it."""
    if not len(window.t_ms):
        return {}
    order = np.lexsort((window.value, window.t_ms if newest else -window.t_ms, window.series_id))
    sid = window.series_id[order]
    last = order[np.append(sid[1:] != sid[:-1], True)]  # the last of each series' run: the largest value at its chosen time
    names = [c for c in window.series.columns if c != "series_id"]
    keys = {int(i): tuple(sorted((k, v) for k, v in zip(names, values) if isinstance(v, str)))
            for i, *values in window.series[["series_id", *names]].itertuples(index=False, name=None)}
    picked = ((keys[int(i)], (int(t), float(v))) for i, t, v in zip(window.series_id[last], window.t_ms[last], window.value[last]))
    return {key: tv for key, tv in picked if among is None or key in among}


_EXPORT_CHUNK = 16 << 20  # bytes of an export answer parsed at a time: bounds the text held, and feeds Arrow's threads
_ARROW_BLOCK = 4 << 20  # bytes per Arrow parse task; a chunk with a longer line is parsed as one block
_SAMPLE_LISTS = pa.schema([("values", pa.list_(pa.float64())), ("timestamps", pa.list_(pa.int64()))])
_VALUES, _TIMESTAMPS = b',"values":[', b'],"timestamps":['


def _line_runs(answer: BinaryIO) -> Iterator[memoryview]:
    """The answer in runs of whole lines, about `_EXPORT_CHUNK` bytes each (more where one line is longer)."""
    rest = b""
    while True:
        block = answer.read(_EXPORT_CHUNK)
        text = rest + block if rest else block
        whole = text.rfind(b"\n") + 1 if block else len(text)  # at the end, a last line without its newline
        if whole:
            yield memoryview(text)[:whole]
        rest = text[whole:]
        if not block:
            return


@dataclass(frozen=True)
class _Export:
    """A run of export lines: each line's labels (`__name__` dropped), and the samples kept (finite, in range)."""

    labels: pd.DataFrame
    line: np.ndarray  # int32, each sample's line in `labels`
    t_ms: np.ndarray  # int64
    value: np.ndarray  # float64


def _parse_export(text: memoryview, start_ms: int, end_ms: int) -> _Export:
    """Whole export lines, parsed by Arrow. VictoriaMetrics writes a NaN (a staleness marker) or an infinity as
    `NaN`, `+Inf`, `-Inf`, which are not JSON: the lines that hold one are parsed on their own (`_parse_lines`)."""
    try:
        labels, counts, t_ms, value = _arrow_lines(text)
    except pa.ArrowInvalid:
        lines = bytes(text).splitlines()
        odd = [b"NaN" in line or b"Inf" in line for line in lines]
        tables = [_arrow_lines(b"\n".join(line for line, o in zip(lines, odd) if not o)),
                  _parse_lines([line for line, o in zip(lines, odd) if o])]
        labels = pd.concat([t[0] for t in tables], ignore_index=True)
        counts, t_ms, value = (np.concatenate([t[i] for t in tables]) for i in (1, 2, 3))
    line = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    keep = np.isfinite(value) & (t_ms >= start_ms) & (t_ms <= end_ms)  # the contract: finite values, [start, end]
    if not keep.all():
        line, t_ms, value = line[keep], t_ms[keep], value[keep]
    return _Export(labels, line, t_ms, value)


def _arrow_lines(text: memoryview | bytes) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, samples per line, times, values) of export lines in JSON, parsed by Arrow on every core."""
    if not len(text):
        return pd.DataFrame(), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    options = pa_json.ParseOptions(explicit_schema=_SAMPLE_LISTS, unexpected_field_behavior="infer")
    try:
        table = pa_json.read_json(pa.py_buffer(text), read_options=pa_json.ReadOptions(block_size=_ARROW_BLOCK), parse_options=options)
    except pa.ArrowInvalid as e:
        if "straddl" not in str(e):
            raise
        # a line longer than a block (a month of one series): one block for the chunk, rather than a scan for the longest line
        table = pa_json.read_json(pa.py_buffer(text), read_options=pa_json.ReadOptions(block_size=len(text) + 1), parse_options=options)
    counts = pc.list_value_length(table["timestamps"]).to_numpy()
    if not np.array_equal(counts, pc.list_value_length(table["values"]).to_numpy()):
        raise ValueError("an export line holds as many values as timestamps, and one here does not")
    t_ms = pc.list_flatten(table["timestamps"]).to_numpy()
    value = pc.list_flatten(table["values"]).to_numpy()
    labels = table.select(["metric"]).flatten().to_pandas() if "metric" in table.column_names else pd.DataFrame(index=range(len(counts)))
    labels.columns = [c.removeprefix("metric.") for c in labels.columns]
    return labels.drop(columns="__name__", errors="ignore"), counts, t_ms, value


def _parse_lines(lines: list[bytes]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """`_arrow_lines` for lines that hold VictoriaMetrics' `NaN`, `+Inf` or `-Inf`: labels by `json`, numbers by
    NumPy's text conversion (Python's float(), which reads all three)."""
    labels, counts, times, values = [], [], [], []
    for line in lines:
        body = line[len(b'{"metric":'):]
        v, t = body.index(_VALUES), body.index(_TIMESTAMPS)
        labels.append(json.loads(body[:v]))
        values.append(np.array(body[v + len(_VALUES):t].split(b","), dtype=object).astype(np.float64))
        times.append(np.array(body[t + len(_TIMESTAMPS):body.rindex(b"]")].split(b","), dtype=object).astype(np.int64))
        counts.append(len(times[-1]))
        if len(values[-1]) != counts[-1]:
            raise ValueError("an export line holds as many values as timestamps, and one here does not")
    frame = pd.DataFrame(labels).drop(columns="__name__", errors="ignore")
    return (frame, np.array(counts, dtype=np.int64), np.concatenate([np.zeros(0, np.int64)] + times),
            np.concatenate([np.zeros(0)] + values))
