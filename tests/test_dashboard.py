"""The factories page: panel data without a browser, then the page itself in headless Chromium."""

import time

import numpy as np
import pytest

from aifmon.dashboard.app import create_app
from aifmon.dashboard.panels import factory_power_history, factory_status, format_watts, level_of
from aifmon.exporters.backfill import backfill
from aifmon.exporters.simulation import FactorySimulation
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key
from aifmon.telemetry.inventory import load_inventory
from tests.browser import callbacks_completed, chromium, console_errors, save_screenshot, serving, wait_for_callbacks

LARGE_GPUS = 2_000
"""A factory above this is simulated for minutes, not hours, in the fixtures."""


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """The demo inventory's 13 factories, two simulated hours ending now, 30 s apart (JAIF's 25,000 GPUs: the last
    5 minutes, as `aifmon up` gives a large factory less history; a snapshot of it is 400,000 samples)."""
    inventory = load_inventory()
    store = DuckDBStore(tmp_path_factory.mktemp("dash") / "demo.duckdb")
    end = time.time()
    epoch = end // 60 * 60 - 3 * 3600
    sims = [FactorySimulation(f, inventory.projects_of(f.id), epoch=epoch, step_s=5.0) for f in inventory.live_factories()]
    for sim in sims:
        backfill(store, sim, end - (7200 if sim.gpu_count <= LARGE_GPUS else 300), end, 30.0)
    fresh = time.time()  # the history took a while to write: one more snapshot each, so that every factory is live now
    for sim in sims:
        backfill(store, sim, fresh - 1, fresh, 30.0)
    yield inventory, store
    store.close()


def test_factory_status_uses_the_meter_or_it_power_times_pue(tmp_path, small_inventory):
    store = DuckDBStore(tmp_path / "s.duckdb")
    now = 1_790_000_000_000
    meter = store.series_ids([series_key("aif_facility_power_watts", {"factory": "alpha", "feed": "main"})])
    nodes = store.series_ids([series_key("aif_node_power_watts", {"factory": f, "node": n, "source": "bmc"})
                              for f, n in (("alpha", "a1"), ("alpha", "a2"), ("beta", "b1"))])
    store.append(meter, np.array([now - 5000]), np.array([14_250.0]))
    store.append(nodes, np.full(3, now - 5000), np.array([6000.0, 6000.0, 5000.0]))
    s = factory_status(store, small_inventory, now).set_index("factory")
    assert s.loc["alpha", "facility_power_watts"] == 14_250.0 and s.loc["alpha", "power_source"] == "meter"
    assert s.loc["alpha", "share_of_cap"] == pytest.approx(0.95)
    assert s.loc["beta", "facility_power_watts"] == pytest.approx(5000.0 * 1.2)  # no meter reported: IT x design PUE
    assert s.loc["beta", "power_source"] == "IT x design PUE"
    assert s.loc["alpha", "data_age_s"] == 5.0
    stale = factory_status(store, small_inventory, now + 3_600_000)
    assert stale["facility_power_watts"].isna().all(), "old samples are not shown as live power"
    store.close()


def test_levels_and_units():
    assert [level_of(x) for x in (0.80, 0.85, 0.96, 1.01, float("nan"))] == ["ok", "warning", "critical", "breached", "no-data"]
    assert [format_watts(x) for x in (950, 85_200, 1_234_000, float("nan"))] == ["950 W", "85.2 kW", "1.23 MW", "no data"]


def test_power_history_sums_feeds_and_averages_buckets(tmp_path, small_inventory):
    store = DuckDBStore(tmp_path / "s.duckdb")
    t0 = 1_790_000_400_000  # ms, on a 10-minute boundary
    keys = [series_key("aif_facility_power_watts", {"factory": f, "feed": feed})
            for f, feed in (("alpha", "main"), ("alpha", "aux"), ("beta", "main"))]
    main, aux, beta = store.series_ids(keys)
    for offset_s, watts in ((0, (9000.0, 1500.0, 6000.0)), (300, (10_500.0, 1500.0, None)),
                            (600, (12_000.0, 1500.0, 8000.0)), (900, (13_500.0, 1500.0, None))):
        ids, values = zip(*((sid, w) for sid, w in zip((main, aux, beta), watts) if w is not None))
        store.append(np.array(ids), np.full(len(ids), t0 + offset_s * 1000), np.array(values))
    hist = factory_power_history(store, small_inventory, t0, t0 + 1_200_000, bucket_s=600)
    store.close()
    # alpha's scrapes sum their feeds (10.5, 12, 13.5, 15 kW), two to a bucket; beta has one scrape per bucket
    assert hist.to_dict("records") == [
        {"factory": "alpha", "t_ms": t0, "watts": 11_250.0, "share_of_cap": 0.75},
        {"factory": "alpha", "t_ms": t0 + 600_000, "watts": 14_250.0, "share_of_cap": 0.95},
        {"factory": "beta", "t_ms": t0, "watts": 6000.0, "share_of_cap": 0.6},
        {"factory": "beta", "t_ms": t0 + 600_000, "watts": 8000.0, "share_of_cap": 0.8},
    ]


def test_factories_page_in_headless_chromium(tmp_path, demo_store):
    inventory, store = demo_store
    with serving(create_app(store, inventory, refresh_s=2.0), "/") as base, chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(f"{base}/")
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.factory-row")) == 13)
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#factories-bars .bars path")) >= 13)
        # read in one script: the live refresh may replace the rows between two WebDriver calls
        text = driver.execute_script(
            "return Array.from(document.querySelectorAll('tr.factory-row')).map(r => r.innerText).join(' ')")
        for f in inventory.live_factories():
            assert f.name in text, f.name
        assert "kW" in text and "%" in text, "figures carry their units"
        assert driver.execute_script("return document.getElementById('factories-reporting').innerText") == "13 / 13"
        assert not driver.find_elements(By.CSS_SELECTOR, ".dash-fe-error__title, .dash-debug-menu__error")
        # every script and style came from this server: no CDN
        sources = driver.execute_script(
            "return Array.from(document.querySelectorAll('script[src], link[href]')).map(e => e.src || e.href)")
        assert sources and all(s.startswith(f"{base}/") for s in sources), sources
        wait_for_callbacks(driver, after=callbacks_completed(driver))  # one live refresh lands without an error
        save_screenshot(driver, "factories-page")
        assert console_errors(driver) == []
