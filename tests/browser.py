"""Headless Chromium (Debian's chromium and chromium-driver) driven by Selenium, for page tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ARTIFACTS, require_binary


@contextlib.contextmanager
def chromium(tmp_path: Path, width: int = 1500, height: int = 1400) -> Iterator[object]:
    """A Selenium WebDriver on headless Chromium with browser console logging enabled."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = require_binary("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={width},{height}", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(require_binary("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """Browser console entries at SEVERE level (JavaScript errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# Dash's renderer keeps its callbacks in its redux store (`window.store`, as dash.testing reads it): the queues of
# callbacks requested and in flight, and a count of those completed since the page loaded. `stored` holds results
# already applied to the page (dash.testing leaves it out of its pending list too).
_CALLBACKS = """
const c = window.store ? window.store.getState().callbacks : null;
if (!c) return null;
const pending = Object.keys(c).filter(k => k !== 'stored' && Array.isArray(c[k])).reduce((n, k) => n + c[k].length, 0);
return [pending, c.completed];
"""


def callbacks_completed(driver) -> int:
    """How many Dash callbacks the page has completed since it loaded."""
    state = driver.execute_script(_CALLBACKS)
    return state[1] if state else 0


def wait_for_callbacks(driver, timeout_s: float = 30.0, after: int = 0) -> int:
    """Wait until more than `after` callbacks have completed and none is requested or running; returns the count.

    `after=callbacks_completed(driver)` waits for the next live refresh (a tick of the page's interval) to land.
    """
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(d) -> int:  # 0 (falsy) while not yet: WebDriverWait polls on
        state = d.execute_script(_CALLBACKS)
        return state[1] if state and state[0] == 0 and state[1] > after else 0

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(settled, f"Dash callbacks still running after {timeout_s} s")


def save_screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


@contextlib.contextmanager
def serving(app, ready_path: str = "/") -> Iterator[str]:
    """Serve a Dash app on a free loopback port in a thread until the block ends; yields its base URL."""
    import threading

    from aifmon.dashboard.app import make_server
    from tests.conftest import free_port, wait_for_http

    port = free_port()
    server = make_server(app, f"127.0.0.1:{port}")
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + ready_path)
        yield base
    finally:
        server.close()
