"""Real Prometheus and Alertmanager processes for the tests, on free loopback ports, stopped by the tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
PROMETHEUS = shutil.which("prometheus")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body=None, method: str | None = None, timeout: float = 5.0):
    """JSON from ``url`` (GET, or ``method`` with a JSON ``body``); the raw text if it is not JSON."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Content-Type": "application/json"})
    with _OPENER.open(request, timeout=timeout) as response:
        text = response.read().decode()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate()`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - not up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


class Daemon:
    """A subprocess with its log in a file; :meth:`stop` terminates it (kill after 5 s)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self._log_file = open(log, "wb")
        self.process = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log_file.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_alertmanager(workdir: Path) -> tuple[Daemon, str]:
    """Debian's Alertmanager with the shipped deploy/alertmanager configuration, on a free port, no clustering."""
    for name in ("alertmanager.yml", "na64.tmpl"):
        shutil.copy(ROOT / "deploy" / "alertmanager" / name, workdir / name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon([ALERTMANAGER, f"--config.file={workdir / 'alertmanager.yml'}",
                     f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                     "--cluster.listen-address=", "--log.level=warn"], workdir / "alertmanager.log")
    try:
        wait_for(lambda: http(f"{url}/-/ready") is not None, 20, what="Alertmanager ready")
    except AssertionError:
        daemon.stop()
        raise AssertionError("Alertmanager did not start:\n" + daemon.tail()) from None
    return daemon, url
