"""Wiring of the layers: raw files or live spills → SpillProcessor → SpillMonitor (quality, alarms, archive)."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, NamedTuple

from .config import Config
from .daq.rawfile import RawFile
from .decoders.channelmap import ChannelMap
from .monitor.archive import ArchiveConfig
from .monitor.metrics import SnapshotStore
from .monitor.spill_monitor import SpillMonitor


def build_monitor(config: Config, channel_map: ChannelMap, metrics: SnapshotStore | None = None,
                  archive_path: str | os.PathLike | None = None) -> SpillMonitor:
    """The per-spill monitor as configured; ``archive_path`` overrides the archive file."""
    archive = config.archive
    if archive_path is not None:
        archive = dataclasses.replace(archive or ArchiveConfig(), path=archive_path)
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
    )


class ReplayNote(NamedTuple):
    """Something about a replayed file itself: ``level`` is "error" (no usable data) or "warning"."""

    level: str
    text: str


class Replayer:
    """Replay raw files through exactly the per-spill code of the live service."""

    def __init__(self, config: Config, channel_map: ChannelMap, archive_path: str | os.PathLike | None = None,
                 metrics: SnapshotStore | None = None):
        self.config = config
        self.monitor = build_monitor(config, channel_map, metrics, archive_path)

    def replay_file(self, path, progress: bool = False) -> Iterator[tuple[dict | None, ReplayNote | None]]:
        """Yield (QA record dict, None) per spill, then (None, note) for what the file itself got wrong."""
        raw = RawFile(path)
        if raw.size == 0:
            yield None, ReplayNote("error", "the file is empty (0 bytes)")
            return
        segments = raw.spills()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=raw.size, unit="B", unit_scale=True, desc=str(path), leave=False)
        try:
            for segment in segments:
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
        stats = raw.stats
        if not segments:
            yield None, ReplayNote("error", "no spill found (every event rejected or of a run-level type)")
        if stats.truncated:
            stray = f", and {stats.trailing_bytes} bytes that are not a whole word" if stats.trailing_bytes else ""
            yield None, ReplayNote(
                "warning", f"truncated: the file ends inside its last event{stray}; decoded up to the last whole event"
            )
        if stats.late_events:
            yield None, ReplayNote(
                "warning", f"{stats.late_events} late events after their spill's END_OF_BURST were not merged"
            )

    def close(self) -> None:
        self.monitor.close()


class LiveService:
    """The live service: ZeroMQ ingest → SpillMonitor (quality, alarms, archive, metrics) → HTTP API.

    Decoder workers build their processor with
    :func:`~na64_online.monitor.spill_monitor.make_processor` from the same
    configuration; each finished spill goes through ``SpillMonitor.handle``,
    the call ``replay`` makes.
    """

    def __init__(self, config: Config, channel_map: ChannelMap, ingest=None, *,
                 archive_path: str | os.PathLike | None = None, on_record=None, web: bool | None = None):
        from prometheus_client import CollectorRegistry

        from .daq.ingest import IngestService
        from .monitor.metrics import ServiceHealth, register_metrics
        from .monitor.spill_monitor import make_processor
        from .worker_setup import worker_setup

        self.registry = CollectorRegistry()
        self.metrics = register_metrics(self.registry)
        self.monitor = build_monitor(config, channel_map, self.metrics, archive_path)
        self.ingest = IngestService(
            ingest or config.ingest,
            make_processor,
            (channel_map, config.monitor, config.histograms),
            finish=self.monitor.handle,
            new_accumulator=self.monitor.processor.new_accumulator,
            on_record=on_record,
            on_health=lambda health: self.metrics.publish_service(ServiceHealth(**health)),
            worker_setup=worker_setup(config, channel_map),
        )
        self.web = None
        if config.web.enabled if web is None else web:
            from .web.app import create_app
            from .web.server import WebServer
            from .web.state import AppState

            state = AppState(monitor=self.monitor, registry=self.registry,
                             service_health=lambda: dataclasses.asdict(self.metrics.service),
                             failure=lambda: self.failure,
                             info={"endpoints": list((ingest or config.ingest).endpoints)})
            self.web = WebServer(create_app(config.web, state), config.web.host, config.web.port)

    @property
    def failure(self) -> str | None:
        """Why the service cannot go on (a core thread died), or None. ``serve``/``demo`` exit non-zero on it."""
        return self.ingest.failure

    def start(self) -> "LiveService":
        if self.web is not None:  # the dashboard first: shifters see "waiting" while workers warm up
            self.web.start()
        try:
            self.ingest.start()
        except BaseException:
            if self.web is not None:
                self.web.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.ingest.stop()
        finally:
            if self.web is not None:
                self.web.stop()
            self.monitor.close()
