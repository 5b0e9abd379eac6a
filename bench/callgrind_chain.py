"""Instructions per event of the zero-suppressed chain, for ``valgrind --tool=callgrind`` (docs/performance.md,
Round 6 and 7 "Instructions"): run once with ``--runs 1`` and once with ``--runs 2`` (each run after a warm-up),
the difference of the two totals over the spill's events is one warm run per event.

    .venv/bin/python bench/callgrind_chain.py --make spill.bin            # the spill (outside valgrind)
    valgrind --tool=callgrind --callgrind-out-file=cg.%p .venv/bin/python bench/callgrind_chain.py \
        --spill spill.bin --stage chain --runs 1                          # then --runs 2

``--stage process``: ``SpillProcessor.process`` (decode + reconstruction); ``chain``:
``SpillMonitor.handle(accumulate(...))`` (the whole chain).

valgrind runs no AVX-512: on a machine that has it, the kernels built for the host die with SIGILL under
valgrind; run the package from a build for an AVX2 CPU instead (docs/performance.md, Round 7).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make", metavar="FILE", help="write the simulated zero-suppressed spill and stop")
    parser.add_argument("--events", type=int, default=8192)
    parser.add_argument("--full", action="store_true", help="full readout instead of zero-suppressed")
    parser.add_argument("--spill", metavar="FILE")
    parser.add_argument("--stage", choices=("process", "chain"), default="chain")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    if args.make:
        from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

        sim = ReadoutSimulator(SimulationConfig(events_per_spill=args.events, seed=1, run_events=False,
                                                zero_suppression=not args.full))
        Path(args.make).write_bytes(next(iter(sim.spills())).raw())
        return 0
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.decoders.decode import as_words, index_events
    from na64_online.monitor.pipeline import SpillProcessor
    from na64_online.monitor.spill_monitor import SpillMonitor

    channel_map = ChannelMap.default()
    words, _ = as_words(np.fromfile(args.spill, dtype=np.uint8).tobytes())
    monitor = SpillMonitor(channel_map)
    processor = monitor.processor
    plain = SpillProcessor(processor.config, channel_map)
    if args.stage == "process":
        run = lambda: plain.process(words)  # noqa: E731
    else:
        run = lambda: monitor.handle(processor.accumulate(words))  # noqa: E731
    run()  # warm-up: kernels loaded, buffers allocated
    for _ in range(args.runs):
        run()
    print(len(index_events(words)), "events", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
