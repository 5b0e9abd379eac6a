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
from na64_online.daq.subscriber import SequenceTracker, Subscriber
from na64_online.decoders import layout as L

SMALL = Path(__file__).parent / "data" / "vectors" / "small.dat"


@pytest.fixture(scope="module")
def ev():
    return split_super_events(SMALL.read_bytes())


# ---------------------------------------------------------------- sequence numbers
def test_in_order_and_first_message_of_any_number():
    t = SequenceTracker()
    assert t.observe(1, 1000) == (0, False)  # joined late: nothing lost before
    assert t.observe(1, 1001) == (0, False)
    assert t.observe(2, 0) == (0, False)
    assert t.lost == {} and t.received == {1: 2, 2: 1}


def test_gaps_are_lost_messages_per_ldc():
    t = SequenceTracker()
    for seq in (0, 1, 4, 5, 9):
        t.observe(1, seq)
    for seq in (0, 2):
        t.observe(2, seq)
    assert t.lost == {1: 2 + 3, 2: 1}


def test_restart_is_recognised_not_2_to_the_64_losses():
    t = SequenceTracker()
    t.observe(1, 0)
    t.observe(1, 500)
    assert t.observe(1, 0) == (0, True)
    assert t.observe(1, 1) == (0, False)
    # restarted, and its first 3 messages did not reach us (slow reconnect)
    assert t.observe(1, 3) == (1, False)
    assert t.observe(1, 2) == (2, True)
    assert t.restarts == {1: 2} and t.lost == {1: 499 + 1 + 2}
    assert max(t.lost.values()) < 2**32


def test_huge_sequence_numbers():
    t = SequenceTracker()
    t.observe(7, 2**64 - 3)
    assert t.observe(7, 2**64 - 1) == (1, False)


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
