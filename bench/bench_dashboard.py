"""Dashboard benchmark (issue #10): not a test, run it by hand.

    .venv/bin/python bench/bench_dashboard.py                       # 20 clients, 40 s per phase
    .venv/bin/python bench/bench_dashboard.py --clients 20 --seconds 120 --events 20000   # the README's figures

The live service (``na64-online serve --workers 0``: decoding in the service process) subscribed to two
simulated readout nodes (``na64-online simulate --publish``, SPS pacing: ``--spill-duration`` seconds of
beam, then ``--spill-gap``), all on 127.0.0.1. Three phases of ``--seconds`` each: no dashboard client,
one, then ``--clients`` at once. A client is what a browser tab is to the server: it loads the page (a
Bokeh server session), opens the page's websocket with the session token and receives every update
(a raw websocket client in one separate process, so that 20 clients cost the machine little beside
the service). Per phase: the service process's CPU (utime + stime from /proc, % of one core), the
ingest rate (events received per second, from ``/api/health``), the JSON API's round trip, and for the
clients the update latency: the arrival of the spill's update at each client minus the spill's publication
time (its QA record), p50 and p99 over clients × spills — only spills published inside the window (updates
queued while the pages were opening are left out), one sample per client and spill, with the count of
samples against clients × spills. A fourth phase opens ``--clients`` pages at once beside one open page:
how long they take, that page's update latency and the JSON API's meanwhile. Last, the figures the
README states.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from measure import free_port

CLOCK = os.sysconf("SC_CLK_TCK")
NA64 = Path(sys.executable).with_name("na64-online")
PUBLISHED = re.compile(rb'"published_at"\s*[,:]\s*\[\s*([0-9.eE+]+)')


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


async def listen(ws, until: float, updates: list) -> int:
    """Every message until ``until`` (monotonic); each spill's update (the patch carrying the meta source)
    as (published_at, arrival) — what arrived, whenever its spill was published: the caller chooses."""
    received = 0
    while True:
        try:
            header, content, arrived = await receive(ws, max(0.01, until - time.monotonic()))
        except asyncio.TimeoutError:
            break
        received += 1
        if header.get("msgtype") == "PATCH-DOC":
            raw = content.encode() if isinstance(content, str) else content
            m = PUBLISHED.search(raw)
            if m and float(m.group(1)) > 0:
                updates.append((float(m.group(1)), arrived))
    await ws.close()
    return received


GRACE_S = 3.0  # after a window, updates of its spills still on their way are waited for this long


def clients_process(url: str, n: int, seconds: float, out, go) -> None:
    """``n`` pages opened one after the other (as tabs are), then all listen for ``seconds`` from when the
    parent says go; reported: per page its spill updates (published_at, arrival)."""
    async def main():
        sockets = []
        for _ in range(n):
            sockets.append(await connect(url))
        out.put("ready")
        # updates pushed while the later pages were opening sit unread in the earlier pages' sockets: they are
        # read here like the rest, and left out by their publication time (before the window)
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        until = time.monotonic() + seconds + GRACE_S
        per_page = [[] for _ in sockets]
        counts = await asyncio.gather(*(listen(ws, until, u) for ws, u in zip(sockets, per_page)))
        out.put({"updates": per_page, "messages": sum(counts)})
    asyncio.run(main())


def opening_process(url: str, n: int, out, go) -> None:
    """One page open and listening (the probe) while ``n`` more open all at once: how long they take, and
    the probe's spill updates meanwhile."""
    async def main():
        probe = await connect(url)
        out.put("ready")
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        updates: list = []
        t0 = time.time()
        listening = asyncio.ensure_future(listen(probe, time.monotonic() + 3600, updates))
        opened = await asyncio.gather(*(connect(url) for _ in range(n)))
        t1 = time.time()
        await asyncio.sleep(GRACE_S)
        listening.cancel()
        for ws in opened:
            await ws.close()
        out.put({"opening_s": t1 - t0, "start": t0, "end": t1, "updates": updates})
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


def percentile(values: list, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def api_latencies(url: str, seconds: float, every: float = 0.5) -> list:
    """Round trips of ``GET /api/health`` every ``every`` seconds for ``seconds``."""
    out = []
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            http.get("/api/health")
            out.append(time.perf_counter() - t0)
            time.sleep(every)
    return out


def measure(url: str, pid: int, seconds: float, clients: int) -> dict:
    ctx = mp.get_context("fork")
    out, go = ctx.Queue(), ctx.Event()
    proc = None
    if clients:
        proc = ctx.Process(target=clients_process, args=(url, clients, seconds, out, go))
        proc.start()
        assert _get(out, proc, 900) == "ready"  # the pages are open (their sessions built) before the window
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        h0, c0, t0, w0 = http.get("/api/health").json(), cpu_seconds(pid), time.monotonic(), time.time()
        go.set()
        api = api_latencies(url, seconds)
        h1, c1, t1, w1 = http.get("/api/health").json(), cpu_seconds(pid), time.monotonic(), time.time()
    result = {"clients": clients, "cpu_percent": 100 * (c1 - c0) / (t1 - t0),
              "events_per_second": (h1["ingest"]["events_received"] - h0["ingest"]["events_received"]) / (t1 - t0),
              "spills": h1["spills_handled"] - h0["spills_handled"],
              "api_p50_s": percentile(api, 0.5), "api_max_s": max(api)}
    if proc is not None:
        got = _get(out, proc, seconds + GRACE_S + 120)
        proc.join(30)
        # the window's spills: published within it, as any page saw them
        spills = sorted({p for page in got["updates"] for p, _ in page if w0 <= p < w1})
        lat, duplicates = [], 0
        for page in got["updates"]:
            seen = {}
            for published, arrived in page:
                if w0 <= published < w1:
                    duplicates += published in seen
                    seen.setdefault(published, arrived - published)
            lat.extend(seen.values())
        result.update(latency_p50_s=percentile(lat, 0.5), latency_p99_s=percentile(lat, 0.99),
                      latency_max_s=max(lat) if lat else float("nan"), latency_samples=len(lat),
                      latency_expected=clients * len(spills), duplicate_updates=duplicates,
                      late_updates=sum(1 for x in lat if x > 1.0), messages=got["messages"])
    return result


def measure_opening(url: str, clients: int) -> dict:
    """``clients`` pages opening at once beside one open page: how long they take to open, the open page's
    push latency and the JSON API's latency meanwhile (page building is off the event loop)."""
    ctx = mp.get_context("fork")
    out, go = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=opening_process, args=(url, clients, out, go))
    proc.start()
    assert _get(out, proc, 900) == "ready"
    go.set()
    api: list = []
    while proc.is_alive() and out.empty():
        api.extend(api_latencies(url, 1.0, every=0.1))
    got = _get(out, proc, 900)
    proc.join(30)
    during = [(p, a - p) for p, a in got["updates"] if got["start"] <= p < got["end"]]
    return {"opening_clients": clients, "opening_s": got["opening_s"], "spills_during": len(during),
            "probe_latency_max_s": max((x for _, x in during), default=float("nan")),
            "api_p50_s": percentile(api, 0.5), "api_max_s": max(api) if api else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--events", type=int, default=20000, help="events per spill")
    ap.add_argument("--spill-duration", type=float, default=4.8)
    ap.add_argument("--spill-gap", type=float, default=1.2)
    ap.add_argument("--opening-only", action="store_true", help="only the phase of pages opening at once")
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
        if args.opening_only:
            print(json.dumps(measure_opening(url, args.clients)), flush=True)
            return 0
        results = []
        for n in (0, 1, args.clients):
            r = measure(url, service.pid, args.seconds, n)
            results.append(r)
            print(json.dumps(r), flush=True)
        opening = measure_opening(url, args.clients)
        print(json.dumps(opening), flush=True)
        base, one, many = results
        print(f"\n== figures (issue #10), load average now {os.getloadavg()[0]:.1f} ==")
        print(f"update latency after the QA record, {many['clients']} clients: p50 {many['latency_p50_s']:.3f} s, "
              f"p99 {many['latency_p99_s']:.3f} s, max {many['latency_max_s']:.3f} s; "
              f"{many['latency_samples']} samples of {many['latency_expected']} expected "
              f"({many['clients']} clients × {many['latency_expected'] // max(1, many['clients'])} spills), "
              f"{many['late_updates']} later than 1 s")
        print(f"update latency, 1 client: p50 {one['latency_p50_s']:.3f} s, p99 {one['latency_p99_s']:.3f} s; "
              f"{one['latency_samples']} samples of {one['latency_expected']} expected")
        print(f"ingest rate: {base['events_per_second']:.0f} events/s without clients, "
              f"{one['events_per_second']:.0f} with 1, {many['events_per_second']:.0f} with {many['clients']} "
              f"({100 * (many['events_per_second'] / base['events_per_second'] - 1):+.1f} %)")
        extra_one = one["cpu_percent"] - base["cpu_percent"]
        extra_many = many["cpu_percent"] - base["cpu_percent"]
        print(f"service CPU: {base['cpu_percent']:.1f} % of a core without clients, {one['cpu_percent']:.1f} % "
              f"with 1 (+{extra_one:.1f} %: {'under' if extra_one < 5 else 'NOT under'} the 5 % limit), "
              f"{many['cpu_percent']:.1f} % with {many['clients']} (+{extra_many:.1f} %, "
              f"{extra_many / many['clients']:.2f} % of a core per client)")
        print(f"{opening['opening_clients']} pages opening at once: {opening['opening_s']:.1f} s until all open; "
              f"meanwhile an open page's update latency max {opening['probe_latency_max_s']:.3f} s "
              f"({opening['spills_during']} spills), JSON API p50 {opening['api_p50_s'] * 1000:.0f} ms, "
              f"max {opening['api_max_s'] * 1000:.0f} ms (idle: p50 {base['api_p50_s'] * 1000:.0f} ms)")
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
