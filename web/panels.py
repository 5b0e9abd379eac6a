"""What the dashboard shows, prepared once per spill from an immutable snapshot.

:func:`prepare` turns a :class:`~..monitor.spill_monitor.SpillSnapshot` (or an
archived spill read back into the same shape) into a :class:`PanelData`: the
column data of every Bokeh ``ColumnDataSource`` of the page (numpy arrays,
sent to the browsers as binary buffers) and the HTML of its text panels. The
live feed (:mod:`.live`) builds one per spill and hands the same object to
every open page; nothing here knows about sessions or sockets.

Physics: spectra are the ``physics`` trigger selection, the E_ECAL–E_HCAL
plane the ``beam`` trigger; the hadron fraction is E_HCAL > cut in beam-trigger
events (and, second estimator, beam events without an SRD tag); the run's
EOT is summed spill by spill in the order the spills came.
"""

from __future__ import annotations

import html
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..decoders.channelmap import ChannelMap
from ..monitor.model import finite_float
from .detectors import detector_panels

STATE_COLOURS = {"GOOD": "#2e7d32", "WARNING": "#f9a825", "BAD": "#c62828", "NO_DATA": "#616161",
                 "INTERRUPTED": "#616161"}
SEVERITY_COLOURS = {"critical": "#e53935", "warning": "#fbc02d", "info": "#42a5f5"}
SUBSYSTEMS = ("beam", "ecal", "hcal", "srd", "veto", "daq")
#: the channel maps: (source name, title, detector, module or None for every module)
#: prefix of the channel-map data sources: one map per occupancy panel of the detector table
#: (``web/detectors.detector_panels``), in table order
MAP_SOURCE_PREFIX = "map_"


def channel_maps(channel_map: ChannelMap) -> list[dict[str, Any]]:
    """The channel maps the page draws: the detector table's occupancy panels (``detector``,
    ``module``, ``title``, ``slots``, cell centres ``x``/``y``), each with its data ``source`` name."""
    return [dict(panel, source=f"{MAP_SOURCE_PREFIX}{i}") for i, panel in enumerate(detector_panels(channel_map))]
#: status codes of the channel maps' "status" colouring
STATUS_CODES = {"ok": 0, "noisy": 1, "hot": 2, "pedestal_shift": 2, "dead": 3}
MAP_QUANTITIES = ("occupancy", "pedestal", "noise", "status")
SPECTRA = (("e_ecal", "E_ECAL", False), ("e_ps", "E_PS (preshower)", True), ("e_hcal", "E_HCAL", True))


def fmt(value, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return html.escape(str(value))


def utc(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) if t else "—"


# ------------------------------------------------------------------ channels, alarms in words
def channel_name(info: Mapping[str, Any]) -> str:
    """``ECAL cell (3,2) (610/1/15)``: detector position, then the electronic address srcID/port/channel."""
    det = info.get("detector", "?")
    where = f"cell ({info.get('x')},{info.get('y')})"
    if det == "ECAL":
        det = "ECAL preshower" if info.get("module") == 0 else "ECAL"
    elif det in ("HCAL", "VETO", "SRD", "S"):
        det = f"{det} module {info.get('module')}"
    addr = ""
    if info.get("src_id") is not None:
        addr = f" ({info.get('src_id')}/{info.get('port')}/{info.get('channel')})"
    return f"{det} {where}{addr}"


def finding_text(finding: Mapping[str, Any], channel_map: ChannelMap | None) -> str:
    """One channel finding for people: ``ECAL cell (3,2) (610/1/15) dead for 3 spills``."""
    info = dict(finding)
    slot = finding.get("slot")
    if channel_map is not None and slot is not None and 0 <= int(slot) < len(channel_map) and "src_id" not in info:
        info.update(channel_map.describe(int(slot)))
    spills = finding.get("spills")
    duration = f" for {spills} spill{'s' if spills != 1 else ''}" if spills else ""
    return f"{channel_name(info)} {str(finding.get('kind', '?')).replace('_', ' ')}{duration}"


def alarm_text(alarm: Mapping[str, Any], findings: Sequence[Mapping[str, Any]], channel_map: ChannelMap | None) -> str:
    """An alarm for people: the channels it is about when it counts channel findings, else its
    description with the value, and for how many spills."""
    condition = str(alarm.get("condition") or "")
    spills = alarm.get("spills")
    duration = f" for {spills} spill{'s' if spills != 1 else ''}" if spills else ""
    about = re.search(r"findings\[kind=(\w+)\]|channel_findings\.(\w+)", condition)
    if about:
        kind = about.group(1) or about.group(2)
        hits = [f for f in findings if str(f.get("kind")) == kind]
        if hits:
            names = "; ".join(finding_text(f, channel_map) for f in hits[:4])
            more = f" and {len(hits) - 4} more" if len(hits) > 4 else ""
            return names + more
    description = str(alarm.get("description") or alarm.get("name") or "").split(" (")[0]
    value = alarm.get("value")
    shown = fmt(value, ".3g") if isinstance(value, (int, float)) and not isinstance(value, bool) else fmt(value)
    return f"{description}: {shown}{duration}" if value is not None else f"{description}{duration}"


# ------------------------------------------------------------------ spectra
def spectrum(hists: Mapping | None, name: str, trigger: str = "physics") -> tuple[np.ndarray, np.ndarray] | None:
    """(edges, counts) of a 1-D spectrum for one trigger selection, or None."""
    h = (hists or {}).get(name)
    if not h or len(h.get("axes", ())) != 2:
        return None
    triggers = h["axes"][0].get("categories", [])
    if trigger not in triggers:
        return None
    values = np.asarray(h["values"], dtype=float)
    return np.asarray(h["axes"][1]["edges"], dtype=float), values[triggers.index(trigger)][: len(h["axes"][1]["edges"]) - 1]


def _step(edges: np.ndarray, counts: np.ndarray, log: bool) -> dict:
    """Step-line columns; on a log axis empty bins are gaps (NaN), not −∞."""
    y = counts.astype(float)
    if log:
        y = np.where(y > 0, y, np.nan)
    return {"x": np.append(edges[:-1], edges[-1]), "y": np.append(y, y[-1] if len(y) else np.nan)}


# ------------------------------------------------------------------ the prepared update
@dataclass(frozen=True)
class PanelData:
    """One spill's page content: ``sources`` (name → column dict) and ``texts`` (Div name → HTML);
    ``values`` are scalar properties (e.g. the colour ranges of the maps). Shared by every page: read only."""

    key: tuple
    sources: Mapping[str, Mapping[str, Any]]
    texts: Mapping[str, str]
    values: Mapping[str, Any] = field(default_factory=dict)
    published_at: float = 0.0


def _findings(health: Mapping | None) -> list[dict]:
    return list((health or {}).get("findings") or [])


def tiles_html(quality: Mapping | None, stale: bool) -> str:
    """A tile per subsystem with its state and its failing checks in words."""
    quality = quality or {}
    checks = quality.get("checks") or []
    tiles = []
    overall = "NO_DATA" if stale else str(quality.get("overall", "NO_DATA"))
    tiles.append(_tile("SPILL", overall, [] if stale else [
        str(r) for r in (quality.get("reasons") or [])][:3]))
    for sub in SUBSYSTEMS:
        state = "NO_DATA" if stale else str((quality.get("subsystems") or {}).get(sub, "NO_DATA"))
        reasons = [] if stale else [
            str(c.get("reason") or c.get("detail") or c.get("name"))
            for c in checks if c.get("subsystem") == sub and c.get("state") in ("WARNING", "BAD")]
        tiles.append(_tile(sub.upper(), state, reasons))
    return '<div class="tiles">' + "".join(tiles) + "</div>"


def _tile(label: str, state: str, reasons: Sequence[str]) -> str:
    colour = STATE_COLOURS.get(state, "#616161")
    why = "".join(f"<li>{html.escape(r)}</li>" for r in reasons[:3])
    more = f"<li>… {len(reasons) - 3} more</li>" if len(reasons) > 3 else ""
    return (f'<div class="tile" data-state="{html.escape(state)}" style="background:{colour}">'
            f'<div class="tname">{html.escape(label)}</div><div class="tstate">{html.escape(state.replace("_", " "))}'
            f'</div><ul class="why">{why}{more}</ul></div>')


def nodes_html(record: Mapping | None, service: Mapping | None, now: float, stale: bool) -> str:
    """A tile per readout node: connected, age of its last message, message rate, lost messages this spill."""
    record, service = record or {}, service or {}
    nodes = dict(service.get("nodes") or {})
    # the record's lost_messages: {"total": N, "by_ldc": {LDC: N}} (live records only)
    lost = {str(k): v for k, v in ((record.get("lost_messages") or {}).get("by_ldc") or {}).items()}
    missing = {str(x) for x in (record.get("missing_ldcs") or ())}
    for ldc in list(lost) + list(missing):
        nodes.setdefault(str(ldc), {})
    if not nodes:
        connected = service.get("sources_connected")
        text = ("replay: no readout nodes" if not service else
                f"{connected} readout node(s) connected; none heard from yet")
        return f'<div class="nodes"><div class="node" style="background:#37474f">{html.escape(text)}</div></div>'
    out = []
    for ldc in sorted(nodes, key=lambda k: (len(k), k)):
        n = nodes[ldc] or {}
        last = n.get("last_message_time")
        age = now - last if last else None
        silent = (not n.get("connected", age is not None and age <= 5.0)) or ldc in missing
        state = "NO_DATA" if (stale or silent) else "BAD" if lost.get(ldc) else "GOOD"
        colour = STATE_COLOURS[state]
        lines = [("receiving" if age is not None and age < 3 else "no message yet" if age is None
                  else f'last msg <span class="na64-age" data-t="{last:.0f}">{age:.0f} s ago</span>'),
                 f"{fmt(n.get('messages_per_second'), '.2g')} msg/s",
                 f"lost {lost.get(ldc, 0)} this spill" + (f", {n.get('lost_messages', 0)} total" if n else "")]
        if ldc in missing:
            lines.append("MISSING from last spill")
        out.append(f'<div class="node" data-ldc="{html.escape(ldc)}" style="background:{colour}">'
                   f'<div class="tname">LDC {html.escape(ldc)}</div>' + "".join(
                       f"<div>{x}</div>" for x in lines) + "</div>")
    return '<div class="nodes">' + "".join(out) + "</div>"


def conditions_html(record: Mapping | None, run_hists: Mapping | None, info: Mapping | None,
                    published_at: float, archived: bool) -> str:
    """Run number, spill, beam particle and energy, run start, configuration profile, freshness."""
    r, rh, info = record or {}, run_hists or {}, info or {}
    if not r:
        return '<div class="cond"><h2>na64-online</h2>waiting for the first spill…</div>'
    where = "ARCHIVED" if archived else "LIVE"
    return (
        f'<div class="cond"><h2>Run {fmt(r.get("run"), "")} · spill {fmt(r.get("spill"), "")}'
        f' <span class="where">{where}</span></h2>'
        f'<div>beam: {html.escape(str(info.get("beam_particle", "e−")))} {fmt(info.get("beam_energy_gev"), "g")} GeV'
        f' · profile {html.escape(str(info.get("profile", "default")))}</div>'
        f'<div>run start {utc(rh.get("since"))} UTC · {fmt(rh.get("spills"), "")} spills</div>'
        f'<div>spill finished {utc(published_at)} UTC '
        f'(<span class="na64-age" data-t="{published_at:.3f}">…</span>) · '
        f'{"complete" if r.get("complete") else "INCOMPLETE"}</div></div>')


def numbers_html(record: Mapping | None) -> str:
    r = record or {}
    cells = [
        ("beam", fmt(r.get("beam"), ",")), ("rate / s", fmt(r.get("beam_rate_hz"), ".3g")),
        ("events", fmt(r.get("events"), ",")),
        ("hadron frac.", f'{fmt(r.get("hadron_fraction"), ".3f")} / {fmt(r.get("hadron_fraction_srd"), ".3f")}'),
        ("EOT spill / run", f'{fmt(r.get("eot"), ".3g")} / {fmt(r.get("eot_run"), ".3g")}'),
        ("candidates spill / run", f'{len(r.get("candidates") or [])} / {fmt(r.get("candidates_run"), "")}'),
        ("dead time", fmt(r.get("dead_time_fraction"), ".1%")),
        ("lost / errors", f'{fmt(r.get("lost_events"), "")} / {fmt(r.get("decode_errors"), "")}'),
    ]
    return '<div class="numbers">' + "".join(f"<div><span>{k}</span><b>{v}</b></div>" for k, v in cells) + "</div>"


def progress_html(service: Mapping | None, record: Mapping | None, now: float) -> str:
    """The spill in progress (live service): events so far and seconds into it."""
    service = service or {}
    cur = service.get("spill_in_progress") or {}
    if not cur:
        return '<div class="progress">spill in progress: —</div>'
    started = cur.get("started_at")
    seconds = now - started if started else None
    expected = finite_float((record or {}).get("spill_duration_us")) * 1e-6
    pct = min(100.0, 100.0 * seconds / expected) if seconds is not None and expected > 0 else 0.0
    return (f'<div class="progress">spill {fmt(cur.get("spill"), "")} in progress: '
            f'{fmt(cur.get("events"), ",")} events, started <span class="na64-age" data-t="{started or 0:.3f}">'
            f'{fmt(seconds, ".0f")} s ago</span>'
            f'<div class="bar"><div style="width:{pct:.0f}%"></div></div></div>')


def prepare(snapshot, channel_map: ChannelMap, *, alarms: Sequence[Mapping] = (), reference: Mapping | None = None,
            info: Mapping | None = None, cuts=None, limits: Mapping[str, float] | None = None,
            archived: bool = False) -> PanelData:
    """Everything the page shows of one spill (``snapshot``: record, quality, health, histograms,
    run_histograms, channel_stats, published_at). ``reference``: the reference spectra (histogram
    JSON) or None; ``cuts``: the physics cuts (signal box); ``limits``: the hadron-fraction
    WARNING/BAD limits."""
    record = snapshot.record or {}
    quality = snapshot.quality or {}
    spill_h = (snapshot.histograms or {}).get("histograms", {}) or {}
    run_json = snapshot.run_histograms or {}
    run_h = run_json.get("histograms", {}) or {}
    findings = _findings(snapshot.health)
    sources: dict[str, dict] = {}
    texts: dict[str, str] = {}
    values: dict[str, Any] = {}
    stamp = f"run {record.get('run')} spill {record.get('spill')} · {utc(snapshot.published_at)} UTC"
    values["stamp"] = stamp

    # -------- trends
    trend = run_json.get("trend") or []
    limits = dict(limits or {})
    hf_warn, hf_bad = limits.get("warning", 0.05), limits.get("bad", 0.15)
    spills = np.array([finite_float(t.get("spill")) for t in trend], dtype=float)
    hf = np.array([finite_float(t.get("hadron_fraction")) for t in trend])
    hf_srd = np.array([finite_float(t.get("hadron_fraction_srd")) for t in trend])
    eot = np.array([finite_float(t.get("eot"), 0.0) for t in trend])

    def state_colour(v):
        return [STATE_COLOURS["NO_DATA"] if not math.isfinite(x) else STATE_COLOURS["BAD"] if x > hf_bad
                else STATE_COLOURS["WARNING"] if x > hf_warn else STATE_COLOURS["GOOD"] for x in v]

    # the run's trend keeps its newest spills ([monitor] trend_spills); the run's EOT before them starts the curve
    in_trend = float(eot.sum())
    eot_before = max(finite_float(run_json.get("eot"), in_trend) - in_trend, 0.0)
    sources["trend"] = {
        "spill": spills, "beam": np.array([finite_float(t.get("beam"), 0.0) for t in trend]),
        "eot": eot, "eot_cum": eot_before + np.cumsum(eot), "hf": hf, "hf_srd": hf_srd,
        "hf_colour": state_colour(hf), "hf_srd_colour": state_colour(hf_srd),
    }
    values["hf_limits"] = (hf_warn, hf_bad)
    values["hf_top"] = float(max(hf_bad * 1.6, np.nanmax(np.concatenate([hf, hf_srd, [0.0]])) * 1.15))

    # -------- time in spill
    h = spill_h.get("time")
    if h and len(h.get("axes", ())) == 2:
        edges = np.asarray(h["axes"][1]["edges"], dtype=float) * 1e-6
        counts = np.asarray(h["values"], dtype=float)[:, : len(edges) - 1]
        triggers = h["axes"][0].get("categories", [])
        rows = [i for i, t in enumerate(triggers) if t in ("physics", "beam", "random", "calibration")]
        total = counts[rows].max(axis=0) if rows else counts[0]
        sources["time_profile"] = {"left": edges[:-1], "right": edges[1:], "top": total}
    else:
        sources["time_profile"] = {"left": np.array([]), "right": np.array([]), "top": np.array([])}

    # -------- spectra with the reference (scaled to this spill's entries) and the χ² p-value
    ref_h = (reference or {}).get("histograms", reference or {}) if reference else {}
    checks = {c.get("name"): c for c in quality.get("checks") or []}
    for name, title, log in SPECTRA:
        own = spectrum(spill_h, name)
        sources[f"spec_{name}"] = _step(*own, log) if own is not None else {"x": np.array([]), "y": np.array([])}
        ref = spectrum(ref_h, name) if ref_h else None
        if ref is not None and own is not None and ref[1].sum() > 0:
            scaled = ref[1] * (own[1].sum() / ref[1].sum())
            sources[f"ref_{name}"] = _step(ref[0], scaled, log)
        else:
            sources[f"ref_{name}"] = {"x": np.array([]), "y": np.array([])}
        check = next((c for n, c in checks.items() if n and n.endswith(f".{name}_vs_reference")), None)
        ref_id = record.get("reference")
        if check is None:
            texts[f"chi2_{name}"] = "no reference set" if not ref_id else "reference: not compared"
        else:
            texts[f"chi2_{name}"] = (f"vs reference run {ref_id[0]}{'' if ref_id[1] is None else f' spill {ref_id[1]}'}: "
                                     if ref_id else "vs reference: ") + str(check.get("detail", ""))
            values[f"chi2_state_{name}"] = check.get("state")

    # -------- E_ECAL–E_HCAL plane (beam trigger), log colour
    h = spill_h.get("ecal_hcal")
    if h and len(h.get("axes", ())) == 3:
        triggers = h["axes"][0].get("categories", [])
        v = np.asarray(h["values"][triggers.index("beam") if "beam" in triggers else 0], dtype=float)
        x, y = np.asarray(h["axes"][1]["edges"], dtype=float), np.asarray(h["axes"][2]["edges"], dtype=float)
        v = v[: len(x) - 1, : len(y) - 1]
        image = np.where(v > 0, v, np.nan).T  # empty bins transparent; the log mapper colours the rest
        sources["plane"] = {"image": [image], "x": [x[0]], "y": [y[0]], "dw": [x[-1] - x[0]], "dh": [y[-1] - y[0]]}
        values["plane_high"] = float(max(2.0, np.nanmax(v) if np.any(v > 0) else 2.0))
    else:
        sources["plane"] = {"image": [np.full((1, 1), np.nan)], "x": [0.0], "y": [0.0], "dw": [1.0], "dh": [1.0]}
        values["plane_high"] = 2.0
    if cuts is not None:
        values["signal_box"] = (0.0, float(cuts.candidate_ecal_max_gev), 0.0, float(cuts.candidate_hcal_max_gev))

    # -------- candidates (the run's, newest first)
    cands = list(reversed(run_json.get("candidates") or []))[:500]
    keys = ("spill", "event", "e_ps", "e_ecal", "e_hcal", "srd_sum", "veto_max")
    sources["candidates"] = {k: np.array([finite_float(c.get(k)) for c in cands]) for k in keys}
    sources["candidates"]["run"] = np.array([finite_float(c.get("run", record.get("run"))) for c in cands])
    values["candidates_total"] = int(finite_float(run_json.get("candidates_total"), len(cands)))
    this_spill = [c for c in cands if c.get("spill") == record.get("spill")]
    sources["plane_cands"] = {"e_ecal": np.array([finite_float(c.get("e_ecal")) for c in this_spill]),
                              "e_hcal": np.array([finite_float(c.get("e_hcal")) for c in this_spill])}

    # -------- channel maps
    stats = snapshot.channel_stats or {}
    n = len(channel_map)

    def column(key):
        vals = stats.get(key)
        if vals is None or len(vals) != n:
            return np.full(n, np.nan)
        return np.array([finite_float(v) for v in vals])

    occupancy, pedestal, noise = column("occupancy"), column("pedestal_even"), column("pedestal_even_rms")
    kinds: dict[int, list[dict]] = {}
    for f in findings:
        if f.get("slot") is not None:
            kinds.setdefault(int(f["slot"]), []).append(f)
    status = np.zeros(n)
    for slot, fs in kinds.items():
        if 0 <= slot < n:
            status[slot] = max(STATUS_CODES.get(str(f.get("kind")), 2) for f in fs)
    for panel in channel_maps(channel_map):
        src, detector = panel["source"], panel["detector"]
        slots = np.asarray(panel["slots"], dtype=np.int64)
        xs, ys = np.asarray(panel["x"], dtype=float), np.asarray(panel["y"], dtype=float)
        mods = channel_map.module[slots]
        flagged = np.array([int(s) in kinds for s in slots], dtype=bool)
        sources[src] = {
            "x": xs, "y": ys, "slot": slots.astype(int),
            "occupancy": occupancy[slots], "pedestal": pedestal[slots], "noise": noise[slots], "status": status[slots],
            "detector": [detector] * len(slots), "module": mods.astype(int),
            "cx": channel_map.x[slots].astype(int), "cy": channel_map.y[slots].astype(int),
            "src_id": channel_map.src_id[slots].astype(int), "port": channel_map.port[slots].astype(int),
            "channel": channel_map.channel[slots].astype(int),
            "line": np.where(flagged, "#ff1744", "#263238"), "width": np.where(flagged, 4.0, 1.0),
            "problem": ["; ".join(str(f.get("kind")) for f in kinds.get(int(s), [])) for s in slots],
        }
    for q, arr in (("occupancy", occupancy), ("pedestal", pedestal), ("noise", noise)):
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        values[f"range_{q}"] = (lo, hi if hi > lo else lo + 1.0)
    values["range_status"] = (0.0, 3.0)
    problems = []
    for f in findings:
        slot = f.get("slot")
        desc = channel_map.describe(int(slot)) if slot is not None and 0 <= int(slot) < n else {}
        problems.append({"name": finding_text(f, channel_map), "kind": str(f.get("kind")),
                         "detail": str(f.get("detail", "")), "slot": int(slot) if slot is not None else -1,
                         "detector": desc.get("detector", "")})
    sources["problems"] = {k: [p[k] for p in problems] for k in ("name", "kind", "detail", "slot")}

    # -------- text panels
    texts["numbers"] = numbers_html(dict(record, candidates_run=run_json.get("candidates_total")))
    texts["tiles"] = tiles_html(quality, stale=False)
    texts["conditions"] = conditions_html(record, run_json, info, float(snapshot.published_at), archived)
    values["published_at"] = float(snapshot.published_at)
    return PanelData(key=(record.get("run"), record.get("spill"), snapshot.published_at), sources=sources,
                     texts=texts, values=values, published_at=float(snapshot.published_at))
