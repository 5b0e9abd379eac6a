"""Decode + reconstruction throughput per stage, zero-suppressed and full-readout spills, in one run.

    .venv/bin/python bench/bench_decode.py [--events 50000] [--repeat 5] [--json out.json]

For each kind of spill (simulated, one spill) and each stage it prints GB/s,
events/s, ns/event, the ratio to a numpy copy of the same bytes measured in the
same run, against two yardsticks:

- ``x copy()``: ``words.copy()``, a copy into fresh memory, as the issue measured
  "numpy copy of the bytes" (6.5-7.0 GB/s there): the kernel maps and faults in
  the new array page by page while copying;
- ``x copyto``: ``np.copyto`` into an array already in memory (faulted in, in use),
  what the memory system alone moves: about twice as fast, so the stricter ratio;

then the previous release's figure (from ``bench/baseline-<version>.json``) and
whether the issue's target holds (the copy-ratio target judged against each
yardstick, saying which holds):

- ``index``: the header walk alone (the event index);
- ``decode``: index + decode (parse, unpack, estimators) of every event;
- ``decode + reconstruction``: the per-spill chain without monitoring
  (target: >= 2 GB/s and >= 0.3x the numpy copy, judged against both yardsticks);
- ``whole chain``: decode, reconstruction, histograms and channel statistics,
  quality and alarms (target: >= 1.6 GB/s).

Times are the best of ``--repeat`` runs in thread CPU time (user + system of
this thread): "per core", and much less disturbed than wall time on a shared
machine. Ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from na64_online import __version__  # noqa: E402
from na64_online.decoders.channelmap import ChannelMap  # noqa: E402
from na64_online.decoders.decode import DecodeBuffers, as_words, decode_events, index_events  # noqa: E402
from na64_online.monitor.pipeline import SpillProcessor  # noqa: E402
from na64_online.monitor.spill_monitor import SpillMonitor  # noqa: E402
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig  # noqa: E402

BASELINE = ROOT / "bench" / "baseline-0.1.0.json"
KINDS = {"zero_suppressed": True, "full_readout": False}
# stage -> (name in the baseline file, GB/s target, numpy-copy ratio target)
STAGES = {
    "numpy copy()": ("numpy_copy", None, None),
    "numpy copyto": ("numpy_copy", None, None),
    "index": ("index", None, None),
    "decode": ("index_decode", None, None),
    "decode + reconstruction": ("pipeline_without_monitoring", 2.0, 0.3),
    "whole chain": ("pipeline + quality/alarms", 1.6, None),
}


def cpu_best_of(repeat: int, fn) -> float:
    """The shortest of ``repeat`` runs of ``fn()`` in thread CPU seconds (what ``fn`` returns is freed after
    the clock stops: ``words.copy()`` is timed without giving its memory back)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        result = fn()
        best = min(best, time.thread_time() - t0)
        del result
    return best


def make_spill(events: int, zero_suppression: bool, seed: int = 1) -> bytes:
    sim = ReadoutSimulator(SimulationConfig(events_per_spill=events, seed=seed, run_events=False,
                                            zero_suppression=zero_suppression))
    return next(iter(sim.spills())).raw()


def measure(events: int, repeat: int, zero_suppression: bool) -> dict:
    channel_map = ChannelMap.default()
    words, _ = as_words(make_spill(events, zero_suppression))
    monitor = SpillMonitor(channel_map)
    processor = monitor.processor
    plain = SpillProcessor(processor.config, channel_map)
    index = index_events(words)
    step = processor.config.chunk_events

    def decode_only():
        ix = index_events(words)
        buffers = DecodeBuffers()  # as the pipeline decodes a spill's chunks
        for start in range(0, len(ix), step):
            decode_events(words, ix.slice(start, min(start + step, len(ix))), channel_map,
                          processor.config.reconstruction, buffers=buffers)

    monitor.handle(processor.accumulate(words))  # warm-up: kernels from the cache, pages faulted in
    # the yardsticks: the issue's ``words.copy()`` (fresh memory: also times the kernel mapping and faulting
    # in the new array page by page), and the bytes copied into memory already faulted in (what the memory
    # system moves: the stricter one)
    destination = words.copy()
    seconds = {
        "numpy copy()": cpu_best_of(repeat, words.copy),
        "numpy copyto": cpu_best_of(repeat, lambda: np.copyto(destination, words)),
        "index": cpu_best_of(repeat, lambda: index_events(words)),
        "decode": cpu_best_of(repeat, decode_only),
        "decode + reconstruction": cpu_best_of(repeat, lambda: plain.process(words)),
        "whole chain": cpu_best_of(repeat, lambda: monitor.handle(processor.accumulate(words))),
    }
    n, nbytes = len(index), words.nbytes
    return {"events": n, "megabytes": nbytes / 1e6, "bytes_per_event": nbytes / n,
            "rows": {stage: {"seconds": s, "GB_per_s": nbytes / s / 1e9, "events_per_s": n / s,
                             "ns_per_event": s / n * 1e9, "copy_ratio": seconds["numpy copy()"] / s,
                             "copyto_ratio": seconds["numpy copyto"] / s}
                     for stage, s in seconds.items()}}


def judge(stage: str, row: dict) -> str:
    """Whether the stage's targets hold: each target apart, the copy ratio against both yardsticks."""
    _, gbps, ratio = STAGES[stage]
    parts = []
    if gbps is not None:
        parts.append(f">= {gbps} GB/s: {'yes' if row['GB_per_s'] >= gbps else 'no'}")
    if ratio is not None:
        for key, name in (("copy_ratio", "copy()"), ("copyto_ratio", "copyto")):
            parts.append(f">= {ratio}x {name}: {'yes' if row[key] >= ratio else 'no'}")
    return "; ".join(parts)


def print_report(report: dict, baseline: dict | None) -> None:
    print(f"na64-online {report['version']} on {report['machine']}; one core, best of {report['repeat']} "
          f"(thread CPU time); load average {report['load']} before the run")
    for kind, result in report["kinds"].items():
        previous = (baseline or {}).get(kind, {}).get("rows", {})
        print(f"\n{kind}: {result['events']} events, {result['megabytes']:.0f} MB "
              f"({result['bytes_per_event'] / 1e3:.1f} kB/event)")
        print("| stage | GB/s | events/s | ns/event | x copy() (issue) | x copyto (in use) | 0.1.0: GB/s, x copy "
              "| target holds |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for stage, row in result["rows"].items():
            old = previous.get(STAGES[stage][0])
            old_text = f"{old['GB_per_s']:.2f}, {1 / old['time_vs_numpy_copy']:.2f}" if old else "—"
            print(f"| {stage} | {row['GB_per_s']:.2f} | {row['events_per_s']:,.0f} | {row['ns_per_event']:,.0f} | "
                  f"{row['copy_ratio']:.2f} | {row['copyto_ratio']:.2f} | {old_text} | {judge(stage, row)} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per spill (default 50000)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    report = {"version": __version__, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "repeat": args.repeat, "load": load,
              "kinds": {kind: measure(args.events, args.repeat, zs) for kind, zs in KINDS.items()}}
    try:
        report["machine"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else None
    print_report(report, baseline)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
