"""Beam checks: intensity, spill duration, hadron contamination, time-in-spill profile."""

from __future__ import annotations

import math

import numpy as np

from ..quality import Check, Inputs, QualityState as S, _num, _spectrum, _upper, check
from .registry import register


@register("beam")
def intensity(i: Inputs):
    beam = _num(i.record, "beam")
    if beam is None:
        return check("beam.intensity", S.NO_DATA, None, "no beam scaler (END_OF_BURST missing)")
    lo_b, hi_b = i.config.beam_range_bad
    lo_w, hi_w = i.config.beam_range_warning
    state = S.BAD if not lo_b <= beam <= hi_b else S.WARNING if not lo_w <= beam <= hi_w else S.GOOD
    duration = _num(i.record, "spill_duration_us")
    rate = f", {beam / (duration * 1e-6):.3g} /s" if duration else ""
    return check("beam.intensity", state, beam, f"{beam:.0f} particles on target{rate}",
                 f"{lo_w:.3g} to {hi_w:.3g} per spill")


@register("beam")
def spill_duration(i: Inputs):
    duration = _num(i.record, "spill_duration_us")
    if i.config.spill_duration_range_us is None or duration is None:
        return None
    lo, hi = i.config.spill_duration_range_us
    return check("beam.spill_duration", S.GOOD if lo <= duration <= hi else S.WARNING, duration,
                 f"spill {duration * 1e-6:.2f} s", f"{lo * 1e-6:.2f} to {hi * 1e-6:.2f} s")


@register("beam")
def hadron_fraction(i: Inputs):
    hf, cfg = i.hadron_fraction, i.config
    if hf is None or i.few_beam_events:
        return check("beam.hadron_fraction", S.NO_DATA, hf, f"{i.beam_events or 0} beam-trigger events")
    return check("beam.hadron_fraction", _upper(hf, cfg.hadron_fraction_warning, cfg.hadron_fraction_bad), hf,
                 f"hadron-like fraction of beam-trigger events {hf:.4f}",
                 f"at most {cfg.hadron_fraction_warning:g} (BAD above {cfg.hadron_fraction_bad:g})")


@register("beam")
def time_profile(i: Inputs):
    """Spikes in the events-versus-time-in-spill profile (beam trigger, else physics trigger)."""
    hists, cfg = i.hists, i.config
    if hists is None or "time" not in hists:
        return None
    best = max(("beam", "physics"), key=lambda t: _spectrum(hists, "time", t, flow=True).sum())
    counts = _spectrum(hists, "time", best, flow=False)
    n = counts.sum()
    if n < cfg.spike_min_events:
        return Check("beam.time_profile", "beam", S.NO_DATA, None, f"{int(n)} timed events")
    r = max(1, cfg.spike_rebin)
    counts = counts[: len(counts) // r * r].reshape(-1, r).sum(axis=1)
    nz = np.flatnonzero(counts)
    active = counts[nz[0]: nz[-1] + 1]
    if len(active) < 5:
        return Check("beam.time_profile", "beam", S.NO_DATA, None, f"only {len(active)} active time bins")
    med = float(np.median(active))
    top = int(np.argmax(active))
    peak = float(active[top])
    ratio = peak / med if med > 0 else float("inf")
    edges = hists["time"].axes[1].edges
    t_ms = (edges[0] + (nz[0] + top) * r * (edges[1] - edges[0])) * 1e-3
    spike = ratio > cfg.spike_factor and peak - med > 5.0 * math.sqrt(max(med, 1.0))
    return Check("beam.time_profile", "beam", S.WARNING if spike else S.GOOD, ratio,
                 f"max {peak:.0f} events per {r * (edges[1] - edges[0]) * 1e-3:.0f} ms at {t_ms:.0f} ms "
                 f"= {ratio:.2f} x median ({best} trigger)", f"at most {cfg.spike_factor:g} x median")
