"""Headless Debian Chromium driven by Selenium (chromedriver), for the dashboard's end-to-end tests.

Every request the page makes is read from Chrome's performance log, so a test can assert that none
leaves the machine; Bokeh's widgets live in shadow roots, reached with :meth:`Browser.deep`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = (None if CHROMIUM and CHROMEDRIVER else
           "needs Debian's chromium and chromium-driver (tools/setup installs them)")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-default-apps", "--disable-extensions", "--mute-audio")

#: a JS function: the first element matching ``selector`` (and containing ``text``) in the page or any shadow root
DEEP_FIND = """
const selector = arguments[0], text = arguments[1];
function walk(root) {
  for (const el of root.querySelectorAll(selector)) {
    if (!text || (el.textContent || "").includes(text)) { return el; }
  }
  for (const el of root.querySelectorAll("*")) {
    if (el.shadowRoot) { const found = walk(el.shadowRoot); if (found) { return found; } }
  }
  return null;
}
return walk(document);
"""


class Browser:
    def __init__(self, profile: Path, width: int = 1920, height: int = 1080) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.binary_location = CHROMIUM
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(10)
        self.requests: list[str] = []
        self.console: list[dict] = []

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.wait(lambda: self.js("return !!(window.Bokeh && Bokeh.documents.length && window.na64 && na64.wsOpen "
                                  "&& document.getElementById('na64-conditions').innerHTML.length > 0)"), 30,
                  "the dashboard's document, websocket and header")
        time.sleep(1.0)  # the first render settles

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def model(self, name: str, expression: str):
        """``expression`` evaluated with ``m`` = the page's Bokeh model called ``name``."""
        return self.js(f"const m = Bokeh.documents[0].get_model_by_name({json.dumps(name)}); "
                       f"return m === null ? null : {expression};")

    def deep(self, selector: str, text: str | None = None):
        return self.js(DEEP_FIND, selector, text)

    def wait(self, condition, timeout: float, what: str, interval: float = 0.05):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)

    def collect_logs(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
            elif message.get("method") == "Network.webSocketCreated":
                self.requests.append(message["params"]["url"])
        self.console.extend(self.driver.get_log("browser"))

    def foreign_requests(self) -> list[str]:
        """Network requests (http, https, ws, wss) to anything but 127.0.0.1; the browser's own start page
        (chrome://) and data: URLs are not network requests."""
        self.collect_logs()
        return [u for u in self.requests
                if urlparse(u).scheme not in ("chrome", "data", "about", "chrome-search", "blob")
                and urlparse(u).hostname != "127.0.0.1"]

    def console_errors(self) -> list[dict]:
        self.collect_logs()
        return [e for e in self.console if e["level"] == "SEVERE"]

    def screenshot(self, path: Path, width: int, height: int) -> Path:
        self.driver.set_window_size(width, height)
        # the viewport, not the window, is what a shifter sees: size it exactly
        inner = self.js("return [window.innerWidth, window.innerHeight]")
        self.driver.set_window_size(width + (width - inner[0]), height + (height - inner[1]))
        time.sleep(0.8)  # the layout settles
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def close(self) -> None:
        self.driver.quit()
