"""reprocess on Dask (1 and 2 workers) against single-process replay on the same files, same run.

    .venv/bin/python bench/bench_reprocess.py                      # the figure: 2 files x 4 spills x 10^5 events
    .venv/bin/python bench/bench_reprocess.py --spills 1 --events 20000 --repeat 1     # a quick look
    .venv/bin/python bench/bench_reprocess.py --data /tmp/rpx --repeat 5 --baseline-rev main   # against main
    options: --files N --spills N (per file) --events N (per spill) --repeat N --json FILE --report DIR
             --data DIR (keep the simulated files there, reuse them next time)
             --baseline-rev REV (the same bench with the package as of git REV and as it is, a round each in
             turn, each round in its own process: the ratios of both trees, round by round, at the same load)

Simulated files are written once into a temporary folder (~1.6 min per GB).
A LocalCluster of 1 and one of 2 worker processes (``reprocess``'s own,
:func:`~na64_online.reprocess.local_cluster`) are started and warmed
beforehand (kernels loaded by a small run); their start-up is reported apart,
as a fixed cost. Then the records of both are checked to be replay's, and
``--repeat`` rounds each time, interleaved, ``replay`` (``Replayer``, what
``na64-online replay`` runs), ``reprocess`` on 1 worker and on 2 workers
(``Reprocessor``: index steps that decode, or spill tasks, the client's merge
through ``SpillMonitor.handle``) over all files, and 2 replay processes with
half of the files each (forked before the clusters start): the ceiling of the
host's 2 cores for this work, which a loaded machine or cores that slow each
other down (shared caches, memory bandwidth, hyper-threads of a VM's host)
put well below 2.

Reported: the load average; per mode the best wall time, GB/s, events/s and
the CPU seconds of all the processes involved (this one — client and, for a
LocalCluster, the scheduler — plus the workers and their nannies); the
speed-up with 1 and 2 workers (best against best, and the median of the
per-round ratios); the per-spill overhead of running a spill as a task
((t_1 worker − t_replay) / spills, and in CPU seconds); the client's merge per
spill and its share of the run; the merge left when the last result came (the
tail no worker overlaps: a later file's spills are merged after the file before
them); what bounds the speed-up with 2 workers on 2 cores: replay's CPU over
half the CPU reprocess spends on all its processes; and the 2 replay processes' speed-up (the ceiling), with the share of their
speed reprocess reaches with 2 workers (median of the per-round ratios).
(Both clusters stay up through all rounds, so every figure includes their idle
cost: ~0.01 of a core each with reprocess's settings.)
The target (issue #12) is >= 1.8x with 2 workers on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from na64_online.config import load_config
from na64_online.decoders.channelmap import ChannelMap
from na64_online.reprocess import ClusterConfig, Reprocessor, local_cluster
from na64_online.service import Replayer
from na64_online.sim.simulator import SimulationConfig, write_raw_file

VOLATILE = ("processing_seconds", "finished_at")
MODES = ("replay", "reprocess_1", "reprocess_2", "replay_2_processes")
_SETUP: dict = {}  # the configuration and channel map of the replay processes (set before they are forked)


def _replay_paths(paths: list[str]) -> int:
    """Replay some files in this process (a process of the pool: the 2-core ceiling)."""
    replayer = Replayer(_SETUP["config"], _SETUP["cmap"])
    try:
        return sum(1 for f in paths for r, _ in replayer.replay_file(f) if r is not None)
    finally:
        replayer.close()


def _comparable(records):
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in VOLATILE}
        r["alarms"] = [{k: v for k, v in a.items() if k not in ("alarm_id", "raised_at")} for a in r["alarms"]]
        out.append(r)
    return out


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process (client; a LocalCluster's scheduler and nannies) and of
    the processes it started (the workers)."""
    me = psutil.Process()
    own = me.cpu_times()
    children = 0.0
    for proc in me.children(recursive=True):
        try:
            t = proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        children += t.user + t.system
    return own.user + own.system, children


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process tree, of which the workers') of ``fn()``."""
    cpu, wall = _cpu_seconds(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - wall
    own, children = (b - a for a, b in zip(cpu, _cpu_seconds()))
    return result, wall, own + children, children


def compare(args, argv: list[str]) -> dict:
    """``--baseline-rev``: rounds of this bench (``--repeat 1``) with the package as of the revision and as it
    is, alternating, each in its own process (its own clusters); the speed-ups of both, best and median of
    the rounds, CPU per spill (replay; reprocess with 2 workers, all its processes; of which the client's
    process: client, scheduler, nannies) and the CPU bound (replay's CPU over half of reprocess's), medians
    of rounds, and this tree's 2-worker time against the baseline's, round by round. (The baseline tree,
    ``bench_ingest.baseline_tree``, runs its own ahead-of-time compiled kernels when the revision has them.)"""
    import subprocess
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_ingest import baseline_env, baseline_tree, short_commit

    if not args.data:
        raise SystemExit("--baseline-rev needs --data DIR (both trees read the same files)")
    data = os.path.abspath(args.data)
    own, rest = [], list(argv)
    while rest:  # the options this function sets for each round left out, with their values
        arg = rest.pop(0)
        if arg.split("=", 1)[0] in ("--json", "--report", "--repeat", "--baseline-rev", "--data"):
            if "=" not in arg:
                rest.pop(0)
            continue
        own.append(arg)
    commit = short_commit(args.baseline_rev)
    baseline = baseline_env(baseline_tree(commit))
    where = os.path.dirname(baseline["PYTHONPATH"])  # the rounds' files and working directory
    trees = ((f"{args.baseline_rev} ({commit})", baseline), ("this tree", {}))
    rounds: dict[str, list[dict]] = {label: [] for label, _ in trees}
    load_before = os.getloadavg()
    for r in range(args.repeat):
        for label, env in (trees if r % 2 == 0 else trees[::-1]):  # neither side always first
            out = os.path.join(where, f"round-{os.getpid()}.json")
            cmd = [sys.executable, os.path.abspath(__file__), *own, "--data", data, "--repeat", "1", "--json", out]
            # cwd: not the checkout, whose na64_online/ would come first on the sys.path of the local workers
            done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, cwd=where)
            if done.returncode:
                raise SystemExit(f"{label}: exit {done.returncode}\n{done.stderr[-3000:]}")
            rounds[label].append(json.loads(Path(out).read_text()))
            print(f"round {r + 1} {label:>22}: replay {rounds[label][-1]['replay_s']:.2f} s, 2 workers "
                  f"{rounds[label][-1]['reprocess_2_s']:.2f} s, {rounds[label][-1]['speedup_2']:.2f}x; 2 replay "
                  f"processes {rounds[label][-1]['speedup_2_processes']:.2f}x; load {os.getloadavg()[0]:.2f}",
                  flush=True)
    load_after = os.getloadavg()
    result = {"baseline_rev": args.baseline_rev, "baseline_commit": commit, "repeat": args.repeat,
              "load_before": load_before, "load_after": load_after, "rounds": rounds}
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"(1/5/15 min: {' '.join(f'{x:.2f}' for x in load_after)}); {args.repeat} rounds, each tree in turn")
    print(f"  {'tree':>22}  {'2 workers: best':>15}  {'median':>6}  {'1 worker: best':>14}  {'median':>6}  "
          f"{'2 replays: best':>15}  {'median':>6}  {'CPU/spill: replay':>17}  {'2 workers':>9}  {'client':>6}  "
          f"{'CPU bound: best':>15}  {'median':>6}")
    for label, rs in rounds.items():
        for x in rs:  # (rounds of a tree without the figure)
            x.setdefault("speedup_2_cpu_bound", 2 * x["replay_cpu_s"] / x["reprocess_2_cpu_s"])

        def col(key):
            return max(x[key] for x in rs), statistics.median(x[key] for x in rs)

        cpu = statistics.median(x["reprocess_2_cpu_s"] / x["spills"] for x in rs)
        replay_cpu = statistics.median(x["replay_cpu_s"] / x["spills"] for x in rs)
        # the client's process: client, and for the LocalCluster the scheduler and the nannies
        client_cpu = statistics.median((x["reprocess_2_cpu_s"] - x["reprocess_2_workers_cpu_s"]) / x["spills"]
                                       for x in rs)
        result[label] = {k: col(k) for k in ("speedup_2", "speedup_1", "speedup_2_processes", "speedup_2_cpu_bound")}
        print(f"  {label:>22}  {col('speedup_2')[0]:14.2f}x  {col('speedup_2')[1]:5.2f}x  "
              f"{col('speedup_1')[0]:13.2f}x  {col('speedup_1')[1]:5.2f}x  {col('speedup_2_processes')[0]:14.2f}x  "
              f"{col('speedup_2_processes')[1]:5.2f}x  {replay_cpu * 1e3:14.0f} ms  {cpu * 1e3:6.0f} ms  {client_cpu * 1e3:3.0f} ms  "
              f"{col('speedup_2_cpu_bound')[0]:14.2f}x  {col('speedup_2_cpu_bound')[1]:5.2f}x")
    tails = [x["tail_2_s_median"] for x in rounds["this tree"]]
    shares = [x["tail_2_share_median"] for x in rounds["this tree"]]
    print(f"  this tree, 2 workers: the client's merge after the last result came {statistics.median(tails) * 1e3:.0f} ms, "
          f"{statistics.median(shares):.0%} of the run (median of rounds)")
    base, this = (rounds[label] for label, _ in trees)
    ratio = [b["reprocess_2_s"] / t["reprocess_2_s"] for b, t in zip(base, this)]
    result["reprocess_2_baseline_over_this"] = ratio
    print(f"  2-worker reprocess, baseline time / this tree's, round by round: "
          f"{' '.join(f'{x:.2f}' for x in ratio)} (median {statistics.median(ratio):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--spills", type=int, default=4, help="spills per file")
    p.add_argument("--events", type=int, default=100000, help="events per spill")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of replay, 1 and 2 workers")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--report", metavar="DIR", help="save a Dask performance report of a 2-worker run here")
    p.add_argument("--data", metavar="DIR", help="keep the simulated files here and reuse them in later runs")
    p.add_argument("--baseline-rev", metavar="REV", help="compare with the package as of git REV, round by round")
    args = p.parse_args(argv)
    if args.baseline_rev:
        import sys

        return compare(args, list(sys.argv[1:] if argv is None else argv))
    import distributed

    logging.getLogger("na64_online").setLevel(logging.ERROR)  # raised alarms are logged: not this bench's output
    logging.getLogger("distributed").setLevel(logging.ERROR)  # workers stopping at the end
    config = load_config(environ={})
    cmap = ChannelMap.default()
    folder = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="na64-bench-reprocess-"))
    folder.mkdir(parents=True, exist_ok=True)
    clusters: dict[int, object] = {}
    pool = None
    load_before = os.getloadavg()
    try:
        started = time.perf_counter()
        files = []
        for i in range(args.files):
            path = folder / f"run{i + 1}-{args.spills}x{args.events}.dat"
            if not path.exists():
                write_raw_file(path, SimulationConfig(run=i + 1, spills=args.spills, events_per_spill=args.events,
                                                      seed=i), cmap)
            files.append(str(path))
        small = folder / "warm.dat"
        if not small.exists():
            write_raw_file(small, SimulationConfig(run=99, spills=2, events_per_spill=200, seed=9), cmap)
        written_s = time.perf_counter() - started
        size = sum(os.path.getsize(f) for f in files)
        spills = args.files * args.spills
        events = spills * args.events

        def replay():
            replayer = Replayer(config, cmap)
            try:
                return [r for f in files for r, _ in replayer.replay_file(f) if r is not None]
            finally:
                replayer.close()

        stats = {}

        def reprocess(workers, paths=files):
            out = []
            stats[workers] = Reprocessor(config, cmap, ClusterConfig(scheduler=clusters[workers].scheduler_address,
                                                                     direct_to_workers=True)
                                         ).run(paths, out.append, lambda *a: None)
            return out

        replay()  # kernels loaded in this process
        # the ceiling of 2 cores: 2 replay processes, half of the files each (forked now, before any thread
        # of Dask's exists in this process)
        _SETUP.update(config=config, cmap=cmap)
        pool = multiprocessing.get_context("fork").Pool(2)
        halves = [files[0::2], files[1::2]]
        pool.map(_replay_paths, [[str(small)], [str(small)]])

        def replay_2_processes():
            return pool.map(_replay_paths, halves)

        reference = _comparable(replay())
        cluster_start = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            clusters[workers] = local_cluster(workers)
            reprocess(workers, [str(small)] * workers * 2)  # every worker's kernels loaded
            cluster_start[workers] = time.perf_counter() - t0
        for workers in (1, 2):
            assert _comparable(reprocess(workers)) == reference, f"reprocess ({workers} workers) differs from replay"

        rounds = {m: [] for m in MODES}  # (wall, cpu, cpu of the workers)
        merge = {1: [], 2: []}
        tail = {1: [], 2: []}  # the client's merge after the last result came (nan: a tree without the figure)
        for _ in range(args.repeat):
            rounds["replay"].append(_timed(replay)[1:])
            rounds["replay_2_processes"].append(_timed(replay_2_processes)[1:])
            for workers in (1, 2):
                rounds[f"reprocess_{workers}"].append(_timed(lambda: reprocess(workers))[1:])
                merge[workers].append(stats[workers].merge_seconds)
                tail[workers].append(getattr(stats[workers], "tail_seconds", float("nan")))
        if args.report:
            Path(args.report).mkdir(parents=True, exist_ok=True)
            report = str(Path(args.report) / "reprocess-2-workers.html")
            with distributed.Client(clusters[2]) as client, distributed.performance_report(filename=report):
                reprocess(2)
    finally:
        if pool is not None:
            pool.terminate()
        for cluster in clusters.values():
            cluster.close()
        if not args.data:
            shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()

    result = {"files": args.files, "spills": spills, "events_per_spill": args.events, "bytes": size,
              "cpus": os.cpu_count(), "repeat": args.repeat, "load_before": load_before, "load_after": load_after,
              "write_files_s": written_s, "cluster_start_s": cluster_start}
    for mode in MODES:
        walls = [r[0] for r in rounds[mode]]
        best = min(range(len(walls)), key=walls.__getitem__)
        result[f"{mode}_s"] = walls[best]
        result[f"{mode}_cpu_s"] = rounds[mode][best][1]
        result[f"{mode}_workers_cpu_s"] = rounds[mode][best][2]
        result[f"{mode}_gb_per_s"] = size / walls[best] / 1e9
        result[f"{mode}_events_per_s"] = events / walls[best]
    for workers in (1, 2):
        mode = f"reprocess_{workers}"
        result[f"speedup_{workers}"] = result["replay_s"] / result[f"{mode}_s"]
        result[f"speedup_{workers}_median_of_rounds"] = statistics.median(
            r[0] / w[0] for r, w in zip(rounds["replay"], rounds[mode]))
        result[f"merge_{workers}_s_per_spill"] = min(merge[workers]) / spills
        result[f"merge_{workers}_share"] = min(merge[workers]) / result[f"{mode}_s"]
        result[f"tail_{workers}_s_median"] = statistics.median(tail[workers])
        result[f"tail_{workers}_share_median"] = statistics.median(
            t / w[0] for t, w in zip(tail[workers], rounds[mode]))
    result["speedup_2_processes"] = result["replay_s"] / result["replay_2_processes_s"]
    result["speedup_2_processes_median_of_rounds"] = statistics.median(
        r[0] / w[0] for r, w in zip(rounds["replay"], rounds["replay_2_processes"]))
    result["reprocess_2_share_of_ceiling"] = statistics.median(
        p[0] / w[0] for p, w in zip(rounds["replay_2_processes"], rounds["reprocess_2"]))
    result["overhead_per_spill_s"] = (result["reprocess_1_s"] - result["replay_s"]) / spills
    result["overhead_cpu_per_spill_s"] = (result["reprocess_1_cpu_s"] - result["replay_cpu_s"]) / spills
    # 2 cores, every process of reprocess sharing them: replay's CPU time / half of reprocess's
    result["speedup_2_cpu_bound"] = 2 * result["replay_cpu_s"] / result["reprocess_2_cpu_s"]
    result["speedup_2_cpu_bound_median_of_rounds"] = statistics.median(
        2 * r[1] / w[1] for r, w in zip(rounds["replay"], rounds["reprocess_2"]))
    result["reprocess_2_cpu_s_per_spill_median"] = statistics.median(w[1] for w in rounds["reprocess_2"]) / spills
    result["replay_cpu_s_per_spill_median"] = statistics.median(r[1] for r in rounds["replay"]) / spills

    print(f"{spills} spills x {args.events} events in {args.files} files, {size / 1e9:.3f} GB; "
          f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"(1/5/15 min: {' '.join(f'{x:.2f}' for x in load_after)})")
    print(f"  fixed costs (not in the figures): files written in {written_s:.0f} s; cluster start + kernels "
          f"loaded: {cluster_start[1]:.1f} s (1 worker), {cluster_start[2]:.1f} s (2 workers)")
    print(f"  best of {args.repeat} interleaved rounds:")
    for mode in MODES:
        print(f"  {mode:18s} {result[mode + '_s']:7.2f} s  {result[mode + '_gb_per_s']:.3f} GB/s  "
              f"{result[mode + '_events_per_s']:9,.0f} events/s  CPU {result[mode + '_cpu_s']:6.2f} s")
    print(f"  speed-up against replay: 1 worker {result['speedup_1']:.2f}x, 2 workers {result['speedup_2']:.2f}x "
          f"(median of rounds {result['speedup_1_median_of_rounds']:.2f}x, "
          f"{result['speedup_2_median_of_rounds']:.2f}x; target >= 1.8x with 2 workers)")
    print(f"  the ceiling of 2 cores here, 2 replay processes on half of the files each: "
          f"{result['speedup_2_processes']:.2f}x (median of rounds {result['speedup_2_processes_median_of_rounds']:.2f}x); "
          f"reprocess with 2 workers runs at {result['reprocess_2_share_of_ceiling']:.0%} of its speed (median of rounds)")
    print(f"  per-spill overhead of a task (1 worker - replay): {result['overhead_per_spill_s'] * 1e3:.0f} ms wall, "
          f"{result['overhead_cpu_per_spill_s'] * 1e3:.0f} ms CPU; client merge "
          f"{result['merge_2_s_per_spill'] * 1e3:.0f} ms per spill, {result['merge_2_share']:.0%} of the 2-worker run")
    print(f"  the client's merge after the last result came (no worker busy; later files wait for the file "
          f"before them): {result['tail_2_s_median'] * 1e3:.0f} ms, {result['tail_2_share_median']:.0%} of the "
          f"2-worker run (median of rounds)")
    print(f"  bound with 2 workers on 2 cores (replay CPU / half of reprocess CPU): "
          f"{result['speedup_2_cpu_bound']:.2f}x; reprocess CPU per spill: workers "
          f"{result['reprocess_2_workers_cpu_s'] / spills * 1e3:.0f} ms, client + scheduler + nannies "
          f"{(result['reprocess_2_cpu_s'] - result['reprocess_2_workers_cpu_s']) / spills * 1e3:.0f} ms "
          f"(replay {result['replay_cpu_s'] / spills * 1e3:.0f} ms); median of rounds: "
          f"{result['speedup_2_cpu_bound_median_of_rounds']:.2f}x, reprocess "
          f"{result['reprocess_2_cpu_s_per_spill_median'] * 1e3:.0f} ms against replay's "
          f"{result['replay_cpu_s_per_spill_median'] * 1e3:.0f} ms CPU per spill")
    if max(load_before[0], load_after[0]) > 1.0:
        print(f"  NOTE: the machine was busy (load {max(load_before[0], load_after[0]):.1f}): other processes shared the "
              f"cores, so the wall-clock speed-up of 2 workers is not what 2 free cores give (with the kernel's "
              f"autogroup scheduling, /proc/sys/kernel/sched_autogroup_enabled, this session gets the same share "
              f"of the CPU with 1 or 2 workers); the CPU bound above is the figure to compare")
    if args.report:
        print(f"  Dask performance report: {report}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
