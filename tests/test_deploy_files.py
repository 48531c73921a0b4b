"""Deployment files are valid for the real tools that read them: docker-compose, promtool, amtool,
vmagent, vmalert, systemd-analyze, and Prometheus, VictoriaMetrics and Alertmanager themselves."""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_binary, wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SITE_SERVICES = {"config", "prometheus", "victoria-metrics", "alertmanager", "influxdb", "influx-sink", "rollups", "alerts",
                 "dashboard"}
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|KEY", re.I)


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def test_compose_file_is_valid_for_docker_compose_in_both_profiles():
    compose = require_binary("docker-compose")
    for profile in ([], ["--profile", "embedded"]):
        result = _run([compose, "-f", str(COMPOSE), *profile, "config", "-q"])
        assert result.returncode == 0, result.stderr
    listed = _run([compose, "-f", str(COMPOSE), "config", "--services"]).stdout.split()
    assert set(listed) >= SITE_SERVICES and any(s.startswith("sim-") for s in listed)
    # docker-compose 1.29 lists every service whatever the profile: the profile is checked in the file
    assert {name for name, s in _services().items() if "profiles" in s} == {"embedded"}


def test_compose_images_pinned_healthchecked_volumes_named_secrets_not_inline():
    services = _services()
    for name, s in services.items():
        image = s.get("image", "")
        # x.y.z; PostgreSQL's versions have two parts since 10 (15.10 is a patch release of 15)
        pinned = re.search(r":v?\d+\.\d+\.\d+", image) or re.fullmatch(r"postgres:\d+\.\d+(-alpine)?", image)
        assert pinned, f"{name}: image {image!r} is not pinned to a version"
        if name != "config":  # a one-shot job: it exits when the files are written
            assert "healthcheck" in s, f"{name} has no health check"
        for volume in s.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # bind mounts: configuration files only, read-only
                assert volume.endswith(":ro") and source.startswith("./deploy/compose/"), f"{name}: {volume}"
        for key, value in (s.get("environment") or {}).items():
            if SECRET_WORDS.search(key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key} is a secret written inline"
        assert "env_file" not in s or all("secrets" in f for f in s["env_file"])
    assert all(spec["file"].startswith("./deploy/compose/secrets/") for spec in yaml.safe_load(COMPOSE.read_text())["secrets"].values())
    assert (ROOT / "deploy/compose/secrets/.gitignore").read_text().splitlines()[-2:] == ["*", "!.gitignore"]
    assert "deploy/compose/secrets/" in (ROOT / ".dockerignore").read_text()


def test_only_the_dashboard_is_published_and_only_on_the_hosts_loopback():
    services = _services()
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert set(published) == {"dashboard"}
    assert all(p.startswith("127.0.0.1:") for p in published["dashboard"])
    assert services["embedded"]["network_mode"] == "host" and services["embedded"]["profiles"] == ["embedded"]
    # the dashboard signs users in itself (users file from a compose secret; tests/test_security.py runs it), so it
    # listens on its container's network, on the port the host publishes
    dashboard = services["dashboard"]["command"]
    listen = dashboard[dashboard.index("--listen") + 1]
    assert dashboard[dashboard.index("--users") + 1] == "/run/secrets/dashboard_users" and "dashboard_users" in services["dashboard"]["secrets"]
    assert published["dashboard"] == [f"127.0.0.1:{listen.rsplit(':', 1)[1]}:{listen.rsplit(':', 1)[1]}"]


def test_every_aifmon_service_runs_a_command_aifmon_accepts():
    """Each command is parsed by aifmon's own argument parser (an unknown option or command exits 2)."""
    for name, s in _services().items():
        if s.get("image", "").startswith("aifmon:") and name != "config":
            probe = "import sys; from aifmon.cli import build_parser; build_parser().parse_args(sys.argv[1:])"
            result = _run([sys.executable, "-c", probe, *s["command"]], cwd=ROOT)
            assert result.returncode == 0, f"{name}: {result.stderr}"


def _run_config_service(out: Path) -> Path:
    """Run the compose `config` service's script here, with its /etc/aifmon paths moved under `out`."""
    etc = out / "etc-aifmon"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "deploy/compose/inventory.yaml", etc / "inventory.yaml")
    shutil.copy(ROOT / "deploy/compose/alert-rules.yaml", etc / "alert-rules.yaml")
    script = _services()["config"]["command"][0].replace("/etc/aifmon/", f"{etc}/")
    script = re.sub(r"^aifmon ", f"{sys.executable} -m aifmon ", script, flags=re.M)
    result = _run(["sh", "-ec", script], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return etc / "generated"


def test_compose_config_service_generates_files_promtool_amtool_and_vmalert_accept(tmp_path):
    generated = _run_config_service(tmp_path)
    prometheus_yml = generated / "prometheus/prometheus.yml"
    check = _run([require_binary("promtool"), "check", "config", str(prometheus_yml)])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout + check.stderr  # the exported rules are loaded
    rules = generated / "prometheus/rules/aifmon.yml"
    check = _run([require_binary("promtool"), "check", "rules", str(rules)])
    assert check.returncode == 0, check.stdout + check.stderr
    check = _run([require_binary("vmalert"), "-dryRun", f"-rule={rules}", "-loggerLevel=ERROR"])
    assert check.returncode == 0, check.stdout + check.stderr
    check = _run([require_binary("amtool"), "check-config", str(generated / "alertmanager/alertmanager.yml")])
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(prometheus_yml.read_text())
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert config["remote_write"][0]["url"] == "http://victoria-metrics:8428/api/v1/write"


def test_alertmanager_config_routes_to_the_rules_files_receivers_with_secrets_from_files(tmp_path):
    from aifmon.alerts.config import parse_alert_config
    from aifmon.deploy.alertmanager_config import secret_files, write_alertmanager_config
    from aifmon.telemetry.inventory import parse_inventory
    from tests.conftest import inventory_text
    from tests.servers import alertmanager

    inv = parse_inventory(inventory_text(), "inv.yaml")
    rules = parse_alert_config("""
repeat_interval: 2h
group_by: [alertname, factory, severity]
notifiers:
  - {type: webhook, url: "https://chat.example.org/hooks/aifmon", bearer_token_env: AIFMON_WEBHOOK_TOKEN}
  - {type: webhook, url: "http://127.0.0.1:9/hook"}
  - {type: alertmanager, url: "http://127.0.0.1:9093"}
  - {type: email, smtp: "mail.example.org:587", from: aifmon@example.org, to: [oncall@example.org, ops@example.org],
     username: aifmon, password_file: /etc/aifmon/smtp-password}
""", inv, "rules.yaml")
    (path,) = write_alertmanager_config(inv, rules, tmp_path / "am", secrets_dir="/run/secrets")
    check = _run([require_binary("amtool"), "check-config", str(path)])
    assert check.returncode == 0, check.stdout + check.stderr
    text = path.read_text()
    assert "password:" not in text and "credentials:" not in text, "no secret is written into the file"
    config = yaml.safe_load(text)
    assert config["route"]["group_by"] == ["alertname", "factory", "severity"] and config["route"]["repeat_interval"] == "2h"
    receiver, silent = config["receivers"]
    assert config["route"]["routes"] == [{"matchers": ['severity="info"'], "receiver": silent["name"]}] and set(silent) == {"name"}, \
        "what is shown, not paged, reaches no notifier"
    assert {"source_matchers": ['scope=~"factory"', 'alertname=~"PowerCap.*"'], "target_matchers": ['scope=~"system|node|gpu"', 'severity=~"warning"'],
            "equal": ["factory"]} in config["inhibit_rules"], "a factory's page inhibits its systems' warnings, as the embedded evaluator does"
    assert [w["url"] for w in receiver["webhook_configs"]] == ["https://chat.example.org/hooks/aifmon", "http://127.0.0.1:9/hook"]
    assert receiver["webhook_configs"][0]["http_config"]["authorization"]["credentials_file"] == "/run/secrets/AIFMON_WEBHOOK_TOKEN"
    (email,) = receiver["email_configs"]
    assert email["to"] == "oncall@example.org, ops@example.org" and email["auth_password_file"] == "/etc/aifmon/smtp-password"
    assert secret_files(rules) == ["/run/secrets/AIFMON_WEBHOOK_TOKEN", "/etc/aifmon/smtp-password"]
    # a real Alertmanager loads it once the secret files exist
    token, password = tmp_path / "token", tmp_path / "smtp-password"
    token.write_text("t0ken\n")
    password.write_text("pw\n")
    live = text.replace("/run/secrets/AIFMON_WEBHOOK_TOKEN", str(token)).replace("/etc/aifmon/smtp-password", str(password))
    with alertmanager(live, tmp_path) as url:
        import json
        import urllib.request

        status = json.load(urllib.request.urlopen(url + "/api/v2/status", timeout=10))
        assert "credentials_file: " + str(token) in status["config"]["original"]


def test_vmagent_config_passes_vmagent_dry_run_and_shards_targets(tmp_path):
    from aifmon.deploy.vmagent_config import vmagent_command, write_vmagent_config
    from aifmon.telemetry.inventory import parse_inventory
    from tests.conftest import inventory_text

    inv = parse_inventory(inventory_text({"alpha": "10.0.0.1:9401", "beta": "10.0.0.2:9401"}), "inv.yaml")
    config, targets = write_vmagent_config(inv, tmp_path / "vmagent", scrape_interval_s=1, members=2)
    check = _run([require_binary("vmagent"), "-dryRun", f"-promscrape.config={config}", "-loggerLevel=ERROR"])
    assert check.returncode == 0, check.stdout + check.stderr
    assert yaml.safe_load(config.read_text())["global"] == {"scrape_interval": "1s", "scrape_timeout": "800ms"}
    assert "-promscrape.cluster.memberNum=1" in vmagent_command(config, "http://vm:8428/api/v1/write", 2, 1)
    assert "-promscrape.cluster.membersCount=2 -promscrape.cluster.memberNum=1" in config.read_text()


def test_node_exporter_unit_passes_systemd_analyze_verify(tmp_path):
    """The unit as shipped, with ExecStart and EnvironmentFile pointed at files that exist here; systemd-analyze
    reports a bad or unknown directive on stderr (exit status 0), so stderr must be empty too."""
    analyze = require_binary("systemd-analyze")
    unit = (ROOT / "deploy/systemd/aifmon-node-exporter.service").read_text()
    env = tmp_path / "node-exporter.env"
    shutil.copy(ROOT / "deploy/systemd/aifmon-node-exporter.env", env)
    aifmon = shutil.which("aifmon", path=str(Path(sys.executable).parent)) or sys.executable
    local = unit.replace("/opt/aifmon/venv/bin/aifmon", aifmon).replace("/etc/aifmon/node-exporter.env", str(env))
    assert local.count(aifmon) == 1 and str(env) in local
    (tmp_path / "aifmon-node-exporter.service").write_text(local)
    result = _run([analyze, "verify", str(tmp_path / "aifmon-node-exporter.service")])
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    for setting in ("User=aifmon", "CapabilityBoundingSet=\n", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes"):
        assert setting in unit
    security = _run([analyze, "security", "--offline=yes", str(tmp_path / "aifmon-node-exporter.service")])
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout + security.stderr)
    assert exposure and float(exposure.group(1)) <= 2.5, security.stdout[-500:]
    # the node exporter's options in the env file are ones `aifmon exporter node` accepts
    args = re.search(r"^AIFMON_NODE_EXPORTER_ARGS=(.*)$", env.read_text(), re.M).group(1).split()
    probe = "import sys; from aifmon.cli import build_parser; build_parser().parse_args(sys.argv[1:])"
    assert _run([sys.executable, "-c", probe, "exporter", "node", *args], cwd=ROOT).returncode == 0


def test_generated_prometheus_config_scrapes_with_factory_labels_and_remote_writes_to_victoriametrics(tmp_path, sim_server):
    from aifmon.deploy.prometheus_config import write_prometheus_config
    from aifmon.stores.store import open_store
    from aifmon.telemetry.inventory import parse_inventory
    from tests.conftest import free_port, inventory_text
    from tests.servers import prometheus, promql, victoria_metrics

    address = f"127.0.0.1:{free_port()}"
    inv = parse_inventory(inventory_text({"alpha": address}), "inv.yaml")
    with victoria_metrics(tmp_path) as vm:
        config, targets = write_prometheus_config(inv, tmp_path / "prom", scrape_interval_s=1,
                                                  remote_write_url=vm.url + "/api/v1/write")
        check = _run([require_binary("promtool"), "check", "config", str(config)])
        assert check.returncode == 0, check.stdout + check.stderr
        sim_server(inv, "alpha", address=address)
        with prometheus(config.read_text(), tmp_path / "prom") as url:
            up = wait_until(lambda: promql(url, 'up{job="aifmon"} == 1'), 60, "Prometheus's first scrape of the simulator", poll_s=0.5)
            assert up[0]["metric"]["factory"] == "alpha" and up[0]["metric"]["system"] == "alpha-gpu"
            assert promql(url, 'count(aif_gpu_power_watts{factory="alpha"})')[0]["value"][1] == "16"
            # what Prometheus scraped reaches VictoriaMetrics, and aifmon reads it back there
            store = open_store(vm.url.replace("http://", "victoriametrics+http://"), read_only=True)

            def every_gpu_read_back() -> bool:
                vm.force_flush()
                return len(store.latest("aif_gpu_power_watts", lookback_s=60)) == 16

            wait_until(every_gpu_read_back, 60, "the 16 GPUs' power read back from VictoriaMetrics", poll_s=0.5)
            power = store.latest("aif_gpu_power_watts", lookback_s=60)
            assert len(power) == 16 and set(power["factory"]) == {"alpha"} and set(power["system"]) == {"alpha-gpu"}


def test_rollup_schedule_reads_victoriametrics_and_writes_hourly_rows_to_a_rows_store(tmp_path):
    """What the compose `rollups` service runs: samples from VictoriaMetrics, hourly rows to another store."""
    import signal

    from aifmon.exporters.backfill import backfill
    from aifmon.exporters.simulation import FactorySimulation
    from aifmon.stores.duckdb_store import DuckDBStore
    from aifmon.stores.store import open_store
    from aifmon.telemetry.inventory import parse_inventory
    from tests.conftest import inventory_text
    from tests.servers import victoria_metrics

    (tmp_path / "inv.yaml").write_text(inventory_text())
    inv = parse_inventory((tmp_path / "inv.yaml").read_text(), "inv.yaml")
    hour_ms = 3_600_000
    last_hour = (int(time.time() * 1000) - 600_000) // hour_ms * hour_ms - hour_ms  # finished and settled
    with victoria_metrics(tmp_path) as vm:
        url = vm.url.replace("http://", "victoriametrics+http://")
        f = inv.factory("alpha")
        start = last_hour / 1000 - 300  # from just before the hour, so its first interval has a counter to start from
        backfill(open_store(url), FactorySimulation(f, inv.projects_of("alpha"), epoch=start, step_s=60), start,
                 last_hour / 1000 + 3600 + 120, 60.0)
        vm.force_flush()
        rows = tmp_path / "rows.duckdb"
        log = tmp_path / "schedule.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "aifmon", "rollup", "schedule", "--inventory", str(tmp_path / "inv.yaml"),
                                     "--store", url, "--rows-store", f"duckdb:///{rows}", "--since", "now-6h", "--every", "2"],
                                    cwd=ROOT, stderr=out)
        try:
            # the first check rolls up every finished hour since --since at once, and says so (or the command died)
            wait_until(lambda: "hour(s) computed" in log.read_text() or proc.poll() is not None, 120, "the schedule's first rollups")
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0, log.read_text()
    store = DuckDBStore(rows, read_only=True)
    sites = store.read_rows("site_energy_hourly", last_hour, last_hour + 1)
    store.close()
    # the simulator's counters, sampled on the hour's two edges: what its 16 GPUs drew in the hour
    edges = FactorySimulation(f, inv.projects_of("alpha"), epoch=start, step_s=60).snapshots([last_hour / 1000, last_hour / 1000 + 3600])
    first, last = (snap.gpu_energy_joules for snap in edges)
    assert list(sites["factory"]) == ["alpha"]
    assert sites["gpu_energy_j"].iloc[0] == pytest.approx((last - first).sum(), rel=1e-9)
    assert sites["covered_s"].iloc[0] == sites["expected_s"].iloc[0] == 16 * 3600  # the whole hour came from VictoriaMetrics
