"""SRD checks: electron-tag efficiency."""

from __future__ import annotations

from ..quality import Inputs, QualityState as S, _num, _upper, check
from .registry import register


@register("srd")
def electron_tag(i: Inputs):
    """Beam events without the electron tag beyond the hadrons the HCAL sees: tag inefficiency."""
    hf, hf_srd, cfg = i.hadron_fraction, _num(i.record, "hadron_fraction_srd"), i.config
    if hf is None or hf_srd is None or i.few_beam_events:
        return check("srd.electron_tag", S.NO_DATA, None, "too few beam-trigger events")
    excess = hf_srd - hf
    return check("srd.electron_tag", _upper(excess, cfg.srd_excess_warning, cfg.srd_excess_bad), excess,
                 f"untagged beam events {hf_srd:.4f} vs HCAL hadron fraction {hf:.4f}",
                 f"at most {cfg.srd_excess_warning:g} more untagged (BAD above {cfg.srd_excess_bad:g})")
