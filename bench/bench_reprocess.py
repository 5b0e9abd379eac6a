"""reprocess on Dask (1 and 2 workers) against single-process replay on the same files, same run.

    .venv/bin/python bench/bench_reprocess.py [--files 2] [--spills 4] [--events 20000] [--json out.json]
    .venv/bin/python bench/bench_reprocess.py --events 100000          # the figure (>= 10^5 events per spill)

Simulated files are written once into a temporary folder. Timed, each best of
``--repeat``: ``replay`` (``Replayer``, what ``na64-online replay`` runs) over
all files, then ``reprocess`` (``Reprocessor``) on a LocalCluster of 1 and of 2
worker processes started and warmed beforehand (their kernels loaded by a
first small run), so the figures are the steady state of a cluster, not its
start-up. Both include the client's merge through ``SpillMonitor.handle``; the
records are checked to be those of replay. Reported: seconds, GB/s, events/s,
speed-up against replay, and the per-spill overhead of the cluster
((t_1 worker − t_replay) / spills). Needs as many free cores as workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from measure import best_of

from na64_online.config import load_config
from na64_online.decoders.channelmap import ChannelMap
from na64_online.reprocess import ClusterConfig, Reprocessor
from na64_online.service import Replayer
from na64_online.sim.simulator import SimulationConfig, write_raw_file

VOLATILE = ("processing_seconds", "finished_at")


def _comparable(records):
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in VOLATILE}
        r["alarms"] = [{k: v for k, v in a.items() if k not in ("alarm_id", "raised_at")} for a in r["alarms"]]
        out.append(r)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--spills", type=int, default=4, help="spills per file")
    p.add_argument("--events", type=int, default=20000, help="events per spill")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    import distributed

    config = load_config(environ={})
    cmap = ChannelMap.default()
    folder = Path(tempfile.mkdtemp(prefix="na64-bench-reprocess-"))
    try:
        files = []
        for i in range(args.files):
            path = folder / f"run{i + 1}.dat"
            write_raw_file(path, SimulationConfig(run=i + 1, spills=args.spills, events_per_spill=args.events,
                                                  seed=i), cmap)
            files.append(str(path))
        small = folder / "warm.dat"
        write_raw_file(small, SimulationConfig(run=99, spills=2, events_per_spill=200, seed=9), cmap)
        size = sum(os.path.getsize(f) for f in files)
        spills = args.files * args.spills

        def replay():
            replayer = Replayer(config, cmap)
            try:
                return [r for f in files for r, _ in replayer.replay_file(f) if r is not None]
            finally:
                replayer.close()

        replay()  # kernels loaded in this process
        reference = _comparable(replay())
        t_replay = best_of(args.repeat, replay)
        result = {"files": args.files, "spills": spills, "events_per_spill": args.events, "bytes": size,
                  "cpus": os.cpu_count(), "replay_s": t_replay}
        for workers in (1, 2):
            with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                          host="127.0.0.1", dashboard_address=None) as cluster:
                cluster_config = ClusterConfig(scheduler=cluster.scheduler_address)

                def reprocess(paths):
                    out = []
                    Reprocessor(config, cmap, cluster_config).run(paths, out.append, lambda *a: None)
                    return out

                reprocess([str(small)] * workers * 2)  # every worker's kernels loaded
                assert _comparable(reprocess(files)) == reference, "reprocess records differ from replay"
                result[f"reprocess_{workers}_s"] = best_of(args.repeat, lambda: reprocess(files))
        events = spills * args.events
        for key in ("replay_s", "reprocess_1_s", "reprocess_2_s"):
            name = key[:-2]
            result[f"{name}_gb_per_s"] = size / result[key] / 1e9
            result[f"{name}_events_per_s"] = events / result[key]
        result["speedup_2_workers"] = t_replay / result["reprocess_2_s"]
        result["speedup_1_worker"] = t_replay / result["reprocess_1_s"]
        result["overhead_per_spill_s"] = (result["reprocess_1_s"] - t_replay) / spills
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{spills} spills x {args.events} events, {size / 1e9:.3f} GB, {os.cpu_count()} CPUs")
    for key in ("replay", "reprocess_1", "reprocess_2"):
        print(f"  {key:12s} {result[key + '_s']:7.2f} s  {result[key + '_gb_per_s']:.3f} GB/s  "
              f"{result[key + '_events_per_s']:,.0f} events/s")
    print(f"  speed-up with 2 workers: {result['speedup_2_workers']:.2f}x (1 worker: {result['speedup_1_worker']:.2f}x); "
          f"cluster overhead {result['overhead_per_spill_s'] * 1e3:.0f} ms per spill")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
