"""A decoder worker's step per task, its events gathered first or decoded where received: not a test, run it by hand.

    .venv/bin/python bench/bench_task.py --data /tmp/s4x5e4.dat      # bench_ingest's spills (simulated if missing)

The spills are cut into the readout nodes' messages (500 events each, as bench_ingest's publishers send them),
received by a ``Subscriber`` and built into 5000-event tasks by an ``EventBuilder``, as the service does. Then,
in this one process, every task is decoded by a worker's own step (``TaskDecoder``, kept from task to task):

* ``gathered``: ``gather_task`` copies the task's sub-events into super events, then the step decodes them
  (the worker before planned rows, and now the path of a plan whose sub-event headers are damaged);
* ``where received``: ``plan_task`` writes the super headers only and the step decodes each sub-event in
  the payload it came in (``decode_task``'s path).

The two alternate, all tasks each, ``--repeat`` times; 100 MB are rewritten between passes so that the
payloads come from memory, not the cache, as a task's do in a live service. Printed: CPU µs per event of each
(median over passes) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).parent))
import bench_ingest  # noqa: E402 - the same spills, messages and processor as the live bench

from na64_online.config import Config  # noqa: E402
from na64_online.daq.builder import BuiltChunk, EventBuilder  # noqa: E402
from na64_online.daq.memory import retain_freed_memory  # noqa: E402
from na64_online.daq.subscriber import Subscriber  # noqa: E402
from na64_online.daq.workers import TASK, gather_task, plan_task  # noqa: E402
from na64_online.decoders.channelmap import ChannelMap  # noqa: E402


def task_frames(batch_events: int, chunk_events: int) -> tuple[list[list], int]:
    """The TASK messages (as a worker receives them) of bench_ingest's spills, and their events."""
    sub = Subscriber(context=zmq.Context.instance())
    builder = EventBuilder((1, 2), chunk_events=chunk_events, spill_timeout_s=1e9, max_pending_bytes=1 << 40)
    tasks, events = [], 0
    for message in bench_ingest.interleaved_messages(batch_events):
        received = sub.handle(message)
        for out in builder.add(received.envelope.ldc, received.scan, 0.0):
            if isinstance(out, BuiltChunk):
                meta = f"{out.run} {out.spill} {out.index} {out.gdc}".encode()
                tasks.append([TASK, b"\0" * 8, meta, *out.plan_frames(), *out.payloads])
                events += out.n_events
    sub.close()
    return tasks, events


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=50_000, help="events per spill (if simulated)")
    p.add_argument("--spills", type=int, default=4)
    p.add_argument("--data", metavar="FILE", help="raw file of the spills: read if it exists, else simulated there")
    p.add_argument("--batch-events", type=int, default=500)
    p.add_argument("--chunk-events", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    bench_ingest.make_data(args.events, args.spills, 1, args.data)
    retain_freed_memory(keep_bytes=3 << 30)  # as a worker process keeps its freed memory mapped
    tasks, events = task_frames(args.batch_events, args.chunk_events)
    config = Config()
    step = bench_ingest.make_processor(ChannelMap.default(), config.monitor, config.histograms).task_decoder()
    scratch = {"gathered": None, "where received": None}

    def gathered(frames):
        words = gather_task(frames, scratch["gathered"])
        scratch["gathered"] = words.base
        return step(words)

    def where_received(frames):
        heads, planned = plan_task(frames, scratch["where received"])
        scratch["where received"] = heads.base
        if planned is None:
            raise SystemExit("a task of simulated spills was declined: its sub-event headers are damaged")
        return step(heads, planned)

    ways = {"gathered": gathered, "where received": where_received}
    for run in ways.values():  # warm: kernels loaded, buffers allocated
        run(tasks[0])
    spent: dict[str, list[float]] = {name: [] for name in ways}
    evict = np.ones(100 << 20, np.uint8)
    for _ in range(args.repeat):
        for name, run in ways.items():
            evict += 1
            t0 = time.process_time()
            for frames in tasks:
                run(frames)
            spent[name].append((time.process_time() - t0) / events * 1e6)
    median = {name: statistics.median(v) for name, v in spent.items()}
    print(f"{len(tasks)} tasks, {events} events; CPU µs per event (median of {args.repeat}, range): "
          + "; ".join(f"{name} {median[name]:.2f} ({min(v):.2f}-{max(v):.2f})" for name, v in spent.items())
          + f"; where received / gathered {median['where received'] / median['gathered']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
