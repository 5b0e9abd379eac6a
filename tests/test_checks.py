"""monitor.checks: the quality checks as a registry of small functions per subsystem, each verdict
with its reason in words and numbers."""

from __future__ import annotations


import pytest
from monitor_synth import make_spill, record_for

from na64_online.monitor.checks import REGISTRY, by_subsystem, register
from na64_online.monitor.histograms import SpillHistograms
from na64_online.monitor.quality import QualityConfig, QualityState, assess, check


@pytest.fixture(scope="module")
def shifted():
    """A spill whose ECAL reads 10 % low."""
    d, p = make_spill(n=3000, seed=3, energy_scale=0.9)
    h = SpillHistograms()
    h.fill(d, p)
    return record_for(d, p), h


def test_every_subsystem_has_its_checks():
    subsystems = by_subsystem()
    assert subsystems["daq"][:2] == ["complete", "event_rates"] and subsystems["beam"][0] == "intensity"
    assert subsystems["srd"] == ["electron_tag"] and subsystems["ecal"] == ["energy_scale"]
    assert subsystems["*"] == ["spectra_vs_reference", "problem_channels"]


def test_reasons_say_what_was_measured_and_what_was_expected(shifted):
    record, h = shifted
    q = assess(record, h)
    scale = q.check("ecal.energy_scale")
    assert scale.state == QualityState.WARNING
    assert scale.reason == f"electron peak {scale.value:.1f} GeV for a 100 GeV beam, expected 100 ± 5 GeV (BAD beyond ± 15)"
    assert f"ecal.energy_scale WARNING: {scale.reason}" in q.reasons
    assert all(not r.startswith("daq.complete") for r in q.reasons)  # GOOD checks give no reason
    as_dict = q.to_dict()
    assert as_dict["reasons"] == q.reasons and {c["name"]: c["reason"] for c in as_dict["checks"]}[
        "ecal.energy_scale"] == scale.reason


def test_a_new_check_is_one_registered_function(shifted):
    record, h = shifted

    @register("veto")
    def veto_never_fires(i):
        return check("veto.never_fires", QualityState.BAD, 1.0, "fired once", "never")

    try:
        q = assess(record, h)
        assert q.check("veto.never_fires").reason == "fired once, expected never"
        assert q.subsystems["veto"] == QualityState.BAD and q.overall == QualityState.BAD
    finally:
        REGISTRY.pop()
    assert "veto.never_fires" not in [c.name for c in assess(record, h).checks]


def test_checks_that_do_not_apply_are_left_out(shifted):
    record, h = shifted
    cfg = QualityConfig(checks_off=("ecal.energy_scale", "srd.electron_tag"))
    names = [c.name for c in assess(record, h, config=cfg).checks]
    assert "ecal.energy_scale" not in names and "srd.electron_tag" not in names and "beam.intensity" in names
