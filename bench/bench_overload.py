"""Overload benchmark (issue 8 §3): memory stays within ``[ingest] max_memory_mb``. Not a test; run by hand.

    .venv/bin/python bench/bench_overload.py                       # 5 minutes, budget 1024 MB
    .venv/bin/python bench/bench_overload.py --duration 60 --max-memory-mb 512

Two readout-node publishers (LDC 1 and 2, forked processes) send as fast as they
can — unpaced, dropping at their high-water mark as a real node does — the
spills of one simulated spill made once beforehand, renumbered 1, 2, 3 … (the
burst field of every DATE header rewritten), for ``--duration`` seconds. The
service is ``na64-online serve`` in its own process with ``--workers`` decoder
worker processes (1) and the budget under test; the resident memory of the
service process is sampled from ``/proc/PID/status`` (VmRSS) every
``--sample`` seconds, its peak (VmHWM) read at the end. Offered load (events
the publishers sent) is compared with the events decoded: the overload factor.
At the end the service's counters (``/metrics``) are checked: every event
offered is decoded, dropped (decoding behind), or in a lost message
(receive queue full: dropped by the node, counted as sequence gaps) — printed
as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import zmq

from na64_online.daq.envelope import pack_envelope
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
from na64_online.decoders import layout as L
from measure import status_kb

TRAILER = 10  # messages sent slowly at the end
DATA: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # LDC -> (words of one spill's sub-events, event offsets)


def make_data(events: int, seed: int) -> None:
    sim = ReadoutSimulator(SimulationConfig(run=1, spills=1, events_per_spill=events, seed=seed, run_events=False))
    spill = next(iter(sim.spills()))
    for ldc in (1, 2):
        evs = spill.ldc_events(ldc)
        sizes = np.array([len(e) // 4 for e in evs], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        DATA[ldc] = (np.frombuffer(b"".join(evs), dtype=L.WORD).copy(), offsets)


def _publish(ldc: int, batch: int, duration: float, rate: float, ready, go, counts) -> None:
    """Spill after spill, renumbered, at most ``rate`` events/s (0: unpaced); a full subscriber makes ZeroMQ
    drop (as on a readout node)."""
    words, offsets = DATA[ldc]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    ready.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    while not sock.poll(100, zmq.POLLIN):
        pass
    sock.recv()  # the subscription
    go.wait(600)
    seq = events = nbytes = 0
    spill = 0
    header = offsets + L.H_BURST_EVENT
    keep = ~np.uint32(L.BURST_MASK << L.BURST_SHIFT)
    bounds = list(range(0, len(offsets), batch)) + [len(offsets)]
    t_start = time.monotonic()
    t_end = t_start + duration
    while time.monotonic() < t_end:
        spill = spill % L.BURST_MASK + 1  # 1 … 4095, then again (long forgotten by then)
        words[header] = (words[header] & keep) | np.uint32(spill << L.BURST_SHIFT)
        for a, b in zip(bounds[:-1], bounds[1:]):
            lo = int(offsets[a])
            hi = int(offsets[b]) if b < len(offsets) else len(words)
            payload = words[lo:hi].tobytes()
            sock.send_multipart([L.ZMQ_TOPIC, pack_envelope(ldc, seq, b - a), payload])
            seq += 1
            events += b - a
            nbytes += len(payload)
            if rate:
                ahead = events / rate - (time.monotonic() - t_start)
                if ahead > 0.001:
                    time.sleep(ahead)
            if time.monotonic() >= t_end:
                break
    # a slow trailer (the start of one more spill): its numbers reveal every message dropped before
    spill = spill % L.BURST_MASK + 1
    words[header] = (words[header] & keep) | np.uint32(spill << L.BURST_SHIFT)
    for a, b in list(zip(bounds[:-1], bounds[1:]))[:TRAILER]:
        payload = words[int(offsets[a]):int(offsets[b])].tobytes()
        sock.send_multipart([L.ZMQ_TOPIC, pack_envelope(ldc, seq, b - a), payload])
        seq += 1
        events += b - a
        nbytes += len(payload)
        time.sleep(0.2)
    time.sleep(1.0)
    counts.put((ldc, seq, events, nbytes, spill))
    sock.close(0)
    ctx.term()



def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of overload (300)")
    ap.add_argument("--max-memory-mb", type=int, default=1024, help="[ingest] max_memory_mb under test (1024)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--events", type=int, default=20000, help="events per simulated spill (20000)")
    ap.add_argument("--rate", type=float, default=490_000.0,
                    help="events/s offered (each node; 0: unpaced). Default 10 × the 48.8 k events/s one worker "
                         "sustains in bench_ingest.py")
    ap.add_argument("--batch-events", type=int, default=200, help="events per message (200, ~640 kB)")
    ap.add_argument("--rcvhwm", type=int, default=10000, help="[ingest] rcvhwm: the cap in messages (10000)")
    ap.add_argument("--sample", type=float, default=0.5, help="RSS sampling period, s")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    make_data(args.events, args.seed)
    print(f"simulated one spill of {args.events} events in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    ctx = mp.get_context("fork")
    ready, counts, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    pubs = [ctx.Process(target=_publish, args=(ldc, args.batch_events, args.duration, args.rate, ready, go, counts),
                        daemon=True) for ldc in (1, 2)]
    for p in pubs:
        p.start()
    endpoints = [ready.get(timeout=30) for _ in pubs]
    tmp = tempfile.mkdtemp(prefix="na64-overload-")
    config = os.path.join(tmp, "overload.toml")
    with open(config, "w") as f:
        f.write(f"[ingest]\nmax_memory_mb = {args.max_memory_mb}\nrcvhwm = {args.rcvhwm}\n"
                "spill_timeout_s = 30.0\nldc_down_s = 30.0\n")
    cmd = [sys.executable, "-m", "na64_online.cli", "serve", "--config", config, "--workers", str(args.workers),
           "--http", "127.0.0.1:0"]
    for ep in endpoints:
        cmd += ["--connect", ep]
    log = open(os.path.join(tmp, "serve.log"), "w+")
    svc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = None
    deadline = time.monotonic() + 600
    while url is None and time.monotonic() < deadline and svc.poll() is None:
        time.sleep(0.5)
        log.seek(0)
        m = re.search(r"HTTP on (http://127\.0\.0\.1:\d+)", log.read())
        url = m.group(1) if m else None
    import httpx

    client = httpx.Client(base_url=url, timeout=30, trust_env=False)
    while time.monotonic() < deadline:  # warm (workers compiled) and subscribed
        if client.get("/api/health").json().get("status") != "warming_up":
            break
        time.sleep(0.5)
    time.sleep(1.0)
    rss_start = status_kb(svc.pid, "VmRSS")
    samples = []
    go.set()
    t_start = time.monotonic()
    while any(p.is_alive() for p in pubs):
        samples.append((round(time.monotonic() - t_start, 1), status_kb(svc.pid, "VmRSS")))
        time.sleep(args.sample)
    offered_s = time.monotonic() - t_start
    sent = {}
    while not counts.empty():
        ldc, seq, events, nbytes, spills = counts.get()
        sent[ldc] = dict(messages=seq, events=events, bytes=nbytes, last_spill=spills)
    for _ in range(int(60 / args.sample)):  # let it drain what it holds (spill timeout closes the last)
        samples.append((round(time.monotonic() - t_start, 1), status_kb(svc.pid, "VmRSS")))
        health = client.get("/api/health").json()["ingest"]
        if health.get("queue_depth", 1) == 0 and time.monotonic() - t_start > offered_s + 35:
            break
        time.sleep(args.sample)
    peak_kb = status_kb(svc.pid, "VmHWM")
    metrics = client.get("/metrics").text
    health = client.get("/api/health").json()["ingest"]
    svc.send_signal(signal.SIGTERM)
    try:
        svc.wait(60)
    except subprocess.TimeoutExpired:
        svc.kill()
    budget_mb = args.max_memory_mb
    peak_mb = peak_kb / 1024
    events_offered = sent[1]["events"]  # each event has a sub-event from each node: count it once
    decoded = _metric(metrics, "na64_events_total")
    out = {
        "command": " ".join(["bench/bench_overload.py"] + (argv if argv is not None else sys.argv[1:])),
        "duration_s": round(offered_s, 1),
        "workers": args.workers,
        "budget_mb": budget_mb,
        "service_rss_start_mb": round(rss_start / 1024, 1),
        "service_rss_peak_mb": round(peak_mb, 1),
        "service_rss_max_sampled_mb": round(max(kb for _, kb in samples) / 1024, 1),
        "peak_over_budget": round(peak_mb / budget_mb, 3),
        "within_budget_plus_10pct": peak_mb <= 1.1 * budget_mb,
        "offered_events_per_s": round(events_offered / offered_s),
        "offered_mb_per_s": round(sum(s["bytes"] for s in sent.values()) / offered_s / 1e6, 1),
        "decoded_events_per_s": round(decoded / offered_s),
        "overload_factor": round(events_offered / decoded, 1) if decoded else None,
        "sent": sent,
        "messages_sent": sum(s["messages"] for s in sent.values()),
        "messages_received": health.get("messages_received"),
        "lost_messages": health.get("dropped_messages"),
        # exact: every message sent was received or counted lost (the trailer reveals the last gaps)
        "messages_accounted": health.get("messages_received", 0) + health.get("dropped_messages", 0)
        == sum(s["messages"] for s in sent.values()),
        "events_decoded": decoded,
        "events_dropped": _metric(metrics, "na64_dropped_events_total"),
        "events_incomplete": _metric(metrics, "na64_incomplete_events_total"),
        "spills": _metric(metrics, "na64_spills_total"),
        "receive_hwm_messages": health.get("receive_hwm_messages"),
        "bad_messages": health.get("bad_messages"),
        "rss_samples_mb": [(t, round(kb / 1024)) for t, kb in samples[:: max(1, len(samples) // 60)]],
        "serve_log": log.name,
    }
    samples_out = out.pop("rss_samples_mb")
    print(json.dumps(out, indent=1))
    print(json.dumps({"rss_samples_mb": samples_out}))
    return 0 if out["within_budget_plus_10pct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
