"""Decode + reconstruction throughput on one simulated spill, against baselines measured in the same run.

    .venv/bin/python bench/bench_decode.py [--events 100000] [--repeat 3] [--json out.json]

Baselines: ``numpy`` copying the same bytes (the memory-bandwidth limit) and
the pure-Python reference decoder (tests/reference_decoder.py, timed on a
slice of the spill and scaled per event). Measured: the event index alone,
index + numba decode, and the whole per-spill pipeline (decode,
reconstruction, QA accumulation and the monitoring extensions). Figures are
best-of-N wall times on one core; ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig  # noqa: E402
from na64_online.decoders.channelmap import ChannelMap  # noqa: E402
from na64_online.decoders.decode import as_words, decode_events, index_events  # noqa: E402
from na64_online.monitor.pipeline import SpillProcessor  # noqa: E402
from na64_online.monitor.spill_monitor import SpillMonitor  # noqa: E402
from measure import best_of  # noqa: E402


def make_spill(events: int, seed: int = 1, zero_suppression: bool = True) -> bytes:
    sim = ReadoutSimulator(SimulationConfig(events_per_spill=events, seed=seed, run_events=False,
                                            zero_suppression=zero_suppression))
    return next(iter(sim.spills())).raw()


def run(events: int, repeat: int, reference_events: int, zero_suppression: bool = True) -> dict:
    channel_map = ChannelMap.default()
    data = make_spill(events, zero_suppression=zero_suppression)
    words, _ = as_words(data)
    nbytes = words.nbytes
    monitor = SpillMonitor(channel_map)  # decoding + histograms + channel statistics
    processor = monitor.processor
    index = index_events(words)
    n_events = len(index)

    # warm-up: load compiled kernels from the numba cache and fault the pages in
    processor.process(words, index)

    def decode_only():
        step = processor.config.chunk_events
        for start in range(0, len(index), step):
            decode_events(words, index.slice(start, min(start + step, len(index))), channel_map)

    plain = SpillProcessor(processor.config, channel_map)  # decoding, reconstruction, QA counts only
    results = {
        "numpy_copy": best_of(repeat, lambda: words.copy()),
        "index": best_of(repeat, lambda: index_events(words)),
        "index_decode": best_of(repeat, lambda: (index_events(words), decode_only())),
        "pipeline_without_monitoring": best_of(repeat, lambda: plain.process(words)),
        "pipeline": best_of(repeat, lambda: processor.process(words)),
        "pipeline + quality/alarms": best_of(repeat, lambda: monitor.handle(processor.accumulate(words))),
    }

    tracemalloc.start()
    processor.process(words)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    import reference_decoder

    ref_map = reference_decoder.load_channel_map(reference_decoder.DEFAULT_MAP_PATH)
    cut = int(index.offset[min(reference_events, n_events - 1)]) * 4
    t0 = time.perf_counter()
    ref_events = reference_decoder.decode_stream(data[:cut], ref_map)
    for event in ref_events:
        if event["status"] is None and "candidate" not in event:
            reference_decoder.reconstruct(event)
    reference_seconds = (time.perf_counter() - t0) * n_events / max(len(ref_events), 1)
    results["reference_python (scaled)"] = reference_seconds

    report = {
        "events": n_events,
        "megabytes": nbytes / 1e6,
        "peak_traced_memory_mb": peak / 1e6,
        "rows": {},
    }
    base = results["numpy_copy"]
    for name, seconds in results.items():
        report["rows"][name] = {
            "seconds": seconds,
            "MB_per_s": nbytes / seconds / 1e6,
            "events_per_s": n_events / seconds,
            "time_vs_numpy_copy": seconds / base,
        }
    report["monitoring_overhead"] = results["pipeline"] / results["pipeline_without_monitoring"] - 1
    report["pipeline_speedup_vs_reference"] = reference_seconds / results["pipeline"]
    return report


def print_report(report: dict) -> None:
    print(f"spill: {report['events']} events, {report['megabytes']:.0f} MB; "
          f"peak traced memory of one pipeline pass {report['peak_traced_memory_mb']:.0f} MB")
    print(f"| {'step':28} | {'s':>8} | {'MB/s':>9} | {'events/s':>10} | {'time / numpy copy':>17} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 11}|{'-' * 12}|{'-' * 19}|")
    for name, row in report["rows"].items():
        print(f"| {name:28} | {row['seconds']:8.3f} | {row['MB_per_s']:9.0f} | {row['events_per_s']:10.0f} | "
              f"{row['time_vs_numpy_copy']:17.2f} |")
    print(f"monitoring overhead on top of decoding: {100 * report['monitoring_overhead']:.1f} %")
    print(f"pipeline speed-up over the pure-Python reference: {report['pipeline_speedup_vs_reference']:.0f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference-events", type=int, default=300)
    parser.add_argument("--no-zero-suppression", action="store_true", help="every channel in every event")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    report = run(args.events, args.repeat, args.reference_events, not args.no_zero_suppression)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
