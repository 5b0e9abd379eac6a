"""Replay's memory against file size (issue #11 item 4): not a test, run it by hand.

    .venv/bin/python bench/bench_memory.py --gb 1 4          # simulates the files in /tmp, replays, deletes them
    .venv/bin/python bench/bench_memory.py FILE [FILE …]      # existing raw files
    .venv/bin/python bench/bench_memory.py --gb 1 4 --baseline-rev b67446b   # and as of that commit (its own
                                                                             # compiled kernels, built once)

Each file is replayed by ``na64-online replay FILE --json`` as its own process; this script samples the
process's ``/proc/PID/status`` every 5 ms: ``RssAnon`` (anonymous memory: the heap, numpy arrays — what
must not grow with the file), ``RssFile`` (pages of the memory-mapped file and of the libraries: the
kernel drops them under pressure) and, at the end, ``VmHWM``. The target: the peak ``RssAnon`` of a 4 GB
file no higher than of a 1 GB one.

``--gb N``: a file of about N GB simulated (``na64-online simulate``, 10⁵ events per spill, 3.9 kB per
event), replayed, and deleted afterwards (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLI = os.path.join(os.path.dirname(sys.executable), "na64-online")
BYTES_PER_SPILL = 390e6  # 1e5 events × 3.9 kB (zero-suppressed), as simulated


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def replay_peak(path: str, tree: str = "this tree", baseline: dict[str, str] | None = None) -> dict:
    """Replay ``path`` in a child process; its peak anonymous and file-backed resident memory.
    ``baseline``: the environment of a baseline tree (``bench_ingest.baseline_env``: its package first on
    PYTHONPATH, its compiled kernels), run from ``/`` so that the checkout does not shadow it."""
    t0 = time.perf_counter()
    cmd = [CLI, "replay", path, "--json"]
    env = None
    if baseline:
        cmd = [sys.executable, "-m", "na64_online.cli", "replay", path, "--json"]
        env = {**os.environ, **baseline}
    out_file, err_file = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # no pipe to fill up
    child = subprocess.Popen(cmd, stdout=out_file, stderr=err_file, text=True, env=env, cwd="/")
    peak: dict[str, int] = {}
    samples = 0
    while child.poll() is None:
        now = _status(child.pid)
        for key, value in now.items():
            peak[key] = max(peak.get(key, 0), value)
        samples += 1
        time.sleep(0.005)
    out_file.seek(0), err_file.seek(0)
    out, err = out_file.read(), err_file.read()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if child.returncode != 0:
        raise SystemExit(f"replay {path} failed ({child.returncode}): {err[-2000:]}")
    return {
        "tree": tree,
        "file": path,
        "file_gb": round(os.path.getsize(path) / 1e9, 2),
        "spills": len(records),
        "events": sum(r["events"] for r in records),
        "peak_rss_anon_mb": round(peak.get("RssAnon", 0) / 1e6, 1),
        "peak_rss_file_mb": round(peak.get("RssFile", 0) / 1e6, 1),
        "peak_rss_mb": round(peak.get("VmRSS", 0) / 1e6, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "samples": samples,
    }


def simulate(gb: float, where: str) -> str:
    spills = max(1, round(gb * 1e9 / BYTES_PER_SPILL))
    path = os.path.join(where, f"na64-memory-{gb:g}gb.dat")
    if not os.path.exists(path):
        print(f"simulating {spills} spills of 1e5 events into {path} …", file=sys.stderr, flush=True)
        subprocess.run([CLI, "simulate", "--out", path, "--spills", str(spills), "--events", "100000"],
                       check=True, stdout=subprocess.DEVNULL)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="raw files to replay")
    p.add_argument("--gb", type=float, nargs="+", default=[], help="simulate files of about these sizes (GB)")
    p.add_argument("--dir", default="/tmp", help="where --gb files are written")
    p.add_argument("--keep", action="store_true", help="keep the simulated files")
    p.add_argument("--baseline-rev", metavar="REV", help="each file also replayed with the package as of git REV")
    args = p.parse_args(argv)
    trees: list[tuple[str, dict[str, str] | None]] = [("this tree", None)]
    if args.baseline_rev:
        from bench_ingest import baseline_env, baseline_tree

        trees.insert(0, (args.baseline_rev, baseline_env(baseline_tree(args.baseline_rev))))
    if not args.files and not args.gb:
        p.error("give FILEs or --gb")
    rows = []
    for path in args.files:
        for tree, baseline in trees:
            rows.append(replay_peak(os.path.abspath(path), tree, baseline))
            print(json.dumps(rows[-1]), flush=True)
    for gb in args.gb:
        path = simulate(gb, args.dir)
        try:
            for tree, baseline in trees:
                rows.append(replay_peak(path, tree, baseline))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            if not args.keep:
                os.unlink(path)
    print(f"\n{'tree':>10} {'file GB':>8} {'spills':>6} {'events':>9} {'peak RssAnon MB':>16} {'peak RssFile MB':>16} "
          f"{'wall s':>7}")
    for r in rows:
        print(f"{r['tree']:>10} {r['file_gb']:>8} {r['spills']:>6} {r['events']:>9} {r['peak_rss_anon_mb']:>16} "
              f"{r['peak_rss_file_mb']:>16} {r['wall_s']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
