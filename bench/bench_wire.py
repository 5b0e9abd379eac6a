"""Worker result on the wire: encode/decode time of monitor/wire.py against a pickle baseline, same run.

    .venv/bin/python bench/bench_wire.py [--events 5000] [--repeat 20] [--json out.json]

One simulated chunk of ``--events`` events is accumulated by the service's
processor (channel statistics and histograms included: what a worker sends);
timed best-of-N: ``encode_accumulator`` and ``decode_accumulator`` (header
checks, CRC-32, copy into a fresh template) versus ``pickle.dumps``/``loads``
of the same accumulator (what the worker port used before, unsafe on a
socket). Figures are for one core; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import pickle

import numpy as np

from na64_online.config import Config
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
from na64_online.decoders.channelmap import ChannelMap
from na64_online.monitor.spill_monitor import make_processor
from measure import best_of


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=5000, help="events in the chunk (ingest chunk_events)")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    cmap = ChannelMap.default()
    config = Config()
    processor = make_processor(cmap, config.monitor, config.histograms)
    sim = ReadoutSimulator(SimulationConfig(spills=1, events_per_spill=args.events, seed=1), cmap)
    words = np.frombuffer(bytearray(next(iter(sim.spills())).raw()), dtype=np.uint32)
    acc = processor.accumulate(words)
    frames = [bytes(f) for f in processor.encode_result(acc)]
    blob = pickle.dumps(acc, protocol=pickle.HIGHEST_PROTOCOL)
    out = {
        "events": args.events,
        "wire_bytes": sum(len(f) for f in frames),
        "pickle_bytes": len(blob),
        "wire_encode_s": best_of(args.repeat, lambda: processor.encode_result(acc)),
        "pickle_dumps_s": best_of(args.repeat, lambda: pickle.dumps(acc, protocol=pickle.HIGHEST_PROTOCOL)),
        "wire_decode_s": best_of(args.repeat, lambda: processor.decode_result(frames)),
        "pickle_loads_s": best_of(args.repeat, lambda: pickle.loads(blob)),
        "template_s": best_of(args.repeat, processor.new_accumulator),
        "accumulate_s": best_of(max(1, args.repeat // 10), lambda: processor.accumulate(words)),
    }
    out["decode_ratio"] = out["wire_decode_s"] / out["pickle_loads_s"]
    out["encode_ratio"] = out["wire_encode_s"] / out["pickle_dumps_s"]
    out["decode_share_of_accumulate"] = out["wire_decode_s"] / out["accumulate_s"]
    for key, value in out.items():
        print(f"{key:28} {value:.6g}" if isinstance(value, float) else f"{key:28} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
