"""Drive an installed ``na64-online`` like a user: ``demo --spills 2`` and its pages. Exit 0 only if all is well.

Usage: ``python tools/wheel_check.py PATH/TO/na64-online`` (run by ``tools/wheel-check``; standard library only).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TIMEOUT_S = 600.0  # a cold numba cache compiles every kernel first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def main(program: str) -> int:
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
    problems = []
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
