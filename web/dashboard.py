"""The shift dashboard: one Bokeh server document per open page, updated in place.

Layout (1920×1080 without scrolling; usable at 1366×768): a header with the
run's conditions, a quality tile per subsystem naming its failing checks, a
tile per readout node, the spill in progress and the active alarms (acknowledge
with your token and a comment; sound and notification per severity); below,
tabs: *Physics* (beam/EOT and hadron-fraction trends with their limits,
intensity versus time in spill, the E_ECAL–E_HCAL plane with the signal box,
the spectra against the reference with χ²/p, the candidates), *Channels*
(maps by occupancy, pedestal, noise or status, problem channels, a channel's
trends), *Event* (a candidate's cell energies and waveforms), *History*
(any archived spill, recent spills with their bad-spill reasons) and *Alarm
history* (searchable).

The page never reloads: :class:`DashboardPage` holds the document's models and
:meth:`DashboardPage.apply` copies a prepared :class:`~.panels.PanelData`
into them; the live feed (:mod:`.live`) calls it for every page when a spill
comes. BokehJS is served by this app (no CDN); the page's own script (in
:data:`TEMPLATE`) ticks the ages, notices a dead websocket ("MONITOR DOWN") and
plays the alarm sound.
"""

from __future__ import annotations

import functools
import html
import math
from typing import Any, Callable, Sequence

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (BasicTicker, BoxAnnotation, Button, CheckboxGroup, ColorBar, ColumnDataSource, CustomJS,
                          DataRange1d, DataTable, Div, HoverTool, InlineStyleSheet, Label, LinearAxis, LinearColorMapper,
                          LogColorMapper, NumberFormatter, PasswordInput, Select, Span, TableColumn, TabPanel, Tabs,
                          TextInput)
from bokeh.plotting import figure
from bokeh.themes import built_in_themes

from .panels import MAP_QUANTITIES, MAP_SOURCE_PREFIX, SPECTRA, STATE_COLOURS, PanelData

BOKEH_STATIC_ROUTE = "/static"  # BokehJS, served from the installed bokeh package
SEVERITIES = ("critical", "warning", "info")
CHANNELS_TAB = 1


def is_channel_source(name: str) -> bool:
    """The Channels tab's data (maps and problem list): sent only while that tab is shown."""
    return name.startswith(MAP_SOURCE_PREFIX) or name == "problems"

#: styles inside the Bokeh components (each lives in a shadow root)
COMPONENT_CSS = """
:host { color: #e0e0e0; font-family: "DejaVu Sans", sans-serif; }
.tiles, .nodes, .numbers { display: flex; flex-wrap: wrap; gap: 4px; }
.tile { color: white; padding: 3px 6px; border-radius: 4px; width: 118px; min-height: 96px; box-sizing: border-box; }
.tile .tname { font-size: 13px; opacity: .85; } .tile .tstate { font-size: 20px; font-weight: bold; }
.tile .why { margin: 2px 0 0 0; padding-left: 14px; font-size: 11px; line-height: 1.2; }
.node { color: white; padding: 3px 6px; border-radius: 4px; min-width: 104px; font-size: 11px; }
.node .tname { font-size: 13px; font-weight: bold; }
.numbers div { background: #263238; padding: 2px 5px; border-radius: 3px; min-width: 78px; }
.numbers span { display: block; font-size: 10px; opacity: .7; } .numbers b { font-size: 14px; }
.cond h2 { margin: 0 0 2px 0; font-size: 20px; } .cond { font-size: 12px; line-height: 1.35; }
.where { font-size: 12px; background: #1565c0; padding: 1px 5px; border-radius: 3px; vertical-align: middle; }
.progress { font-size: 12px; } .bar { background: #37474f; height: 6px; border-radius: 3px; margin-top: 2px; }
.bar div { background: #64b5f6; height: 6px; border-radius: 3px; }
ul.alarms { list-style: none; padding: 0; margin: 0; font-size: 12px; max-height: 118px; overflow-y: auto; }
ul.alarms li { padding: 2px 4px; margin-bottom: 2px; border-left: 6px solid; background: #263238; }
ul.alarms li.acked { opacity: .55; border-left-style: dotted; } ul.alarms li.acked .sev::after { content: " ✓ ack"; }
.sev { font-weight: bold; text-transform: uppercase; font-size: 10px; margin-right: 4px; }
.banner { padding: 4px 10px; border-radius: 4px; font-weight: bold; font-size: 14px; }
.banner.stale { background: #616161; color: #fff; } .banner.ok { display: none; }
.note { font-size: 11px; opacity: .8; }
"""

#: the header's slots (plain HTML of the page, filled from the ``texts`` source)
HEADER_SLOTS = ("conditions", "numbers", "tiles", "banner", "nodes", "progress", "alarm_list", "ack_result", "stale")

#: runs in the browser when the header texts change (and once at load): fill the header's slots
TEXTS_JS = """
const d = source.data;
for (const k of Object.keys(d)) {
  if (k === "stale") { document.getElementById("na64-header").classList.toggle("na64-stale", d[k][0] === "1"); continue; }
  const el = document.getElementById("na64-" + k);
  if (el && el.innerHTML !== d[k][0]) { el.innerHTML = d[k][0]; }
}
"""

#: the page around the document: dark background, header, the stale/monitor-down looks, the page's script
TEMPLATE = """
{% block preamble %}
<link rel="icon" href="data:,">
<style>
{{ header_css | safe }}
 #na64-header { display: grid; grid-template-columns: 370px minmax(420px, 1fr) 230px 440px; gap: 6px;
   height: 206px; overflow: hidden; margin-bottom: 4px; }
 #na64-header > div { overflow: hidden; }
 #na64-alarm_list ul.alarms { max-height: 112px; }
 #na64-ack_result { font-size: 12px; color: #ffcc80; min-height: 14px; }
 html, body { background: #15191c; color: #e0e0e0; font-family: "DejaVu Sans", sans-serif; }
 body { margin: 4px 6px; }
 .na64-stale { filter: grayscale(1) brightness(.55); }
 #na64-down { display: none; position: fixed; top: 0; left: 0; right: 0; z-index: 1000; padding: 10px 16px;
   font: bold 20px sans-serif; color: #fff; text-align: center;
   background: repeating-linear-gradient(45deg, #b71c1c, #b71c1c 18px, #7f0000 18px, #7f0000 36px); }
 body.na64-monitor-down #na64-down { display: block; }
 body.na64-monitor-down .bk-root, body.na64-monitor-down > div:not(#na64-down) { filter: grayscale(1) brightness(.45); }
</style>
<script>
(function () {
  // Detect a dead websocket ourselves: "MONITOR DOWN" (the service or the network), unlike "NO DATA".
  var Native = window.WebSocket;
  var na64 = window.na64 = { wsOpen: false, lastMessage: 0, downSince: null, updates: 0, lastUpdate: null,
                             seenAlarms: null, alerts: [] };
  function setDown(down, why) {
    if (down && na64.downSince === null) { na64.downSince = Date.now(); }
    if (!down) { na64.downSince = null; }
    var body = document.body; if (!body) { return; }
    body.classList.toggle("na64-monitor-down", down);
    var el = document.getElementById("na64-down");
    if (el && down) { el.textContent = "MONITOR DOWN — no connection to the na64-online service since " +
                      new Date(na64.downSince).toISOString().substr(11, 8) + " UTC (" + why + ")"; }
  }
  na64.setDown = setDown;
  function Wrapped(url, protocols) {
    var ws = protocols === undefined ? new Native(url) : new Native(url, protocols);
    ws.addEventListener("open", function () { na64.wsOpen = true; na64.lastMessage = Date.now(); setDown(false); });
    ws.addEventListener("message", function (ev) {
      na64.lastMessage = Date.now();
      var n = ev.data.byteLength || ev.data.length || 0;
      if (n > 4096) { na64.lastLarge = { t: na64.lastMessage, bytes: n }; }
    });
    ws.addEventListener("close", function () { na64.wsOpen = false; setDown(true, "connection closed"); });
    return ws;
  }
  Wrapped.prototype = Native.prototype;
  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (k) { Wrapped[k] = Native[k]; });
  window.WebSocket = Wrapped;
  function ages(root, now) {
    root.querySelectorAll(".na64-age").forEach(function (el) {
      var t = parseFloat(el.getAttribute("data-t"));
      if (t > 0) { var s = Math.max(0, now / 1000 - t); el.textContent = s < 120 ? s.toFixed(0) + " s ago" :
                   (s / 60).toFixed(0) + " min ago"; }
    });
    root.querySelectorAll("*").forEach(function (el) { if (el.shadowRoot) { ages(el.shadowRoot, now); } });
  }
  // the header's first fill, once the document has arrived (later fills: TEXTS_JS on change)
  var first = setInterval(function () {
    var doc = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
    var texts = doc && doc.get_model_by_name("texts");
    if (!texts) { return; }
    clearInterval(first);
    var d = texts.data;
    Object.keys(d).forEach(function (k) {
      if (k === "stale") { document.getElementById("na64-header").classList.toggle("na64-stale", d[k][0] === "1"); }
      else { var el = document.getElementById("na64-" + k); if (el) { el.innerHTML = d[k][0]; } }
    });
  }, 50);
  setInterval(function () {
    var now = Date.now();
    // the server's heartbeat comes every few seconds; none for long: the service hangs
    if (na64.wsOpen && now - na64.lastMessage > {{ heartbeat_timeout_ms }}) { setDown(true, "no heartbeat"); }
    ages(document, now);
  }, 1000);
  // a short beep (WebAudio; no sound file) and a notification for a new alarm of a chosen severity
  na64.alert = function (severity, text) {
    na64.alerts.push({ severity: severity, text: text, t: Date.now() });
    try {
      var ctx = na64.audio || (na64.audio = new (window.AudioContext || window.webkitAudioContext)());
      var osc = ctx.createOscillator(), gain = ctx.createGain();
      osc.frequency.value = severity === "critical" ? 880 : 660; gain.gain.value = 0.2;
      osc.connect(gain); gain.connect(ctx.destination); osc.start(); osc.stop(ctx.currentTime + 0.4);
    } catch (e) { /* no audio device */ }
    if (window.Notification) {
      if (Notification.permission === "granted") { new Notification("NA64 " + severity.toUpperCase(), { body: text }); }
      else if (Notification.permission === "default") { Notification.requestPermission(); }
    }
  };
})();
</script>
{% endblock %}
{% block contents %}
<div id="na64-down"></div>
<div id="na64-header">
  <div><div id="na64-conditions"></div><div id="na64-numbers"></div></div>
  <div><div id="na64-tiles"></div><div id="na64-banner"></div></div>
  <div><div id="na64-nodes"></div><div id="na64-progress"></div></div>
  <div><div id="na64-alarm_list"></div>{{ embed(roots.ack) }}<div id="na64-ack_result"></div></div>
</div>
{{ embed(roots.root) }}
{% for root in roots %}{% if root.name not in ("ack", "root") %}{{ embed(root) }}{% endif %}{% endfor %}
{% endblock %}
"""

#: runs in the browser when the alarm source changes: alert for alarms not seen before
ALARM_JS = """
const na64 = window.na64; if (!na64) { return; }
const ids = source.data.id, sev = source.data.severity, text = source.data.text, state = source.data.state;
const first = na64.seenAlarms === null;
if (first) { na64.seenAlarms = new Set(); }
const wanted = new Set(toggles.active.map((i) => toggles.labels[i]));
for (let i = 0; i < ids.length; i++) {
  if (na64.seenAlarms.has(ids[i])) { continue; }
  na64.seenAlarms.add(ids[i]);
  if (!first && state[i] === "raised" && wanted.has(sev[i])) { na64.alert(sev[i], text[i]); }
}
"""

#: runs in the browser when a spill's data arrive: the marker the browser tests read
META_JS = """
const na64 = window.na64; if (!na64) { return; }
na64.updates += 1;
na64.lastUpdate = { run: source.data.run[0], spill: source.data.spill[0], published_at: source.data.published_at[0],
                    received: Date.now() };
"""


@functools.cache
def page_template():
    """:data:`TEMPLATE` compiled once (given as text, Bokeh would compile it for every page served)."""
    from bokeh.core.templates import get_env

    return get_env().from_string("{% extends base %}\n" + TEMPLATE)


def _empty(*names: str) -> dict:
    return {n: [] for n in names}


class DashboardPage:
    """The models of one open page (one Bokeh document) and how a prepared update goes into them.

    ``on_open(run, spill)`` / ``on_live()``: a history choice (the feed answers with an update);
    ``on_ack(alarm, token, comment)`` returns a message for the shifter; ``on_event(run, spill,
    event)`` returns the event display's data or None; ``on_channel(slot)`` returns a channel's
    trends; ``on_search(text)`` the alarm history rows."""

    def __init__(self, doc: Document, *, maps: Sequence[tuple[str, str]] = (), heartbeat_timeout_ms: int = 15000,
                 on_open: Callable[[int, int | None], None] | None = None, on_live: Callable[[], None] | None = None,
                 on_ack: Callable[[str, str, str], str] | None = None,
                 on_event: Callable[[int, int, int], dict | None] | None = None,
                 on_channel: Callable[[int], dict] | None = None,
                 on_search: Callable[[str], dict] | None = None) -> None:
        self.doc = doc
        self.maps = tuple(maps)  # (data source, title) of each channel map (web/panels.channel_maps)
        self.live = True  # follows the newest spill; False: an archived spill is shown
        self.last_key: tuple | None = None
        self._on_open, self._on_live, self._on_ack = on_open, on_live, on_ack
        self._on_event, self._on_channel, self._on_search = on_event, on_channel, on_search
        self._quantity = "occupancy"
        self._values: dict[str, Any] = {}
        self._channel_data: dict[str, Any] = {}
        css = InlineStyleSheet(css=COMPONENT_CSS)
        self.css = css
        doc.title = "na64-online shift dashboard"
        doc.theme = built_in_themes["dark_minimal"]
        doc.template = page_template()
        doc.template_variables["heartbeat_timeout_ms"] = heartbeat_timeout_ms
        doc.template_variables["header_css"] = COMPONENT_CSS.replace(":host", "#na64-header")
        self.sources: dict[str, ColumnDataSource] = {}
        self.divs: dict[str, Div] = {}

        self._src = lambda name, data: src(name, data)
        self._div = lambda name, width=None, height=None, **kw: div(name, width, height, **kw)

        def div(name, width=None, height=None, **kw):
            d = Div(text="", stylesheets=[css], name=name, **({"width": width} if width else {}),
                    **({"height": height} if height else {}), **kw)
            self.divs[name] = d
            return d

        def src(name, data):
            s = ColumnDataSource(data, name=name)
            self.sources[name] = s
            return s

        # ------------------------------------------------ header
        self.meta = src("meta", {"run": [None], "spill": [None], "published_at": [0.0], "now": [0.0]})
        self.meta.js_on_change("data", CustomJS(args={"source": self.meta}, code=META_JS))
        # the header is plain HTML of the page (no Bokeh layout to recompute): its slots are filled from the
        # ``texts`` source by the page's script (TEXTS_JS)
        self._text_values = dict.fromkeys(HEADER_SLOTS, "")
        self._text_values["conditions"] = '<div class="cond"><h2>na64-online</h2>waiting for the first spill…</div>'
        self.texts = src("texts", {k: [v] for k, v in self._text_values.items()})
        self.texts.js_on_change("data", CustomJS(args={"source": self.texts}, code=TEXTS_JS))
        self.alarms = src("alarms", _empty("name", "severity", "text", "rule", "state", "id", "since", "who",
                                           "colour", "acked", "runbook", "silenced"))
        self.alarm_choice = Select(title="", options=[], width=115, name="ack_alarm")
        self.token = PasswordInput(placeholder="your token", width=95, name="ack_token")
        self.comment = TextInput(placeholder="comment", width=100, name="ack_comment")
        ack = Button(label="acknowledge", width=95, button_type="warning", name="ack_button")
        ack.on_click(self._acknowledge)
        self.sound = CheckboxGroup(labels=list(SEVERITIES), active=[0, 1], inline=True, name="sound",
                                   stylesheets=[css])
        self.alarms.js_on_change("data", CustomJS(args={"source": self.alarms, "toggles": self.sound}, code=ALARM_JS))
        sound_label = Div(text='<span class="note">sound + notification for new:</span>', stylesheets=[css])
        self.ack_root = column(row(self.alarm_choice, self.token, self.comment, ack), row(sound_label, self.sound),
                               name="ack", css_classes=["na64-ack"])

        # ------------------------------------------------ physics
        self.stamps: list[Label] = []

        def fig(title, **kw):
            kw.setdefault("height", 315)
            p = figure(title=title, sizing_mode="stretch_width", toolbar_location=None, **kw)
            stamp = Label(x=4, y=4, x_units="screen", y_units="screen", text="", text_font_size="9pt",
                          text_color="#9e9e9e", background_fill_color="#15191c", background_fill_alpha=0.7)
            p.add_layout(stamp)  # freshness: which spill, finished when
            self.stamps.append(stamp)
            return p

        trend = src("trend", _empty("spill", "beam", "eot", "eot_cum", "hf", "hf_srd", "hf_colour", "hf_srd_colour"))
        beam = fig("Beam particles and EOT per spill (run)", x_axis_label="spill", y_axis_label="beam particles")
        beam.vbar(x="spill", top="beam", width=0.8, source=trend, color="#4fc3f7", legend_label="beam particles")
        beam.extra_y_ranges = {"eot": DataRange1d(start=0)}
        beam.add_layout(LinearAxis(y_range_name="eot", axis_label="cumulative EOT"), "right")
        beam.line(x="spill", y="eot_cum", source=trend, y_range_name="eot", color="#ffb74d", line_width=2,
                  legend_label="cumulative EOT")
        beam.legend.location = "top_left"
        beam.add_tools(HoverTool(tooltips=[("spill", "@spill"), ("beam", "@beam{0,0}"), ("EOT", "@eot{0.000a}"),
                                           ("run EOT", "@eot_cum{0.000a}")]))
        self.beam = beam
        hf = fig("Hadron fraction per spill", x_axis_label="spill", y_axis_label="fraction", x_range=beam.x_range)
        hf.y_range.start = 0
        self.hf_warn = Span(location=0.05, dimension="width", line_color=STATE_COLOURS["WARNING"], line_dash="dashed",
                            line_width=2, name="hf_warning")
        self.hf_bad = Span(location=0.15, dimension="width", line_color=STATE_COLOURS["BAD"], line_dash="dashed",
                           line_width=2, name="hf_bad")
        hf.add_layout(self.hf_warn)
        hf.add_layout(self.hf_bad)
        hf.scatter(x="spill", y="hf", source=trend, size=8, color="hf_colour", legend_label="E_HCAL > cut")
        hf.scatter(x="spill", y="hf_srd", source=trend, size=8, color="hf_srd_colour", marker="triangle",
                   legend_label="no SRD tag")
        hf.legend.location = "top_left"
        hf.add_tools(HoverTool(tooltips=[("spill", "@spill"), ("E_HCAL estimator", "@hf{0.0000}"),
                                         ("SRD estimator", "@hf_srd{0.0000}")]))
        self.hf = hf
        tp = src("time_profile", _empty("left", "right", "top"))
        profile = fig("Intensity vs time in spill", x_axis_label="time in spill / s", y_axis_label="events / bin")
        profile.quad(left="left", right="right", top="top", bottom=0, source=tp, color="#81c784")
        self.profile = profile
        plane_src = src("plane", {"image": [np.full((1, 1), np.nan)], "x": [0.0], "y": [0.0], "dw": [1.0], "dh": [1.0]})
        self.plane_mapper = LogColorMapper(palette="Viridis256", low=1, high=10, nan_color=(0, 0, 0, 0))
        plane = fig("E_HCAL vs E_ECAL (beam trigger)", x_axis_label="E_ECAL / GeV", y_axis_label="E_HCAL / GeV")
        plane.image(image="image", x="x", y="y", dw="dw", dh="dh", source=plane_src, color_mapper=self.plane_mapper)
        plane.add_layout(ColorBar(color_mapper=self.plane_mapper, width=8, title="events"), "right")
        self.signal_box = BoxAnnotation(left=0, right=50, bottom=0, top=1, fill_alpha=0.1, fill_color="#ff5252",
                                        line_color="#ff5252", line_width=2)
        plane.add_layout(self.signal_box)
        pc = src("plane_cands", _empty("e_ecal", "e_hcal"))
        plane.scatter(x="e_ecal", y="e_hcal", source=pc, marker="x", size=12, color="#ff5252", line_width=2,
                      legend_label="candidates")
        self.plane = plane
        spectra = []
        self.chi2: dict[str, Label] = {}
        for name, title, log in SPECTRA:
            own = src(f"spec_{name}", _empty("x", "y"))
            ref = src(f"ref_{name}", _empty("x", "y"))
            p = fig(f"{title} (physics trigger)", height=290, x_axis_label="GeV", y_axis_label="events",
                    y_axis_type="log" if log else "linear")
            p.step(x="x", y="y", source=ref, mode="after", color="#9e9e9e", line_width=2, legend_label="reference")
            p.step(x="x", y="y", source=own, mode="after", color="#4fc3f7", line_width=2, legend_label="this spill")
            p.legend.location = "top_right"
            p.legend.label_text_font_size = "9pt"
            self.chi2[name] = Label(x=4, y=22, x_units="screen", y_units="screen", text="", text_font_size="9pt",
                                    text_color="#e0e0e0", background_fill_color="#15191c", background_fill_alpha=0.7,
                                    name=f"chi2_{name}")
            p.add_layout(self.chi2[name])  # χ²/p against the reference, on the canvas
            spectra.append(p)
            setattr(self, f"spec_{name}", p)
        cands = src("candidates", _empty("run", "spill", "event", "e_ps", "e_ecal", "e_hcal", "srd_sum", "veto_max"))
        fmt3 = NumberFormatter(format="0.000")
        cols = [TableColumn(field="spill", title="spill", formatter=NumberFormatter(format="0"), width=45),
                TableColumn(field="event", title="event", formatter=NumberFormatter(format="0"), width=55)] + [
            TableColumn(field=k, title=t, formatter=fmt3) for k, t in
            (("e_ps", "E_PS"), ("e_ecal", "E_ECAL"), ("e_hcal", "E_HCAL"), ("srd_sum", "SRD"), ("veto_max", "VETO"))]
        self.cand_title = Div(text="<b>Missing-energy candidates this run</b> <span class='note'>(click one for its "
                                   "event display; the count is in the header)</span>", stylesheets=[css],
                              sizing_mode="stretch_width")
        self.cand_table = DataTable(source=cands, columns=cols, height=270, index_position=None,
                                    sizing_mode="stretch_width", name="candidates_table", stylesheets=[css])
        cands.selected.on_change("indices", self._candidate_clicked)
        physics = column(
            row(beam, hf, profile, plane, sizing_mode="stretch_width"),
            row(*spectra, column(self.cand_title, self.cand_table, sizing_mode="stretch_width"),
                sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

        self._builders = {1: self._build_channels, 2: self._build_event, 3: self._build_history,
                          4: self._build_alarm_history}  # built when first shown: a page opens faster
        self.tabs = Tabs(tabs=[TabPanel(child=physics, title="Physics")] + [
            TabPanel(child=Div(text="…", stylesheets=[css]), title=title)
            for title in ("Channels", "Event display", "History", "Alarm history")],
            sizing_mode="stretch_width", name="tabs")
        self.tabs.on_change("active", self._tab_changed)
        self.root = column(self.tabs, sizing_mode="stretch_width", name="root", css_classes=["na64-root"])
        doc.add_root(self.ack_root)
        doc.add_root(self.root)
        for source in (self.meta, self.alarms, self.texts):  # read by the page's script: roots, to be synced
            doc.add_root(source)
        self._alarm_history_loaded = False

    # ------------------------------------------------------------------ tabs built when first shown
    def _build_channels(self):
        css, src, div = self.css, self._src, self._div
        self.map_mappers = {q: LinearColorMapper(palette="Viridis256" if q != "status" else
                                                 ["#2e7d32", "#f9a825", "#ef6c00", "#c62828"], low=0, high=1,
                                                 nan_color="#424242") for q in MAP_QUANTITIES}
        self.map_renderers = []
        self.quantity = Select(title="colour by", options=list(MAP_QUANTITIES), value="occupancy", width=140,
                               name="map_quantity")
        self.quantity.on_change("value", self._quantity_changed)
        maps = []
        for src_name, title in self.maps:
            s = src(src_name, _empty("x", "y", "slot", "occupancy", "pedestal", "noise", "status", "detector", "module",
                                     "cx", "cy", "src_id", "port", "channel", "line", "width", "problem"))
            p = figure(title=f"{title}", height=330, sizing_mode="stretch_width", toolbar_location=None,
                       match_aspect=True, tools="tap")
            r = p.rect(x="x", y="y", width=0.95, height=0.95, source=s,
                       fill_color={"field": "occupancy", "transform": self.map_mappers["occupancy"]},
                       line_color="line", line_width="width")
            p.add_tools(HoverTool(renderers=[r], tooltips=[
                ("detector", "@detector"), ("module", "@module"), ("x, y", "@cx, @cy"),
                ("srcID / port / channel", "@src_id / @port / @channel"), ("occupancy", "@occupancy{0.0000}"),
                ("pedestal", "@pedestal{0.0}"), ("noise (RMS)", "@noise{0.00}"), ("problem", "@problem")]))
            p.axis.visible = False
            p.grid.visible = False
            s.selected.on_change("indices", self._channel_clicked(s))
            self.map_renderers.append(r)
            maps.append(p)
        self.colour_bar = ColorBar(color_mapper=self.map_mappers["occupancy"], ticker=BasicTicker(), width=10,
                                   title="occupancy")
        maps[-1].add_layout(self.colour_bar, "right")
        problems = src("problems", _empty("name", "kind", "detail", "slot"))
        problem_table = DataTable(source=problems, columns=[
            TableColumn(field="name", title="problem channel", width=260), TableColumn(field="kind", title="kind",
                                                                                    width=70),
            TableColumn(field="detail", title="detail", width=260)], height=300, index_position=None,
            sizing_mode="stretch_width", stylesheets=[css])
        problems.selected.on_change("indices", self._problem_clicked)
        ch_trend = src("channel_trend", _empty("spill", "occupancy", "pedestal", "noise"))
        self.channel_plot = figure(title="channel trends (click a channel)", height=300, sizing_mode="stretch_width",
                                   toolbar_location=None, x_axis_label="spill")
        self.channel_plot.scatter(x="spill", y="occupancy", source=ch_trend, color="#4fc3f7", legend_label="occupancy")
        self.channel_plot.extra_y_ranges = {"adc": DataRange1d()}
        self.channel_plot.add_layout(LinearAxis(y_range_name="adc", axis_label="ADC"), "right")
        self.channel_plot.line(x="spill", y="pedestal", source=ch_trend, y_range_name="adc", color="#ffb74d",
                               legend_label="pedestal")
        self.channel_plot.line(x="spill", y="noise", source=ch_trend, y_range_name="adc", color="#e57373",
                               legend_label="noise (RMS)")
        self.channel_plot.legend.location = "top_left"
        channels = column(row(*maps, sizing_mode="stretch_width"),
                          row(column(self.quantity, div("map_note", width=140)), problem_table, self.channel_plot,
                              sizing_mode="stretch_width"), sizing_mode="stretch_width")
        return channels

    def _build_event(self):
        css, src, div = self.css, self._src, self._div
        self.event_info = div("event_info", sizing_mode="stretch_width")
        emaps = []
        self.event_mapper = LinearColorMapper(palette="Inferno256", low=0, high=1, nan_color="#263238")
        for name, title in (("ev_ps", "ECAL preshower: cell energy / GeV"), ("ev_ecal", "ECAL main: cell energy / GeV"),
                            ("ev_hcal", "HCAL: cell energy / GeV")):
            s = src(name, _empty("x", "y", "energy", "label"))
            p = figure(title=title, height=300, sizing_mode="stretch_width", toolbar_location=None, match_aspect=True)
            r = p.rect(x="x", y="y", width=0.95, height=0.95, source=s,
                       fill_color={"field": "energy", "transform": self.event_mapper}, line_color="#263238")
            p.text(x="x", y="y", text="label", source=s, text_align="center", text_baseline="middle",
                   text_font_size="9pt", text_color="#ffffff")
            p.add_tools(HoverTool(renderers=[r], tooltips=[("cell", "@x, @y"), ("E / GeV", "@energy{0.000}")]))
            p.axis.visible = False
            p.grid.visible = False
            emaps.append(p)
        emaps[-1].add_layout(ColorBar(color_mapper=self.event_mapper, width=10, title="GeV"), "right")
        wave = src("waveforms", _empty("xs", "ys", "label", "colour"))
        self.wave_plot = figure(title="waveforms of the hit cells", height=330, sizing_mode="stretch_width",
                                toolbar_location=None, x_axis_label="sample", y_axis_label="ADC", name="waveform_plot")
        self.wave_plot.multi_line(xs="xs", ys="ys", source=wave, color="colour", line_width=2)
        self.wave_plot.add_tools(HoverTool(tooltips=[("cell", "@label")]))
        event = column(self.event_info, row(*emaps, sizing_mode="stretch_width"), self.wave_plot,
                       sizing_mode="stretch_width")
        return event

    def _build_history(self):
        css, src, div = self.css, self._src, self._div
        self.open_run = TextInput(title="run", width=90, name="open_run")
        self.open_spill = TextInput(title="spill (empty: whole run)", width=160, name="open_spill")
        open_button = Button(label="open", width=80, name="open_button")
        open_button.on_click(self._open_clicked)
        live_button = Button(label="Live", width=80, button_type="success", name="live_button")
        live_button.on_click(self._live_clicked)
        recent = src("recent", _empty("run", "spill", "quality", "reasons", "events", "beam", "finished"))
        self.recent_table = DataTable(source=recent, columns=[
            TableColumn(field="run", title="run", width=50), TableColumn(field="spill", title="spill", width=50),
            TableColumn(field="quality", title="quality", width=80), TableColumn(field="reasons", title="reasons",
                                                                               width=700),
            TableColumn(field="events", title="events", width=80), TableColumn(field="beam", title="beam", width=90),
            TableColumn(field="finished", title="finished (UTC)", width=140)],
            height=560, index_position=None, sizing_mode="stretch_width", stylesheets=[css], name="recent_table")
        recent.selected.on_change("indices", self._recent_clicked)
        history = column(row(live_button, self.open_run, self.open_spill, open_button, div("history_note", width=600)),
                         self.recent_table, sizing_mode="stretch_width")
        return history

    def _build_alarm_history(self):
        css, src, div = self.css, self._src, self._div
        self.search = TextInput(placeholder="search alarm history (name, text, user, comment)", width=400,
                                name="alarm_search")
        self.search.on_change("value", self._search_changed)
        ahist = src("alarm_history", _empty("time", "name", "severity", "state", "run", "spill", "text", "user"))
        alarm_history = column(self.search, DataTable(source=ahist, columns=[
            TableColumn(field="time", title="time (UTC)", width=150), TableColumn(field="name", title="alarm",
                                                                                 width=170),
            TableColumn(field="severity", title="severity", width=70), TableColumn(field="state", title="state",
                                                                                  width=90),
            TableColumn(field="run", title="run", width=50), TableColumn(field="spill", title="spill", width=50),
            TableColumn(field="text", title="detail", width=600), TableColumn(field="user", title="by", width=200)],
            height=560, index_position=None, sizing_mode="stretch_width", stylesheets=[css]),
            sizing_mode="stretch_width")
        return alarm_history

    def ensure_tab(self, index: int) -> None:
        builder = self._builders.pop(index, None)
        if builder is not None:
            tabs = list(self.tabs.tabs)  # a new panel: BokehJS renders a replaced panel, not a replaced child
            tabs[index] = TabPanel(child=builder(), title=tabs[index].title)
            self.tabs.tabs = tabs
            pending = getattr(self, '_pending_recent', None)
            if index == 3 and pending is not None:
                self.sources['recent'].data = dict(pending)

    # ------------------------------------------------------------------ updates
    def apply(self, data: PanelData) -> None:
        """Copy one spill's prepared content into this page's models (on the document's own tick)."""
        self.last_key = data.key
        # the Channels tab's sources only while it is shown (the browser then has less to do per spill)
        channels_shown = self.tabs.active == CHANNELS_TAB
        self._channel_data = {k: v for k, v in data.sources.items() if is_channel_source(k)}
        for name, columns in data.sources.items():
            s = self.sources.get(name)
            if s is not None and (channels_shown or not is_channel_source(name)):
                s.data = dict(columns)
        self.set_texts({k: v for k, v in data.texts.items() if k in HEADER_SLOTS})
        for name, text in data.texts.items():
            d = self.divs.get(name)
            if d is not None:
                d.text = text
        v = self._values = dict(data.values)
        warn, bad = v.get("hf_limits", (0.05, 0.15))
        self.hf_warn.location, self.hf_bad.location = warn, bad
        top = round(v.get("hf_top", bad * 1.6), 2)
        if self.hf.y_range.end != top:
            self.hf.y_range.end = top
        self.plane_mapper.high = max(2.0, v.get("plane_high", 2.0))
        box = v.get("signal_box")
        if box is not None:
            self.signal_box.left, self.signal_box.right, self.signal_box.bottom, self.signal_box.top = box
        self._map_ranges()
        for name, label in self.chi2.items():
            label.text = data.texts.get(f"chi2_{name}", "")
        stamp = v.get("stamp", "")
        for label in self.stamps:  # on the canvas: no page re-layout
            label.text = stamp
        self.meta.data = {"run": [data.key[0]], "spill": [data.key[1]], "published_at": [data.published_at],
                          "now": [data.published_at]}

    def set_texts(self, texts: dict[str, str]) -> None:
        """Fill header slots (HTML); sent only when one changed."""
        changed = False
        for name, text in texts.items():
            if name in self._text_values and self._text_values[name] != text:
                self._text_values[name] = text
                changed = True
        if changed:
            self.texts.data = {k: [v] for k, v in self._text_values.items()}

    def text(self, name: str) -> str:
        return self._text_values.get(name, "")

    def apply_status(self, texts: dict[str, str], stale: bool) -> None:
        """Live status (nodes, progress, banner) and the stale look of the panels (header included)."""
        self.set_texts(dict(texts, stale="1" if stale else ""))
        classes = ["na64-root", "na64-stale"] if stale else ["na64-root"]
        if list(self.root.css_classes) != classes:
            self.root.css_classes = classes

    def apply_alarms(self, columns: dict) -> None:
        self.alarms.data = dict(columns)
        options = [(i, f"{n} ({s})") for i, n, s in zip(columns["id"], columns["name"], columns["state"])]
        self.alarm_choice.options = options
        if options and self.alarm_choice.value not in [o[0] for o in options]:
            self.alarm_choice.value = options[0][0]
        rows = []
        n = len(columns["name"])
        for name, sev, text, rule, colour, acked, who, since, runbook, silenced in zip(
                columns["name"], columns["severity"], columns["text"], columns["rule"], columns["colour"],
                columns["acked"], columns["who"], columns["since"], columns.get("runbook", [""] * n),
                columns.get("silenced", [""] * n)):
            ack = f" — acknowledged by {html.escape(who)}" if acked else ""
            if silenced:
                ack += f" — silenced in Alertmanager by {html.escape(silenced)}"
            if runbook:
                ack += f' <a href="{html.escape(runbook, quote=True)}" target="_blank">what to do</a>'
            rows.append(f'<li class="{"acked" if acked else "raised"}" data-alarm="{html.escape(name)}" '
                        f'style="border-color:{colour}" title="rule: {html.escape(rule)} ({html.escape(name)}, '
                        f'since {html.escape(since)})"><span class="sev" style="color:{colour}">{html.escape(sev)}</span>'
                        f'{html.escape(text)}{ack}</li>')
        self.set_texts({"alarm_list": '<b>Active alarms</b><ul class="alarms">' + (
            "".join(rows) or '<li style="border-color:#2e7d32">none</li>') + "</ul>"})

    def heartbeat(self, now: float) -> None:
        self.meta.patch({"now": [(0, now)]})

    def show_recent(self, columns: dict) -> None:
        self._pending_recent = columns
        if "recent" in self.sources:
            self.sources["recent"].data = dict(columns)

    # ------------------------------------------------------------------ shifter's actions
    def _acknowledge(self) -> None:
        if self._on_ack is None:
            return
        message = self._on_ack(self.alarm_choice.value or "", self.token.value or "", self.comment.value or "")
        self.set_texts({"ack_result": html.escape(message)})
        if message.startswith("acknowledged"):
            self.comment.value = ""

    def _candidate_clicked(self, attr, old, new) -> None:
        if not new or self._on_event is None:
            return
        data = self.sources["candidates"].data
        i = new[0]
        run, spill, event = data["run"][i], data["spill"][i], data["event"][i]
        if not all(math.isfinite(float(x)) for x in (run, spill, event)):
            return
        self.ensure_tab(2)
        self.show_event(self._on_event(int(run), int(spill), int(event)), int(run), int(spill), int(event))
        self.tabs.active = 2

    def show_event(self, out: dict | None, run: int, spill: int, event: int) -> None:
        if out is None or "error" in (out or {}):
            why = (out or {}).get("error", "the raw data of this event are not available")
            self.event_info.text = f"<b>run {run} spill {spill} event {event}</b>: {html.escape(why)}"
            for name in ("ev_ps", "ev_ecal", "ev_hcal"):
                self.sources[name].data = _empty("x", "y", "energy", "label")
            self.sources["waveforms"].data = _empty("xs", "ys", "label", "colour")
            return
        self.event_info.text = (f"<b>run {out['run']} spill {out['spill']} event {out['event']}</b> · "
                                f"E_PS {out['e_ps']:.3f} GeV · E_ECAL {out['e_ecal']:.3f} GeV · "
                                f"E_HCAL {out['e_hcal']:.3f} GeV · candidate {out.get('candidate')}")
        cells = {"ev_ps": [], "ev_ecal": [], "ev_hcal": []}
        for c in out["channels"]:
            key = ("ev_ps" if c["module"] == 0 else "ev_ecal") if c["detector"] == "ECAL" else \
                "ev_hcal" if c["detector"] == "HCAL" else None
            if key is not None:
                x = c["x"] + (4 * c["module"] if key == "ev_hcal" else 0)
                cells[key].append((x, c["y"], c["energy_gev"]))
        high = max([e for v in cells.values() for _, _, e in v] + [1e-3])
        self.event_mapper.high = high
        for key, v in cells.items():
            self.sources[key].data = {"x": [a for a, _, _ in v], "y": [b for _, b, _ in v],
                                      "energy": [e for _, _, e in v],
                                      "label": [f"{e:.2f}" if e >= 0.05 * high else "" for _, _, e in v]}
        hit = sorted((c for c in out["channels"] if c.get("samples")), key=lambda c: -c["energy_gev"])[:12]
        palette = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#4db6ac", "#f06292",
                   "#aed581", "#90a4ae", "#ff8a65", "#9575cd"]
        self.sources["waveforms"].data = {
            "xs": [list(range(len(c["samples"]))) for c in hit], "ys": [list(c["samples"]) for c in hit],
            "label": [f"{c['detector']} {c['module']} ({c['x']},{c['y']}) {c['src_id']}/{c['port']}/{c['channel']}: "
                      f"{c['energy_gev']:.3f} GeV" for c in hit],
            "colour": palette[: len(hit)]}

    def _quantity_changed(self, attr, old, new) -> None:
        mapper = self.map_mappers.get(new)
        if mapper is None:
            return
        for r in self.map_renderers:
            r.glyph.fill_color = {"field": new, "transform": mapper}
        self.colour_bar.color_mapper = mapper
        self.colour_bar.title = new if new != "status" else "status: 0 ok, 1 noisy, 2 hot/shift, 3 dead"

    def _channel_clicked(self, source: ColumnDataSource):
        def clicked(attr, old, new):
            if new and self._on_channel is not None:
                self._show_channel(int(source.data["slot"][new[0]]))
        return clicked

    def _problem_clicked(self, attr, old, new) -> None:
        if new and self._on_channel is not None:
            slot = int(self.sources["problems"].data["slot"][new[0]])
            if slot >= 0:
                self._show_channel(slot)

    def _show_channel(self, slot: int) -> None:
        out = self._on_channel(slot)
        self.sources["channel_trend"].data = out["columns"]
        self.channel_plot.title.text = f"{out['name']}: trends over the run"

    def _open_clicked(self) -> None:
        try:
            run = int(self.open_run.value)
            spill = int(self.open_spill.value) if (self.open_spill.value or "").strip() else None
        except ValueError:
            self.divs["history_note"].text = "run and spill are numbers"
            return
        self._open(run, spill)

    def _recent_clicked(self, attr, old, new) -> None:
        if new:
            d = self.sources["recent"].data
            self._open(int(d["run"][new[0]]), int(d["spill"][new[0]]))

    def _open(self, run: int, spill: int | None) -> None:
        if self._on_open is not None:
            self.live = False
            self.divs["history_note"].text = f"opening run {run}{'' if spill is None else f' spill {spill}'}…"
            self._on_open(run, spill)

    def _live_clicked(self) -> None:
        self.live = True
        self.divs["history_note"].text = "Live: following the newest spill"
        if self._on_live is not None:
            self._on_live()

    def _search_changed(self, attr, old, new) -> None:
        if self._on_search is not None:
            self.sources["alarm_history"].data = self._on_search(new or "")

    def _map_ranges(self) -> None:
        if not hasattr(self, "map_mappers"):
            return  # the Channels tab is not built yet
        for q in MAP_QUANTITIES:
            lo, hi = self._values.get(f"range_{q}", (0.0, 1.0))
            self.map_mappers[q].low, self.map_mappers[q].high = lo, hi

    def _tab_changed(self, attr, old, new) -> None:
        self.ensure_tab(new)
        if new == CHANNELS_TAB:
            self._map_ranges()
        if new == CHANNELS_TAB and self._channel_data:
            for name, columns in self._channel_data.items():
                self.sources[name].data = dict(columns)
        if new == 4 and not self._alarm_history_loaded and self._on_search is not None:
            self._alarm_history_loaded = True
            self.sources["alarm_history"].data = self._on_search(self.search.value or "")
