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
