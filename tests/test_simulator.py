"""Tests of the readout simulator (sim/simulator.py) against docs/raw-format.md.

Structure is checked by walking the bytes with the layout module; physics and
damage with the pure-Python reference decoder (tests/reference_decoder.py),
which shares no code with the project.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from na64_online.sim import simulator as simmod
from na64_online.sim.simulator import (
    CORRUPTION_KINDS,
    EVENT_CORRUPTIONS,
    ReadoutSimulator,
    SimulationConfig,
    write_raw_file,
)
from na64_online.decoders import layout

sys.path.insert(0, str(Path(__file__).parent))
import reference_decoder as ref  # noqa: E402

CMAP = ref.load_channel_map(ref.DEFAULT_MAP_PATH)


def words(data: bytes) -> np.ndarray:
    assert len(data) % 4 == 0
    return np.frombuffer(data, dtype=layout.WORD)


# ---------------------------------------------------------------------------
# A small walker written from the layout module


def walk_events(data: bytes):
    """Yield (offset_words, header words) of every top-level DATE event."""
    w = words(data)
    i = 0
    while i < len(w):
        size = int(w[i + layout.H_SIZE])
        assert w[i + layout.H_MAGIC] == layout.DATE_MAGIC
        assert size % 4 == 0 and size >= layout.DATE_HEADER_BYTES
        yield i, w[i : i + size // 4]
        i += size // 4
    assert i == len(w)


def check_plain_event(ev: np.ndarray, hdr_bytes: int) -> dict:
    """Check a plain (LDC) event to the bit; return {src_id: chip words}."""
    assert ev[layout.H_HEADER_SIZE] == hdr_bytes
    assert ev[layout.H_VERSION] == layout.DATE_VERSION
    assert ev[layout.H_ATTRIBUTES_2] & layout.SUPER_EVENT_BIT == 0
    assert ev[layout.H_GDC] == 0
    assert all(ev[17 : hdr_bytes // 4] == 0)  # extra header words of 80-byte headers
    etype = int(ev[layout.H_TYPE])
    burst_event = layout.BURST_EVENT.unpack(int(ev[layout.H_BURST_EVENT]))
    chips = {}
    i = hdr_bytes // 4
    while i < len(ev):
        size = int(ev[i])
        assert size % 4 == 0 and i + size // 4 <= len(ev)
        assert ev[i + 1] == layout.EQUIPMENT_TYPE_SLINK
        src = int(ev[i + 2])
        assert list(ev[i + 3 : i + 6]) == [0, 0, 0]
        assert ev[i + 6] == layout.EQUIPMENT_ELEMENT_SIZE
        s0 = layout.SLINK_WORD0.unpack(int(ev[i + 7]))
        s1 = layout.SLINK_WORD1.unpack(int(ev[i + 8]))
        assert s0 == {"size": size // 4 - 7, "src_id": src, "type": etype, "error": 0}
        assert s1 == {"event": burst_event["event"], "spill": burst_event["burst"] & 0x7FF, "tcs_mode": 0}
        assert ev[i + 9] == layout.SLINK_WORD2_VALUE == 0x800
        chips[src] = ev[i + 10 : i + size // 4]
        i += size // 4
    assert i == len(ev)
    return chips


def check_msadc(chip: np.ndarray, event: int, samples: int) -> list[tuple[int, int, list[int]]]:
    """Walk MSADC data format 3 strictly; return (port, channel, samples) per channel."""
    out = []
    i = 0
    while i < len(chip):
        h = layout.ADC_HEADER.unpack(int(chip[i]))
        assert h["key"] == layout.ADC_KEY and h["error"] == 0
        assert h["event"] == event & 0xFFF
        end = i + h["size"]
        assert h["size"] > 1 and end <= len(chip)
        j = i + 1
        while j < end:
            c = layout.CHANNEL_HEADER.unpack(int(chip[j]))
            assert c["id"] == 1 and c["zero"] == 0 and c["samples"] == samples
            nw = (samples + 1) // 2
            data = chip[j + 1 : j + 1 + nw]
            s = []
            for k, d in enumerate(data):
                dw = layout.DATA_WORD.unpack(int(d))
                assert dw["marker"] == (1 if k == 0 else 2) and dw["zero"] == 0
                s += [dw["sample_even"], dw["sample_odd"]]
            s = s[:samples]
            assert c["sum"] == sum(s) % 65536
            out.append((h["port"], h["adc_id"] * 16 + c["chan_id"], s))
            j += 1 + nw
        assert j == end
        i = end
    return out


SMALL = SimulationConfig(run=4321, events_per_spill=60, seed=7, spills=2, first_spill=3)


@pytest.fixture(scope="module")
def small_sim():
    return ReadoutSimulator(SMALL)


@pytest.fixture(scope="module")
def small_spills(small_sim):
    return list(small_sim.spills())


# ---------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"events_per_spill": -1}, "events_per_spill"),
        ({"events_per_spill": 1 << 20}, "events_per_spill"),
        ({"first_spill": 0}, "first_spill"),
        ({"first_spill": 4000, "spills": 200}, "12-bit"),
        ({"hadron_fraction": 1.5}, "hadron_fraction"),
        ({"hadron_fraction": 0.7, "muon_fraction": 0.5}, "muon_fraction"),
        ({"beam_only_fraction": 0.6, "physics_only_fraction": 0.6}, "trigger fractions"),
        ({"header_bytes": 72 + 2}, "multiple of 4"),
        ({"header_bytes": 64}, "header_bytes"),
        ({"samples": 4}, "samples"),
        ({"corruption_rates": {"bogus": 0.1}}, "unknown corruption"),
        ({"corruption_rates": {"adc_bad_key": 2}}, r"\[0, 1\]"),
        ({"corruption_rates": {"adc_bad_key": 0.6, "adc_bad_size": 0.6}}, "sum"),
        ({"dead_channels": ((610, 1),)}, "dead_channels"),
        ({"beam_per_spill": 10.0, "events_per_spill": 100}, "beam_per_spill"),
        ({"spill_duration_s": 0}, "spill_duration_s"),
        ({"beam_energy_gev": -5}, "beam_energy_gev"),
        ({"run": "x"}, "run"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimulationConfig(**kwargs)


def test_config_defaults_and_unknown_channel():
    cfg = SimulationConfig()
    assert (cfg.run, cfg.spills, cfg.events_per_spill, cfg.first_spill, cfg.seed) == (1, 1, 1000, 1, 0)
    assert cfg.samples == 32 and cfg.header_bytes == 68 and cfg.super_events and cfg.zero_suppression
    assert cfg.corruption_rates == {}
    hash(cfg)  # frozen and hashable
    with pytest.raises(ValueError, match="not in the channel map"):
        ReadoutSimulator(SimulationConfig(dead_channels=((610, 5, 5),)))


# ---------------------------------------------------------------------------
# Structure, to the bit


@pytest.mark.parametrize("header_bytes, samples, zero_suppression", [(68, 32, True), (80, 33, False)])
def test_super_event_structure(header_bytes, samples, zero_suppression):
    cfg = SimulationConfig(run=77, events_per_spill=25, seed=1, header_bytes=header_bytes, first_spill=2049,
                           samples=samples, zero_suppression=zero_suppression)
    spill = next(ReadoutSimulator(cfg).spills())
    data = spill.raw()
    hw = header_bytes // 4
    types = []
    for n, (_, ev) in enumerate(walk_events(data)):
        etype = int(ev[layout.H_TYPE])
        types.append(etype)
        assert ev[layout.H_HEADER_SIZE] == header_bytes
        assert ev[layout.H_VERSION] == 0x0003000E
        assert ev[layout.H_ATTRIBUTES_2] & layout.SUPER_EVENT_BIT
        assert ev[layout.H_LDC] == 0 and ev[layout.H_GDC] == 1
        assert ev[layout.H_RUN] == 77
        be = layout.BURST_EVENT.unpack(int(ev[layout.H_BURST_EVENT]))
        assert be["burst"] == 2049
        mask = (int(ev[layout.H_TRIGGER_0]) >> 1) | (int(ev[layout.H_TRIGGER_1]) << 31)
        # sub-events
        i, subs = hw, []
        while i < len(ev):
            sub = ev[i : i + int(ev[i]) // 4]
            for k in (layout.H_MAGIC, layout.H_VERSION, layout.H_TYPE, layout.H_RUN, layout.H_EVENT_IN_RUN,
                      layout.H_BURST_EVENT, layout.H_TRIGGER_0, layout.H_TRIGGER_1, layout.H_TIME):
                assert sub[k] == ev[k]
            subs.append((int(sub[layout.H_LDC]), check_plain_event(sub, header_bytes)))
            i += len(sub)
        assert i == len(ev)
        assert [l for l, _ in subs] == [1, 2]
        chips = dict(subs)
        if etype == layout.START_OF_BURST:
            assert n == 0 and be["event"] == 0 and mask == 0
            assert chips == {1: {}, 2: {}}
        elif etype == layout.END_OF_BURST:
            assert be["event"] == 0 and chips[1] == {} and list(chips[2]) == [700]
            sc = dict(zip(layout.SCALER_NAMES, chips[2][700].tolist()))
            assert sc == spill.truth.scalers
            assert sc["beam"] > sc["triggers_accepted"] == 25 and sc["triggers_raw"] >= 25
            assert sc["s0"] >= sc["beam"] and sc["spill_duration_us"] == 4_800_000
        else:
            assert be["event"] == n  # 1, 2, 3, ... without gaps
            assert etype == spill.truth.event_type[n - 1]
            assert mask == spill.truth.trigger_mask[n - 1]
            assert ev[layout.H_TIME] == spill.truth.time[n - 1]
            assert ev[layout.H_EVENT_IN_RUN] == n
            assert list(chips[1]) == [610] and list(chips[2]) == [611, 612, 701]
            assert chips[2][701].tolist() == [spill.truth.trigger_time_us[n - 1]]
            seen = []
            for src in (610, 611, 612):
                for port, ch, s in check_msadc(chips[1 if src == 610 else 2][src], n, samples):
                    seen.append((src, port, ch))
                    assert len(s) == samples and max(s) <= 4095
            assert seen == sorted(seen) and set(seen) <= set(CMAP)
            assert (len(seen) == 120) if not zero_suppression else (41 <= len(seen) <= 120)
            if samples % 2:  # the padding half of the last data word is 0
                last = chips[1][610][-1]
                assert layout.DATA_WORD.unpack(int(last))["sample_odd"] == 0
    assert types[0] == layout.START_OF_BURST and types[-1] == layout.END_OF_BURST
    assert set(types[1:-1]) <= {layout.PHYSICS_EVENT, layout.CALIBRATION_EVENT} and len(types) == 27


def test_ldc_events_and_plain_file_match_super_events(small_spills):
    spill = small_spills[0]
    ldc1, ldc2 = spill.ldc_events(1), spill.ldc_events(2)
    assert len(ldc1) == len(ldc2) == 62
    for events, ldc in ((ldc1, 1), (ldc2, 2)):
        types = [words(e)[layout.H_TYPE] for e in events]
        assert types[0] == layout.START_OF_BURST and types[-1] == layout.END_OF_BURST
        for e in events:
            w = words(e)
            assert w[layout.H_LDC] == ldc and w[layout.H_SIZE] == len(e)
            check_plain_event(w, 68)
    # the super events of the file are made of exactly these sub-events
    rebuilt = []
    for _, ev in walk_events(spill.raw()):
        sub = ev[17:]
        rebuilt.append(sub.tobytes())
    assert rebuilt == [a + b for a, b in zip(ldc1, ldc2)]
    # a file of plain events: the nodes' events in sequence
    plain_cfg = dataclasses.replace(SMALL, super_events=False)
    plain = ReadoutSimulator(plain_cfg).spill(spill.spill)
    assert plain.raw() == b"".join(a + b for a, b in zip(ldc1, ldc2))
    assert b"".join(plain.iter_ldc_events(2)) == b"".join(ldc2)


def test_run_events_and_write_raw_file(tmp_path):
    cfg = SimulationConfig(run=9, events_per_spill=10, spills=3, seed=2)
    path = tmp_path / "cdr.dat"
    truths = write_raw_file(path, cfg)
    assert [t.spill for t in truths] == [1, 2, 3]
    data = path.read_bytes()
    sim = ReadoutSimulator(cfg)
    assert data == b"".join(sim.iter_raw())
    assert data == (sim.run_event(layout.START_OF_RUN) + b"".join(s.raw() for s in sim.spills())
                    + sim.run_event(layout.END_OF_RUN))
    evs = list(walk_events(data))
    first, last = evs[0][1], evs[-1][1]
    for ev, etype in ((first, layout.START_OF_RUN), (last, layout.END_OF_RUN)):
        assert ev[layout.H_TYPE] == etype and ev[layout.H_BURST_EVENT] == 0 and ev[layout.H_EVENT_IN_RUN] == 0
    bursts = [layout.BURST_EVENT.unpack(int(ev[layout.H_BURST_EVENT]))["burst"] for _, ev in evs[1:-1]]
    assert bursts == [1] * 12 + [2] * 12 + [3] * 12
    # event number in run keeps counting over spills
    in_run = [int(ev[layout.H_EVENT_IN_RUN]) for _, ev in evs[1:-1] if ev[layout.H_TYPE] in (7, 8)]
    assert in_run == list(range(1, 31))
    records = ref.qa_records(ref.decode_stream(data, CMAP))
    assert [r["spill"] for r in records] == [1, 2, 3]
    assert all(r["complete"] and r["events"] == 10 and r["decode_errors"] == 0 for r in records)


def test_determinism(small_spills):
    again = ReadoutSimulator(SMALL).spill(3)
    assert again.raw() == small_spills[0].raw()
    assert again.ldc_events(1) == small_spills[0].ldc_events(1)
    other = ReadoutSimulator(dataclasses.replace(SMALL, seed=8)).spill(3)
    assert other.raw() != small_spills[0].raw()
    assert small_spills[0].raw() != small_spills[1].raw()
    # a chunked spill equals its chunks joined, whatever the chunk size
    cfg = SimulationConfig(events_per_spill=2500, seed=4)
    spill = ReadoutSimulator(cfg).spill(1)
    assert b"".join(spill.iter_raw(1)) == b"".join(spill.iter_raw(5000))


# ---------------------------------------------------------------------------
# Physics, through the reference decoder

PHYS = SimulationConfig(
    events_per_spill=400, seed=11, signal_fraction=0.03, hadron_fraction=0.08, muon_fraction=0.03,
    calibration_fraction=0.01, random_fraction=0.02, dead_channels=((610, 1, 0),),
)


@pytest.fixture(scope="module")
def phys():
    spill = ReadoutSimulator(PHYS).spill(1)
    events = ref.decode_stream(spill.raw(), CMAP)
    return spill.truth, events


def test_reference_decoder_reads_it_cleanly(phys):
    truth, events = phys
    (qa,) = ref.qa_records(events)
    assert qa["events"] == 400 and qa["lost_events"] == 0 and qa["decode_errors"] == 0
    assert qa["modules_missing"] == 0 and qa["complete"]
    assert qa["beam"] == truth.scalers["beam"] and qa["triggers_accepted"] == 400
    body = [e for e in events if e["type"] in (7, 8)]
    assert [e["trigger_time_us"] for e in body] == truth.trigger_time_us.tolist()
    assert [e["ldcs"] for e in body] == [[1, 2]] * 400


def test_candidates_are_exactly_the_signal_events(phys):
    truth, events = phys
    (qa,) = ref.qa_records(events)
    assert len(truth.signal_events) >= 3
    assert qa["candidates"] == truth.signal_events
    for e in events:
        if e["type"] == 7 and e["event"] in truth.signal_events:
            assert e["electron"] and 0.5 < e["e_ps"] and 15 < e["e_ecal"] < 50 and e["e_hcal"] == 0


def test_particle_signatures(phys):
    truth, events = phys
    body = {e["event"]: e for e in events if e["type"] in (7, 8)}
    clean = ~truth.pileup
    for n in truth.electron_events:
        e = body[n]
        if not clean[n - 1]:
            continue
        assert 90 < e["e_ecal"] < 110 and 0.3 < e["e_ps"] < 10
        assert e["electron"] and e["e_hcal"] < 1 and max(e["veto"]) < 0.01
        assert all(0.005 < s < 0.05 for s in e["srd"])
        main = {(c["x"], c["y"]): c["energy_gev"] for c in e["channels"] if c["detector"] == "ECAL" and c["module"] == 1}
        assert max(main, key=main.get) == (2, 2) and 0.45 < main[(2, 2)] / sum(main.values()) < 0.8
    hadrons = [body[n] for n in truth.hadron_events if clean[n - 1]]
    assert hadrons and all(e["e_hcal"] > 10 and not e["electron"] for e in hadrons)
    muons = [body[n] for n in truth.muon_events if clean[n - 1]]
    assert muons and all(1 < e["e_hcal"] < 10 and min(e["veto"]) > 0.01 and not e["electron"] for e in muons)
    for n in truth.random_events:
        assert body[n]["trigger_mask"] == 4 and body[n]["e_ecal"] == 0 and body[n]["e_hcal"] == 0
    for n in truth.calibration_events:
        e = body[n]
        assert e["type"] == 8 and e["trigger_mask"] == 8 and len(e["channels"]) == 120
        assert sum(c["amplitude"] > 300 for c in e["channels"]) == 119  # all but the dead one
    # the dead channel is a flat pedestal
    for e in body.values():
        (dead,) = [c for c in e["channels"] if (c["src_id"], c["port"], c["channel"]) == (610, 1, 0)]
        assert len(set(dead["samples"])) == 1
    # measured hadron fraction (E_HCAL > 10 GeV) follows the truth
    (qa,) = ref.qa_records(events)
    assert abs(qa["hadron_fraction"] - truth.hadron_fraction) < 0.02


def test_trigger_mix_and_pulse_shape(phys):
    truth, events = phys
    masks = truth.trigger_mask.tolist()
    assert {3, 2, 1, 4, 8} <= set(masks) and masks.count(3) > 0.6 * len(masks)
    e = next(e for e in events if e["type"] == 7 and e["event"] in truth.electron_events)
    (cell,) = [c for c in e["channels"] if c["detector"] == "ECAL" and c["module"] == 1 and (c["x"], c["y"]) == (2, 2)]
    s = np.array(cell["samples"], dtype=float)
    ped = np.where(np.arange(32) % 2, cell["pedestal_odd"], cell["pedestal_even"])
    assert 100 <= cell["pedestal_even"] <= 420 and np.abs(s[:6] - ped[:6]).max() < 8
    assert 10 <= int(np.argmax(s)) <= 14 and 1500 < cell["amplitude"] < 4095
    # zero suppression: main ECAL always there, quiet channels dropped
    n_ch = [len(ev["channels"]) for ev in events if ev["type"] == 7]
    assert min(n_ch) >= 36 + 5 and np.median(n_ch) < 120


def test_hadron_fraction_truth_follows_config():
    cfg = SimulationConfig(events_per_spill=20000, seed=5, hadron_fraction=0.05, muon_fraction=0.01)
    truth = ReadoutSimulator(cfg).spill(1).truth
    hf = truth.hadron_fraction
    sigma = (0.05 * 0.95 / truth.beam_trigger_events) ** 0.5
    assert abs(hf - 0.05) < 4 * sigma
    counts = truth.counts()
    assert abs(counts["muon"] / 20000 - 0.01) < 0.004
    assert abs(len(truth.calibration_events) / 20000 - cfg.calibration_fraction) < 0.002
    assert truth.scalers["beam"] == pytest.approx(20 * 20000, rel=0.02)
    d = truth.to_dict()
    assert d["hadron_fraction"] == hf and d["counts"]["hadron"] == len(truth.hadron_events)


def test_saturation_with_in_time_pileup():
    cfg = SimulationConfig(events_per_spill=60, seed=3, pileup_probability=1.0, hadron_fraction=0, muon_fraction=0,
                           signal_fraction=0, random_fraction=0, calibration_fraction=0)
    spill = ReadoutSimulator(cfg).spill(1)
    events = [e for e in ref.decode_stream(spill.raw(), CMAP) if e["type"] == 7]
    assert all(spill.truth.pileup)
    saturated = [any(c["saturated"] for c in e["channels"]) for e in events]
    assert 0.1 < np.mean(saturated) < 1.0


def test_noisy_hot_and_drifting_channels():
    noisy, hot, drift = (611, 0, 20), (612, 0, 17), (610, 0, 3)
    cfg = SimulationConfig(events_per_spill=150, spills=3, seed=9, noisy_channels=(noisy,), hot_channels=(hot,),
                           hot_probability=0.5, pedestal_drift_per_spill=30.0, drift_channels=(drift,),
                           dead_channels=((610, 1, 15),), zero_suppression=False, random_fraction=1.0,
                           calibration_fraction=0, beam_only_fraction=0, physics_only_fraction=0)
    sim = ReadoutSimulator(cfg)
    peds, hot_fired, noise = [], [], []
    for spill in sim.spills():
        events = [e for e in ref.decode_stream(spill.raw(), CMAP) if e["type"] == 7]
        chans = [{(c["src_id"], c["port"], c["channel"]): c for c in e["channels"]} for e in events]
        peds.append(np.mean([c[drift]["pedestal_even"] for c in chans]))
        hot_fired += [c[hot]["amplitude"] > 25 for c in chans]
        noise.append(np.std([c[noisy]["samples"][:6] for c in chans]))
        quiet = np.std([c[(611, 0, 21)]["samples"][0::2] for c in chans], axis=1).mean()
        assert quiet < 3
        assert all(len(set(c[(610, 1, 15)]["samples"])) == 1 for c in chans)  # dead: flat pedestal
    assert peds[1] - peds[0] == pytest.approx(30, abs=1) and peds[2] - peds[1] == pytest.approx(30, abs=1)
    assert 0.4 < np.mean(hot_fired) < 0.6
    assert min(noise) > 10


# ---------------------------------------------------------------------------
# Damage: each kind produces exactly the damage it names

EXPECTED_LABEL = {k: k for k in EVENT_CORRUPTIONS}


def corrupted(kind, **extra):
    cfg = SimulationConfig(events_per_spill=24, seed=13, corruption_rates={kind: 1.0}, **extra)
    return ReadoutSimulator(cfg).spill(1)


@pytest.mark.parametrize("kind", [k for k in EVENT_CORRUPTIONS if k not in simmod.EVENT_LEVEL and k != "module_missing"])
def test_equipment_and_chip_corruption(kind):
    spill = corrupted(kind)
    truth = spill.truth
    assert [c.event for c in truth.corruptions] == list(range(1, 25))
    assert {c.kind for c in truth.corruptions} == {kind}
    events = {e["event"]: e for e in ref.decode_stream(spill.raw(), CMAP) if e["type"] in (7, 8)}
    assert len(events) == 24  # damaged, not lost
    for c in truth.corruptions:
        e = events[c.event]
        assert [(src, label) for src, label, _ in e["errors"]] == [(c.src_id, kind)], (c, e["errors"])
        assert c.ldc == (1 if c.src_id == 610 else 2)
    (qa,) = ref.qa_records(list(ref.decode_stream(spill.raw(), CMAP)))
    assert qa["decode_errors"] == 24 and qa["lost_events"] == 0 and qa["complete"]
    # the nodes' streams carry the same damage
    for ldc in (1, 2):
        mine = [c for c in truth.corruptions if c.ldc == ldc]
        decoded = [ref.decode_stream(e, CMAP)[0] for e in spill.ldc_events(ldc)[1:-1]]
        assert sum(len(d["errors"]) for d in decoded) == len(mine)
        for c in mine:
            assert [err[1] for err in decoded[c.event - 1]["errors"]] == [kind]


@pytest.mark.parametrize("kind", sorted(simmod.EVENT_LEVEL))
@pytest.mark.parametrize("super_events", [True, False])
def test_event_level_corruption(kind, super_events):
    spill = corrupted(kind, super_events=super_events)
    truth = spill.truth
    decoded = ref.decode_stream(spill.raw(), CMAP)
    rejected = [e for e in decoded if e["status"] is not None]
    assert [e["status"] for e in rejected] == [kind] * 24
    (qa,) = ref.qa_records(decoded)
    assert qa["decode_errors"] == 24 and qa["complete"]
    if super_events:
        assert qa["events"] == 0  # every super event rejected
        assert truth.rejected_events == list(range(1, 25))
    else:
        # plain events: the other node's event of the trigger still arrives
        accepted = [e for e in decoded if e["type"] in (7, 8)]
        assert len(accepted) == 24
        assert [e["ldcs"] for e in accepted] == [[3 - c.ldc] for c in truth.corruptions]
    for ldc in (1, 2):
        statuses = [ref.decode_stream(e, CMAP)[0]["status"] for e in spill.ldc_events(ldc)[1:-1]]
        assert statuses == [kind if c.ldc == ldc else None for c in truth.corruptions]


def test_module_missing_is_a_placeholder_not_an_error():
    spill = corrupted("module_missing")
    decoded = ref.decode_stream(spill.raw(), CMAP)
    (qa,) = ref.qa_records(decoded)
    assert qa["modules_missing"] == 24 and qa["decode_errors"] == 0 and qa["events"] == 24
    w = words(spill.raw())
    placeholders = 0
    for _, ev in walk_events(spill.raw()):
        for i in range(len(ev)):
            h = layout.ADC_HEADER.unpack(int(ev[i]))
            if h["key"] == 0 and h["size"] == 1 and i > 40:
                placeholders += 1
    assert placeholders >= 24 and len(w) > 0


def test_mixed_corruption_rates():
    rates = {"adc_bad_key": 0.05, "channel_bad_id": 0.05, "event_byte_swapped": 0.05, "module_missing": 0.05}
    spill = ReadoutSimulator(SimulationConfig(events_per_spill=300, seed=21, corruption_rates=rates)).spill(1)
    kinds = [c.kind for c in spill.truth.corruptions]
    assert 30 < len(kinds) < 90 and set(kinds) == set(rates)
    (qa,) = ref.qa_records(ref.decode_stream(spill.raw(), CMAP))
    errors = sum(k != "module_missing" for k in kinds)
    assert qa["decode_errors"] == errors
    assert qa["modules_missing"] == kinds.count("module_missing")
    assert qa["events"] == 300 - kinds.count("event_byte_swapped")


@pytest.mark.parametrize("super_events", [True, False])
def test_truncate_file(tmp_path, super_events):
    cfg = SimulationConfig(events_per_spill=20, spills=2, seed=3, super_events=super_events,
                           corruption_rates={"truncate_file": 1.0})
    path = tmp_path / "cut.dat"
    truths = write_raw_file(path, cfg)
    assert not truths[0].truncated and truths[1].truncated
    assert truths[1].corruptions[-1].kind == "truncate_file" and truths[1].corruptions[-1].event == 20
    data = path.read_bytes()
    decoded = ref.decode_stream(data, CMAP)
    assert decoded[-1]["status"] == "event_truncated"
    records = ref.qa_records(decoded)
    assert [r["complete"] for r in records] == [True, False]
    assert records[1]["beam"] is None
    if super_events:
        assert records[1]["events"] == 19 and truths[1].rejected_events == [20]
    spill = ReadoutSimulator(cfg).spill(2)
    for ldc in (1, 2):
        events = spill.ldc_events(ldc)
        assert len(events) == 21  # SOB + 20 events, the last one cut, no END_OF_BURST
        assert len(events[-1]) < struct.unpack_from("<I", events[-1])[0]


def test_all_kinds_known():
    assert set(CORRUPTION_KINDS) == set(EVENT_CORRUPTIONS) | {"truncate_file"}
