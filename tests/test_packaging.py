"""What is installed: one `aifmon` namespace; a node agent that needs only the base install; a parser built in C
by the install."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE_ONLY = {"dash", "duckdb", "pandas", "pyarrow", "plotly", "pydantic"}
"""Distributions (and the modules of the same names) that only `aifmon[site]` installs."""


def _distribution(requirement: str) -> str:
    """The normalised distribution name of a requirement such as `PyYAML>=6` (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("part", ["alerts", "dashboard", "deploy", "exporters", "ingest", "rollups", "stores", "telemetry"])
def test_the_parts_import_only_under_the_aifmon_namespace(part, tmp_path):
    """Outside the repository, `import alerts` fails and `import aifmon.alerts` works: nothing else is installed at the top."""
    def imports(module: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", f"import {module}"], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    top = imports(part)
    assert top.returncode == 1 and f"No module named '{part}'" in top.stderr, top.stderr
    assert imports(f"aifmon.{part}").returncode == 0


def test_the_base_install_brings_no_site_dependency():
    base = {_distribution(r) for r in _pyproject()["project"]["dependencies"]}
    assert base & SITE_ONLY == set()
    assert {_distribution(r) for r in _pyproject()["project"]["optional-dependencies"]["site"]} >= SITE_ONLY


NODE_AGENT = """
import json, sys, time, urllib.request
from importlib.metadata import packages_distributions
started_with = set(sys.modules)  # the interpreter's own (site, a .pth file's)
from aifmon.cli import exporter, main

listen = sys.argv[1]
bodies = []

def scrape_once(children=()):
    # instead of waiting for Ctrl-C: one scrape, once the exporter has polled every fake GPU
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://{listen}/metrics", timeout=2).read().decode()
        except OSError:
            body = ""
        if body.count("aif_gpu_power_watts{") == 8:
            bodies.append(body)
            return None
        time.sleep(0.1)
    raise TimeoutError("no body with 8 GPUs")

exporter.wait_for_signal = scrape_once
status = main(["--quiet", "exporter", "node", "--listen", listen, "--nvml-module", "tests.fake_nvml", *sys.argv[2:]])
loaded, distributions = set(sys.modules) - started_with, packages_distributions()
print(json.dumps({"status": status, "gpus": bodies[0].count("aif_gpu_power_watts{"), "modules": sorted(loaded),
                  "distributions": sorted({d for m in loaded if "." not in m for d in distributions.get(m, [])})}))
"""


def test_the_node_agent_command_loads_only_the_base_install(tmp_path):
    """`aifmon exporter node` (fake NVML, 8 GPUs) serves a body while no module of `aifmon[site]` is loaded, and every
    distribution it loaded is a base dependency: a compute node needs only `pip install aifmon`."""
    from tests.conftest import free_port

    listen = f"127.0.0.1:{free_port()}"
    run = subprocess.run([sys.executable, "-c", NODE_AGENT, listen, "--node", "gn001", "--powercap-root", str(tmp_path / "none"),
                          "--hwmon-root", str(tmp_path / "none"), "--job-dir", str(tmp_path / "jobs")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "AIFMON_FAKE_NVML_GPUS": "8"})
    assert run.returncode == 0, run.stderr
    agent = json.loads(run.stdout)
    assert (agent["status"], agent["gpus"]) == (0, 8)
    assert {m.split(".")[0] for m in agent["modules"]} & SITE_ONLY == set()
    base = {_distribution(r) for r in _pyproject()["project"]["dependencies"]}
    assert {_distribution(d) for d in agent["distributions"]} - {"aifmon"} <= base


def test_the_wheel_holds_only_the_aifmon_namespace(tmp_path):
    """A wheel built from the working tree (links followed) installs `aifmon/` (src/aifmon/) and nothing beside it."""
    def left_out(folder: str, names: list[str]) -> list[str]:  # what a fresh clone lacks
        top = {".git", ".venv", "data", "test-artifacts", "build"} if Path(folder) == ROOT else set()
        return [n for n in names if n in top or n == "__pycache__" or n.endswith((".egg-info", "_cache", ".so"))]

    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=left_out)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("aifmon-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"aifmon", "-".join(wheel.name.split("-")[:2]) + ".dist-info"}
    parts = {n.split("/")[1] for n in names if n.startswith("aifmon/") and n.count("/") >= 2}
    assert parts == {"alerts", "cli", "dashboard", "deploy", "exporters", "ingest", "rollups", "stores", "telemetry"}
    assert "aifmon/telemetry/data/demo-inventory.yaml" in names
    # the parser's C scan, built by the wheel itself (none was copied in)
    assert [n for n in names if n.startswith("aifmon/ingest/_scan.") and n.endswith(".so")], names


def test_an_install_without_the_c_parser_says_how_to_build_it():
    """The extension is optional at install (a node agent needs none): where it was not built, the parser's import says
    what to install in one error, not a bare "No module named"."""
    probe = "import sys; sys.modules['aifmon.ingest._scan'] = None; import aifmon.ingest.parser"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "ImportError: aifmon's exposition parser (ingest/_scan.c) was not built with this install" in run.stderr
    assert "gcc python3-dev" in run.stderr


def test_every_site_dependency_is_named_for_the_node_install_message():
    from aifmon.cli import SITE_MODULES

    site = {_distribution(r).replace("-", "_") for r in _pyproject()["project"]["optional-dependencies"]["site"]}
    assert site == SITE_MODULES


def test_a_site_command_on_the_node_install_says_what_to_install(tmp_path):
    """The node agent's install lacks pandas (simulated by blocking its import): the command says what to install
    in one line, exit 1; a missing module that is no site dependency stays a traceback (a fault in aifmon)."""
    def run(blocked: str) -> subprocess.CompletedProcess:
        probe = (f"import sys; sys.modules[{blocked!r}] = None; from aifmon.cli import main; "
                 f"sys.exit(main(['--quiet', 'rollup', 'energy', '--start', 'now-1h', '--store', 'duckdb:///{tmp_path}/s.duckdb']))")
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)

    result = run("pandas")
    assert result.returncode == 1
    assert result.stderr.strip() == "aifmon: this command needs pandas, which the node agent's install lacks: pip install 'aifmon[site]'"
    result = run("aifmon.rollups.energy")
    assert result.returncode == 1 and "Traceback" in result.stderr and "ModuleNotFoundError" in result.stderr
