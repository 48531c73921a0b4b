"""The embedded store: one DuckDB file.

Tables:
- `series(id, metric, labels)`: one row per series; `labels` is canonical JSON (sorted keys).
- `samples(series_id, t_ms, value)`: raw samples, appended in time order, so DuckDB's per-row-group
  min/max on `t_ms` lets range and latest reads skip everything outside their window.
- `samples_1m(series_id, t_ms, last_t_ms, last, avg, min, max, count)`: per-minute aggregates
  (t_ms = minute start), kept longer than raw samples. A read that reaches back past the raw samples
  gets one sample per minute, stamped with the time of the minute's last raw sample: `last` for
  counters — so counter increments, and every energy figure, stay exact — and `avg` for gauges. They are
  computed over finite values only: one NaN sample (stored as a value, as Prometheus does) would make the
  minute's `avg` NaN.
  Samples of one scrape share that stamp, so job info still joins energy on time. Totals stay exact;
  a range edge that falls inside a downsampled minute is resolved to that minute.
- `series_extent(series_id, first_t_ms, last_t_ms)`: where each series' samples older than `extents_until_ms` (in
  `store_state`) lie: `first_t_ms` at or before its first, `last_t_ms` its last. Kept by `compact` (from the minutes
  it aggregates, before their raw samples can go) and by `append` (samples written into minutes already aggregated,
  an import of history); samples from `extents_until_ms` on are few (those compaction has not reached yet) and are
  read directly. `edges` searches each series only inside them: a meter that stopped weeks before a range, or
  started weeks after it, costs one read of the window around that time, not a scan of the weeks between.
- `store_state(key, value)`: how far downsampling (`downsampled_until_ms`) and the extents (`extents_until_ms`) have got.
- `stale(series_id, t_ms)`: staleness markers — a series that stopped (its target went down, or it
  left the exposition) is not "latest" any more from that time, as Prometheus' stale markers do.

Retention (`compact`, run periodically): raw samples are kept `raw_days`, minute aggregates
`minute_days`; both come from the store URL (`duckdb:///data/aifmon.duckdb?raw_days=7&minute_days=400`).

Every write is one transaction (writes inside `transaction()` are one together); DuckDB syncs its write-ahead log on commit, so a sample whose
`append` returned survives a kill. One process holds the file for writing; readers in the same
process share it (the dashboard reads while the collector writes).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from aifmon.stores.store import (
    EDGE_FIRST_WINDOW_MS,
    EDGE_GROWTH,
    RUN_GAP_MS,
    RollupStore,
    SampleWriter,
    SeriesKey,
    SeriesSamples,
    StoreConfigError,
    StoreError,
    StoreHeldError,
    spans_within,
)
from aifmon.stores.texts import Texts
from aifmon.telemetry.schema import is_counter

if TYPE_CHECKING:  # pandas and Arrow only where samples are read back: the collector and store import never load them
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

def _derived_table(table: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", table):
        raise ValueError(f"derived table name {table!r} must be lower_snake_case")
    return f"derived_{table}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, metric VARCHAR NOT NULL, labels VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS samples (series_id INTEGER NOT NULL, t_ms BIGINT NOT NULL, value DOUBLE NOT NULL);
CREATE TABLE IF NOT EXISTS samples_1m (series_id INTEGER NOT NULL, t_ms BIGINT NOT NULL, last_t_ms BIGINT NOT NULL,
                                       last DOUBLE, avg DOUBLE, min DOUBLE, max DOUBLE, count INTEGER);
CREATE TABLE IF NOT EXISTS store_state (key VARCHAR PRIMARY KEY, value BIGINT);
CREATE TABLE IF NOT EXISTS series_extent (series_id INTEGER NOT NULL, first_t_ms BIGINT NOT NULL, last_t_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS stale (series_id INTEGER NOT NULL, t_ms BIGINT NOT NULL);
"""
_MINUTE_MS = 60_000
_SETTLE_MS = 120_000  # downsample a minute only once it is this old: late scrapes of it are in
_MERGE_EXTENTS = """MERGE INTO series_extent e USING ({fresh}) n ON e.series_id = n.series_id
                    WHEN MATCHED THEN UPDATE SET first_t_ms = least(e.first_t_ms, n.f), last_t_ms = greatest(e.last_t_ms, n.l)
                    WHEN NOT MATCHED THEN INSERT VALUES (n.series_id, n.f, n.l)"""
_BEFORE, _AFTER = 0, 1  # the two sides `edges` searches
# What the collector's process runs (writes, compaction) keeps pandas (47 MB) out of it. DuckDB's Python client
# imports pandas to scan an Arrow table (through pyarrow.dataset) and to bind any query parameter, so writes hand it
# NumPy columns, read in place by the variable's name, and inline their numbers as int() literals. DuckDB reads a
# NumPy NaN as NULL; no NumPy float is NULL, so NULL turns back into the NaN it was (Prometheus stores NaN as a value;
# staleness is the `stale` table).
_VALUE = "coalesce(value, 'NaN'::DOUBLE)"
_TEXT_BYTES = 16 * 2**20  # the largest NumPy array of series texts `register` hands DuckDB at once


def _fixed_width(texts: Texts) -> np.ndarray:
    """ASCII `texts` as a NumPy array of fixed-width strings (UTF-32, as wide as the longest): each byte widened in
    place of its character. Raises ValueError on a byte that is not ASCII."""
    data, lengths = texts.bytes(), texts.lengths()
    if data.size and data.max() >= 128:
        raise ValueError("series texts are ASCII (metric names, canonical JSON labels); got other bytes")
    width = max(1, int(lengths.max(initial=0)))
    chars = np.zeros((len(texts), width), np.uint32)
    chars[np.arange(width) < lengths[:, None]] = data  # row by row, each text's bytes then zeros (NumPy's padding)
    return chars.view(f"<U{width}").ravel()


@dataclass(frozen=True)
class Retention:
    """How long raw samples and per-minute aggregates are kept, in days."""

    raw_days: float = 7.0
    minute_days: float = 400.0

    def __post_init__(self) -> None:
        if not 0 < self.raw_days <= self.minute_days:
            raise ValueError(f"retention: need 0 < raw_days ({self.raw_days}) <= minute_days ({self.minute_days})")


class DuckDBStore(SampleWriter, RollupStore):
    """Store backed by a DuckDB file (see module docstring): every capability."""

    ability = "be the embedded store (a duckdb:/// file), with every capability"

    def __init__(self, path: str | Path, read_only: bool = False, url: str | None = None, retention: Retention = Retention()):
        self.path = Path(path)
        self.url = url or f"duckdb:///{path}"
        self.read_only = read_only
        self.retention = retention
        if read_only and not self.path.exists():
            raise StoreConfigError(f"store {self.path} does not exist; run `aifmon collect` (or `make up`) to create it")
        try:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(self.path), read_only=read_only)
        except (duckdb.IOException, OSError) as e:
            if "lock" in str(e).lower():
                raise StoreHeldError(
                    f"store {self.path} is held by another aifmon process ({e}); stop it, or run the dashboard and "
                    "rollups inside it (`aifmon up`)", str(self.path)
                ) from None
            raise StoreError(f"cannot open store {self.path}: {e}") from None
        if not read_only:
            self._con.execute(_SCHEMA)
        self._write_lock = threading.RLock()  # re-entered by the writes inside `transaction()`
        self._transaction: duckdb.DuckDBPyConnection | None = None  # the cursor of the open `transaction()`
        self._closed = False
        # Series ids are looked up in the series table itself (a hash join in DuckDB), not in a map held here: a
        # factory's 400,000 series would cost 130 MB of Python strings. The series index of each scrape target keeps
        # the texts it has seen, so the table is asked only about new ones.
        self._metrics: set[str] = {m for (m,) in self._con.execute("SELECT DISTINCT metric FROM series").fetchall()}
        self._generation = 0  # changes whenever series are added: the key of `_labels_cache`
        self._sample_writes = 0  # `sample_generation`
        self._extent_at: tuple[int, tuple[int | None, int | None, int | None]] | None = None  # `_extent`, by generation
        self._labels_cache: dict[str, tuple[int, pd.DataFrame]] = {}
        with self._cursor() as cur:
            self._extents_until = _state(cur, "extents_until_ms")  # None until the first compaction builds the extents

    def limit_memory(self, memory_mb: float, threads: int | None = None) -> None:
        """Cap DuckDB's buffer pool at `memory_mb` MB (its default is 80 % of the machine's memory) and, if given, its worker
        threads. Beyond the cap DuckDB spills to temporary files beside the store and evicts cached blocks: where the
        embedded store shares a small machine with the rest of the stack (`aifmon up`), its footprint stays bounded.
        Its allocator (jemalloc) is also told to return freed memory once a task has used an eighth of the cap, rather
        than at its default 128 MB, which alone would be half of a 256 MB cap kept after every large query."""
        if memory_mb <= 0 or (threads is not None and threads < 1):
            raise ValueError(f"DuckDB limits: need memory_mb > 0 (got {memory_mb}) and threads >= 1 (got {threads})")
        self._con.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
        self._con.execute(f"SET allocator_flush_threshold = '{max(1, int(memory_mb / 8))}MB'")
        self._con.execute(f"SET allocator_bulk_deallocation_flush_threshold = '{max(1, int(memory_mb / 4))}MB'")
        if threads is not None:
            self._con.execute(f"SET threads = {int(threads)}")

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of its own for one call: DuckDB connections are not shared across threads, and one
        kept per thread would outlive the store in the dashboard's worker threads."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextmanager
    def _writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The cursor a write goes through (under the write lock): the open transaction's, else one of its own."""
        if self._transaction is not None:
            yield self._transaction
        else:
            with self._cursor() as cur:
                yield cur

    # -- writes --------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make the writes of this thread inside the block (series_ids, append, mark_stale) one transaction: all of them
        are committed when the block ends, none if it raises (the series ids handed out inside are then forgotten too).
        Other threads' writes wait until it ends; DuckDB keeps the uncommitted rows in its buffer pool, spilling to disk,
        so a large import does not have to fit in memory."""
        self._check_writable()
        with self._write_lock, self._cursor() as cur:
            metrics = set(self._metrics)

            def forget() -> None:
                self._metrics = metrics
                self._generation += 1  # labels read inside the transaction may name series that are gone

            cur.execute("BEGIN TRANSACTION")
            self._transaction = cur
            try:
                yield
            except BaseException:
                cur.execute("ROLLBACK")
                forget()
                raise
            finally:
                self._transaction = None
            try:
                cur.execute("COMMIT")
            except duckdb.Error as e:
                forget()
                raise StoreError(f"committing to {self.path} failed, nothing of the transaction was stored: {e}") from None
            finally:
                self._sample_writes += 1  # the writes inside are seen from here on

    def series_ids(self, keys: list[SeriesKey]) -> np.ndarray:
        return self.register(Texts.of([metric for metric, _ in keys]), Texts.of([json.dumps(dict(labels), sort_keys=True) for _, labels in keys]))

    def register(self, metrics: Texts, labels: Texts) -> np.ndarray:
        """Ids (int32) of the series (metric name, labels as canonical JSON: `json.dumps(labels, sort_keys=True)`), one per
        item, registering new ones: `series_ids` of the texts the collector's parser made. Both are ASCII (a metric
        name's grammar, JSON's escapes); other text raises ValueError.

        One hash join against the series table finds the known ones; the others are numbered after the largest id in
        order of first appearance (a series twice in the batch gets one id), inserted, and joined back for their ids:
        the series table is scanned twice per piece, and a first scrape of 400,000 series registers them in about 48
        pieces (the collector's 10,000 at a time, within each 4 MB chunk), not in 400,000 lookups. DuckDB is
        handed the texts as NumPy arrays of fixed-width strings (dtype `str`, read in place, see `_VALUE`), made from
        their bytes without a Python string per text. Such an array takes 4 bytes a character of its longest item
        for every item: a batch is split so that no array is over `_TEXT_BYTES`."""
        longest = int(metrics.lengths().max(initial=0) + labels.lengths().max(initial=0))
        rows = max(1, _TEXT_BYTES // (4 * max(1, longest)))
        return np.concatenate([self._register_piece(_fixed_width(metrics[i:i + rows]), _fixed_width(labels[i:i + rows]))
                               for i in range(0, len(metrics), rows)] or [np.zeros(0, np.int32)])

    def _register_piece(self, metrics: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """`register` of one piece."""
        batch = {"pos": np.arange(len(metrics)), "metric": metrics, "labels": labels}  # SQL below reads it by name
        with self._write_lock, self._writer() as cur:
            found = cur.execute("SELECT coalesce(s.id, 0) id FROM batch b LEFT JOIN series s USING (metric, labels) ORDER BY b.pos").fetchnumpy()
            ids = np.array(found["id"], dtype=np.int32)  # ids start at 1: 0 is a new series
            missing = ids == 0
            if not missing.any():
                return ids
            self._check_writable()
            fresh = {name: column[missing] for name, column in batch.items()}  # SQL reads it by name
            cur.execute("""INSERT INTO series SELECT (SELECT coalesce(max(id), 0) FROM series) + row_number() OVER (ORDER BY first), metric, labels
                           FROM (SELECT metric, labels, min(pos) AS first FROM fresh GROUP BY metric, labels)""")
            ids[missing] = cur.execute("SELECT s.id FROM fresh f JOIN series s USING (metric, labels) ORDER BY f.pos").fetchnumpy()["id"]
            self._metrics.update(fresh["metric"].tolist())
            self._generation += 1
        return ids

    def append(self, series_ids: np.ndarray, t_ms: np.ndarray, values: np.ndarray) -> None:
        self._check_writable()
        ids = np.asarray(series_ids, dtype=np.int32)
        stamps = np.ascontiguousarray(np.broadcast_to(np.asarray(t_ms, dtype=np.int64), ids.shape))
        batch = {"series_id": ids, "t_ms": stamps, "value": np.asarray(values, dtype=np.float64)}  # noqa: F841 - SQL below reads it by name (see `_VALUE`)
        # Samples in minutes the extents already cover (an import of history; live scrapes are newer) widen them here:
        # compaction will not see them again. One comparison per batch otherwise.
        extents_until = self._extents_until
        old = extents_until is not None and len(ids) and int(stamps.min()) < extents_until
        with self._write_lock:
            try:
                with self._writer() as cur:
                    if not old:
                        cur.execute(f"INSERT INTO samples SELECT series_id, t_ms, {_VALUE} FROM batch")
                    else:
                        own = self._transaction is None  # the samples and their extents are stored together, or neither
                        if own:
                            cur.execute("BEGIN TRANSACTION")
                        try:
                            cur.execute(f"INSERT INTO samples SELECT series_id, t_ms, {_VALUE} FROM batch")
                            cur.execute(_MERGE_EXTENTS.format(fresh="SELECT series_id, min(t_ms) f, max(t_ms) l FROM batch "
                                                                    f"WHERE t_ms < {int(extents_until or 0)} AND isfinite(value) GROUP BY series_id"))
                        except duckdb.Error:
                            if own:
                                cur.execute("ROLLBACK")
                            raise
                        if own:
                            cur.execute("COMMIT")
            except duckdb.Error as e:
                hint = " (no room left: free disk space; the samples already stored are intact)" if _is_full(e) else ""
                raise StoreError(f"write to {self.path} failed, nothing of this batch was stored{hint}: {e}") from None
            finally:
                self._sample_writes += 1

    def mark_stale(self, series_ids: np.ndarray, t_ms: int) -> None:
        self._check_writable()
        if not len(series_ids):
            return
        ids = np.asarray(series_ids, dtype=np.int32)
        markers = {"series_id": ids, "t_ms": np.full(len(ids), t_ms, np.int64)}  # noqa: F841 - SQL below reads it by name (see `_VALUE`)
        with self._write_lock, self._writer() as cur:
            try:
                cur.execute("INSERT INTO stale SELECT * FROM markers")
            finally:
                self._sample_writes += 1

    def replace_rows(self, table: str, window_start_ms: int, rows: pd.DataFrame) -> None:
        self._check_writable()
        name = _derived_table(table)
        if not (rows["window_start_ms"] == window_start_ms).all():
            raise ValueError(f"rows for {table} must all have window_start_ms = {window_start_ms}")
        with self._write_lock, self._cursor() as cur:
            exists = _one(cur, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])[0]
            if rows.empty and not exists:
                return  # nothing to replace, and an empty frame carries no column types to create the table from
            cur.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM rows LIMIT 0")
            cur.execute("BEGIN TRANSACTION")
            try:
                cur.execute(f"DELETE FROM {name} WHERE window_start_ms = ?", [window_start_ms])
                cur.execute(f"INSERT INTO {name} BY NAME SELECT * FROM rows")
                cur.execute("COMMIT")
            except duckdb.Error as e:
                cur.execute("ROLLBACK")
                raise StoreError(f"replacing {table} rows in {self.path} failed, the old rows stay: {e}") from None

    def read_rows(self, table: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        name = _derived_table(table)
        with self._cursor() as cur:
            if not _one(cur, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])[0]:
                import pandas as pd

                return pd.DataFrame()
            return cur.execute(
                f"SELECT * FROM {name} WHERE window_start_ms >= ? AND window_start_ms < ? ORDER BY window_start_ms", [start_ms, end_ms]
            ).df()

    def first_window_ms(self) -> int | None:
        with self._cursor() as cur:
            names = [r[0] for r in cur.execute("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'derived_%'").fetchall()]
            firsts = [_one(cur, f'SELECT min(window_start_ms) FROM "{name}"')[0] for name in names]
        firsts = [int(f) for f in firsts if f is not None]
        return min(firsts) if firsts else None

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only")

    # -- reads ---------------------------------------------------------------------------------
    def _series_of(self, metric: str) -> pd.DataFrame:
        """series_id (sorted) and one column per label, for every series of `metric` (cached until new series appear)."""
        known = self._generation
        cached = self._labels_cache.get(metric)
        if cached and cached[0] == known:
            return cached[1]
        # The labels are taken apart by DuckDB and come as Arrow string columns: one Python dict and one string object
        # per label of each series (JAIF's 125,000 throttle series) cost 4x the frame, and the freed small blocks kept
        # the process that much larger after the first read.
        with self._cursor() as cur:
            names = sorted(n for (n,) in cur.execute("SELECT DISTINCT unnest(json_keys(labels)) FROM series WHERE metric = ?",
                                                     [metric]).fetchall())
            picks = "".join(f", json_extract_string(labels, ${i + 2}) AS \"{i}\"" for i in range(len(names)))
            table = cur.execute(f"SELECT id AS series_id{picks} FROM series WHERE metric = $1 ORDER BY id",
                                [metric] + [f'$."{n}"' for n in names]).to_arrow_table()
        frame = table.rename_columns(["series_id", *names]).to_pandas()
        frame["series_id"] = frame["series_id"].astype(np.int32)
        self._labels_cache[metric] = (known, frame)
        return frame

    def _ids_matching(self, metric: str, match: dict[str, str] | None) -> pd.DataFrame:
        """series_id of the series of `metric` whose labels equal every `match` item."""
        return self._series_of(metric).loc[self._matching(metric, match), ["series_id"]]

    def _matching(self, metric: str, match: dict[str, str] | None) -> np.ndarray:
        """Which rows of `_series_of(metric)` have labels equal to every `match` item (bool per series)."""
        series = self._series_of(metric)
        keep = np.ones(len(series), dtype=bool)
        for label, value in (match or {}).items():
            keep &= (series[label] == value).to_numpy(dtype=bool, na_value=False) if label in series else False
        return keep

    def latest(self, metric: str, at_ms: int | None = None, lookback_s: float = 300.0,
               match: dict[str, str] | None = None) -> pd.DataFrame:
        at_ms = int(time.time() * 1000) if at_ms is None else at_ms
        ids = self._ids_matching(metric, match)  # noqa: F841 - SQL below reads it by name (DuckDB replacement scan)
        with self._cursor() as cur:
            found = cur.execute(
                """WITH newest AS (
                       SELECT s.series_id, max(s.t_ms) AS t_ms, arg_max(s.value, s.t_ms) AS value
                       FROM samples s SEMI JOIN ids ON ids.series_id = s.series_id
                       WHERE s.t_ms > ? AND s.t_ms <= ?
                       GROUP BY s.series_id)
                   SELECT n.* FROM newest n ANTI JOIN stale st
                       ON st.series_id = n.series_id AND st.t_ms >= n.t_ms AND st.t_ms <= ?""",
                [at_ms - int(lookback_s * 1000), at_ms, at_ms],
            ).fetchnumpy()
        return self._with_labels(metric, found).drop(columns="series_id")

    def range(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> pd.DataFrame:
        _, found = self._samples(metric, start_ms, end_ms, match, ordered=True, finite=False)
        return self._with_labels(metric, found)

    def range_arrays(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        series, found = self._samples(metric, start_ms, end_ms, match, ordered=False, finite=True)
        return SeriesSamples(series, found["series_id"], found["t_ms"], found["value"])

    def _samples(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None,
                 ordered: bool, finite: bool) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """(the series of `metric` matching `match`, with their labels; their samples with start_ms <= t_ms <= end_ms
        as NumPy columns `series_id`, `t_ms`, `value`, by series then time if `ordered`, only finite values if `finite`):
        raw samples, and per-minute aggregates (always finite) where the raw samples are gone.

        Fetched through Arrow, whose columns NumPy takes over without conversion (fetchnumpy takes 1.5-3x as long)."""
        series = self._series_of(metric).loc[self._matching(metric, match)]
        if series.empty:
            return series, {"series_id": np.zeros(0, np.int32), "t_ms": np.zeros(0, np.int64), "value": np.zeros(0)}
        ids = series[["series_id"]]  # noqa: F841 - SQL below reads it by name (DuckDB replacement scan)
        minute_value = "last" if is_counter(metric) else "avg"
        with self._cursor() as cur:
            raw_from = self._raw_from()
            found = cur.execute(
                f"""SELECT series_id, t_ms, value FROM (
                        SELECT s.series_id, s.t_ms, s.value FROM samples s SEMI JOIN ids ON ids.series_id = s.series_id
                        WHERE s.t_ms >= ? AND s.t_ms <= ? {"AND isfinite(s.value)" if finite else ""}
                        UNION ALL
                        SELECT m.series_id, m.last_t_ms, m.{minute_value} FROM samples_1m m SEMI JOIN ids ON ids.series_id = m.series_id
                        WHERE m.last_t_ms >= ? AND m.last_t_ms <= ? AND m.last_t_ms < ?)
                    {"ORDER BY series_id, t_ms" if ordered else ""}""",
                [start_ms, end_ms, start_ms, end_ms, raw_from],
            ).to_arrow_table()
        return series, {c: found.column(c).to_numpy() for c in ("series_id", "t_ms", "value")}

    def runs(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        """The runs of each series' samples above 0 (the contract: `SampleReader.runs`), found by DuckDB: a new run where a
        sample is more than `RUN_GAP_MS` after its series' previous one, then each run's first and last time. Read as
        `range_arrays` reads (raw samples, else the per-minute aggregates that replaced them); a run per job and GPU
        comes back where `range_arrays` would send a sample per scrape."""
        series = self._series_of(metric).loc[self._matching(metric, match)]
        if series.empty:
            return SeriesSamples.empty(series)
        ids = series[["series_id"]]  # noqa: F841 - SQL below reads it by name (DuckDB replacement scan)
        with self._cursor() as cur:
            raw_from = self._raw_from()
            found = cur.execute(
                """WITH picked AS (
                       SELECT s.series_id, s.t_ms FROM samples s SEMI JOIN ids ON ids.series_id = s.series_id
                       WHERE s.t_ms >= $1 AND s.t_ms <= $2 AND isfinite(s.value) AND s.value > 0
                       UNION ALL
                       SELECT m.series_id, m.last_t_ms FROM samples_1m m SEMI JOIN ids ON ids.series_id = m.series_id
                       WHERE m.last_t_ms >= $1 AND m.last_t_ms <= $2 AND m.last_t_ms < $3 AND m.avg > 0),
                   around AS (
                       SELECT series_id, t_ms, t_ms - lag(t_ms) OVER w > $4 IS NOT FALSE AS first,
                              lead(t_ms) OVER w - t_ms > $4 IS NOT FALSE AS last
                       FROM picked WINDOW w AS (PARTITION BY series_id ORDER BY t_ms))
                   SELECT series_id, t_ms, first, last FROM around WHERE first OR last ORDER BY series_id, t_ms""",
                [start_ms, end_ms, raw_from, RUN_GAP_MS],
            ).to_arrow_table()
        # One window pass marks each run's first and last sample (2.4x faster than numbering the runs and grouping by
        # them); in series then time order, the k-th first of a series and its k-th last are one run's ends.
        first, last = found.column("first").to_numpy(zero_copy_only=False), found.column("last").to_numpy(zero_copy_only=False)
        t_ms = found.column("t_ms").to_numpy()
        return SeriesSamples(series, found.column("series_id").to_numpy()[first], t_ms[first], t_ms[last].astype(np.float64))

    def edges(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        """Each series' last sample at or before `start_ms` and first at or after `end_ms` (the contract: `SampleReader.edges`),
        read as `range_arrays` reads (raw samples, else the per-minute aggregates that replaced them).

        Where each side of each series is searched (`_edge_searches`): inside the series' extent (`series_extent`, plus
        its samples compaction has not reached), so a series stopped before the range is looked up at its last sample and
        one started after it at its first. Cost: two reads of `EDGE_FIRST_WINDOW_MS` around the ends for the series that
        report across them, one such read per stretch of time where other series stopped or started, and for a series
        silent across an end, reads growing `EDGE_GROWTH`-fold until its sample (at most 8 times its silence). A store
        never compacted has no extents: its series are searched as far as the store's oldest and newest samples."""
        series = self._series_of(metric).loc[self._matching(metric, match)]
        none = SeriesSamples.empty(series)
        if series.empty:
            return none
        ids = series["series_id"].to_numpy(dtype=np.int32)
        minute_value = "last" if is_counter(metric) else "avg"
        import pyarrow as pa  # reads only (see TYPE_CHECKING)

        with self._cursor() as cur:
            search = self._edge_searches(cur, ids, start_ms, end_ms)
            if search is None:
                return none
            sid, side, near, far = search
            raw_from = self._raw_from()
            found: list[pa.Table] = []
            width = np.full(len(sid), EDGE_FIRST_WINDOW_MS, dtype=np.int64)
            while len(sid):
                before = side == _BEFORE
                lo = np.where(before, np.maximum(far, near - width), near)
                hi = np.where(before, near, np.minimum(far, near + width))
                got = _edge_reads(cur, sid, side, lo, hi, minute_value, raw_from)
                found.append(got)
                done = np.zeros(len(sid), dtype=bool)
                if got.num_rows:  # the windows of one search never overlap another's of the same series and side
                    key = sid.astype(np.int64) * 2 + side
                    done = np.isin(key, got.column("series_id").to_numpy().astype(np.int64) * 2 + got.column("side").to_numpy())
                done |= np.where(before, lo <= far, hi >= far)  # searched as far as the series' extent: none on that side
                keep = ~done
                sid, side, far, width = sid[keep], side[keep], far[keep], width[keep] * EDGE_GROWTH
                near = np.where(before, lo - 1, hi + 1)[keep]
        table = pa.concat_tables(found) if found else None
        if table is None or not table.num_rows:
            return none
        return SeriesSamples(series, table.column("series_id").to_numpy(), table.column("t_ms").to_numpy(), table.column("value").to_numpy())

    def _edge_searches(self, cur: duckdb.DuckDBPyConnection, ids: np.ndarray, start_ms: int,
                       end_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """What `edges` searches: per (series, side) the series id, the side, the time the search starts from (the range's
        end, or the series' last or first sample where it stopped before it or started after it) and the furthest time
        it may go (the series' first or last sample); None for an empty store. Without extents (never compacted), from
        the range's ends to the store's oldest and newest samples."""
        until = _state(cur, "extents_until_ms")
        n = len(ids)
        if until is None:
            bounds = self.time_bounds()
            if bounds is None:
                return None
            first, last = np.full(n, bounds[0], np.int64), np.full(n, bounds[1], np.int64)
            known = np.ones(n, dtype=bool)
            tail_first = tail_last = np.zeros(n, np.int64)
            in_tail = np.zeros(n, dtype=bool)
        else:
            wanted = {"series_id": ids}  # noqa: F841 - SQL below reads it by name (see `_VALUE`)
            ext = cur.execute("SELECT e.series_id, e.first_t_ms, e.last_t_ms FROM series_extent e SEMI JOIN wanted w "
                              "ON w.series_id = e.series_id").fetchnumpy()
            first, last, known = _aligned(ids, ext["series_id"], ext["first_t_ms"], ext["last_t_ms"])
            # the samples compaction has not reached: only for the series whose edges may lie there
            may = ~known | (last < end_ms) | (start_ms >= until)
            tail_first, tail_last, in_tail = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, dtype=bool)
            if may.any():
                unsure = {"series_id": ids[may]}  # noqa: F841 - SQL below reads it by name
                tail = cur.execute("SELECT s.series_id, min(s.t_ms) f, max(s.t_ms) l FROM samples s SEMI JOIN unsure w "
                                   "ON w.series_id = s.series_id WHERE s.t_ms >= ? AND isfinite(s.value) GROUP BY ALL",
                                   [until]).fetchnumpy()
                tail_first, tail_last, in_tail = _aligned(ids, tail["series_id"], tail["f"], tail["l"])
        # before the start: in the newest part holding a sample at or before it (the part compaction has not reached first)
        tail_b = in_tail & (tail_first <= start_ms)
        ext_b = ~tail_b & known & (first <= start_ms)
        near_b = np.where(tail_b, np.minimum(start_ms, tail_last), np.minimum(start_ms, last))
        far_b = np.where(tail_b, tail_first, first)
        # after the end: in the oldest part holding a sample at or after it
        ext_a = known & (last >= end_ms)
        tail_a = ~ext_a & in_tail & (tail_last >= end_ms)
        near_a = np.where(ext_a, np.maximum(end_ms, first), np.maximum(end_ms, tail_first))
        far_a = np.where(ext_a, last, tail_last)
        b, a = tail_b | ext_b, ext_a | tail_a
        return (np.concatenate([ids[b], ids[a]]), np.repeat(np.array([_BEFORE, _AFTER], np.int8), [int(b.sum()), int(a.sum())]),
                np.concatenate([near_b[b], near_a[a]]), np.concatenate([far_b[b], far_a[a]]))

    def _with_labels(self, metric: str, found: dict[str, np.ndarray]) -> pd.DataFrame:
        """Columns from DuckDB (NumPy, no per-row conversion) plus one column per label."""
        import pandas as pd

        frame = pd.DataFrame({"series_id": np.asarray(found["series_id"], dtype=np.int32),
                              "t_ms": np.asarray(found["t_ms"], dtype=np.int64),
                              "value": np.asarray(found["value"], dtype=np.float64)})
        if frame.empty:
            return frame
        labels = self._series_of(metric)
        # labels are sorted by series_id: a positional take is far cheaper than a merge on millions of rows
        at = np.searchsorted(labels["series_id"].to_numpy(), frame["series_id"].to_numpy())
        taken = labels.drop(columns="series_id").take(at).reset_index(drop=True)
        return pd.concat([frame, taken], axis=1)

    # -- retention -----------------------------------------------------------------------------
    def compact(self, now_ms: int | None = None) -> dict[str, int]:
        """Downsample settled minutes, then drop raw samples and aggregates past their retention.

        Returns the number of rows each step touched. Each step is one transaction: a crash between
        steps leaves data that the next run finishes.
        """
        self._check_writable()
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        until = (now_ms - _SETTLE_MS) // _MINUTE_MS * _MINUTE_MS
        raw_cut = now_ms - int(self.retention.raw_days * 86_400_000)
        minute_cut = now_ms - int(self.retention.minute_days * 86_400_000)
        with self._write_lock, self._cursor() as cur:
            try:
                return self._compact(cur, until, raw_cut, minute_cut)
            finally:
                self._sample_writes += 1

    def _compact(self, cur: duckdb.DuckDBPyConnection, until: int, raw_cut: int, minute_cut: int) -> dict[str, int]:
        """`compact`'s steps, under the write lock: minutes up to `until` downsampled, raw samples before `raw_cut` and
        aggregates before `minute_cut` dropped (ms)."""
        done = cur.execute("SELECT value FROM store_state WHERE key = 'downsampled_until_ms'").fetchone()
        since = done[0] if done else (self._extent()[0] or until) // _MINUTE_MS * _MINUTE_MS
        cur.execute("BEGIN TRANSACTION")
        downsampled = _one(
            cur,
            f"""INSERT INTO samples_1m
                SELECT series_id, t_ms // {_MINUTE_MS} * {_MINUTE_MS}, max(t_ms), arg_max(value, t_ms), avg(value), min(value),
                       max(value), count(*)
                FROM samples WHERE t_ms >= {int(since)} AND t_ms < {int(until)} AND isfinite(value) GROUP BY ALL""",
        )[0]
        cur.execute(f"INSERT OR REPLACE INTO store_state VALUES ('downsampled_until_ms', {int(max(since, until))})")
        # the extents of the minutes just aggregated; the first time, of every minute aggregated before (a store from
        # before the extents existed: one pass over its aggregates)
        extended = since if self._extents_until is not None else _one(cur, f"SELECT coalesce(min(t_ms), {int(since)}) FROM samples_1m")[0]
        cur.execute(_MERGE_EXTENTS.format(fresh=f"SELECT series_id, min(t_ms) f, max(last_t_ms) l FROM samples_1m "
                                                f"WHERE t_ms >= {int(extended)} AND t_ms < {int(max(since, until))} GROUP BY series_id"))
        cur.execute(f"INSERT OR REPLACE INTO store_state VALUES ('extents_until_ms', {int(max(since, until))})")
        cur.execute("COMMIT")
        self._extents_until = max(since, until)
        # Raw samples go only once their minutes are aggregated.
        raw_cut, minute_cut = int(min(raw_cut, max(since, until))), int(minute_cut)
        dropped_raw = _one(cur, f"DELETE FROM samples WHERE t_ms < {raw_cut}")[0]
        dropped_minutes = _one(cur, f"DELETE FROM samples_1m WHERE t_ms < {minute_cut}")[0]
        if dropped_minutes:  # raw samples that old are gone too (raw_days <= minute_days)
            cur.execute(f"DELETE FROM series_extent WHERE last_t_ms < {minute_cut}")
            cur.execute(f"UPDATE series_extent SET first_t_ms = {minute_cut} WHERE first_t_ms < {minute_cut}")
        cur.execute(f"DELETE FROM stale WHERE t_ms < {raw_cut}")
        return {"minutes_written": int(downsampled), "raw_dropped": int(dropped_raw), "minutes_dropped": int(dropped_minutes)}

    def time_bounds(self) -> tuple[int, int] | None:
        _, lo, hi = self._extent()
        return None if lo is None or hi is None else (lo, hi)

    def sample_generation(self) -> int:
        return self._sample_writes

    def _raw_from(self) -> int:
        """Where raw samples begin, ms: reads take the per-minute aggregates before it (everywhere, without raw samples)."""
        raw = self._extent()[0]
        return np.iinfo(np.int64).max if raw is None else raw

    def _extent(self) -> tuple[int | None, int | None, int | None]:
        """(the oldest raw sample's time, the oldest and the newest of all samples, raw or per-minute; ms, None without
        any), scanned once per sample generation: scanned on every read, they cost about a third of an energy read from
        samples. The generation is read before the scan, so a write during it is seen by the next call."""
        generation = self._sample_writes
        if self._extent_at is None or self._extent_at[0] != generation:
            with self._cursor() as cur:
                raw_lo, raw_hi, minute_lo, minute_hi = _one(cur, "SELECT min(t_ms), max(t_ms), (SELECT min(t_ms) FROM samples_1m), "
                                                                 "(SELECT max(t_ms) FROM samples_1m) FROM samples")
            lows = [int(t) for t in (raw_lo, minute_lo) if t is not None]
            highs = [int(t) for t in (raw_hi, minute_hi) if t is not None]
            self._extent_at = generation, (None if raw_lo is None else int(raw_lo), min(lows, default=None), max(highs, default=None))
        return self._extent_at[1]

    def newest_sample_ms(self, not_after_ms: int) -> int | None:
        """Time of the newest sample (raw, or a per-minute aggregate's minute) at or before `not_after_ms`, ms; None if
        there is none. Where a backfill continues from: one sample stamped in the future by a wrong clock must not make
        it skip every minute up to then, as `time_bounds()[1]` would."""
        with self._cursor() as cur:
            (newest,) = _one(cur, "SELECT max(t) FROM (SELECT max(t_ms) t FROM samples WHERE t_ms <= ? "
                                  "UNION ALL SELECT max(t_ms) FROM samples_1m WHERE t_ms <= ?)", [not_after_ms, not_after_ms])
        return None if newest is None else int(newest)

    def metric_names(self) -> list[str]:
        return sorted(self._metrics)

    def sample_spans(self, metrics: list[str], start_ms: int, end_ms: int) -> dict[str, tuple[int, int]]:
        return spans_within(self.time_bounds(), self._metrics, metrics, start_ms, end_ms)

    def sample_count(self) -> int:
        with self._cursor() as cur:
            return int(_one(cur, "SELECT count(*) FROM samples")[0])

    def close(self) -> None:
        """Checkpoint (fold the write-ahead log into the file) and close every connection."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            if not self.read_only:
                self._con.execute("CHECKPOINT")
            self._con.close()


def _aligned(ids: np.ndarray, found: np.ndarray, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, last, known) per id of `ids` from rows (`found` ids, their first and last times) in any order."""
    at = np.searchsorted(ids, found)  # ids are sorted (`_series_of`)
    f, la, known = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64), np.zeros(len(ids), dtype=bool)
    f[at], la[at], known[at] = first, last, True
    return f, la, known


_EDGE_GAP_MS = EDGE_FIRST_WINDOW_MS  # windows closer than this are read in one query


def _edge_reads(cur: duckdb.DuckDBPyConnection, sid: np.ndarray, side: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                minute_value: str, raw_from: int) -> pa.Table:
    """For each search (series `sid`, `side`, window [lo, hi]), the newest sample in its window (before the start) or the
    oldest (after the end), from raw samples and the per-minute aggregates older than them, as `_samples` reads.
    Windows are read together where they lie close in time (one query per stretch): DuckDB skips every row group
    outside a query's span, so series that stopped at one time cost one small read however many they are, and the
    windows around the range's ends are one read each."""
    import pyarrow as pa  # reads only (see TYPE_CHECKING)

    order = np.argsort(lo, kind="stable")
    lo_s, hi_s = lo[order], hi[order]
    reach = np.maximum.accumulate(hi_s)
    cut = np.flatnonzero(lo_s[1:] > reach[:-1] + _EDGE_GAP_MS) + 1
    parts = []
    for run in np.split(np.arange(len(order)), cut):
        pick = order[run]
        windows = pa.table({"series_id": sid[pick], "side": side[pick], "lo": lo[pick], "hi": hi[pick]})  # noqa: F841 - SQL reads it by name
        span_lo, span_hi = int(lo_s[run].min()), int(hi_s[run].max())
        parts.append(cur.execute(
            f"""WITH x AS (
                    SELECT series_id, t_ms, value FROM samples WHERE t_ms >= $1 AND t_ms <= $2 AND isfinite(value)
                    UNION ALL
                    SELECT series_id, last_t_ms, {minute_value} FROM samples_1m WHERE last_t_ms >= $1 AND last_t_ms <= $2 AND last_t_ms < $3),
                picked AS (
                    SELECT w.series_id, w.side, max({{'t': x.t_ms, 'v': x.value}}) AS newest, min({{'t': x.t_ms, 'v': -x.value}}) AS oldest
                    FROM x JOIN windows w ON x.series_id = w.series_id AND x.t_ms >= w.lo AND x.t_ms <= w.hi
                    GROUP BY ALL)
                SELECT series_id, side, CASE WHEN side = {_BEFORE} THEN newest.t ELSE oldest.t END AS t_ms,
                       CASE WHEN side = {_BEFORE} THEN newest.v ELSE -oldest.v END AS value
                FROM picked""",
            [span_lo, span_hi, raw_from]).to_arrow_table())
    return pa.concat_tables(parts)


def _state(cur: duckdb.DuckDBPyConnection, key: str) -> int | None:
    """A `store_state` value; None where it was never set."""
    row = cur.execute(f"SELECT value FROM store_state WHERE key = '{key}'").fetchone()  # a constant of ours (see `_VALUE`)
    return None if row is None else int(row[0])


def _one(cur: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple:
    """The row of a query that returns exactly one: an aggregate, or the row count DuckDB answers an INSERT or DELETE with."""
    row = cur.execute(sql, params).fetchone()
    if row is None:
        raise StoreError(f"DuckDB returned no row for {sql.split()[0]}, which always returns one")
    return row


def _is_full(error: Exception) -> bool:
    text = str(error)
    return "No space left" in text or "File too large" in text or "Disk quota" in text


class Compactor:
    """Runs `store.compact()` every `every_s` seconds until stopped (a worker thread's target)."""

    def __init__(self, store: DuckDBStore, every_s: float = 600.0):
        self.store = store
        self.every_s = every_s
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                done = self.store.compact()
                log.info("store compaction: %s", done)
            except (StoreError, duckdb.Error):
                log.exception("store compaction failed; it runs again in %g s", self.every_s)

    def stop(self) -> None:
        self._stop.set()
