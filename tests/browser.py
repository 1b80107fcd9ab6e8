"""Headless Chromium for the browser tests, driven by selenium.

Debian's ``chromium`` and ``chromium-driver`` (``make browser`` installs them) and the ``selenium``
package (in the dev extras) are all it needs. The tests run with the network closed, so nothing
may be downloaded: naming chromedriver's path in the ``Service`` makes selenium skip Selenium
Manager (which would otherwise look for a matching driver online), and ``SE_OFFLINE`` keeps it
offline should it run anyway. Each session gets a fresh Chromium profile, removed afterwards.

    with chromium(width=1280, height=900) as driver:
        driver.get(Path("page.html").resolve().as_uri())
        driver.find_element(By.CSS_SELECTOR, "#show-detailed").click()
        png = driver.get_screenshot_as_png()
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-quic", "--hide-scrollbars"]
TIMEOUT = 60  # s: a page load or a script that takes longer than this is a failure, not a wait


def missing() -> str | None:
    """Why a browser test cannot run here, or None when it can."""
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not exe.exists():
            return f"{exe} not installed (`make browser` installs chromium and chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium not installed (it is in the dev extras: pip install -e '.[dev]')"
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[WebDriver]:
    """A selenium ``WebDriver`` on a headless Chromium with a ``width`` x ``height`` window.

    Imported here rather than at the top, so that test modules still import (and their other
    tests run) where selenium is not installed; ``missing()`` says why the browser tests skip.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    profile = tempfile.mkdtemp(prefix="resnetkit-chromium-")
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in [*ARGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"]:
            options.add_argument(arg)
        # chromedriver listens on localhost: an http_proxy in the environment must not reroute that.
        options.ignore_local_proxy_environment_variables()
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        try:
            driver.set_page_load_timeout(TIMEOUT)
            driver.set_script_timeout(TIMEOUT)
            yield driver
        finally:
            driver.quit()  # ends the session (and with it Chromium), then stops chromedriver
    finally:
        shutil.rmtree(profile, ignore_errors=True)
