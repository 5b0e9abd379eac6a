"""ZeroMQ envelope (spec §9): packing, validation, payload scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from na64_online.daq import envelope as E
from na64_online.daq.builder import split_super_events
from na64_online.decoders import layout as L

SMALL = Path(__file__).parent / "data" / "vectors" / "small.dat"


@pytest.fixture(scope="module")
def ldc_events():
    return split_super_events(SMALL.read_bytes())


def test_pack_roundtrip_and_layout():
    raw = E.pack_envelope(2, 2**64 - 1, 17)
    assert len(raw) == 24 == E.ENVELOPE_BYTES
    assert raw[:4] == b"N64Z"
    assert int.from_bytes(raw[4:6], "little") == 1  # version
    assert int.from_bytes(raw[6:8], "little") == 0  # flags
    assert int.from_bytes(raw[8:12], "little") == 2
    assert int.from_bytes(raw[12:20], "little") == 2**64 - 1
    assert int.from_bytes(raw[20:24], "little") == 17
    env = E.unpack_envelope(raw)
    assert (env.ldc, env.sequence, env.events, env.version, env.flags) == (2, 2**64 - 1, 17, 1, 0)


@pytest.mark.parametrize(
    "frame, match",
    [
        (E.pack_envelope(1, 0, 1)[:20], "20 bytes, expected 24"),
        (E.pack_envelope(1, 0, 1) + b"\0", "25 bytes"),
        (E.pack_envelope(1, 0, 1, magic=b"Z46N"), "magic"),
        (E.pack_envelope(1, 0, 1, version=2), "version 2"),
        (E.pack_envelope(1, 0, 1, flags=1), "flags"),
    ],
)
def test_bad_envelopes_are_rejected_with_a_reason(frame, match):
    with pytest.raises(E.EnvelopeError, match=match):
        E.unpack_envelope(frame)


def test_envelope_error_is_a_format_error():
    from na64_online.errors import DaqError, FormatError

    assert issubclass(E.EnvelopeError, FormatError) and issubclass(E.EnvelopeError, DaqError)


def test_parse_message_checks_frames_and_topic(ldc_events):
    events = ldc_events[1][:3]
    frames = E.make_message(1, 5, events)
    env, scan = E.parse_message(frames)
    assert env.ldc == 1 and env.sequence == 5 and env.events == 3
    assert scan.ok and scan.n_events == 3 and (scan.run, scan.spill) == (4321, 1)
    assert scan.types.tolist() == [L.START_OF_BURST, L.PHYSICS_EVENT, L.PHYSICS_EVENT]
    assert scan.keys.tolist() == [E.SOB_KEY, 2, 3]  # event number + 1
    with pytest.raises(E.EnvelopeError, match="2 frames"):
        E.parse_message(frames[:2])
    with pytest.raises(E.EnvelopeError, match="topic"):
        E.parse_message([b"other", *frames[1:]])


def test_scan_whole_spill_keys(ldc_events):
    ev = ldc_events[2]
    scan = E.scan_payload(b"".join(ev), expected_events=len(ev))
    assert scan.ok and scan.n_events == len(ev) == 32
    assert scan.keys[0] == E.SOB_KEY and scan.keys[-1] == E.EOB_KEY
    assert np.all(np.diff(scan.keys) > 0)
    sizes = [len(e) // 4 for e in ev]
    assert scan.sizes.tolist() == sizes
    assert scan.offsets.tolist() == np.concatenate(([0], np.cumsum(sizes)[:-1])).tolist()


def test_scan_truncated_payload_keeps_whole_events(ldc_events):
    ev = ldc_events[1][:5]
    payload = b"".join(ev)
    scan = E.scan_payload(payload[:-12], expected_events=5)
    assert not scan.ok and scan.reason == E.SCAN_TRUNCATED
    assert scan.n_events == 4
    assert scan.error_offset == len(payload) - len(ev[-1])
    assert "truncated" in scan.describe()


def test_scan_not_whole_words(ldc_events):
    payload = b"".join(ldc_events[1][:2]) + b"\x01\x02"
    scan = E.scan_payload(payload, expected_events=2)
    assert scan.reason == E.SCAN_NOT_WORDS and scan.n_events == 2


def test_scan_byte_swapped_and_bad_magic(ldc_events):
    ev = ldc_events[1][:3]
    swapped = np.frombuffer(ev[1], dtype=L.WORD).byteswap().tobytes()
    scan = E.scan_payload(ev[0] + swapped + ev[2])
    assert scan.reason == E.SCAN_BYTE_SWAPPED and scan.n_events == 1
    junk = b"\x00" * len(ev[1])
    scan = E.scan_payload(ev[0] + junk)
    assert scan.reason == E.SCAN_BAD_MAGIC and scan.n_events == 1


def test_scan_old_layout_and_bad_header_size(ldc_events):
    w = np.frombuffer(ldc_events[1][1], dtype=L.WORD).copy()
    old = w.copy()
    old[L.H_VERSION] = 0x00000300
    assert E.scan_payload(old.tobytes()).reason == E.SCAN_OLD_LAYOUT
    bad = w.copy()
    bad[L.H_HEADER_SIZE] = 64
    assert E.scan_payload(bad.tobytes()).reason == E.SCAN_BAD_HEADER_SIZE
    bad = w.copy()
    bad[L.H_SIZE] = int(bad[L.H_SIZE]) + 2
    assert E.scan_payload(bad.tobytes()).reason == E.SCAN_BAD_HEADER_SIZE


def test_scan_events_of_two_spills_stop_at_the_second(ldc_events):
    a = ldc_events[1][1]
    w = np.frombuffer(ldc_events[1][2], dtype=L.WORD).copy()
    w[L.H_BURST_EVENT] = (2 << L.BURST_SHIFT) | 2
    scan = E.scan_payload(a + w.tobytes())
    assert scan.reason == E.SCAN_OTHER_SPILL and scan.n_events == 1 and scan.error_offset == len(a)


def test_scan_count_mismatch(ldc_events):
    scan = E.scan_payload(b"".join(ldc_events[1][:3]), expected_events=4)
    assert scan.reason == E.SCAN_COUNT_MISMATCH and scan.n_events == 3


def test_scan_run_level_events_belong_to_no_spill(ldc_events):
    w = np.frombuffer(ldc_events[1][0], dtype=L.WORD).copy()
    w[L.H_TYPE] = L.START_OF_RUN
    w[L.H_BURST_EVENT] = 0
    scan = E.scan_payload(w.tobytes() + ldc_events[1][1])
    assert scan.ok and scan.keys.tolist() == [E.NO_SPILL_KEY, 2]
    assert (scan.run, scan.spill) == (4321, 1)
    only = E.scan_payload(w.tobytes())
    assert only.ok and only.run is None and only.spill is None


def test_scan_honours_longer_headers(ldc_events):
    w = np.frombuffer(ldc_events[1][1], dtype=L.WORD)
    hw = int(w[L.H_HEADER_SIZE]) // 4
    longer = np.concatenate([w[:hw], np.zeros(3, L.WORD), w[hw:]])
    longer[L.H_HEADER_SIZE] += 12
    longer[L.H_SIZE] += 12
    scan = E.scan_payload(longer.tobytes() + ldc_events[1][2], expected_events=2)
    assert scan.ok and scan.sizes.tolist() == [len(longer), len(ldc_events[1][2]) // 4]


def test_empty_payload():
    scan = E.scan_payload(b"", expected_events=0)
    assert scan.ok and scan.n_events == 0 and scan.run is None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 32), st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6),
       st.integers(0, 40))
def test_the_scan_walks_headers_as_index_events_does(ldc_events, n, flips, cut):
    """The scan runs the decoder's header walk without the columns it does not use: on any payload — whole,
    bytes flipped (damaged headers, garbage), cut short — its events are index_events' rows up to the first
    rejected one, with their types, and that row's issue is the scan's reason."""
    from na64_online.decoders.decode import index_events

    payload = bytearray(b"".join(ldc_events[2][:n]))
    for at, value in flips:
        payload[at % len(payload)] = value
    words = np.frombuffer(bytes(payload[:len(payload) - 4 * cut if 4 * cut < len(payload) else None]), L.WORD)
    offsets, sizes, types, keys, runs, bursts, reason, first, one_spill = E._scan(words)
    index = index_events(words)
    bad = np.flatnonzero(index.status != 0)
    k = int(bad[0]) if len(bad) else len(index)
    assert offsets.tolist() == index.offset[:k].tolist() and sizes.tolist() == index.size[:k].tolist()
    assert types.tolist() == index.type[:k].tolist() and runs.tolist() == index.run[:k].tolist()
    assert bursts.tolist() == index.spill[:k].tolist() and keys.dtype == np.int64 and keys.shape == (k,)
    assert (reason == E.SCAN_OK) == (k == len(index))
    data_types = (L.PHYSICS_EVENT, L.CALIBRATION_EVENT)
    expected_keys = [E.SOB_KEY if t == L.START_OF_BURST else E.EOB_KEY if t == L.END_OF_BURST
                     else e + 1 if t in data_types else E.NO_SPILL_KEY
                     for t, e in zip(index.type[:k].tolist(), index.event[:k].tolist())]
    assert keys.tolist() == expected_keys
    spill_rows = [i for i, key in enumerate(expected_keys) if key != E.NO_SPILL_KEY]
    assert first == (spill_rows[0] if spill_rows else -1)
    assert one_spill == (len({(int(runs[i]), int(bursts[i])) for i in spill_rows}) <= 1)
