"""Subscriber: envelope validation, per-LDC sequence tracking, real sockets on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from na64_online.daq.builder import split_super_events
from na64_online.daq.envelope import make_message, pack_envelope
from na64_online.daq.publisher import (
    PublisherConfig, ReadoutPublisher, parse_corruptions, parse_sequences,
)
from na64_online.daq.subscriber import Observed, SequenceTracker, Subscriber
from na64_online.decoders import layout as L

SMALL = Path(__file__).parent / "data" / "vectors" / "small.dat"


@pytest.fixture(scope="module")
def ev():
    return split_super_events(SMALL.read_bytes())


# ---------------------------------------------------------------- sequence numbers
def test_in_order_and_first_message_of_any_number():
    t = SequenceTracker()
    assert t.observe(1, 1000) == Observed()  # joined late: nothing lost before
    assert t.observe(1, 1001) == Observed()
    assert t.observe(2, 0) == Observed()
    assert t.lost == {} and t.received == {1: 2, 2: 1}


def test_gaps_are_lost_messages_per_ldc():
    t = SequenceTracker()
    for seq in (0, 1, 4, 5, 9):
        t.observe(1, seq)
    for seq in (0, 2):
        t.observe(2, seq)
    assert t.lost == {1: 2 + 3, 2: 1}


def test_restart_is_recognised_by_sequence_0_only():
    t = SequenceTracker()
    t.observe(1, 0)
    t.observe(1, 500)
    assert t.observe(1, 0) == Observed(restarted=True)
    assert t.observe(1, 1) == Observed()
    assert t.observe(1, 3) == Observed(lost=1)  # 2 missing
    assert t.observe(1, 2) == Observed(fault="reordered", recovered=True)  # late, not a restart
    assert t.restarts == {1: 1} and t.lost == {1: 499} and t.reordered == {1: 1}
    # a step back beyond the window, not to 0 (e.g. a node whose first messages after a restart were lost)
    assert t.observe(1, 400).fault is None  # forward: 396 lost
    assert t.observe(1, 5) == Observed(fault="sequence_jump", jump=-396)
    assert t.observe(1, 6) == Observed()  # the new numbering goes on: followed from 5, one jump
    assert t.jumps == {1: 1} and t.lost == {1: 499 + 396} and t.restarts == {1: 1}


def test_issue_evidence_duplicate_and_swap_are_not_loss():
    """Duplicated seq 5 and 20/21 swapped gave lost_messages 27: now 0 lost, 1 duplicate, 1 reordered."""
    t = SequenceTracker()
    seqs = list(range(0, 6)) + [5] + list(range(6, 20)) + [21, 20] + list(range(22, 40))
    faults = [t.observe(1, s).fault for s in seqs]
    assert faults.count("duplicate") == 1 and faults.count("reordered") == 1
    assert t.lost.get(1, 0) == 0 and t.restarts == {} and t.jumps == {}
    assert t.duplicates == {1: 1} and t.reordered == {1: 1} and t.last[1] == 39


def test_issue_evidence_one_wild_sequence_number_is_one_jump():
    """One envelope with seq 10**6 gave 1 000 000 lost messages: now 1 sequence_jump, 0 lost."""
    t = SequenceTracker()
    for s in range(0, 11):
        t.observe(1, s)
    assert t.observe(1, 10**6) == Observed(fault="sequence_jump", jump=10**6 - 11)
    for s in range(11, 20):
        assert t.observe(1, s) == Observed()  # the old numbering goes on
    assert t.lost.get(1, 0) == 0 and t.jumps == {1: 1} and t.last_jump == {1: 10**6 - 11}
    # a damaged number in place of message 20: the jump, then 21 — message 20 is not lost
    assert t.observe(1, 2**40).fault == "sequence_jump"
    assert t.observe(1, 21) == Observed() and t.observe(1, 22) == Observed()
    assert t.jumps == {1: 2} and t.lost.get(1, 0) == 0
    # a real jump: the numbers go on from the new one; still one jump, no loss
    assert t.observe(2, 7).fault is None
    assert t.observe(2, 5 * 10**6).fault == "sequence_jump"
    assert t.observe(2, 5 * 10**6 + 2) == Observed(lost=1)
    assert t.jumps == {1: 2, 2: 1} and t.lost == {2: 1}


def test_window_bounds_what_can_be_taken_back():
    t = SequenceTracker(window=8, max_jump=1000)
    t.observe(1, 0)
    assert t.observe(1, 20) == Observed(lost=19)
    assert t.observe(1, 15).recovered  # within the window: taken back
    assert t.observe(1, 15).fault == "duplicate"
    assert t.observe(1, 10).fault == "sequence_jump"  # beyond the window backwards: not a loss, a jump
    assert t.observe(1, 21) == Observed()  # back on the old numbering
    assert t.lost == {1: 18} and t.reordered == {1: 1} and t.duplicates == {1: 1}
    with pytest.raises(ValueError):
        SequenceTracker(window=100, max_jump=10)


def test_forward_step_up_to_max_jump_is_loss():
    t = SequenceTracker(max_jump=1000)
    t.observe(3, 0)
    assert t.observe(3, 1001) == Observed(lost=1000)
    assert t.observe(3, 2003).fault == "sequence_jump"


def test_huge_sequence_numbers():
    t = SequenceTracker()
    t.observe(7, 2**64 - 3)
    assert t.observe(7, 2**64 - 1) == Observed(lost=1)


# ---------------------------------------------------------------- handle()
def test_handle_counts_bad_envelopes_and_damaged_payloads(ev):
    sub = Subscriber()
    try:
        good = make_message(1, 0, ev[1][:4])
        r = sub.handle(good)
        assert r is not None and not r.corrupt and r.scan.n_events == 4 and r.lost == 0
        assert sub.handle([L.ZMQ_TOPIC, pack_envelope(1, 1, 4, magic=b"XXXX"), good[2]]) is None
        assert sub.handle(good[:2]) is None
        assert sub.handle([b"x", *good[1:]]) is None
        assert sub.stats.bad_envelopes == 3 and "topic" in sub.stats.last_error
        trunc = make_message(1, 3, ev[1][4:8])
        trunc[2] = trunc[2][:-40]
        r = sub.handle(trunc)
        assert r.corrupt and r.scan.n_events == 3 and r.lost == 2  # 1 and 2 never usable
        assert sub.stats.corrupt_messages == {1: 1}
        assert sub.sequences.lost == {1: 2}
    finally:
        sub.close()


# ---------------------------------------------------------------- real sockets
def collect(sub: Subscriber, n_messages: int, timeout_s: float = 10.0):
    got = []
    deadline = time.monotonic() + timeout_s
    while sub.stats.messages < n_messages and time.monotonic() < deadline:
        got.extend(sub.recv(50))
    return got


@pytest.mark.timeout(60)
def test_real_sockets_loss_and_corruption(ev):
    pub = ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", 2, fast=True, batch_events=4,
                                           lose=frozenset({1, 5}), corrupt={3: "truncate", 6: "magic"}))
    sub = Subscriber([pub.endpoint])
    try:
        assert pub.endpoint.startswith("tcp://127.0.0.1:") and not pub.endpoint.endswith(":0")
        assert pub.wait_for_subscribers(1, 10)
        pub.publish_spill(ev[2])  # 32 events: messages 0…7
        assert pub.stats.lost_injected == 2 and pub.stats.corrupted == 2 and pub.stats.messages == 6
        got = collect(sub, 6)
        assert [r.envelope.sequence for r in got] == [0, 2, 3, 4, 7]
        assert sub.sequences.lost == {2: 1 + 2}  # 1 lost, 5 lost, 6 unreadable
        assert sub.stats.bad_envelopes == 1
        assert sub.stats.corrupt_messages == {2: 1}
        assert [r.scan.n_events for r in got] == [4, 4, 3, 4, 4]
    finally:
        sub.close()
        pub.close(0)


@pytest.mark.timeout(60)
def test_two_nodes_one_socket_and_a_restart(ev):
    a = ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", 1, fast=True, batch_events=8))
    b = ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", 2, fast=True, batch_events=8))
    sub = Subscriber([a.endpoint, b.endpoint])
    try:
        assert a.wait_for_subscribers(1, 10) and b.wait_for_subscribers(1, 10)
        a.publish_spill(ev[1])
        b.publish_spill(ev[2])
        collect(sub, 8)
        assert sub.sequences.received == {1: 4, 2: 4} and sub.sequences.last == {1: 3, 2: 3}
        endpoint = a.endpoint
        a.close(0)
        a = ReadoutPublisher(PublisherConfig(endpoint, 1, fast=True, batch_events=8))  # restarted node
        # the SUB socket reconnects by itself (ZeroMQ re-subscribes when its owner thread uses it)
        deadline = time.monotonic() + 10
        while not a.wait_for_subscribers(1, 0.01) and time.monotonic() < deadline:
            sub.recv(10)
        assert a.subscribers == 1
        a.publish_spill(ev[1][:16])
        collect(sub, 10)
        assert sub.sequences.restarts == {1: 1}
        assert sub.sequences.lost == {}
        assert sub.sequences.last[1] == 1
    finally:
        sub.close()
        a.close(0)
        b.close(0)


@pytest.mark.timeout(60)
def test_paced_publishing_spreads_a_spill(ev):
    pub = ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", 1, spill_duration_s=0.6, spill_gap_s=0.3,
                                           batch_events=4, batch_interval_s=0.05))
    sub = Subscriber([pub.endpoint])
    try:
        assert pub.wait_for_subscribers(1, 10)
        t0 = time.monotonic()
        pub.publish([ev[1], ev[1]])
        elapsed = time.monotonic() - t0
        assert elapsed >= 1.4  # paced: two spills of 0.6 s and a 0.3 s gap (no upper bound: shared machines)
        got = collect(sub, pub.stats.messages)
        assert sum(r.scan.n_events for r in got) == 64
        assert pub.stats.messages >= 16  # batches of at most 4 events
    finally:
        sub.close()
        pub.close(0)


def test_fault_option_parsing():
    assert parse_sequences(["3,7", "10-12"]) == {3, 7, 10, 11, 12}
    assert parse_corruptions(["5:truncate,9:magic"]) == {5: "truncate", 9: "magic"}
    with pytest.raises(ValueError, match="unknown corruption"):
        parse_corruptions(["1:nonsense"])
    with pytest.raises(ValueError):
        PublisherConfig("tcp://127.0.0.1:0", 1, corrupt={1: "nonsense"})


def test_sub_socket_options():
    sub = Subscriber(rcvhwm=123, reconnect_ivl_ms=50)
    try:
        assert sub.socket.getsockopt(zmq.RCVHWM) == 123
        assert sub.socket.getsockopt(zmq.RECONNECT_IVL) == 50
    finally:
        sub.close()


STALL_SCRIPT = r"""
import sys, threading, time
from na64_online.daq.envelope import make_message
from na64_online.daq.publisher import PublisherConfig, ReadoutPublisher
from na64_online.daq.subscriber import Subscriber

pub = ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", 1, sndhwm=2))
sub = Subscriber([pub.endpoint], queue_bytes=4 << 20, heartbeat_ivl_ms=1000, heartbeat_timeout_ms=1000)
assert pub.wait_for_subscribers(1, 10)
stop = time.monotonic() + 3.0
def feed():
    seq = 0
    while time.monotonic() < stop:
        pub.socket.send_multipart(make_message(1, seq, [b"\0" * 700_000]))
        seq += 1
threading.Thread(target=feed, daemon=True).start()
time.sleep(3.5)  # the service is stuck: the receive queue is full, nothing is read for longer than the timeout
n = 0
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    n += sum(1 for _ in sub.recv(100))
print("read", n, "lost", sub.sequences.lost.get(1, 0))
"""


@pytest.mark.timeout(60)
def test_full_receive_queue_and_a_stalled_reader_do_not_abort_the_process():
    """With ZMTP heartbeats libzmq aborted here (Assertion failed: _input_stopped); TCP keepalive instead."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", STALL_SCRIPT], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("read ")
    assert int(proc.stdout.split()[1]) >= 1


def test_shared_simulation_gives_each_node_its_own_spills_from_one_simulation():
    import threading

    from na64_online.daq.publisher import SharedSimulation, simulated_ldc_spills
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

    config = SimulationConfig(run=12, events_per_spill=40, seed=3, spills=3)
    alone = {ldc: list(simulated_ldc_spills(ReadoutSimulator(config), ldc)) for ldc in (1, 2)}
    shared = SharedSimulation(ReadoutSimulator(config), (1, 2), max_pending=1)
    taken: dict[int, list] = {}
    threads = [threading.Thread(target=lambda ldc=ldc: taken.__setitem__(ldc, list(shared.node_spills(ldc))))
               for ldc in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert taken == alone and len(taken[1]) == 3
    assert not shared._made  # every spill handed to both nodes, none kept
    with pytest.raises(ValueError, match="no readout node 3"):
        next(shared.node_spills(3))


@pytest.mark.timeout(30)
def test_a_joined_payload_goes_out_as_send_would_send_its_events(ev):
    """``send_payload`` (events joined beforehand, as the ingest bench does) sends the message ``send`` sends,
    and both number their messages in one sequence."""
    pub = ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", 3))
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 10_000)
    sub.connect(pub.endpoint)
    try:
        assert pub.wait_for_subscribers(1, 10)
        events = ev[1][:5]
        pub.send(events)
        pub.send_payload(b"".join(events), len(events))
        first, second = sub.recv_multipart(), sub.recv_multipart()
        assert first[0] == second[0] == L.ZMQ_TOPIC and first[2] == second[2] == b"".join(events)
        assert first[1] == pack_envelope(3, 0, 5) and second[1] == pack_envelope(3, 1, 5)
        assert pub.stats.messages == 2 and pub.stats.events == 10
    finally:
        sub.close(0)
        pub.close(0)
