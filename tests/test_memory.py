"""The service's memory budget in bytes (issue 8 §3): plan, receive high-water mark, bounded stages.

Real ZeroMQ sockets on 127.0.0.1; every test bounded in time.
"""

from __future__ import annotations

import textwrap
import threading
import time

import pytest
import zmq

from na64_online.daq.envelope import make_message
from na64_online.daq.ingest import IngestConfig, IngestService
from na64_online.daq.memory import MIN_BUFFER_BYTES, MemoryBudget, resident_bytes
from na64_online.daq.publisher import PublisherConfig, ReadoutPublisher
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
from na64_online.daq import subscriber as subscriber_module
from na64_online.daq.subscriber import ASSUMED_MESSAGE_BYTES, HWM_QUIET_S, Subscriber
from na64_online.decoders.channelmap import ChannelMap
from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor

EVENTS = 2000


def test_plan_shares_what_the_footprint_leaves():
    b = MemoryBudget.plan(1024, footprint_bytes=300 << 20)
    assert b.fits and b.total_bytes == 1024 << 20
    assert b.buffer_bytes == (1024 << 20) - (300 << 20) - int((1024 << 20) * 0.10)
    assert b.receive_bytes + b.builder_bytes + b.task_bytes <= b.buffer_bytes
    tiny = MemoryBudget.plan(1, footprint_bytes=300 << 20)
    assert not tiny.fits and tiny.buffer_bytes == MIN_BUFFER_BYTES
    assert resident_bytes() > 10 << 20
    with pytest.raises(ValueError, match="max_memory_mb"):
        IngestConfig(max_memory_mb=0)
    with pytest.raises(ValueError, match="max_sequence_jump"):
        IngestConfig(sequence_window=64, max_sequence_jump=10)


def test_receive_hwm_follows_the_message_size_and_the_nodes():
    sub = Subscriber(queue_bytes=64 << 20, rcvhwm=10000)
    try:
        assert sub.rcvhwm == (64 << 20) // ASSUMED_MESSAGE_BYTES  # before any message: 1 MB assumed
        sub.connect("tcp://127.0.0.1:1")
        sub.connect("tcp://127.0.0.1:2")  # the bound is for all nodes together
        assert sub.rcvhwm == (64 << 20) // (2 * ASSUMED_MESSAGE_BYTES)
        frames = make_message(1, 0, [b"\0" * 65532])  # not a valid payload: still a message of its size
        for seq in range(200):
            frames[1] = make_message(1, seq, [b""])[1]
            sub.handle(frames)
        mean = sub.mean_message_bytes
        assert abs(mean - sum(len(f) for f in frames)) < 1
        sub._apply_hwm()  # noqa: SLF001 - recv() does it every 64 messages
        assert sub.rcvhwm == 32  # smaller messages than assumed: a higher mark waits (no live change)
        sub.set_queue_bytes(64 << 20)  # the budget (re)applied: derived from the sizes seen
        assert sub.rcvhwm == int((64 << 20) // (2 * mean)) == sub.socket.getsockopt(zmq.RCVHWM)
        assert sub.socket.getsockopt(zmq.MAXMSGSIZE) == 64 << 20
        big = make_message(2, 0, [b"\0" * (4 << 20)])  # a node of larger messages: the mark must come down
        sub.handle(big)
        sub._apply_hwm()  # noqa: SLF001
        lower = int((64 << 20) // (mean + sum(len(f) for f in big)))
        # ... once the nodes are quiet: a reconnection while data flows would drop what the queues hold
        assert sub.rcvhwm > lower and sub.pending_hwm == lower and sub.hwm_reconnects == 1
        assert not sub.idle(time.monotonic())  # a message came just now
        assert sub.idle(time.monotonic() + HWM_QUIET_S)
        assert sub.rcvhwm == lower == sub.socket.getsockopt(zmq.RCVHWM) and sub.pending_hwm is None
        assert sub.hwm_reconnects == 2  # set_queue_bytes while data flowed, then the lowered mark
        sub.set_queue_bytes(1)  # never below one message per node
        assert sub.rcvhwm == 1
    finally:
        sub.close()


@pytest.mark.timeout(60)
def test_receive_queue_bound_applies_to_a_connection_made_before_and_loss_is_exact():
    """libzmq applies RCVHWM set after connect; what the queue cannot take the PUB drops: counted as gaps."""
    size = 1 << 20
    payload = b"\0" * size
    pub = ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", 1, sndhwm=2))
    sub = Subscriber([pub.endpoint])  # connected with the default high-water mark (10000) ...
    try:
        assert pub.wait_for_subscribers(1, 10)
        sub.set_queue_bytes(8 * size)  # ... then bounded: 8 messages of 1 MB (assumed size = 1 MB)
        assert sub.rcvhwm == 8
        n = 200
        for seq in range(n):  # nobody reads meanwhile: 200 MB offered
            pub.socket.send_multipart(make_message(1, seq, [payload]))
            time.sleep(0.002)
        time.sleep(0.5)
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = sub.recv(200)
            if not batch and got:
                break
            got += batch
    finally:
        sub.close()
        pub.close(0)
    t = sub.sequences
    # queued: the high-water mark, ZeroMQ's batches and the kernel's socket buffers — not 200
    assert 1 <= len(got) < 40, len(got)
    # exact: every number up to the last received was received or counted lost
    assert t.received[1] + t.lost.get(1, 0) == t.last[1] + 1 and t.lost.get(1, 0) >= 1


@pytest.mark.timeout(60)
def test_a_lower_mark_found_under_load_waits_for_quiet_nodes_and_loses_nothing(monkeypatch):
    """Messages larger than assumed need a lower receive mark; applying it means reconnecting, which drops
    whatever the queues hold. Found while a slow reader has the queues full (a publisher that waits rather than
    drops), it waits: every message arrives, none is counted lost; once the node is quiet the mark comes down.
    (Reconnecting at once, as before, lost the queued messages: 45 of LDC 1 in a bench run under load.)"""
    monkeypatch.setattr(subscriber_module, "ASSUMED_MESSAGE_BYTES", 64 << 10)
    payload = b"\0" * (100 << 10)  # 100 kB messages where 64 kB were assumed
    n = 160
    pub = ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", 1, sndhwm=4, nodrop=True))
    sub = Subscriber(queue_bytes=64 * (64 << 10), rcvhwm=10000)
    try:
        assert sub.rcvhwm == 64
        sub.connect(pub.endpoint)
        assert pub.wait_for_subscribers(1, 10)
        sender = threading.Thread(target=lambda: [pub.socket.send_multipart(make_message(1, seq, [payload]))
                                                  for seq in range(n)], daemon=True)
        sender.start()
        got = 0
        deadline = time.monotonic() + 30
        while got < n and time.monotonic() < deadline:
            got += len(sub.recv(100, max_messages=8))  # recv() checks the mark every 64 messages
            time.sleep(0.01)  # a slow reader: the queues stay full
        sender.join(5)
        assert got == n and sub.sequences.lost == {} and sub.stats.lost_on_reconnect == {}
        lower = (64 * (64 << 10)) // sum(len(f) for f in make_message(1, 0, [payload]))
        assert sub.pending_hwm == lower and sub.hwm_reconnects == 0 and sub.rcvhwm == 64
        assert sub.idle(time.monotonic() + HWM_QUIET_S)  # quiet: applied now, nothing in flight
        assert sub.rcvhwm == lower and sub.hwm_reconnects == 1
    finally:
        sub.close()
        pub.close(0)


class SlowProcessor(SpillProcessor):
    """Decodes like SpillProcessor, slowly: the decoder falls far behind (overload)."""

    def accumulate(self, words, index=None, **kw):
        time.sleep(0.05)
        return super().accumulate(words, index, **kw)


@pytest.mark.timeout(120)
def test_tiny_budget_unpaced_publishers_every_event_decoded_or_counted():
    channel_map = ChannelMap.default()
    sim = ReadoutSimulator(SimulationConfig(run=12, spills=2, events_per_spill=EVENTS, seed=3), channel_map)
    spills = [{l: s.ldc_events(l) for l in (1, 2)} for s in sim.spills()]
    ctx = zmq.Context()  # its own I/O thread: not shared with what other tests left on Context.instance()
    pubs = {l: ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", l, fast=True, batch_events=50), context=ctx)
            for l in (1, 2)}
    health = []
    cfg = IngestConfig(endpoints=tuple(p.endpoint for p in pubs.values()), workers=0, max_memory_mb=1,
                       chunk_events=200, chunk_max_age_s=0.05, worker_capacity=1, max_queued_tasks=64,
                       spill_timeout_s=10.0)  # a starved machine must not time the spill out
    svc = IngestService(cfg, SlowProcessor, (MonitorConfig(), channel_map), on_health=health.append,
                        health_interval_s=0.02, context=zmq.Context()).start()
    try:
        budget = svc.memory_budget
        assert not budget.fits and budget.buffer_bytes == MIN_BUFFER_BYTES  # 1 MB: below the footprint

        def node(ldc):
            assert pubs[ldc].wait_for_subscribers(1, 20)
            pubs[ldc].publish([s[ldc] for s in spills])

        threads = [threading.Thread(target=node, args=(l,), daemon=True) for l in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        records = [r.to_dict() for r in svc.wait_records(2, 60)]
        m = svc.metrics()
    finally:
        svc.stop()
        for p in pubs.values():
            p.close(0)
        ctx.term()
    assert len(records) == 2
    for r in records:  # nothing silent: every event decoded or counted dropped
        brief = {k: r.get(k) for k in ("spill", "events", "dropped_events", "lost_events", "complete", "missing_ldcs",
                                       "incomplete_events", "late_events", "lost_messages", "bad_messages")}
        assert r["events"] + r["dropped_events"] == EVENTS, (brief, m["builder"])
        assert r["lost_events"] == 0 and r["complete"], brief
    assert sum(r["dropped_events"] for r in records) == m["ingest"]["dropped_events"] > 0
    # every stage held about its share at most (one message / one chunk beyond: the one that always fits)
    chunk_max = 200 * max(len(e) for s in spills for l in (1, 2) for e in s[l]) * 2
    assert max(h["memory_buffered_bytes"]["builder"] for h in health) <= budget.builder_bytes + chunk_max
    assert max(h["memory_buffered_bytes"]["tasks"] for h in health) <= budget.task_bytes + chunk_max
    hwm = health[-1]["receive_hwm_messages"]
    assert 1 <= hwm < 100  # derived from ~3 MB and the messages seen, not 10000
    assert m["memory"]["rcvhwm"] == hwm


def test_retained_freed_memory_serves_the_next_task_without_page_faults():
    """After retain_freed_memory (what a worker process does at start), a block of a task's size freed and
    asked for again comes back with its pages mapped: no page faults the second time (glibc; a process of its
    own, since it sets the allocator of the whole process)."""
    import subprocess
    import sys

    script = textwrap.dedent("""
        import resource
        from na64_online.daq.memory import retain_freed_memory
        if not retain_freed_memory(256 << 20):
            print("not glibc")
            raise SystemExit(0)
        faults = []
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = bytearray(20 << 20)
            block[::4096] = bytes(len(block[::4096]))
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            del block
        print(*faults)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True).stdout
    if out.strip() == "not glibc":
        pytest.skip("the C library is not glibc (no mallopt)")
    first, *again = map(int, out.split())
    pages = (20 << 20) // 4096
    assert first > pages // 2  # the first time the pages are new
    assert all(f < pages // 20 for f in again), out
