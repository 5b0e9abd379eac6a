"""Pushing the dashboard: Bokeh server documents in the FastAPI app, updated in place per spill.

``bokeh_fastapi.BokehFastAPI`` serves the page (``GET /``) and its websocket
(``/ws``); BokehJS comes from the installed bokeh package (``/static``). Every
open page is a :class:`~.dashboard.DashboardPage` registered with the one
:class:`DashboardFeed` of the app. The feed's task, on the web server's event
loop, watches the monitor's latest immutable snapshot (an attribute read, every
``poll_seconds``): for a new spill it prepares the page content ONCE
(:func:`~.panels.prepare`, in a worker thread) and schedules the same
:class:`~.panels.PanelData` onto every live page with the page document's
``add_next_tick_callback``; Bokeh sends each page the changed column data over
its websocket. The live status (readout nodes, spill in progress, NO DATA
banner and grey panels) is recomputed once a second and pushed only when it
changed; the alarm list when the alarm engine's state changed; a heartbeat
every ``heartbeat_seconds`` (``[web] refresh_seconds``) lets the page tell a hung service: after three
periods without any message it says "MONITOR DOWN".

Opening a page costs about a second of CPU (some 400 Bokeh models built, then the whole document
serialised for the page's first ``PULL-DOC``). Neither runs on the event loop: the page is built in the
session's ``on_session_created`` hook and its document serialised for ``PULL-DOC-REPLY``, both in the
feed's one page-builder thread, so pages opening do not hold up the pushes to the pages already open
(one thread: the loop keeps about half the interpreter meanwhile). Closing pages still costs the loop:
Bokeh runs a full garbage collection for each closed session, which the service keeps small by freezing
its warm heap (``LiveService.start``); with twenty pages opening and closing at once the JSON API has
still been measured to stall for seconds (README, Performance).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import html
import logging
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np
from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.server.connection import ServerConnection
from bokeh.settings import settings

from ..decoders.channelmap import ChannelMap
from .panels import PanelData, channel_maps, channel_name, finding_text, nodes_html, prepare, progress_html, utc
from .dashboard import DashboardPage

log = logging.getLogger(__name__)

TREND_SPILLS = 500  # spills of channel trends kept for the channel panel


@dataclass(frozen=True)
class ArchivedSnapshot:
    """An archived spill in the shape of a live snapshot (what the archive keeps of it)."""

    record: dict
    quality: dict
    health: dict
    histograms: dict
    run_histograms: dict
    channel_stats: dict
    published_at: float


def plain_snapshot(snapshot) -> ArchivedSnapshot:
    """A live snapshot (typed record, quality, health) in plain JSON-shaped data, converted once per spill."""
    from ..monitor.model import to_json

    return ArchivedSnapshot(record=to_json(snapshot.record) or {}, quality=to_json(snapshot.quality) or {},
                            health=to_json(snapshot.health) or {}, histograms=snapshot.histograms or {},
                            run_histograms=snapshot.run_histograms or {}, channel_stats=snapshot.channel_stats or {},
                            published_at=float(snapshot.published_at))


def _hist_json(hists: dict) -> dict:
    from ..monitor.histograms import histogram_json

    return {"histograms": {name: histogram_json(h) for name, h in (hists or {}).items()}}


def quality_reasons(quality: dict | None) -> str:
    """The failing checks of a spill in words (the bad-spill list's reasons)."""
    out = []
    for c in (quality or {}).get("checks") or []:
        if isinstance(c, dict) and c.get("state") in ("WARNING", "BAD"):
            out.append(f"{c.get('name')}: {c.get('reason') or c.get('detail') or ''}")
    out.extend(str(r) for r in (quality or {}).get("reasons") or [])
    return "; ".join(out)


class DashboardFeed:
    """The app's one source of page updates (see the module doc)."""

    def __init__(self, state, web, *, poll_seconds: float = 0.1, status_seconds: float = 1.0,
                 heartbeat_seconds: float = 5.0, cleanup_seconds: float = 17.0) -> None:
        self.state, self.web = state, web
        self.poll_seconds, self.status_seconds = poll_seconds, status_seconds
        self.heartbeat_seconds, self.cleanup_seconds = heartbeat_seconds, cleanup_seconds
        self.pages: dict[int, DashboardPage] = {}
        self.bokeh = None  # the BokehFastAPI, for its session clean-up
        self._task: asyncio.Task | None = None
        self._latest = None  # the monitor's snapshot last seen (identity)
        self._snapshot: ArchivedSnapshot | None = None  # the same in plain data
        self.prepared: PanelData | None = None
        self._status: tuple[dict, bool] = ({}, False)
        self._alarms_key: tuple | None = None
        self._alarms: dict | None = None
        self._recent: dict | None = None
        self._recent_task: asyncio.Task | None = None  # the archive read of the recent spills under way
        self._recent_again = False  # a commit came while it was under way: read again when it returns
        self._recent_commits: int | None = None  # the monitor's archive commits when the list was last read
        self._reference_cache: tuple[Any, dict | None] = (None, None)
        #: channel trends: (run, spill, occupancy, pedestal, noise) per spill seen, newest last
        self.channel_history: deque = deque(maxlen=TREND_SPILLS)
        self.prepare_count = 0  # spills prepared (once each, whatever the number of pages)
        self.push_count = 0  # page updates scheduled
        #: builds opening pages and serialises their first document, off the event loop (see the module doc)
        self.page_builder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="na64-page")
        self._built: dict[int, tuple[DashboardPage, tuple]] = {}  # id(doc) -> page built, what it shows

    # ------------------------------------------------------------------ sessions
    @property
    def channel_map(self) -> ChannelMap:
        return self.state.monitor.channel_map

    async def build_page(self, doc: Document) -> None:
        """Build an opening page's models, filled with what is known now, in the page-builder thread."""
        page = await asyncio.get_running_loop().run_in_executor(self.page_builder, self._new_page, doc)
        self._built[id(doc)] = page

    def _new_page(self, doc: Document) -> tuple[DashboardPage, tuple]:
        page = DashboardPage(
            doc, maps=[(m["source"], m["title"]) for m in channel_maps(self.channel_map)],
            heartbeat_timeout_ms=int(3 * self.heartbeat_seconds * 1000),
            on_open=lambda run, spill: self._open_archived(page, run, spill),
            on_live=lambda: self._back_to_live(page),
            on_ack=self.acknowledge, on_event=self.event, on_channel=self.channel_trend,
            on_search=self.alarm_search)
        if settings.perform_document_validation():  # here, not on the loop (_DashboardApplication)
            doc.validate()
        return page, self._fill(page, (None, None, None, None))

    def _fill(self, page: DashboardPage, shown: tuple) -> tuple:
        """Bring a page not yet registered up to the feed's state; ``shown``: what it had (identities)."""
        prepared, status, alarms, recent = self.prepared, self._status, self._alarms, self._recent
        if prepared is not None and prepared is not shown[0]:
            page.apply(prepared)
        if status is not shown[1]:
            page.apply_status(*status)
        if alarms is not None and alarms is not shown[2]:
            page.apply_alarms(alarms)
        if recent is not None and recent is not shown[3]:
            page.show_recent(recent)
        return prepared, status, alarms, recent

    def modify_doc(self, doc: Document) -> None:
        """Bokeh's per-session hook (on the event loop): register the page built for this session, brought
        up to date with what came while it was built."""
        built = self._built.pop(id(doc), None)
        if built is None:  # not built in advance (its hook failed): build it here
            built = self._new_page(doc)
        page, shown = built
        self._fill(page, shown)
        key = id(doc)
        self.pages[key] = page
        doc.on_session_destroyed(lambda ctx: self.pages.pop(key, None))
        self.ensure_running()

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _push(self, fn: Callable[[DashboardPage], None], only_live: bool = False) -> None:
        for page in list(self.pages.values()):
            if only_live and not page.live:
                continue
            page.doc.add_next_tick_callback(partial(fn, page))
            self.push_count += 1

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        next_status = next_beat = next_cleanup = 0.0
        try:
            while True:
                try:
                    now = time.monotonic()
                    snapshot = self.state.monitor.latest
                    if snapshot is not None and snapshot is not self._latest:
                        self._latest = snapshot
                        self._snapshot = await asyncio.to_thread(plain_snapshot, snapshot)
                        await self._new_spill(self._snapshot)
                        next_status = 0.0
                    commits = self.state.monitor.archive_commits
                    if commits != self._recent_commits:  # the archive is written on its own thread: read after it
                        self._recent_commits = commits
                        self._refresh_recent()
                    if now >= next_status:
                        next_status = now + self.status_seconds
                        await self._refresh_status()
                    if now >= next_beat:
                        next_beat = now + self.heartbeat_seconds
                        wall = time.time()
                        self._push(lambda page: page.heartbeat(wall))
                    if now >= next_cleanup:
                        next_cleanup = now + self.cleanup_seconds
                        if self.bokeh is not None:
                            await self.bokeh._cleanup_sessions()
                except Exception:  # noqa: BLE001 - one bad spill must not stop the pages' updates
                    log.exception("dashboard feed: update failed; going on")
                await asyncio.sleep(self.poll_seconds)
        finally:  # cancelled (the web server stopping): the read beside the loop ends before it returns
            await self._end_recent_read()

    async def _end_recent_read(self) -> None:
        task = self._recent_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _new_spill(self, snapshot) -> None:
        prepared = await asyncio.to_thread(self._prepare, snapshot)
        self.prepared = prepared
        self.prepare_count += 1
        self._push(lambda page: page.apply(prepared), only_live=True)

    def _refresh_recent(self) -> None:
        """Read the recent spills again (the archive committed a spill): one read at a time, beside the loop."""
        if self._recent_task is not None and not self._recent_task.done():
            self._recent_again = True
        else:
            self._recent_task = asyncio.get_running_loop().create_task(self._read_recent())

    async def _read_recent(self) -> None:
        """The recent spills' list, read from the archive beside the feed's loop: an archive that does not
        answer holds this list only, never the live panels, the status or the heartbeat."""
        try:
            while True:
                self._recent_again = False
                recent = await asyncio.to_thread(self._recent_spills)
                if recent is not None:
                    self._recent = recent
                    self._push(lambda page: page.show_recent(recent))
                if not self._recent_again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next commit reads it again
            log.exception("dashboard feed: the recent spills could not be read from the archive")

    def _prepare(self, snapshot, archived: bool = False) -> PanelData:
        monitor = self.state.monitor
        if not archived:
            stats = snapshot.channel_stats or {}
            n = len(self.channel_map)
            if stats.get("occupancy") is not None and len(stats["occupancy"]) == n:
                col = lambda k: np.array([np.nan if v is None else float(v) for v in stats.get(k) or [None] * n])  # noqa: E731
                self.channel_history.append((snapshot.record.get("run"), snapshot.record.get("spill"),
                                             col("occupancy"), col("pedestal_even"), col("pedestal_even_rms")))
        qc = monitor.quality_config
        return prepare(snapshot, self.channel_map, alarms=(), reference=self._reference(snapshot.record),
                       info=self._conditions(), cuts=getattr(getattr(monitor.processor, "config", None), "cuts", None),
                       limits={"warning": qc.hadron_fraction_warning, "bad": qc.hadron_fraction_bad},
                       archived=archived)

    def _conditions(self) -> dict:
        qc = self.state.monitor.quality_config
        info = dict(self.state.info or {})
        info.setdefault("beam_energy_gev", getattr(qc, "beam_energy_gev", None))
        info.setdefault("beam_particle", "e−")
        info.setdefault("profile", info.get("config_profile", "default"))
        return info

    def _reference(self, record: dict) -> dict | None:
        """The reference spectra named in the record (set through the API), read once from the archive."""
        ref_id = tuple(record.get("reference") or ()) or None
        if ref_id is None:
            return None
        cached_id, cached = self._reference_cache
        if cached_id == ref_id:
            return cached
        held = self.state.monitor.reference_in_use()  # the monitor's own copy: no archive read
        archive = self.state.archive
        hists = None
        if held[0] is not None and tuple(held[0]) == ref_id and held[1]:
            hists = _hist_json(held[1])
        elif archive is not None:
            run, spill = ref_id
            hists = _hist_json(archive.run_histograms(run) if spill is None else archive.get_histograms(run, spill))
        self._reference_cache = (ref_id, hists)
        return hists

    def _recent_spills(self, limit: int = 60) -> dict | None:
        archive = self.state.archive
        if archive is None:
            return None
        rows = archive.list_spills(limit=limit, newest_first=True)
        reasons = []
        for r in rows:
            if r.get("overall") == "GOOD":
                reasons.append("")
                continue
            found = archive.get_spill(r["run"], r["spill"])
            reasons.append(quality_reasons((found or {}).get("quality")))
        return {"run": [r["run"] for r in rows], "spill": [r["spill"] for r in rows],
                "quality": [str(r.get("overall")) for r in rows], "reasons": reasons,
                "events": [r.get("events") for r in rows], "beam": [r.get("eot") for r in rows],
                "finished": [utc(r.get("time")) if isinstance(r.get("time"), (int, float)) else str(r.get("time"))
                             for r in rows]}

    async def _refresh_status(self) -> None:
        st = self.state
        now = time.time()
        live = st.liveness() if st.liveness is not None else None
        stale = bool(live is not None and live.stale)
        service = st.service_health() if st.service_health is not None else None
        snapshot = self._snapshot
        record = snapshot.record if snapshot is not None else None
        if stale:
            why = ("beam off / DAQ silent: the readout nodes send nothing" if live.reason == "readout_silent"
                   else "data arrive but no spill is finished: the monitor is stuck")
            banner = f'<div class="banner stale">NO DATA — {html.escape(why)} ({html.escape(live.describe())})</div>'
        elif live is not None and live.status == "warming_up":
            banner = '<div class="banner stale">warming up: loading the decoder kernels</div>'
        else:
            banner = '<div class="banner ok"></div>'
        texts = {"banner": banner, "nodes": nodes_html(record, _rounded(service), now, stale),
                 "progress": progress_html(service, record, now)}
        if (texts, stale) != self._status:
            self._status = (texts, stale)
            self._push(lambda page: page.apply_status(texts, stale))
        alarms = st.monitor.alarms.active()
        key = tuple((a.get("alarm_id"), a.get("state"), len(a.get("acknowledgements") or ()), a.get("spills"))
                    for a in alarms)
        if key != self._alarms_key or (snapshot is not None and self._alarms is None):
            self._alarms_key = key
            findings = (snapshot.health or {}).get("findings") or [] if snapshot is not None else []
            columns = alarm_columns(alarms, findings, self.channel_map)
            self._alarms = columns
            self._push(lambda page: page.apply_alarms(columns))

    # ------------------------------------------------------------------ history
    def _open_archived(self, page: DashboardPage, run: int, spill: int | None) -> None:
        loop = asyncio.get_running_loop()

        async def load():
            try:
                data = await asyncio.to_thread(self._archived, run, spill)
            except Exception as exc:  # noqa: BLE001 - shown to the shifter
                data = f"could not open run {run} spill {spill}: {exc}"
            if isinstance(data, str):
                page.doc.add_next_tick_callback(partial(_note, page, data))
            else:
                page.doc.add_next_tick_callback(partial(_show_archived, page, data, run, spill))

        loop.create_task(load())

    def _archived(self, run: int, spill: int | None) -> PanelData | str:
        archive = self.state.archive
        if archive is None:
            return "this service keeps no archive"
        totals = archive.run_totals(run)
        if not totals["spills"]:
            return f"no archived spill of run {run}"
        if spill is None:
            spill = totals["last_spill"]
        found = archive.get_spill(run, spill)
        if found is None:
            return f"no archived spill {run}/{spill}"
        record = dict(found["record"])
        # the newest spills, as the live run trend keeps them; the EOT of the run's earlier ones starts the curve
        kept = sorted(archive.list_spills(run=run, limit=self.state.monitor.run_histograms.trend_spills,
                                          newest_first=True), key=lambda r: (r["spill"], r["fragment"]))
        trend = [{"spill": r["spill"], "beam": None, "eot": r.get("eot"), "hadron_fraction": r.get("hadron_fraction"),
                  "hadron_fraction_srd": None} for r in kept]
        hists = _hist_json(archive.get_histograms(run, spill))
        candidates = [dict(c, spill=spill, run=run) for c in record.get("candidate_details") or []]
        snap = ArchivedSnapshot(
            record=record, quality=found.get("quality") or record.get("quality") or {},
            health={"findings": record.get("channel_findings") or []}, histograms=hists,
            run_histograms={"trend": trend, "candidates": candidates, "candidates_total": len(candidates),
                            "spills": totals["spills"], "eot": totals["eot"]},
            channel_stats={}, published_at=float(record.get("finished_at") or 0.0))
        return self._prepare(snap, archived=True)

    def _back_to_live(self, page: DashboardPage) -> None:
        if self.prepared is not None:
            page.apply(self.prepared)

    # ------------------------------------------------------------------ shifter's requests
    def acknowledge(self, alarm: str, token: str, comment: str) -> str:
        """Acknowledge from the page: the token names the person; refused (and counted) without a good one."""
        web = self.web
        if not alarm:
            return "choose an alarm"
        if not token:
            web.counters.refused("missing_token")
            return "refused: acknowledging needs your token"
        user = web.tokens.user_for(token) if len(token) <= 256 else None
        if user is None:
            web.counters.refused("bad_token")
            return "refused: unknown or revoked token"
        if len(comment) > 2000:
            return "refused: the comment is longer than 2000 characters"
        engine = self.state.monitor.alarms
        try:
            self.state.command(lambda: engine.acknowledge(alarm, user, comment))
        except KeyError:
            return f"no active alarm {alarm}"
        except Exception as exc:  # noqa: BLE001 - the service thread is busy or stopped
            web.counters.refused("unavailable")
            return f"not acknowledged: {exc}"
        self._alarms_key = None  # push the new state at the next status pass
        return f"acknowledged by {user}"

    def event(self, run: int, spill: int, event: int) -> dict | None:
        lookup = getattr(self.state, "event_lookup", None)
        if lookup is None:
            return {"error": "this service keeps no raw data to show events from (na64-online dump FILE shows them)"}
        try:
            return lookup(run, spill, event)
        except Exception as exc:  # noqa: BLE001 - shown to the shifter
            return {"error": str(exc)}

    def channel_trend(self, slot: int) -> dict:
        rows = [(r, s, o[slot], p[slot], n[slot]) for r, s, o, p, n in self.channel_history]
        name = channel_name(self.channel_map.describe(slot))
        return {"name": name, "columns": {"spill": [s for _, s, _, _, _ in rows], "occupancy": [o for *_, o, _, _ in rows],
                                          "pedestal": [p for *_, p, _ in rows], "noise": [n for *_, n in rows]}}

    def alarm_search(self, text: str) -> dict:
        st = self.state
        rows = (st.archive.alarm_history(limit=2000) if st.archive is not None
                else st.monitor.alarms.history(limit=2000))
        needle = text.strip().lower()
        out = []
        for ev in rows:
            acks = ev.get("acknowledgements") or []
            who = ev.get("user") or ev.get("acknowledged_by") or "; ".join(str(a.get("user")) for a in acks)
            blob = " ".join(str(ev.get(k) or "") for k in ("name", "detail", "description", "state", "comment",
                                                               "ack_comment")) + " " + str(who)
            if needle and needle not in blob.lower():
                continue
            out.append(ev | {"who": who})
            if len(out) >= 500:
                break
        return {"time": [utc(ev.get("time")) if isinstance(ev.get("time"), (int, float)) else str(ev.get("time"))
                         for ev in out],
                "name": [str(ev.get("name")) for ev in out], "severity": [str(ev.get("severity")) for ev in out],
                "state": [str(ev.get("state")) for ev in out], "run": [ev.get("run") for ev in out],
                "spill": [ev.get("spill") for ev in out], "text": [str(ev.get("detail") or "") for ev in out],
                "user": [str(ev.get("who") or "") + (f": {ev.get('comment')}" if ev.get("comment") else "")
                         for ev in out]}


def alarm_columns(alarms, findings, channel_map) -> dict:
    from .panels import SEVERITY_COLOURS, alarm_text

    rows = []
    for a in alarms:
        acks = a.get("acknowledgements") or []
        acked = a.get("state") == "acknowledged"
        rows.append({
            "name": str(a.get("name")), "severity": str(a.get("severity")),
            "text": alarm_text(a, findings, channel_map), "rule": str(a.get("condition") or ""),
            "state": str(a.get("state")), "id": str(a.get("alarm_id") or a.get("name")),
            "since": f"run {a.get('since_run')} spill {a.get('since_spill')}",
            "who": "; ".join(f"{x.get('user')}: {x.get('comment') or ''}" for x in acks) if acked else "",
            "colour": SEVERITY_COLOURS.get(str(a.get("severity")), "#90a4ae"), "acked": acked,
            "runbook": str(a.get("runbook_url") or ""),
            "silenced": "; ".join(f"{x.get('created_by')}: {x.get('comment') or ''} (until {x.get('ends_at')})"
                                  for x in a.get("silences") or () if x.get("id") != a.get("silence_id")),
        })
    keys = ("name", "severity", "text", "rule", "state", "id", "since", "who", "colour", "acked", "runbook",
            "silenced")
    return {k: [r[k] for r in rows] for k in keys}


def _rounded(service: dict | None) -> dict | None:
    """Service health with its rates rounded: the node tiles change only when something visible changes."""
    if not service:
        return service
    nodes = {}
    for ldc, n in (service.get("nodes") or {}).items():
        n = dict(n)
        if n.get("messages_per_second") is not None:
            n["messages_per_second"] = float(f"{n['messages_per_second']:.2g}")
        if n.get("last_message_time") is not None:
            n["last_message_time"] = math.floor(n["last_message_time"])
        nodes[ldc] = n
    return service | {"nodes": nodes}


def _note(page: DashboardPage, text: str) -> None:
    page.divs["history_note"].text = html.escape(text)


def _show_archived(page: DashboardPage, data: PanelData, run: int, spill: int | None) -> None:
    if page.live:  # the shifter went back to Live meanwhile
        return
    page.apply(data)
    page.divs["history_note"].text = (f"showing archived run {data.key[0]} spill {data.key[1]} "
                                      "— press Live to follow the newest spill")


class WebsocketOrigin:
    """ASGI middleware: the dashboard's websocket accepts only pages of this server (Origin host = Host);
    another origin is refused (403 before the upgrade) and counted as ``bad_origin``."""

    def __init__(self, app, path: str, counters) -> None:
        self.app, self.path, self.counters = app, path, counters

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and scope.get("path") == self.path:
            headers = dict(scope.get("headers") or ())
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and urlparse(origin).netloc.lower() != host.lower():
                self.counters.refused("bad_origin")
                await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)


class BatchingConnection(ServerConnection):
    """A page's connection that sends all the changes of one document callback as ONE ``PATCH-DOC`` message.

    Bokeh's session asks for one message per changed property (``send_patch_document`` per event) and
    awaits them after the callback; here the events are collected and the first await sends them all:
    one JSON serialisation and one browser update per spill instead of some sixty."""

    def __init__(self, protocol, socket, application_context, session, *, executor=None) -> None:
        super().__init__(_PullInThread(protocol, executor) if executor is not None else protocol, socket,
                         application_context, session)
        self._batch: list = []

    def send_patch_document(self, event):
        self._batch.append(event)
        return self._flush()

    async def _flush(self) -> None:
        if not self._batch:
            return
        events, self._batch = self._batch, []
        await self._socket.send_message(self.protocol.create("PATCH-DOC", events))


class _PullInThread:
    """A connection's protocol whose ``PULL-DOC-REPLY`` (the whole document, serialised) is made in the
    page-builder thread. Bokeh's session awaits it holding the document's lock, so no update changes the
    document meanwhile; every other message is made as Bokeh makes it."""

    def __init__(self, protocol, executor) -> None:
        self._protocol, self._executor = protocol, executor

    def __getattr__(self, name):
        return getattr(self._protocol, name)

    def create(self, msgtype: str, *args, **kwargs):
        if msgtype != "PULL-DOC-REPLY":
            return self._protocol.create(msgtype, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, partial(self._protocol.create, msgtype, *args, **kwargs))


class _PageHandler(FunctionHandler):
    """The dashboard's Bokeh handler: the page is built in ``on_session_created`` (awaited by Bokeh before
    ``modify_document``), off the event loop."""

    def __init__(self, feed: DashboardFeed) -> None:
        super().__init__(feed.modify_doc)
        self.feed = feed

    async def on_session_created(self, session_context) -> None:
        await self.feed.build_page(session_context._document)  # noqa: SLF001 - the session's new document


class _DashboardApplication(Application):
    """Bokeh's application with the document validated where the page is built (the page-builder
    thread, :meth:`DashboardFeed._new_page`) rather than on the event loop when the session starts."""

    def initialize_document(self, doc: Document) -> None:
        for handler in self._handlers:
            handler.modify_document(doc)
            if handler.failed:
                log.error("dashboard page handler failed: %s %s", handler.error, handler.error_detail)


def _bokeh_fastapi(executor):
    from bokeh_fastapi import BokehFastAPI

    class BatchingBokehFastAPI(BokehFastAPI):
        def new_connection(self, protocol, socket, application_context, session):
            connection = BatchingConnection(protocol, socket, application_context, session, executor=executor)
            self._clients.add(connection)
            return connection

    return BatchingBokehFastAPI


def mount_dashboard(app, state, web, poll_seconds: float = 0.1, heartbeat_seconds: float = 5.0) -> DashboardFeed:
    """Serve the dashboard at ``/`` (page), ``/ws`` (its websocket) and ``/static`` (BokehJS) of ``app``;
    ``heartbeat_seconds``: ``[web] refresh_seconds`` (the page says MONITOR DOWN after three without one)."""
    feed = DashboardFeed(state, web, poll_seconds=poll_seconds, heartbeat_seconds=heartbeat_seconds)
    # session ids signed with a key of this process: a page's websocket must come from a page we served
    feed.bokeh = _bokeh_fastapi(feed.page_builder)({"/": _DashboardApplication(_PageHandler(feed))}, app=app, secret_key=secrets.token_bytes(32), sign_sessions=True,
                              websocket_origins=["*"])
    for route in app.routes:  # the page and its websocket are not part of the JSON API's schema
        if getattr(route, "path", None) in ("/", "/ws"):
            route.include_in_schema = False
    app.openapi_schema = None
    app.state.dashboard = feed
    return feed


__all__ = ["DashboardFeed", "mount_dashboard", "WebsocketOrigin", "quality_reasons", "finding_text"]
