"""Dashboard benchmark (issue #10): not a test, run it by hand.

    .venv/bin/python bench/bench_dashboard.py                       # 20 clients, 40 s per phase
    .venv/bin/python bench/bench_dashboard.py --clients 20 --seconds 60 --events 20000

The live service (``na64-online serve --workers 0``: decoding in the service process) subscribed to two
simulated readout nodes (``na64-online simulate --publish``, SPS pacing: ``--spill-duration`` seconds of
beam, then ``--spill-gap``), all on 127.0.0.1. Three phases of ``--seconds`` each: no dashboard client,
one, then ``--clients`` at once. A client is what a browser tab is to the server: it loads the page (a
Bokeh server session), opens the page's websocket with the session token and receives every update
(a raw websocket client in one separate process, so that 20 clients cost the machine little beside
the service). Per phase: the service process's CPU (utime + stime from /proc, % of one core), the
ingest rate (events received per second, from ``/api/health``), and for the clients the update latency:
the arrival of the spill's update at each client minus the spill's publication time (its QA record),
p50 and p99 over clients × spills.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLOCK = os.sysconf("SC_CLK_TCK")
NA64 = Path(sys.executable).with_name("na64-online")
PUBLISHED = re.compile(rb'"published_at"\s*[,:]\s*\[\s*([0-9.eE+]+)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK  # utime, stime


async def connect(url: str):
    """One dashboard page as the server sees it: GET / (a session), then its websocket with the token."""
    import websockets

    async with httpx.AsyncClient(timeout=600, trust_env=False) as http:
        page = (await http.get(url + "/")).text
    token = re.search(r'"token":\s*"([^"]+)"', page).group(1)
    ws = await websockets.connect(url.replace("http", "ws", 1) + "/ws", subprotocols=["bokeh", token],
                                  max_size=None, origin=url, open_timeout=600, ping_interval=None)
    # PULL-DOC-REQ as BokehJS sends it (header, metadata, content); wait for the reply (the whole document)
    await ws.send(json.dumps({"msgid": "1", "msgtype": "PULL-DOC-REQ"}))
    await ws.send("{}")
    await ws.send("{}")
    while (await receive(ws))[0].get("msgtype") != "PULL-DOC-REPLY":
        pass
    return ws


async def receive(ws, timeout: float | None = None):
    header = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    await ws.recv()  # metadata
    content = await ws.recv()
    arrived = time.time()
    for _ in range(header.get("num_buffers", 0) or 0):
        await ws.recv()
        await ws.recv()
    return header, content, arrived


async def listen(ws, seconds: float, latencies: list) -> int:
    """Every message for ``seconds``; the latency of each spill's update (the patch carrying the meta source)."""
    received = 0
    start = time.time()  # updates of spills published before (queued while the other pages opened) not counted
    end = time.monotonic() + seconds
    while True:
        try:
            header, content, arrived = await receive(ws, max(0.01, end - time.monotonic()))
        except asyncio.TimeoutError:
            break
        received += 1
        if header.get("msgtype") == "PATCH-DOC":
            raw = content.encode() if isinstance(content, str) else content
            m = PUBLISHED.search(raw)
            if m and float(m.group(1)) > 0:
                latencies.append(arrived - float(m.group(1)))
    await ws.close()
    return received


def clients_process(url: str, n: int, seconds: float, out) -> None:
    async def main():
        sockets = []
        for _ in range(n):  # one after the other, as tabs are opened
            sockets.append(await connect(url))
        out.put("ready")
        latencies: list = []
        counts = await asyncio.gather(*(listen(ws, seconds, latencies) for ws in sockets))
        out.put({"latencies": latencies, "messages": sum(counts)})
    asyncio.run(main())


def _get(out, proc, timeout: float):
    """The clients' next report; stops the bench if their process died (its traceback is on stderr)."""
    import queue

    deadline = time.monotonic() + timeout
    while True:
        try:
            return out.get(timeout=2)
        except queue.Empty:
            if not proc.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"the dashboard clients stopped (exit code {proc.exitcode})") from None


def measure(url: str, pid: int, seconds: float, clients: int) -> dict:
    out: mp.Queue = mp.Queue()
    proc = None
    if clients:
        proc = mp.get_context("fork").Process(target=clients_process, args=(url, clients, seconds + 1, out))
        proc.start()
        assert _get(out, proc, 900) == "ready"  # the pages are open (their sessions built) before the window
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        h0, c0, t0 = http.get("/api/health").json(), cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        h1, c1, t1 = http.get("/api/health").json(), cpu_seconds(pid), time.monotonic()
    result = {"clients": clients, "cpu_percent": 100 * (c1 - c0) / (t1 - t0),
              "events_per_second": (h1["ingest"]["events_received"] - h0["ingest"]["events_received"]) / (t1 - t0),
              "spills": h1["spills_handled"] - h0["spills_handled"]}
    if proc is not None:
        got = _get(out, proc, seconds + 120)
        proc.join(30)
        lat = sorted(got["latencies"])
        if lat:
            result.update(latency_p50_s=lat[len(lat) // 2], latency_p99_s=lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                          latency_samples=len(lat))
        result["messages"] = got["messages"]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--events", type=int, default=20000, help="events per spill")
    ap.add_argument("--spill-duration", type=float, default=4.8)
    ap.add_argument("--spill-gap", type=float, default=1.2)
    args = ap.parse_args()
    ports = (free_port(), free_port())
    http_port = free_port()
    spills = 1000  # more than the run needs: the publishers are stopped at the end
    sim = [str(NA64), "simulate", "--spills", str(spills), "--events", str(args.events), "--spill-duration",
           str(args.spill_duration), "--spill-gap", str(args.spill_gap), "--wait-subscribers", "1",
           "--wait-timeout", "300"]
    for ldc, port in zip((1, 2), ports):
        sim += ["--publish", f"tcp://127.0.0.1:{port}", "--ldc", str(ldc)]
    serve = [str(NA64), "serve", "--workers", "0", "--http", f"127.0.0.1:{http_port}"]
    for port in ports:
        serve += ["--connect", f"tcp://127.0.0.1:{port}"]
    env = dict(os.environ)
    env.pop("NA64_CONFIG", None)
    service = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    publishers = subprocess.Popen(sim, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{http_port}"
    try:
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
            deadline = time.monotonic() + 600
            while True:
                try:
                    if http.get("/api/health").json().get("spills_handled", 0) >= 1:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or service.poll() is not None:
                    raise SystemExit("the service did not produce a spill")
                time.sleep(0.5)
        print(f"conditions: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; "
              f"{args.events} events per spill, {args.spill_duration} s spill + {args.spill_gap} s gap, "
              f"{args.seconds:.0f} s per phase", flush=True)
        results = []
        for n in (0, 1, args.clients):
            r = measure(url, service.pid, args.seconds, n)
            results.append(r)
            print(json.dumps(r), flush=True)
        base = results[0]
        for r in results[1:]:
            extra = r["cpu_percent"] - base["cpu_percent"]
            print(f"{r['clients']:>2} clients: service CPU {r['cpu_percent']:.1f} % of a core "
                  f"(+{extra:.1f} %, {extra / r['clients']:.2f} % per client); ingest {r['events_per_second']:.0f} "
                  f"events/s vs {base['events_per_second']:.0f} without; update latency p50 "
                  f"{r.get('latency_p50_s', float('nan')):.3f} s, p99 {r.get('latency_p99_s', float('nan')):.3f} s "
                  f"({r.get('latency_samples', 0)} updates); load average now {os.getloadavg()[0]:.1f}")
    finally:
        for p in (publishers, service):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (publishers, service):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
