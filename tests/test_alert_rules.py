"""Alert rules: the configuration file and its errors, the rules built from the inventory, the Prometheus export."""

import subprocess
import sys
from pathlib import Path

import pytest

from aifmon.alerts.config import AlertRulesError, load_alert_config, parse_alert_config, parse_duration
from aifmon.alerts.prometheus import render_rules
from aifmon.alerts.rules import ALERT_NAMES, SATURATED, build_rules, inhibited, inhibits
from aifmon.telemetry.inventory import load_inventory, parse_inventory
from tests.conftest import inventory_text, require_binary

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL_DIR = ROOT / "tests" / "promtool"

GOOD = """\
evaluation_interval: 10s
scopes:
  factory:
    critical: {percent: 92, for: 1m}
overrides:
  - scope: factory
    factory: alpha
    warning: {percent: 80}
  - scope: system
    factory: alpha
    system: alpha-gpu
    breached: {for: 30s}
  - scope: node
    factory: beta
    power_limit_watts: 2500
notifiers:
  - type: webhook
    url: http://127.0.0.1:9/hook
  - type: email
    smtp: mail.example.org:587
    from: aifmon@example.org
    to: [oncall@example.org]
    username: aifmon
    password_env: AIFMON_SMTP_PASSWORD
"""


@pytest.fixture
def inventory():
    return parse_inventory(inventory_text(), "inv.yaml")


def test_settings_layer_defaults_scope_and_overrides(inventory):
    c = parse_alert_config(GOOD, inventory, "rules.yaml")
    alpha, beta = c.settings("factory", "alpha"), c.settings("factory", "beta")
    assert (alpha.warning.percent, alpha.warning.for_s) == (80, 300)  # override percent, default duration
    assert (alpha.critical.percent, alpha.critical.for_s) == (92, 60)  # the file's scope setting
    assert (beta.warning.percent, beta.critical.percent, beta.breached.percent) == (85, 92, 100)
    assert c.settings("system", "alpha", "alpha-gpu").breached.for_s == 30
    assert c.settings("system", "beta", "beta-gpu").breached.for_s == 60
    assert c.settings("node", "beta", "beta-gpu").power_limit_watts == 2500
    assert c.evaluation_interval_s == 10 and [n.type for n in c.notifiers] == ["webhook", "email"]


def test_rules_cover_every_scope_of_the_inventory(inventory):
    rules = build_rules(inventory, parse_alert_config(GOOD, inventory, "rules.yaml"))
    by = {(r.alertname, r.scope, r.factory, r.system) for r in rules}
    for f, s in (("alpha", "alpha-gpu"), ("beta", "beta-gpu")):
        for name in ("PowerCapWarning", "PowerCapCritical", "PowerCapBreached", "PowerCapForecast", "TelemetryMissing"):
            assert (name, "factory", f, None) in by and (name, "system", f, s) in by
        assert (SATURATED, "gpu", f, s) in by
    caps = {(r.scope, r.factory, r.alertname): r.cap_watts for r in rules if r.kind == "power"}
    assert caps[("factory", "alpha", "PowerCapWarning")] == 15_000.0  # 0.015 MW
    assert caps[("system", "alpha", "PowerCapWarning")] == 12_000.0  # 12 kW
    assert caps[("node", "beta", "PowerCapWarning")] == 2500  # the site's stated node limit
    assert ("node", "alpha", "PowerCapWarning") not in caps, "no node page without a stated limit (an estimate pages for normal training)"
    assert {r.labels["severity"] for r in rules if r.scope == "gpu"} == {"info"}, "GPUs at their limit are shown, not paged"
    missing = next(r for r in rules if r.alertname == "TelemetryMissing" and r.factory == "alpha" and r.system is None)
    assert (missing.expected_gpus, missing.expected_nodes) == (16, 4)
    breached = next(r for r in rules if r.alertname == "PowerCapBreached" and r.scope == "factory")
    assert not breached.passes(1.00, firing=False) and breached.passes(1.001, firing=False)
    assert breached.passes(0.985, firing=True) and not breached.passes(0.975, firing=True)  # hysteresis 2 points


def test_durations():
    assert [parse_duration(x) for x in ("30s", "5m", "1h", "1d", "250ms", 90)] == [30, 300, 3600, 86400, 0.25, 90]
    for bad in ("-5m", -1, "soon", "5 minutes"):
        with pytest.raises(ValueError):
            parse_duration(bad)


@pytest.mark.parametrize("text,expected", [
    ("scopes:\n  rack:\n    warning: {percent: 80}\n", "rules.yaml:2: scopes.rack: unknown scope 'rack'; expected one of factory, system, node, gpu, project"),
    ("scopes:\n  factory:\n    critical: {percent: 120}\n", "rules.yaml:3: scopes.factory.critical.percent: Input should be less than or equal to 100 (got 120)"),
    ("scopes:\n  factory:\n    warning:\n      percent: 80\n      for: -5m\n", "rules.yaml:5: scopes.factory.warning.for: negative duration '-5m'"),
    ("overrides:\n  - scope: factory\n    factory: atlantis\n    warning: {percent: 80}\n",
     "rules.yaml:3: overrides[0].factory: unknown factory 'atlantis'; expected one of alpha, beta"),
    ("overrides:\n  - scope: rack\n    factory: alpha\n", "rules.yaml:2: overrides[0].scope: got 'rack'; input should be"),
    ("overrides:\n  - scope: system\n    factory: alpha\n    system: alpha-cpu\n",
     "rules.yaml:4: overrides[0].system: unknown system 'alpha-cpu' in factory alpha"),
    ("scopes:\n  gpu:\n    forecast: {window: 5m}\n", "rules.yaml:3: scopes.gpu.forecast: does not apply to scope gpu"),
    ("scopes:\n  factory:\n    warning: {percent: 96}\n", "rules.yaml:2: scopes.factory: levels out of order: warning 96 % < critical 95 %"),
    ("notifiers:\n  - type: email\n    smtp: mail:25\n    from: a@b\n    to: [c@d]\n    password: hunter2\n",
     "rules.yaml:6: notifiers[0].password: secrets are not written in the rules file"),
    ("notifiers:\n  - type: webhook\n", "rules.yaml:2: notifiers[0].url: required for a webhook notifier"),
])
def test_bad_rule_files_name_the_key(inventory, text, expected):
    with pytest.raises(AlertRulesError) as e:
        parse_alert_config(text, inventory, "rules.yaml")
    assert any(p.startswith(expected) for p in e.value.problems), e.value.problems


def test_every_problem_is_listed_at_once(inventory):
    text = "scopes:\n  rack: {}\n  factory:\n    critical: {percent: 101, for: -1s}\n"
    with pytest.raises(AlertRulesError) as e:
        parse_alert_config(text, inventory, "rules.yaml")
    assert len(e.value.problems) == 3 and "invalid alert rules rules.yaml" in str(e.value)


def test_a_firing_factory_alert_inhibits_its_own_systems_warnings():
    system_warning = {"alertname": "PowerCapWarning", "scope": "system", "factory": "alpha", "system": "alpha-gpu", "severity": "warning"}
    factory_critical = {"alertname": "PowerCapCritical", "scope": "factory", "factory": "alpha", "severity": "critical"}
    assert inhibited(system_warning, [factory_critical])
    assert not inhibited(system_warning, [factory_critical | {"factory": "beta"}]), "another factory's alert inhibits nothing here"
    assert not inhibited(system_warning | {"alertname": "PowerCapBreached", "severity": "critical"}, [factory_critical]), \
        "a system's own breach is still paged"
    assert inhibited(system_warning, [system_warning | {"alertname": "PowerCapBreached", "severity": "critical"}]), "critical over warning"
    assert not inhibited(system_warning, []), "only firing alerts inhibit"
    # the evaluator passes `inhibited` only the firing alerts that `inhibits`: exactly those that inhibited something above
    saturated = {"alertname": SATURATED, "scope": "gpu", "factory": "alpha", "system": "alpha-gpu", "node": "n1", "gpu": "0", "severity": "info"}
    assert [inhibits(a) for a in (factory_critical, system_warning | {"alertname": "PowerCapBreached", "severity": "critical"},
                                  system_warning, saturated)] == [True, True, False, False]


def _export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aifmon", "--quiet", "alerts", "export-rules", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_export_rules_of_the_demo_inventory_pass_promtool_check(tmp_path):
    promtool = require_binary("promtool")
    out = tmp_path / "aifmon-rules.yml"
    result = _export("--out", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    for name in ALERT_NAMES:
        assert f"alert: {name}" in text, name
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    # 13 live factories x (3 levels + forecast + missing) x (factory + its one system), GPU saturation per system,
    # no node rules (the demo states no node limit), and 3 budget levels per project with an allocation
    inv = load_inventory()
    budgets = sum(1 for p in inv.projects if p.allocation_mwh and not inv.factory(p.factory).planning_only)
    assert text.count("- alert:") == 13 * (5 * 2 + 1) + 3 * budgets


def test_promtool_rule_tests_pass_on_the_committed_rules():
    """The committed rule file is what export-rules writes today, and promtool's tests of it pass."""
    promtool = require_binary("promtool")
    result = _export("--inventory", "tests/promtool/inventory.yaml", "--rules", "tests/promtool/alert-rules.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (PROMTOOL_DIR / "aifmon-rules.yml").read_text(), \
        "tests/promtool/aifmon-rules.yml is stale: regenerate it with the command in this test (--out)"
    check = subprocess.run([promtool, "check", "rules", "aifmon-rules.yml"], capture_output=True, text=True, cwd=PROMTOOL_DIR)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=PROMTOOL_DIR, timeout=120)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_export_refuses_a_bad_rules_file_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scopes:\n  factory:\n    breached: {percent: 110}\n")
    result = _export("--rules", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bad}:3: scopes.factory.breached.percent: Input should be less than or equal to 100" in result.stderr


def test_render_rules_labels(inventory):
    text = render_rules(inventory, load_alert_config(None, inventory))
    assert "scope: factory" in text and "scope: system" in text and "scope: gpu" in text and "scope: node" not in text
    assert "percentage: '{{ $value | humanizePercentage }}'" in text and "cap: 15000 W" in text
