"""Drive an installed ``na64-online`` like a user: ``demo --spills 2`` and its pages. Exit 0 only if all is well.

Usage: ``python tools/wheel_check.py PATH/TO/na64-online`` (run by ``tools/wheel-check``; standard library only).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

TIMEOUT_S = 600.0  # a cold numba cache compiles every kernel first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def check_compiled_kernels(program: str) -> list[str]:
    """The wheel's ahead-of-time compiled kernels are used, and ``replay`` with them never imports numba."""
    python = str(Path(program).with_name("python"))
    status = subprocess.run([python, "-c", "from na64_online.decoders._aot import kernels; print(kernels.status())"],
                            capture_output=True, text=True, timeout=120)
    print(f"wheel-check: kernels: {status.stdout.strip() or status.stderr.strip()[-300:]}")
    if status.stdout.strip() != "aot":
        return [f"the installed wheel does not use its compiled kernels: {status.stdout.strip()} {status.stderr[-500:]}"]
    with tempfile.TemporaryDirectory() as work:
        raw = Path(work) / "small.dat"
        made = subprocess.run([program, "simulate", "--events", "200", "--spills", "1", "--out", str(raw)],
                              capture_output=True, text=True, timeout=300)
        if made.returncode != 0:
            return [f"simulate failed: {made.stderr[-500:]}"]
        replay = subprocess.run([python, "-X", "importtime", "-m", "na64_online.cli", "replay", str(raw)],
                                capture_output=True, text=True, timeout=300, env={**os.environ, "NA64_KERNELS": "aot"})
    loaded = {line.rsplit("|", 1)[-1].strip() for line in replay.stderr.splitlines() if line.startswith("import time:")}
    if replay.returncode != 0 or "spill" not in replay.stdout:
        return [f"replay with the compiled kernels failed ({replay.returncode}): {replay.stderr[-500:]}"]
    if "numba" in loaded:
        return ["replay with the compiled kernels imported numba"]
    print(f"wheel-check: replay with the compiled kernels: {replay.stdout.strip()[:120]} (numba not imported)")
    return []


def main(program: str) -> int:
    compiled_problems = check_compiled_kernels(program)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    archive = tempfile.mktemp(suffix=".sqlite")
    demo = subprocess.Popen([program, "demo", "--spills", "2", "--events", "2000", "--http", f"127.0.0.1:{port}",
                             "--archive", archive, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    first_spill = threading.Event()

    def read_stdout() -> None:
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            print(f"wheel-check: demo: {line.rstrip()[:160]}", flush=True)
            first_spill.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    problems = compiled_problems
    try:
        if not first_spill.wait(TIMEOUT_S):
            problems.append("no spill within the time limit")
        else:
            for path, must_hold in (("/", "<title>na64-online shift dashboard</title>"), ("/api/health", '"status"'), ("/metrics", "na64_spills_total"),
                                      ("/docs/shifter-guide", '<h3 id="no_data">')):
                status, body = fetch(base + path)
                ok = status == 200 and must_hold in body
                print(f"wheel-check: GET {path} -> {status}, {len(body)} bytes{'' if ok else ' UNEXPECTED'}")
                if not ok:
                    problems.append(f"GET {path}: status {status}, {must_hold!r} not in the body")
        code = demo.wait(timeout=TIMEOUT_S)
        stderr = demo.stderr.read()
        if code != 0:
            problems.append(f"demo exited {code}: {stderr[-2000:]}")
        if "Traceback" in stderr:
            problems.append(f"a traceback on stderr: {stderr[-2000:]}")
        records = [json.loads(line) for line in lines if line.startswith("{")]
        if [r.get("spill") for r in records] != [1, 2]:
            problems.append(f"expected the records of spills 1 and 2, got {[r.get('spill') for r in records]}")
        for r in records:  # a cold start (numba compiling) must not cost events
            if r.get("dropped_events") or not r.get("complete") or r.get("events") != 2000:
                problems.append(f"spill {r.get('spill')}: {r.get('events')} events, dropped {r.get('dropped_events')}, "
                                f"complete {r.get('complete')}")
    finally:
        if demo.poll() is None:
            demo.kill()
    for problem in problems:
        print(f"wheel-check: FAILED: {problem}", file=sys.stderr)
    if not problems:
        print("wheel-check: the installed wheel runs demo and serves /, /api/health, /metrics and /docs")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
