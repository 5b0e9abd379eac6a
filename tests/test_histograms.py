"""monitor.histograms: vectorised filling, exact merging, pickling, JSON, run accumulation and reset."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from monitor_synth import make_spill, record_for

from na64_online.monitor.histograms import (
    TRIGGER_INDEX,
    TRIGGERS,
    HistogramConfig,
    RunHistograms,
    SpillHistograms,
    selections,
)


@pytest.fixture(scope="module")
def spill():
    return make_spill(n=3000, spill=4, seed=1)


def _views(h):
    return {name: np.asarray(x.view(flow=True)).copy() for name, x in h.hists.items()}


def test_fill_counts_match_selections(spill):
    decoded, physics = spill
    h = SpillHistograms()
    h.fill(decoded, physics)
    assert h.run == 1 and h.spill == 4
    assert h.events == int(physics.is_data.sum())
    # selections straight from the physics arrays (the histograms store exclusive event classes)
    expected = {
        "beam": physics.beam_trigger, "physics": physics.physics_trigger,
        "random": physics.is_data & ((decoded.trigger_mask & 4) > 0), "calibration": decoded.type == 8,
        "electron": physics.beam_trigger & physics.electron, "candidate": physics.candidate,
    }
    sel = selections(decoded, physics)
    for trig, want in expected.items():
        assert np.array_equal(sel[TRIGGER_INDEX[trig]], want), trig
        for name in ("e_ecal", "e_ps", "e_hcal", "e_total", "ecal_hcal", "srd", "veto"):
            assert h.entries(name, trig) == int(want.sum()), (name, trig)
    # a spectrum of one selection is the histogram of exactly those events
    beam = physics.beam_trigger
    want = np.histogram(physics.e_hcal[beam], h["e_hcal"].axes[1].edges)[0]
    assert np.array_equal(h.spectrum("e_hcal", "beam", flow=False), want)
    assert np.array_equal(h["e_hcal"].values()[TRIGGER_INDEX["beam"]], want)
    assert h.entries("e_ecal", "beam") == int(physics.beam_trigger.sum())
    assert h.entries("e_ecal", "calibration") == 5
    assert h.entries("e_ecal", "candidate") == 3 and h.entries("e_ecal", "random") > 20
    # the END_OF_BURST row has no trigger time and is no data: every data event is timed here
    assert h.entries("time", "physics") == int(physics.physics_trigger.sum())
    # electrons peak at 100 GeV in E_ECAL
    counts = h.spectrum("e_ecal", "electron", flow=False)
    centers = h["e_ecal"].axes[1].centers
    assert abs(centers[np.argmax(counts)] - 100) < 3


def test_merge_is_exact_and_order_independent(spill):
    decoded, physics = spill
    whole = SpillHistograms()
    whole.fill(decoded, physics)
    parts = []
    for rows in np.array_split(np.arange(decoded.n), 4):
        p = SpillHistograms()
        p.fill(decoded.take(rows), physics.take(rows))
        parts.append(p)
    a = SpillHistograms()
    for p in parts:
        a.merge(p)
    b = pickle.loads(pickle.dumps(parts[3]))  # as from a worker process
    for p in reversed(parts[:3]):
        b.merge(pickle.loads(pickle.dumps(p)))
    for merged in (a, b):
        assert merged.events == whole.events
        assert (merged.run, merged.spill) == (1, 4)
        for name, v in _views(whole).items():
            assert np.array_equal(v, _views(merged)[name]), name


def test_merge_refuses_other_spill_or_binning(spill):
    decoded, physics = spill
    a = SpillHistograms()
    a.fill(decoded, physics)
    other = SpillHistograms()
    d2, p2 = make_spill(n=50, spill=5)
    other.fill(d2, p2)
    with pytest.raises(ValueError):
        a.merge(other)
    c = SpillHistograms(config=HistogramConfig(e_ecal=(100, 0.0, 150.0)))
    with pytest.raises(ValueError):
        a.merge(c)


def test_empty_chunk_and_no_data_rows():
    d, p = make_spill(n=20)
    h = SpillHistograms()
    eob = np.array([d.n - 1])
    h.fill(d.take(eob), p.take(eob))  # END_OF_BURST only: nothing to fill
    assert h.events == 0 and h.run is None
    assert all(x.sum(flow=True) == 0 for x in h.hists.values())


def test_to_json_is_plain_json(spill):
    decoded, physics = spill
    h = SpillHistograms()
    h.fill(decoded, physics)
    out = json.loads(json.dumps(h.to_json()))
    assert out["run"] == 1 and out["spill"] == 4 and out["events"] == h.events
    e = out["histograms"]["e_ecal"]
    assert e["axes"][0]["categories"] == list(TRIGGERS)
    assert len(e["axes"][1]["edges"]) == 301
    assert np.array(e["values"]).shape == (len(TRIGGERS), 300)
    assert e["entries"] == int(h["e_ecal"].sum(flow=True))
    plane = out["histograms"]["ecal_hcal"]
    assert np.array(plane["values"]).shape == (len(TRIGGERS), 75, 75)


def test_run_histograms_accumulate_and_reset():
    run = RunHistograms()
    spills = [make_spill(n=500, run=7, spill=s, seed=s) for s in (1, 2, 3)]
    total = None
    for d, p in spills:
        h = SpillHistograms()
        h.fill(d, p)
        rec = record_for(d, p, candidates=[12], candidate_details=[{"event": 12, "e_ecal": 30.0}])
        run.add(h, rec)
        total = h["e_ecal"].values() if total is None else total + h["e_ecal"].values()
    assert run.run == 7 and run.spills == 3 and (run.first_spill, run.last_spill) == (1, 3)
    assert np.array_equal(run["e_ecal"].values(), total)
    assert run.beam == sum(record_for(d, p)["beam"] for d, p in spills)
    assert run.eot == pytest.approx(sum(record_for(d, p)["eot"] for d, p in spills))
    assert [c["spill"] for c in run.candidates] == [1, 2, 3] and run.candidates[0]["e_ecal"] == 30.0
    assert run.candidates_total == 3
    assert [row["spill"] for row in run.trend] == [1, 2, 3]
    assert run.reset_reason == "start"
    json.dumps(run.to_json())

    # a spill of another run resets first
    d, p = make_spill(n=300, run=8, spill=1)
    h = SpillHistograms()
    h.fill(d, p)
    run.add(h, record_for(d, p))
    assert run.run == 8 and run.spills == 1 and run.reset_reason == "new run"
    assert run.events == h.events
    assert np.array_equal(run["e_ecal"].values(), h["e_ecal"].values())

    # operator reset empties everything, keeps the run
    run.reset()
    assert run.reset_reason == "operator" and run.run == 8 and run.spills == 0 and run.eot == 0
    assert all(x.sum(flow=True) == 0 for x in run.hists.values())
    assert run.trend == [] and run.candidates == []


def test_time_profile_shows_a_spike():
    d, p = make_spill(n=3000, spike=(1.0e6, 400))
    h = SpillHistograms()
    h.fill(d, p)
    counts = h.spectrum("time", "physics", flow=False)
    centers = h["time"].axes[1].centers
    assert abs(centers[np.argmax(counts)] - 1.0e6) <= 1.0e4
    assert counts.max() > 10 * np.median(counts[counts > 0])


def test_real_decoder_vectors(channel_map):
    """The spec's test vector through the lead's pipeline with SpillHistograms as an extension."""
    from conftest import VECTORS

    from na64_online.decoders.decode import as_words
    from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor

    proc = SpillProcessor(MonitorConfig(chunk_events=7), channel_map, extensions={"hist": SpillHistograms})
    words, _ = as_words((VECTORS / "small.dat").read_bytes())
    acc = proc.accumulate(words)
    record = proc.finish(acc).to_dict()
    expected = json.loads((VECTORS / "small.qa.json").read_text())
    h = acc.extensions["hist"]
    assert (h.run, h.spill) == (expected["run"], expected["spill"])
    assert h.events == expected["events"] == record["events"]
    assert h.entries("e_ecal", "beam") == record["beam_events"]
    assert h.entries("e_ecal", "candidate") == len(expected["candidates"])
    beam = h["e_hcal"].values()[TRIGGER_INDEX["beam"]]
    edges = h["e_hcal"].axes[1].edges
    assert int(beam[edges[:-1] >= 10].sum()) == record["hadron_events"]


def test_trigger_histograms_sum_the_class_counts_of_each_selection(spill):
    """``hists`` (trigger axis) = the sum of the class-coded counts over the classes of each trigger, for the
    2-d plane too (the storage is column-major: its flattening must not mix the two value axes)."""
    from na64_online.monitor.histograms import MEMBERSHIP

    decoded, physics = spill
    h = SpillHistograms()
    h.fill(decoded, physics)
    for name, public in h.hists.items():
        coded = np.asarray(h._coded[name].view(flow=True))
        for t in range(len(TRIGGERS)):
            want = coded[MEMBERSHIP[t].astype(bool)].sum(axis=0)
            assert np.array_equal(np.asarray(public.view(flow=True))[t], want), (name, TRIGGERS[t])
    assert np.asarray(h.hists["ecal_hcal"].view(flow=True)).sum() > 0
