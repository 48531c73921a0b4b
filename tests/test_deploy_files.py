"""Deployment files are valid for the real tools that read them."""

import subprocess
from pathlib import Path

import yaml

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_is_valid_and_keeps_listeners_on_loopback():
    compose = require_binary("docker-compose")
    result = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert all("ports" not in s for s in services.values()), "nothing is published beyond the host's loopback"
    assert services["aifmon"]["stop_signal"] == "SIGINT"


def test_generated_prometheus_config_passes_promtool_and_scrapes_with_factory_labels(tmp_path, sim_server):
    import time

    from telemetry.inventory import parse_inventory
    from telemetry.prometheus_config import write_prometheus_config
    from tests.conftest import free_port, inventory_text
    from tests.servers import prometheus, promql

    address = f"127.0.0.1:{free_port()}"
    inv = parse_inventory(inventory_text({"alpha": address}), "inv.yaml")
    config, targets = write_prometheus_config(inv, tmp_path / "prom", scrape_interval_s=1)
    check = subprocess.run([require_binary("promtool"), "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    sim_server(inv, "alpha", address=address)
    with prometheus(config.read_text(), tmp_path / "prom") as url:
        deadline = time.time() + 60
        while time.time() < deadline and not promql(url, 'up{job="aifmon"} == 1'):
            time.sleep(0.5)
        up = promql(url, 'up{job="aifmon"}')
        assert up and up[0]["metric"]["factory"] == "alpha" and up[0]["metric"]["system"] == "alpha-gpu"
        assert promql(url, 'count(aif_gpu_power_watts{factory="alpha"})')[0]["value"][1] == "16"
