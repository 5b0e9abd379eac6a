"""Long fault campaign (not in CI): random byte- and word-level damage in simulated raw files.

One clean file is simulated (``--spills`` × ``--events``); each trial damages a
copy at random places (bytes inserted or deleted, bits flipped, words
replaced, inserted or deleted — ``--rate`` damages per event on average) and
replays it through the very code of ``na64-online replay``
(:class:`na64_online.service.Replayer`). The truth is the clean file's index.

Printed per trial and in total:

- events written outside the damaged events, and how many of them were decoded
  in their own spill (must be ≥ 99.9 %);
- events accounted: decoded + counted as lost (a rejected event — damaged
  header, ``header_mismatch`` — leaves a gap in the numbering, so it is among
  the lost) or ``duplicate_event`` in the QA records, against events written;
- spills missing (must be 0) and phantom spills / runs (must be 0).

    .venv/bin/python bench/bench_faults.py --spills 2 --events 25000 --trials 20 --rate 0.001
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from na64_online.config import Config  # noqa: E402
from na64_online.daq.rawfile import RawFile  # noqa: E402
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig  # noqa: E402
from na64_online.decoders import layout  # noqa: E402
from na64_online.decoders.channelmap import ChannelMap  # noqa: E402
from na64_online.service import Replayer  # noqa: E402

KINDS = ("insert_bytes", "delete_bytes", "flip_bit", "random_word", "insert_word", "delete_word")
DATA_TYPES = (layout.PHYSICS_EVENT, layout.CALIBRATION_EVENT)


def damage(clean: bytes, offsets: np.ndarray, ends: np.ndarray, n: int, rng: random.Random):
    """``n`` random damages of ``clean``; returns (damaged bytes, rows touched, damages by kind)."""
    data = bytearray(clean)
    touched = np.zeros(len(offsets), dtype=bool)
    by_kind = dict.fromkeys(KINDS, 0)
    places = sorted((rng.randrange(len(clean) - 8) for _ in range(n)), reverse=True)  # from the end
    for at in places:
        kind = rng.choice(KINDS)
        by_kind[kind] += 1
        word_at = at - at % 4
        if kind == "insert_bytes":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 7)))
            span = (at, at + 1)
        elif kind == "delete_bytes":
            k = rng.randint(1, 7)
            del data[at: at + k]
            span = (at, at + k)
        elif kind == "flip_bit":
            word = int.from_bytes(data[word_at: word_at + 4], "little") ^ (1 << rng.randrange(32))
            data[word_at: word_at + 4] = word.to_bytes(4, "little")
            span = (word_at, word_at + 4)
        elif kind == "random_word":
            data[word_at: word_at + 4] = rng.randrange(1 << 32).to_bytes(4, "little")
            span = (word_at, word_at + 4)
        elif kind == "insert_word":
            data[word_at: word_at] = rng.randrange(1 << 32).to_bytes(4, "little")
            span = (word_at, word_at + 1)
        else:
            del data[word_at: word_at + 4]
            span = (word_at, word_at + 4)
        touched |= (offsets < span[1]) & (span[0] < ends) | (offsets == span[0])
    return bytes(data), touched, by_kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spills", type=int, default=2)
    ap.add_argument("--events", type=int, default=25000, help="events per spill")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.001, help="damages per event written (on average)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    started = time.perf_counter()
    sim = ReadoutSimulator(SimulationConfig(spills=args.spills, events_per_spill=args.events, seed=args.seed))
    clean = b"".join(spill.raw() for spill in sim.spills())
    channel_map = ChannelMap.default()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "campaign.dat"
        path.write_bytes(clean)
        truth = RawFile(path).index
        offsets = truth.source_offset
        ends = offsets + truth.size * 4
        is_data = (truth.status == 0) & np.isin(truth.type, DATA_TYPES)
        spills = set(zip(truth.run[is_data].tolist(), truth.spill[is_data].tolist()))
        runs = {r for r, _ in spills}
        print(f"clean file: {len(clean) / 1e6:.1f} MB, {int(is_data.sum())} data events in {len(spills)} spills "
              f"(simulated in {time.perf_counter() - started:.0f} s)")
        rng = random.Random(args.seed)
        totals = dict(written=0, untouched=0, untouched_decoded=0, accounted=0, touched=0, damages=0, header_mismatch=0,
                      missing=0, phantom_spills=0, phantom_runs=0, skipped_bytes=0)
        kinds = dict.fromkeys(KINDS, 0)
        for trial in range(args.trials):
            n = max(1, int(rng.expovariate(1.0) * args.rate * int(is_data.sum())))
            data, touched, by_kind = damage(clean, offsets, ends, n, rng)
            for k, v in by_kind.items():
                kinds[k] += v
            path.write_bytes(data)
            raw = RawFile(path)
            decoded = set()
            for segment in raw.spills():
                ix = segment.index
                ok = (ix.status == 0) & np.isin(ix.type, DATA_TYPES)
                decoded |= {(segment.run, segment.spill, int(e)) for e in ix.event[ok].tolist()}
            keep = is_data & ~touched
            expected = set(zip(truth.run[keep].tolist(), truth.spill[keep].tolist(), truth.event[keep].tolist()))
            replayer = Replayer(Config(), channel_map)
            try:
                records = [r for r, _ in replayer.replay_file(path) if r is not None]
            finally:
                replayer.close()
            keys = [(r["run"], r["spill"]) for r in records]
            # a rejected event (header_mismatch, bad magic, …) leaves a gap in the numbering: it is in lost_events
            accounted = sum(r["events"] + r["lost_events"] + r["duplicate_event"] for r in records)
            header_mismatch = sum(r["header_mismatch"] for r in records)
            row = dict(
                written=int(is_data.sum()), untouched=len(expected), untouched_decoded=len(expected & decoded),
                accounted=accounted, touched=int((touched & is_data).sum()), damages=n,
                header_mismatch=header_mismatch, missing=len(spills - set(keys)), phantom_spills=sum(1 for k in keys if k not in spills),
                phantom_runs=len({r for r, _ in keys} - runs), skipped_bytes=sum(r["skipped_bytes"] for r in records),
            )
            for k, v in row.items():
                totals[k] += v
            print(f"trial {trial + 1:3d}: {n:4d} damages, {row['touched']:4d} events touched, untouched decoded "
                  f"{row['untouched_decoded']}/{row['untouched']}, accounted {accounted}/{row['written']}, "
                  f"missing {row['missing']}, phantom spills {row['phantom_spills']}, runs {row['phantom_runs']}, "
                  f"skipped {row['skipped_bytes']} B", flush=True)
    share = totals["untouched_decoded"] / totals["untouched"] if totals["untouched"] else 1.0
    print()
    print(f"events written: {totals['written']} in {args.trials} files; damages: {totals['damages']} "
          f"({', '.join(f'{k} {v}' for k, v in kinds.items())}); events touched: {totals['touched']}")
    print(f"events outside the damaged ones decoded in their spill: {totals['untouched_decoded']} / "
          f"{totals['untouched']} = {100 * share:.4f} % (must be >= 99.9 %)")
    print(f"events accounted (decoded + lost + duplicate_event; rejected events are gaps, in lost): "
          f"{totals['accounted']} / {totals['written']} = {100 * totals['accounted'] / totals['written']:.4f} %"
          f" (of the lost, {totals['header_mismatch']} rejected as header_mismatch)")
    print(f"spills missing: {totals['missing']}; phantom spills: {totals['phantom_spills']}; "
          f"phantom runs: {totals['phantom_runs']}; bytes skipped: {totals['skipped_bytes']}")
    print(f"total time {time.perf_counter() - started:.0f} s")
    ok = share >= 0.999 and totals["missing"] == 0 and totals["phantom_spills"] == 0 and totals["phantom_runs"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
