"""The store interface every part reads and writes through, and `open_store(url)`.

A series is a metric name and its labels; samples are (series, time in ms since the Unix epoch,
value in the metric's base unit). Reads return pandas DataFrames with one column per label, so the
rollups and panels do not care which backend answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:  # the interface's types; importing them here would load pandas into every exporter
    import numpy as np
    import pandas as pd

from aifmon.telemetry.config import DEFAULT_STORE_URL

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
"""(metric name, sorted (label, value) pairs)."""


def series_key(metric: str, labels: dict[str, str]) -> SeriesKey:
    return metric, tuple(sorted(labels.items()))


class StoreError(RuntimeError):
    """A store that cannot be opened, read or written; the message says what to do."""


@dataclass(frozen=True)
class SeriesSamples:
    """A metric's samples as flat arrays, with each series' labels given once (`Store.range_arrays`)."""

    series: pd.DataFrame  # `series_id` and one column per label; one row per series, at least every series in `series_id`
    series_id: np.ndarray  # integer, one per sample
    t_ms: np.ndarray  # int64, ms since the Unix epoch
    value: np.ndarray  # float64, the metric's base unit


def series_samples(frame: pd.DataFrame) -> SeriesSamples:
    """Split a `range` frame (labels on every sample) into per-series labels and flat sample arrays."""
    series = frame.drop(columns=["t_ms", "value"]).drop_duplicates("series_id").reset_index(drop=True)
    return SeriesSamples(series, frame["series_id"].to_numpy(), frame["t_ms"].to_numpy(dtype="int64"),
                         frame["value"].to_numpy(dtype="float64"))


class Store(Protocol):
    """What the collector, rollups, alerts and dashboard need from a time-series store."""

    url: str

    def series_ids(self, keys: list[SeriesKey]) -> np.ndarray:
        """Ids for these series, registering new ones durably."""

    def append(self, series_ids: np.ndarray, t_ms: np.ndarray, values: np.ndarray) -> None:
        """Write samples; when this returns, they are on disk."""

    def mark_stale(self, series_ids: np.ndarray, t_ms: int) -> None:
        """Record that these series stopped at `t_ms` (their target went down, or they left its output):
        `latest` no longer returns them, however long its lookback. Backends that track staleness
        themselves (Prometheus) ignore this."""

    def latest(self, metric: str, at_ms: int | None = None, lookback_s: float = 300.0,
               match: dict[str, str] | None = None) -> pd.DataFrame:
        """Newest sample per series of `metric` within `lookback_s` before `at_ms` (default: now).

        `match` keeps only series whose labels equal each of its items. Columns: one per label, `t_ms`, `value`.
        """

    def range(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> pd.DataFrame:
        """Every sample of `metric` with start_ms <= t_ms <= end_ms, sorted by series then time.

        `match` as for `latest`. Columns: `series_id`, one per label, `t_ms`, `value`.
        """

    def range_arrays(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        """The samples `range` returns, in no particular order, with labels once per series instead of on every
        sample: the read for millions of samples (the energy rollups), which skips the sort and the label copies."""

    def replace_rows(self, table: str, window_start_ms: int, rows: pd.DataFrame) -> None:
        """Atomically replace the rows of derived table `table` (rollup results) for one window.

        `rows` must carry a `window_start_ms` column equal to `window_start_ms`.
        """

    def read_rows(self, table: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Rows of derived table `table` whose window starts in [start_ms, end_ms); empty if there is none."""

    def time_bounds(self) -> tuple[int, int] | None:
        """(oldest, newest) sample time in ms, or None when the store is empty."""

    def metric_names(self) -> list[str]:
        """Every metric name the store holds."""

    def close(self) -> None:
        """Flush and release the store."""


_PROMQL = {"prometheus+http": "prometheus", "prometheus+https": "prometheus",
           "victoriametrics+http": "victoriametrics", "victoriametrics+https": "victoriametrics"}


def open_store(url: str = DEFAULT_STORE_URL, read_only: bool = False) -> Store:
    """Open the store a `--store` URL names.

    `duckdb:///relative/path.duckdb` or `duckdb:////absolute/path.duckdb` (as SQLAlchemy counts slashes),
    optionally `?raw_days=7&minute_days=400` (retention of raw samples and per-minute aggregates);
    `prometheus+http://host:9090`, `victoriametrics+http://host:8428` (a path prefix is kept, e.g. a
    vmselect `.../select/0/prometheus`).
    """
    parts = urlsplit(url)
    if parts.scheme == "duckdb":
        if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
            raise StoreError(f"store URL {url!r}: expected duckdb:///relative/path.duckdb or duckdb:////absolute/path.duckdb")
        from aifmon.stores.duckdb_store import DuckDBStore, Retention

        options = dict(parse_qsl(parts.query))
        unknown = set(options) - {"raw_days", "minute_days"}
        if unknown:
            raise StoreError(f"store URL {url!r}: unknown option(s) {', '.join(sorted(unknown))}; expected raw_days, minute_days")
        try:
            retention = Retention(**{k: float(v) for k, v in options.items()})
        except ValueError as e:
            raise StoreError(f"store URL {url!r}: {e}") from None
        return DuckDBStore(parts.path[1:], read_only=read_only, url=url, retention=retention)
    if parts.scheme in _PROMQL:
        if not parts.hostname or parts.query:
            raise StoreError(f"store URL {url!r}: expected {parts.scheme}://host:port[/path prefix]")
        from aifmon.stores.promql_store import PromQLStore

        base = f"{parts.scheme.split('+')[1]}://{parts.netloc}{parts.path}"
        return PromQLStore(base, _PROMQL[parts.scheme], url)
    if parts.scheme in ("influxdb+http", "influxdb+https"):
        if read_only:
            raise StoreError(f"store URL {url!r}: the InfluxDB sink is write-only; read through the PromQL backend")
        from aifmon.stores.influx_sink import open_influx_sink

        return open_influx_sink(url)
    raise StoreError(
        f"store URL {url!r} is not understood; expected duckdb:///path.duckdb, prometheus+http://host:9090, "
        "victoriametrics+http://host:8428 or influxdb+http://host:8086?org=O&bucket=B"
    )
