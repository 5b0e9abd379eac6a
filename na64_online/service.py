"""Wiring of the layers: raw files or live spills → SpillProcessor → SpillMonitor (quality, alarms, archive)."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

from .config import Config
from .events import LiveCandidateEvents, RawFileEvents
from .daq.rawfile import RawFile
from .decoders.channelmap import ChannelMap
from .monitor.archive.config import ArchiveConfig, is_url
from .monitor.spill_monitor import SpillMonitor
from .logs import set_spill
from .systemd import SystemdNotifier

if TYPE_CHECKING:  # the metrics' store: only the live service makes one
    from .monitor.snapshots import SnapshotStore

log = logging.getLogger(__name__)


def build_monitor(config: Config, channel_map: ChannelMap, metrics: SnapshotStore | None = None,
                  archive_path: str | os.PathLike | None = None, snapshots: bool = True,
                  archive_thread: bool = False) -> SpillMonitor:
    """The per-spill monitor as configured; ``archive_path`` overrides the archive (a file, or a database URL);
    ``snapshots``: keep the dashboard's snapshot of the latest spill; ``archive_thread``: write the archive on
    a thread of its own (the live service)."""
    archive = config.archive
    if archive_path is not None:
        where = {"url": str(archive_path)} if is_url(archive_path) else {"path": archive_path, "url": None}
        archive = (archive or ArchiveConfig()).replace(**where)
    return SpillMonitor(
        channel_map,
        monitor=config.monitor,
        histograms=config.histograms,
        health=config.health,
        quality=config.quality,
        alarms=config.alarms,
        archive=archive,
        metrics=metrics,
        reference=config.reference or ((config.reference_run, None) if config.reference_run is not None else None),
        beam_profile=config.beam.profile,
        processing_version=processing_version(config, channel_map),
        snapshots=snapshots,
        archive_thread=archive_thread,
    )


#: settings of the hashed sections that shape no record (the event display's raw events, the run trend's length)
NOT_IN_RECORD = (("monitor", "candidate_events_per_spill"), ("monitor", "trend_spills"))


def processing_version(config: Config, channel_map: ChannelMap) -> str:
    """``SOFTWARE+HASH``: the software version and a hash of everything that shapes a record — the
    monitor, histogram, health, quality and alarm settings and the channel map with its calibration.
    Archived records carry it; records of another processing sit beside them."""
    import hashlib
    import json

    from . import __version__

    sections = {}
    for name in ("monitor", "histograms", "health", "quality", "alarms", "beam"):
        section = getattr(config, name)
        sections[name] = section.model_dump(mode="json") if hasattr(section, "model_dump") else (
            dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section)
    for name, key in NOT_IN_RECORD:
        sections[name].pop(key, None)
    text = json.dumps(sections, sort_keys=True, default=str) + "\n" + channel_map.to_csv_text()
    return f"{__version__}+{hashlib.sha256(text.encode()).hexdigest()[:12]}"


class ReplayNote(NamedTuple):
    """Something about a replayed file itself: ``level`` is "error" (no usable data) or "warning"."""

    level: str
    text: str


def file_notes(stats, any_spill: bool) -> list[ReplayNote]:
    """What a raw file itself got wrong (:class:`~.daq.rawfile.StreamStats` of its index pass):
    shared by ``replay`` and ``reprocess``."""
    notes = []
    if not any_spill:
        notes.append(ReplayNote("error", "no spill found (every event rejected or of a run-level type)"))
    if stats.truncated:
        stray = f", and {stats.trailing_bytes} bytes that are not a whole word" if stats.trailing_bytes else ""
        notes.append(ReplayNote(
            "warning", f"truncated: the file ends inside its last event{stray}; decoded up to the last whole event"
        ))
    if stats.skipped_bytes:
        shifted = "; the stream was shifted by bytes and re-aligned" if stats.realigned else ""
        orphan = (f" ({stats.orphan_skipped_bytes} of them after the last spill)"
                  if stats.orphan_skipped_bytes else "")
        notes.append(ReplayNote(
            "warning", f"damaged: {stats.skipped_bytes} bytes skipped undecoded in rejected events and while "
            f"resynchronising{orphan}{shifted}; per spill in skipped_bytes"
        ))
    if stats.late_events:
        notes.append(ReplayNote(
            "warning", f"{stats.late_events} late events after their spill's END_OF_BURST were not merged"
        ))
    return notes


class Replayer:
    """Replay raw files through exactly the per-spill code of the live service.

    ``snapshots``: keep the dashboard's snapshot of the latest spill (``monitor.latest``, for a web app
    over this monitor); default: with a metrics store, which is there for such an app. ``replay`` and
    ``reprocess`` keep none: the records are the same, the snapshot's JSON is work nothing reads."""

    def __init__(self, config: Config, channel_map: ChannelMap, archive_path: str | os.PathLike | None = None,
                 metrics: SnapshotStore | None = None, snapshots: bool | None = None):
        self.config = config
        self.monitor = build_monitor(config, channel_map, metrics, archive_path,
                                     snapshots=metrics is not None if snapshots is None else snapshots)
        #: (run, spill, event) -> the event as ``dump`` shows it, from the files replayed (the event display)
        self.events = RawFileEvents(config, channel_map)

    def replay_file(self, path, progress: bool = False) -> Iterator[tuple[dict | None, ReplayNote | None]]:
        """Yield (QA record dict, None) per spill, then (None, note) for what the file itself got wrong."""
        raw = RawFile(path)
        if raw.size == 0:
            yield None, ReplayNote("error", "the file is empty (0 bytes)")
            return
        self.events.add(path)
        segments = raw.iter_spills()  # indexed a part at a time: memory bounded by a spill, not the file
        any_spill = False
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=raw.size, unit="B", unit_scale=True, desc=str(path), leave=False)
        try:
            for segment in segments:
                any_spill = True
                acc = self.monitor.processor.accumulate(segment.words, segment.index)
                record = self.monitor.handle(acc, complete=segment.complete)
                if bar is not None:
                    bar.update(acc.bytes_decoded)
                    bar.clear()  # the caller prints the record on the terminal the bar is drawn on
                yield record, None
                if bar is not None:
                    bar.refresh()
        finally:
            if bar is not None:
                bar.close()
        for note in file_notes(raw.stats, any_spill):
            yield None, note

    def close(self) -> None:
        self.monitor.close()


class ServiceCommands:
    """State changes asked for over HTTP, run by the ingest thread, which owns the monitor's state.

    ``commands(fn)`` queues ``fn`` for the ingest loop (run between two
    polls, so never while a spill is being finished) and waits at most
    ``timeout_s`` for its result, which it returns (or raises ``fn``'s
    exception). If the ingest does not run, or does not get to it in time,
    :class:`~na64_online.web.state.CommandUnavailable` is raised and ``fn``
    will not run later.
    """

    def __init__(self, ingest, timeout_s: float) -> None:
        self.ingest = ingest
        self.timeout_s = timeout_s

    def __call__(self, fn: Callable[[], Any]) -> Any:
        import concurrent.futures  # the web's commands (serve, demo) only

        from .web.state import CommandUnavailable

        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the caller gave up waiting
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed to the waiting request, never ends the thread
                future.set_exception(exc)

        if not self.ingest.running:
            raise CommandUnavailable("the service is not processing spills (stopping or failed); try again later")
        self.ingest.call_soon(run)
        try:
            return future.result(self.timeout_s)
        except concurrent.futures.TimeoutError:
            if future.cancel():
                raise CommandUnavailable(f"the service thread did not take the request within {self.timeout_s:g} s"
                                         ) from None
            return future.result()  # it started just now: wait for it


def warm_up_monitor(config: Config, channel_map: ChannelMap) -> None:
    """Decode and finish a tiny simulated spill through a throwaway :class:`SpillMonitor`.

    Loads (or, on a cold numba cache, compiles) every kernel the service
    process runs for a spill — decoding, channel statistics, histogram fills,
    health, quality — before the first real one, without touching the real
    monitor's archive, alarms, channel history or metrics.
    """
    import numpy as np

    from .daq.live import LiveExtras
    from .decoders import layout
    from .sim.simulator import ReadoutSimulator, SimulationConfig

    sim = ReadoutSimulator(SimulationConfig(spills=1, events_per_spill=64, run_events=False), channel_map)
    spill = next(iter(sim.spills()))
    scratch = SpillMonitor(channel_map, monitor=config.monitor, histograms=config.histograms, health=config.health,
                           quality=config.quality)
    try:
        words = np.frombuffer(bytearray(spill.raw()), dtype=layout.WORD)
        scratch.handle(scratch.processor.accumulate(words), complete=True, live=LiveExtras())
    finally:
        scratch.close()


def source_labels(channel_map: ChannelMap) -> tuple[str, ...]:
    """srcID labels for ``na64_decode_errors_by_source_total``: the channel map's MSADC srcIDs, the scalers and
    the trigger time (bounded by the map, whatever srcIDs damaged data may claim)."""
    from .decoders import layout

    ids = set(channel_map.src_id.tolist()) | {layout.SRC_SCALERS, layout.SRC_TRIGGER_TIME}
    return tuple(str(i) for i in sorted(ids))


class LiveService:
    """The live service: ZeroMQ ingest → SpillMonitor (quality, alarms, archive, metrics) → HTTP API.

    Decoder workers build their processor with
    :func:`~na64_online.monitor.spill_monitor.make_processor` from the same
    configuration; each finished spill goes through ``SpillMonitor.handle``,
    the call ``replay`` makes.
    """

    def __init__(self, config: Config, channel_map: ChannelMap, ingest=None, *,
                 archive_path: str | os.PathLike | None = None, on_record=None, web: bool | None = None,
                 warm_up: bool = True, clock=time.time, watch_interval_s: float | None = None,
                 systemd: SystemdNotifier | None = None):
        from prometheus_client import CollectorRegistry

        from .daq.ingest import IngestService
        from .monitor.liveness import LivenessWatch
        from .monitor.metrics import ServiceHealth, SnapshotStore, alarm_view, register_metrics
        from .monitor.spill_monitor import make_processor
        from .sim.warmup import ldc_sample
        from .worker_setup import worker_setup

        self.started = time.time()  # na64_service_start_time_seconds: this process's start, not a scrape's
        self.systemd = systemd if systemd is not None else SystemdNotifier.from_environment()
        self.registry = CollectorRegistry()
        store = SnapshotStore()
        store.publish(service=ServiceHealth(started=self.started))
        self.liveness = LivenessWatch(store, config.monitor.no_data_after_seconds,
                                      listening_since=lambda: self.ingest.listening_since, clock=clock)
        self.metrics = register_metrics(
            self.registry, store, liveness=self.liveness.status, sources=source_labels(channel_map),
            alarms=lambda: alarm_view(self.monitor.alarms),
            # the archive writer's state (scraped once the monitor below exists)
            archive=((lambda: self.monitor.archive_writes.status())
                     if archive_path is not None or config.archive is not None else False),
            process=True)
        if config.alarms.generator_url is None and (config.web.enabled if web is None else web):
            # alerts link to this service's dashboard (set [alarms] generator_url to the public address)
            host = "127.0.0.1" if config.web.host in ("0.0.0.0", "::", "") else config.web.host
            config = config.replace(alarms=config.alarms.replace(generator_url=f"http://{host}:{config.web.port}/"))
        self.monitor = build_monitor(config, channel_map, self.metrics, archive_path, archive_thread=True)
        #: the candidates' raw events of the last spills (the dashboard's event display)
        self.candidate_events = LiveCandidateEvents(config, channel_map, config.web.event_display_spills)
        self.ingest = IngestService(
            ingest or config.ingest,
            make_processor,
            (channel_map, config.monitor, config.histograms),
            finish=self._finish,
            new_accumulator=self.monitor.processor.new_accumulator,
            on_record=on_record,
            on_health=self._on_health,
            worker_setup=worker_setup(config, channel_map),
            warm_up=(lambda: warm_up_monitor(config, channel_map)) if warm_up else None,
            warm_up_events=ldc_sample if warm_up else None,
        )
        self._watch_stop = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self.watch_interval_s = watch_interval_s
        self._running = False
        self._config = config
        self._web_wanted = config.web.enabled if web is None else web
        #: the HTTP server and its state, made by :meth:`start` (None without the web)
        self.web = None
        self.web_state = None

    def _make_web(self) -> None:
        from .web.app import create_app
        from .web.server import WebServer
        from .web.state import AppState

        config = self._config
        self.web_state = AppState(monitor=self.monitor, registry=self.registry,
                                  service_health=lambda: dataclasses.asdict(self.metrics.service),
                                  failure=lambda: self.failure,
                                  info={"endpoints": list(self.ingest.config.endpoints)},
                                  run_command=ServiceCommands(self.ingest, config.web.command_timeout_s),
                                  liveness=self.liveness.status, event_lookup=self.candidate_events)
        self.web = WebServer(create_app(config.web, self.web_state), config.web.host, config.web.port)

    def _finish(self, acc, **kwargs):
        """Finish a spill in the monitor; log lines from now on name it (``--log-format json``)."""
        set_spill(acc.run, acc.spill)
        before = self.monitor.latest
        record = self.monitor.handle(acc, **kwargs)
        if self.monitor.latest is not before:  # a judged spill was published (an interrupted one is not)
            self.candidate_events.add(self.monitor.latest)
        done = record or {}
        log.info("spill finished: %s events, %s lost, %s decode errors, quality %s", done.get("events"),
                 done.get("lost_events"), done.get("decode_errors"), (done.get("quality") or {}).get("overall"))
        return record

    def _on_health(self, health: dict) -> None:
        """Called by the ingest loop about once a second: the metrics' service snapshot, and the systemd
        watchdog's ping (a stuck loop stops both)."""
        from .monitor.metrics import ServiceHealth

        self.metrics.publish_service(ServiceHealth(**{**health, "started": self.started}))
        self.systemd.watchdog()

    @property
    def failure(self) -> str | None:
        """Why the service cannot go on (a core thread died), or None. ``serve``/``demo`` exit non-zero on it."""
        reason = self.ingest.failure
        if reason is None and self._running and self.web is not None and not self.web.alive:
            reason = "web server thread ended unexpectedly"
        return reason

    def start(self, abort: threading.Event | None = None,
              while_warming: Callable[[], None] | None = None) -> "LiveService":
        """Worker processes first (they take seconds to warm up), then the web (``/readyz`` says
        warming_up: shifters see "waiting"), then the ingest: returns once warm and subscribed.

        ``abort`` (set by SIGTERM/SIGINT) ends a long warm-up early. ``while_warming`` is called once the
        web is up, as the wait for the workers begins: work to overlap with their warm-up."""
        self.systemd.status("warming up: loading decoder kernels, starting workers")
        try:
            # the local workers import and load their kernels while this process imports the web stack
            self.ingest.spawn_workers()
            if self._web_wanted:
                self._make_web()
                self.web.start()
            if while_warming is not None:
                while_warming()
            self.ingest.start(abort=abort)
        except BaseException:
            if self.web is not None:
                self.web.stop()
            self.ingest.stop()
            raise
        # What exists now (modules, kernels, the web stack) lives as long as the process: out of the garbage
        # collector's sight, so that a full collection (Bokeh runs one per closed page, on the web event
        # loop) walks only what was made since. stop() gives them back.
        gc.collect()
        gc.freeze()
        self._running = True
        self._watch_thread = threading.Thread(target=self._watch, name="na64-liveness", daemon=True)
        self._watch_thread.start()
        if not (abort is not None and abort.is_set()):
            self.systemd.ready(f"serving {len(self.ingest.config.endpoints)} readout node(s)")
        return self

    def _watch(self) -> None:
        """Raise / clear the ``no_data`` alarm (:class:`~.monitor.liveness.LivenessWatch`) as time goes by."""
        interval = self.watch_interval_s or min(1.0, self.liveness.no_data_after_seconds / 4)
        while not self._watch_stop.wait(interval):
            try:
                self.liveness.check(self.monitor.alarms)
            except Exception:  # noqa: BLE001 - the watch must keep watching
                log.exception("liveness check failed")

    def stop(self) -> None:
        self.systemd.stopping()
        self._running = False
        self._watch_stop.set()
        if self._watch_thread is not None:
            self._watch_thread.join(5.0)
        try:
            self.ingest.stop()
        finally:
            if self.web is not None:
                self.web.stop()
                self.web_state.close()
            self.monitor.close()
            self.systemd.close()
            gc.unfreeze()
