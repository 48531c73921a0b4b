"""The same rollup over the embedded store, a Prometheus fed from its export, and a VictoriaMetrics fed the same."""

import subprocess
import time

import pytest

from aifmon.exporters.backfill import backfill
from aifmon.exporters.simulation import FactorySimulation
from aifmon.ingest.openmetrics import export_openmetrics, import_openmetrics
from aifmon.rollups.ledger import energy_rollup
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import SampleReader, SampleWriter, StoreConfigError, StoreError, open_store
from tests.conftest import require_binary
from tests.servers import prometheus, victoria_metrics


@pytest.fixture(scope="module")
def history(tmp_path_factory, small_inventory_module):
    """Two simulated hours of both test factories, ending an hour ago, in DuckDB and as OpenMetrics."""
    work = tmp_path_factory.mktemp("backends")
    inv = small_inventory_module
    end = (time.time() // 60 - 60) * 60
    start = end - 7200
    store = DuckDBStore(work / "truth.duckdb")
    for f in inv.live_factories():
        backfill(store, FactorySimulation(f, inv.projects_of(f.id), epoch=start - 3600, step_s=5.0), start, end + 1, 30.0)
    path = work / "history.om"
    with path.open("w") as fh:
        exported = export_openmetrics(store, fh, 0, 2**62)
    yield store, path, exported, int(start * 1000), int(end * 1000), work
    store.close()


@pytest.fixture(scope="module")
def small_inventory_module():
    from aifmon.telemetry.inventory import parse_inventory
    from tests.conftest import inventory_text

    return parse_inventory(inventory_text(), "small-inventory.yaml")


def _rollups(store, inv, start_ms, end_ms):
    return {by: energy_rollup(store, inv, start_ms + 600_000, end_ms - 600_000, by=by).rows.set_index(by if by != "job" else ["factory", "job"])
            for by in ("project", "factory", "job")}


def _same(a, b):
    for by in a:
        left, right = a[by].sort_index(), b[by].sort_index()
        assert list(left.index) == list(right.index), by
        for col in ("energy_kwh", "gpu_hours", "cost_eur", "co2e_kg"):
            assert left[col].to_numpy() == pytest.approx(right[col].to_numpy(), rel=1e-12), (by, col)


def test_export_round_trips_into_a_new_embedded_store(history, tmp_path):
    store, path, exported, start_ms, end_ms, _ = history
    text = path.read_text()
    assert text.endswith("# EOF\n") and "# TYPE aif_gpu_energy_joules counter" in text
    assert exported == store.sample_count()
    copy = DuckDBStore(tmp_path / "copy.duckdb")
    assert import_openmetrics(copy, path).samples == exported
    assert copy.sample_count() == exported
    assert copy.metric_names() == store.metric_names()


def test_same_rollup_on_duckdb_prometheus_and_victoriametrics(history, small_inventory_module):
    store, path, exported, start_ms, end_ms, work = history
    inv = small_inventory_module
    truth = _rollups(store, inv, start_ms, end_ms)

    blocks = work / "prom-data"
    result = subprocess.run([require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(path), str(blocks)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (work / "prom").mkdir(exist_ok=True)
    with prometheus("global: {scrape_interval: 1m}\n", work / "prom", storage=blocks) as url:
        prom = open_store(url.replace("http://", "prometheus+http://"), needs=SampleReader)
        _same(truth, _rollups(prom, inv, start_ms, end_ms))
        assert not isinstance(prom, SampleWriter)
        with pytest.raises(StoreConfigError, match="Prometheus ingests by scraping"):
            open_store(url.replace("http://", "prometheus+http://"), needs=SampleWriter)

    with victoria_metrics(work) as vm:
        vms = open_store(vm.url.replace("http://", "victoriametrics+http://"), needs=SampleWriter)
        assert import_openmetrics(vms, path).samples == exported
        vm.force_flush()
        _same(truth, _rollups(vms, inv, start_ms, end_ms))
        latest = vms.latest("aif_gpu_power_watts", at_ms=end_ms, lookback_s=60)
        assert len(latest) == sum(f.gpu_count for f in inv.live_factories())


def test_a_server_that_does_not_answer_is_a_clear_error():
    store = open_store("victoriametrics+http://127.0.0.1:9", needs=SampleReader)
    with pytest.raises(StoreError, match=r"VictoriaMetrics at http://127\.0\.0\.1:9 did not answer"):
        store.range("aif_gpu_power_watts", 0, 1000)
