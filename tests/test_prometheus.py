"""A real Prometheus scrapes the simulator; promtool has nothing to say about its output."""

import subprocess
import urllib.request

import pytest

from tests.conftest import require_binary, wait_until
from tests.servers import prometheus, promql
from tests.test_collector import PER_FACTORY, PER_GPU, PER_NODE


def test_prometheus_scrapes_the_simulator(tmp_path, small_inventory, sim_server):
    address, _ = sim_server(small_inventory, "alpha")
    config = f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: sim
    honor_labels: true   # the exporter's own factory/system/job labels win (job = the Slurm job of aif_gpu_job_info)
    static_configs: [{{targets: ["{address}"]}}]
"""
    with prometheus(config, tmp_path) as url:
        wait_until(lambda: promql(url, 'up{job="sim"} == 1'), 60, "Prometheus's first scrape of the simulator", poll_s=0.5)
        f = small_inventory.factory("alpha")
        fixed = promql(url, 'count({job="sim", __name__=~"aif_.+", __name__!="aif_gpu_job_info"})')
        assert int(fixed[0]["value"][1]) == PER_GPU * f.gpu_count + PER_NODE * f.node_count + PER_FACTORY
        jobs = promql(url, 'aif_gpu_job_info{factory="alpha"}')
        assert jobs and all(j["metric"]["job"].isdigit() and j["metric"]["project"].startswith("alpha") for j in jobs)
        # the info metric joins onto GPU power at query time: per project, the power of the GPUs its jobs hold, as
        # the two vectors of one scrape (all evaluated at that scrape's timestamp, so a newer one cannot slip in) give it
        at = float(promql(url, 'timestamp(up{job="sim"})')[0]["value"][1])
        joined = promql(url, 'sum by (project) (aif_gpu_power_watts * on (node, gpu) group_left(project) aif_gpu_job_info)', at)
        power = {(r["metric"]["node"], r["metric"]["gpu"]): float(r["value"][1]) for r in promql(url, "aif_gpu_power_watts", at)}
        by_project = {}
        for j in promql(url, "aif_gpu_job_info", at):
            gpu = (j["metric"]["node"], j["metric"]["gpu"])
            by_project[j["metric"]["project"]] = by_project.get(j["metric"]["project"], 0.0) + power[gpu]
        assert by_project and {r["metric"]["project"]: float(r["value"][1]) for r in joined} == pytest.approx(by_project, rel=1e-9)


def test_promtool_check_metrics_is_silent_on_the_simulator(small_inventory, sim_server):
    promtool = require_binary("promtool")
    address, _ = sim_server(small_inventory, "alpha")
    body = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0 and result.stdout == b"" and result.stderr == b"", result
