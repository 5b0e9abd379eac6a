"""The live service as operators run it, as a process: systemd's notify protocol on a real unix datagram
socket (READY after the warm-up, WATCHDOG pings from the service loop that stop while it is stuck, STOPPING),
JSON log lines with run and spill, the guides at /docs, and a real Prometheus with the shipped scrape
configuration seeing the target up (the operator's guide, section 4)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ops_processes import PROMETHEUS, ROOT, Daemon, free_port, http, wait_for

SCRIPT = Path(sys.executable).with_name("na64-online")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "na64_online.cli"]
WATCHDOG_USEC = 2_000_000  # pings every 1 s


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET; keeps (monotonic time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, assignment: str) -> list[float]:
        return [t for t, m in list(self.messages) if assignment in m.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _prometheus_scrapes(workdir: Path, target: str) -> None:
    """Section 4 of the operator's guide, in a scratch directory: the shipped files, the target edited,
    promtool's check, Prometheus started; within 30 s it must see the target up."""
    shipped = ROOT / "deploy" / "prometheus"
    shutil.copy(shipped / "prometheus.yml", workdir / "prometheus.yml")
    shutil.copy(shipped / "na64-online.rules.yml", workdir / "na64-online.rules.yml")
    (workdir / "targets").mkdir()
    text = (shipped / "targets" / "na64-online.yml").read_text().replace("127.0.0.1:8064", target)
    (workdir / "targets" / "na64-online.yml").write_text(text)
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "config", str(workdir / "prometheus.yml")], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    prometheus = Daemon([PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
                         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                        workdir / "prometheus.log")
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def target_up():
            targets = http(f"{api}/targets")["data"]["activeTargets"]
            return [t for t in targets if t["health"] == "up" and t["labels"]["job"] == "na64-online"]

        (up,) = wait_for(target_up, 30, interval=0.5, what="Prometheus to see the na64-online target up")
        assert up["scrapeUrl"] == f"http://{target}/metrics" and up["labels"]["service"] == "na64-online"
        # the start time is the process's, not the scrape's; every panel query of the Grafana board is valid PromQL
        start = float(http(f"{api}/query?query=na64_service_start_time_seconds")["data"]["result"][0]["value"][1])
        assert time.time() - 600 < start < time.time() - 1
        board = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "na64-run-coordinator.json").read_text())
        import urllib.parse

        for panel in board["panels"]:
            for query in panel.get("targets", ()):
                answer = http(f"{api}/query?query={urllib.parse.quote(query['expr'])}")
                assert answer["status"] == "success", (panel["title"], query["expr"], answer)
        rules = http(f"{api}/rules")["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) > 20 and all(r["health"] != "err" for g in rules for r in g["rules"])
    except AssertionError:
        print(prometheus.tail())
        raise
    finally:
        prometheus.stop()


def test_service_notifies_systemd_logs_json_serves_docs_and_is_scraped(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    archive = tmp_path / "qa.sqlite"
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    stdout, stderr = open(tmp_path / "stdout", "w"), open(tmp_path / "stderr", "w")
    launched = time.time()
    proc = subprocess.Popen([*COMMAND, "demo", "--workers", "0", "--http", f"127.0.0.1:{port}", "--archive",
                             str(archive), "--events", "300", "--spill-duration", "0.3", "--spill-gap", "0.7",
                             "--log-format", "json"], stdout=stdout, stderr=stderr, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        # READY once warm (not before: the first messages are STATUS lines of the warm-up), then pings
        wait_for(lambda: notify.times("READY=1") or proc.poll() is not None, 240, interval=0.2, what="READY=1")
        assert proc.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
        assert notify.messages[0][1].startswith("STATUS=warming up")
        ready = notify.times("READY=1")[0]
        wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3, 20, what="watchdog pings")
        assert all(t > ready - 0.5 for t in notify.times("WATCHDOG=1"))
        wait_for(lambda: (tmp_path / "stdout").read_text().count("\n") >= 2, 60, what="two spills")

        # the guides and the delivery figures over HTTP
        page = http(f"{base}/docs/shifter-guide")
        assert '<h3 id="no_data">' in page and '<h3 id="na64servicedown">' in page
        assert "alertmanager" in http(f"{base}/api/health")
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"{base}/docs/img/dashboard.png", timeout=10) as picture:  # the guide's screenshot
            assert picture.read(8) == b"\x89PNG\r\n\x1a\n"

        if PROMETHEUS is not None:
            (tmp_path / "prometheus").mkdir()
            _prometheus_scrapes(tmp_path / "prometheus", f"127.0.0.1:{port}")

        # the archive locked by someone else for 7 s: the spill loop goes on (records out, watchdog pings), the
        # spills wait for the archive (na64_archive_pending_spills), and are all archived once it is released
        def archived() -> set[tuple[int, int]]:
            with sqlite3.connect(archive, timeout=30) as conn:
                return set(conn.execute("SELECT run, spill FROM spills").fetchall())

        def sample(name: str) -> float:
            return float(re.search(rf"^{name} (\S+)$", http(f"{base}/metrics"), re.M).group(1))

        lock = sqlite3.connect(archive, timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        locked, records_before = time.monotonic(), (tmp_path / "stdout").read_text().count("\n")
        wait_for(lambda: sample("na64_archive_pending_spills") >= 2, 20, what="spills waiting for the archive")
        time.sleep(max(0.0, locked + 7.0 - time.monotonic()))
        records_during = (tmp_path / "stdout").read_text().count("\n") - records_before
        lock.execute("ROLLBACK")
        lock.close()
        released = time.monotonic()
        out_by_release = {tuple(map(int, m.groups())) for m in re.finditer(  # "run R spill S: …" per spill
            r"^run (\d+) spill (\d+):", (tmp_path / "stdout").read_text(), re.M)}
        pings = notify.times("WATCHDOG=1")
        gaps = [b - a for a, b in zip(pings, pings[1:]) if locked - 6 < a and b < released]
        assert gaps and max(gaps) < 2.5, gaps  # every ~1 s: the loop never waited for the archive
        assert records_during >= 3
        assert len(out_by_release) >= 5
        wait_for(lambda: out_by_release <= archived(), 60,
                 what="every spill out by the release archived")
        assert sample("na64_archive_spills_dropped_total") == 0

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert notify.times("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        stdout.close()
        stderr.close()
        notify.close()

    # --log-format json: every stderr line is one JSON object carrying run and spill
    lines = [line for line in (tmp_path / "stderr").read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    assert events and all({"time", "level", "logger", "message", "run", "spill"} <= set(e) for e in events)
    assert any(e["run"] == 1 and isinstance(e["spill"], int) for e in events), [
        (e["run"], e["spill"], e["message"][:80]) for e in events][-15:]
    assert any("warming up" in e["message"] for e in events)

    # the analyst's guide's Python works on the archive the service wrote
    guide = (ROOT / "docs" / "analyst-guide.md").read_text()
    code = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    code = code.replace('"qa.sqlite"', repr(str(archive))).replace("1234", "1").replace("17)", "1)")
    exec(compile(code, "analyst-guide.md", "exec"), {})


@pytest.mark.timeout(120)
def test_a_stuck_service_loop_stops_the_watchdog_pings_until_it_moves_again(tmp_path):
    """The pings come from the service loop itself: while it is held (here a command that takes 5 s, run in
    its thread, as the web's commands are) systemd hears nothing, and would restart a loop stuck for
    WatchdogSec; the pings come back when it moves again."""
    from na64_online.config import Config
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.service import LiveService
    from na64_online.systemd import SystemdNotifier

    notify = NotifySocket(tmp_path / "notify.sock")
    config = Config()
    service = LiveService(config, ChannelMap.default(), config.ingest.replace(endpoints=(), workers=0), web=False,
                          warm_up=False, systemd=SystemdNotifier(str(notify.path), watchdog_usec=WATCHDOG_USEC))
    service.start()
    try:
        wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3, 20, what="watchdog pings")
        held = time.monotonic()
        service.ingest.call_soon(lambda: time.sleep(5.0))
        wait_for(lambda: any(t > held + 5.0 for t in notify.times("WATCHDOG=1")), 20, what="pings again")
        assert [t for t in notify.times("WATCHDOG=1") if held + 1.5 < t < held + 4.9] == []
    finally:
        service.stop()
        notify.close()
