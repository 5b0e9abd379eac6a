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


def test_run_trend_keeps_the_newest_spills_and_a_snapshot_does_not_change_after_it():
    """``trend_spills`` (``[monitor]``) bounds the per-spill rows of a run that never changes number; the totals count
    every spill, and the JSON a spill's snapshot took is not changed by the spills added after it."""
    run = RunHistograms(trend_spills=2)
    records = []
    for s in (1, 2, 3, 4):
        d, p = make_spill(n=300, run=7, spill=s, seed=s)
        h = SpillHistograms()
        h.fill(d, p)
        records.append(record_for(d, p, candidates=[s], candidate_details=[{"event": s}]))
        run.add(h, records[-1])
        if s == 3:
            taken = run.to_json()
            frozen = json.dumps(taken, sort_keys=True)
    assert [row["spill"] for row in run.trend] == [3, 4]
    assert run.spills == 4 and run.candidates_total == 4 and [c["spill"] for c in run.candidates] == [1, 2, 3, 4]
    assert run.eot == pytest.approx(sum(r["eot"] for r in records))
    assert run.beam == sum(r["beam"] for r in records)
    assert [row["spill"] for row in taken["trend"]] == [2, 3] and len(taken["candidates"]) == 3
    assert json.dumps(taken, sort_keys=True) == frozen


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


# ---------------------------------------------------------------- the fill kernel against boost-histogram's fills
from types import SimpleNamespace  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _assert_same_counts(a: SpillHistograms, b: SpillHistograms) -> None:
    assert a.events == b.events and (a.run, a.spill) == (b.run, b.spill)
    for name in a._coded:
        assert np.array_equal(np.asarray(a._coded[name].view(flow=True)), np.asarray(b._coded[name].view(flow=True))), name


def test_fill_kernel_counts_what_boost_histogram_counts(spill):
    """The one-pass fill kernel and boost-histogram's own fills (``fill_numpy``) give the same storages, bin
    for bin (flow bins included), chunk after chunk; the trigger view and JSON follow."""
    decoded, physics = spill
    kernel, reference = SpillHistograms(), SpillHistograms()
    for rows in (slice(0, 1000), slice(1000, 3000)):
        part_d, part_p = decoded.take(np.arange(3000)[rows]), physics.take(np.arange(3000)[rows])
        kernel.fill(part_d, part_p)
        reference.fill_numpy(part_d, part_p)
        _assert_same_counts(kernel, reference)
    assert kernel.to_json() == reference.to_json()
    again = pickle.loads(pickle.dumps(kernel))  # the flat storage views are not pickled: a copy fills its own
    again.fill(decoded, physics)
    reference.fill_numpy(decoded, physics)
    _assert_same_counts(again, reference)


_EDGES = [0.0, -0.0, 0.5, 1.0, 1e-300, 0.05, 0.3, 50.0, 100.0, 150.0, 200.0, 6.0e6, 149.99999999999997]
_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(_EDGES),
                    st.sampled_from([np.nextafter(e, np.inf) for e in _EDGES] + [np.nextafter(e, -np.inf) for e in _EDGES]),
                    st.floats(-1.0, 250.0))
_AXIS = st.tuples(st.integers(1, 400), st.sampled_from([0.0, -1.0, 0.1, 3.0]), st.sampled_from([0.05, 0.3, 7.0, 150.0, 1e7]))


@pytest.mark.fuzz
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), n=st.integers(1, 40), srd_modules=st.integers(0, 3), veto_modules=st.integers(0, 3))
def test_fill_kernel_bins_as_boost_histogram_does_at_edges_nan_and_infinity(data, n, srd_modules, veto_modules):
    """Any values (bin edges and their neighbours, ±0, NaN, ±infinity, far outside) and any binning: the kernel
    puts every event where boost-histogram does (underflow, bin, overflow), in the same event class."""
    axes = {name: data.draw(_AXIS.filter(lambda a: a[2] > a[1]), label=name) for name in
            ("e_ecal", "e_ps", "e_hcal", "e_total", "plane", "srd", "veto")}
    config = HistogramConfig(**axes)
    bools = lambda: np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)  # noqa: E731
    floats = lambda *shape: np.array(data.draw(st.lists(_VALUES, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),  # noqa: E731
                                     dtype=np.float64).reshape(shape)
    is_data = bools()
    is_data[0] = True
    physics = SimpleNamespace(
        is_data=is_data, beam_trigger=bools(), physics_trigger=bools(), electron=bools(), candidate=bools(),
        e_ecal=floats(n), e_ps=floats(n), e_hcal=floats(n), e_wcal=floats(n), srd=floats(n, srd_modules),
        veto=floats(n, veto_modules))
    decoded = SimpleNamespace(
        trigger_mask=np.array(data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n)), dtype=np.uint32),
        type=np.array(data.draw(st.lists(st.sampled_from([7, 8, 6, 5]), min_size=n, max_size=n)), dtype=np.int32),
        trigger_time_us=np.array(data.draw(st.lists(st.integers(-1, 7_000_000), min_size=n, max_size=n)), dtype=np.int64),
        run=np.ones(n, dtype=np.int64), spill=np.full(n, 3, dtype=np.int64))
    kernel, reference = SpillHistograms(config=config), SpillHistograms(config=config)
    kernel.fill(decoded, physics)
    reference.fill_numpy(decoded, physics)
    _assert_same_counts(kernel, reference)


def test_trigger_view_is_the_integer_product_of_membership_and_class_counts():
    """The trigger view's kernel sums equal numpy's integer ``MEMBERSHIP @ counts`` per bin, the 2-d plane
    included, for counts large enough that float64 could not hold their sums exactly."""
    from na64_online.monitor.histograms import MEMBERSHIP, N_CLASSES

    rng = np.random.default_rng(5)
    h = SpillHistograms()
    for name, coded in h._coded.items():
        view = coded.view(flow=True)
        view[...] = rng.integers(0, 1 << 40, view.shape) + ((1 << 57) if name == "ecal_hcal" else 0)
    h.events = 1
    h._cache = None
    for name, public in h.hists.items():
        coded = np.asarray(h._coded[name].view(flow=True))
        want = (MEMBERSHIP @ coded.reshape(N_CLASSES, -1, order="F")).reshape((len(TRIGGERS),) + coded.shape[1:], order="F")
        assert np.array_equal(np.asarray(public.view(flow=True)), want), name


def test_a_cleared_set_fills_its_storage_again_as_a_new_one(spill):
    """``cleared()`` (a worker reusing its set) empties the storages the fill kernel writes through its cached
    views: refilled, it counts what a new set fills, bin for bin."""
    decoded, physics = spill
    reused = SpillHistograms()
    reused.fill(decoded, physics)
    reused.cleared().fill(decoded, physics)
    reference = SpillHistograms()
    reference.fill_numpy(decoded, physics)
    _assert_same_counts(reused, reference)


def test_fill_refuses_storages_of_another_binning(spill):
    """The kernel indexes the storages with the configured axes: a set whose storage does not match them is
    refused before any count is written."""
    decoded, physics = spill
    h = SpillHistograms()
    h._coded["srd"] = SpillHistograms(config=HistogramConfig(srd=(10, 0.0, 0.3)))._coded["srd"]
    with pytest.raises(ValueError, match="srd"):
        h.fill(decoded, physics)
    assert h.events == 0 and h.run is None
