"""The shift dashboard: one Bokeh page built from the latest immutable spill snapshot.

Top: run/spill, overall and per-subsystem quality as coloured tiles, active
alarms, the beam numbers. Then the run trend (intensity, hadron fraction per
spill), this spill's spectra (E_ECAL, E_PS, E_HCAL), the E_ECAL–E_HCAL plane,
the intensity versus time in spill, the channel occupancy maps (dead and hot
channels outlined) and the run's missing-energy candidates. The page reloads
itself every ``refresh_seconds``; BokehJS is served by this app, so the page
works without internet access.
"""

from __future__ import annotations

import html
import math
import time

import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import column, gridplot, row
from bokeh.models import ColumnDataSource, DataTable, Div, LinearColorMapper, NumberFormatter, TableColumn
from bokeh.plotting import figure
from bokeh.resources import Resources

from ..decoders.channelmap import ChannelMap
from ..monitor.model import to_json
from ..monitor.spill_monitor import SpillSnapshot
from .detectors import detector_panels

STATE_COLOURS = {"GOOD": "#2e7d32", "WARNING": "#f9a825", "BAD": "#c62828", "NO_DATA": "#757575"}
SEVERITY_COLOURS = {"critical": "#c62828", "warning": "#f9a825", "info": "#1565c0"}
BOKEH_STATIC_ROUTE = "/bokeh/static"
_RESOURCES = Resources(mode="server", root_url="/bokeh/")


def _fmt(value, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def _tile(label: str, state: str) -> str:
    colour = STATE_COLOURS.get(state, "#757575")
    return (f'<span class="tile" style="background:{colour}">{html.escape(label)}<br>'
            f'<b>{html.escape(state)}</b></span>')


def _alarm_row(alarm: dict, csrf: str = "") -> str:
    """One active alarm with its acknowledgements; an unacknowledged one carries the acknowledge form
    (the shifter's token, kept in the tab's sessionStorage, a comment, and the page's CSRF token)."""
    name = html.escape(str(alarm["name"]))
    colour = SEVERITY_COLOURS.get(alarm.get("severity"), "#000")
    if alarm.get("state") == "acknowledged":
        acks = alarm.get("acknowledgements") or [
            {"user": alarm.get("acknowledged_by"), "comment": alarm.get("ack_comment")}]
        ack = " — acknowledged by " + "; ".join(
            f'{html.escape(str(a.get("user")))}: {html.escape(str(a.get("comment") or ""))}' for a in acks)
    else:
        ack = (f'<form class="ack" method="post" action="/ui/alarms/{name}/ack">'
               f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">'
               '<input type="password" name="token" class="na64-token" placeholder="your token" '
               'autocomplete="current-password" required> '
               '<input name="comment" placeholder="comment" maxlength="2000"> '
               '<button type="submit">acknowledge</button></form>')
    own = alarm.get("silence_id")
    for silence in alarm.get("silences") or ():  # silences made in Alertmanager that mute this alarm's alert
        if silence.get("id") != own:
            ack += (f' <span class="silenced">— silenced in Alertmanager by {html.escape(str(silence.get("created_by")))}'
                    f': {html.escape(str(silence.get("comment") or ""))} (until {html.escape(str(silence.get("ends_at")))})'
                    '</span>')
    runbook = alarm.get("runbook_url")
    link = f' <a href="{html.escape(runbook, quote=True)}">what to do</a>' if runbook else ""
    return (f'<li><span style="color:{colour}"><b>{name}</b> [{html.escape(str(alarm.get("severity")))}]</span> '
            f'{html.escape(str(alarm.get("detail", "")))}{link}{ack}</li>')


def status_html(snapshot: SpillSnapshot | None, alarms: list[dict] | None = None, now: float | None = None,
                csrf: str = "", liveness=None) -> str:
    """The header: what a shifter must see at one glance. ``alarms``: the alarm engine's
    active alarms now (acknowledgements since the spill included); default: the spill's.
    ``liveness`` (``monitor.liveness.Liveness``): when no data came for too long every tile
    turns grey (NO DATA) under a banner saying why."""
    stale = liveness is not None and liveness.stale
    banner = (f'<div class="nodata">NO DATA — {html.escape(liveness.describe())}</div>' if stale else "")
    if snapshot is None:
        return f'<div class="status">{banner}<h2>na64-online: waiting for the first spill…</h2></div>'
    now = time.time() if now is None else now
    r, q = to_json(snapshot.record), to_json(snapshot.quality)
    overall = "NO_DATA" if stale else q.get("overall", "NO_DATA")
    tiles = _tile("SPILL", overall) + "".join(
        _tile(name.upper(), "NO_DATA" if stale else state) for name, state in (q.get("subsystems") or {}).items())
    alarms = r.get("alarms") or [] if alarms is None else alarms
    alarm_rows = "".join(_alarm_row(a, csrf) for a in alarms) or "<li>none</li>"
    age = now - snapshot.published_at
    return f"""
<div class="status">{banner}
  <h2>Run {r.get('run')} · spill {r.get('spill')} <small>(finished {age:.0f} s ago;
  {'complete' if r.get('complete') else 'INCOMPLETE'})</small></h2>
  <div class="tiles">{tiles}</div>
  <table class="numbers"><tr>
    <td>beam<br><b>{_fmt(r.get('beam'), ',')}</b></td>
    <td>rate / s<br><b>{_fmt(r.get('beam_rate_hz'), '.3g')}</b></td>
    <td>events<br><b>{_fmt(r.get('events'), ',')}</b></td>
    <td>hadron fraction<br><b>{_fmt(r.get('hadron_fraction'), '.4f')}</b>
        <small>(SRD {_fmt(r.get('hadron_fraction_srd'), '.4f')})</small></td>
    <td>EOT spill / run<br><b>{_fmt(r.get('eot'), '.4g')} / {_fmt(r.get('eot_run'), '.4g')}</b></td>
    <td>candidates<br><b>{len(r.get('candidates') or [])}</b></td>
    <td>dead time<br><b>{_fmt(r.get('dead_time_fraction'), '.1%')}</b></td>
    <td>lost / errors<br><b>{r.get('lost_events')} / {r.get('decode_errors')}</b></td>
  </tr></table>
  <div class="alarms"><b>Active alarms</b><ul>{alarm_rows}</ul></div>
</div>"""


def _spectrum(hists: dict, name: str, trigger: str = "physics"):
    """(edges, counts) of a 1-D spectrum for one trigger selection, or None."""
    h = (hists or {}).get(name)
    if not h or len(h["axes"]) != 2:
        return None
    triggers = h["axes"][0].get("categories", [])
    if trigger not in triggers:
        return None
    return np.asarray(h["axes"][1]["edges"]), np.asarray(h["values"][triggers.index(trigger)], dtype=float)


def _step_plot(title: str, x_label: str, spill_hists: dict, run_hists: dict, name: str):
    p = figure(title=title, height=240, width=420, x_axis_label=x_label, y_axis_label="events",
               toolbar_location=None)
    for hists, colour, label in ((spill_hists, "#1565c0", "this spill"), (run_hists, "#9e9e9e", "run (scaled)")):
        spectrum = _spectrum(hists, name)
        if spectrum is None:
            continue
        edges, counts = spectrum
        if hists is run_hists:
            own = _spectrum(spill_hists, name)
            total = counts.sum()
            counts = counts * (own[1].sum() / total) if own is not None and total else counts
        p.step(x=edges[:-1], y=counts, mode="after", color=colour, legend_label=label, line_width=2)
    if p.legend:
        p.legend.location = "top_right"
        p.legend.label_text_font_size = "8pt"
    return p


def _plane(spill_hists: dict):
    h = (spill_hists or {}).get("ecal_hcal")
    p = figure(title="E_HCAL vs E_ECAL (this spill, beam trigger)", height=240, width=420,
               x_axis_label="E_ECAL / GeV", y_axis_label="E_HCAL / GeV", toolbar_location=None)
    if h and len(h["axes"]) == 3:
        triggers = h["axes"][0].get("categories", [])
        values = np.asarray(h["values"][triggers.index("beam") if "beam" in triggers else 0], dtype=float)
        x, y = np.asarray(h["axes"][1]["edges"]), np.asarray(h["axes"][2]["edges"])
        image = np.log10(1.0 + values.T)
        p.image(image=[image], x=x[0], y=y[0], dw=x[-1] - x[0], dh=y[-1] - y[0], palette="Viridis256")
    return p


def _time_profile(spill_hists: dict):
    p = figure(title="Intensity vs time in spill (all triggers)", height=240, width=420,
               x_axis_label="time in spill / s", y_axis_label="events / bin", toolbar_location=None)
    h = (spill_hists or {}).get("time")
    if h and len(h["axes"]) == 2:
        edges = np.asarray(h["axes"][1]["edges"]) * 1e-6
        counts = np.asarray(h["values"], dtype=float)
        triggers = h["axes"][0].get("categories", [])
        total = counts[[i for i, t in enumerate(triggers) if t in ("physics", "beam", "random", "calibration")]]
        p.step(x=edges[:-1], y=total.max(axis=0) if len(total) else counts[0], mode="after", line_width=2)
    return p


def _trend(run_hists: dict):
    rows = (run_hists or {}).get("trend") or []
    spills = [t.get("spill") for t in rows]
    src = ColumnDataSource({
        "spill": spills,
        "beam": [t.get("beam") or 0 for t in rows],
        "hf": [t.get("hadron_fraction") if t.get("hadron_fraction") is not None else math.nan for t in rows],
        "hf_srd": [t.get("hadron_fraction_srd") if t.get("hadron_fraction_srd") is not None else math.nan
                   for t in rows],
    })
    beam = figure(title="Beam particles per spill (run)", height=200, width=640, x_axis_label="spill",
                  toolbar_location=None)
    beam.vbar(x="spill", top="beam", width=0.8, source=src)
    hf = figure(title="Hadron fraction per spill (run)", height=200, width=640, x_axis_label="spill",
                toolbar_location=None, x_range=beam.x_range)
    hf.scatter(x="spill", y="hf", source=src, legend_label="E_HCAL > 10 GeV", size=6)
    hf.scatter(x="spill", y="hf_srd", source=src, legend_label="no SRD tag", size=6, color="#ef6c00",
               marker="triangle")
    hf.legend.label_text_font_size = "8pt"
    return beam, hf


def _channel_maps(snapshot: SpillSnapshot, channel_map: ChannelMap):
    occupancy = np.asarray([v if v is not None else math.nan
                            for v in (snapshot.channel_stats or {}).get("occupancy", [])], dtype=float)
    findings = {(f.slot, f.kind) for f in snapshot.health.findings}
    flagged = {slot for slot, _ in findings}
    mapper = LinearColorMapper(palette="Viridis256", low=0.0,
                               high=float(np.nanmax(occupancy)) if len(occupancy) and np.any(np.isfinite(occupancy)) else 1.0)
    plots = []
    for panel in detector_panels(channel_map):
        slots = np.asarray(panel["slots"], dtype=np.int64)
        xs, ys, title = np.asarray(panel["x"]), np.asarray(panel["y"]), panel["title"]
        occ = occupancy[slots] if len(occupancy) == len(channel_map) else np.full(len(slots), math.nan)
        src = ColumnDataSource({
            "x": xs, "y": ys, "occupancy": occ,
            "line": ["#d50000" if int(s) in flagged else "#ffffff" for s in slots],
            "width": [4 if int(s) in flagged else 1 for s in slots],
        })
        p = figure(title=f"{title}: occupancy", height=220, width=panel["width"],
                   toolbar_location=None, match_aspect=True)
        p.rect(x="x", y="y", width=0.95, height=0.95, source=src, fill_color={"field": "occupancy",
               "transform": mapper}, line_color="line", line_width="width")
        p.axis.visible = False
        p.grid.visible = False
        plots.append(p)
    return plots


def _candidates(run_hists: dict):
    rows = list(reversed((run_hists or {}).get("candidates") or []))[:200]
    keys = ("spill", "event", "e_ps", "e_ecal", "e_hcal", "srd_sum", "veto_max")
    src = ColumnDataSource({k: [r.get(k) for r in rows] for k in keys})
    columns = [TableColumn(field=k, title=k, formatter=NumberFormatter(format="0" if k in ("spill", "event") else "0.000"))
               for k in keys]
    title = Div(text=f"<b>Missing-energy candidates this run: {(run_hists or {}).get('candidates_total', 0)}</b>")
    return column(title, DataTable(source=src, columns=columns, width=640, height=200, index_position=None))


STYLE = """
<style>
 body { font-family: sans-serif; margin: 8px; }
 .tile { display: inline-block; color: white; padding: 6px 12px; margin: 2px; border-radius: 4px;
         text-align: center; min-width: 70px; }
 .numbers td { padding: 4px 14px; text-align: center; }
 .alarms ul { margin: 2px 0; }
 form.ack { display: inline; margin-left: 8px; }
 .nodata { background: #757575; color: white; font-weight: bold; padding: 6px 12px; border-radius: 4px; }
</style>
"""


REFRESH_SCRIPT = """
<script>
  // reload for the next spill, but never while the shifter is typing an acknowledgement
  setInterval(function () {
    var a = document.activeElement;
    if (!a || (a.tagName !== "INPUT" && a.tagName !== "BUTTON")) { window.location.reload(); }
  }, %d);
</script>
"""


def dashboard_html(snapshot: SpillSnapshot | None, channel_map: ChannelMap, refresh_seconds: float,
                   alarms: list[dict] | None = None, csrf: str = "", liveness=None) -> str:
    """The page: the status header as plain HTML (tiles, numbers, alarms with their acknowledge
    forms, signed with ``csrf``), then the Bokeh plots; it reloads itself every ``refresh_seconds``."""
    if snapshot is None:
        layout = column(Div(text=""))
    else:
        spill_h = (snapshot.histograms or {}).get("histograms", {})
        run_h = (snapshot.run_histograms or {}).get("histograms", {})
        spectra = [
            _step_plot("E_ECAL", "GeV", spill_h, run_h, "e_ecal"),
            _step_plot("E_PS (preshower)", "GeV", spill_h, run_h, "e_ps"),
            _step_plot("E_HCAL", "GeV", spill_h, run_h, "e_hcal"),
        ]
        beam, hf = _trend(snapshot.run_histograms)
        layout = column(
            row(column(beam, hf), _candidates(snapshot.run_histograms)),
            gridplot([spectra, [_plane(spill_h), _time_profile(spill_h)]], toolbar_location=None),
            row(*_channel_maps(snapshot, channel_map)),
        )
    page = file_html(layout, resources=_RESOURCES, title="na64-online")
    page = page.replace("<head>", "<head>\n" + STYLE, 1)
    header = status_html(snapshot, alarms, csrf=csrf, liveness=liveness) + REFRESH_SCRIPT % int(refresh_seconds * 1000)
    return page.replace("<body>", "<body>\n" + header, 1)
