"""The numba decoder against the slow pure-Python reference and the spec's vectors.

Every sample, pedestal, amplitude, energy and saturation flag, every issue
(kind, srcID, byte offset) and every QA number must agree, on the vectors, on
hand-built corrupt streams and on Hypothesis mutations of both.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference_decoder as ref
import spec_encoder as enc
from conftest import VECTORS
from na64_online.daq.rawfile import segment_spills
from na64_online.decoders import layout
from na64_online.decoders.channelmap import ChannelMap
from na64_online.decoders.decode import (
    DecodeBuffers,
    ReconstructionParams,
    as_words,
    decode_events,
    index_bytes,
    index_events,
)
from na64_online.errors import ISSUE_DESCRIPTIONS, Issue
from na64_online.decoders.reconstruct import DetectorGeometry, event_dict, reconstruct
from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor

SMALL = (VECTORS / "small.dat").read_bytes()
QA_KEYS = list(json.loads((VECTORS / "small.qa.json").read_text()))


def fast_events(data: bytes, channel_map: ChannelMap) -> list[dict]:
    """The numba decoder's view of ``data``, shaped like ``reference_decoder.decode_stream``."""
    words, index = index_bytes(data)
    decoded = decode_events(words, index, channel_map, with_samples=True, max_samples=511)
    # byte offsets in ``data``: the buffer may have been re-aligned after a byte shift
    shift = index.source_offset - index.offset * 4
    physics = reconstruct(decoded, DetectorGeometry.from_map(channel_map))
    out = []
    for row in range(len(index)):
        status = int(index.status[row])
        issues = decoded.issues[decoded.issues["event"] == row]
        errors = [(int(i["src_id"]), Issue(int(i["kind"])).label, int(i["offset"]) + int(shift[row]))
                  for i in issues if Issue(int(i["kind"])).is_error]
        if status:
            errors = [(-1, Issue(status).label, int(index.source_offset[row]))]
        dumped = event_dict(decoded, physics, channel_map, row)  # what `na64-online dump` prints
        channels = {(c["src_id"], c["port"], c["channel"]): c for c in dumped["channels"]}
        scalers = decoded.scalers[row]
        out.append({
            "offset": int(index.source_offset[row]),
            "status": Issue(status).label if status else None,
            "errors": errors,
            "channels": channels,
            "dumped_issues": dumped["issues"],
            "modules_missing": int(np.count_nonzero(issues["kind"] == Issue.MODULE_MISSING)),
            "unknown_channels": int(np.count_nonzero(issues["kind"] == Issue.UNKNOWN_CHANNEL)),
            "ldcs": dumped["ldcs"],
            "trigger_time_us": dumped["trigger_time_us"],
            "scalers": [int(v) for v in scalers if v >= 0] or None,
            "candidate": bool(physics.candidate[row]),
            "hadron_like": bool(physics.hadron_like[row]),
            "electron": bool(physics.electron[row]),
            "e_ecal": float(physics.e_ecal[row]),
            **({} if status else {
                "type": int(index.type[row]), "run": int(index.run[row]), "spill": int(index.spill[row]),
                "event": int(index.event[row]), "trigger_mask": int(index.trigger_mask[row]),
            }),
        })
    return out


def assert_same_events(data: bytes, channel_map: ChannelMap, ref_map: dict) -> list[dict]:
    slow = ref.decode_stream(data, ref_map)
    fast = fast_events(data, channel_map)
    assert [e["offset"] for e in fast] == [e["offset"] for e in slow]
    for f, s in zip(fast, slow):
        where = f"event at byte {s['offset']}"
        assert f["status"] == s["status"], where
        slow_errors = Counter((-1 if src is None else src, label, off) for src, label, off in s["errors"])
        assert Counter(f["errors"]) == slow_errors, where
        assert f["modules_missing"] == s["modules_missing"], where
        if not f["status"]:  # the dump names every issue with its reason
            assert [(i["kind"], i["reason"]) for i in f["dumped_issues"] if Issue[i["kind"].upper()].is_error] == \
                [(label, ISSUE_DESCRIPTIONS[Issue[label.upper()]]) for _, label, _ in f["errors"]]
        assert f["unknown_channels"] == len(s["unknown_channels"]), where
        if s["status"]:
            continue
        for key in ("type", "run", "spill", "event", "trigger_mask", "trigger_time_us"):
            assert f[key] == s[key], (where, key)
        assert f["ldcs"] == sorted({min(ldc, 31) for ldc in s["ldcs"]}), where  # LDC ids >= 31 share a bit
        assert f["scalers"] == (s["scalers"][: layout.N_SCALERS] if s["scalers"] else None), where
        slow_channels = {(c["src_id"], c["port"], c["channel"]): c for c in s["channels"]}
        assert f["channels"].keys() == slow_channels.keys(), where
        for address, c in slow_channels.items():
            mine = f["channels"][address]
            assert mine["samples"] == c["samples"], (where, address)
            assert mine["saturated"] == c["saturated"], (where, address)
            for key in ("pedestal_even", "pedestal_odd", "amplitude", "energy_gev"):
                assert mine[key] == pytest.approx(c[key], rel=1e-12, abs=1e-9), (where, address, key)
        rec = s if "candidate" in s else {**s, **ref.reconstruct(s)}
        assert f["candidate"] == rec["candidate"] and f["hadron_like"] == rec["hadron_like"], where
        assert f["electron"] == rec["electron"], where
        assert f["e_ecal"] == pytest.approx(rec["e_ecal"], abs=1e-9), where
    return slow


def fast_qa(data: bytes, channel_map: ChannelMap) -> list[dict]:
    words, index = index_bytes(data)
    processor = SpillProcessor(MonitorConfig(chunk_events=7), channel_map)
    return [
        processor.process(seg.words, seg.index, complete=seg.complete).to_dict()
        for seg in segment_spills(words, index)
    ]


def assert_same_qa(data: bytes, channel_map, ref_map, slow_events=None):
    slow_events = slow_events if slow_events is not None else ref.decode_stream(data, ref_map)
    slow = ref.qa_records(slow_events)
    fast = fast_qa(data, channel_map)
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow):
        for key in QA_KEYS:
            if isinstance(s[key], float):
                assert f[key] == pytest.approx(s[key], rel=1e-12), key
            else:
                assert f[key] == s[key], key


# ----------------------------------------------------------------- the vectors
def test_vectors_every_channel(channel_map):
    """small.dat decodes to small.events.jsonl bit for bit (floats to 1e-9)."""
    expected = [json.loads(line) for line in (VECTORS / "small.events.jsonl").read_text().splitlines()]
    events = [e for e in fast_events(SMALL, channel_map) if e.get("type") in (7, 8)]
    assert [e["event"] for e in events] == [e["event"] for e in expected]
    for mine, theirs in zip(events, expected):
        assert mine["trigger_mask"] == theirs["trigger_mask"]
        assert (mine["run"], mine["spill"]) == (theirs["run"], theirs["spill"])
        want = {(c["src_id"], c["port"], c["channel"]): c for c in theirs["channels"]}
        assert mine["channels"].keys() == want.keys()
        for address, c in want.items():
            got = mine["channels"][address]
            for key in ("detector", "module", "x", "y", "samples", "saturated"):
                assert got[key] == c[key], (theirs["event"], address, key)
            for key in ("pedestal_even", "pedestal_odd", "amplitude", "energy_gev"):
                assert got[key] == pytest.approx(c[key], abs=1e-9), (theirs["event"], address, key)


def test_vectors_qa_record(channel_map):
    (record,) = fast_qa(SMALL, channel_map)
    expected = json.loads((VECTORS / "small.qa.json").read_text())
    for key, value in expected.items():
        assert record[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert record["alarms"] == []


def test_vectors_match_reference(channel_map, ref_map):
    slow = assert_same_events(SMALL, channel_map, ref_map)
    assert_same_qa(SMALL, channel_map, ref_map, slow)


# ----------------------------------------------------------------- hand-built cases, one per §5 kind
def _sample_cases():
    e, n = enc, 2
    cases = {
        "clean": enc.spill_stream(),
        "adc_bad_key": {n: e.physics_event(n, chips={611: e.adc_block(n, 0, 0, e.channel(0, e.pulse(10)), key=1)})},
        "adc_bad_size_zero": {n: e.physics_event(n, chips={611: e.adc_block(n, 0, 0, e.channel(0, e.pulse(10)), size=0)})},
        "adc_bad_size_past": {n: e.physics_event(n, chips={611: e.adc_block(n, 0, 0, e.channel(0, e.pulse(10)), size=40)})},
        "adc_event_mismatch": {n: e.physics_event(n, chips={611: e.adc_block(n + 1, 0, 0, e.channel(0, e.pulse(10)))})},
        "channel_bad_id": {n: e.physics_event(n, chips={611: e.adc_block(n, 0, 0, e.channel(0, e.pulse(10), id_bits=2))})},
        "channel_bad_samples": {n: e.physics_event(n, chips={611: e.adc_block(n, 0, 0, e.channel(0, e.pulse(10), n=0))})},
        "data_bad_marker": {n: e.physics_event(n, chips={612: e.adc_block(n, 0, 0, e.channel(0, e.pulse(200)) + e.channel(1, e.pulse(200), bad_marker_at=3))})},
        "slink_event_mismatch": {n: e.physics_event(n, eqs={611: e.equipment(611, [], evnum=n, spill=enc.SPILL, slink_event=9)})},
        "slink_size_mismatch": {n: e.physics_event(n, eqs={611: e.equipment(611, [1, 2], evnum=n, spill=enc.SPILL, slink_size=9)})},
        "slink_src_mismatch": {n: e.physics_event(n, eqs={611: e.equipment(611, [], evnum=n, spill=enc.SPILL, slink_src=612)})},
        "slink_spill_mismatch": {n: e.physics_event(n, eqs={611: e.equipment(611, [], evnum=n, spill=enc.SPILL, slink_spill=5)})},
        "equipment_bad_size": {n: e.physics_event(n, eqs={611: e.equipment(611, [], evnum=n, spill=enc.SPILL, eq_size=4000)})},
        "event_byte_swapped": {n: e.byte_swap(e.physics_event(n))},
        "event_old_layout": {n: e.physics_event(n, version=0x0000FFFF)},
        "event_bad_header_size": {n: e.physics_event(n, header_length_field=60)},
        "event_bad_magic": {n: e.physics_event(n, magic=0x12345678)},
        "subevent_mismatch": {n: e.physics_event(n, ldc2_header={"evnum": 7})},
        "placeholder": {n: e.physics_event(n, chips={611: e.placeholder(n, 0, 1) + e.adc_block(n, 0, 0, e.channel(0, e.pulse(10)))})},
        "header_80": {n: e.physics_event(n, header_length=80, sub_header_length=80)},
    }
    return {k: (v if isinstance(v, bytes) else enc.spill_stream(replace=v)) for k, v in cases.items()}


CASES = _sample_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_corruption_kind_counted_and_survived(name, channel_map, ref_map):
    data = CASES[name]
    slow = assert_same_events(data, channel_map, ref_map)
    assert_same_qa(data, channel_map, ref_map, slow)
    (record,) = fast_qa(data, channel_map)
    label = name.rsplit("_zero", 1)[0].rsplit("_past", 1)[0]
    if label in {i.label for i in Issue}:
        errors = {kind for per_src in record["errors_by_src"].values() for kind in per_src}
        assert errors == {label}
        assert record["decode_errors"] == 1
    elif name == "placeholder":
        assert record["modules_missing"] == 1 and record["decode_errors"] == 0
    else:
        assert record["decode_errors"] == 0
    # the other events of the spill are untouched
    assert record["events"] >= 2 and record["complete"]


def test_truncated_stream_keeps_whole_events(channel_map, ref_map):
    full = enc.spill_stream(n=4)
    cut = full[: len(full) - 100]
    slow = assert_same_events(cut, channel_map, ref_map)
    assert slow[-1]["status"] == "event_truncated"
    (record,) = fast_qa(cut, channel_map)
    assert record["complete"] is False and record["beam"] is None
    assert record["events"] == 4 and record["decode_errors"] == 1  # only the END_OF_BURST was cut


def test_plain_events_and_several_spills(channel_map, ref_map):
    data = enc.spill_stream(spill=1) + enc.spill_stream(spill=2, with_eob=False) + enc.spill_stream(spill=3)
    slow = assert_same_events(data, channel_map, ref_map)
    assert_same_qa(data, channel_map, ref_map, slow)
    records = fast_qa(data, channel_map)
    assert [(r["spill"], r["complete"]) for r in records] == [(1, True), (2, False), (3, True)]


def test_decoder_rejects_wrong_arrays(channel_map):
    words, _ = as_words(SMALL)
    with pytest.raises(TypeError):
        index_events(words.astype(np.int64))
    with pytest.raises(ValueError):
        index_events(words[::2])
    index = index_events(words)
    with pytest.raises(ValueError):
        decode_events(words[:100], index, channel_map)
    forged = index.slice(0, 3)
    forged.size[:] = 4  # an accepted event shorter than its own header
    with pytest.raises(ValueError):
        decode_events(words, forged, channel_map)
    with pytest.raises(ValueError):
        ReconstructionParams(pedestal_samples=0)


# ----------------------------------------------------------------- Hypothesis mutation fuzzing
BASES = [SMALL[: int(index_events(as_words(SMALL)[0]).offset[6]) * 4], enc.spill_stream(n=3)]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.sampled_from(["flip", "word", "swap", "cut", "delete", "insert"]))
        n_words = len(data) // 4
        if n_words < 2:
            break
        i = draw(st.integers(0, n_words - 1))
        if what == "flip":
            bit = draw(st.integers(0, 31))
            word = int.from_bytes(data[4 * i: 4 * i + 4], "little") ^ (1 << bit)
            data[4 * i: 4 * i + 4] = word.to_bytes(4, "little")
        elif what == "word":
            data[4 * i: 4 * i + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
        elif what == "swap":
            j = draw(st.integers(0, n_words - 1))
            a, b = bytes(data[4 * i: 4 * i + 4]), bytes(data[4 * j: 4 * j + 4])
            data[4 * i: 4 * i + 4], data[4 * j: 4 * j + 4] = b, a
        elif what == "cut":
            del data[draw(st.integers(0, len(data))):]
        elif what == "delete":
            del data[4 * i: 4 * i + 4]
        else:
            data[4 * i: 4 * i] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.fuzz
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mutated())
def test_fuzz_mutations_match_reference(data, channel_map, ref_map):
    """Flipped bits, random words, swapped words, cuts: never a crash or hang, same answer as the reference."""
    slow = assert_same_events(data, channel_map, ref_map)
    assert_same_qa(data, channel_map, ref_map, slow)


@st.composite
def byte_shifted(draw):
    """Bytes inserted or deleted anywhere (the stream shifts off the word grid), beside word-level damage."""
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        n = draw(st.integers(1, 9))
        if draw(st.booleans()):
            data[at:at] = draw(st.binary(min_size=n, max_size=n))
        else:
            del data[at: at + n]
    return bytes(data)


@pytest.mark.fuzz
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=byte_shifted())
def test_fuzz_byte_shifts_match_reference(data, channel_map, ref_map):
    """Bytes inserted or lost: the same events and QA records as the reference, which reads at any byte offset."""
    slow = assert_same_events(data, channel_map, ref_map)
    assert_same_qa(data, channel_map, ref_map, slow)
    words, index = index_bytes(data)
    # every byte is either decoded in an accepted event or counted as skipped
    assert int(index.skipped.sum()) + 4 * int(index.size[index.status == 0].sum()) == len(data)


# ----------------------------------------------------------------- simulator -> decoder round trips
def _simulated(**kw) -> bytes:
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

    config = SimulationConfig(**{"events_per_spill": 150, "seed": 5, "signal_fraction": 0.02, **kw})
    return b"".join(spill.raw() for spill in ReadoutSimulator(config).spills())


ROUND_TRIPS = {
    "super events": dict(),
    "plain events, 80-byte headers": dict(super_events=False, header_bytes=80),
    "no zero suppression, dead/noisy/hot channels": dict(
        zero_suppression=False, dead_channels=((610, 1, 15),), noisy_channels=((611, 0, 4),),
        hot_channels=((610, 0, 3),)),
    "two spills with every corruption": dict(spills=2, corruption_rates={
        "adc_bad_key": 0.02, "adc_bad_size": 0.02, "adc_event_mismatch": 0.02, "channel_bad_id": 0.02,
        "channel_bad_samples": 0.02, "data_bad_marker": 0.02, "slink_event_mismatch": 0.02,
        "slink_size_mismatch": 0.02, "equipment_bad_size": 0.02, "event_byte_swapped": 0.02,
        "event_old_layout": 0.02, "event_bad_header_size": 0.02, "module_missing": 0.02}),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_simulator_round_trip_matches_reference(name, channel_map, ref_map):
    """Every sample, pedestal, amplitude, energy and QA number equals the reference's."""
    data = _simulated(**ROUND_TRIPS[name])
    slow = assert_same_events(data, channel_map, ref_map)
    assert_same_qa(data, channel_map, ref_map, slow)


def test_reused_buffers_give_what_fresh_arrays_give(channel_map):
    """Chunks decoded one after the other into the same buffers (channels present in one chunk's row
    and absent in the next one's, chunks of changing length, corrupt events) equal fresh decodes."""
    data = _simulated(**ROUND_TRIPS["two spills with every corruption"])
    words, _ = as_words(data)
    index = index_events(words)
    buffers = DecodeBuffers()
    names = ("nsamples", "pedestal_even", "pedestal_odd", "amplitude", "energy", "saturated", "trigger_time_us",
             "scalers", "ldc_mask", "errors", "issues")
    # equal lengths (rows reused as they are), then shorter ones within the rows kept (a spill's last chunk,
    # then the next spill's first: decoded into the rows kept, nothing cleared), then a longer one
    bounds = [0, 40, 80, 120, 121, 150, 180, len(index)]
    assert len(index) - 180 > 40
    previous = None
    came_and_went = 0
    planes = None
    for start, stop in zip(bounds, bounds[1:]):
        chunk = index.slice(start, stop)
        fresh = decode_events(words, chunk, channel_map)
        reused = decode_events(words, chunk, channel_map, buffers=buffers)
        for name in names:
            assert np.array_equal(getattr(reused, name), getattr(fresh, name)), (start, name)
        assert buffers.rows == max(stop - start, 40)
        if stop <= 180:  # the same storage while the chunks fit the rows kept
            assert planes is None or np.shares_memory(planes, reused.energy)
            planes = reused.energy
        if previous is not None and len(previous) == len(fresh.nsamples):  # the same rows: slots came and went
            came_and_went += int(np.count_nonzero((previous > 0) & (fresh.nsamples == 0)))
        previous = fresh.nsamples
    assert came_and_went > 100 and (index.status != 0).any()


def test_simulated_truth_is_recovered(channel_map):
    """Injected signal events, and only they, are candidates; the hadron fraction comes back."""
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

    config = SimulationConfig(events_per_spill=4000, seed=11, signal_fraction=0.002, hadron_fraction=0.05)
    (spill,) = ReadoutSimulator(config).spills()
    (record,) = fast_qa(spill.raw(), channel_map)
    truth = spill.truth
    assert truth.signal_events, "the simulation must contain signal events"
    physics_signal = [e for e in truth.signal_events if truth.physics_trigger[e - 1]]
    assert record["candidates"] == physics_signal
    assert record["hadron_fraction"] == pytest.approx(truth.hadron_fraction, abs=0.01)
    assert record["beam"] == truth.scalers["beam"]
    assert record["beam_rate_hz"] == pytest.approx(truth.scalers["beam"] / (truth.scalers["spill_duration_us"] * 1e-6))
    assert record["dead_time_fraction"] == pytest.approx(
        1 - truth.scalers["triggers_accepted"] / truth.scalers["triggers_raw"])
    assert record["events"] == truth.events and record["lost_events"] == 0 and record["complete"]


def test_plain_event_fragments_give_the_super_event_record(channel_map):
    """Two readout nodes writing plain events: one event per trigger, same QA as super events."""
    plain = fast_qa(_simulated(super_events=False, events_per_spill=400), channel_map)
    built = fast_qa(_simulated(super_events=True, events_per_spill=400), channel_map)
    drop = {"processing_seconds", "finished_at", "bytes_decoded"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in plain] == \
        [{k: v for k, v in r.items() if k not in drop} for r in built]
    assert plain[0]["events"] == 400


@pytest.mark.fuzz
def test_bounds_checking_is_active_when_asked():
    """Under NUMBA_BOUNDSCHECK=1 (tools/test's second run) numba really checks indices."""
    import os

    import numba

    if os.environ.get("NUMBA_BOUNDSCHECK") != "1":
        pytest.skip("only meaningful in the NUMBA_BOUNDSCHECK=1 run")

    @numba.njit
    def read(a, i):
        return a[i]

    assert numba.config.BOUNDSCHECK
    with pytest.raises(IndexError):
        read(np.zeros(3), 5)


def test_byte_shift_case_found_by_the_fuzz_test(channel_map, ref_map):
    """An input test_fuzz_byte_shifts_match_reference found (CI, 2026-12-03): two START_OF_BURST fragments
    (two LDCs) with a garbled (run, burst) open the stream. They are one event, so its header damage is one
    error, not one per fragment (decode_errors was 3 against the reference's 2)."""
    data = (Path(__file__).parent / "data" / "fuzz" / "byte-shift-decode-errors.bin").read_bytes()
    assert_same_qa(data, channel_map, ref_map)


@pytest.mark.parametrize("move", ["repeated", "out of sequence"])
def test_a_rejected_plain_event_counts_once_whatever_its_fragments(move, channel_map, ref_map):
    """Plain events (one fragment per LDC): an event seen again in its spill, or one out of the running
    sequence, is one duplicate or one header error, not one per fragment; the bytes stay accounted."""
    data = _simulated(super_events=False, events_per_spill=40)
    _, index = index_bytes(data)
    assert index.ldc[2:4].tolist() == [1, 2]  # rows 2k, 2k + 1: the two fragments of event k
    events = [data[4 * o: 4 * (o + s)] for o, s in zip(index.offset.tolist(), index.size.tolist())]
    if move == "repeated":
        events = events[:12] + events[11:9:-1] + events[12:]  # event 5 again, its fragments' LDCs 2, 1
    else:
        events = events[:20] + events[22:42] + events[20:22] + events[42:]  # event 10 after event 20
    data = b"".join(events)
    assert_same_qa(data, channel_map, ref_map)
    (record,) = fast_qa(data, channel_map)
    assert (record["duplicate_event"], record["header_mismatch"]) == ((1, 0) if move == "repeated" else (0, 1))
    assert record["rejected_events"] == (0 if move == "repeated" else 1)


# ----------------------------------------------------------------- planned rows: decoded where received
@pytest.fixture(scope="module")
def two_node_events():
    """Each readout node's events of a simulated spill (what their messages carry), signal events included."""
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

    spill = next(iter(ReadoutSimulator(SimulationConfig(run=3, spills=1, events_per_spill=60, seed=11,
                                                        signal_fraction=0.1)).spills()))
    return {ldc: spill.ldc_events(ldc) for ldc in (1, 2)}


def _regular(payloads, subs) -> bool:
    """Every planned sub-event's header has the DATE magic and gives its planned size."""
    return all(payloads[f][o + layout.H_MAGIC] == layout.DATE_MAGIC
               and payloads[f][o + layout.H_SIZE] == n * layout.WORD_BYTES for f, o, n in subs.tolist())


@pytest.mark.fuzz
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_planned_rows_decode_as_their_gathered_events(data, two_node_events, channel_map):
    """A worker decodes a task's super events where their sub-events were received, not gathered first: for
    any batching of the nodes' events into messages and any damage to the received words after planning,
    every output — channel estimates, scalers, LDC masks, per-slot sums, issues with their byte offsets,
    a candidate's raw event — is what decoding the gathered events gives. A plan whose sub-event headers
    lose the DATE magic or their planned size is declined (then gathered), and only such a plan."""
    from na64_online.daq.builder import BuiltChunk, EventBuilder, gather, plan_headers
    from na64_online.daq.envelope import scan_payload
    from na64_online.decoders.decode import SlotSums

    batch = data.draw(st.integers(1, 25), label="events per message")
    builder = EventBuilder((1, 2), chunk_events=data.draw(st.integers(5, 80), label="chunk events"))
    chunks = []
    for i in range(0, max(len(e) for e in two_node_events.values()), batch):
        for ldc, events in two_node_events.items():
            if events[i:i + batch]:
                chunks += [o for o in builder.add(ldc, scan_payload(b"".join(events[i:i + batch])), 0.0)
                           if isinstance(o, BuiltChunk)]
    chunks += [o for o in builder.flush(0.0) if isinstance(o, BuiltChunk)]
    assert sum(c.n_events for c in chunks) == len(two_node_events[1])
    for c in chunks:
        payloads = [p.copy() for p in c.payloads]  # received, then damaged in memory
        for _ in range(data.draw(st.integers(0, 3), label="damaged words")):
            f = data.draw(st.integers(0, len(payloads) - 1))
            if payloads[f].shape[0]:
                at = data.draw(st.integers(0, payloads[f].shape[0] - 1))
                payloads[f][at] = data.draw(st.integers(0, 2**32 - 1))
        words = gather(payloads, c.subs, c.groups, c.gdc)
        index = index_events(words)
        heads, planned = plan_headers(payloads, c.subs, c.groups, c.gdc,
                                      out=np.full(words.shape[0] + 50, 0xA5A5A5A5, np.uint32))
        assert (planned is None) == (not _regular(payloads, c.subs))
        two_headers = 2 * layout.DATE_HEADER_WORDS  # the super event's, its first sub-event's
        for at in planned.offset if planned is not None else ():
            assert np.array_equal(heads[at:at + two_headers], words[at:at + two_headers])
        if planned is None:
            continue
        planned_index = index_events(heads)
        assert planned.indexes(planned_index)  # magic and sizes right: the headers index as planned
        select = np.random.default_rng(len(words)).random(len(index)) < 0.7
        sums = [SlotSums(select, 5.0, np.zeros((3, len(channel_map)), np.int64), np.zeros((6, len(channel_map))))
                for _ in range(2)]
        want = decode_events(words, index, channel_map, slot_sums=sums[0])
        got = decode_events(heads, planned_index, channel_map, slot_sums=sums[1], planned=planned)
        for name in ("nsamples", "pedestal_even", "pedestal_odd", "amplitude", "energy", "saturated",
                     "trigger_time_us", "scalers", "ldc_mask", "errors", "issues"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name
        assert np.array_equal(sums[0].counts, sums[1].counts) and np.array_equal(sums[0].sums, sums[1].sums)
        for row in range(len(index)):
            assert np.array_equal(planned.event_words(heads, row),
                                  words[index.offset[row]:index.offset[row] + index.size[row]])
