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
