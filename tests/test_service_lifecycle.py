"""The live service's life cycle as an operator meets it, driven as processes over real sockets:
a cold start, SIGTERM in the middle of a spill and a restart, silence (stale data) and recovery."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from na64_online.daq.publisher import PublisherConfig, ReadoutPublisher, simulated_ldc_spills
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
from na64_online.monitor.archive import Archive

SCRIPT = Path(sys.executable).with_name("na64-online")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "na64_online.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lines:
    """A process's stdout/stderr lines, read by threads, waited for with timeouts."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.out: queue.Queue = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._pump, args=(proc.stdout, self.out.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(proc.stderr, self.err.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)

    def record(self, timeout: float) -> dict:
        """The next JSON QA record on stdout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.out.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no record within {timeout} s; stderr: {''.join(self.err)[-3000:]}") from None
            if line.startswith("{"):
                return json.loads(line)

    def stderr_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.err):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not on stderr within {timeout} s: {''.join(self.err)[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cold_start_drops_nothing(tmp_path):
    """Empty numba cache and the JIT kernels (as without the ahead-of-time build): the service and its worker
    compile every kernel before subscribing.

    One queued task at most (NA64_INGEST__MAX_QUEUED_TASKS=1): had the first spills arrived while the
    worker compiled, their events would have been dropped (as they were before the warm-up).
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), NA64_INGEST__MAX_QUEUED_TASKS="1",
               NA64_KERNELS="jit")
    env.pop("NA64_CONFIG", None)
    result = subprocess.run(
        [*COMMAND, "demo", "--spills", "3", "--events", "3000", "--spill-duration", "1", "--spill-gap", "0.3",
         "--workers", "1", "--json", "--http", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=360, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["spill"], r["events"], r["dropped_events"]) for r in records] == [(s, 3000, 0) for s in (1, 2, 3)]
    assert "warming up" in result.stderr
    assert any((tmp_path / "numba-cache").rglob("*.nbi"))  # the kernels were compiled into the empty cache


def _simulator(ports, spills: int, events: int, duration: float, gap: float) -> subprocess.Popen:
    args = [*COMMAND, "simulate", "--spills", str(spills), "--events", str(events), "--spill-duration", str(duration),
            "--spill-gap", str(gap), "--wait-subscribers", "1", "--wait-timeout", "60"]
    for ldc, port in zip((1, 2), ports):
        args += ["--publish", f"tcp://127.0.0.1:{port}", "--ldc", str(ldc)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _serve(ports, archive: Path, *extra: str, env=None) -> subprocess.Popen:
    args = [*COMMAND, "serve", "--workers", "0", "--json", "--archive", str(archive), "--spill-timeout", "5",
            *extra]
    for port in ports:
        args += ["--connect", f"tcp://127.0.0.1:{port}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.timeout(180)
def test_sigterm_mid_spill_archives_an_interrupted_spill_and_a_restart_goes_on(tmp_path):
    ports = (free_port(), free_port())
    db = tmp_path / "qa.sqlite"
    sim = _simulator(ports, spills=12, events=6000, duration=4.0, gap=0.5)
    first = _serve(ports, db, "--http", f"127.0.0.1:{free_port()}")
    second = None
    try:
        out = Lines(first)
        url = out.stderr_line("HTTP on http://", 90).rsplit("HTTP on ", 1)[1].strip()
        r1 = out.record(90)
        assert r1["spill"] == 1 and r1["complete"] and not r1.get("interrupted")
        spill_1_events = 2 * (6000 + 2)  # sub-events of both nodes, START/END_OF_BURST included
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
            deadline = time.monotonic() + 30
            while http.get("/api/health").json()["ingest"].get("events_received", 0) < spill_1_events + 1000:
                assert time.monotonic() < deadline, "spill 2 never came"
                time.sleep(0.1)
        first.send_signal(signal.SIGTERM)  # spill 2 is under way
        assert first.wait(30) == 0, "".join(out.err)[-3000:]
        r2 = out.record(5)
        assert r2["spill"] == 2 and r2["interrupted"] is True and 0 < r2["events"] < 6000
        assert r2["quality"]["overall"] == "INTERRUPTED" and r2["alarms"] == []

        # a restarted service goes on with the next spill, judged as usual
        # (if it connects to the two nodes on either side of a START_OF_BURST, that spill is seen in part and
        # archived as interrupted too: then the one after it is the first judged)
        second = _serve(ports, db, "--no-web", "--max-spills", "2")
        again = Lines(second)
        seen_in_part = []
        r3 = again.record(90)
        if r3.get("interrupted"):
            seen_in_part.append(r3["spill"])
            r3 = again.record(90)
        # the archive is written on its own thread: a record goes out as its spill's write is queued; the
        # write follows (a SIGKILL before it would lose that row, not the record)
        deadline = time.monotonic() + 30
        while not _archived(db, r3["spill"]):
            assert time.monotonic() < deadline, f"spill {r3['spill']} was never archived"
            time.sleep(0.05)
        stop(second)
    finally:
        stop(first)
        if second is not None:
            stop(second)
        stop(sim)
    assert r3["spill"] >= 3 and r3["complete"] and r3["events"] == 6000 and not r3.get("interrupted")
    assert r3["quality"]["overall"] in ("GOOD", "WARNING")
    with Archive(db, readonly=True) as archive:
        rows = {r["spill"]: r for r in archive.list_spills()}
        history = archive.alarm_history()
        bad = archive.bad_spills()
    assert rows[2]["overall"] == "INTERRUPTED" and rows[2]["complete"] is False
    assert rows[1]["overall"] != "INTERRUPTED" and rows[r3["spill"]]["overall"] == r3["quality"]["overall"]
    assert history == []  # no alarm raised or cleared: not from the interrupted spill, not from the others
    assert [(b["spill"], b["overall"], b["failing_subsystems"]) for b in bad] == [
        (spill, "INTERRUPTED", []) for spill in (2, *seen_in_part)]
    listed = subprocess.run([*COMMAND, "archive", str(db), "bad-spills"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "\n1,2," in listed.stdout and ",INTERRUPTED," in listed.stdout
    only = subprocess.run([*COMMAND, "archive", str(db), "spills", "--quality", "INTERRUPTED"], capture_output=True,
                          text=True, timeout=60)
    assert [json.loads(line)["spill"] for line in only.stdout.splitlines()] == [2, *seen_in_part]


def _archived(db: Path, spill: int) -> bool:
    import sqlite3

    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM spills WHERE spill = ?", (spill,)).fetchone()[0] > 0


def _publish_spills(publishers, spills) -> None:
    threads = [threading.Thread(target=p.publish, args=(list(s),), daemon=True) for p, s in zip(publishers, spills)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exposed")


def serve_silent_after_2_s(sim, tmp_path: Path):
    """Two readout nodes (LDC 1, 2) of ``sim``'s spills, waiting for their subscriber, and ``serve`` on them
    with an HTTP port and ``no_data_after_seconds = 2``: (spills per LDC, publishers, the serve process)."""
    per_ldc = {ldc: list(simulated_ldc_spills(sim, ldc)) for ldc in (1, 2)}
    publishers = [ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", ldc, fast=True, spill_gap_s=0,
                                                   wait_subscribers=1, wait_timeout_s=60)) for ldc in (1, 2)]
    ports = [int(p.endpoint.rsplit(":", 1)[1]) for p in publishers]
    env = dict(os.environ, NA64_MONITOR__NO_DATA_AFTER_SECONDS="2")
    env.pop("NA64_CONFIG", None)
    return per_ldc, publishers, _serve(ports, tmp_path / "qa.sqlite", "--http", f"127.0.0.1:{free_port()}", env=env)


@pytest.mark.timeout(180)
def test_silence_makes_the_service_stale_and_data_makes_it_ready_again(tmp_path, channel_map):
    """no_data_after_seconds = 2: readout nodes stop → 503, readout_silent, no_data alarm, growing age; resume."""
    sim = ReadoutSimulator(SimulationConfig(spills=2, events_per_spill=500, seed=5), channel_map)
    per_ldc, publishers, proc = serve_silent_after_2_s(sim, tmp_path)
    try:
        lines = Lines(proc)
        url = lines.stderr_line("HTTP on http://", 90).rsplit("HTTP on ", 1)[1].strip()
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
            _publish_spills(publishers, [[per_ldc[ldc][0]] for ldc in (1, 2)])
            assert lines.record(30)["spill"] == 1
            assert http.get("/readyz").status_code == 200
            assert http.get("/api/health").json()["status"] == "ok"

            deadline = time.monotonic() + 20  # the nodes fall silent
            while http.get("/readyz").status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.2)
            ready = http.get("/readyz")
            health = http.get("/api/health").json()
            assert ready.status_code == 503 and ready.json()["reason"] == "readout_silent"
            assert health["status"] == "no_data" and health["reason"] == "readout_silent"
            assert health["liveness"]["latest_spill_age_seconds"] >= 2
            assert health["latest_message_age_seconds"] >= 2
            age1 = _metric(http.get("/metrics").text, "na64_latest_spill_age_seconds")
            time.sleep(1.0)
            metrics = http.get("/metrics").text
            assert _metric(metrics, "na64_latest_spill_age_seconds") >= age1 + 0.9 >= 2.9
            assert _metric(metrics, 'na64_quality_state{subsystem="overall"}') == 1.0  # NO_DATA
            assert _metric(metrics, 'na64_no_data{reason="readout_silent"}') == 1.0
            while "no_data" not in [a["name"] for a in http.get("/api/alarms").json()]:
                assert time.monotonic() < deadline, "no no_data alarm"
                time.sleep(0.2)
            assert http.get("/").status_code == 200  # the page greys itself: tests/test_dashboard.py, in Chromium

            _publish_spills(publishers, [[per_ldc[ldc][1]] for ldc in (1, 2)])  # data again
            assert lines.record(30)["spill"] == 2
            deadline = time.monotonic() + 10
            while "no_data" in [a["name"] for a in http.get("/api/alarms").json()]:
                assert time.monotonic() < deadline, "no_data alarm not cleared"
                time.sleep(0.2)
            assert http.get("/readyz").status_code == 200
            assert http.get("/api/health").json()["status"] == "ok"
            history = http.get("/api/alarms/history", params={"name": "no_data"}).json()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(proc)
        for p in publishers:
            p.close(0)
    assert [h["state"] for h in history] == ["cleared", "raised"]
    assert "readout nodes are silent" in history[1]["detail"]
