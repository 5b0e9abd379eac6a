"""The detectors as the dashboard shows them, from the channel map's detector table and the latest spill.

:func:`detector_panels` says what to draw (one occupancy map per module, or a
detector's modules side by side, as the table's ``layout`` asks; x offset
``nx + 0.5`` per module side by side), :func:`detector_views` adds each
detector's latest values (the QA record's ``detectors`` entry, problem channels
by kind, quality subsystem state). Plain data: the Bokeh page and ``/api/detectors``
both read it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..decoders.channelmap import ChannelMap
from ..monitor.model import to_json


def detector_panels(channel_map: ChannelMap) -> list[dict[str, Any]]:
    """Occupancy panels in table order: ``detector``, ``module`` (None: all side by side), ``title``,
    ``slots``, cell centres ``x`` / ``y`` and the panel ``width`` in pixels."""
    panels = []
    for d in channel_map.detectors:
        if d.layout == "none" or not np.any(channel_map.detector == d.code):
            continue
        if d.layout == "modules":
            groups = [(int(m), d.module_name(int(m)), channel_map.slots(d.code, int(m)))
                      for m in np.unique(channel_map.module[channel_map.detector == d.code])]
        else:
            groups = [(None, f"{d.name} (modules 0–{d.modules - 1})", channel_map.slots(d.code))]
        for module, title, slots in groups:
            xs = channel_map.x[slots].astype(float)
            if module is None:
                xs = xs + (d.nx + 0.5) * channel_map.module[slots]
            panels.append({"detector": d.name, "module": module, "title": title, "slots": slots.tolist(),
                           "x": xs.tolist(), "y": channel_map.y[slots].astype(float).tolist(),
                           "width": 420 if module is None else 300})
    return panels


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def detector_views(channel_map: ChannelMap, snapshot=None) -> list[dict[str, Any]]:
    """Every detector of the table: its row (name, title, role, subsystem, geometry), ``mapped``
    channels, the latest spill's values (``energy_mean_gev``, ``hit_fraction``; None before a spill),
    its problem channels by kind, its subsystem's quality state, and its occupancy panels."""
    record = to_json(snapshot.record) if snapshot is not None else {}
    quality = (to_json(snapshot.quality) or {}) if snapshot is not None else {}
    findings = to_json(snapshot.health.findings) if snapshot is not None else []
    values = record.get("detectors") or {}
    panels = detector_panels(channel_map)
    out = []
    for d in channel_map.detectors:
        mine = values.get(d.name) or {}
        problems: dict[str, int] = {}
        for f in findings:
            if f.get("detector") == d.name:
                problems[str(f.get("kind"))] = problems.get(str(f.get("kind")), 0) + 1
        out.append({
            **d.to_dict(),
            "mapped": int(np.count_nonzero(channel_map.detector == d.code)),
            "energy_mean_gev": _clean(mine.get("energy_mean_gev")),
            "hit_fraction": _clean(mine.get("hit_fraction")),
            "problem_channels": problems,
            "quality": (quality.get("subsystems") or {}).get(d.subsystem),
            "panels": [p for p in panels if p["detector"] == d.name],
        })
    return out
