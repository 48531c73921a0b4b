"""Series texts → store series ids, in bulk, for one source (a scrape target or an imported file).

The parser gives each sample a 128-bit hash of its series text (`Samples.hashes`). An exporter sends the same
series texts scrape after scrape, in the same order: a line whose hash is that of the same line of the last scrape
keeps its id. The others are looked up in a sorted array of the hashes seen (binary search); only texts not found
have their labels parsed (`aifmon.ingest.series_keys`) and are registered in the store, which matches series by
their labels exactly: the hashes are a cache in front of it. Held per source: 48 bytes a series (the last scrape's
hashes and ids, the sorted hashes and their ids), not the texts nor the last body.

Two different texts of one source share both 64-bit halves of the hash with probability 2**-128 per pair: that is
the only way a sample could get another series' id. Texts that share only one half are told apart (a miss, then the
store).
"""

from __future__ import annotations

import ctypes

import numpy as np

from aifmon.ingest.parser import Samples
from aifmon.ingest.series_keys import series_keys
from aifmon.stores.store import SampleWriter
from aifmon.stores.texts import Texts
from aifmon.telemetry.exposition import ExpositionError

_SLICE = 10_000
MAX_SERIES_BYTES = 64 * 2**10
"""Longest series text (name and labels) accepted, bytes: a 10 MB line would cost seconds of label parsing when it
is registered. Prometheus has no such limit; no exporter of this schema comes near it."""


class SeriesIndex:
    """Store ids of one source's series texts; `labels` are added unless the text sets them itself."""

    def __init__(self, store: SampleWriter, labels: dict[str, str] | None = None):
        self.store = store
        self.labels = labels or {}
        empty = np.zeros(0, np.uint64)
        self._h1, self._h2, self._ids = empty, empty, np.zeros(0, np.int64)  # sorted by _h1
        self._last_hashes, self._last_ids = np.zeros((0, 2), np.uint64), np.zeros(0, np.int64)
        self._this: list[tuple[np.ndarray, np.ndarray]] = []  # the pieces of the scrape being resolved: (hashes, ids)
        self._changed = False  # whether a piece of it differs from the same rows of the last scrape

    def __len__(self) -> int:
        """Series hashes held (a series that came twice in a first batch counts twice)."""
        return len(self._ids)

    def ids(self, samples: Samples) -> np.ndarray:
        """Store ids, one per sample, of a whole scrape (`piece_ids` then `finish`)."""
        self.piece_ids(samples, 0)
        return self.finish()

    def piece_ids(self, samples: Samples, row: int) -> np.ndarray:
        """Store ids, one per sample, of a piece of a scrape (`parse_stream`) whose first sample is the scrape's `row`;
        raises ExpositionError if a new series text is too long, BadSeries (`aifmon.ingest.series_keys`) if it does not
        parse or repeats a label name. Row 0 starts a scrape (one not finished is dropped). Each piece is compared
        with the same rows of the last finished scrape: that is only a guess that saves the search, as each hash is
        checked against the hash its id came with."""
        if row == 0:
            self._this, self._changed = [], False
        hashes = samples.hashes
        last_hashes, last_ids = self._last_hashes[row:row + len(hashes)], self._last_ids[row:row + len(hashes)]
        if len(hashes) == len(last_hashes):
            same = (hashes[:, 0] == last_hashes[:, 0]) & (hashes[:, 1] == last_hashes[:, 1])
            if same.all():  # the steady state: held as views of the last scrape, no copy
                self._this.append((last_hashes, last_ids))
                return last_ids
            ids = last_ids.copy()
            changed = np.flatnonzero(~same)
            ids[changed] = self._lookup(samples, changed)
        else:
            ids = self._lookup(samples, np.arange(len(samples)))
        self._this.append((hashes.copy(), ids))  # a copy: a piece's hashes are a view of its scan's larger arrays
        self._changed = True
        return ids

    def finish(self) -> np.ndarray:
        """End the scrape whose pieces were resolved: the ids of all its samples, which become the last scrape's. When
        its series are the last scrape's, row for row, that is the very array `finish` returned then (callers skip
        comparing). The sorted hashes keep only its series when they hold over twice as many (series come and go, a
        job's info: the index does not grow forever)."""
        rows = sum(len(ids) for _, ids in self._this)
        if self._changed or rows != len(self._last_ids):
            self._last_hashes = np.concatenate([h for h, _ in self._this] or [np.zeros((0, 2), np.uint64)])
            self._last_ids = np.concatenate([i for _, i in self._this] or [np.zeros(0, np.int64)])
        self._this, self._changed = [], False
        if len(self._ids) > 2 * len(self._last_ids) + 1024:
            self._h1, self._h2, self._ids = _sorted(self._last_hashes, self._last_ids)
        return self._last_ids

    def _register(self, texts: Texts) -> np.ndarray:
        metrics, labels = series_keys(texts, self.labels)
        return self.store.register(metrics, labels).astype(np.int64)

    def _lookup(self, samples: Samples, rows: np.ndarray) -> np.ndarray:
        """Ids of the samples at `rows`: from the hashes seen, else registered."""
        hashes = samples.hashes[rows]
        ids = np.empty(len(rows), np.int64)
        miss = np.arange(len(rows))
        if len(self._ids) and len(rows):
            at = np.searchsorted(self._h1, hashes[:, 0]).clip(max=len(self._h1) - 1)
            hit = (self._h1[at] == hashes[:, 0]) & (self._h2[at] == hashes[:, 1])
            ids[hit] = self._ids[at[hit]]
            miss = np.flatnonzero(~hit)
        if not len(miss):
            return ids
        new = rows[miss]
        longest = int((samples.series_end[new] - samples.series_start[new]).max())
        if longest > MAX_SERIES_BYTES:  # checked on new series only: a scrape of known ones pays nothing
            raise ExpositionError(f"a series text of {longest} bytes, over the limit of {MAX_SERIES_BYTES}")
        # Not deduplicated here: the store gives a repeated text one id, and Prometheus text repeats none. Registered in
        # slices, so the texts, their label texts and the store's join are never held for all of them at once.
        ids[miss] = np.concatenate([self._register(samples.series_of(new[i:i + _SLICE])) for i in range(0, len(new), _SLICE)])
        h1, h2, added = _sorted(hashes[miss], ids[miss])
        at = np.searchsorted(self._h1, h1)
        self._h1, self._h2, self._ids = np.insert(self._h1, at, h1), np.insert(self._h2, at, h2), np.insert(self._ids, at, added)
        _return_memory()
        return ids


def _sorted(hashes: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first halves, second halves, ids) sorted by the first half."""
    order = np.argsort(hashes[:, 0], kind="stable")
    return hashes[order, 0], hashes[order, 1], ids[order]


def _return_memory() -> None:
    """Give the memory freed after registering new series back to the system: glibc's heap keeps freed blocks for reuse,
    and a first scrape of a whole factory frees tens of MB that the scrapes after it never need again."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS): nothing to trim
        return None


_LIBC = _glibc()
