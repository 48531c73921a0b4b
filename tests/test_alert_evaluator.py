"""The embedded evaluator: levels after their durations, hysteresis, forecast, missing telemetry, GPU throttling,
energy budgets, state that survives a restart, rules reloaded (or kept), and notifiers that fail or deliver."""

import json
import math
from datetime import UTC
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aifmon.alerts.evaluator import AlertEvaluator
from aifmon.alerts.notify import AlertmanagerNotifier, EmailNotifier, WebhookNotifier
from aifmon.rollups.hourly import SITE_TABLE
from aifmon.rollups.hourly import TABLE as HOURLY
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import StoreError, series_key
from aifmon.telemetry.inventory import parse_inventory
from tests.alert_receivers import SmtpSink, WebhookReceiver
from tests.conftest import free_port, inventory_text

T0 = 1_790_000_000_000  # ms; a Thursday in 2026-09
RULES = """\
evaluation_interval: 10s
stale_after: 30s
scopes:
  factory:
    warning: {percent: 85, for: 30s}
    critical: {percent: 95, for: 20s}
    breached: {percent: 100, for: 0s}
    hysteresis_percent: 2
    forecast: {window: 15m, horizon: 30m, for: 0s}
    missing: {percent: 10, for: 20s}
  system:
    missing: {percent: 10, for: 20s}
  gpu:
    throttled_for: 30s
"""


class Recorder:
    """A notifier that keeps what it was sent; `fail` makes every attempt raise."""

    def __init__(self, name: str = "recorder", repeat_interval_s: float = 3600.0):
        self.name, self.repeat_interval_s, self.retries = name, repeat_interval_s, 1
        self.sent: list[tuple[dict, list]] = []
        self.fail = False

    def send(self, group, notices, now_ms):
        if self.fail:
            raise OSError("connection refused")
        self.sent.append((group, notices))

    def statuses(self) -> list[tuple[str, str, str]]:
        return [(n.labels["alertname"], n.labels.get("factory", ""), n.status) for _, ns in self.sent for n in ns]


@pytest.fixture
def world(tmp_path):
    text = inventory_text().replace("    factory: alpha\n  - id: alpha-play", "    factory: alpha\n    allocation_mwh: 1\n  - id: alpha-play")
    inventory = parse_inventory(text, "inv.yaml")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    store = DuckDBStore(tmp_path / "a.duckdb")
    yield store, inventory, rules
    store.close()


def put(store, metric: str, rows: list[tuple[dict, float]], t_ms: int) -> None:
    ids = store.series_ids([series_key(metric, labels) for labels, _ in rows])
    store.append(ids, np.full(len(rows), t_ms, dtype=np.int64), np.array([v for _, v in rows], dtype=float))


def meter(store, watts: float, t_ms: int, factory: str = "alpha") -> None:
    put(store, "aif_facility_power_watts", [({"factory": factory, "feed": "main", "instance": "x"}, watts)], t_ms)


def firing(ev: AlertEvaluator, name: str, scope: str = "factory") -> list[dict]:
    return [a.labels for a in ev.alerts.values() if a.state == "firing" and a.labels["alertname"] == name and a.labels["scope"] == scope]


def test_fires_at_96_percent_after_its_duration_and_not_at_80(world, tmp_path):
    store, inventory, rules = world
    rec = Recorder()
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[rec])
    for i in range(7):  # 96 % of alpha's 15,000 W cap, and 80 % of beta's 10,000 W
        t = T0 + i * 10_000
        meter(store, 14_400.0, t)
        meter(store, 8_000.0, t, "beta")
        ev.evaluate(t)
        crit = firing(ev, "PowerCapCritical")
        assert bool(crit) == (i >= 2), f"critical (for 20s) at {i * 10} s"
        assert bool(firing(ev, "PowerCapWarning")) == (i >= 3), f"warning (for 30s) at {i * 10} s"
    assert crit == [{"alertname": "PowerCapCritical", "scope": "factory", "factory": "alpha", "severity": "critical"}]
    assert not firing(ev, "PowerCapBreached")
    assert all(a.labels.get("factory") != "beta" or a.labels["alertname"] == "TelemetryMissing" for a in ev.alerts.values())
    a = next(a for a in ev.alerts.values() if a.labels["alertname"] == "PowerCapCritical")
    assert a.annotations == {"summary": "factory alpha facility power at 96% of its power cap", "value": "14400 W",
                             "cap": "15000 W", "percentage": "96%"}
    assert a.value == pytest.approx(0.96) and a.fired_ms == T0 + 20_000
    # notified once each, however many cycles it stays firing
    assert rec.statuses().count(("PowerCapCritical", "alpha", "firing")) == 1


def test_hysteresis_holds_a_firing_alert_and_nothing_flaps(world, tmp_path):
    store, inventory, rules = world
    rec = Recorder()
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[rec])
    shares = [0.96] * 3 + [0.949, 0.951] * 5 + [0.94] * 3 + [0.92]  # hovers at 95 %, sags to 94 %, then 92 %
    states = []
    for i, share in enumerate(shares):
        meter(store, share * 15_000, T0 + i * 10_000)
        ev.evaluate(T0 + i * 10_000)
        states.append(bool(firing(ev, "PowerCapCritical")))
    assert states == [False, False] + [True] * 14 + [False], "fires after 20 s, holds down to 93 %, resolves below"
    assert rec.statuses().count(("PowerCapCritical", "alpha", "firing")) == 1
    assert rec.statuses().count(("PowerCapCritical", "alpha", "resolved")) == 1
    # below the threshold, hovering never fires: each dip restarts the 20 s
    ev2 = AlertEvaluator(store, inventory, rules, tmp_path / "state2.json", notifiers=[])
    for i, share in enumerate([0.951, 0.949] * 6):
        meter(store, share * 15_000, T0 + 1_000_000 + i * 10_000)
        ev2.evaluate(T0 + 1_000_000 + i * 10_000)
        assert not firing(ev2, "PowerCapCritical")


def test_forecast_fires_before_the_breach(world, tmp_path):
    store, inventory, rules = world
    rules.write_text(RULES.replace("evaluation_interval: 10s\nstale_after: 30s", "evaluation_interval: 1m\nstale_after: 2m"))
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[])
    first_forecast = first_breach = None
    for minute in range(40):  # +150 W a minute from 70 % of 15,000 W: over the cap after 30 minutes
        t = T0 + minute * 60_000
        meter(store, 10_500 + 150 * minute, t)
        ev.evaluate(t)
        if first_forecast is None and firing(ev, "PowerCapForecast"):
            first_forecast = minute
            a = next(a for a in ev.alerts.values() if a.labels["alertname"] == "PowerCapForecast")
            assert a.value == pytest.approx((10_500 + 150 * minute + 150 * 30) / 15_000)
        if first_breach is None and firing(ev, "PowerCapBreached"):
            first_breach = minute
            assert not firing(ev, "PowerCapForecast"), "over the cap, the forecast gives way to the breach"
    # the trend reaches the cap from minute 1, but power is below from_percent (75 %, 11,250 W) until minute 5;
    # 15,150 W is the first over 15,000 W
    assert first_forecast == 5 and first_breach == 31


def test_forecast_history_is_seeded_from_the_store_after_a_restart(world, tmp_path):
    store, inventory, rules = world
    for minute in range(10):
        meter(store, 10_500 + 150 * minute, T0 + minute * 60_000)
    rules.write_text(RULES.replace("evaluation_interval: 10s\nstale_after: 30s", "evaluation_interval: 1m\nstale_after: 2m"))
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[])
    ev.evaluate(T0 + 9 * 60_000 + 1)
    a = next(a for a in ev.alerts.values() if a.labels["alertname"] == "PowerCapForecast")
    assert a.state == "firing" and a.value == pytest.approx((10_500 + 150 * 9 + 4_500) / 15_000, rel=1e-3)


def test_missing_telemetry_fires_for_a_dark_share_of_the_scope(world, tmp_path):
    store, inventory, rules = world
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[])
    for i in range(6):
        t = T0 + i * 10_000
        # alpha: all 4 nodes, 12 of 16 GPUs (4 of 20 series missing = 20 %); beta: all 4 nodes and 16 GPUs
        nodes = [({"factory": f, "system": f"{f}-gpu", "node": f"{f[:4]}n{n:04d}", "source": "bmc"}, 1000.0)
                 for f in ("alpha", "beta") for n in range(1, 5)]
        gpus = [({"factory": f, "system": f"{f}-gpu", "node": f"{f[:4]}n{n:04d}", "gpu": str(g)}, 300.0)
                for f in ("alpha", "beta") for n in range(1, 5) for g in range(4) if not (f == "alpha" and n == 4)]
        put(store, "aif_node_power_watts", nodes, t)
        put(store, "aif_gpu_power_watts", gpus, t)
        ev.evaluate(t)
        # nothing starts before the evaluator has watched for stale_after (30 s); then 20 s pending
        assert bool(firing(ev, "TelemetryMissing")) == (i >= 5), f"missing at {i * 10} s"
    missing = {(a["scope"], a["factory"]) for a in firing(ev, "TelemetryMissing")} | {
        (a["scope"], a["factory"]) for a in firing(ev, "TelemetryMissing", "system")}
    assert missing == {("factory", "alpha"), ("system", "alpha")}
    a = next(a for a in ev.alerts.values() if a.labels == {"alertname": "TelemetryMissing", "scope": "factory", "factory": "alpha", "severity": "critical"})
    assert a.annotations["value"] == "16 of 20 series reporting" and a.annotations["percentage"] == "20%"
    # a restart goes on from the saved state: alpha's alert stays firing at once, nothing is paged anew
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[])
    ev.evaluate(T0 + 5 * 10_000)
    assert {a["factory"] for a in firing(ev, "TelemetryMissing")} == {"alpha"}
    # an exporter that goes dark: everything stale after 30 s, so beta's power alerts cannot look like 0 W and stay silent
    ev.evaluate(T0 + 5 * 10_000 + 40_000)
    ev.evaluate(T0 + 5 * 10_000 + 70_000)
    assert {a["factory"] for a in firing(ev, "TelemetryMissing")} == {"alpha", "beta"}


def test_gpu_held_at_its_power_limit(world, tmp_path):
    store, inventory, rules = world
    rec = Recorder()
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[rec])
    gpu = {"factory": "alpha", "system": "alpha-gpu", "node": "alphn0002", "gpu": "3"}
    other = gpu | {"gpu": "1"}
    for i in range(5):
        t = T0 + i * 10_000
        put(store, "aif_gpu_throttled", [(gpu | {"reason": "sw_power_cap"}, 1.0), (gpu | {"reason": "sw_thermal"}, 0.0),
                                         (other | {"reason": "sw_power_cap"}, float(i % 2))], t)
        put(store, "aif_gpu_power_watts", [(gpu, 700.0), (other, 650.0)], t)
        put(store, "aif_gpu_power_limit_watts", [(gpu, 700.0), (other, 700.0)], t)
        ev.evaluate(t)
    assert firing(ev, "GpuPowerSaturated", "gpu") == [
        {"alertname": "GpuPowerSaturated", "scope": "gpu", "factory": "alpha", "system": "alpha-gpu", "severity": "info",
         "node": "alphn0002", "gpu": "3"}]  # GPU 1, throttled every other sample, never for 30 s
    assert [s for s in rec.statuses() if s[0] == "GpuPowerSaturated"] == [], "shown, not paged: a GPU at its limit is how training runs"
    a = next(a for a in ev.alerts.values() if a.labels.get("gpu") == "3")
    assert (a.annotations["value"], a.annotations["cap"], a.annotations["percentage"]) == ("700 W", "700 W", "100%")


def _ledger_hour(store: DuckDBStore, hour: int, energy_j: float) -> None:
    """One settled hour of the ledger's rows: alpha-train's job 7 used `energy_j` J on one GPU."""
    store.replace_rows(HOURLY, hour, pd.DataFrame({
        "window_start_ms": [hour], "factory": ["alpha"], "system": ["alpha-gpu"], "job": ["7"], "project": ["alpha-train"],
        "access_mode": ["Large Scale"], "energy_j": [energy_j], "gpu_seconds": [3600.0]}))
    store.replace_rows(SITE_TABLE, hour, pd.DataFrame({
        "window_start_ms": [hour], "factory": ["alpha"], "gpu_energy_j": [energy_j], "it_energy_j": [energy_j], "facility_energy_j": [np.nan],
        "estimated_j": [0.0], "covered_s": [3600.0], "expected_s": [3600.0], "gpus": [1], "energy_samples": [240], "job_samples": [240]}))


def test_energy_budget_at_85_90_95_percent(world, tmp_path):
    store, inventory, rules = world
    hour = (T0 // 3_600_000 - 5) * 3_600_000  # settled hours of this month (ended 3 h ago or more)
    for k, energy_j in enumerate((2.0e9, 1.3e9)):  # 3.3e9 J = 0.9167 MWh of alpha-train's 1 MWh
        _ledger_hour(store, hour + k * 3_600_000, energy_j)
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[])
    ev.evaluate(T0)
    budgets = {(a["budget_percent"], a["severity"]) for a in firing(ev, "EnergyBudgetWarning", "project")}
    assert budgets == {("85", "warning"), ("90", "warning")}
    a = next(a for a in ev.alerts.values() if a.labels.get("budget_percent") == "90")
    assert (a.annotations["value"], a.annotations["cap"], a.annotations["percentage"]) == ("0.9167 MWh", "1 MWh", "91.67%")


def test_a_failed_rollup_read_fails_the_cycle_and_leaves_the_budget_source(world, tmp_path, monkeypatch):
    """A store that keeps rollup rows is read for budgets every cycle: one failed read is a failed cycle, not a
    switch to counting the month from counters (this store holds none, which would find no energy at all)."""
    store, inventory, rules = world
    _ledger_hour(store, (T0 // 3_600_000 - 4) * 3_600_000, 3.3e9)
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[])

    def unreachable(table, start_ms, end_ms):
        raise StoreError("store a.duckdb: disk gone")

    monkeypatch.setattr(store, "read_rows", unreachable)
    with pytest.raises(StoreError, match="disk gone"):
        ev.evaluate(T0)
    monkeypatch.undo()
    ev.evaluate(T0 + 10_000)
    budgets = {(a["budget_percent"], a["severity"]) for a in firing(ev, "EnergyBudgetWarning", "project")}
    assert budgets == {("85", "warning"), ("90", "warning")}


def test_restart_neither_repages_nor_forgets(world, tmp_path):
    store, inventory, rules = world
    state = tmp_path / "state.json"
    rec = Recorder()
    ev = AlertEvaluator(store, inventory, rules, state, notifiers=[rec])
    for i in range(3):
        meter(store, 15_600.0, T0 + i * 10_000)  # 104 %
        ev.evaluate(T0 + i * 10_000)
    assert firing(ev, "PowerCapBreached") and rec.statuses().count(("PowerCapBreached", "alpha", "firing")) == 1
    saved = json.loads(state.read_text())
    assert {a["state"] for a in saved["alerts"] if a["labels"]["factory"] == "alpha" and a["labels"]["scope"] == "factory"} == {"firing", "pending"}

    rec2 = Recorder()  # the same notifier after a restart: what it was sent is in the state file
    ev2 = AlertEvaluator(store, inventory, rules, state, notifiers=[rec2])
    assert firing(ev2, "PowerCapBreached"), "a firing alert is not forgotten"
    meter(store, 15_600.0, T0 + 30_000)
    ev2.evaluate(T0 + 30_000)
    assert rec2.statuses().count(("PowerCapBreached", "alpha", "firing")) == 0, "and not paged again"
    assert firing(ev2, "PowerCapWarning"), "the pending warning kept its start time (30 s) and fired"
    assert ("PowerCapWarning", "alpha", "firing") not in rec2.statuses(), "inhibited by the firing breach of the same scope"
    meter(store, 12_000.0, T0 + 40_000)
    ev2.evaluate(T0 + 40_000)
    assert rec2.statuses().count(("PowerCapBreached", "alpha", "resolved")) == 1


def test_a_bad_rules_file_keeps_the_last_good_rules(world, tmp_path):
    store, inventory, rules = world
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[])
    before = ev.rules
    rules.write_text(RULES.replace("critical: {percent: 95", "critical: {percent: 120"))
    assert ev.reload() is False
    assert ev.rules is before and "rules.yaml:6: scopes.factory.critical.percent" in ev.rules_error
    assert json.loads((tmp_path / "state.json").read_text())["rules_error"] == ev.rules_error, "the dashboard can show it"
    meter(store, 14_400.0, T0)
    ev.evaluate(T0)
    assert any(a.labels["alertname"] == "PowerCapCritical" for a in ev.alerts.values()), "95 % still applies"
    rules.write_text(RULES.replace("critical: {percent: 95", "critical: {percent: 97"))
    assert ev.reload() is True and ev.rules_error is None
    ev.evaluate(T0 + 10_000)
    assert not any(a.labels["alertname"] == "PowerCapCritical" for a in ev.alerts.values())


def test_a_failing_notifier_is_retried_counted_and_stops_no_other(world, tmp_path):
    store, inventory, rules = world
    hook = WebhookReceiver()
    smtp = SmtpSink()
    try:
        dead = WebhookNotifier("dead", f"http://127.0.0.1:{free_port()}/nobody", 3600.0, retries=2, timeout_s=1.0)
        flaky = WebhookNotifier("flaky", hook.url("/flaky"), 3600.0, retries=1, timeout_s=2.0)
        good = WebhookNotifier("good", hook.url("/good"), 3600.0, retries=0, timeout_s=2.0)
        mail = EmailNotifier("mail", "127.0.0.1", smtp.port, "aifmon@example.org", ["oncall@example.org"], 3600.0, starttls=False)
        ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[dead, flaky, good, mail], backoff_s=0.01)
        hook.fail = True  # /flaky and /good answer 500 for the first cycle...
        meter(store, 15_600.0, T0)
        ev.evaluate(T0)
        assert ev.stats["dead"].attempts == 3 and ev.stats["dead"].retries == 2 and ev.stats["dead"].failures == 1
        assert ev.stats["flaky"].failures == 1 and "HTTP 500" in ev.stats["flaky"].last_error
        assert len(smtp.messages) == 1 and "PowerCapBreached" in smtp.messages[0], "e-mail went out regardless"
        assert "Subject: [FIRING:1] PowerCapBreached alpha" in smtp.messages[0] and "value: 15600 W" in smtp.messages[0]
        hook.fail = False  # ...then recover: what was owed is delivered, once
        meter(store, 15_600.0, T0 + 10_000)
        ev.evaluate(T0 + 10_000)
        meter(store, 15_600.0, T0 + 20_000)
        ev.evaluate(T0 + 20_000)
        for path in ("/flaky", "/good"):
            breached = [a for a in hook.alerts(path) if a["labels"]["alertname"] == "PowerCapBreached"]
            assert len(breached) == 1 and breached[0]["status"] == "firing", path
            assert breached[0]["annotations"]["percentage"] == "104%"
        payload = hook.posts["/good"][0]
        assert payload["version"] == "4" and set(payload["groupLabels"]) == {"alertname", "factory"}
        subjects = [m.split("\r\n")[0] for m in smtp.messages]
        assert subjects.count("Subject: [FIRING:1] PowerCapBreached alpha") == 1, "de-duplicated: still firing is not news"
        assert "Subject: [FIRING:1] PowerCapCritical alpha" in subjects, "a new alert (critical after its 20 s) is"
        assert ev.stats["dead"].failures == 3 and ev.stats["good"].sent >= 1
    finally:
        hook.close()
        smtp.close()


def test_alertmanager_notifier_posts_to_a_real_alertmanager(world, tmp_path):
    from tests.servers import alertmanager

    store, inventory, rules = world
    hook = WebhookReceiver()
    config = f"""
route: {{receiver: hook, group_by: [alertname, factory], group_wait: 1s, group_interval: 1s, repeat_interval: 1h}}
receivers:
  - name: hook
    webhook_configs: [{{url: "{hook.url('/am')}", send_resolved: true}}]
"""
    try:
        with alertmanager(config, tmp_path) as am:
            ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[AlertmanagerNotifier("am", am)])
            import time

            now = int(time.time() * 1000)
            meter(store, 15_600.0, now)
            ev.evaluate(now)
            got = hook.wait_for("/am", lambda alerts: any(a["labels"]["alertname"] == "PowerCapBreached" for a in alerts), 30)
            a = next(a for a in got if a["labels"]["alertname"] == "PowerCapBreached")
            assert a["labels"] == {"alertname": "PowerCapBreached", "scope": "factory", "factory": "alpha", "severity": "critical"}
            assert a["status"] == "firing" and a["annotations"]["value"] == "15600 W"
            assert ev.stats["am"].sent >= 1 and ev.stats["am"].failures == 0
    finally:
        hook.close()


def test_state_file_is_valid_json_with_nan_free_values(world, tmp_path):
    store, inventory, rules = world
    ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[])
    ev.evaluate(T0)
    ev.evaluate(T0 + 30_000)  # nothing reports after stale_after: TelemetryMissing pending everywhere
    data = json.loads(Path(tmp_path / "state.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["version"] == 1 and data["alerts"] and all(math.isfinite(a["value"]) for a in data["alerts"])


def test_energy_budget_over_victoriametrics_counts_the_month_from_counters(world, tmp_path):
    """A PromQL store keeps no rollup tables: the month's energy comes from the counters themselves."""
    import time
    from datetime import datetime

    from aifmon.stores.store import open_store
    from tests.servers import victoria_metrics

    _, inventory, rules = world
    now = datetime.now(UTC)
    # Recent samples (VictoriaMetrics keeps a month by default), inside this calendar month.
    hour = max(int(time.time()) // 3600 * 3600 - 7200, int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp())) * 1000
    gpu = {"factory": "alpha", "system": "alpha-gpu", "node": "alphn0001", "gpu": "0"}
    with victoria_metrics(tmp_path) as vm:
        store = open_store(vm.url.replace("http://", "victoriametrics+http://"))
        energy, job = store.series_ids([
            series_key("aif_gpu_energy_joules_total", gpu),
            series_key("aif_gpu_job_info", {**gpu, "job": "7", "project": "alpha-train", "access_mode": "Large Scale"})])
        times = np.array([hour, hour + 3_600_000, hour + 7_200_000])
        store.append(np.array([energy] * 3), times, np.array([0.0, 2.0e9, 3.3e9]))  # 0.9167 MWh of alpha-train's 1 MWh
        store.append(np.array([job] * 3), times, np.ones(3))
        vm.force_flush()
        ev = AlertEvaluator(store, inventory, rules, tmp_path / "state.json", notifiers=[])
        ev.evaluate(hour + 7_200_000 + 1000)
    budgets = {(a["budget_percent"], a["severity"]) for a in firing(ev, "EnergyBudgetWarning", "project")}
    assert budgets == {("85", "warning"), ("90", "warning")}
