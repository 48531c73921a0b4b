"""A store that reads samples from one backend and keeps rollup rows in another.

For `aifmon rollup schedule` over Prometheus or VictoriaMetrics, which keep no derived tables: the hourly
rows go to the InfluxDB sink or a DuckDB file.
"""

from __future__ import annotations

import time

import pandas as pd

from aifmon.stores.store import Store, StoreError


class SplitStore:
    """Samples from one store (a PromQL server), hourly rollup rows to another (the InfluxDB sink, a DuckDB file).

    A PromQL server knows neither its time bounds nor derived tables: the first hour is `since_ms`, and
    rows a write-only sink cannot give back are recomputed once per process (writing them again is idempotent).
    """

    def __init__(self, samples: Store, rows: Store, since_ms: int):
        self.samples, self.rows, self.since_ms = samples, rows, since_ms
        self.url = f"{samples.url} (rows: {rows.url})"

    def __getattr__(self, name: str):
        return getattr(self.samples, name)  # latest, range, metric_names: the samples' store

    def time_bounds(self) -> tuple[int, int]:
        return self.since_ms, int(time.time() * 1000)

    def read_rows(self, table: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        try:
            return self.rows.read_rows(table, start_ms, end_ms)
        except StoreError:  # a write-only sink
            return pd.DataFrame()

    def replace_rows(self, table: str, window_start_ms: int, rows: pd.DataFrame) -> None:
        self.rows.replace_rows(table, window_start_ms, rows)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.rows.close()
        self.samples.close()
