"""Live-ingest benchmark (issue #3): not a test, run it by hand.

    .venv/bin/python bench/bench_ingest.py                 # 1e5 events per spill, 1 and 2 workers
    .venv/bin/python bench/bench_ingest.py --events 20000 --spills 2 --workers 1

Two readout-node publishers (LDC 1 and 2, forked processes, simulator data
made once beforehand) and one ``IngestService`` with N decoder worker
processes, all on 127.0.0.1.

* sustained ingest: the publishers send as fast as the service takes it
  (``fast`` + ``nodrop``: a full subscriber makes the publisher wait rather
  than drop); events/s and MB/s from the first message to the last QA record,
  every event decoded (the bench checks nothing was lost or dropped);
* ``--transport-floor``: the same messages sent to a bare SUB socket that drops them, in the same run: the
  CPU the transport alone costs (readout nodes sending, one I/O thread receiving) and the live rate that
  leaves at most on two cores beside replay's decoding;
* ``NA64_BENCH_WINDOW=1``: the measured window printed on ``CLOCK_MONOTONIC`` (``window T0,T1`` on stderr),
  to cut a ``perf record -k CLOCK_MONOTONIC`` of the run to it (``perf report --time T0,T1``);
* latency: SPS pacing (events spread over ``--spill-duration`` seconds, 4.8 by
  default), time from the last END_OF_BURST received to the spill's finished
  QA record.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import queue
import resource
import statistics
import sys
import threading
import time

import numpy as np
import zmq

from na64_online.monitor.spill_monitor import make_processor
from na64_online.config import Config
from na64_online.daq.ingest import IngestConfig, IngestService
from na64_online.worker_setup import worker_setup
from na64_online.daq.envelope import pack_envelope
from na64_online.daq.publisher import PublisherConfig, ReadoutPublisher
from na64_online.decoders import layout as L
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
from na64_online.decoders.channelmap import ChannelMap
from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor
from na64_online.service import build_monitor
from measure import children, status_kb  # noqa: E402

DATA: dict[int, list[list[bytes]]] = {}  # LDC -> spills -> events (inherited by the forked publishers)
RAW: list[bytes] = []  # the same spills as a raw file holds them (super events): the replay baseline


def make_data(events: int, spills: int, seed: int, path: str | None = None) -> tuple[int, int]:
    """Simulate the spills (or read them from ``path``, a raw file, written there first when missing)."""
    t0 = time.perf_counter()
    if path and os.path.exists(path):
        from na64_online.daq.builder import split_super_events
        from na64_online.daq.rawfile import RawFile

        for seg in RawFile(path).spills():
            lo, hi = int(seg.index.offset[0]), int(seg.index.offset[-1] + seg.index.size[-1])
            raw = seg.words[lo:hi].tobytes()
            for ldc, sub_events in sorted(split_super_events(raw).items()):
                DATA.setdefault(ldc, []).append(sub_events)
            RAW.append(raw)
        what = f"read {len(RAW)} spill(s) from {path}"
    else:
        sim = ReadoutSimulator(SimulationConfig(run=1, spills=spills, events_per_spill=events, seed=seed))
        for spill in sim.spills():
            for ldc in (1, 2):
                DATA.setdefault(ldc, []).append(spill.ldc_events(ldc))
            RAW.append(spill.raw())
        what = f"simulated {spills} spill(s) of {events} events"
        if path:
            with open(path, "wb") as f:
                for raw in RAW:
                    f.write(raw)
            what += f" (written to {path})"
    from na64_online.daq.builder import DATA_TYPES
    from na64_online.decoders.decode import as_words, index_events

    n_events = sum(int(np.count_nonzero(np.isin(index_events(as_words(raw)[0]).type, DATA_TYPES))) for raw in RAW)
    nbytes = sum(len(e) for ldc in DATA.values() for sp in ldc for e in sp)
    print(f"{what}: {n_events} events, {nbytes / 1e6:.0f} MB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return n_events, nbytes


def _joined(spills: list[list[bytes]], batch: int) -> list[tuple[bytes, int]]:
    """The messages of ``spills`` (``batch`` events each, as ``publish`` cuts them), joined beforehand."""
    return [(b"".join(sp[i:i + batch]), len(sp[i:i + batch])) for sp in spills for i in range(0, len(sp), batch)]


def _send_joined(pub: ReadoutPublisher, payload: bytes, count: int) -> None:
    if hasattr(pub, "send_payload"):
        pub.send_payload(payload, count)
        return
    # a tree from before ``send_payload`` (--baseline-rev): the same message, sent as it would send it
    seq, pub.sequence = pub.sequence, pub.sequence + 1
    frames = [L.ZMQ_TOPIC, pack_envelope(pub.config.ldc, seq, count), payload]
    while True:
        try:
            pub.socket.send_multipart(frames, copy=False)
            return
        except zmq.Again:
            pass


def _publish(ldc: int, endpoint: str, kw: dict, ready, go, warm_spills: int = 0, go_measured=None,
             spent=None, released=None) -> None:
    """One readout node; ``spent`` receives the process CPU seconds (all its threads) of the measured spills.

    The node then holds its spills until ``released`` (set once the measured window is over): its exit frees
    them, ~0.4 GB of messages, which cost more CPU than their sending and, on the same two cores, had run
    inside the window while the service still decoded (a readout node of the experiment never exits).

    Sustained (``fast``) runs join the measured spills' messages before the clock starts: on this VM the
    first touch of fresh memory costs 5.7–17 s/GB, and a node joining each message into new memory (up to
    ``sndhwm`` of them in flight) spent more CPU than the service and its workers together, on the same
    cores — a readout node of the experiment is another machine."""
    pub = ReadoutPublisher(PublisherConfig(endpoint, ldc, **kw))
    measured = DATA[ldc][warm_spills:]
    ready.put(pub.endpoint)  # the joins below overlap the service's start
    joined = _joined(measured, kw["batch_events"]) if kw.get("fast") else None
    # the warm spills go out as the measured ones do: a service that has run at this rate, its memory in
    # flight faulted in once (sent slower, they left the measured spills more in flight than ever before)
    warm = _joined(DATA[ldc][:warm_spills], kw["batch_events"]) if kw.get("fast") and warm_spills else None
    if not pub.wait_for_subscribers(1, 600):  # the service warms up first (minutes on a cold numba cache)
        raise SystemExit("no subscriber")
    go.wait(120)
    if warm_spills:  # the service's first spills, not measured; the rest once their records are out
        if warm is None:
            pub.publish(DATA[ldc][:warm_spills])
        else:
            for payload, count in warm:
                _send_joined(pub, payload, count)
            del warm
        go_measured.wait(600)
    cpu0 = time.process_time()
    if joined is None:
        pub.publish(measured)
    else:
        for payload, count in joined:
            _send_joined(pub, payload, count)
    pub.close(60_000)
    zmq.Context.instance().term()  # a forked child exits with os._exit: flush what is queued first
    if spent is not None:  # after the flush: the I/O thread's sending is the node's CPU too
        spent.put(time.process_time() - cpu0)
    if released is not None:
        released.wait(600)


def _cpu_seconds(pid: int | str) -> float | None:
    """User + system CPU time of a process so far (``/proc/PID/stat`` utime + stime), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _minor_faults(pid: int | str) -> int:
    """Minor page faults of a process or thread so far (``/proc/PID/stat`` minflt), 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    except (OSError, ValueError, IndexError):
        return 0


def _by_thread_kind(read) -> dict[str, float]:
    """``read("self/task/TID")`` summed over this process's threads by kind: Python threads by name
    (worker threads together), ZeroMQ's background threads ("ZMQbg/…"), and the rest."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        name = names.get(int(tid))
        kind = ("zmq-io" if comm.startswith("ZMQbg") else "na64-worker-threads" if name and name.startswith("na64-worker")
                else name or comm)
        out[kind] = out.get(kind, 0) + (read(f"self/task/{tid}") or 0)
    return out


def _threads_faults() -> dict[str, int]:
    """Minor page faults of this process's threads by kind."""
    return _by_thread_kind(_minor_faults)


def _threads_cpu_seconds() -> dict[str, float]:
    """CPU time of this process's threads by kind."""
    return _by_thread_kind(_cpu_seconds)


def _host_cpu_seconds() -> dict[str, float]:
    """This host's CPU time so far, all cores, from the ``cpu`` line of ``/proc/stat`` (10 ms ticks): ``busy``
    (user, nice, system, irq, softirq) and ``softirq`` alone.

    Processes' CPU times miss what the kernel does in softirq context: on loopback, a TCP segment's receive
    processing runs there, charged to no process. The host's counters have it (and whatever else ran)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = (x / os.sysconf("SC_CLK_TCK") for x in fields)
    return {"busy": user + nice + system + irq + softirq, "softirq": softirq}


def _host_cpu_since(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in _host_cpu_seconds().items()}


def _own_cpu_seconds() -> float:
    """CPU time of this process (every thread: the service thread, ZeroMQ's I/O threads, this one)."""
    t = os.times()
    return t.user + t.system


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) of this process
    except OSError:
        pass


def _start_nodes(args, paced: bool = False):
    """The two readout nodes (LDC 1 and 2, forked :func:`_publish`), bound and waiting for ``go`` (the warm
    spills) and ``go_measured`` (the rest): (processes, endpoints, go, go_measured, the queue of their CPU,
    ``released``: set it once the window is over, and they exit)."""
    ctx = mp.get_context("fork")
    ready = ctx.Queue()
    go, go_measured, released = ctx.Event(), ctx.Event(), ctx.Event()
    spent = ctx.Queue()  # the publishers' CPU: on the same cores here, on the readout nodes in NA64
    kw = dict(batch_events=args.batch_events, sndhwm=1000)
    if paced:
        kw.update(spill_duration_s=args.spill_duration, spill_gap_s=args.spill_gap)
    else:
        kw.update(fast=True, nodrop=True)
    procs = [ctx.Process(target=_publish, daemon=True,
                         args=(ldc, "tcp://127.0.0.1:0", kw, ready, go, args.warm_spills, go_measured, spent,
                               released))
             for ldc in (1, 2)]
    for p in procs:
        p.start()
    return procs, [ready.get(timeout=30) for _ in procs], go, go_measured, spent, released


def _archive_kwargs(args) -> dict:
    """``--archive DIR``: a fresh SQLite archive per run in DIR, written as ``serve`` writes it (on the archive's
    own thread where the package under test has one)."""
    if not args.archive:
        return {}
    import inspect
    import uuid

    os.makedirs(args.archive, exist_ok=True)
    kwargs = {"archive_path": os.path.join(os.path.abspath(args.archive), f"qa-{uuid.uuid4().hex[:8]}.sqlite")}
    if "archive_thread" in inspect.signature(build_monitor).parameters:
        kwargs["archive_thread"] = True
    return kwargs


def run(workers: int, paced: bool, args, n_events: int, nbytes: int) -> dict:
    warm = args.warm_spills
    procs, endpoints, go, go_measured, spent, released = _start_nodes(args, paced)
    # this process also holds the simulated spills (the publishers' copy and the replay baseline's), which a
    # real service does not: the memory budget is that much larger, so that the service keeps its usual buffers
    held_mb = status_kb("self", "VmRSS") // 1024
    cfg = IngestConfig(endpoints=tuple(endpoints), workers=workers, chunk_events=args.chunk_events,
                       max_queued_tasks=args.max_queued_tasks, spill_timeout_s=30.0, ldc_down_s=30.0,
                       task_timeout_s=120.0, max_memory_mb=int((held_mb + args.max_memory_mb) / 0.9),
                       worker_capacity=args.worker_capacity, rcvhwm=args.rcvhwm)
    cmap = ChannelMap.default()
    thread_kind = args.bare or getattr(args, "worker_threads", False)
    if thread_kind:  # the N workers as threads of the service (ingest.worker_threads)
        cfg = cfg.replace(workers=0, worker_threads=workers)
    if args.bare:  # the bare processor is not what a worker process builds from the set-up: worker threads
        svc = IngestService(cfg, SpillProcessor, (MonitorConfig(), cmap))
    else:  # what ``serve`` runs: the spill monitor's processor (histograms, channel statistics) and handle()
        config = Config()
        monitor = build_monitor(config, cmap, **_archive_kwargs(args))
        svc = IngestService(cfg, make_processor, (cmap, config.monitor, config.histograms), finish=monitor.handle,
                            new_accumulator=monitor.processor.new_accumulator,
                            worker_setup=worker_setup(config, cmap))
    publisher_pids = {p.pid for p in procs}
    rss_before_kb = status_kb("self", "VmRSS")
    if args.profile:  # the service thread under cProfile (its whole life: warm-up, warm spills, measured ones)
        import cProfile

        loop = svc._run

        def profiled():
            prof = cProfile.Profile(time.thread_time)  # CPU of this thread
            try:
                prof.runcall(loop)
            finally:
                prof.dump_stats(f"{args.profile}.{workers}w")
        svc._run = profiled
    svc.start()
    # as LiveService.start does: what exists now lives as long as the process, out of the collector's sight
    gc.collect()
    gc.freeze()
    deadline = time.monotonic() + 60
    while svc.pool.n_ready < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # subscriptions settle
    worker_pids = [c for c in children(os.getpid()) if c not in publisher_pids]
    if warm:  # a service that has run: its first spills in and out (its memory faulted in once), then measure
        go.set()
        while svc.stats.records < warm and time.monotonic() < deadline + args.timeout:
            time.sleep(0.02)
        time.sleep(0.5)
    warm_records = svc.stats.records
    _reset_peak_rss()
    # CPU: the service's = this process's minus this (bench) thread's; the workers' from /proc
    cpu0, bench0, threads0 = _own_cpu_seconds(), time.thread_time(), _threads_cpu_seconds()
    tfaults0 = _threads_faults()
    wfaults0 = {pid: _minor_faults(pid) for pid in worker_pids}
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    workers_cpu0 = {pid: _cpu_seconds(pid) for pid in worker_pids}
    host0 = _host_cpu_seconds()
    t0 = time.perf_counter()
    window0 = time.monotonic()
    go.set()
    go_measured.set()
    worker_peak_kb = 0
    next_sample = 0.0
    while svc.stats.records < args.spills and time.perf_counter() - t0 < args.timeout:
        time.sleep(0.02)
        if workers and time.perf_counter() >= next_sample:  # workers' peak RSS, sampled twice a second
            next_sample = time.perf_counter() + 0.5
            worker_peak_kb = max([worker_peak_kb] + [status_kb(c, "VmHWM") for c in children(os.getpid())
                                                     if c not in publisher_pids])
    t1 = time.perf_counter()
    host = _host_cpu_since(host0)
    released.set()
    if os.environ.get("NA64_BENCH_WINDOW"):  # the measured window on CLOCK_MONOTONIC, for perf record -k
        print(f"window {window0:.6f},{time.monotonic():.6f}", file=sys.stderr, flush=True)
    service_cpu = _own_cpu_seconds() - cpu0 - (time.thread_time() - bench0)
    threads1 = _threads_cpu_seconds()
    tfaults = {k: v - tfaults0.get(k, 0) for k, v in _threads_faults().items()}
    wfaults = sum(_minor_faults(pid) - f0 for pid, f0 in wfaults0.items())
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    service_threads = {k: round(v - threads0.get(k, 0.0), 2) for k, v in threads1.items()
                       if k != threading.main_thread().name and v - threads0.get(k, 0.0) >= 0.01}
    workers_cpu = sum((_cpu_seconds(pid) or 0.0) - (c0 or 0.0) for pid, c0 in workers_cpu0.items())
    thread_workers = not worker_pids and "na64-worker-threads" in service_threads
    if thread_workers:  # workers as threads of the service: theirs is the workers' CPU, not the service's
        workers_cpu = threads1.get("na64-worker-threads", 0.0) - threads0.get("na64-worker-threads", 0.0)
        service_cpu -= workers_cpu
    service_peak_growth_mb = (status_kb("self", "VmHWM") - rss_before_kb) / 1e3
    records = [r if isinstance(r, dict) else r.to_dict() for r in list(svc.records)[warm_records:]]
    latencies = list(svc.latencies)
    metrics = svc.metrics()
    svc.stop()
    gc.unfreeze()
    if not args.bare:
        monitor.close()  # with --archive: what waits for it written
    publishers_cpu = []
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.terminate()
    while len(publishers_cpu) < len(procs):
        try:
            publishers_cpu.append(spent.get(timeout=5))
        except queue.Empty:
            break
    elapsed = t1 - t0
    decoded = sum(r["events"] for r in records)
    out = {
        "mode": "paced" if paced else "sustained",
        "processing": "bare" if args.bare else "monitor",
        "worker_kind": "threads" if thread_kind else "processes",
        "workers": workers,
        "events_per_spill": n_events // max(1, len(RAW)),
        "warm_spills": warm_records,
        "spills": len(records),
        "events_decoded": decoded,
        "events_sent": n_events * (args.spills - warm) // max(1, args.spills),
        "dropped_events": metrics["ingest"]["dropped_events"],
        "lost_messages": sum(r["lost_messages"]["total"] for r in records),
        "incomplete_events": sum(r["incomplete_events"] for r in records),
        # where lost messages come from: sequence gaps per LDC, and the receive queues' reconnections
        "subscriber": {k: metrics["subscriber"].get(k) for k in ("lost_messages", "restarts", "sequence_jumps",
                                                                 "reordered_messages", "duplicate_messages",
                                                                 "rcvhwm", "hwm_reconnects", "lost_on_reconnect",
                                                                 "bad_messages")},
        "elapsed_s": round(elapsed, 2),
        "load_1min": round(os.getloadavg()[0], 2),
        "events_per_s": round(decoded / elapsed) if elapsed > 0 else None,
        "mb_per_s": round(nbytes * decoded / max(n_events, 1) / 1e6 / elapsed, 1) if elapsed > 0 else None,
        "latency_s": [round(x, 3) for x in latencies],
        "latency_median_s": round(statistics.median(latencies), 3) if latencies else None,
        "service_loop_s": round(metrics["ingest"]["loop_seconds"], 2),
        "service_cpu_s": round(service_cpu, 2),
        "workers_cpu_s": round(workers_cpu, 2) if worker_pids or thread_workers else None,
        "service_cpu_us_per_event": round(service_cpu / decoded * 1e6, 2) if decoded else None,
        "worker_cpu_us_per_event": (round(workers_cpu / decoded * 1e6, 2)
                                    if decoded and (worker_pids or thread_workers) else None),
        "service_vs_worker_cpu": round(service_cpu / workers_cpu, 3) if workers_cpu > 0 else None,
        "service_cpu_s_by_thread": service_threads,
        # the readout nodes' CPU (send) shares these cores in the bench: with service and workers, how busy
        # the host was (2 = both cores all the time)
        "publishers_cpu_s": round(sum(publishers_cpu), 2) if len(publishers_cpu) == len(procs) else None,
        "cores_busy": (round((service_cpu + workers_cpu + sum(publishers_cpu)) / elapsed, 2)
                       if elapsed > 0 and len(publishers_cpu) == len(procs) else None),
        # the host's own counters over the same window: every process and the kernel's softirq work (the
        # loopback TCP receive path), which the processes' CPU times above do not include
        "host_cores_busy": round(host["busy"] / elapsed, 2) if elapsed > 0 else None,
        "host_cores_softirq": round(host["softirq"] / elapsed, 2) if elapsed > 0 else None,
        "host_cpu_us_per_event": round(host["busy"] / decoded * 1e6, 2) if decoded else None,
        "builder_memory_builds": metrics["builder"]["memory_builds"],
        # incomplete events without loss: builds forced by max_pending_bytes (one node far ahead), late sub-events
        "builder_forced_builds": metrics["builder"]["forced_builds"],
        "builder_late_events": metrics["builder"]["late_events"],
        "builder_limit_mb": round((metrics["memory"].get("builder_limit_bytes") or 0) / 1e6),
        "service_page_faults_per_event": round(faults / decoded, 2) if decoded else None,
        "service_page_faults_per_event_by_thread": {k: round(v / decoded, 3) for k, v in tfaults.items()
                                                    if decoded and k != threading.main_thread().name and v},
        "worker_page_faults_per_event": round(wfaults / decoded, 3) if decoded and worker_pids else None,
        "service_peak_rss_growth_mb": round(service_peak_growth_mb, 1),
        "worker_peak_rss_mb": round(worker_peak_kb / 1e3, 1),
    }
    return out


def interleaved_messages(batch_events: int) -> list[bytes]:
    """The readout nodes' messages of the spills (``batch_events`` events each, sequence numbers counted per
    node), interleaved as a subscriber receives them: each node's k-th message of a spill in turn."""
    from na64_online.daq.envelope import make_message  # the tree's own (--baseline-rev: imported late)

    seq = {ldc: 0 for ldc in DATA}
    messages = []
    for s in range(len(RAW)):
        batches = {ldc: [DATA[ldc][s][i:i + batch_events]
                         for i in range(0, len(DATA[ldc][s]), batch_events)] for ldc in DATA}
        for k in range(max(len(b) for b in batches.values())):
            for ldc, b in batches.items():
                if k < len(b):
                    messages.append(make_message(ldc, seq[ldc], b[k]))
                    seq[ldc] += 1
    return messages


def stage_profile(args) -> dict:
    """CPU per event of each stage the service runs, in this process without sockets (µs per event).

    The very objects the service uses: ``Subscriber.handle`` (envelope, payload scan, sequence), the
    ``EventBuilder`` (plans, no copy), the plan sent (``dispatch``), a worker's gather of the plan + decode +
    result encoding, the service's result
    decoding and merge, and ``SpillMonitor.handle`` (the spill's record). ``worker`` is what one decoder
    worker spends per event; the service's share is the rest.
    """
    from na64_online.daq.builder import BuiltChunk, ClosedSpill, EventBuilder
    from na64_online.daq.subscriber import Subscriber
    try:
        from na64_online.daq.workers import gather_task  # protocol 5: tasks are plans
    except ImportError:  # a tree before it (--baseline-rev): tasks are built words
        gather_task = None

    config, cmap = Config(), ChannelMap.default()
    monitor = build_monitor(config, cmap)
    processor = make_processor(cmap, config.monitor, config.histograms)
    try:  # freed memory kept mapped, as the service (its buffers' share) and the worker processes do
        from na64_online.daq.memory import retain_freed_memory

        retain_freed_memory(keep_bytes=args.max_memory_mb << 20)
    except ImportError:  # an older tree
        pass
    sub = Subscriber(context=zmq.Context.instance())
    builder = EventBuilder((1, 2), chunk_events=args.chunk_events, spill_timeout_s=1e9,
                           max_pending_bytes=1 << 40)
    messages = interleaved_messages(args.batch_events)
    # warm every kernel first (numba's cache loads, or compiles): a throwaway builder with small chunks, so
    # that chunks are built from the first messages, decoded, encoded, read, merged and finished
    warm = EventBuilder((1, 2), chunk_events=min(args.chunk_events, 256))
    warm_sub, warm_monitor, warm_acc = Subscriber(context=zmq.Context.instance()), build_monitor(config, cmap), None
    read = getattr(processor, "read_result", None) or processor.decode_result
    for m in messages[:8]:
        r = warm_sub.handle(m)
        for o in warm.add(r.envelope.ldc, r.scan, 0.0):
            if isinstance(o, BuiltChunk):
                warm_acc = warm_acc or processor.new_accumulator()
                warm_acc.merge(read([bytes(f) for f in processor.encode_result(processor.accumulate(o.words))]))
    if warm_acc is None:
        raise SystemExit("stage profile: no chunk built from the first messages to warm up with")
    warm_monitor.handle(warm_acc)
    warm_sub.close()
    warm_monitor.close()
    cpu = dict.fromkeys(("receive", "build", "dispatch", "worker", "merge", "finish"), 0.0)

    def timed(stage, fn, *a):
        t = time.process_time()
        out = fn(*a)
        cpu[stage] += time.process_time() - t
        return out

    scratch = [None]
    # what a worker runs per task: its own step where the tree has one (buffers kept between tasks)
    decode_task = (processor.task_decoder() if hasattr(processor, "task_decoder")
                   else lambda w: processor.encode_result(processor.accumulate(w)))

    try:  # what a worker runs: its sub-events decoded where received (gathered only when damaged)
        from na64_online.daq.workers import decode_task as run_task
    except ImportError:  # a tree before it (--baseline-rev): gathered
        run_task = None

    def worker_task(frames):
        if run_task is not None:
            result, scratch[0] = run_task(decode_task, frames, scratch[0])
            return result
        words = gather_task(frames, scratch[0])
        scratch[0] = words.base
        return decode_task(words)

    accs: dict = {}
    events = 0
    read_result = getattr(processor, "read_result", None) or processor.decode_result  # as the service
    for m in messages:
        r = timed("receive", sub.handle, m)
        outputs = timed("build", builder.add, r.envelope.ldc, r.scan, 0.0)
        for o in outputs:
            if isinstance(o, BuiltChunk) and gather_task is None:
                frames = timed("worker", lambda w: processor.encode_result(processor.accumulate(w)),
                               o.words.copy())  # a worker's words are its own (received)
                builder.recycle(o.words)  # the task is answered: the service hands its buffer back
            elif isinstance(o, BuiltChunk):
                plan = timed("dispatch", o.plan_frames)  # what the service sends besides the payloads
                frames = [f"{o.run} {o.spill} {o.index} {o.gdc}".encode(), *plan, *o.payloads]
                # a worker: validates the plan, gathers the events into its recycled buffer, decodes, encodes
                frames = timed("worker", lambda f: worker_task(f), [b"TASK", b"\0" * 8, *frames])
            if isinstance(o, BuiltChunk):
                frames = [bytes(f) for f in frames]  # as received
                result = timed("merge", read_result, frames)
                key = (o.run, o.spill)
                if key not in accs:
                    accs[key] = timed("merge", processor.new_accumulator)
                timed("merge", accs[key].merge, result)
            elif isinstance(o, ClosedSpill):
                record = timed("finish", monitor.handle, accs.pop((o.run, o.spill)))
                events += record["events"]
    sub.close()
    monitor.close()
    per_event = {k: round(v / events * 1e6, 2) for k, v in cpu.items()}
    service = sum(v for k, v in per_event.items() if k != "worker")
    return {"events": events, "cpu_us_per_event": per_event, "service_us_per_event": round(service, 2),
            "service_vs_worker_cpu": round(service / per_event["worker"], 3)}


def replay_baseline(passes: int = 3) -> float:
    """Events/s of the same spills decoded and monitored in this one process (what ``replay`` does), the best
    of ``passes`` passes: one pass moved between 331 000 and 513 000 events/s in one hour on this VM, and the
    best is the harder baseline for the live / replay ratio."""
    from na64_online.decoders.decode import as_words

    monitor = build_monitor(Config(), ChannelMap.default())
    words = [as_words(raw)[0] for raw in RAW]
    monitor.processor.accumulate(words[0])  # warm-up
    best = 0.0
    for _ in range(passes):
        t0 = time.perf_counter()
        events = sum(monitor.handle(monitor.processor.accumulate(w))["events"] for w in words)
        best = max(best, events / (time.perf_counter() - t0))
    return best


def transport_floor(args, baseline: float, n_events: int) -> dict:
    """The readout nodes' messages sent to a bare SUB socket that drops them: what the transport alone costs
    on these cores, and the live rate it leaves at most.

    The same two forked publishers, the same warm and measured spills as a sustained run; this process
    receives with one ZeroMQ I/O thread and drops every message (no scan, build or decode). ``ceiling_vs_replay``
    is the rate the two cores would give if the service and its workers cost nothing beyond replay's own
    decoding: 2 cores / (transport CPU + replay's CPU per event), as a ratio to replay."""
    warm = args.warm_spills
    procs, endpoints, go, go_measured, spent, released = _start_nodes(args)
    zctx = zmq.Context(io_threads=1)
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1000)
    sub.setsockopt(zmq.SUBSCRIBE, L.ZMQ_TOPIC)
    for e in endpoints:
        sub.connect(e)

    def messages(spills) -> int:
        return sum(-(-len(sp) // args.batch_events) for ldc in DATA for sp in DATA[ldc][spills])

    def receive(n: int) -> None:
        deadline = time.monotonic() + args.timeout
        while n and time.monotonic() < deadline:
            if sub.poll(100):
                sub.recv_multipart(copy=False)
                n -= 1
        if n:
            raise SystemExit(f"transport floor: {n} messages never arrived")

    go.set()
    receive(messages(slice(0, warm)))
    time.sleep(0.5)
    cpu0, host0, t0 = _own_cpu_seconds(), _host_cpu_seconds(), time.perf_counter()
    go_measured.set()
    receive(messages(slice(warm, None)))
    elapsed, receiver_cpu = time.perf_counter() - t0, _own_cpu_seconds() - cpu0
    host = _host_cpu_since(host0)  # ends with the last message received: the publishers' flush is over by then
    publishers_cpu = [spent.get(timeout=60) for _ in procs]
    released.set()
    for p in procs:
        p.join(10)
    sub.close(0)
    zctx.term()
    events = n_events * (len(RAW) - warm) // max(1, len(RAW))  # the measured spills' events, as a run counts them
    transport_us = (receiver_cpu + sum(publishers_cpu)) / events * 1e6
    host_us = host["busy"] / events * 1e6  # the same, with the kernel's softirq work (and anything else running)
    replay_us = 1e6 / baseline
    return {"events": events, "events_per_s": round(events / elapsed),
            "receiver_cpu_us_per_event": round(receiver_cpu / events * 1e6, 2),
            "publishers_cpu_us_per_event": round(sum(publishers_cpu) / events * 1e6, 2),
            "host_cpu_us_per_event": round(host_us, 2),
            "softirq_cpu_us_per_event": round(host["softirq"] / events * 1e6, 2),
            "replay_cpu_us_per_event": round(replay_us, 2),
            "ceiling_vs_replay": round(2 * replay_us / (transport_us + replay_us), 2),
            "host_ceiling_vs_replay": round(2 * replay_us / (host_us + replay_us), 2)}


def short_commit(rev: str) -> str:
    """The abbreviated commit git ``rev`` names now (a branch name moves; the commit does not)."""
    import subprocess

    return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", rev],
                          check=True, capture_output=True, text=True).stdout.strip()


def baseline_tree(rev: str) -> str:
    """A directory to put first on PYTHONPATH so that ``na64_online`` is the package as of git ``rev``, with its
    own ahead-of-time compiled kernels when ``rev`` has them (:func:`baseline_env` says which kernels it runs).

    Made once, in ``bench-ingest-COMMIT`` under the temporary directory (named by :func:`short_commit`, shared by
    every bench), and kept between runs (its numba cache too: a cold cache compiles for minutes): the tree of
    ``rev`` (``git archive``) and beside it a package folder of links (the layers become sub-packages as
    setup.py maps them); a tree from before the simulator moved to ``sim/`` gets ``sim/simulator.py`` linked to
    ``daq/simulator.py``. A tree with ``decoders/_aot_build.py`` gets its kernels built into its package folder
    as tools/setup builds them (once; a build cut short is redone), so that the baseline runs its compiled
    kernels as this tree does, not numba's. The directory returned is ``pkg`` beside ``tree``."""
    import shutil
    import subprocess
    import tempfile

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rev = short_commit(rev)
    where = os.path.join(tempfile.gettempdir(), f"bench-ingest-{rev}")
    tree, package = os.path.join(where, "tree"), os.path.join(where, "pkg", "na64_online")
    if not os.path.isdir(package):
        shutil.rmtree(where, ignore_errors=True)  # a tree cut short
        os.makedirs(tree)
        archive = subprocess.run(["git", "-C", repo, "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        os.makedirs(package + ".part")
        for name in os.listdir(os.path.join(tree, "na64_online")):
            os.symlink(os.path.join(tree, "na64_online", name), os.path.join(package + ".part", name))
        for layer in ("daq", "decoders", "monitor", "web", "sim"):
            if os.path.isdir(os.path.join(tree, layer)):
                os.symlink(os.path.join(tree, layer), os.path.join(package + ".part", layer))
        if not os.path.isdir(os.path.join(tree, "sim")):
            os.makedirs(os.path.join(package + ".part", "sim"))
            open(os.path.join(package + ".part", "sim", "__init__.py"), "w").close()
            os.symlink(os.path.join(tree, "daq", "simulator.py"),
                       os.path.join(package + ".part", "sim", "simulator.py"))
        os.rename(package + ".part", package)
    path = os.path.dirname(package)
    if os.path.exists(os.path.join(package, "decoders", "_aot_build.py")) and not _has_aot_kernels(package):
        print(f"building {rev}'s ahead-of-time kernels into {package} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "na64_online.decoders._aot_build", package], check=True, cwd="/",
                       env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.DEVNULL)
    return path


def _has_aot_kernels(package: str) -> bool:
    """Whether the package folder holds a compiled kernel module and its build record (written after it)."""
    names = os.listdir(package)
    return "_aot_kernels.json" in names and any(n.startswith("_aot_kernels") and n.endswith(".so") for n in names)


def baseline_env(path: str) -> dict[str, str]:
    """The environment that runs the package of :func:`baseline_tree` ``path``: first on PYTHONPATH, with
    ``NA64_KERNELS=aot`` when it has compiled kernels (a stale or foreign module is then an error, not a quiet
    fall-back to numba's), else ``auto`` (a revision from before them: its JIT kernels)."""
    kernels = "aot" if _has_aot_kernels(os.path.join(path, "na64_online")) else "auto"
    return {"PYTHONPATH": path, "NA64_KERNELS": kernels}


def compare(args, argv: list[str]) -> int:
    """The same runs with the package as of ``--baseline-rev`` and as it is, alternating, each in its own
    process; one table of the ratios."""
    import subprocess

    if not args.data:
        raise SystemExit("--baseline-rev needs --data FILE (both sides read the same spills)")
    args.data = os.path.abspath(args.data)
    make_data(args.events, args.spills, args.seed, args.data)  # written once, if missing
    DATA.clear(), RAW.clear()
    own = [a for a in argv if a != "--json"]
    i = own.index("--baseline-rev")
    del own[i:i + 2]
    if "--data" in own:  # absolute: the runs are made from another directory
        i = own.index("--data")
        del own[i:i + 2]
    own = [a for a in own if not a.startswith("--data=")] + ["--data", args.data]
    if "--archive" in own:  # absolute too
        i = own.index("--archive")
        own[i + 1] = os.path.abspath(own[i + 1])
    rows = []
    baseline = baseline_env(baseline_tree(args.baseline_rev))
    where = os.path.dirname(baseline["PYTHONPATH"])
    stages = [sys.executable, os.path.abspath(__file__), "--data", args.data, "--stages-only", "--json"]
    for label, env in ((args.baseline_rev, baseline), ("this tree", {})):
        # the stage profile (in-process), which also compiles what the runs use
        done = subprocess.run(stages, env={**os.environ, **env}, capture_output=True, text=True, cwd=where)
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                print(json.dumps({"tree": label, "stages": json.loads(line)}), flush=True)
    if args.stages_only:
        return 0
    for w in args.workers:
        for label, env in ((args.baseline_rev, baseline), ("this tree", {})):
            cmd = [sys.executable, os.path.abspath(__file__), *own, "--workers", str(w), "--json", "--mode",
                   "sustained"]
            # cwd: not the checkout, whose na64_online/ would come first on the sys.path of ``python -m``
            # children (the local workers) and shadow the baseline tree
            done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, cwd=where)
            lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
            live = [x for x in lines if x.get("mode") == "sustained"]
            if done.returncode or not live:
                print(f"{label} workers={w}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append((label, w, live[0]))
            print(json.dumps({"tree": label, **live[0]}), flush=True)
    kind = "threads" if args.worker_threads else "processes"
    print(f"\n{'tree':>12} workers ({kind})  warm spills  service/worker CPU per event   service µs/event   "
          f"worker µs/event   live/replay   dropped   lost msgs   I/O thread faults/event   publishers CPU s   "
          f"cores busy   host cores busy (softirq)   host µs/event")
    for label, w, r in rows:
        io_faults = r["service_page_faults_per_event_by_thread"].get("zmq-io")
        print(f"{label:>12} {w:>7}  {r.get('warm_spills', 0)!s:>11}  {r['service_vs_worker_cpu']!s:>28}   "
              f"{r['service_cpu_us_per_event']!s:>16}   {r['worker_cpu_us_per_event']!s:>15}   "
              f"{r['events_per_s_vs_replay']!s:>11}   {r['dropped_events']:>7}   {r['lost_messages']:>9}   "
              f"{io_faults!s:>23}   {r.get('publishers_cpu_s')!s:>16}   {r.get('cores_busy')!s:>10}   "
              f"{r.get('host_cores_busy')!s:>15} ({r.get('host_cores_softirq')!s:>5})   "
              f"{r.get('host_cpu_us_per_event')!s:>13}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000, help="events per spill (1e5)")
    p.add_argument("--spills", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--mode", choices=("sustained", "paced", "both"), default="both")
    p.add_argument("--spill-duration", type=float, default=4.8)
    p.add_argument("--spill-gap", type=float, default=2.0)
    p.add_argument("--batch-events", type=int, default=500)
    p.add_argument("--chunk-events", type=int, default=5000)
    p.add_argument("--max-queued-tasks", type=int, default=1000)
    p.add_argument("--worker-capacity", type=int, default=IngestConfig().worker_capacity,
                   help="tasks a worker holds at most (ingest.worker_capacity)")
    p.add_argument("--rcvhwm", type=int, default=IngestConfig().rcvhwm,
                   help="messages each readout node's receive queue holds at most (ingest.rcvhwm; the memory "
                   "budget may set it lower)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--max-memory-mb", type=int, default=1024,
                   help="the service's memory budget beyond what this process holds at start (the spills)")
    p.add_argument("--warm-spills", type=int, default=0, metavar="K",
                   help="live runs: the first K spills of the data go through the service before the measured "
                   "rest (a service that has run: its memory faulted in once); 0: a service just started")
    p.add_argument("--profile", metavar="FILE", help="live runs: cProfile the service thread into FILE.<N>w")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--archive", metavar="DIR", help="live runs: archive the spills (SQLite, synchronous=FULL, a "
                   "fresh file per run in DIR) as serve does")
    p.add_argument("--data", metavar="FILE", help="raw file of the spills: read if it exists, else simulated "
                   "and written there (saves simulating again)")
    p.add_argument("--stages", action="store_true", help="first, CPU per event of each stage, in-process")
    p.add_argument("--stages-only", action="store_true", help="only that")
    p.add_argument("--json", action="store_true", help="one JSON line per run")
    p.add_argument("--transport-floor", action="store_true",
                   help="first, the same messages sent to a SUB that drops them: the transport's CPU and the live "
                   "rate it leaves at most (2 cores / (transport + replay's decode))")
    p.add_argument("--transport-floor-only", action="store_true", help="only that (and the replay baseline)")
    p.add_argument("--worker-threads", action="store_true",
                   help="the workers are threads of the service process (ingest.worker_threads), not processes")
    p.add_argument("--bare", action="store_true",
                   help="SpillProcessor alone (no histograms / channel statistics / quality)")
    p.add_argument("--baseline-rev", metavar="REV",
                   help="compare: the sustained runs with the package as of git REV and as it is, alternating")
    args = p.parse_args(argv)
    if args.baseline_rev:
        return compare(args, list(sys.argv[1:] if argv is None else argv))
    args.stages = args.stages or args.stages_only
    args.transport_floor = args.transport_floor or args.transport_floor_only
    n_events, nbytes = make_data(args.events, args.spills, args.seed, args.data)
    args.spills = len(RAW)
    modes = {"sustained": [False], "paced": [True], "both": [False, True]}[args.mode]
    print(f"host: {os.cpu_count()} CPUs", file=sys.stderr)
    if args.stages:
        prof = stage_profile(args)
        print(json.dumps(prof) if args.json else
              f"stages, CPU µs per event (no sockets): {prof['cpu_us_per_event']}; service "
              f"{prof['service_us_per_event']} µs = {prof['service_vs_worker_cpu']} × a worker's", flush=True)
        if args.stages_only:
            return 0
    baseline = replay_baseline()
    print(f"baseline, same spills replayed in one process: {baseline:.0f} events/s", flush=True)
    if args.transport_floor:
        floor = transport_floor(args, baseline, n_events)
        print(json.dumps(floor) if args.json else
              f"transport floor: {floor['events']} events to a SUB that drops them at {floor['events_per_s']} "
              f"events/s; CPU per event: receiver {floor['receiver_cpu_us_per_event']} µs, readout nodes "
              f"{floor['publishers_cpu_us_per_event']} µs, replay's decode {floor['replay_cpu_us_per_event']} µs: "
              f"live can reach at most {floor['ceiling_vs_replay']} × replay on 2 cores; the host's counters "
              f"(with the kernel's softirq work, {floor['softirq_cpu_us_per_event']} µs): transport "
              f"{floor['host_cpu_us_per_event']} µs, at most {floor['host_ceiling_vs_replay']} × replay", flush=True)
        if args.transport_floor_only:
            return 0
    for paced in modes:
        for w in args.workers:
            res = run(w, paced, args, n_events, nbytes)
            res["events_per_s_vs_replay"] = round(res["events_per_s"] / baseline, 2) if res["events_per_s"] else None
            if args.json:
                print(json.dumps(res), flush=True)
            else:
                print(f"{res['mode']:9} workers={w}: {res['events_decoded']}/{res['events_sent']} events in "
                      f"{res['elapsed_s']} s = {res['events_per_s']} events/s "
                      f"({res['events_per_s_vs_replay']} × replay), {res['mb_per_s']} MB/s; "
                      f"latency EOB→record {res['latency_s']} s; dropped {res['dropped_events']}, "
                      f"lost msgs {res['lost_messages']}, incomplete {res['incomplete_events']}; "
                      f"service peak RSS +{res['service_peak_rss_growth_mb']} MB, "
                      f"worker peak RSS {res['worker_peak_rss_mb']} MB; CPU per event: service "
                      f"{res['service_cpu_us_per_event']} µs, workers {res['worker_cpu_us_per_event']} µs "
                      f"(service/worker {res['service_vs_worker_cpu']}); cores busy {res['cores_busy']}, by the "
                      f"host's counters {res['host_cores_busy']} (softirq {res['host_cores_softirq']}): "
                      f"{res['host_cpu_us_per_event']} µs per event in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
