"""Every subsystem's spectra against the reference (a good spill or a run sum): chi-square p-values."""

from __future__ import annotations

import math

from ..quality import REFERENCE_SPECTRA, Inputs, QualityState as S, _spectrum, check, compare_spectra
from .registry import register


@register("*")
def spectra_vs_reference(i: Inputs):
    cfg, hists, ref = i.config, i.hists, i.reference
    if ref is None or hists is None:
        return
    for subsystem, names in REFERENCE_SPECTRA.items():
        for name in names:
            if name not in hists or name not in ref:
                continue
            a = _spectrum(hists, name, cfg.reference_trigger, flow=True)
            b = _spectrum(ref, name, cfg.reference_trigger, flow=True)
            key = f"{subsystem}.{name}_vs_reference"
            if a.sum() < cfg.reference_min_entries or b.sum() < cfg.reference_min_entries or not i.enough:
                yield check(key, S.NO_DATA, None, f"{int(a.sum())} entries, reference {int(b.sum())}")
                continue
            chi2, dof, p = compare_spectra(a, b, cfg.reference_min_bin_count)
            if not math.isfinite(p):
                yield check(key, S.NO_DATA, None, "too few filled bins")
                continue
            state = S.BAD if p < cfg.reference_p_bad else S.WARNING if p < cfg.reference_p_warning else S.GOOD
            yield check(key, state, p, f"chi2/ndf {chi2:.1f}/{dof}, p = {p:.3g}",
                        f"p at least {cfg.reference_p_warning:g} (BAD below {cfg.reference_p_bad:g})")
