"""The `aifmon` command as an operator types it: outputs, exit codes and error messages."""

import csv
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from aifmon.exporters.backfill import backfill
from aifmon.exporters.simulation import FactorySimulation
from aifmon.stores.duckdb_store import DuckDBStore
from tests.conftest import free_port, inventory_text, wait_for_http


def aifmon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aifmon", "--quiet", *args], capture_output=True, text=True, timeout=timeout)


def test_inventory_show_json_and_table():
    out = aifmon("inventory", "show", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["factories"]) == 14 and data["illustrative"] is True
    table = aifmon("inventory", "show")
    assert "ILLUSTRATIVE" in table.stdout and "gigafactory-scenario" in table.stdout and "100,000" in table.stdout


def test_bad_inventory_exits_2_with_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(inventory_text().replace("power_cap_mw: 0.015", "power_cap_mw: lots"))
    out = aifmon("inventory", "show", "--inventory", str(bad))
    assert out.returncode == 2
    assert f"{bad}:9: factories[0].power_cap_mw" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args,message", [
    (["rollup", "energy", "--start", "now-1h", "--store", "sqlite:///x.db"], "is not understood"),
    (["rollup", "energy", "--start", "yesterday-ish"], "time 'yesterday-ish' is not understood; use ISO 8601"),
    (["rollup", "energy", "--start=now", "--end=-1h"], "--end -1h is not after --start now"),
    (["rollup", "hourly", "--store", "prometheus+http://127.0.0.1:1"], "store prometheus+http://127.0.0.1:1 cannot"),
    (["exporter", "sim", "--factory", "atlantis"], "no factory 'atlantis'"),
    (["exporter", "sim", "--factory", "slaif", "--listen", "nowhere"], "listen address 'nowhere' is not host:port"),
    (["exporter", "node", "--no-gpu", "--web-config", "/nonexistent/web.yml"], "web config /nonexistent/web.yml"),
    (["dashboard", "--listen", "0.0.0.0:8050", "--store", "duckdb:////nonexistent/x.duckdb"], "does not exist"),
    (["store", "import", "/nonexistent/x.om", "--store", "duckdb:///{tmp}/x.duckdb"], "cannot read /nonexistent/x.om: No such file"),
    (["report", "monthly", "--month", "2025-13", "--out", "{tmp}/report"], "month '2025-13': expected YYYY-MM"),
    (["alerts", "export-rules", "--out", "/nonexistent/rules.yml"], "cannot write /nonexistent/rules.yml: No such file"),
    (["up", "--store", "prometheus+http://127.0.0.1:1"], "cannot be the embedded store (a duckdb:/// file)"),
])
def test_bad_input_exits_2_with_one_line_naming_it(args, message, tmp_path):
    out = aifmon(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert (out.returncode, out.stderr.count("\n")) == (2, 1) and message in out.stderr, out.stderr


def test_a_port_in_use_exits_2_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        out = aifmon("exporter", "sim", "--factory", "slaif", "--listen", listen)
    assert (out.returncode, out.stderr) == (2, f"aifmon: cannot listen on {listen}: Address already in use\n")


def test_a_store_that_fails_exits_1_with_its_message(tmp_path):
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_text("not a database")
    out = aifmon("rollup", "energy", "--start=-1h", "--store", f"duckdb:///{garbage}")
    assert out.returncode == 1 and out.stderr.startswith(f"aifmon: cannot open store {garbage}") and "Traceback" not in out.stderr


def test_a_fault_in_aifmon_is_a_traceback_not_bad_input(monkeypatch):
    """Only UserError means bad input: a KeyError or ValueError from aifmon's own code escapes main() as itself."""
    from aifmon.cli import inventory, main

    def broken(args):
        return {}["factories"]

    monkeypatch.setattr(inventory, "show", broken)
    with pytest.raises(KeyError, match="factories"):
        main(["--quiet", "inventory", "show"])


def test_ctrl_c_exits_130(monkeypatch):
    from aifmon.cli import inventory, main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(inventory, "show", interrupted)
    assert main(["--quiet", "inventory", "show"]) == 130


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "cli.duckdb"
    inv_path = path.parent / "inv.yaml"
    inv_path.write_text(inventory_text())
    from aifmon.telemetry.inventory import load_inventory

    inv = load_inventory(inv_path)
    store = DuckDBStore(path)
    epoch = 1_790_000_000.0
    for f in inv.live_factories():
        backfill(store, FactorySimulation(f, inv.projects_of(f.id), epoch=epoch, step_s=5.0), epoch, epoch + 7201, 60.0)
    store.close()
    return path, inv_path, epoch


def test_rollup_energy_formats(filled_store):
    path, inv_path, epoch = filled_store
    common = ["rollup", "energy", "--store", f"duckdb:///{path}", "--inventory", str(inv_path),
              "--start", str(int(epoch + 3600)), "--end", str(int(epoch + 7200))]
    table = aifmon(*common, "--by", "factory")
    assert table.returncode == 0, table.stderr
    assert "GPU energy kWh" in table.stdout and "CO2e kg" in table.stdout and "Our World in Data" in table.stdout
    assert "alpha" in table.stdout and "beta" in table.stdout
    js = json.loads(aifmon(*common, "--by", "project", "--format", "json").stdout)
    assert js["hours"] == 1.0 and js["coverage"] == pytest.approx(1.0) and "2023" in js["carbon_intensity_source"]
    assert sum(r["energy_kwh"] for r in js["rows"]) == pytest.approx(js["total_energy_kwh"])
    rows = list(csv.DictReader(io.StringIO(aifmon(*common, "--by", "job", "--format", "csv").stdout)))
    assert rows and {"job", "project", "energy_kwh", "coverage", "carbon_intensity_source"} <= set(rows[0])


def test_rollup_energy_reads_settled_hours_from_the_hourly_rollups_unless_told_from_samples(filled_store, tmp_path):
    path, inv_path, epoch = filled_store
    copy = tmp_path / "copy.duckdb"
    shutil.copy(path, copy)
    store = ["--store", f"duckdb:///{copy}", "--inventory", str(inv_path)]
    assert aifmon("rollup", "hourly", *store).returncode == 0
    common = ["rollup", "energy", *store, "--start", str(int(epoch)), "--end", str(int(epoch + 7200)), "--format", "json"]
    reused, raw = json.loads(aifmon(*common).stdout), json.loads(aifmon(*common, "--from-samples").stdout)
    # 1,790,000,000 s is 13 min 20 s past an hour: one whole hour in the range, and one hour around it
    assert (reused["hours_from_hourly_rollups"], reused["hours_from_samples"]) == (1, pytest.approx(1.0))
    assert (raw["hours_from_hourly_rollups"], raw["hours_from_samples"]) == (0, pytest.approx(2.0))
    assert reused["total_energy_kwh"] == pytest.approx(raw["total_energy_kwh"], rel=1e-9) and raw["total_energy_kwh"] > 0


def test_exporter_sim_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aifmon", "--quiet", "exporter", "sim", "--factory", "slaif",
                             "--listen", f"127.0.0.1:{port}", "--epoch", str(time.time() - 3600)])
    try:
        body = wait_for_http(f"http://127.0.0.1:{port}/metrics").decode()
        assert 'aif_gpu_power_watts{factory="slaif"' in body
        assert wait_for_http(f"http://127.0.0.1:{port}/").startswith(b"<html>")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_collect_once(tmp_path, sim_server):
    a = f"127.0.0.1:{free_port()}"
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(inventory_text({"alpha": a}))
    from aifmon.telemetry.inventory import load_inventory

    sim_server(load_inventory(inv_path), "alpha", address=a)
    out = aifmon("collect", "--once", "--inventory", str(inv_path), "--store", f"duckdb:///{tmp_path}/c.duckdb")
    assert out.returncode == 0, out.stderr
    stored = DuckDBStore(tmp_path / "c.duckdb", read_only=True)
    try:
        assert out.stdout == f"{stored.sample_count()} samples stored in duckdb:///{tmp_path}/c.duckdb\n"
        gpus = stored.latest("aif_gpu_power_watts")
        assert (len(gpus), set(gpus["factory"])) == (16, {"alpha"}), "every GPU of the one target's 4 nodes x 4 GPUs"
    finally:
        stored.close()


def test_store_export_then_import(filled_store, tmp_path):
    path, inv_path, epoch = filled_store
    out = tmp_path / "export.om"
    exported = aifmon("store", "export", "--store", f"duckdb:///{path}", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    imported = aifmon("store", "import", str(out), "--store", f"duckdb:///{tmp_path}/copy.duckdb")
    assert imported.returncode == 0, imported.stderr
    source = DuckDBStore(path, read_only=True)
    try:
        assert imported.stdout.startswith(f"{source.sample_count()} samples imported")
    finally:
        source.close()
    bad = tmp_path / "bad.om"
    bad.write_text("# TYPE m gauge\nm 1 1790000000\nm{a=\"x\"} one 1790000000\n# EOF\n")
    refused = aifmon("store", "import", str(bad), "--store", f"duckdb:///{tmp_path}/bad.duckdb")
    assert refused.returncode == 2 and "line 3" in refused.stderr and str(bad) in refused.stderr


def test_efficiency_hpl_records_into_the_store_also_from_a_trace_file(filled_store, tmp_path):
    """`--record` keeps the result in --store, where the monthly report's league reads it, also when the power trace
    comes from a file (which is loaded into a temporary store of its own)."""
    from aifmon.rollups.efficiency import HPL_TABLE

    path, inv_path, epoch = filled_store
    trace, rows_store = tmp_path / "trace.om", tmp_path / "rows.duckdb"
    assert aifmon("store", "export", "--store", f"duckdb:///{path}", "--out", str(trace)).returncode == 0
    out = aifmon("efficiency", "hpl", "--inventory", str(inv_path), "--trace", str(trace), "--rmax-gflops", "1e6",
                 "--core-start", str(int(epoch + 600)), "--core-end", str(int(epoch + 1800)), "--total-nodes", "8",
                 "--record", "--store", f"duckdb:///{rows_store}", "--format", "json")
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    store = DuckDBStore(rows_store, read_only=True)
    try:
        recorded = store.read_rows(HPL_TABLE, 0, 2**62)
    finally:
        store.close()
    assert len(recorded) == 1 and recorded["window_start_ms"].iloc[0] == int(epoch + 600) * 1000
    assert recorded["gflops_per_watt"].iloc[0] == pytest.approx(printed["gflops_per_watt"], rel=1e-12)
    assert recorded["system"].iloc[0] == "measured system"
