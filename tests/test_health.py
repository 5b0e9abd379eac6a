"""monitor.health: exact channel statistics, and dead / hot / noisy / drifting channels found
against each channel's own history within the configured spills, cleared when fixed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from monitor_synth import PHYSICS, make_spill

from na64_online.monitor.health import ChannelHistory, ChannelStats, HealthConfig


def _stats(decoded, nslots=120):
    s = ChannelStats(nslots)
    s.fill(decoded)
    return s


def test_channel_stats_exact():
    d, _ = make_spill(n=1500, seed=3, hot=[4])
    d.nsamples[::3, 7] = 0  # slot 7 zero-suppressed in a third of the events
    d.nsamples[:, 9] = 0  # slot 9 never read out
    s = _stats(d)
    sel = d.type == PHYSICS
    assert s.events == sel.sum() and (s.run, s.spill) == (1, 1)
    pres = (d.nsamples > 0) & sel[:, None]
    assert np.array_equal(s.present, pres.sum(axis=0))
    for slot in (0, 4, 7, 50):
        p = pres[:, slot]
        pe = d.pedestal_even[p, slot]
        po = d.pedestal_odd[p, slot]
        mean, rms = s.pedestal_even
        assert mean[slot] == pytest.approx(pe.mean(), rel=1e-12)
        assert rms[slot] == pytest.approx(pe.std(), rel=1e-6)
        assert s.pedestal_odd[1][slot] == pytest.approx(po.std(), rel=1e-6)
        hits = p & (d.amplitude[:, slot] > 20)
        assert s.hits[slot] == hits.sum()
        assert s.occupancy[slot] == pytest.approx(hits.sum() / sel.sum())
        assert s.amplitude[0][slot] == pytest.approx(d.amplitude[hits, slot].mean(), rel=1e-12)
        assert s.saturation_rate[slot] == pytest.approx((p & d.saturated[:, slot]).sum() / sel.sum())
    assert s.occupancy[4] > 0.85  # hot
    assert s.presence[7] == pytest.approx(2 / 3, abs=0.01)
    assert np.isnan(s.pedestal_even[0][9]) and s.presence[9] == 0
    out = s.to_json()
    assert out["pedestal_even"][9] is None and out["events"] == s.events


def test_channel_stats_merge_and_pickle():
    d, _ = make_spill(n=2000, seed=4)
    whole = _stats(d)
    merged = ChannelStats(120)
    for rows in np.array_split(np.arange(d.n), 5):
        part = ChannelStats(120)
        part.fill(d.take(rows))
        merged.merge(pickle.loads(pickle.dumps(part)))
    assert merged.events == whole.events
    assert np.array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
    with pytest.raises(ValueError):
        merged.merge(ChannelStats(121))


def _run(history, spills):
    """Feed (decoded, physics) spills; returns per spill the set of (kind, slot) findings."""
    out = []
    for d, _ in spills:
        report = history.update(_stats(d))
        out.append({(f.kind, f.slot) for f in report.findings})
    return out


CFG = HealthConfig(min_events=500, raise_after=2, clear_after=1, min_history=3)


@pytest.fixture(scope="module")
def channel_map_():
    from na64_online.decoders.channelmap import ChannelMap

    return ChannelMap.default()


def test_dead_hot_noisy_raise_within_config_and_clear(channel_map_):
    dead, hot, noisy = 10, 75, 40
    spills = []
    for s in range(1, 11):
        faulty = 5 <= s <= 7
        spills.append(make_spill(n=1000, spill=s, seed=s, dead=[dead] if faulty else [],
                                 hot=[hot] if faulty else [], noisy=[noisy] if faulty else []))
    history = ChannelHistory(channel_map_, CFG)
    found = _run(history, spills)
    expect = {("dead", dead), ("hot", hot), ("noisy", noisy)}
    for s, f in enumerate(found, start=1):
        if s in (6, 7):  # fault from spill 5, raise_after = 2
            assert expect <= f, (s, f)
            assert {k for k in f if k[0] != "hot" or k[1] != noisy} == expect, (s, f)
        else:
            assert f == set(), (s, f)
    # the finding carries the channel's place and numbers
    report = history.update(_stats(make_spill(n=1000, spill=11, seed=11, dead=[dead])[0]))
    assert report.findings == ()  # first bad spill: not raised yet
    report = history.update(_stats(make_spill(n=1000, spill=12, seed=12, dead=[dead])[0]))
    (f,) = report.findings
    assert (f.slot, f.kind, f.detector, f.module, f.x, f.y) == (10, "dead", "ECAL", 0, 4, 1)
    assert f.value == 0.0 and f.reference > 0.05 and f.spills == 2 and f.since == (1, 12)
    assert "flat pedestal" in f.detail and f.to_dict()["since"] == [1, 12]
    assert report.raised == report.findings


def test_pedestal_drift_against_frozen_baseline(channel_map_):
    slot, step = 20, 1.5
    spills = [make_spill(n=800, spill=s, seed=s, pedestal_shift={slot: step * (s - 1)}) for s in range(1, 9)]
    spills += [make_spill(n=800, spill=s, seed=s) for s in (9, 10)]  # fixed
    found = _run(ChannelHistory(channel_map_, CFG), spills)
    # baseline = median of spills 1-3 (+1.5); |shift| > 5 from spill 6 on, raised at 7
    assert found[:6] == [set()] * 6
    assert found[6] == found[7] == {("drifting", slot)}
    assert found[8] == found[9] == set()


def test_flat_channel_is_dead_without_history(channel_map_):
    spills = [make_spill(n=600, spill=s, seed=s, dead=[3]) for s in (1, 2)]
    found = _run(ChannelHistory(channel_map_, CFG), spills)
    assert found == [set(), {("dead", 3)}]


def test_too_few_events_not_judged(channel_map_):
    h = ChannelHistory(channel_map_, CFG)
    for s in (1, 2):
        h.update(_stats(make_spill(n=600, spill=s, seed=s, dead=[3])[0]))
    report = h.update(_stats(make_spill(n=100, spill=3, seed=3)[0]))
    assert not report.judged and {f.kind for f in report.findings} == {"dead"}
    assert h.update(_stats(make_spill(n=600, spill=4, seed=4)[0])).cleared[0].slot == 3
    h.reset()
    assert h.findings == [] and h.spills_judged == 0


def test_rebaseline_accepts_a_new_pedestal(channel_map_):
    h = ChannelHistory(channel_map_, CFG)
    for s in range(1, 5):
        h.update(_stats(make_spill(n=600, spill=s, seed=s)[0]))
    shifted = {7: 12.0}
    for s in (5, 6):
        report = h.update(_stats(make_spill(n=600, spill=s, seed=s, pedestal_shift=shifted)[0]))
    assert {(f.kind, f.slot) for f in report.findings} == {("drifting", 7)}
    h.rebaseline([7])
    for s in range(7, 11):
        report = h.update(_stats(make_spill(n=600, spill=s, seed=s, pedestal_shift=shifted)[0]))
    assert report.findings == ()


# ---------------------------------------------------------------------------- simulator, end to end

DEAD = ((610, 0, 13), (610, 1, 7))  # preshower (1,2): zero-suppressed; main ECAL (1,1): always read out
HOT = ((611, 0, 5),)  # HCAL module 0 (2,1)
NOISY = ((610, 1, 30),)  # main ECAL (0,5), always read out
DRIFT = ((610, 1, 0),)  # main ECAL (0,0)


def test_simulated_run_end_to_end(channel_map):
    """Simulator spills through the lead's SpillProcessor: faults in spills 5-7 raised at 6, cleared at 8;
    a 1.5 ADC/spill pedestal drift raised at 7 and cleared when it stops."""
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
    from na64_online.decoders.decode import as_words
    from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor

    base = dict(seed=11, spills=9, events_per_spill=900)
    drift = dict(pedestal_drift_per_spill=1.5, drift_channels=DRIFT)
    sims = {
        "drift": ReadoutSimulator(SimulationConfig(**base, **drift), channel_map),
        "faulty": ReadoutSimulator(
            SimulationConfig(**base, **drift, dead_channels=DEAD, hot_channels=HOT, noisy_channels=NOISY), channel_map),
        "fixed": ReadoutSimulator(SimulationConfig(**base), channel_map),
    }
    proc = SpillProcessor(MonitorConfig(), channel_map, extensions={"stats": ChannelStats})
    history = ChannelHistory(channel_map, CFG)
    slot = {a: int(channel_map.lookup[channel_map.address(*a)]) for a in DEAD + HOT + NOISY + DRIFT}
    found = []
    for s in range(1, 10):
        sim = sims["drift" if s <= 4 else "faulty" if s <= 7 else "fixed"]
        words, _ = as_words(sim.spill(s).raw())
        acc = proc.accumulate(words)
        report = history.update(acc.extensions["stats"])
        assert report.judged
        found.append({(f.kind, f.slot) for f in report.findings})
    faults = {("dead", slot[a]) for a in DEAD} | {("hot", slot[a]) for a in HOT} | {("noisy", slot[a]) for a in NOISY}
    drifting = {("drifting", slot[a]) for a in DRIFT}
    assert found[:5] == [set()] * 5, found[:5]
    assert faults <= found[5] and not drifting & found[5], found[5]
    assert faults | drifting <= found[6], found[6]
    # a noisy channel also fires above threshold (hot): allowed, nothing else
    extra = found[6] - faults - drifting
    assert extra <= {("hot", slot[a]) for a in NOISY}, extra
    assert found[7] == found[8] == set(), found[7:]


@pytest.mark.parametrize("kind", ["super events, corrupt", "plain-event fragments"])
def test_statistics_summed_by_the_decoder_equal_a_separate_fill(channel_map, kind):
    """``SpillProcessor.accumulate`` lets the decoder add the channel statistics while it decodes (chunks of
    whole events) and falls back to ``ChannelStats.fill`` for chunks of plain-event fragments: either way
    the counts and sums equal one ``fill`` over the whole decoded spill, bit for bit."""
    from na64_online.decoders.decode import as_words, decode_events, fragment_starts, index_events, merge_fragments
    from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

    extra = ({"corruption_rates": {"channel_bad_samples": 0.02, "data_bad_marker": 0.02, "adc_bad_key": 0.02},
              "noisy_channels": ((611, 0, 4),)} if kind.startswith("super") else {"super_events": False})
    sim = ReadoutSimulator(SimulationConfig(events_per_spill=700, seed=3, **extra), channel_map)
    words, _ = as_words(sim.spill(1).raw())
    ways = []

    class Spy(ChannelStats):
        def fill(self, decoded, physics=None, select=None, summed=False):
            ways.append(summed)
            super().fill(decoded, physics, select, summed)

    proc = SpillProcessor(MonitorConfig(chunk_events=256), channel_map, extensions={"stats": Spy})
    got = proc.accumulate(words).extensions["stats"]
    assert len(ways) >= 3 and all(ways) == kind.startswith("super") and any(ways) == kind.startswith("super")
    index = index_events(words)
    want = ChannelStats(channel_map)
    want.fill(merge_fragments(decode_events(words, index, channel_map), fragment_starts(index)))
    assert got.events == want.events > 500
    assert np.array_equal(got.counts, want.counts) and np.array_equal(got.sums, want.sums)
    assert want.counts[0].sum() > 0 and want.counts[1].sum() > 0


def test_row_nanmedian_is_numpys_nanmedian():
    """The history median equals ``np.nanmedian`` bit for bit: odd and even counts of values, NaN gaps,
    ±inf, ±0, huge values (whose doubled middle overflows, as numpy's does)."""
    import warnings

    from na64_online.monitor.health import row_nanmedian

    rng = np.random.default_rng(5)
    for columns in (1, 2, 5, 8, 30):
        values = rng.normal(100.0, 3.0, (400, columns)).round(rng.integers(0, 4))
        special = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.7e308, -1.7e308], size=values.shape)
        pick = rng.random(values.shape)
        values = np.where(pick < 0.3, special, values)
        values[np.all(np.isnan(values), axis=1), 0] = 1.0  # the caller asks only rows with a value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.nanmedian(values, axis=1)
        got = row_nanmedian(values)
        assert np.array_equal(got, want, equal_nan=True), columns


def _numpy_slot_sums(nsamples, pe, po, amp, sat, select, threshold, counts, sums):
    """The slow obvious reference: each selected row's read-out slots added in row order with numpy."""
    for i in np.flatnonzero(select):
        m = nsamples[i] != 0
        a, b, x = pe[i, m], po[i, m], amp[i, m]
        h = x > threshold
        xh = x * h
        counts[:, m] += np.array([np.ones_like(h), h, sat[i, m]], dtype=np.int64)
        sums[:, m] += np.array([a, a * a, b, b * b, xh, xh * xh])


@pytest.mark.parametrize("slots", [120, 13, 3])
def test_per_slot_statistics_equal_a_row_by_row_numpy_sum(slots):
    """``add_slot_sums`` (what the decoder and ``ChannelStats.fill`` both run) equals adding each row's read-out
    slots in row order with numpy, bit for bit: random pedestals and amplitudes (negative ones too), thresholds
    below and above 0, absent slots holding anything (they must not count)."""
    import numba

    from na64_online.decoders._kernels import add_slot_sums

    @numba.njit
    def run(nsamples, pe, po, amp, sat, threshold, counts, sums):
        for i in range(nsamples.shape[0]):
            add_slot_sums(i, nsamples, pe, po, amp, sat, threshold, counts, sums)

    rng = np.random.default_rng(slots)
    rows = 300
    nsamples = np.where(rng.random((rows, slots)) < 0.6, rng.integers(1, 40, (rows, slots)), 0).astype(np.uint16)
    pe, po = rng.normal(250.0, 60.0, (2, rows, slots))
    amp = rng.normal(30.0, 200.0, (rows, slots))
    sat = rng.random((rows, slots)) < 0.1
    for threshold in (20.0, -15.0):
        counts, sums = np.zeros((3, slots), np.int64), np.zeros((6, slots))
        run(nsamples, pe, po, amp, sat, threshold, counts, sums)
        want_counts, want_sums = np.zeros((3, slots), np.int64), np.zeros((6, slots))
        _numpy_slot_sums(nsamples, pe, po, amp, sat, np.ones(rows, bool), threshold, want_counts, want_sums)
        assert np.array_equal(counts, want_counts)
        assert sums.tobytes() == want_sums.tobytes()


@pytest.mark.parametrize("chunk", [1, 97, 4096])
def test_decoder_slot_sums_equal_numpy_over_its_outputs(channel_map, chunk):
    """``decode_events(..., slot_sums=)``: the sums it adds (prior values kept, rows picked by ``select``) equal
    the numpy reference over the outputs it returns, bit for bit, chunk after chunk into the same buffers
    (zero-suppressed and full-readout rows, damaged channels, a negative hit threshold)."""
    from na64_online.decoders.decode import DecodeBuffers, SlotSums, as_words, decode_events, index_events
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

    rng = np.random.default_rng(chunk)
    sim = ReadoutSimulator(SimulationConfig(events_per_spill=500, seed=7, zero_suppression=chunk != 97,
                                            corruption_rates={"channel_bad_samples": 0.02, "data_bad_marker": 0.02}),
                           channel_map)
    words, _ = as_words(sim.spill(1).raw())
    index = index_events(words)
    nslots = len(channel_map)
    counts, sums = rng.integers(0, 50, (3, nslots)), rng.normal(0.0, 100.0, (6, nslots))
    want_counts, want_sums = counts.copy(), sums.copy()
    buffers = DecodeBuffers()
    for start in range(0, len(index), chunk):
        part = index.slice(start, min(start + chunk, len(index)))
        select = rng.random(len(part)) < 0.7
        d = decode_events(words, part, channel_map, buffers=buffers,
                          slot_sums=SlotSums(select, -3.0 if chunk == 1 else 25.0, counts, sums))
        _numpy_slot_sums(d.nsamples, d.pedestal_even, d.pedestal_odd, d.amplitude, d.saturated, select,
                         -3.0 if chunk == 1 else 25.0, want_counts, want_sums)
    assert np.array_equal(counts, want_counts) and want_counts[0].sum() > counts.size
    assert sums.tobytes() == want_sums.tobytes()
