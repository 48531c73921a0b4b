"""End to end with real servers: a simulated factory over its cap → Prometheus evaluating the exported rules →
Alertmanager → a webhook in this test; and the embedded evaluator on the same scenario notifies the same alerts."""

import json
import subprocess
import sys
import threading

import pytest

from aifmon.alerts.config import load_alert_config
from aifmon.alerts.evaluator import AlertEvaluator
from aifmon.deploy.alertmanager_config import alertmanager_config
from aifmon.ingest.collector import Collector, targets_of
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.telemetry.inventory import load_inventory
from tests.alert_receivers import WebhookReceiver
from tests.conftest import free_port, inventory_text
from tests.servers import alertmanager, prometheus


def _scope_alerts(alerts: list[dict]) -> set[tuple]:
    """(alertname, scope, factory, system, severity) of the factory and system alerts that fired."""
    return {(a["labels"]["alertname"], a["labels"]["scope"], a["labels"]["factory"], a["labels"].get("system"), a["labels"]["severity"])
            for a in alerts if a["status"] == "firing" and a["labels"]["scope"] in ("factory", "system")}


EXPECTED = {
    # alpha draws its idle load or more (4 nodes x >= 730 W x PUE 1.2 > 3.5 kW) against a 2 kW cap; its warning
    # fires too, and is inhibited by the critical alerts on both paths (the same INHIBITIONS)
    ("PowerCapCritical", "factory", "alpha", None, "critical"),
    ("PowerCapBreached", "factory", "alpha", None, "critical"),
    # beta has no exporter at all: every one of its series is missing
    ("TelemetryMissing", "factory", "beta", None, "critical"),
    ("TelemetryMissing", "system", "beta", "beta-gpu", "critical"),
}


def test_simulator_over_its_cap_pages_through_prometheus_and_alertmanager_and_the_embedded_evaluator(tmp_path, sim_server):
    address = f"127.0.0.1:{free_port()}"
    inv_path = tmp_path / "inv.yaml"
    # alpha's factory cap at 2 kW, its system without a cap of its own (so only factory power alerts)
    inv_path.write_text(inventory_text({"alpha": address}).replace("power_cap_mw: 0.015", "power_cap_mw: 0.002").replace("        power_cap_kw: 12\n", "", 1))
    inventory = load_inventory(inv_path)
    sim_server(inventory, "alpha", address=address)
    hook = WebhookReceiver()
    rules_path = tmp_path / "alert-rules.yaml"
    rules_path.write_text(f"""
evaluation_interval: 1s
stale_after: 5s
scopes:
  factory:
    warning: {{percent: 85, for: 2s}}
    critical: {{percent: 95, for: 2s}}
    breached: {{percent: 100, for: 2s}}
    missing: {{percent: 10, for: 2s}}
  system:
    missing: {{percent: 10, for: 2s}}
notifiers:
  - type: webhook
    url: {hook.url("/embedded")}
""")
    exported = tmp_path / "rules.yml"
    out = subprocess.run([sys.executable, "-m", "aifmon", "--quiet", "alerts", "export-rules", "--inventory", str(inv_path),
                          "--rules", str(rules_path), "--out", str(exported)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    try:
        am_config = f"""
route: {{receiver: hook, group_by: [alertname, factory], group_wait: 1s, group_interval: 1s, repeat_interval: 1h}}
receivers:
  - name: hook
    webhook_configs: [{{url: "{hook.url('/prometheus')}", send_resolved: true}}]
inhibit_rules: {json.dumps(alertmanager_config(load_alert_config(rules_path, inventory))["inhibit_rules"])}
"""
        (tmp_path / "am").mkdir()
        (tmp_path / "prom").mkdir()
        with alertmanager(am_config, tmp_path / "am") as am:
            prom_config = f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
rule_files: ["{exported}"]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["{am.removeprefix('http://')}"]}}]}}]
scrape_configs:
  - job_name: sim
    honor_labels: true
    static_configs: [{{targets: ["{address}"]}}]
"""
            with prometheus(prom_config, tmp_path / "prom"):
                # The embedded path at the same time: collector and evaluator as `aifmon up` runs them.
                store = DuckDBStore(tmp_path / "e2e.duckdb")
                workers = [Collector(store, targets_of(inventory), interval_s=1.0), AlertEvaluator(store, inventory, rules_path)]
                threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
                for t in threads:
                    t.start()
                try:
                    via_prometheus = hook.wait_for("/prometheus", lambda a: _scope_alerts(a) >= EXPECTED, timeout_s=90)
                    embedded = hook.wait_for("/embedded", lambda a: _scope_alerts(a) >= EXPECTED, timeout_s=60)
                finally:
                    for w in workers:
                        w.stop()
                    for t in threads:
                        t.join(timeout=10)
                    store.close()
    finally:
        hook.close()
    assert _scope_alerts(via_prometheus) == _scope_alerts(embedded) == EXPECTED, "the same alerts, and no others, both ways"
    for source in (via_prometheus, embedded):
        breached = next(a for a in source if a["labels"]["alertname"] == "PowerCapBreached")
        assert breached["labels"] == {"alertname": "PowerCapBreached", "scope": "factory", "factory": "alpha", "severity": "critical"}
        assert breached["annotations"]["cap"] == "2000 W"
        assert breached["annotations"]["percentage"].endswith("%") and breached["annotations"]["value"].endswith(" W")
        percent, watts = float(breached["annotations"]["percentage"][:-1]), float(breached["annotations"]["value"][:-2])
        assert percent > 100 and watts > 2000
        # the share is the power over the 2 kW cap (the value is rounded to 1 W, the share to 4 significant digits)
        assert percent == pytest.approx(watts / 2000 * 100, abs=0.1)
        assert set(breached["annotations"]) == {"summary", "value", "cap", "percentage"}
