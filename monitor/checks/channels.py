"""Problem channels (channel-health findings) per subsystem of the map's detectors."""

from __future__ import annotations

from ..quality import DETECTOR_SUBSYSTEMS, Inputs, QualityState as S, _get, check
from .registry import register


@register("*")
def problem_channels(i: Inputs):
    if i.judged is None:
        return
    cfg = i.config
    # the detector subsystems every spill has, then those the map's detectors add
    by_sub: dict[str, dict[int, list[str]]] = {s: {} for s in DETECTOR_SUBSYSTEMS}
    for sub in i.detector_subsystems.values():
        by_sub.setdefault(sub, {})
    for f in i.findings:
        sub = i.detector_subsystems.get(str(_get(f, "detector")), "daq")
        by_sub.setdefault(sub, {}).setdefault(int(_get(f, "slot")), []).append(str(_get(f, "kind")))
    for sub, slots in by_sub.items():
        n = len(slots)
        if n >= cfg.channels_bad:
            state = S.BAD
        elif n >= cfg.channels_warning:
            state = S.WARNING
        else:
            state = S.GOOD if i.judged else S.NO_DATA
        kinds = sorted({k for ks in slots.values() for k in ks})
        yield check(f"{sub}.channels", state, float(n),
                    f"{n} problem channels ({', '.join(kinds)})" if n else "all channels healthy" if i.judged else
                    "not judged (too few events)", f"fewer than {cfg.channels_warning} (BAD from {cfg.channels_bad})")
