"""A small W3C WebDriver client for headless Chromium, spoken over HTTP with urllib.

Debian's ``chromium`` and ``chromium-driver`` are all it needs (``make browser`` installs them):
no selenium, no downloads. Each ``Browser`` starts its own chromedriver on a free port and a
Chromium with a fresh profile, and removes both on ``close()``.

    with Browser() as b:
        b.get(Path("page.html").resolve().as_uri())
        b.click(b.find("#show-detailed"))
        png = b.screenshot()
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-quic", "--hide-scrollbars"]


def missing() -> str | None:
    """Why a browser test cannot run here, or None when it can."""
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not exe.exists():
            return f"{exe} not installed (`make browser` installs chromium and chromium-driver)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(RuntimeError):
    pass


class Browser:
    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.profile = tempfile.mkdtemp(prefix="resnetkit-chromium-")
        self.session: str | None = None
        # Its own process group, so close() can end the driver and the browser it started.
        self.driver = subprocess.Popen([str(CHROMEDRIVER), f"--port={self.port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        try:
            self._wait_ready()
            options = {"binary": str(CHROMIUM),
                       "args": [*ARGS, f"--window-size={width},{height}",
                                f"--user-data-dir={self.profile}"]}
            caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                     "goog:chromeOptions": options}}}
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.driver.poll() is not None:
                raise WebDriverError(f"chromedriver exited with code {self.driver.returncode}")
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(0.1)
        raise WebDriverError("chromedriver did not become ready")

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            try:
                value = json.loads(e.read()).get("value", {})
                msg = f"{value.get('error')}: {value.get('message', '').splitlines()[0]}"
            except (ValueError, AttributeError, IndexError):
                msg = str(e)
            raise WebDriverError(f"{method} {path}: {msg}") from None

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def find(self, css: str) -> str:
        """The element reference of the first match of ``css``."""
        return self._call("POST", self._s("/element"), {"using": "css selector", "value": css})[ELEMENT]

    def click(self, element: str) -> None:
        self._call("POST", self._s(f"/element/{element}/click"), {})

    def execute(self, script: str, *args):
        """Run ``script`` (a function body: use ``return``) in the page; JSON in, JSON out."""
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def screenshot(self) -> bytes:
        """The viewport as PNG bytes."""
        return base64.b64decode(self._call("GET", self._s("/screenshot")))

    def close(self) -> None:
        if self.session is not None:
            try:
                self._call("DELETE", self._s(""))
            except (OSError, WebDriverError):
                pass
            self.session = None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.driver.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.driver.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
