"""Every dashboard page in headless Chromium against a simulated store, with sign-in and roles; the 25,000-GPU
factory heatmap; and the pages' data functions (planner, budget tree, GPU grid, users) without a browser."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import bcrypt
import numpy as np
import pandas as pd
import pytest

from aifmon.dashboard.accounting import month_energy, months_with_data
from aifmon.dashboard.app import create_app, make_server
from aifmon.dashboard.auth import USERS_ENV, UsersError, load_users
from aifmon.dashboard.live import factory_live, gpu_grid, grid_values
from aifmon.dashboard.planning import budget_tree, plan_power, planned_peak_it_w
from aifmon.exporters.backfill import backfill
from aifmon.exporters.simulation import FactorySimulation
from aifmon.stores.duckdb_store import DuckDBStore
from aifmon.stores.store import series_key
from aifmon.telemetry.inventory import load_inventory, parse_inventory
from tests.browser import callbacks_completed, chromium, console_errors, save_screenshot, serving, wait_for_callbacks
from tests.conftest import inventory_text

PASSWORDS = {"olga": "operator-password-1", "bert": "board-password-22"}
ERROR_OVERLAY = ".dash-fe-error__title, .dash-debug-menu__error, .dash-fe-error-top"


def _users_file(tmp_path) -> object:
    """A users file with one operator and one board member (bcrypt cost 4: fast tests, same format)."""
    def h(p: str) -> str:
        return bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()

    path = tmp_path / "users.yaml"
    path.write_text(f"users:\n  olga: {{role: operator, password_hash: '{h(PASSWORDS['olga'])}'}}\n"
                    f"  bert: {{role: board, password_hash: '{h(PASSWORDS['bert'])}'}}\n")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The demo inventory's 13 factories at full scale, the last hour simulated 30 s apart (JAIF's 25,000 GPUs: the
    last 5 minutes, a snapshot of it is 400,000 samples), a monthly report on disk, and a dashboard with sign-in on a
    free loopback port. Yields (base URL, inventory, store, reports dir)."""
    tmp = tmp_path_factory.mktemp("pages")
    inventory = load_inventory()
    store = DuckDBStore(tmp / "demo.duckdb")
    end = time.time()
    epoch = end // 60 * 60 - 3 * 3600
    sims = [FactorySimulation(f, inventory.projects_of(f.id), epoch=epoch, step_s=5.0) for f in inventory.live_factories()]
    for sim in sims:
        backfill(store, sim, end - (3600 if sim.gpu_count <= 2_000 else 300), end, 30.0)
    stop = threading.Event()

    def keep_live(since: float) -> None:
        """A scrape every 10 s while the tests run, as the collector would: the pages show live data, not stale."""
        while not stop.wait(10.0):
            now = time.time()
            for sim in sims:
                backfill(store, sim, since, now, 10.0)
            since = now

    feeder = threading.Thread(target=keep_live, args=(end,), daemon=True)
    feeder.start()
    reports = tmp / "reports"
    month = time.strftime("%Y-%m", time.gmtime(end))
    (reports / month).mkdir(parents=True)
    (reports / month / "summary.json").write_text(json.dumps({
        "provenance": {"month": month, "generated_at": "2025-01-01T00:00:00Z", "coverage": 0.998},
        "eurohpc": {"energy_kwh": 1234.5, "cost_eur": 150.0, "co2e_kg": 321.0}}))
    (reports / month / "report.html").write_text("<html><body><h1 id='report'>monthly report</h1></body></html>")
    (reports / month / "summary.csv").write_text("scope,name,energy_kwh\nEuroHPC,EuroHPC,1234.5\n")
    app = create_app(store, inventory, refresh_s=2.0, users=load_users(_users_file(tmp)), reports_dir=reports)
    app.enable_dev_tools(debug=True, dev_tools_hot_reload=False, dev_tools_disable_version_check=True)  # Dash's error overlay shows any callback error
    with serving(app, "/login") as base:
        yield base, inventory, store, reports
    stop.set()
    feeder.join()
    store.close()


def _sign_in(driver, base: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/login")
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()


def _wait(driver, css: str, timeout_s: float = 30.0, count: int = 1) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count)


def _no_errors(driver, page: str) -> None:
    from selenium.webdriver.common.by import By

    assert not driver.find_elements(By.CSS_SELECTOR, ERROR_OVERLAY), f"Dash error overlay on {page}"
    assert console_errors(driver) == [], page


# What shows that each page rendered its data: (path, CSS selector, how many at least).
OPERATOR_PAGES = [
    ("/", "tr.factory-row", 13),
    ("/", "#factories-map .scattergeo .point", 13),
    ("/factory?factory=bsc-aif&metric=power&range=1h", "#factory-heatmap .heatmaplayer image, #factory-heatmap .hm image", 1),
    ("/budgets", "tr.budget-row", 30),
    ("/projects", "tr.project-row", 5),
    ("/efficiency", "tr.efficiency-row", 13),
    ("/alerts", "#alerts-active-empty, tr.alert-active", 1),
    ("/reports", "tr.report-row", 1),
]


def test_every_page_renders_for_an_operator(tmp_path, site):
    base, _inventory, _store, _reports = site
    with chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By

        _sign_in(driver, base, "olga", PASSWORDS["olga"])
        _wait(driver, "tr.factory-row", count=13)
        nav = driver.execute_script("return Array.from(document.querySelectorAll('.topbar .nav a')).map(a => a.innerText)")
        assert nav == ["Overview", "Factory live", "Gigafactory budgets", "Projects", "Efficiency", "Alerts", "Reports"]
        for path, css, count in OPERATOR_PAGES:
            driver.get(base + path)
            _wait(driver, css, count=count)
            wait_for_callbacks(driver)  # the page's remaining callbacks land before it is judged
            name = "page-" + (path.strip("/").split("?")[0] or "overview")
            _no_errors(driver, path)
            save_screenshot(driver, name)
        # The overview's base map came from this server (no CDN): plotly drew country outlines from the local topojson.
        driver.get(base + "/")
        _wait(driver, "#factories-map .countries path", count=1)
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert any(u.endswith("/assets/topojson/europe_50m.json") for u in fetched)
        assert all(u.startswith(base) for u in fetched), [u for u in fetched if not u.startswith(base)]
        kpis = driver.find_element(By.ID, "factories-energy").text
        assert kpis.endswith("kWh") or kpis.endswith("MWh"), kpis
        # State in the URL: changing a control rewrites the query string, and the link reopens the same view.
        driver.get(base + "/factory?factory=it4lia&metric=utilisation&range=6h")
        _wait(driver, "#factory-heatmap .hm image, #factory-heatmap .heatmaplayer image")
        assert "utilisation" in driver.find_element(By.ID, "factory-heatmap").text.lower()
        driver.find_element(By.CSS_SELECTOR, "#factory-range input[value='24h']").click()
        _wait_url(driver, "range=24h")
        assert "factory=it4lia" in driver.current_url and "metric=utilisation" in driver.current_url
        _no_errors(driver, "/factory after a change")


def _wait_url(driver, fragment: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(lambda d: fragment in d.current_url)


def test_board_role_sees_only_its_pages(tmp_path, site):
    base, _inventory, _store, reports = site
    with chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By

        _sign_in(driver, base, "bert", PASSWORDS["bert"])
        _wait(driver, "tr.factory-row", count=13)
        nav = driver.execute_script("return Array.from(document.querySelectorAll('.topbar .nav a')).map(a => a.innerText)")
        assert nav == ["Overview", "Projects", "Efficiency", "Reports"]
        cookie = driver.get_cookie("session")["value"]
        for path in ("/factory", "/budgets", "/alerts"):  # the operator pages' addresses: 403 from the server
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(base + path, headers={"Cookie": f"session={cookie}"}), timeout=10)
            assert refused.value.code == 403
        # in-app navigation to one (no link leads there) gets the router's refusal, and no operator data
        driver.execute_script("window.history.pushState({}, '', '/alerts'); window.dispatchEvent(new PopStateEvent('popstate'))")
        _wait(driver, "#forbidden")
        assert not driver.find_elements(By.CSS_SELECTOR, "#factory-heatmap, #budgets-tree, #alerts-active")
        save_screenshot(driver, "board-refused-alerts")
        # The server refuses an operator page's callbacks too, not only the page.
        body = json.dumps({"output": "factory-kpis.children", "outputs": {"id": "factory-kpis", "property": "children"},
                           "inputs": [{"id": "factory-tick", "property": "n_intervals", "value": 1}], "changedPropIds": []}).encode()
        request = urllib.request.Request(base + "/_dash-update-component", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Cookie": f"session={cookie}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        for path, css, count in [p for p in OPERATOR_PAGES if p[0] in ("/projects", "/efficiency", "/reports")]:
            driver.get(base + path)
            _wait(driver, css, count=count)
            _no_errors(driver, path)
        save_screenshot(driver, "board-reports")
        month = next(p.name for p in reports.iterdir())
        driver.get(f"{base}/reports/files/{month}/report.html")
        _wait(driver, "#report")
        assert console_errors(driver) == []


def test_sign_in_refuses_a_wrong_password_and_anonymous_requests(tmp_path, site):
    base = site[0]
    with chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By

        driver.get(base + "/projects")
        _wait(driver, "#login-user")  # sent to the form, then back to the page asked for
        assert "next=/projects" in driver.current_url
        _sign_in(driver, base, "olga", "not-her-password")
        _wait(driver, "#login-error")
        assert "Wrong user name or password" in driver.find_element(By.ID, "login-error").text
        assert not driver.get_cookie("session")
        save_screenshot(driver, "login-refused")
    for path in ("/_dash-layout", "/reports/files/x/report.html"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=10)
        assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(base + "/login", data=b"username=olga&password=x", method="POST"), timeout=10)
    assert refused.value.code == 401


def _big_inventory():
    """Alpha: 3,125 nodes x 8 H100 = 25,000 GPUs (beta, the second factory of the test inventory, too)."""
    text = inventory_text(gpus_per_node=8, nodes=3125).replace("power_cap_kw: 12", "power_cap_kw: 20000").replace("power_cap_kw: 8", "power_cap_kw: 20000")
    return parse_inventory(text.replace("power_cap_mw: 0.015", "power_cap_mw: 25").replace("power_cap_mw: 0.01", "power_cap_mw: 20"),
                           "big.yaml")


def test_the_demo_factory_heatmap_holds_its_25000_gpus(tmp_path, site):
    """The demo's JAIF at the seed's scale: every one of its 25,000 GPUs is a cell of the heatmap, and a live refresh
    (every 2 s, while the fixture scrapes every 10 s) patches z in place and keeps every cell."""
    base, inventory, _store, _reports = site
    assert inventory.factory("jaif").gpu_count == 25_000
    with chromium(tmp_path) as driver:
        _sign_in(driver, base, "olga", PASSWORDS["olga"])
        _wait(driver, "tr.factory-row", count=13)
        driver.get(f"{base}/factory?factory=jaif&metric=power&range=1h")
        _wait(driver, "#factory-heatmap .hm image, #factory-heatmap .heatmaplayer image", timeout_s=60)
        count = ("const gd = document.querySelector('#factory-heatmap .js-plotly-plot');"
                 "const z = gd.calcdata[0][0].z; let n = 0;"
                 "for (const row of z) for (const v of row) if (v !== null && !Number.isNaN(v) && v !== undefined) n++;"
                 "return [n, z.length, z[0].length];")
        cells, rows, cols = driver.execute_script(count)
        assert cells == 25_000, (cells, rows, cols)
        wait_for_callbacks(driver, timeout_s=60, after=callbacks_completed(driver))
        assert driver.execute_script(count)[0] == 25_000
        # the refresh patched the power breakdown too: its four bars carry this tick's GPU counts and megawatts
        names, mw, title = driver.execute_script(
            "const b = document.querySelector('#factory-breakdown .js-plotly-plot');"
            "return [b.data.map(d => d.name), b.data.map(d => d.x[0]), b.layout.title.text];")
        assert names[0].startswith("GPUs in jobs (") and names[1].startswith("idle GPUs (") and len(mw) == 4, names
        busy, idle = (int(n.split("(")[1].rstrip(")").replace(",", "")) for n in names[:2])
        assert busy + idle == 25_000 and 2 < sum(mw) < 29.3, (names, mw)  # MW: above idle GPUs alone, below the cap
        assert title.startswith("Where the power goes now"), title
        _no_errors(driver, "the demo's 25,000-GPU factory")
        save_screenshot(driver, "factory-live-25000-gpus")


# -- without a browser --------------------------------------------------------------------------

def test_gpu_grid_places_every_gpu_once(small_inventory):
    big = _big_inventory().factory("alpha")
    grid = gpu_grid(big)
    assert grid.gpu_count == 25_000 and grid.shape[0] * grid.shape[1] >= 25_000
    assert grid.shape[1] > grid.shape[0], "wider than tall: fits a screen panel"
    frame = pd.DataFrame({"node": [n for n in grid.nodes for _ in range(8)], "gpu": [str(g) for _ in grid.nodes for g in range(8)]})
    frame["value"] = np.arange(len(frame), dtype=float)
    z = grid_values(grid, frame)
    assert np.isfinite(z).sum() == 25_000 and len(np.unique(z[np.isfinite(z)])) == 25_000
    assert z[0, 0] == 0.0 and z[0, 8] == 8.0, "node 2 starts right after node 1's 8 GPUs"
    # unknown nodes and GPU indexes beyond the node's count are dropped, not misplaced
    bad = pd.DataFrame({"node": ["nope", grid.nodes[0]], "gpu": ["0", "9"], "value": [1.0, 2.0]})
    assert np.isfinite(grid_values(grid, bad)).sum() == 0


def test_factory_live_splits_allocated_and_idle_power(tmp_path, small_inventory):
    store = DuckDBStore(tmp_path / "s.duckdb")
    f = small_inventory.factory("alpha")
    end = time.time()
    backfill(store, FactorySimulation(f, small_inventory.projects_of("alpha"), epoch=end - 3 * 3600, step_s=5.0), end - 120, end, 30.0)
    live = factory_live(store, f, gpu_grid(f), "power", int(end * 1000))
    assert live.gpus_reporting == live.gpus_expected == 16 and not live.missing_nodes
    assert live.gpus_allocated + live.gpus_idle == 16
    assert live.allocated_w + live.idle_w == pytest.approx(live.gpu_power_w)
    assert live.jobs["watts"].sum() == pytest.approx(live.allocated_w)
    assert live.it_w > live.gpu_power_w and live.facility_w > live.it_w
    store.close()


def test_factory_live_joins_jobs_by_node_and_gpu(tmp_path, small_inventory):
    """Hand-written samples: GPU power of five GPUs (one on a node outside the inventory), job info for three of them
    (one GPU listed under two jobs: its first row counts) and one job-info row for a GPU that sent no power."""
    store = DuckDBStore(tmp_path / "s.duckdb")
    f = small_inventory.factory("alpha")
    nodes = list(gpu_grid(f).nodes)
    now = int(time.time() * 1000)
    power = [(nodes[0], "0", 500.0), (nodes[0], "1", 400.0), (nodes[1], "0", 300.0), (nodes[1], "3", 100.0), ("elsewhere", "0", 50.0)]
    jobs = [(nodes[0], "0", "j1", "alpha-train"), (nodes[0], "1", "j2", "alpha-play"), (nodes[0], "1", "j3", "alpha-play"),
            (nodes[1], "0", "j1", "alpha-train"), (nodes[2], "2", "j4", "alpha-play")]
    labelled = [("aif_gpu_power_watts", {"factory": "alpha", "node": n, "gpu": g}, w) for n, g, w in power] + \
               [("aif_gpu_job_info", {"factory": "alpha", "node": n, "gpu": g, "job": j, "project": p}, 1.0) for n, g, j, p in jobs]
    ids = store.series_ids([series_key(m, lb) for m, lb, _ in labelled])
    store.append(ids, np.full(len(ids), now - 1000, dtype=np.int64), np.array([v for _, _, v in labelled]))
    live = factory_live(store, f, gpu_grid(f), "power", now)
    assert (live.gpus_reporting, live.gpus_allocated, live.gpus_idle) == (5, 3, 2)
    assert (live.allocated_w, live.idle_w, live.gpu_power_w) == (1200.0, 150.0, 1350.0)
    assert live.jobs.to_dict("list") == {"job": ["j1", "j2"], "project": ["alpha-train", "alpha-play"], "gpus": [2, 1], "watts": [800.0, 400.0]}
    assert live.projects.to_dict("list") == {"project": ["alpha-train", "alpha-play"], "gpus": [2, 1], "watts": [800.0, 400.0]}
    assert live.nodes_reporting == 3 and live.missing_nodes == nodes[2:]
    assert np.nansum(live.grid) == 1300.0, "the GPU outside the inventory has no cell"
    store.close()


def test_planner_figures():
    plan = plan_power(100_000, "B200-SXM-180GB", 0.8, 1.12, 187.5, 120)
    board_w = 140 + (1000 - 140) * 0.8  # idle + (TDP - idle) x utilisation
    assert plan.gpu_w == pytest.approx(100_000 * board_w)
    assert plan.facility_w == pytest.approx(100_000 * (board_w + 187.5) * 1.12)
    assert plan.headroom_w == pytest.approx(120e6 - plan.facility_w)
    assert plan.gpus_in_budget == int(120e6 // ((board_w + 187.5) * 1.12))
    with pytest.raises(ValueError):
        plan_power(1, "B200-SXM-180GB", 1.5, 1.1, 0, 100)


def test_budget_tree_site_hall_system():
    inventory = load_inventory()
    giga = next(f for f in inventory.factories if f.kind == "gigafactory")
    tree = budget_tree(inventory, {"bsc-aif": 60_000.0}, {("bsc-aif", "bsc-aif-gpu"): 50_000.0})
    site = tree.set_index("id").loc["bsc-aif"]
    assert site["budget_w"] == 123_000 and site["headroom_w"] == 63_000 and site["basis"] == "live"  # the demo's 0.123 MW cap
    assert tree.set_index("id").loc["bsc-aif/bsc-aif-gpu", "headroom_w"] == pytest.approx(103_000 - 50_000)  # 103 kW
    halls = tree[(tree["level"] == "hall") & (tree["parent"] == giga.id)]
    assert len(halls) == 4 and halls["budget_w"].sum() == 120e6
    g = tree.set_index("id").loc[giga.id]
    assert g["basis"] == "planned peak" and g["headroom_w"] == pytest.approx(120e6 - planned_peak_it_w(giga) * giga.design_pue)


def test_month_energy_from_samples_without_rollups(tmp_path, small_inventory):
    store = DuckDBStore(tmp_path / "s.duckdb")
    end = time.time()
    for f in small_inventory.live_factories():
        backfill(store, FactorySimulation(f, small_inventory.projects_of(f.id), epoch=end - 3 * 3600, step_s=5.0), end - 1800, end, 30.0)
    month = months_with_data(store)[0]
    energy = month_energy(store, small_inventory, month)
    assert energy.hours_rolled_up == 0 and 1 <= energy.hours_computed <= 2 and energy.hours_missing == 0
    rows = energy.by(small_inventory, "project").rows
    assert set(rows["project"]) <= {"alpha-train", "alpha-play", "beta-science", "(unallocated)"}
    # every joule each GPU's counter rose by over the half hour (the simulator never resets one), jobs and idle together
    counters = store.range("aif_gpu_energy_joules_total", 0, int(end * 1000) + 1).groupby("series_id")["value"]
    assert rows["energy_kwh"].sum() == pytest.approx((counters.last() - counters.first()).sum() / 3.6e6, rel=1e-9)
    store.close()


def test_users_from_file_and_environment(tmp_path):
    users = load_users(_users_file(tmp_path))
    assert users.check("olga", PASSWORDS["olga"]) == "operator" and users.check("bert", PASSWORDS["bert"]) == "board"
    assert users.check("olga", "wrong") is None and users.check("nobody", "x") is None
    hashed = bcrypt.hashpw(b"s3cret-s3cret", bcrypt.gensalt(rounds=4)).decode()
    env = load_users(None, {USERS_ENV: f"ann:board:{hashed}"})
    assert env.check("ann", "s3cret-s3cret") == "board"
    assert load_users(None, {}) is None
    with pytest.raises(UsersError, match="never a plain password"):
        load_users(None, {USERS_ENV: "ann:board:hunter2"})
    with pytest.raises(UsersError, match="role"):
        load_users(None, {USERS_ENV: f"ann:admin:{hashed}"})


def test_beyond_loopback_only_with_users(tmp_path, small_inventory):
    store = DuckDBStore(tmp_path / "s.duckdb")
    with pytest.raises(ValueError, match="without sign-in"):
        make_server(create_app(store, small_inventory), "0.0.0.0:0")
    server = make_server(create_app(store, small_inventory, users=load_users(_users_file(tmp_path))), "0.0.0.0:0")
    server.close()
    store.close()
