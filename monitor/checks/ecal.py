"""ECAL checks: the energy scale (the beam's peak in the profile's energy spectrum)."""

from __future__ import annotations

from ..quality import Inputs, QualityState as S, _peak, _spectrum, _upper, check
from .registry import register


@register("ecal")
def energy_scale(i: Inputs):
    """Peak of ``energy_spectrum`` (``energy_trigger`` events) against beam energy × ``energy_peak_fraction``:
    invisible mode E_ECAL of tagged electrons; visible mode and hadrons the calorimeter sum."""
    cfg, hists = i.config, i.hists
    name = cfg.energy_spectrum
    if hists is None or not cfg.beam_energy_gev or name not in hists:
        return None
    counts = _spectrum(hists, name, cfg.energy_trigger, flow=False)
    n = int(counts.sum())
    selected = "tagged electrons" if cfg.energy_trigger == "electron" else f"{cfg.energy_trigger}-trigger events"
    if n < cfg.min_peak_events:
        return check("ecal.energy_scale", S.NO_DATA, None, f"{n} {selected}")
    peak = _peak(counts, hists[name].axes[1].edges)
    target = cfg.beam_energy_gev * cfg.energy_peak_fraction
    dev = abs(peak / target - 1.0)
    particle = "electron" if cfg.energy_trigger == "electron" else f"{cfg.energy_trigger}-trigger"
    what = "" if name == "e_ecal" else f" ({name})"
    return check("ecal.energy_scale", _upper(dev, cfg.energy_scale_warning, cfg.energy_scale_bad), peak,
                 f"{particle} peak{what} {peak:.1f} GeV for a {cfg.beam_energy_gev:g} GeV beam",
                 f"{target:.4g} ± {cfg.energy_scale_warning * target:.3g} GeV "
                 f"(BAD beyond ± {cfg.energy_scale_bad * target:.3g})")
