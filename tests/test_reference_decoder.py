"""Tests of the reference (oracle) decoder, tests/reference_decoder.py.

1. It reproduces the independent test vectors exactly (small.dat ->
   small.events.jsonl, small.qa.json).
2. Hand-built streams (packed here with ``struct``, straight from
   docs/raw-format.md) show that every corruption label is detected, counted once
   and survived: the damaged part is skipped and the rest of the stream decodes
   exactly as it does without the damage.
3. Layout variants the vectors do not show: 80-byte headers, plain events,
   placeholders, unknown channels, odd sample counts, several spills, missing
   END_OF_BURST, late events.
"""

from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import reference_decoder as ref  # noqa: E402

VECTORS = Path(__file__).parent / "data" / "vectors"
@pytest.fixture(scope="module")
def cmap():
    return ref.load_channel_map(ref.DEFAULT_MAP_PATH)


from spec_encoder import *  # noqa: E402,F403  (the test-side encoder)
from spec_encoder import RUN, SPILL  # noqa: E402


# =============================================================================
# 1. The test vectors
# =============================================================================

def test_channel_map(cmap):
    assert ref.DEFAULT_MAP_PATH == Path(__file__).parents[1] / "decoders" / "default-channel-map.csv"
    assert len(cmap) == 120
    assert cmap[(610, 1, 14)] == {"detector": "ECAL", "module": 1, "x": 2, "y": 2, "gain_gev": 0.026}
    assert cmap[(612, 0, 17)] == {"detector": "VETO", "module": 0, "x": 1, "y": 0, "gain_gev": 0.0002}


def test_reference_is_independent_of_the_package():
    tree = ast.parse((Path(__file__).parent / "reference_decoder.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "csv", "json", "struct", "dataclasses", "pathlib", "tomllib"}


@pytest.fixture(scope="module")
def small(cmap):
    data = (VECTORS / "small.dat").read_bytes()
    t0 = time.perf_counter()
    events = ref.decode_stream(data, cmap)
    return events, time.perf_counter() - t0


def assert_same_value(got, want, where):
    if isinstance(want, float):
        assert isinstance(got, float), where
        assert got == pytest.approx(want, abs=1e-9, rel=0), where
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_value(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            assert_same_value(got[k], want[k], f"{where}.{k}")
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def test_small_vector_events(small):
    events, _ = small
    assert [e["type"] for e in events] == [5] + [7] * 28 + [8, 7, 6]
    assert all(e["status"] is None and e["errors"] == [] for e in events)
    expected = [json.loads(line) for line in (VECTORS / "small.events.jsonl").read_text().splitlines()]
    triggered = [e for e in events if e["type"] in (7, 8)]
    assert len(triggered) == len(expected) == 30
    for got, want in zip(triggered, expected):
        where = f"event {want['event']}"
        for key in ("run", "spill", "event", "trigger_mask"):
            assert got[key] == want[key], where
        assert_same_value(got["channels"], want["channels"], where)
        assert got["ldcs"] == [1, 2]
        assert got["trigger_time_us"] is not None
        assert got["unknown_channels"] == [] and got["modules_missing"] == 0
    assert events[-1]["scalers"][:5] == [627, 675, 31, 30, 4800274]


def test_small_vector_qa(small):
    events, _ = small
    expected = json.loads((VECTORS / "small.qa.json").read_text())
    records = ref.qa_records(events)
    assert len(records) == 1
    assert list(records[0]) == list(expected)
    assert_same_value(records[0], expected, "qa")


def test_small_vector_dead_channel(small):
    """The dead channel 610/1/15 reads a constant: no amplitude, no energy, wherever present."""
    events, _ = small
    seen = 0
    for e in events:
        for c in e["channels"]:
            if (c["src_id"], c["port"], c["channel"]) == (610, 1, 15):
                seen += 1
                assert len(set(c["samples"])) == 1
                assert c["amplitude"] == 0.0 and c["energy_gev"] == 0.0
    assert seen > 0


# =============================================================================
# 2. The hand-built stream itself
# =============================================================================

def test_clean_stream(cmap):
    events = ref.decode_stream(spill_stream(), cmap)
    assert [(e["type"], e["event"], e["status"]) for e in events] == [
        (5, 0, None), (7, 1, None), (7, 2, None), (7, 3, None), (6, 0, None)]
    ev = events[1]
    assert ev["run"] == RUN and ev["spill"] == SPILL and ev["trigger_mask"] == 3
    assert ev["ldcs"] == [1, 2] and ev["trigger_time_us"] == 1000 and ev["errors"] == []
    assert addresses(ev) == ALL_ADDRESSES
    ps = ev["channels"][0]
    assert (ps["detector"], ps["module"], ps["x"], ps["y"]) == ("ECAL", 0, 2, 2)
    assert ps["pedestal_even"] == 100.0 and ps["pedestal_odd"] == 110.0
    assert ps["amplitude"] == 200.0 and ps["energy_gev"] == pytest.approx(200 * 0.00392)
    assert ps["saturated"] is False
    assert ev["channels"][4]["energy_gev"] == 0.0  # HCAL amplitude 10 <= 20
    assert ev["e_ps"] == pytest.approx(0.784)
    assert ev["e_ecal"] == pytest.approx(0.784 + 1000 * 0.026 + 100 * 0.024 + 50 * cmap[(610, 1, 32)]["gain_gev"])
    assert ev["e_hcal"] == 0.0
    assert ev["srd"] == pytest.approx([200 * 5.2e-5, 200 * 4.8e-5, 200 * 5.5e-5])
    assert ev["veto"] == [0.0, 0.0, 0.0]
    assert ev["electron"] and ev["physics_trigger"] and ev["beam_trigger"]
    assert not ev["hadron_like"] and ev["candidate"]
    assert events[-1]["scalers"] == SCALERS and events[0]["scalers"] is None
    assert ref.qa_records(events) == [{
        "run": RUN, "spill": SPILL, "events": 3, "lost_events": 0, "decode_errors": 0,
        "modules_missing": 0, "complete": True, "beam": 5000, "triggers_accepted": 3,
        "hadron_fraction": 0.0, "hadron_fraction_srd": 0.0, "eot": 5000.0, "candidates": [1, 2, 3],
    }]


# =============================================================================
# 3. One corruption per label: detected once, survived, the rest intact
# =============================================================================

def _bad_word_offset(data: bytes, word: int) -> int:
    position = data.find(pack(word))
    assert position >= 0 and data.find(pack(word), position + 1) == -1, "test word not unique"
    return position


# Damage inside event 2 (accepted): label, src_id, addresses kept, and a word that marks
# the damaged spot (None: just check the label).
def _b1(**kw):
    return chip_610(2, b1=adc_block(2, 1, 0, channel(14, pulse(1000)) + channel(15, pulse(100)), **kw))


def _b1_channels(ch14=None, ch15=None):
    return chip_610(2, b1=adc_block(2, 1, 0, (ch14 or channel(14, pulse(1000))) + (ch15 or channel(15, pulse(100)))))


B1_KEPT_CH14 = [a for a in ALL_ADDRESSES if a != (610, 1, 15)]
B1_LOST = [a for a in ALL_ADDRESSES if a not in ((610, 1, 14), (610, 1, 15))]
ONLY_B0 = [(610, 0, 14)] + NO_610
B0_B1 = [a for a in ALL_ADDRESSES if a != (610, 1, 32)]
_eq2 = dict(evnum=2, spill=SPILL)

INNER_CASES = {
    "adc_bad_key": (dict(chips={610: _b1(key=2)}), 610, ONLY_B0),
    "adc_bad_key_zero_not_placeholder": (dict(chips={610: _b1(key=0)}), 610, ONLY_B0),
    "adc_bad_size_zero": (dict(chips={610: _b1(size=0)}), 610, ONLY_B0),
    "adc_bad_size_past_end": (
        dict(chips={610: chip_610(2)[:-1]}), 610, B0_B1),  # B2 claims one word more than there is
    "adc_event_mismatch": (
        dict(chips={610: chip_610(2, b1=adc_block(3, 1, 0, channel(14, pulse(1000)) + channel(15, pulse(100))))}),
        610, B1_LOST),
    "channel_bad_id": (dict(chips={610: _b1_channels(ch15=channel(15, pulse(100), id_bits=0b10))}), 610, B1_KEPT_CH14),
    "channel_bad_samples_zero": (dict(chips={610: _b1_channels(ch15=channel(15, pulse(100), n=0))}), 610, B1_KEPT_CH14),
    "channel_bad_samples_past_block": (
        dict(chips={610: _b1_channels(ch15=channel(15, pulse(100), n=34))}), 610, B1_KEPT_CH14),
    "data_bad_marker": (dict(chips={610: _b1_channels(ch14=channel(14, pulse(1000), bad_marker_at=2))}), 610, B1_LOST),
    "slink_size_mismatch": (dict(eqs={610: equipment(610, chip_610(2), slink_size=len(chip_610(2)) + 4, **_eq2)}),
                            610, NO_610),
    "slink_size_mismatch_no_room": (dict(eqs={610: pack(28 + 8, 64, 610, 0, 0, 0, 4, 0x1E620002, 0x300002)}),
                                    610, NO_610),
    "slink_src_mismatch": (dict(eqs={610: equipment(610, chip_610(2), slink_src=613, **_eq2)}), 610, NO_610),
    "slink_event_mismatch": (dict(eqs={610: equipment(610, chip_610(2), slink_event=3, **_eq2)}), 610, NO_610),
    "slink_spill_mismatch": (dict(eqs={610: equipment(610, chip_610(2), slink_spill=SPILL + 1, **_eq2)}),
                             610, NO_610),
    "equipment_bad_size": (dict(eqs={611: equipment(611, default_chips(2)[611], eq_size=4000, **_eq2)}),
                           611, ONLY_LDC1),
    "equipment_bad_size_below_header": (dict(eqs={611: pack(20, 64, 611, 0, 0, 0, 4)}), 611, ONLY_LDC1),
    "subevent_mismatch": (dict(ldc2_header={"evnum": 3}), None, ONLY_LDC1),
    "subevent_mismatch_spill": (dict(ldc2_header={"spill": SPILL + 1}), None, ONLY_LDC1),
}


@pytest.mark.parametrize("case", sorted(INNER_CASES))
def test_damage_inside_an_event(case, cmap):
    kwargs, src_id, kept = INNER_CASES[case]
    label = next(l for l in ERROR_LABELS if case.startswith(l))
    clean = ref.decode_stream(spill_stream(), cmap)
    damaged_event = physics_event(2, **kwargs)
    events = ref.decode_stream(spill_stream(replace={2: damaged_event}), cmap)

    assert [(e["type"], e["event"], e["status"]) for e in events] == [
        (e["type"], e["event"], e["status"]) for e in clean]
    ev2 = events[2]
    assert [(s, l) for s, l, _ in ev2["errors"]] == [(src_id, label)]
    assert addresses(ev2) == kept
    # every other event is untouched
    for i in (0, 1, 3, 4):
        assert without_offset(events[i]) == without_offset(clean[i])
    # channels that survived are exactly as in the clean event
    clean_channels = {(c["src_id"], c["port"], c["channel"]): c for c in clean[2]["channels"]}
    for c in ev2["channels"]:
        assert c == clean_channels[(c["src_id"], c["port"], c["channel"])]
    (qa,) = ref.qa_records(events)
    assert qa["decode_errors"] == 1 and qa["events"] == 3 and qa["lost_events"] == 0 and qa["complete"]


def test_error_offsets_point_at_the_damage(cmap):
    bad_block = _b1(key=2)[18]  # B1's header, after B0's 18 words
    data = spill_stream(replace={2: physics_event(2, chips={610: _b1(key=2)})})
    (err,) = ref.decode_stream(data, cmap)[2]["errors"]
    assert err == (610, "adc_bad_key", _bad_word_offset(data, bad_block))

    bad_marker = channel(14, pulse(1000), bad_marker_at=2)[3]
    data = spill_stream(replace={2: physics_event(
        2, chips={610: _b1_channels(ch14=channel(14, pulse(1000), bad_marker_at=2))})})
    (err,) = ref.decode_stream(data, cmap)[2]["errors"]
    assert err == (610, "data_bad_marker", _bad_word_offset(data, bad_marker))

    event2 = physics_event(2, ldc2_header={"evnum": 3})
    data = spill_stream(replace={2: event2})
    start2 = data.find(event2)
    sub2 = start2 + 68 + len(date_event(7, RUN, SPILL, 2, equipment(610, chip_610(2), **_eq2)))
    (err,) = ref.decode_stream(data, cmap)[2]["errors"]
    assert err == (None, "subevent_mismatch", sub2)


# Damage to a whole sub-event: the parent is accepted, the error counted in it.
def _ldc2_payload(evnum=2):
    chip = default_chips(evnum)
    return b"".join(equipment(s, chip[s], evnum=evnum, spill=SPILL) for s in (611, 612, 701))


def _parent_with_bad_ldc2(sub2: bytes, extra: bytes = b"") -> bytes:
    sub1 = date_event(7, RUN, SPILL, 2, equipment(610, chip_610(2), **_eq2), mask=3, ldc=1, gdc=0)
    return super_event(7, RUN, SPILL, 2, [sub1, sub2, extra], mask=3)


def _sub2(**kw):
    return date_event(7, RUN, SPILL, 2, _ldc2_payload(), mask=3, ldc=2, gdc=0, **kw)


def _sub_ldc3():
    return date_event(7, RUN, SPILL, 2, b"", mask=3, ldc=3, gdc=0)


SUB_CASES = {
    # label, parent bytes, ldcs decoded (an empty LDC-3 sub-event follows the bad one)
    "event_byte_swapped": ("event_byte_swapped", _parent_with_bad_ldc2(byte_swap(_sub2()), _sub_ldc3()), [1, 3]),
    "event_old_layout": ("event_old_layout", _parent_with_bad_ldc2(_sub2(version=0x0000000E), _sub_ldc3()), [1, 3]),
    "event_bad_header_size": (
        "event_bad_header_size", _parent_with_bad_ldc2(_sub2(header_length_field=60), _sub_ldc3()), [1, 3]),
    "event_bad_header_size_untrusted": (
        "event_bad_header_size",
        _parent_with_bad_ldc2(_sub2(size=len(_sub2()) + 2), _sub_ldc3()), [1]),  # size not a multiple of 4
    "event_bad_magic": ("event_bad_magic", _parent_with_bad_ldc2(_sub2(magic=0x12345678), _sub_ldc3()), [1]),
    "event_truncated": ("event_truncated", _parent_with_bad_ldc2(_sub2(size=len(_sub2()) + 8)), [1]),
}


@pytest.mark.parametrize("case", sorted(SUB_CASES))
def test_damaged_sub_event(case, cmap):
    label, parent, ldcs = SUB_CASES[case]
    clean = ref.decode_stream(spill_stream(), cmap)
    data = spill_stream(replace={2: parent})
    events = ref.decode_stream(data, cmap)
    assert [e["status"] for e in events] == [None] * 5
    ev2 = events[2]
    assert ev2["errors"] == [(None, label, data.find(parent) + 68 + len(date_event(
        7, RUN, SPILL, 2, equipment(610, chip_610(2), **_eq2))))]
    assert ev2["ldcs"] == ldcs
    assert addresses(ev2) == ONLY_LDC1 and ev2["trigger_time_us"] is None
    for i in (0, 1, 3, 4):
        assert without_offset(events[i]) == without_offset(clean[i])
    assert ref.qa_records(events)[0]["decode_errors"] == 1


# Rejected top-level events.
def _decoded_summary(events):
    return [(e["type"], e["event"], e["status"]) for e in events]


def test_event_byte_swapped(cmap):
    for damaged in (
        byte_swap(physics_event(2)),
        # swapped size word not plausible (not a multiple of 4): resync to event 3
        pack(0x13000000) + byte_swap(physics_event(2))[4:],
    ):
        data = spill_stream(replace={2: damaged})
        events = ref.decode_stream(data, cmap)
        assert _decoded_summary(events) == [
            (5, 0, None), (7, 1, None), (None, None, "event_byte_swapped"), (7, 3, None), (6, 0, None)]
        assert events[2]["offset"] == data.find(damaged)
        assert events[2]["errors"] == [(None, "event_byte_swapped", events[2]["offset"])]
        (qa,) = ref.qa_records(events)
        assert (qa["events"], qa["lost_events"], qa["decode_errors"], qa["complete"]) == (2, 1, 1, True)


def test_event_old_layout(cmap):
    events = ref.decode_stream(spill_stream(replace={2: physics_event(2, version=0x0000000E)}), cmap)
    assert _decoded_summary(events) == [
        (5, 0, None), (7, 1, None), (None, None, "event_old_layout"), (7, 3, None), (6, 0, None)]
    (qa,) = ref.qa_records(events)
    assert (qa["events"], qa["lost_events"], qa["decode_errors"]) == (2, 1, 1)


@pytest.mark.parametrize("kwargs, resync", [
    (dict(header_length_field=60), False),          # below 68: skipped by its (good) size
    (dict(header_length_field=70), False),          # not a multiple of 4
    (dict(header_length_field=100000), False),      # beyond the event
    (dict(size=len(physics_event(2)) + 2), True),   # event size not a multiple of 4: resync
    (dict(size=64), True),                          # event size below 68: resync
])
def test_event_bad_header_size(kwargs, resync, cmap):
    events = ref.decode_stream(spill_stream(replace={2: physics_event(2, **kwargs)}), cmap)
    # with or without resync (untrusted size), the reader lands on the next super event
    assert _decoded_summary(events) == [
        (5, 0, None), (7, 1, None), (None, None, "event_bad_header_size"), (7, 3, None), (6, 0, None)]
    (qa,) = ref.qa_records(events)
    assert qa["decode_errors"] == 1
    assert (qa["events"], qa["lost_events"]) == (2, 1)


def test_event_truncated_stops_the_stream(cmap):
    full = spill_stream()
    cut = full[: len(full) - len(eob()) - 12]  # event 3 loses its last 12 bytes, no EOB
    events = ref.decode_stream(cut, cmap)
    assert _decoded_summary(events) == [(5, 0, None), (7, 1, None), (7, 2, None), (None, None, "event_truncated")]
    assert events[-1]["errors"] == [(None, "event_truncated", len(sob()) + 2 * len(physics_event(1)))]
    (qa,) = ref.qa_records(events)
    assert qa["complete"] is False and qa["beam"] is None and qa["eot"] is None
    assert (qa["events"], qa["lost_events"], qa["decode_errors"]) == (2, 0, 1)
    # a tail too short to hold a size and a magic is truncated too
    events = ref.decode_stream(full + b"\xda\x1e", cmap)
    assert events[-1]["status"] == "event_truncated" and len(events) == 6


def test_event_bad_magic_garbage_between_events(cmap):
    garbage = pack(0x11111111, 0x22222222, 0x33333333)
    ev1, ev2 = physics_event(1), physics_event(2)
    data = sob() + ev1 + garbage + ev2 + physics_event(3) + eob()
    events = ref.decode_stream(data, cmap)
    assert _decoded_summary(events) == [
        (5, 0, None), (7, 1, None), (None, None, "event_bad_magic"), (7, 2, None), (7, 3, None), (6, 0, None)]
    assert events[2]["offset"] == len(sob()) + len(ev1)
    assert events[3]["offset"] == len(sob()) + len(ev1) + len(garbage)
    assert without_offset(events[3]) == without_offset(ref.decode_stream(spill_stream(), cmap)[2])
    (qa,) = ref.qa_records(events)
    assert (qa["events"], qa["lost_events"], qa["decode_errors"], qa["complete"]) == (3, 0, 1, True)


def test_event_bad_magic_nothing_after(cmap):
    data = spill_stream() + pack(1, 2, 3, 4, 5)
    events = ref.decode_stream(data, cmap)
    assert events[-1]["status"] == "event_bad_magic" and len(events) == 6
    assert ref.qa_records(events)[0]["decode_errors"] == 0  # after END_OF_BURST, no spill open


def test_event_bad_magic_resync_skips_sub_events(cmap):
    """A resync in a stream of super events lands on the next super event, never on
    the damaged event's own sub-events (which would count event 2 twice)."""
    damaged = physics_event(2, magic=0x0BADBEEF)
    events = ref.decode_stream(spill_stream(replace={2: damaged}), cmap)
    assert _decoded_summary(events) == [
        (5, 0, None), (7, 1, None), (None, None, "event_bad_magic"), (7, 3, None), (6, 0, None)]


# =============================================================================
# 4. Layout variants and MSADC details
# =============================================================================

def test_80_byte_headers(cmap):
    clean = ref.decode_stream(spill_stream(), cmap)
    wide = physics_event(2, header_length=80, sub_header_length=80)
    events = ref.decode_stream(spill_stream(replace={2: wide}), cmap)
    assert [without_offset(e) for e in events] == [without_offset(e) for e in clean]


def test_plain_events(cmap):
    data = b"".join([
        date_event(5, RUN, SPILL, 0, ldc=1, gdc=0),
        physics_event(1, plain=True), physics_event(2, plain=True),
        date_event(6, RUN, SPILL, 0, equipment(700, SCALERS, evnum=0, spill=SPILL, type_=6), ldc=1, gdc=0),
    ])
    events = ref.decode_stream(data, cmap)
    clean = ref.decode_stream(spill_stream(n=2), cmap)
    assert _decoded_summary(events) == _decoded_summary(clean)
    for e, c in zip(events, clean):
        assert e["ldcs"] == [1]
        assert e["channels"] == c["channels"] and e["scalers"] == c["scalers"]
    assert ref.qa_records(events) == ref.qa_records(clean)


def test_placeholder_unknown_channel_unknown_src_and_duplicates(cmap):
    chip = (placeholder(2, 3, 1)
            + adc_block(2, 0, 0, channel(14, pulse(200)) + channel(14, pulse(300)))  # same channel twice
            + adc_block(2, 7, 3, channel(15, pulse(40))))  # (610, 7, 63) is not in the map
    extra = equipment(650, [1, 2, 3], evnum=2, spill=SPILL)  # srcID nobody knows
    event2 = physics_event(2, chips={610: chip}, eqs={701: equipment(701, [2000], **_eq2) + extra})
    events = ref.decode_stream(spill_stream(replace={2: event2}), cmap)
    ev = events[2]
    assert ev["errors"] == [] and ev["modules_missing"] == 1
    assert ev["unknown_channels"] == [(610, 7, 63)] and ev["unknown_src_ids"] == [650]
    ps = [c for c in ev["channels"] if (c["src_id"], c["port"], c["channel"]) == (610, 0, 14)]
    assert len(ps) == 1 and ps[0]["amplitude"] == 300.0  # the last one wins
    assert ev["trigger_time_us"] == 2000
    (qa,) = ref.qa_records(events)
    assert qa["modules_missing"] == 1 and qa["decode_errors"] == 0


def test_empty_chip_data_and_empty_block(cmap):
    event2 = physics_event(2, chips={610: [], 611: adc_block(2, 0, 0, [])})
    ev = ref.decode_stream(spill_stream(replace={2: event2}), cmap)[2]
    assert ev["errors"] == [] and addresses(ev) == [a for a in NO_610 if a[0] != 611]


def test_odd_and_short_sample_counts(cmap):
    odd = pulse(0, n=9) ; odd[8] = 4095  # saturated last sample, padding half ignored
    short = [100, 110, 102]
    chip = adc_block(2, 0, 0, channel(0, odd) + channel(1, short) + channel(2, [7]))
    ev = ref.decode_stream(spill_stream(replace={2: physics_event(2, chips={611: chip})}), cmap)[2]
    assert ev["errors"] == []
    c0, c1, c2 = [c for c in ev["channels"] if c["src_id"] == 611]
    assert c0["samples"] == odd and c0["saturated"] is True
    assert c0["amplitude"] == 4095 - 100.0 and c0["energy_gev"] == pytest.approx(3995 * 0.0306)
    assert c1["samples"] == short and c1["pedestal_even"] == 101.0 and c1["pedestal_odd"] == 110.0
    assert c1["amplitude"] == 0.0 and c1["energy_gev"] == 0.0
    assert c2["pedestal_even"] == 7.0 and c2["pedestal_odd"] == 0.0


def test_amplitude_threshold_and_negative_amplitude(cmap):
    chip = adc_block(2, 0, 0, channel(0, pulse(20)) + channel(1, pulse(21)) + channel(2, [100] * 6 + [90] * 4))
    ev = ref.decode_stream(spill_stream(replace={2: physics_event(2, chips={611: chip})}), cmap)[2]
    c0, c1, c2 = [c for c in ev["channels"] if c["src_id"] == 611]
    assert c0["amplitude"] == 20.0 and c0["energy_gev"] == 0.0
    assert c1["amplitude"] == 21.0 and c1["energy_gev"] == pytest.approx(21 * 0.0282)
    assert c2["amplitude"] == -10.0 and c2["energy_gev"] == 0.0


# =============================================================================
# 5. Reconstruction tags
# =============================================================================

def _event_with(cmap, **chips):
    data = spill_stream(n=1, replace={1: physics_event(1, chips={int(k[1:]): v for k, v in chips.items()})})
    return ref.decode_stream(data, cmap)[1]


def test_hadron_and_no_electron(cmap):
    hcal = adc_block(1, 0, 0, [w for c in range(9) for w in channel(c, pulse(50 * (c + 1)))])
    ev = _event_with(cmap, s611=hcal, s612=[])
    assert ev["e_hcal"] > 10 and ev["hadron_like"] and not ev["electron"] and not ev["candidate"]
    assert ev["srd"] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("chip610, candidate", [
    (None, True),
    # main-ECAL maximum not in the beam cell
    (adc_block(1, 0, 0, channel(14, pulse(200))) + adc_block(1, 1, 0, channel(14, pulse(100)) + channel(15, pulse(1000))),
     False),
    # no energy at all in the main ECAL
    (adc_block(1, 0, 0, channel(14, pulse(200))), False),
    # preshower too low
    (adc_block(1, 0, 0, channel(14, pulse(100))) + adc_block(1, 1, 0, channel(14, pulse(1000))), False),
])
def test_candidate_beam_cell(chip610, candidate, cmap):
    ev = _event_with(cmap, **({"s610": chip610} if chip610 is not None else {}))
    assert ev["candidate"] is candidate


def test_veto_is_mean_of_two_pmts(cmap):
    veto = adc_block(1, 0, 1, channel(0, pulse(100)) + channel(1, pulse(60)))  # module 0, PMTs 0 and 1
    srd = adc_block(1, 0, 0, channel(0, pulse(200)) + channel(1, pulse(200)) + channel(2, pulse(200)))
    ev = _event_with(cmap, s612=srd + veto)
    assert ev["veto"] == pytest.approx([(100 * 0.000216 + 60 * 0.0002) / 2, 0.0, 0.0])
    assert ev["veto"][0] >= 0.01 and not ev["candidate"] and ev["electron"]


def test_physics_only_and_beam_only_masks(cmap):
    data = sob() + physics_event(1, mask=0b01) + physics_event(2, mask=0b10) + physics_event(3, mask=0b100) + eob()
    events = ref.decode_stream(data, cmap)
    assert [(e["physics_trigger"], e["beam_trigger"], e["candidate"]) for e in events[1:4]] == [
        (True, False, True), (False, True, False), (False, False, False)]
    (qa,) = ref.qa_records(events)
    assert qa["candidates"] == [1] and qa["hadron_fraction"] == 0.0 and qa["eot"] == 5000.0


# =============================================================================
# 6. Spill grouping (§12 and the lead's rules)
# =============================================================================

def test_several_spills_missing_eob_late_events_and_run_events(cmap):
    data = b"".join([
        date_event(1, RUN, 0, 0),                       # START_OF_RUN: no spill
        pack(0xDEADBEEF, 0xDEADBEEF),                   # rejected before any spill: counts in spill 1
        spill_stream(n=2, spill=1, with_eob=False),     # spill 1 cut off by spill 2
        spill_stream(n=3, spill=2),                     # spill 2 complete
        physics_event(4, spill=2),                      # late event of spill 2: ignored
        sob(spill=3), physics_event(2, spill=3, mask=0b01),  # spill 3: no beam trigger, event 1 lost
        date_event(2, RUN, 0, 0),                       # END_OF_RUN: no spill, does not close spill 3
    ])
    events = ref.decode_stream(data, cmap)
    assert events[1]["status"] == "event_bad_magic"
    records = ref.qa_records(events)
    assert [(r["spill"], r["complete"], r["events"], r["lost_events"], r["decode_errors"]) for r in records] == [
        (1, False, 2, 0, 1), (2, True, 3, 0, 0), (3, False, 1, 1, 0)]
    assert records[0]["beam"] is None and records[1]["beam"] == 5000
    assert records[2]["hadron_fraction"] is None and records[2]["hadron_fraction_srd"] is None
    assert records[2]["eot"] is None and records[2]["candidates"] == [2]


def test_eob_without_scalers(cmap):
    data = sob() + physics_event(1) + eob(scalers=None)
    (qa,) = ref.qa_records(ref.decode_stream(data, cmap))
    assert qa["complete"] and qa["beam"] is None and qa["triggers_accepted"] is None and qa["eot"] is None


def test_short_scalers(cmap):
    data = sob() + physics_event(1) + eob(scalers=[10, 11])
    (qa,) = ref.qa_records(ref.decode_stream(data, cmap))
    assert qa["beam"] == 10 and qa["triggers_accepted"] is None and qa["eot"] == 10.0


def test_calibration_events_count(cmap):
    data = sob() + physics_event(1) + physics_event(2, type_=8, mask=0b1000) + eob()
    events = ref.decode_stream(data, cmap)
    assert events[2]["type"] == 8 and events[2]["errors"] == []
    (qa,) = ref.qa_records(events)
    assert qa["events"] == 2 and qa["lost_events"] == 0


ERROR_LABELS = (
    "adc_bad_key", "adc_bad_size", "adc_event_mismatch", "channel_bad_id", "channel_bad_samples",
    "data_bad_marker", "slink_event_mismatch", "slink_size_mismatch", "slink_src_mismatch",
    "slink_spill_mismatch", "equipment_bad_size", "event_truncated", "event_byte_swapped",
    "event_old_layout", "event_bad_header_size", "event_bad_magic", "subevent_mismatch",
)


def test_every_label_is_exercised():
    covered = {next(l for l in ERROR_LABELS if c.startswith(l)) for c in INNER_CASES}
    covered |= {label for label, _, _ in SUB_CASES.values()}
    assert covered == set(ERROR_LABELS)
