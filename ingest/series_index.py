"""Series texts → store series ids, in bulk, for one source (a scrape target or an imported file).

An exporter sends the same series texts scrape after scrape, in the same order: a line whose text is
that of the same line of the last scrape (one memcmp) keeps its id. The other texts are matched with
one vectorised hash lookup (Arrow's `index_in`); only new texts have their labels parsed and are
registered in the store.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aifmon.ingest.parser import Samples
from aifmon.ingest.series_keys import series_keys
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import SampleWriter
from aifmon.telemetry.exposition import ExpositionError

_SLICE = 50_000
MAX_SERIES_BYTES = 64 * 2**10
"""Longest series text (name and labels) accepted, bytes: a 10 MB line would cost seconds of label parsing when it
is registered. Prometheus has no such limit; no exporter of this schema comes near it."""


class SeriesIndex:
    """Store ids of one source's series texts; `labels` are added unless the text sets them itself."""

    def __init__(self, store: SampleWriter, labels: dict[str, str] | None = None):
        self.store = store
        self.labels = labels or {}
        self._texts = pa.array([], pa.string())
        self._ids = np.zeros(0, dtype=np.int64)
        self._last: tuple[Samples | None, np.ndarray] = (None, np.zeros(0, dtype=np.int64))

    def ids(self, samples: Samples) -> np.ndarray:
        """Store ids, one per sample; raises ExpositionError if a new series text is too long, BadSeries
        (`aifmon.ingest.series_keys`) if it does not parse or repeats a label name.

        Lines whose series text is that of the same line of the previous batch (an exporter renders in a
        stable order) reuse its id after one byte comparison; only the others are hashed.
        """
        last, last_ids = self._last
        if last is not None and len(last) == len(samples):
            same = samples.same_series(last)
            if same.all():
                self._last = (samples, last_ids)
                return last_ids
            ids = last_ids.copy()
            ids[~same] = self._lookup(samples.series_of(np.flatnonzero(~same)))
        else:
            ids = self._lookup(samples.series)
        self._last = (samples, ids)
        if len(self._texts) > 2 * len(samples) + 1024:
            # Series come and go (a job's info): keep what this batch used, so the index does not grow forever.
            self._texts = pc.unique(samples.series)
            self._ids = ids[pc.index_in(self._texts, value_set=samples.series).to_numpy()]
        return ids

    def _register(self, texts: pa.StringArray) -> np.ndarray:
        metrics, labels = series_keys(texts, self.labels)
        if isinstance(self.store, DuckDBStore):
            return self.store.register(metrics, labels).astype(np.int64)
        # Other stores take Python keys: one object per series, but they keep their series elsewhere (a server).
        return self.store.series_ids([(m, tuple(json.loads(text).items())) for m, text in zip(metrics.to_pylist(), labels.to_pylist())]
                                     ).astype(np.int64)

    def _lookup(self, series: pa.StringArray) -> np.ndarray:
        if not len(series):
            return np.zeros(0, np.int64)
        if len(self._texts):
            where = pc.index_in(series, value_set=self._texts)
            if not where.null_count:
                return self._ids[where.to_numpy(zero_copy_only=False)]
            missing = where.is_null()
            ids = self._ids[where.fill_null(0).to_numpy()]
            rows: np.ndarray | slice = np.flatnonzero(missing.to_numpy(zero_copy_only=False))
            fresh = series.filter(missing)
        else:  # the first batch: every text is new
            ids, rows, fresh = np.empty(len(series), np.int64), slice(None), series
        if not len(fresh):
            return ids
        longest = pc.max(pc.binary_length(fresh)).as_py()
        if longest > MAX_SERIES_BYTES:  # checked on new series only: a scrape of known ones pays nothing
            raise ExpositionError(f"a series text of {longest} bytes, over the limit of {MAX_SERIES_BYTES}")
        # Not deduplicated here (a hash table over a first scrape's 400,000 texts peaks at four times their size): the
        # store gives a repeated text the same id, and Prometheus text repeats none. Registered in slices, so the
        # label texts and the store's join are never held for all of them at once.
        new_ids = np.concatenate([self._register(fresh.slice(i, _SLICE)) for i in range(0, len(fresh), _SLICE)])
        ids[rows] = new_ids
        self._texts = pa.concat_arrays([self._texts, fresh]) if len(self._texts) else fresh
        self._ids = np.concatenate([self._ids, new_ids])
        _return_memory()
        return ids


def _return_memory() -> None:
    """Give the memory freed after registering new series back to the system: Arrow's pool (mimalloc or jemalloc) and
    glibc's heap keep freed blocks for reuse, and a first scrape of a whole factory frees hundreds of MB that the
    scrapes after it never need again."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS): nothing to trim
        return None


_LIBC = _glibc()
