"""monitor.quality: states and worst-of roll-ups, thresholds, NO_DATA, reference chi-square comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monitor_synth import make_spill, record_for

from na64_online.monitor.health import ChannelFinding
from na64_online.monitor.histograms import RunHistograms, SpillHistograms
from na64_online.monitor.quality import (
    SUBSYSTEMS,
    QualityConfig,
    QualityState,
    assess,
    compare_spectra,
    merge_sparse_bins,
)

G, N, W, B = QualityState.GOOD, QualityState.NO_DATA, QualityState.WARNING, QualityState.BAD


def spill(**kw):
    d, p = make_spill(**{"n": 3000, **kw})
    h = SpillHistograms()
    h.fill(d, p)
    return record_for(d, p), h


@pytest.fixture(scope="module")
def good():
    return spill(seed=1)


@pytest.fixture(scope="module")
def reference():
    run = RunHistograms()
    for s in (11, 12):
        run.add(spill(seed=s, spill=s)[1])
    return run


def test_state_order_and_worst():
    assert G < N < W < B
    assert QualityState.worst([G, N, G]) == N
    assert QualityState.worst([G, W, N]) == W
    assert QualityState.worst([B, W]) == B
    assert QualityState.worst([]) == N


def test_good_spill_is_good(good, reference):
    record, h = good
    q = assess(record, h, [], reference=reference)
    bad = [c.to_dict() for c in q.checks if c.state != G]
    assert q.overall == G, bad
    assert set(q.subsystems) == set(SUBSYSTEMS) and all(s == G for s in q.subsystems.values())
    names = {c.name for c in q.checks}
    assert {"daq.complete", "daq.decode_errors", "daq.dead_time", "beam.intensity", "beam.hadron_fraction",
            "beam.time_profile", "srd.electron_tag", "ecal.energy_scale", "ecal.e_ecal_vs_reference",
            "hcal.e_hcal_vs_reference", "ecal.channels", "veto.channels"} <= names
    assert q.check("ecal.e_ecal_vs_reference").value > 1e-3
    assert q.check("ecal.energy_scale").value == pytest.approx(100, abs=1)
    out = json.loads(json.dumps(q.to_dict()))
    assert out["overall"] == "GOOD" and out["subsystems"]["daq"] == "GOOD"
    assert q.alarms() == []


def test_without_histograms_findings_or_reference_checks_are_left_out(good):
    record, _ = good
    q = assess(record)
    names = {c.name for c in q.checks}
    assert not any(n.endswith("_vs_reference") or n.endswith(".channels") for n in names)
    assert "beam.time_profile" not in names and "ecal.energy_scale" not in names
    assert q.subsystems["ecal"] == N and q.subsystems["beam"] == G  # nothing judged the ECAL


def test_too_few_events_is_no_data():
    record, h = spill(n=120, seed=2)
    record.update(beam=None, triggers_accepted=None, triggers_raw=None, dead_time_fraction=None, complete=False)
    q = assess(record, h, [])
    assert q.check("beam.intensity").state == N
    assert q.check("beam.hadron_fraction").state == N
    assert q.check("beam.time_profile").state == N
    assert q.check("ecal.energy_scale").state == N
    assert q.check("daq.complete").state == W
    assert q.subsystems["beam"] == N and q.subsystems["daq"] == W and q.overall == W


@pytest.mark.parametrize("hf,state", [(0.01, G), (0.08, W), (0.3, B)])
def test_hadron_fraction_thresholds(good, hf, state):
    record = dict(good[0], hadron_fraction=hf, hadron_fraction_srd=hf)
    q = assess(record)
    assert q.check("beam.hadron_fraction").state == state
    assert q.subsystems["beam"] == state


def test_srd_tag_inefficiency(good):
    record = dict(good[0], hadron_fraction=0.02, hadron_fraction_srd=0.12)
    assert assess(record).check("srd.electron_tag").state == W
    record["hadron_fraction_srd"] = 0.5
    assert assess(record).subsystems["srd"] == B


def test_daq_checks(good):
    base = good[0]
    cases = [
        (dict(decode_errors=100), "daq.decode_errors", B),  # 100 / 3000 > 1 %
        (dict(decode_errors=1), "daq.decode_errors", W),
        (dict(lost_events=10), "daq.lost_events", W),
        (dict(modules_missing=3), "daq.modules_missing", W),
        (dict(lost_messages={"total": 2, "by_ldc": {"1": 2}}), "daq.lost_messages", W),
        (dict(dropped_events=500), "daq.dropped_events", B),
        (dict(dead_time_fraction=0.45), "daq.dead_time", W),
        (dict(dead_time_fraction=0.8), "daq.dead_time", B),
        (dict(triggers_accepted=4000), "daq.trigger_count", B),  # 3000 events for 4000 triggers
        (dict(complete=False), "daq.complete", W),
    ]
    for change, name, state in cases:
        q = assess(dict(base, **change))
        assert q.check(name).state == state, (change, q.check(name))
        assert q.subsystems["daq"] == state and q.overall == state
        alarm = next(a for a in q.alarms() if a["name"] == name)
        assert alarm["severity"] == {W: "warning", B: "critical"}[state] and alarm["detail"]
        assert alarm["state"] == state.name


def test_beam_intensity_range(good):
    base = good[0]
    assert assess(dict(base, beam=500)).check("beam.intensity").state == W
    assert assess(dict(base, beam=0)).check("beam.intensity").state == B
    assert assess(dict(base, beam=3e7)).check("beam.intensity").state == W
    cfg = QualityConfig(beam_range_warning=(1e6, 2e7))
    assert assess(base, config=cfg).check("beam.intensity").state == W


def test_channel_findings_roll_up(good):
    record, h = good

    def finding(detector, slot, kind="dead"):
        return ChannelFinding(slot, detector, 0, 0, 0, kind, 0.0, 0.5, 2, (1, 1))

    q = assess(record, h, [finding("ECAL", 3)])
    assert q.check("ecal.channels").state == W and q.subsystems["ecal"] == W
    hcal = [finding("HCAL", 80), finding("HCAL", 81, "hot"), finding("HCAL", 82, "noisy"),
            finding("HCAL", 82, "hot")]
    q = assess(record, h, hcal + [finding("S", 118, "noisy")])
    assert q.check("hcal.channels").state == B and q.check("hcal.channels").value == 3
    assert q.check("beam.channels").state == W
    assert q.overall == B
    # dicts (as archived) work too
    q = assess(record, h, [finding("VETO", 111).to_dict()])
    assert q.subsystems["veto"] == W


def test_reference_comparison_finds_an_energy_scale_shift(reference):
    record, h = spill(seed=3, energy_scale=0.9)
    q = assess(record, h, [], reference=reference)
    c = q.check("ecal.e_ecal_vs_reference")
    assert c.state == B and c.value < 1e-6 and "chi2/ndf" in c.detail
    assert q.check("ecal.energy_scale").state == W  # 10 % low
    assert q.check("hcal.e_hcal_vs_reference").state == G
    assert q.subsystems["ecal"] == B and q.overall == B


def test_reference_needs_entries(good):
    record, h = good
    empty = RunHistograms()
    assert assess(record, h, [], reference=empty).check("ecal.e_ecal_vs_reference").state == N


def test_time_profile_spike():
    record, h = spill(seed=5, spike=(0.3e6, 600))
    c = assess(record, h).check("beam.time_profile")
    assert c.state == W and c.value > 5 and "300 ms" in c.detail


def test_compare_spectra_and_bin_merging():
    rng = np.random.default_rng(0)
    edges = np.linspace(0, 10, 101)
    a = np.histogram(rng.normal(5, 1, 20000), edges)[0]
    b = np.histogram(rng.normal(5, 1, 5000), edges)[0]
    c = np.histogram(rng.normal(5.3, 1, 5000), edges)[0]
    _, dof, p_same = compare_spectra(a, b)
    assert p_same > 1e-3 and dof > 20
    assert compare_spectra(a, c)[2] < 1e-10
    assert compare_spectra(a, a)[2] == pytest.approx(1.0)
    ma, mb = merge_sparse_bins(a, b, 10)
    assert ma.sum() == a.sum() and mb.sum() == b.sum() and np.all(ma + mb >= 10)
    assert np.isnan(compare_spectra(np.zeros(5), b[:5])[2])


def test_config_validation():
    with pytest.raises(ValueError):
        QualityConfig(hadron_fraction_warning=0.2, hadron_fraction_bad=0.1)
    with pytest.raises(ValueError):
        QualityConfig(reference_p_warning=1e-6, reference_p_bad=1e-3)


def test_simulated_spill_through_pipeline_is_good(channel_map):
    """A clean simulated spill, decoded by the lead's pipeline, is GOOD everywhere."""
    from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
    from na64_online.decoders.decode import as_words
    from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor

    sim = ReadoutSimulator(SimulationConfig(seed=2, spills=2, events_per_spill=3000), channel_map)
    proc = SpillProcessor(MonitorConfig(), channel_map, extensions={"hist": SpillHistograms})
    parts = []
    for s in (1, 2):
        acc = proc.accumulate(as_words(sim.spill(s).raw())[0])
        parts.append((proc.finish(acc).to_dict(), acc.extensions["hist"]))
    (record, h), (_, ref) = parts
    q = assess(record, h, [], reference=ref)
    assert q.overall == G, [c.to_dict() for c in q.checks if c.state != G]


def test_reference_from_archived_histograms(good, reference):
    """The archive's {name: hist.Hist} of a chosen spill serves as reference (and as the spill's histograms)."""
    from na64_online.monitor.archive import decode_histogram, encode_histogram

    record, h = good
    archived = {name: decode_histogram(encode_histogram(x)) for name, x in reference.hists.items()}
    q1 = assess(record, h, [], reference=reference)
    q2 = assess(record, {n: decode_histogram(encode_histogram(x)) for n, x in h.hists.items()}, [],
                reference=archived)
    assert q1.to_dict() == q2.to_dict()
    assert q2.check("ecal.e_ecal_vs_reference").state == G
