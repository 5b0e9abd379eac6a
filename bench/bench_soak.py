"""The live service left running: its memory over many spills. Not a test, run it by hand.

    .venv/bin/python bench/bench_soak.py --minutes 10                    # demo, 2000 events per spill
    .venv/bin/python bench/bench_soak.py --minutes 10 --trend-spills 1000000 --trend-spills 200

Runs ``na64-online demo`` as its own process (two simulated readout nodes, decoder worker processes, an
SQLite archive, the HTTP API on a free loopback port) with short spills, one run number throughout, as a
test run or a long physics run would. Every ``--every`` seconds it asks what a dashboard and an analyst ask
(``/api/spills``, ``/api/histograms/run``) and samples ``VmRSS`` of the service and of its workers
(``/proc``). After ``--warm-spills`` spills (caches, the records and latency deques filling) it fits the
service's RSS against the spill count: MB per 1000 spills, with the first and last samples. ``--trend-spills``
sets ``[monitor] trend_spills`` (``NA64_MONITOR__TREND_SPILLS``) for a run; several values run one after the
other, to see what the bound does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_memory import CLI
from measure import children, free_port, status_kb


def _records(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.startswith(b"{"))


def _slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares MB per spill of (spills, MB) points."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def soak(args, trend_spills: int | None) -> dict:
    port = free_port()
    work = tempfile.mkdtemp(prefix="na64-soak-")
    out_path = os.path.join(work, "records.jsonl")
    env = dict(os.environ)
    if trend_spills is not None:
        env["NA64_MONITOR__TREND_SPILLS"] = str(trend_spills)
    cmd = [CLI, "demo", "--events", str(args.events), "--spill-duration", str(args.spill_duration),
           "--spill-gap", str(args.spill_gap), "--workers", str(args.workers), "--archive",
           os.path.join(work, "qa.sqlite"), "--http", f"127.0.0.1:{port}", "--json"]
    with open(out_path, "wb") as out, open(os.path.join(work, "stderr.log"), "wb") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd="/")
    samples: list[dict] = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < args.minutes * 60 and child.poll() is None:
            time.sleep(args.every)
            spills = _records(out_path)
            answers = {}
            for path in ("/api/spills", "/api/histograms/run"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                        answers[path] = len(r.read())
                except OSError as exc:
                    answers[path] = repr(exc)
            rss = status_kb(child.pid, "VmRSS") / 1e3
            workers = [round(status_kb(c, "VmRSS") / 1e3, 1) for c in children(child.pid)]
            samples.append({"t_s": round(time.monotonic() - t0), "spills": spills, "service_rss_mb": round(rss, 1),
                            "children_rss_mb": workers, "run_histograms_bytes": answers["/api/histograms/run"]})
            print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
    finally:
        child.terminate()
        child.wait(60)
    if child.returncode not in (0, -15):
        raise SystemExit(f"demo ended with {child.returncode}: see {work}/stderr.log")
    warm = [s for s in samples if s["spills"] >= args.warm_spills]
    slope = _slope([(s["spills"], s["service_rss_mb"]) for s in warm])
    return {
        "trend_spills": trend_spills,
        "spills": samples[-1]["spills"] if samples else 0,
        "minutes": args.minutes,
        "events_per_spill": args.events,
        "service_rss_mb_first": warm[0]["service_rss_mb"] if warm else None,
        "service_rss_mb_last": warm[-1]["service_rss_mb"] if warm else None,
        "service_mb_per_1000_spills": round(slope * 1000, 2) if slope is not None else None,
        "children_rss_mb_first_last": (warm[0]["children_rss_mb"], warm[-1]["children_rss_mb"]) if warm else None,
        "run_histograms_bytes_first_last": ((warm[0]["run_histograms_bytes"], warm[-1]["run_histograms_bytes"])
                                            if warm else None),
        "work": work,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--events", type=int, default=2000, help="events per spill")
    p.add_argument("--spill-duration", type=float, default=0.3)
    p.add_argument("--spill-gap", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--every", type=float, default=10, help="seconds between samples")
    p.add_argument("--warm-spills", type=int, default=200, help="spills before the fit starts")
    p.add_argument("--trend-spills", type=int, action="append", help="[monitor] trend_spills (repeatable)")
    args = p.parse_args(argv)
    for trend in args.trend_spills or [None]:
        print(json.dumps(soak(args, trend)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
