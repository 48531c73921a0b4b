"""The dashboard's alerts page in headless Chromium: active and resolved alerts with their rule, and the nav."""

import time

import numpy as np

from aifmon.alerts.evaluator import AlertEvaluator
from aifmon.dashboard.app import create_app
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key
from aifmon.telemetry.inventory import parse_inventory
from tests.browser import chromium, console_errors, save_screenshot, serving
from tests.conftest import inventory_text


def test_alerts_page_shows_active_and_resolved_alerts_with_their_rule(tmp_path):
    inventory = parse_inventory(inventory_text(), "inv.yaml")
    store = DuckDBStore(tmp_path / "s.duckdb")
    rules = tmp_path / "rules.yaml"
    rules.write_text("evaluation_interval: 10s\nstale_after: 30s\nscopes:\n  factory:\n    breached: {percent: 100, for: 0s}\n")
    now = int(time.time() * 1000)
    ids = store.series_ids([series_key("aif_facility_power_watts", {"factory": f, "feed": "main"}) for f in ("alpha", "beta")])
    ev = AlertEvaluator(store, inventory, rules, notifiers=[])
    store.append(ids, np.array([now - 20_000] * 2), np.array([15_600.0, 10_500.0]))  # 104 % and 105 %
    ev.evaluate(now - 20_000)
    store.append(ids, np.array([now - 10_000] * 2), np.array([15_600.0, 9_000.0]))  # beta back to 90 %
    ev.evaluate(now - 10_000)
    rules.write_text("scopes:\n  factory:\n    critical: {percent: 101}\n")
    ev.reload()  # refused: the page says so
    with serving(create_app(store, inventory, refresh_s=2.0), "/") as base:
        with chromium(tmp_path) as driver:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            driver.get(f"{base}/")
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.factory-row"))
            driver.find_element(By.ID, "nav-alerts").click()
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.alert-active"))
            active = driver.execute_script(
                "return Array.from(document.querySelectorAll('tr.alert-active')).map(r => r.innerText)")
            breached = [r for r in active if "PowerCapBreached" in r]
            assert len(breached) == 1 and "factory=alpha" in breached[0] and "firing" in breached[0]
            assert "15600 W" in breached[0] and "15000 W" in breached[0] and "104%" in breached[0]
            assert "facility power > 100% of 15000 W for 0s, holds down to 98%" in breached[0], "the rule that fired"
            recent = driver.execute_script("return Array.from(document.querySelectorAll('tr.alert-recent')).map(r => r.innerText)")
            assert any("PowerCapBreached" in r and "factory=beta" in r and "105%" in r for r in recent)
            assert "scopes.factory.critical.percent" in driver.find_element(By.ID, "alerts-rules-error").text
            assert driver.find_element(By.ID, "alerts-critical").text == "1"
            save_screenshot(driver, "alerts-page")
            driver.get(f"{base}/alerts")  # a direct link works too
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.alert-active"))
            driver.find_element(By.ID, "nav-factories").click()
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.factory-row"))
            assert console_errors(driver) == []
        store.close()


def test_alerts_are_grouped_by_rule_and_place_with_counts():
    """120 GPUs at their limit are one closed group of 120 (shown, not paged); a lone factory alert is its own open group."""
    from aifmon.dashboard.pages.alerts import _groups, _kpis

    def alert(name: str, severity: str, scope: str, **labels: str) -> dict:
        return {"labels": {"alertname": name, "scope": scope, "factory": "alpha", "severity": severity, **labels}, "annotations": {},
                "state": "firing", "active_ms": 1, "fired_ms": 2, "resolved_ms": None, "inhibited": False}

    gpus = [alert("GpuPowerSaturated", "info", "gpu", system="alpha-gpu", node=f"n{i // 4}", gpu=str(i % 4)) for i in range(120)]
    warning = alert("PowerCapWarning", "warning", "system", system="alpha-gpu") | {"inhibited": True}
    active = [alert("PowerCapCritical", "critical", "factory"), warning, *gpus]
    groups = _groups(active, "active").children
    summaries = ["".join(c if isinstance(c, str) else c.children for c in g.children[0].children) for g in groups]
    assert len(groups) == 3 and [g.open for g in groups] == [True, True, False]
    assert summaries[2].endswith("gpu alpha / alpha-gpu: 120 alerts (shown, not paged)") and len(groups[2].children[1].children[1].children) == 120
    assert summaries[1].endswith("system alpha / alpha-gpu: 1 alert (shown, not paged)"), "inhibited by the factory's critical alert"
    kpis = {k.children[1].children: k.children[0].children for k in _kpis(active, [])}
    assert kpis == {"firing, critical": "1", "firing, warning": "0", "pending": "0", "shown, not paged": "121", "resolved (24 h)": "0"}
