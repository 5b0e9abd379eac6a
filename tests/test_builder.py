"""Event building and spill assembly across readout nodes (issue #3 item 3)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from na64_online.daq.builder import (BuiltChunk, ClosedSpill, EventBuilder, PlanError, build_all, copy_events, gather,
                                     plan_headers, split_super_events)
from na64_online.daq.envelope import EOB_KEY, scan_payload
from na64_online.decoders import layout as L

SMALL = Path(__file__).parent / "data" / "vectors" / "small.dat"


@pytest.fixture(scope="module")
def small():
    raw = SMALL.read_bytes()
    return raw, split_super_events(raw)


@pytest.fixture(scope="module")
def simulated():
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

    sim = ReadoutSimulator(SimulationConfig(run=9, spills=2, events_per_spill=120, seed=5))
    return [(s.raw(), {l: s.ldc_events(l) for l in (1, 2)}) for s in sim.spills()]


def chunks(outputs):
    return [o for o in outputs if isinstance(o, BuiltChunk)]


def closed(outputs):
    return [o for o in outputs if isinstance(o, ClosedSpill)]


def words_of(outputs):
    cs = chunks(outputs)
    return np.concatenate([c.words for c in cs]) if cs else np.zeros(0, L.WORD)


def feed(builder, messages, now=0.0):
    """messages: list of (ldc, [events])."""
    out = []
    for ldc, events in messages:
        out.extend(builder.add(ldc, scan_payload(b"".join(events)), now))
    return out


def batches(events, size):
    return [events[i:i + size] for i in range(0, len(events), size)]


def interleave(by_ldc: dict[int, list[bytes]], size: int, seed: int) -> list[tuple[int, list[bytes]]]:
    """Each LDC's events in order, batched, LDCs interleaved at random (what a SUB socket sees)."""
    rng = random.Random(seed)
    queues = {l: batches(ev, size) for l, ev in by_ldc.items()}
    out = []
    while any(queues.values()):
        l = rng.choice([l for l, q in queues.items() if q])
        out.append((l, queues[l].pop(0)))
    return out


def test_vectors_rebuilt_byte_for_byte(small):
    raw, ev = small
    assert sorted(ev) == [1, 2] and len(ev[1]) == len(ev[2]) == 32
    assert build_all(ev).tobytes() == raw


def test_super_event_header(small):
    raw, ev = small
    w = build_all(ev)
    # first super event: START_OF_BURST from LDC 1 and 2
    sub1 = np.frombuffer(ev[1][0], L.WORD)
    assert w[L.H_SIZE] == 68 + len(ev[1][0]) + len(ev[2][0])
    assert w[L.H_ATTRIBUTES_2] & L.SUPER_EVENT_BIT
    assert w[L.H_LDC] == 0 and w[L.H_GDC] == 1
    assert w[L.H_HEADER_SIZE] == 68
    for i in (L.H_MAGIC, L.H_VERSION, L.H_TYPE, L.H_RUN, L.H_EVENT_IN_RUN, L.H_BURST_EVENT, L.H_TIME):
        assert w[i] == sub1[i]


def test_simulator_spills_rebuilt_byte_for_byte(simulated):
    for raw, ev in simulated:
        assert build_all(ev).tobytes() == raw


@pytest.mark.parametrize("size, seed", [(1, 0), (7, 1), (50, 2), (1000, 3)])
def test_interleaved_batches_build_the_file_layout(simulated, size, seed):
    raw, ev = simulated[0]
    b = EventBuilder((1, 2), chunk_events=16)
    out = feed(b, interleave(ev, size, seed))
    assert b.open_spills == []
    (c,) = closed(out)
    assert c.complete and c.reason == "end_of_burst" and c.missing_ldcs == ()
    assert c.incomplete_events == 0 and c.late_events == 0
    assert words_of(out).tobytes() == raw
    cs = chunks(out)
    assert [x.index for x in cs] == list(range(c.chunks))
    assert all(x.n_events <= 16 for x in cs) and cs[-1].final and not any(x.final for x in cs[:-1])
    assert c.events == len(ev[1]) and c.data_events == len(ev[1]) - 2


@pytest.mark.parametrize("chunk_events, chunk_bytes, size", [(16, 1 << 30, 7), (1 << 20, 40_000, 13),
                                                             (9, 25_000, 50), (1, 1, 3)])
def test_chunks_cut_by_events_and_bytes_hold_their_own_table(simulated, chunk_events, chunk_bytes, size):
    """Super events go straight into chunk buffers; each chunk is cut at chunk_events or once chunk_bytes
    are used, and its offsets/sizes/types are those of the events its words hold."""
    raw, ev = simulated[0]
    b = EventBuilder((1, 2), chunk_events=chunk_events, chunk_bytes=chunk_bytes)
    out = feed(b, interleave(ev, size, 4))
    assert words_of(out).tobytes() == raw
    for c in chunks(out):
        scan = scan_payload(c.words)
        assert scan.ok
        assert c.offsets.tolist() == scan.offsets.tolist() and c.sizes.tolist() == scan.sizes.tolist()
        assert c.types.tolist() == scan.types.tolist()
        assert c.n_events <= chunk_events
        # at most one event starts at or beyond chunk_bytes: the chunk's last
        assert c.n_events == 1 or 4 * int(c.offsets[-1]) < chunk_bytes


def test_events_are_built_while_the_spill_runs(simulated):
    raw, ev = simulated[0]
    b = EventBuilder((1, 2), chunk_events=10)
    out = feed(b, [(1, ev[1][:40]), (2, ev[2][:25])])
    built = chunks(out)
    assert sum(c.n_events for c in built) == 20  # events 0…24 are complete; handed on by 10
    assert not closed(out)


def test_two_spills_in_flight(simulated):
    (raw1, ev1), (raw2, ev2) = simulated
    b = EventBuilder((1, 2))
    out = feed(b, [(1, ev1[1]), (1, ev2[1]), (2, ev1[2]), (2, ev2[2])])
    cl = closed(out)
    assert [(c.spill, c.complete) for c in cl] == [(1, True), (2, True)]
    assert words_of(out).tobytes() == raw1 + raw2


def test_missing_subevents_are_built_and_counted(simulated):
    raw, ev = simulated[0]
    missing = {10, 11, 50}  # LDC 2 never sends these events (a lost message)
    ev2 = [e for i, e in enumerate(ev[2]) if i not in missing]
    b = EventBuilder((1, 2))
    out = feed(b, interleave({1: ev[1], 2: ev2}, 9, 4))
    (c,) = closed(out)
    assert c.complete and c.incomplete_events == 3
    w = words_of(out)
    scan = scan_payload(w)
    assert scan.ok and scan.n_events == len(ev[1])
    sizes = dict(zip(scan.keys.tolist(), scan.sizes.tolist()))
    for i in missing:  # event number i (key i+1) holds only LDC 1's sub-event
        assert sizes[i + 1] * 4 == 68 + len(ev[1][i])
    assert stats_ok(b)


def stats_ok(b):
    return b.stats.incomplete_events >= 0 and b.stats.built_events >= 0


def test_events_no_ldc_sent_are_simply_absent(simulated):
    raw, ev = simulated[0]
    gone = {20, 21}
    b = EventBuilder((1, 2))
    out = feed(b, [(l, [e for i, e in enumerate(ev[l]) if i not in gone]) for l in (1, 2)])
    (c,) = closed(out)
    assert c.complete and c.incomplete_events == 0 and c.events == len(ev[1]) - 2


def test_missing_end_of_burst_closes_after_timeout(simulated):
    raw, ev = simulated[0]
    b = EventBuilder((1, 2), spill_timeout_s=5.0)
    out = feed(b, [(1, ev[1]), (2, ev[2][:-1])], now=100.0)
    assert not closed(out)
    out += b.poll(104.9)
    assert not closed(out)
    out += b.poll(105.0)
    (c,) = closed(out)
    assert not c.complete and c.reason == "timeout" and c.missing_ldcs == (2,)
    assert c.incomplete_events == 0
    w = words_of(out)
    assert w.tobytes() == build_all({1: ev[1], 2: ev[2][:-1]}).tobytes()
    scan = scan_payload(w)
    assert scan.n_events == len(ev[1]) and scan.keys[-1] == EOB_KEY
    assert scan.sizes[-1] * 4 == 68 + len(ev[1][-1])  # END_OF_BURST of LDC 1 alone
    assert b.stats.spills_incomplete == 1


def test_ldc_moving_on_closes_the_spill_without_its_end_of_burst(simulated):
    (raw1, ev1), (raw2, ev2) = simulated
    b = EventBuilder((1, 2), spill_timeout_s=1e9)
    out = feed(b, [(1, ev1[1]), (2, ev1[2][:-1]), (2, ev2[2][:1])])
    (c,) = closed(out)
    assert c.spill == 1 and not c.complete and c.reason == "moved_on" and c.missing_ldcs == (2,)


def test_late_data_for_a_closed_spill_is_counted_not_merged(simulated):
    (raw1, ev1), (raw2, ev2) = simulated
    b = EventBuilder((1, 2))
    out = feed(b, [(1, ev1[1]), (2, ev1[2])])
    assert closed(out)[0].late_events == 0
    out = feed(b, [(2, ev1[2][5:8])])  # spill 1 again
    assert out == [] and b.stats.late_events == 3
    out = feed(b, [(1, ev2[1]), (2, ev2[2])])
    (c,) = closed(out)
    assert c.spill == 2 and c.late_events == 3  # reported with the next spill that closes
    assert words_of(out).tobytes() == raw2


def test_duplicate_and_already_built_subevents_are_late(simulated):
    raw, ev = simulated[0]
    b = EventBuilder((1, 2))
    out = feed(b, [(1, ev[1][:30]), (2, ev[2][:30]), (1, ev[1][20:25]), (2, ev[2][10:12])])
    out += feed(b, [(1, ev[1][30:]), (2, ev[2][30:])])
    (c,) = closed(out)
    assert c.late_events == 7 and c.complete
    assert words_of(out).tobytes() == raw


def test_join_at_the_next_start_of_burst(simulated):
    (raw1, ev1), (raw2, ev2) = simulated
    b = EventBuilder((1, 2))
    # the monitor starts in the middle of spill 1: LDC 1 is further than LDC 2
    out = feed(b, [(1, ev1[1][60:]), (2, ev1[2][50:80]), (1, ev2[1][:40]), (2, ev1[2][80:]), (2, ev2[2]),
                   (1, ev2[1][40:])])
    cl = closed(out)
    assert [c.spill for c in cl] == [2] and cl[0].complete
    assert words_of(out).tobytes() == raw2
    assert b.stats.skipped_before_join == len(ev1[1]) - 60 + len(ev1[2]) - 50


def test_a_node_joining_only_at_the_next_spill_marks_the_spill_seen_in_part(simulated):
    """The service started between the two nodes' START_OF_BURSTs of spill 1: it saw spill 1 from LDC 1 only.
    That spill is flagged joined_late (not to be judged); spill 2, seen whole, is not."""
    (raw1, ev1), (raw2, ev2) = simulated
    b = EventBuilder((1, 2))
    out = feed(b, [(1, ev1[1]), (2, ev1[2][5:]), (1, ev2[1]), (2, ev2[2])]) + b.flush(1e9)
    first, second = closed(out)
    assert (first.spill, first.complete, first.missing_ldcs, first.joined_late) == (1, False, (2,), (2,))
    assert (second.spill, second.complete, second.joined_late) == (2, True, ())


def test_a_node_that_never_joins_is_missing_not_late(simulated):
    (raw1, ev1), _ = simulated
    b = EventBuilder((1, 2))
    (c,) = closed(feed(b, [(1, ev1[1])]) + b.flush(1e9))
    assert c.missing_ldcs == (2,) and c.joined_late == ()  # judged as incomplete: a node is down


def test_spill_whose_start_of_burst_was_lost_opens_once_joined(simulated):
    (raw1, ev1), (raw2, ev2) = simulated
    b = EventBuilder((1, 2))
    out = feed(b, [(1, ev1[1]), (2, ev1[2]), (1, ev2[1][1:]), (2, ev2[2][1:])])
    cl = closed(out)
    assert [(c.spill, c.complete) for c in cl] == [(1, True), (2, True)]
    assert cl[1].events == len(ev2[1]) - 1


def test_pending_memory_is_bounded(simulated):
    raw, ev = simulated[0]
    budget = sum(len(e) for e in ev[1][:20])
    b = EventBuilder((1, 2), max_pending_bytes=budget)
    out = feed(b, [(1, [e]) for e in ev[1][:60]])  # LDC 2 silent: cannot build completely
    assert b.stats.forced_builds >= 1
    assert sum(c.n_events for c in chunks(b.poll(0.0) + out) + chunks(b.flush(0.0))) == 60
    assert b.stats.incomplete_events == 59  # every data event lacks LDC 2


def test_open_spills_are_bounded(simulated):
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

    sim = ReadoutSimulator(SimulationConfig(run=3, spills=4, events_per_spill=5, seed=1))
    spills = list(sim.spills())
    b = EventBuilder((1, 2), max_open_spills=2)
    out = feed(b, [(1, s.ldc_events(1)[:3]) for s in spills])  # only LDC 1, never an END_OF_BURST
    cl = closed(out)
    assert [(c.spill, c.reason) for c in cl] == [(1, "overflow"), (2, "overflow")]
    assert len(b.open_spills) == 2


def test_silent_ldc_is_not_waited_for_after_ldc_down(simulated):
    raw, ev = simulated[0]
    b = EventBuilder((1, 2), ldc_down_s=2.0, spill_timeout_s=100.0)
    feed(b, [(2, ev[2][:1])], now=0.0)
    out = feed(b, [(1, ev[1][:50])], now=1.0)
    assert sum(c.n_events for c in chunks(out)) <= 1
    out = b.poll(2.5) + feed(b, [(1, ev[1][50:60])], now=2.5)
    # LDC 2 silent since t=0: events are built without it (incomplete), no waiting for the timeout
    assert sum(c.n_events for c in chunks(out) + chunks(b.poll(3.5))) >= 59


def test_chunk_age_hands_on_partial_chunks(simulated):
    raw, ev = simulated[0]
    b = EventBuilder((1, 2), chunk_events=1000, chunk_max_age_s=0.5)
    out = feed(b, [(1, ev[1][:10]), (2, ev[2][:10])], now=0.0)
    assert not chunks(out)
    assert not chunks(b.poll(0.4))
    got = chunks(b.poll(0.6))
    assert len(got) == 1 and got[0].n_events == 10 and not got[0].final


def test_control_only_keeps_start_and_end_of_burst(simulated):
    raw, ev = simulated[0]
    b = EventBuilder((1, 2), chunk_events=1 << 20)
    out = feed(b, [(1, ev[1]), (2, ev[2])])
    (chunk,) = chunks(out)
    assert chunk.data_events == len(ev[1]) - 2
    ctl = chunk.control_only()
    assert ctl.n_events == 2 and ctl.types.tolist() == [L.START_OF_BURST, L.END_OF_BURST]
    scan = scan_payload(ctl.words)
    assert scan.ok and scan.keys.tolist() == [0, EOB_KEY]
    assert ctl.words.tobytes() == build_all({1: [ev[1][0], ev[1][-1]], 2: [ev[2][0], ev[2][-1]]}).tobytes()


def test_run_level_events_belong_to_no_spill(small):
    raw, ev = small
    w = np.frombuffer(ev[1][0], L.WORD).copy()
    w[L.H_TYPE] = L.START_OF_RUN
    w[L.H_BURST_EVENT] = 0
    b = EventBuilder((1, 2))
    assert feed(b, [(1, [w.tobytes()]), (2, [w.tobytes()])]) == []
    assert b.stats.other_events == 2 and b.open_spills == []
    out = feed(b, [(1, ev[1]), (2, ev[2])])
    assert words_of(out).tobytes() == raw


def test_lost_messages_are_reported_with_their_spill(simulated):
    raw, ev = simulated[0]
    b = EventBuilder((1, 2))
    out = b.add(1, scan_payload(b"".join(ev[1])), 0.0, lost=2)
    out += b.add(2, scan_payload(b"".join(ev[2])), 0.0, lost=1)
    (c,) = closed(out)
    assert c.lost_messages == {1: 2, 2: 1}


def test_gap_between_spills_longer_than_ldc_down_is_not_silence(simulated):
    (raw1, ev1), (raw2, ev2) = simulated
    b = EventBuilder((1, 2), ldc_down_s=2.0, spill_timeout_s=5.0)
    feed(b, [(1, ev1[1]), (2, ev1[2])], now=0.0)
    # 30 s of SPS gap; then LDC 1 is a little ahead of LDC 2 in the new spill
    out2 = feed(b, [(1, ev2[1][:50])], now=30.0) + b.poll(31.0) + feed(b, [(2, ev2[2][:50])], now=31.5)
    out2 += feed(b, [(1, ev2[1][50:]), (2, ev2[2][50:])], now=32.0)
    (c,) = closed(out2)
    assert c.incomplete_events == 0 and c.late_events == 0 and c.complete
    assert words_of(out2).tobytes() == raw2


def _flip_burst(event: bytes, bit: int = 25) -> bytes:
    words = np.frombuffer(event, L.WORD).copy()
    words[L.H_BURST_EVENT] ^= np.uint32(1 << bit)
    return words.tobytes()


def test_one_subevent_with_a_flipped_burst_bit_is_header_damage_not_a_spill(simulated):
    """A single sub-event whose burst disagrees with its message: left out and counted, the spill stays one."""
    from na64_online.daq.live import LiveExtras
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor

    raw, ev = simulated[0]
    ev = {l: list(events) for l, events in ev.items()}
    ev[2][50] = _flip_burst(ev[2][50])
    scan = scan_payload(b"".join(ev[2][40:60]), expected_events=20)
    assert scan.ok and scan.n_events == 19 and scan.header_mismatch == 1 and scan.spill == 1
    builder = EventBuilder(expected_ldcs=(1, 2))
    out = feed(builder, interleave(ev, 20, seed=3)) + builder.flush(1e9)
    (spill,) = closed(out)
    assert (spill.run, spill.spill, spill.complete) == (9, 1, True)
    assert spill.header_mismatch == 1 and builder.stats.header_mismatch == 1 and builder.stats.spills_opened == 1
    assert spill.incomplete_events == 1  # the event LDC 2's damaged sub-event belonged to has LDC 1's part only
    processor = SpillProcessor(MonitorConfig(), ChannelMap.default())
    record = processor.process(words_of(out), complete=True, live=LiveExtras(header_mismatch=spill.header_mismatch))
    assert record.header_mismatch == 1 and record.errors_by_src["event"] == {"header_mismatch": 1}
    assert record.events == 120 and record.lost_events == 0
def test_late_message_takes_back_its_loss_while_the_spill_is_open(simulated):
    _, ev = simulated[0]
    (_, ev_b) = simulated[1]
    b = EventBuilder((1, 2))
    out = b.add(1, scan_payload(b"".join(ev[1][:10])), 0.0)
    out += b.add(1, scan_payload(b"".join(ev[1][20:30])), 0.0, lost=1)  # the message with 10…19 missing
    spill = (9, 1)
    assert b.open_spills == [spill]
    assert b.recover_lost(1, spill)  # it came after all: no loss
    assert not b.recover_lost(1, spill)  # nothing left to take back
    b.note_bad("1", "reordered", spill)
    b.note_bad("unknown", "bad_envelope")  # no spill: reported with the next that closes
    out += b.add(1, scan_payload(b"".join(ev[1][30:])), 0.0)
    out += b.add(2, scan_payload(b"".join(ev[2])), 0.0)
    (c,) = closed(out)
    assert c.lost_messages == {1: 0} and c.bad_messages == {"1": {"reordered": 1}, "unknown": {"bad_envelope": 1}}
    # a loss reported with a finished spill stays a loss
    out = b.add(1, scan_payload(b"".join(ev_b[1][:10])), 0.0)
    assert not b.recover_lost(1, spill)  # spill 1 is finished, nothing elsewhere to take back
    out += b.add(1, scan_payload(b"".join(ev_b[1][30:40])), 0.0, lost=2)
    assert b.recover_lost(1, spill)  # another open spill has lost messages of LDC 1: taken from it
    b.note_bad("1", "sequence_jump", (9, 2), jump=12345)
    (c2,) = closed(b.flush(0.0))
    assert c2.lost_messages == {1: 1} and c2.sequence_jumps == (("1", 12345),)
    assert c2.bad_messages == {"1": {"sequence_jump": 1}}


def test_open_spills_held_bytes_bounded(simulated):
    """max_buffered_bytes: beyond it the fullest spill is built at once (memory_builds), nothing is lost."""
    raw, ev = simulated[0]
    b = EventBuilder((1, 2), max_buffered_bytes=20_000)
    out = []
    for i in range(0, len(ev[1]), 10):  # LDC 1 only: nothing can be built without LDC 2 ...
        out += b.add(1, scan_payload(b"".join(ev[1][i:i + 10])), 0.0)
        assert b.buffered_bytes <= 20_000 + 10 * max(len(e) for e in ev[1])
    assert b.stats.memory_builds > 0  # ... unless memory forces it
    out += b.add(2, scan_payload(b"".join(ev[2])), 0.0)
    out += b.flush(0.0)
    c = closed(out)[0]
    assert b.buffered_bytes == 0 and c.incomplete_events > 0 and c.late_events > 0
    assert c.complete and c.missing_ldcs == ()  # a forced build never makes an END_OF_BURST late
    # every sub-event accounted: built into a super event (possibly incomplete) or counted late
    built = sum(len(v) for v in split_super_events(words_of(out)).values())
    assert built + c.late_events == len(ev[1]) + len(ev[2])


def test_memory_forced_build_never_makes_an_end_of_burst_late(simulated):
    _, ev = simulated[0]
    b = EventBuilder((1, 2), max_buffered_bytes=1)  # every message forces a build
    out = b.add(2, scan_payload(b"".join(ev[2])), 0.0)  # one node's whole spill, END_OF_BURST included
    assert b.stats.memory_builds >= 1
    out += b.add(1, scan_payload(b"".join(ev[1])), 0.0)
    (c,) = closed(out)
    assert c.complete and c.missing_ldcs == () and c.reason == "end_of_burst"
    # the data events were built from node 2 alone (incomplete), node 1's came late: all counted
    assert c.incomplete_events == len(ev[2]) - 2 and c.late_events == len(ev[1]) - 1  # all but its END_OF_BURST


def test_copy_events_copies_each_event_whole_and_checks_its_arguments():
    """The builder's one copy (a memcpy per event) against numpy slices: any sizes (0 too), any order;
    out of bounds, other dtypes and overlapping buffers are refused before anything is written."""
    rng = np.random.default_rng(7)
    sizes = rng.integers(0, 700, 300)
    src = rng.integers(0, 1 << 32, int(sizes.sum()) + 5, dtype=np.uint64).astype(np.uint32)
    src_off = np.cumsum(sizes) - sizes + 5
    order = rng.permutation(len(sizes))
    dst_pos = (np.cumsum(sizes[order]) - sizes[order])
    dst = np.zeros(int(sizes.sum()) + 3, np.uint32)
    copy_events(dst, dst_pos, src, src_off[order], sizes[order])
    expected = np.concatenate([src[o:o + s] for o, s in zip(src_off[order], sizes[order])])
    assert np.array_equal(dst[:len(expected)], expected) and not dst[len(expected):].any()
    one = np.array([0]), np.array([len(src) - 4]), np.array([5])
    with pytest.raises(ValueError, match="out of bounds"):
        copy_events(dst, one[0], src, one[1], one[2])
    with pytest.raises(ValueError, match="uint32"):
        copy_events(dst.astype(np.int64), one[0], src, one[0], one[2])
    with pytest.raises(ValueError, match="overlapping"):
        copy_events(src[10:], one[0], src, one[0], one[2])


def test_chunks_are_plans_over_the_received_payloads(simulated):
    """Nothing is copied when building: a chunk references the very payload arrays of the messages (only those
    its events are in), and gathering its plan gives the raw file's bytes."""
    raw, ev = simulated[0]
    b = EventBuilder((1, 2), chunk_events=40)
    scans = [(ldc, scan_payload(b"".join(part))) for ldc, part in interleave(ev, 25, 3)]
    out = []
    for ldc, scan in scans:
        out += b.add(ldc, scan, 0.0, source=("frame", id(scan.words)))
    payload_ids = {id(scan.words) for _, scan in scans}
    for c in chunks(out):
        assert {id(p) for p in c.payloads} <= payload_ids
        assert c.sources == tuple(("frame", id(p)) for p in c.payloads)  # sent as received, in plan order
        assert set(c.subs[:, 0].tolist()) == set(range(len(c.payloads)))  # no payload it does not use
    assert words_of(out).tobytes() == raw
    assert sorted(np.concatenate([c.data_event_numbers() for c in chunks(out)]).tolist()) == \
        list(range(1, len(ev[1]) - 1))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n_payloads=st.integers(1, 3))
def test_gather_refuses_any_plan_beyond_its_payloads(data, n_payloads):
    """Whatever plan a peer sends: either every sub-event lies inside its payload (and is gathered whole, in
    order, behind its super event's header) or PlanError, before the output buffer is touched. The same for
    :func:`plan_headers` (a task decoded where received), which writes the same headers."""
    payloads = [np.arange(k * 1000, k * 1000 + data.draw(st.integers(0, 60)), dtype=np.uint32)
                for k in range(n_payloads)]
    n = data.draw(st.integers(0, 4))
    subs = np.array(data.draw(st.lists(st.tuples(st.integers(-1, n_payloads), st.integers(-2, 70),
                                                 st.integers(-1, 40)), min_size=n, max_size=n)),
                    np.int64).reshape(-1, 3)
    groups = np.array(data.draw(st.lists(st.integers(-1, 5), min_size=0, max_size=4)), np.int64)
    out, heads = np.full(400, 0xDEADBEEF, np.uint32), np.full(400, 0xDEADBEEF, np.uint32)
    try:
        got = gather(payloads, subs, groups, 7, out=out)
    except PlanError:
        assert (out == 0xDEADBEEF).all()
        with pytest.raises(PlanError):  # decoding where received refuses the same plans, as untouched
            plan_headers(payloads, subs, groups, 7, out=heads)
        assert (heads == 0xDEADBEEF).all()
        return
    heads, planned = plan_headers(payloads, subs, groups, 7, out=heads)
    assert planned is None  # these payloads hold no DATE headers: decoded gathered
    for at in np.cumsum([0, *(17 + subs[groups[g]:groups[g + 1], 2].sum() for g in range(len(groups) - 2))]):
        assert heads[at:at + 34].tolist() == got[at:at + 34].tolist()  # the super header, its first sub-event's
    pos = 0
    for g in range(groups.shape[0] - 1):
        pos += 17
        for f, off, size in subs[groups[g]:groups[g + 1]].tolist():
            assert 0 <= off and off + size <= payloads[f].shape[0] and size >= 17
            assert got[pos:pos + size].tolist() == payloads[f][off:off + size].tolist()
            pos += size
    assert pos == got.shape[0]


def test_a_payload_partly_built_is_held_once(simulated):
    """A message cut by a build (half its events planned into a chunk, half pending) is one payload in memory:
    the open spill's bytes count it once (memory builds are forced on what is really held)."""
    _, ev = simulated[0]
    b = EventBuilder((1, 2), chunk_events=11, chunk_max_age_s=1e9)  # 10 buildable events: planned, not handed on
    one, two = scan_payload(b"".join(ev[1][:20])), scan_payload(b"".join(ev[2][:10]))
    assert b.add(1, one, 0.0) == [] and b.add(2, two, 0.0) == []  # 10 events planned, 10 of LDC 1 pending
    assert b.stats.built_events == 10
    assert b.buffered_bytes == one.words.nbytes + two.words.nbytes


def _recounted_bytes(b: EventBuilder) -> int:
    """What the open spills hold, walked the slow way: every payload a pending batch or an unsent plan
    references, each once."""
    held = {}
    for sp in b._open.values():  # noqa: SLF001 - the reference count against the running one
        for part in sp.parts.values():
            for batch in part.batches:
                held[id(batch.words)] = batch.words.nbytes
        for plan in (*sp.full, sp.buffer):
            for words in (plan.payloads if plan is not None else ()):
                held[id(words)] = words.nbytes
    return sum(held.values())


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from((1, 2)), st.integers(1, 40)), min_size=1, max_size=30),
       st.sampled_from((None, 1, 30_000)), st.integers(3, 200))
def test_held_bytes_are_a_running_count_of_each_payload_once(simulated, cuts, max_buffered, chunk_events):
    """The builder's held bytes (memory builds are forced on them) are a running count, kept at every
    step equal to a walk of every pending batch and unsent plan — a payload referenced by both counted once —
    across messages of any size from both nodes, forced and memory builds, chunks handed on, and spills closed;
    nothing is held once every spill is closed."""
    b = EventBuilder((1, 2), chunk_events=chunk_events, max_buffered_bytes=max_buffered,
                     max_pending_bytes=40_000, chunk_max_age_s=1e9)
    pos = {1: 0, 2: 0}
    for spill_raw, ev in simulated:
        for ldc, n in cuts:
            events = ev[ldc][pos[ldc]:pos[ldc] + n]
            if events:
                b.add(ldc, scan_payload(b"".join(events)), 0.0)
                pos[ldc] += len(events)
                assert b.buffered_bytes == _recounted_bytes(b)
        for ldc in (1, 2):  # the rest of the spill
            b.add(ldc, scan_payload(b"".join(ev[ldc][pos[ldc]:])), 0.0)
            assert b.buffered_bytes == _recounted_bytes(b)
        pos = {1: 0, 2: 0}
    b.flush(0.0)
    assert b.buffered_bytes == 0
