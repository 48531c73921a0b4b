"""dcgm-exporter sites (#16): the ledger reads dcgm-exporter's series as they are, through `aifmon.rollups.dcgm`'s mapping.

Scrapes in dcgm-exporter's format (tests/fixtures/dcgm) served over HTTP and collected the normal way, beside an aifmon
exporter reporting one of the same GPUs; then the same store read through a real Prometheus; then history loaded with
`store import` across hours, where aifmon's exporter reports a GPU for part of the time. Energy against truths by hand.
"""

import re
import time
from pathlib import Path

import numpy as np
import pytest

from aifmon.exporters.http import serve_exposition
from aifmon.ingest.collector import Collector, Target, target_labels
from aifmon.ingest.openmetrics import export_openmetrics, import_openmetrics
from aifmon.ingest.parser import parse_exposition
from aifmon.rollups import dcgm
from aifmon.rollups.energy import UNALLOCATED, compute_ledger
from aifmon.rollups.ledger import energy_rollup
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import SampleReader, open_store
from aifmon.telemetry.exposition import label_text, render_family
from aifmon.telemetry.schema import BY_NAME
from tests.conftest import free_port
from tests.servers import prometheus_of

FIXTURE = Path(__file__).parent / "fixtures" / "dcgm" / "h100-node-hpc-job-mapping.prom"
H = 3_600_000
MJ = 1e-3  # J per mJ
UUID = re.compile(r'UUID="([^"]+)"')
GPU = re.compile(r'gpu="(\d+)"')


def _scrape(template: str, energy_mj: dict[int, int], jobs: dict[int, str | None], host_label: str = "Hostname",
            node: str = "node1", uuid_prefix: str = "GPU-") -> bytes:
    """One dcgm-exporter answer: the fixture with each GPU's energy value and `hpc_job` attribute set (None: no job),
    its host under `host_label` (dcgm-exporter 4.8.3 renamed `Hostname` to `hostname`) and UUIDs re-prefixed."""
    out = []
    for line in template.splitlines():
        if line and not line.startswith("#"):
            gpu = int(GPU.findall(line)[0])
            line = re.sub(r',hpc_job="[^"]*"', "", line)
            if jobs.get(gpu):
                line = line.replace("} ", f',hpc_job="{jobs[gpu]}"}} ', 1)
            if line.startswith(dcgm.DCGM_ENERGY + "{"):
                line = line.rsplit(" ", 1)[0] + f" {energy_mj[gpu]}"
            line = line.replace('Hostname="node1"', f'{host_label}="{node}"').replace('UUID="GPU-', f'UUID="{uuid_prefix}')
        out.append(line)
    return ("\n".join(out) + "\n").encode()


def _aifmon(energy_j: float, job: str | None, uuid: str) -> bytes:
    """aifmon's node exporter answer for one GPU (node1, GPU 0), rendered by aifmon's own renderer."""
    gpu = label_text({"node": "node1", "gpu": "0", "uuid": uuid, "model": "NVIDIA H100 80GB HBM3"})
    text = render_family(BY_NAME["aif_gpu_energy_joules_total"], [gpu], [energy_j])
    if job:
        info = label_text({"node": "node1", "gpu": "0", "job": job, "project": "alpha-train", "access_mode": "Large Scale"})
        text += render_family(BY_NAME["aif_gpu_job_info"], [info], [1.0])
    return text.encode()


def test_the_fixture_is_in_dcgm_exporters_shape():
    text = FIXTURE.read_text()
    samples = parse_exposition(text.encode())
    assert len(samples.series) == 12 * 4  # twelve default families, four GPUs
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text and "# TYPE DCGM_FI_DEV_POWER_USAGE gauge" in text
    order = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION", "hpc_job"]
    for line in (x for x in text.splitlines() if x and not x.startswith("#")):
        names = re.findall(r'[{,]([A-Za-z_]+)="', line)
        assert names == [n for n in order if n in names] and names[:7] == order[:7], line
    energy = [line for line in text.splitlines() if line.startswith(dcgm.DCGM_ENERGY + "{")]
    assert [line.rsplit(" ", 1)[1] for line in energy] == ["5000000000", "1000000000", "2000000000", "3000000000"]  # %d, mJ


def test_the_docs_show_the_mapping_the_code_applies():
    page = (Path(__file__).parents[1] / "docs" / "energy-accounting.md").read_text()
    assert dcgm.mapping_table() in page


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """Six collector cycles over three real targets of factory alpha: dcgm-exporter on node1 (`Hostname`, jobs 4242 and
    4243 mapped, GPU 1's driver reloaded at cycle 4), dcgm-exporter 4.8.3+ on node2 (`hostname`, no jobs), and aifmon's
    exporter on node1 reporting GPU 0 (job 4242 of project alpha-train) with a counter of its own. Yields the store, the
    range (ms) and the truth per project (J)."""
    template = FIXTURE.read_text()
    uuid0 = UUID.findall(template)[0]
    state = {"k": 0}
    gpu1 = [1_000_000_000, 1_000_250_000, 1_000_500_000, 1_000_750_000, 120_000, 370_000]  # reset at k = 4

    def node1() -> bytes:
        k = state["k"]
        energy = {0: 5_000_000_000 + k * 300_000, 1: gpu1[k], 2: 2_000_000_000 + k * 200_001, 3: 3_000_000_000 + k * 100_003}
        return _scrape(template, energy, {1: "4242" if k < 4 else None, 2: "4243"})

    def node2() -> bytes:
        k = state["k"]
        return _scrape(template, {g: 4_000_000_000 + g * 1_000_000 + k * 50_000 for g in range(4)}, {}, "hostname", "node2", "GPU-b")

    def ours() -> bytes:
        return _aifmon(7000.125 + state["k"] * 310.5, "4242", uuid0)

    servers, targets = [], []
    for body in (node1, node2, ours):
        address = f"127.0.0.1:{free_port()}"
        servers.append(serve_exposition(address, body, "dcgm test"))
        targets.append(Target(address, target_labels("alpha", address)))
    store = DuckDBStore(tmp_path_factory.mktemp("dcgm") / "dcgm.duckdb")
    collector = Collector(store, targets, interval_s=1.0, timeout_s=5.0)
    start_ms = int(time.time() * 1000) - 1000
    for k in range(6):
        state["k"] = k
        collector.collect_once()
    end_ms = int(time.time() * 1000) + 1000
    for server in servers:
        server.shutdown()
        server.server_close()
    truth = {
        # GPU 0: aifmon's counter only (DCGM's copy left out), all five intervals job 4242; GPU 1 while hpc_job says 4242
        "alpha-train": 5 * 310.5 + 3 * 250_000 * MJ,
        dcgm.UNKNOWN_PROJECT: 5 * 200_001 * MJ,  # job 4243: no aifmon job info names its project
        # GPU 1 after its job (120 J counted from the restarted counter, then 250 J), GPU 3, node2's four GPUs
        UNALLOCATED: (120_000 + 250_000) * MJ + 5 * 100_003 * MJ + 4 * 5 * 50_000 * MJ,
    }
    assert not collector.failures
    yield store, start_ms, end_ms, truth
    store.close()


def _per_project(store: SampleReader, small_inventory, start_ms: int, end_ms: int) -> tuple[dict[str, float], dict]:
    result = energy_rollup(store, small_inventory, start_ms, end_ms, by="project")
    return dict(zip(result.rows["project"], result.rows["energy_kwh"] * 3.6e6)), result.notes


def test_dcgm_scrapes_give_exact_energy_per_project(collected, small_inventory):
    store, start_ms, end_ms, truth = collected
    got, notes = _per_project(store, small_inventory, start_ms, end_ms)
    assert got.keys() == truth.keys()
    for project, joules in truth.items():
        assert got[project] == pytest.approx(joules, rel=1e-9, abs=0), project
    assert notes["counter_resets"] == 1  # GPU 1's driver reload; mixing aifmon's and DCGM's GPU 0 would add false ones
    ledger = compute_ledger(store, small_inventory, start_ms, end_ms)
    assert int(ledger.factories()["gpus"].sum()) == 8  # GPU 0 of node1 once, whichever exporter reported it
    by_job = ledger.jobs.groupby("job")["energy_j"].sum()
    assert by_job["4243"] == pytest.approx(5 * 200_001 * MJ, rel=1e-12)


def test_prometheus_reads_give_the_same_energy(collected, small_inventory, tmp_path):
    store, start_ms, end_ms, truth = collected
    om = tmp_path / "dcgm.om"
    with om.open("w") as fh:
        export_openmetrics(store, fh, 0, 2**62)
    with prometheus_of(om, tmp_path) as url:
        prom = open_store(url, needs=SampleReader)
        got, notes = _per_project(prom, small_inventory, start_ms, end_ms)
    assert got.keys() == truth.keys()
    for project, joules in truth.items():
        assert got[project] == pytest.approx(joules, rel=1e-9, abs=0), project
    assert notes["counter_resets"] == 1


def test_aifmon_wins_where_both_report_a_gpu_and_hours_add_up(tmp_path, small_inventory):
    """Three hours of one GPU from dcgm-exporter at 60 s (250 W), aifmon's exporter reporting it from 1:20:30 to 2:10:30
    (another counter base), and a pre-Volta GPU with DCGM power only (100 W), loaded with `store import`."""
    t0 = (int(time.time() * 1000) // H - 48) * H  # two days ago, on the hour
    uuid, old = "GPU-11111111-2222-3333-4444-555555555555", "GPU-99999999-8888-7777-6666-555555555555"
    dcgm_labels = label_text({"factory": "alpha", "instance": "node1:9400", "gpu": "0", "UUID": uuid, "device": "nvidia0",
                              "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node1"})
    old_labels = label_text({"factory": "alpha", "instance": "node1:9400", "gpu": "1", "UUID": old, "device": "nvidia1",
                             "modelName": "Tesla P100-PCIE-16GB", "Hostname": "node1"})
    ours = label_text({"factory": "alpha", "instance": "node1:9100", "node": "node1", "gpu": "0", "uuid": uuid, "model": "H100"})
    lines = ["# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION gauge"]
    lines += [f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{dcgm_labels}}} {1_000_000 + 250_000 * s} {(t0 + s * 1000) / 1000:.3f}"
              for s in range(0, 10_801, 60)]
    lines += ["# TYPE DCGM_FI_DEV_POWER_USAGE gauge"]
    lines += [f"DCGM_FI_DEV_POWER_USAGE{{{old_labels}}} 100.000000 {(t0 + s * 1000) / 1000:.3f}" for s in range(0, 10_801, 60)]
    lines += [f"DCGM_FI_DEV_POWER_USAGE{{{dcgm_labels}}} 999.000000 {(t0 + s * 1000) / 1000:.3f}" for s in range(0, 10_801, 60)]
    lines += ["# TYPE aif_gpu_energy_joules counter"]
    lines += [f"aif_gpu_energy_joules_total{{{ours}}} {50_000 + 250 * s} {(t0 + s * 1000) / 1000:.3f}" for s in range(4830, 7831, 60)]
    path = tmp_path / "history.om"
    path.write_text("\n".join(lines + ["# EOF", ""]))
    store = DuckDBStore(tmp_path / "h.duckdb")
    import_openmetrics(store, path)

    whole = compute_ledger(store, small_inventory, t0, t0 + 3 * H)
    # DCGM to 4800 s, aifmon 4830-7830 s, DCGM from 7860 s; the two 30 s switches (7.5 kJ each) are counted by neither
    counted = 250 * (4800 + 3000 + (10_800 - 7860))
    site = whole.factories().set_index("factory").loc["alpha"]
    assert site["gpu_energy_j"] == pytest.approx(counted + 100 * 10_800, rel=1e-12)
    assert site["estimated_j"] == pytest.approx(100 * 10_800, rel=1e-12)  # the P100's power, integrated; the H100's 999 W never
    assert whole.resets == 0 and site["gpus"] == 2
    hours = [compute_ledger(store, small_inventory, t0 + h * H, t0 + (h + 1) * H) for h in range(3)]
    assert sum(float(x.sites["gpu_energy_j"].sum()) for x in hours) == pytest.approx(float(whole.sites["gpu_energy_j"].sum()), rel=1e-12)
    per_hour = np.array([float(x.sites["gpu_energy_j"].sum()) for x in hours])
    # hour 1 loses the first switch, hour 2 the second
    assert per_hour.tolist() == pytest.approx([(250 + 100) * 3600.0, (250 + 100) * 3600.0 - 7500, (250 + 100) * 3600.0 - 7500], rel=1e-12)
    store.close()
