"""Reads of consecutive windows answered from blocks (`aifmon.rollups.sample_blocks`) are the store's own answers: the
same samples and the same edges for every window, however the blocks fall, across a silence longer than a block."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from aifmon.rollups.sample_blocks import BlockReader
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import SampleReader, SeriesSamples, series_key

H, S = 3_600_000, 15_000
T0 = 1_790_000_000_000 // H * H
METRIC = "aif_gpu_energy_joules_total"


def _samples(read: SeriesSamples) -> list[tuple[str, int, float]]:
    """(GPU, time, value) of every sample, sorted: what a read says, whatever its series ids."""
    gpu = read.series.set_index("series_id")["gpu"]
    return sorted((gpu[i], int(t), float(v)) for i, t, v in zip(read.series_id, read.t_ms, read.value))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[SampleReader]:
    """Eight hours of three GPUs every 15 s: GPU 0 throughout, GPU 1 silent from 01:10 to 05:50 (longer than a block of
    two hours), GPU 2 from 03:00 only; and a sample of GPU 0 exactly on each hour."""
    s = DuckDBStore(tmp_path_factory.mktemp("blocks") / "b.duckdb")
    t = T0 + S * np.arange(8 * 240 + 1)
    for gpu, times in (("0", t), ("1", t[(t < T0 + 70 * 60_000) | (t > T0 + 350 * 60_000)]), ("2", t[t >= T0 + 3 * H])):
        sid = s.series_ids([series_key(METRIC, {"factory": "f", "node": "n", "gpu": gpu})])[0]
        s.append(np.full(len(times), sid), times, (times - T0) / 1000.0)
    yield s
    s.close()


@pytest.mark.parametrize("block_samples", [1, 3_000, 10**9])  # a window a block, about two, all in one
def test_each_window_reads_what_the_store_gives(store, block_samples):
    windows = [(T0 + 30 * 60_000, T0 + H)] + [(T0 + h * H, T0 + (h + 1) * H) for h in range(1, 8)]  # a partial first hour
    blocks = BlockReader(store, windows, block_samples)
    for a, b in windows:
        assert _samples(blocks.range_arrays(METRIC, a, b)) == _samples(store.range_arrays(METRIC, a, b))
        assert _samples(blocks.edges(METRIC, a, b)) == _samples(store.edges(METRIC, a, b))
    silent = [e for e in _samples(blocks.edges(METRIC, T0 + 2 * H, T0 + 3 * H)) if e[0] == "1"]
    assert silent == [("1", T0 + 70 * 60_000 - S, 4185.0), ("1", T0 + 350 * 60_000 + S, 21015.0)]  # across the silence
