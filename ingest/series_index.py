"""Series texts → store series ids, in bulk, for one source (a scrape target or an imported file).

An exporter sends the same series texts scrape after scrape, in the same order: a line whose text is
that of the same line of the last scrape (one memcmp) keeps its id. The other texts are matched with
one vectorised hash lookup (Arrow's `index_in`); only new texts have their labels parsed and are
registered in the store.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aifmon.ingest.parser import Samples
from aifmon.stores.store import SampleWriter, series_key
from aifmon.telemetry.exposition import ExpositionError, parse_series

_SLICE = 20_000
MAX_SERIES_BYTES = 64 * 2**10
"""Longest series text (name and labels) accepted, bytes: a 10 MB line would cost seconds of label parsing when it
is registered. Prometheus has no such limit; no exporter of this schema comes near it."""


class BadSeries(ExpositionError):
    """A new series text that is not a valid series; `text` is the text."""

    def __init__(self, text: str, message: str):
        super().__init__(message)
        self.text = text


class SeriesIndex:
    """Store ids of one source's series texts; `labels` are added unless the text sets them itself."""

    def __init__(self, store: SampleWriter, labels: dict[str, str] | None = None):
        self.store = store
        self.labels = labels or {}
        self._texts = pa.array([], pa.string())
        self._ids = np.zeros(0, dtype=np.int64)
        self._last: tuple[Samples | None, np.ndarray] = (None, np.zeros(0, dtype=np.int64))

    def ids(self, samples: Samples) -> np.ndarray:
        """Store ids, one per sample; raises ExpositionError if a new series text is too long, BadSeries if it does not
        parse or repeats a label name.

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
        # parse_series keeps the last of a repeated label name; Prometheus fails the scrape instead ("label name is not
        # unique"), and so do we. Each label value is one pair of quotes once escapes are taken out, so a text that parses
        # into fewer labels than it has pairs repeats a name.
        pairs = pc.count_substring(pc.replace_substring_regex(texts, r"\\.", ""), '"').to_numpy() // 2
        keys = []
        for text, quoted in zip(texts.to_pylist(), pairs.tolist()):
            try:
                name, labels = parse_series(text)
            except ExpositionError as e:
                raise BadSeries(text, str(e)) from None
            if len(labels) != quoted:
                raise BadSeries(text, f"a label name is repeated in {text[:120]!r} (Prometheus refuses such a series)")
            keys.append(series_key(name, {**self.labels, **labels}))
        return self.store.series_ids(keys).astype(np.int64)

    def _lookup(self, series: pa.StringArray) -> np.ndarray:
        where = pc.index_in(series, value_set=self._texts)
        if where.null_count:
            new = pc.unique(series.filter(where.is_null()))
            longest = pc.max(pc.binary_length(new)).as_py()
            if longest > MAX_SERIES_BYTES:  # checked on new series only: a scrape of known ones pays nothing
                raise ExpositionError(f"a series text of {longest} bytes, over the limit of {MAX_SERIES_BYTES}")
            # Labels are parsed in slices: a first scrape of a whole factory (400,000 series) would
            # otherwise hold every parsed label dict at once.
            parts = [self._register(new.slice(i, _SLICE)) for i in range(0, len(new), _SLICE)]
            self._texts = pa.concat_arrays([self._texts, new])
            self._ids = np.concatenate([self._ids, *parts])
            where = pc.index_in(series, value_set=self._texts)
        return self._ids[where.to_numpy(zero_copy_only=False)]
