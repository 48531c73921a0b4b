"""The samples of consecutive ledger windows, read a block of windows at a time.

The ledger computes a range one clock hour at a time (`aifmon.rollups.ledger`), and each hour reads each meter's samples
(`range_arrays`) and the samples around the hour (`edges`). On a store with compressed blocks per series
(VictoriaMetrics: up to 8,192 samples, about 34 hours at 15 s; Prometheus: 120) a read of one hour decompresses
whole blocks, and the two small windows `edges` reads cost nearly as much as the hour: a day read hour by hour cost
about ten times its export in one request. `BlockReader` reads the samples of several consecutive windows at once and
each block's own edges, and answers each window's reads from them: the same samples and the same edges, in fewer,
larger requests. A block holds about `BLOCK_SAMPLES` samples per metric (sized from the window or block read before
it), so memory stays bounded whatever the range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aifmon.rollups.energy import T_BITS, LabelCodes, stream_time_key
from aifmon.stores.store import SampleReader, SeriesSamples, concat_samples

BLOCK_SAMPLES = 1_000_000  # samples of one metric per block: at the peak of a block's read, about 110 bytes each


@dataclass(frozen=True)
class _Block:
    """One metric's samples over [start_ms, end_ms] (`inner`) and its series' labels once per meter (`meters`), with
    every sample of the block and its edges keyed by meter then time (`keys`, sorted; `values` alike)."""

    start_ms: int
    end_ms: int
    inner: SeriesSamples
    meters: pd.DataFrame
    keys: np.ndarray
    values: np.ndarray

    def samples(self, start_ms: int, end_ms: int) -> SeriesSamples:
        """The block's samples with start_ms <= t <= end_ms."""
        t = self.inner.t_ms
        keep = (t >= start_ms) & (t <= end_ms)
        return SeriesSamples(self.inner.series, self.inner.series_id[keep], t[keep], self.inner.value[keep])

    def edges(self, start_ms: int, end_ms: int) -> SeriesSamples:
        """Each meter's last sample at or before `start_ms` and first at or after `end_ms` (`SampleReader.edges`): the
        block holds every sample of each meter between its own edges, so both are found in it, one search per meter."""
        if not len(self.keys):
            return SeriesSamples.empty(self.meters)
        meter = np.arange(len(self.meters), dtype=np.int64)
        before = np.searchsorted(self.keys, stream_time_key(meter, np.full(len(meter), start_ms), 0), side="right") - 1
        before = before[(before >= 0) & (self.keys[np.maximum(before, 0)] >> T_BITS == meter)]
        after = np.searchsorted(self.keys, stream_time_key(meter, np.full(len(meter), end_ms), 0), side="left")
        after = after[(after < len(self.keys)) & (self.keys[np.minimum(after, len(self.keys) - 1)] >> T_BITS == meter)]
        at = np.concatenate([before, after])
        return SeriesSamples(self.meters, (self.keys[at] >> T_BITS).astype(np.int32), self.keys[at] & ((1 << T_BITS) - 1),
                             self.values[at])


class BlockReader(SampleReader):
    """`store`'s samples for a ledger read of `windows` (consecutive clock hours, or parts of hours), read a block of
    consecutive windows at a time (module docstring). `runs` is asked of the store per window: its answer is a run per
    job, small already, and a run cut at a window's bounds is not a slice of the block's."""

    def __init__(self, store: SampleReader, windows: list[tuple[int, int]], block_samples: int = BLOCK_SAMPLES):
        self.store = store
        self.windows = sorted(windows)
        self.block_samples = block_samples
        self._index = {w: i for i, w in enumerate(self.windows)}
        self._blocks: dict[tuple[str, tuple[tuple[str, str], ...]], _Block] = {}  # the block held, per metric and match
        self._per_window: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # samples per window of the last one

    def range_arrays(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        block = self._block(metric, start_ms, end_ms, match)
        if block is not None:
            return block.samples(start_ms, end_ms)
        read = self.store.range_arrays(metric, start_ms, end_ms, match)
        if (start_ms, end_ms) in self._index:
            self._per_window[_block_key(metric, match)] = len(read.t_ms)  # sizes the blocks after it
        return read

    def edges(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        block = self._block(metric, start_ms, end_ms, match)
        return block.edges(start_ms, end_ms) if block else self.store.edges(metric, start_ms, end_ms, match)

    def runs(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None = None) -> SeriesSamples:
        return self.store.runs(metric, start_ms, end_ms, match)

    def _block(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None) -> _Block | None:
        """The block that holds the window [start_ms, end_ms] of `metric`, read when the window is past the one held;
        None where the store is read as asked: a read that is not one of the windows, a metric's first window (its
        size sizes the blocks), and a block that would hold one window (the store's own reads, with more held)."""
        key = _block_key(metric, match)
        if (start_ms, end_ms) not in self._index or key not in self._per_window:
            return None
        held = self._blocks.get(key)
        if held is not None and held.start_ms <= start_ms and end_ms <= held.end_ms:
            return held
        self._blocks.pop(key, None)  # one block per metric at a time
        first = self._index[(start_ms, end_ms)]
        count = int(self.block_samples / max(self._per_window[key], 1.0))
        last = first
        while last + 1 < len(self.windows) and last + 1 - first < count and self.windows[last + 1][0] == self.windows[last][1]:
            last += 1  # only consecutive windows: a gap between two (hours from rows) is not read
        if last == first:
            return None
        block = self._read(metric, self.windows[first][0], self.windows[last][1], match)
        self._per_window[key] = len(block.inner.t_ms) / (last - first + 1)
        self._blocks[key] = block
        return block

    def _read(self, metric: str, start_ms: int, end_ms: int, match: dict[str, str] | None) -> _Block:
        """The block of [start_ms, end_ms]: its samples and its edges (two reads), with every series coded by its labels
        (the two reads' ids are not comparable)."""
        inner = self.store.range_arrays(metric, start_ms, end_ms, match)
        both = concat_samples([inner, self.store.edges(metric, start_ms, end_ms, match)])
        labels, codes = [c for c in both.series.columns if c != "series_id"], LabelCodes()
        keys = stream_time_key(codes.of(both, labels), both.t_ms, 0)
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], both.value[order]
        unique = np.ones(len(keys), dtype=bool)
        unique[1:] = keys[1:] != keys[:-1]  # a sample at a bound is in both reads
        meters = codes.frame(labels)
        meters.insert(0, "series_id", np.arange(len(meters), dtype=np.int32))
        return _Block(start_ms, end_ms, inner, meters, keys[unique], values[unique])


def _block_key(metric: str, match: dict[str, str] | None) -> tuple[str, tuple[tuple[str, str], ...]]:
    return metric, tuple(sorted((match or {}).items()))

