"""A store that reads samples from one backend and keeps rollup rows in another.

For `aifmon rollup schedule` over Prometheus or VictoriaMetrics, which keep no derived tables: the hourly
rows go to PostgreSQL (readable by every process at once), the InfluxDB sink or a DuckDB file.
"""

from __future__ import annotations

import time

import pandas as pd

from aifmon.stores.store import RollupStore, RowStore, RowWriter, SampleReader, SeriesSamples, StoreError


class SplitStore(RollupStore):
    """Samples from one store (a PromQL server), hourly rollup rows to another (the InfluxDB sink, a DuckDB file).

    A PromQL server knows neither its time bounds nor derived tables: the first hour is the earlier of `since_ms` (ms
    since the epoch) and the rows store's first row, and rows a write-only sink cannot give back are recomputed once
    per process (writing them again is idempotent).
    """

    def __init__(self, samples: SampleReader, rows: RowWriter, since_ms: int):
        self.samples, self.rows, self.since_ms = samples, rows, since_ms
        self.reads_are_requests = samples.reads_are_requests
        self.url = f"{samples.url} (rows: {rows.url})"

    def latest(self, metric: str, at_ms: int | None = None, lookback_s: float = 300.0,
               match: dict[str, str] | None = None) -> pd.DataFrame:
        return self.samples.latest(metric, at_ms, lookback_s, match)

    def range(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> pd.DataFrame:
        return self.samples.range(metric, start_ms, end_ms, match)

    def range_arrays(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self.samples.range_arrays(metric, start_ms, end_ms, match)

    def edges(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self.samples.edges(metric, start_ms, end_ms, match)

    def runs(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self.samples.runs(metric, start_ms, end_ms, match)

    def sample_spans(self, metrics: list[str], start_ms: int, end_ms: int) -> dict[str, tuple[int, int]]:
        return self.samples.sample_spans(metrics, start_ms, end_ms)

    def metric_names(self) -> list[str]:
        return self.samples.metric_names()

    def sample_generation(self) -> int | None:
        return self.samples.sample_generation()

    def time_bounds(self) -> tuple[int, int] | None:
        """The samples store's bounds where it knows them (DuckDB). A PromQL server does not say: from the earlier of
        `since_ms` and the first row the rows store holds (the months a dashboard lists), to now."""
        try:
            return self.samples.time_bounds()
        except StoreError:
            first = self.first_window_ms()
            return min(self.since_ms, first) if first is not None else self.since_ms, int(time.time() * 1000)

    def first_window_ms(self) -> int | None:
        return self.rows.first_window_ms() if isinstance(self.rows, RowStore) else None

    def read_rows(self, table: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        if isinstance(self.rows, RowStore):
            return self.rows.read_rows(table, start_ms, end_ms)
        return pd.DataFrame()  # a write-only sink gives nothing back: the hours are computed again

    def replace_rows(self, table: str, window_start_ms: int, rows: pd.DataFrame) -> None:
        self.rows.replace_rows(table, window_start_ms, rows)

    def close(self) -> None:
        self.rows.close()
        self.samples.close()
