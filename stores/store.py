"""The stores' capabilities, and `open_store(url)`.

A series is a metric name and its labels; samples are (series, time in ms since the Unix epoch, value in
the metric's base unit). Reads return pandas DataFrames with one column per label, so the rollups and
panels do not care which backend answered.

A backend declares what it can do by subclassing the capabilities it has, so `isinstance` is the check and
mypy sees the types:

| backend                         | SampleWriter | SampleReader | RowWriter | RowStore |
|---------------------------------|--------------|--------------|-----------|----------|
| DuckDBStore (`duckdb:///`)      | yes          | yes          | yes       | yes      |
| PromQLStore (Prometheus)        |              | yes          |           |          |
| VictoriaMetricsStore            | yes          | yes          |           |          |
| InfluxSink (`influxdb+http://`) | yes          |              | yes       |          |
| SplitStore                      |              | yes          | yes       | yes      |

A function types its parameter with the capability it needs; where rollup rows are optional (a PromQL
server keeps none, so figures come from the samples) it checks `isinstance(store, RowStore)`. A command
asks `open_store(url, needs=...)` for what it needs, and a store that lacks it is a `StoreConfigError`
saying what to configure instead. `StoreError` means only that a store failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Self, TypeVar, overload
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:  # the interface's types; importing them here would load pandas into every exporter
    import numpy as np
    import pandas as pd

    from aifmon.stores.texts import Texts

from aifmon.telemetry.config import DEFAULT_STORE_URL
from aifmon.telemetry.errors import UserError
from aifmon.telemetry.redact import redact_url

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
"""(metric name, sorted (label, value) pairs)."""


def series_key(metric: str, labels: dict[str, str]) -> SeriesKey:
    return metric, tuple(sorted(labels.items()))


class StoreError(RuntimeError):
    """A store that failed to open, read or write (unreachable, locked, disk full); the message says what to do."""


class StoreHeldError(StoreError):
    """An embedded store another process holds open (DuckDB admits one); `path` is the store's file."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class StoreConfigError(UserError):
    """A store that cannot be used as configured: its URL (scheme, path, option, a token in it), its token setting,
    or a capability the command needs that it lacks; the message says what to configure instead."""


@dataclass(frozen=True)
class SeriesSamples:
    """A metric's samples as flat arrays, with each series' labels given once (`SampleReader.range_arrays`)."""

    series: pd.DataFrame  # `series_id` and one column per label; one row per series, at least every series in `series_id`
    series_id: np.ndarray  # integer, one per sample
    t_ms: np.ndarray  # int64, ms since the Unix epoch
    value: np.ndarray  # float64, the metric's base unit

    @staticmethod
    def empty(series: pd.DataFrame | None = None) -> SeriesSamples:
        """No samples (of `series`, default: no series)."""
        import numpy as np
        import pandas as pd

        series = pd.DataFrame({"series_id": np.zeros(0, np.int32)}) if series is None else series
        return SeriesSamples(series, np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0))


def series_samples(frame: pd.DataFrame) -> SeriesSamples:
    """Split a `range` frame (labels on every sample) into per-series labels and flat sample arrays of the finite
    values (the contract of `SampleReader.range_arrays`)."""
    import numpy as np

    series = frame.drop(columns=["t_ms", "value"]).drop_duplicates("series_id").reset_index(drop=True)
    value = frame["value"].to_numpy(dtype="float64")
    finite = np.isfinite(value)
    return SeriesSamples(series, frame["series_id"].to_numpy()[finite], frame["t_ms"].to_numpy(dtype="int64")[finite],
                         value[finite])


RUN_GAP_MS = 120_000
"""Samples of an info series (value 1 while a job holds a GPU) no further apart than this are one run: a missed scrape or
two at 15-60 s, or one minute's aggregate to the next after compaction."""


def runs_of(samples: SeriesSamples, gap_ms: int = RUN_GAP_MS) -> SeriesSamples:
    """The runs of each series' samples above 0 (`SampleReader.runs`), from its samples: maximal chains no more than
    `gap_ms` apart, as one item each whose `t_ms` is the chain's first sample and `value` its last (ms)."""
    import numpy as np

    keep = samples.value > 0
    sid, t = np.asarray(samples.series_id, dtype=np.int64)[keep], samples.t_ms[keep]
    order = np.lexsort((t, sid))
    sid, t = sid[order], t[order]
    new = np.ones(len(t), dtype=bool)
    new[1:] = (sid[1:] != sid[:-1]) | (t[1:] - t[:-1] > gap_ms)
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(t))[:len(first)] - 1
    return SeriesSamples(samples.series, sid[first], t[first], t[last].astype(np.float64))


def spans_within(bounds: tuple[int, int] | None, held: set[str], metrics: list[str], start_ms: int,
                 end_ms: int) -> dict[str, tuple[int, int]]:
    """`SampleReader.sample_spans` from a store's time bounds and the metrics it holds (a superset: every metric gets the
    store's bounds, clipped to the range)."""
    if bounds is None or bounds[1] < start_ms or bounds[0] > end_ms:
        return {}
    return {m: (max(bounds[0], start_ms), min(bounds[1], end_ms)) for m in metrics if m in held}


EDGE_FIRST_WINDOW_MS = 120_000
"""`SampleReader.edges`' first search window on each side, ms: two scrape intervals of a slow (1 min) exporter."""
EDGE_GROWTH = 8
"""How much each further search window of `edges` is longer than the one before: a silence of d ms is found in about
log8(d / 2 min) reads whose spans add up to at most 8/7 of the last, itself under 8 d."""


def range_with_edges(store: SampleReader, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
    """`range_arrays` over [start_ms, end_ms] and the samples of `edges` outside it: every sample a rollup needs to count
    the range exactly, however long a meter was silent across its ends (`concat_samples`: group series by labels)."""
    inside = store.range_arrays(metric, start_ms, end_ms, match)
    edge = store.edges(metric, start_ms, end_ms, match)
    outside = (edge.t_ms < start_ms) | (edge.t_ms > end_ms)  # one at start_ms or end_ms is in `inside` already
    if not outside.any():
        return inside
    return concat_samples([inside, SeriesSamples(edge.series, edge.series_id[outside], edge.t_ms[outside], edge.value[outside])])


def concat_samples(parts: list[SeriesSamples]) -> SeriesSamples:
    """Several reads as one: their series listed one after the other, each read's ids shifted past the previous ones' (ids
    of different reads are not comparable), so a series that several reads return is listed once per read: callers
    group series by their labels, never by id."""
    import numpy as np
    import pandas as pd

    series, ids, shift = [], [], 0
    for part in parts:
        series.append(part.series.assign(series_id=part.series["series_id"].to_numpy(dtype=np.int64) + shift))
        ids.append(np.asarray(part.series_id, dtype=np.int64) + shift)
        shift += int(part.series["series_id"].max()) + 1 if len(part.series) else 0
    return SeriesSamples(pd.concat(series, ignore_index=True), np.concatenate(ids), np.concatenate([p.t_ms for p in parts]),
                         np.concatenate([p.value for p in parts]))


class Store:
    """What every store has: the URL it was opened from, and `close`; also a context manager that closes it.

    The capabilities below are plain classes whose methods raise NotImplementedError, not abstract ones: mypy
    refuses an abstract class where `type[...]` is expected, as in `open_store(needs=...)`.
    tests/test_store.py checks that every backend implements each method of the capabilities it declares.
    """

    url: str
    ability: ClassVar[str] = "be opened"
    """What a store of this capability can do, in words (the error for a store that lacks it)."""

    @classmethod
    def instead(cls, capability: type[Store]) -> str:
        """What to configure when a command needs `capability` and this backend lacks it."""
        return "use a duckdb:/// store, which has every capability"

    def close(self) -> None:
        """Flush and release the store."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SampleWriter(Store):
    """Takes samples: the collector, `aifmon store import` and the backfill write through it."""

    ability = "take samples"

    def series_ids(self, keys: list[SeriesKey]) -> np.ndarray:
        """Ids for these series, registering new ones durably."""
        raise NotImplementedError

    def register(self, metrics: Texts, labels: Texts) -> np.ndarray:
        """Ids for the series the collector parsed (metric names; labels as canonical JSON, `json.dumps(labels,
        sort_keys=True)`), one per item, registering new ones: what ingest calls for a scrape's new series."""
        raise NotImplementedError

    def append(self, series_ids: np.ndarray, t_ms: np.ndarray, values: np.ndarray) -> None:
        """Write samples; when this returns, they are on disk."""
        raise NotImplementedError

    def mark_stale(self, series_ids: np.ndarray, t_ms: int) -> None:
        """Record that these series stopped at `t_ms` (their target went down, or they left its output):
        `latest` no longer returns them, however long its lookback. Backends that track staleness
        themselves (Prometheus) ignore this."""
        raise NotImplementedError


class SampleReader(Store):
    """Gives samples back: the rollups, alerts, dashboard and `aifmon store export` read through it."""

    ability = "give samples back"
    reads_are_requests: bool = False  # each read a request to a server (PromQL): fewer, larger reads cost less

    def latest(self, metric: str, at_ms: int | None = None, lookback_s: float = 300.0,
               match: dict[str, str] | None = None) -> pd.DataFrame:
        """Newest sample per series of `metric` within `lookback_s` before `at_ms` (default: now).

        `match` keeps only series whose labels equal each of its items. Columns: one per label, `t_ms`, `value`.
        """
        raise NotImplementedError

    def range(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> pd.DataFrame:
        """Every sample of `metric` with start_ms <= t_ms <= end_ms, sorted by series then time.

        `match` as for `latest`. Columns: `series_id`, one per label, `t_ms`, `value`.
        """
        raise NotImplementedError

    def range_arrays(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        """The samples `range` returns whose values are finite, in no particular order, with labels once per series
        instead of on every sample: the read for millions of samples (the energy rollups), which skips the sort and the
        label copies. NaN and +-Inf are left out on every backend: such a value is no measurement (an exporter's NaN
        for a field its GPU lacks), and left out, the counter rules bridge it exactly where kept it would make every
        energy sum NaN."""
        raise NotImplementedError

    def edges(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        """The samples that bracket [start_ms, end_ms] however long the silence around it: for every series of `metric`
        (matching `match`, as for `latest`), its last finite sample at or before `start_ms` and its first finite sample
        at or after `end_ms` (0, 1 or 2 samples per series; a sample at exactly `start_ms` or `end_ms` is also one that
        `range_arrays` returns). Same shape as `range_arrays`, whose series ids are not comparable with these.

        What a rollup over the range needs to count the intervals that straddle its ends exactly. Each backend searches
        outward from each end in windows that grow `EDGE_GROWTH`-fold from `EDGE_FIRST_WINDOW_MS`, only for the series
        still lacking a sample on that side, and never past what it knows of each series' extent (docs/stores.md):
        a series that stopped weeks before the range costs one small read, not a scan of the weeks since."""
        raise NotImplementedError

    def runs(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        """The runs of each series of an info metric (`aif_gpu_job_info`: 1 while a job holds a GPU) in [start_ms,
        end_ms]: maximal chains of its samples above 0 no more than `RUN_GAP_MS` apart, one item each, whose `t_ms` is
        the chain's first sample and `value` its last (ms). What job attribution needs, at a cost that grows with jobs:
        a store that can aggregate (DuckDB) sends runs, not samples; others find them in their samples (`runs_of`)."""
        raise NotImplementedError

    def time_bounds(self) -> tuple[int, int] | None:
        """(oldest, newest) sample time in ms, or None when the store is empty."""
        raise NotImplementedError

    def sample_spans(self, metrics: list[str], start_ms: int, end_ms: int) -> dict[str, tuple[int, int]]:
        """Per metric of `metrics` that has samples between start_ms and end_ms: (oldest, newest) time in ms, to the hour
        or wider; a metric without any is left out. What a reader of a long range needs to skip its empty hours and the
        metrics a site does not have. A store that knows its bounds answers from them (`spans_within`); a PromQL server,
        which does not say them, asks."""
        raise NotImplementedError

    def metric_names(self) -> list[str]:
        """Every metric name the store holds."""
        raise NotImplementedError

    def sample_generation(self) -> int | None:
        """A number that changes whenever what the store's samples say may have changed (samples or staleness markers
        written, minutes compacted, retention applied), counted after the change is visible to readers: the key of a
        cache of figures computed from samples, read before the samples are. None for a store others write to (a PromQL
        server), whose changes this process cannot see."""
        raise NotImplementedError


class RowWriter(Store):
    """Takes derived rows (rollup results), one window at a time."""

    ability = "keep rollup rows"

    def replace_rows(self, table: str, window_start_ms: int, rows: pd.DataFrame) -> None:
        """Atomically replace the rows of derived table `table` (rollup results) for one window.

        `rows` must carry a `window_start_ms` column equal to `window_start_ms`.
        """
        raise NotImplementedError


class RowStore(RowWriter):
    """Keeps derived rows and gives them back: reports and budgets read the hourly rollups from it."""

    ability = "keep rollup rows and give them back"

    def read_rows(self, table: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Rows of derived table `table` whose window starts in [start_ms, end_ms); empty if there is none."""
        raise NotImplementedError

    def first_window_ms(self) -> int | None:
        """The earliest window start of any derived table, ms; None when there are no rows."""
        raise NotImplementedError


class RollupStore(SampleReader, RowStore):
    """Gives samples back and keeps the rows computed from them: what the hourly rollups run over."""

    ability = "give samples back and keep the rollup rows computed from them"


C = TypeVar("C", bound=Store)


def _lacks(backend: type[Store], url: str, capability: type[Store]) -> str:
    return f"store {redact_url(url)} cannot {capability.ability}: {backend.instead(capability)}"


_PROMQL = ("prometheus+http", "prometheus+https", "victoriametrics+http", "victoriametrics+https")


@overload
def open_store(url: str = ..., read_only: bool = ...) -> Store: ...
@overload
def open_store(url: str = ..., read_only: bool = ..., *, needs: type[C]) -> C: ...
def open_store(url: str = DEFAULT_STORE_URL, read_only: bool = False, *, needs: type[Store] = Store) -> Store:
    """Open the store a `--store` URL names, as the capability `needs` (checked before anything is opened).

    `duckdb:///relative/path.duckdb` or `duckdb:////absolute/path.duckdb` (as SQLAlchemy counts slashes),
    optionally `?raw_days=7&minute_days=400` (retention of raw samples and per-minute aggregates);
    `prometheus+http://host:9090`, `victoriametrics+http://host:8428` (a path prefix is kept, e.g. a
    vmselect `.../select/0/prometheus`); `influxdb+http://host:8086?org=O&bucket=B` (write-only); `postgresql://host:5432/database` (rollup rows only: a
    `--rows-store`).
    Credentials never go in the URL (`user:pass@` is refused: URLs end up in logs and process lists); a
    Prometheus or VictoriaMetrics behind basic auth takes them from the environment (see `promql_store`).
    A URL that does not parse, or a store without `needs`, raises StoreConfigError; its messages show the URL
    redacted (`redact_url`).
    """
    backend, opener = _backend(url, read_only)
    if not issubclass(backend, needs):
        raise StoreConfigError(_lacks(backend, url, needs))
    return opener()


def _backend(url: str, read_only: bool) -> tuple[type[Store], Callable[[], Store]]:
    """The backend class a URL names, and how to open it; the URL is checked, nothing is opened yet."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:  # an unclosed [IPv6 address, a port that is no number or above 65535
        raise StoreConfigError(f"store URL {shown!r}: {e} (a port is a number from 1 to 65535)") from None
    if port == 0:
        raise StoreConfigError(f"store URL {shown!r}: port 0; a port is a number from 1 to 65535")
    if parts.scheme == "duckdb":
        if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
            raise StoreConfigError(f"store URL {shown!r}: expected duckdb:///relative/path.duckdb or duckdb:////absolute/path.duckdb")
        from aifmon.stores.duckdb_store import DuckDBStore, Retention

        options = dict(parse_qsl(parts.query))
        unknown = set(options) - {"raw_days", "minute_days"}
        if unknown:
            raise StoreConfigError(f"store URL {shown!r}: unknown option(s) {', '.join(sorted(unknown))}; expected raw_days, minute_days")
        try:
            retention = Retention(**{k: float(v) for k, v in options.items()})
        except ValueError as e:
            raise StoreConfigError(f"store URL {shown!r}: {e}") from None
        return DuckDBStore, lambda: DuckDBStore(parts.path[1:], read_only=read_only, url=url, retention=retention)
    if parts.scheme in _PROMQL:
        from aifmon.stores.promql_store import PASSWORD_ENV, PASSWORD_FILE_ENV, USERNAME_ENV, PromQLStore, VictoriaMetricsStore

        if parts.username is not None or parts.password is not None:
            raise StoreConfigError(f"store URL {shown!r}: credentials never go in the URL (it is shown in logs and process lists); "
                                   f"set {USERNAME_ENV}, and {PASSWORD_FILE_ENV} naming a file that holds the password (or {PASSWORD_ENV})")
        if not parts.hostname or parts.query:
            raise StoreConfigError(f"store URL {shown!r}: expected {parts.scheme}://host:port[/path prefix]")

        server, _, protocol = parts.scheme.partition("+")
        backend = VictoriaMetricsStore if server == "victoriametrics" else PromQLStore
        base = f"{protocol}://{parts.netloc}{parts.path}"
        return backend, lambda: backend(base, url)
    if parts.scheme in ("influxdb+http", "influxdb+https"):
        from aifmon.stores.influx_sink import InfluxSink, open_influx_sink

        if read_only:
            raise StoreConfigError(f"store URL {shown!r}: {InfluxSink.instead(SampleReader)}")
        return InfluxSink, lambda: open_influx_sink(url)
    if parts.scheme == "postgresql":
        from aifmon.stores.postgres_store import PostgresRowStore, open_postgres

        return PostgresRowStore, lambda: open_postgres(url, parts)
    raise StoreConfigError(
        f"store URL {shown!r} is not understood; expected duckdb:///path.duckdb, prometheus+http://host:9090, "
        "victoriametrics+http://host:8428, influxdb+http://host:8086?org=O&bucket=B or postgresql://host:5432/database"
    )


def series_ids_from_json(store: SampleWriter, metrics: Texts, labels: Texts) -> np.ndarray:
    """`SampleWriter.register` for a backend that keeps its series elsewhere (a server): each series decoded into a
    Python key for `series_ids`, one object per series."""
    import json

    return store.series_ids([(m, tuple(json.loads(text).items())) for m, text in zip(metrics.to_pylist(), labels.to_pylist())])
