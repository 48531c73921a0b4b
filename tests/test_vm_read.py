"""VictoriaMetricsStore.range_arrays over a real VictoriaMetrics: every raw sample of its export, exactly, with labels once
per series, whether the answer is parsed in one piece or in many chunks whose lines straddle Arrow's blocks, and with
VictoriaMetrics' non-JSON `NaN` and `+Inf` in the answer (issue 12)."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest

import aifmon.stores.promql_store as promql_store
from aifmon.stores.store import SampleWriter, open_store, series_key
from tests.servers import victoria_metrics

T0 = (int(time.time()) // 3600 - 24) * 3_600_000  # a day ago: inside VictoriaMetrics' default retention of a month
STEP = 15_000


def _samples(flat) -> dict[tuple, list[tuple[int, float]]]:
    """{(sorted labels): [(t_ms, value), ...] in time order} of a SeriesSamples."""
    labels = flat.series.set_index("series_id")
    out: dict[tuple, list[tuple[int, float]]] = {}
    for sid, t, v in zip(flat.series_id.tolist(), flat.t_ms.tolist(), flat.value.tolist()):
        row = labels.loc[sid]
        key = tuple(sorted((k, x) for k, x in row.items() if isinstance(x, str)))
        out.setdefault(key, []).append((t, v))
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    """A VictoriaMetrics holding 6 GPUs' counters (400 samples each, one GPU without the `uuid` label), and one series
    with a +Inf among its values, which VictoriaMetrics exports as `+Inf`, not JSON (the NaN beside it it drops at
    import); and the truth: {labels: [(t, value)]} of the finite samples."""
    work = tmp_path_factory.mktemp("vm-read")
    with victoria_metrics(work) as server:
        store = open_store(server.url.replace("http://", "victoriametrics+http://"), needs=SampleWriter)
        truth: dict[tuple, list[tuple[int, float]]] = {}
        rng = np.random.default_rng(3)
        times = T0 + STEP * np.arange(400)
        for g in range(6):
            labels = {"factory": "f", "node": f"n{g // 4}", "gpu": str(g % 4), **({"uuid": f"GPU-{g}"} if g else {})}
            values = np.round(1e9 * rng.random() + np.cumsum(rng.uniform(4_000, 10_000, len(times))), 3)
            store.append(store.series_ids([series_key("aif_gpu_energy_joules_total", labels)] * len(times)), times, values)
            truth[tuple(sorted(labels.items()))] = list(zip(times.tolist(), values.tolist()))
        odd = 'aif_gpu_energy_joules_total{factory="f",node="n9",gpu="0"}'
        body = f"{odd} 10 {T0}\n{odd} NaN {T0 + STEP}\n{odd} +Inf {T0 + 2 * STEP}\n{odd} 25.5 {T0 + 3 * STEP}\n"
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/api/v1/import/prometheus", data=body.encode(), method="POST"),
                               timeout=30).read()
        truth[(("factory", "f"), ("gpu", "0"), ("node", "n9"))] = [(T0, 10.0), (T0 + 3 * STEP, 25.5)]
        server.force_flush()
        yield store, truth


def test_the_export_read_holds_every_finite_sample_exactly(vm):
    store, truth = vm
    flat = store.range_arrays("aif_gpu_energy_joules_total", T0 - 60_000, T0 + 400 * STEP)
    assert _samples(flat) == truth
    assert len(flat.series) == 7 and flat.series["series_id"].is_unique and "__name__" not in flat.series
    assert flat.t_ms.dtype == np.int64 and flat.value.dtype == np.float64 and len(flat.t_ms) == 6 * 400 + 2
    # the range's ends are inclusive, and nothing outside them comes back
    inner = store.range_arrays("aif_gpu_energy_joules_total", T0 + STEP, T0 + 10 * STEP, match={"node": "n0"})
    assert len(inner.series) == 4 and sorted(set(inner.t_ms.tolist())) == [T0 + k * STEP for k in range(1, 11)]
    assert len(store.range_arrays("aif_gpu_power_watts", T0, T0 + 400 * STEP).t_ms) == 0


def test_an_answer_in_many_chunks_and_lines_longer_than_a_block_read_the_same(vm, monkeypatch):
    store, truth = vm
    # 7 lines, six of ~12 kB: chunks of 15 kB end inside lines, and blocks of 1 kB are shorter than every long line
    monkeypatch.setattr(promql_store, "_EXPORT_CHUNK", 15_000)
    monkeypatch.setattr(promql_store, "_ARROW_BLOCK", 1_000)
    flat = store.range_arrays("aif_gpu_energy_joules_total", T0 - 60_000, T0 + 400 * STEP)
    assert _samples(flat) == truth and len(flat.series) == 7
