"""What the metrics read: immutable snapshots of the service and of the last spill, in a store.

Published into a :class:`SnapshotStore` (swapping a reference under a lock) by the
ingest code (:class:`ServiceHealth`) and once per finished spill by
:class:`~.spill_monitor.SpillMonitor` (:class:`MonitorSnapshot`); read at scrape time
by :mod:`.metrics`' Prometheus collector, and by the liveness check. Kept apart from
:mod:`.metrics` so that what publishes or reads snapshots imports no Prometheus client (``replay``
keeps no store at all: nothing scrapes it). The label sets are bounded by the constants here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from ..decoders.channelmap import ChannelMap
from ..errors import Issue
from . import model
from .model import to_json
from .quality import SUBSYSTEMS, subsystems_of

ERROR_KINDS = tuple(i.label for i in Issue if i.is_error) + ("other",)
NOTICE_KINDS = tuple(i.label for i in Issue if not i.is_error and i != Issue.NONE) + ("other",)
QUALITY_SUBSYSTEMS = SUBSYSTEMS + ("overall",)
NO_DATA_REASONS = ("readout_silent", "monitor_stuck")  # monitor.liveness.REASONS
BAD_MESSAGE_KINDS = ("bad_envelope", "damaged_payload", "duplicate", "reordered", "sequence_jump")  # daq.subscriber
MEMORY_STAGES = ("builder", "tasks")
#: overall quality of a spill as counted in na64_spills_by_quality_total (NONE: judged without a state)
SPILL_QUALITIES = ("GOOD", "WARNING", "BAD", "NO_DATA", "NONE")
ALARM_SEVERITIES = ("info", "warning", "critical")  # monitor.alarms.SEVERITIES
ALERTMANAGER_OUTCOMES = ("sent", "failed", "dropped")
PROCESSING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class ServiceHealth:
    """Ingest-side snapshot; the ingest code builds a new one (``dataclasses.replace``) and publishes it.

    Counters are totals since service start. ``lag_seconds`` is the ingest
    code's own measure of how far processing is behind arrival (e.g. the age
    of the oldest queued message); ``last_message_time`` (Unix s) lets the
    collector export the age of the newest message at scrape time.
    """

    started: float = field(default_factory=time.time)
    messages_received: int = 0
    events_received: int = 0
    bytes_received: int = 0
    ingest_events_per_second: float = 0.0
    ingest_bytes_per_second: float = 0.0
    lag_seconds: float = 0.0
    queue_depth: int = 0
    queue_capacity: int = 0
    dropped_messages: int = 0
    skipped_events: int = 0  # events of other types (START_OF_RUN, …), spec §1
    last_message_time: float | None = None
    sources_connected: int = 0
    worker_refused_messages: int = 0  # malformed messages on the worker port
    worker_refused_results: int = 0  # worker results that did not decode
    worker_refused_peers: int = 0  # workers refused: CurveZMQ handshake failed or another protocol
    worker_refused_tasks: int = 0  # tasks a worker refused (plan or frames not fitting: never gathered)
    worker_tasks_by_reference: int = 0  # tasks local workers read from the service's memory (TASKREF)
    worker_reads_refused: int = 0  # local workers the system did not let read it (sent bytes from then on)
    loop_time: float | None = None  # Unix s of the ingest loop's last pass (a stuck loop stops it)
    #: bad messages since start: LDC label (an expected LDC, "other", "unknown") -> kind -> count
    bad_messages: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # plain: /api/health asdict()s it
    memory_budget_bytes: int = 0  # [ingest] max_memory_mb in bytes (0: not known yet)
    memory_resident_bytes: int = 0  # the service process's resident memory
    memory_buffered_bytes: Mapping[str, int] = field(default_factory=dict)  # by stage
    receive_hwm_messages: int = 0  # the SUB socket's receive high-water mark now (derived from the budget)
    workers_ready: int = 0  # decoder workers (local and remote) ready for tasks now
    workers_seen: int = 0  # workers that said HELLO since start
    workers_lost: int = 0  # workers taken for dead (no result within task_timeout_s, or gone) since start
    #: per readout node (LDC id as text): connected, last_message_time (Unix s), messages, lost_messages,
    #: messages_per_second — the dashboard's node tiles
    nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: the newest spill being built: run, spill, events so far, started_at (Unix s); empty between spills
    spill_in_progress: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MonitorSnapshot:
    """Totals since service start plus the last spill; built by :meth:`with_spill`, never mutated."""

    spills: int = 0
    events: int = 0
    lost_events: int = 0
    dropped_events: int = 0
    incomplete_events: int = 0
    lost_messages: int = 0
    modules_missing: int = 0
    skipped_bytes: int = 0
    decode_errors: Mapping[str, int] = field(default_factory=lambda: _EMPTY)  # by ERROR_KINDS label
    decode_notices: Mapping[str, int] = field(default_factory=lambda: _EMPTY)  # by NOTICE_KINDS label
    beam_particles: int = 0
    eot: float = 0.0
    candidates: int = 0
    processing_seconds_sum: float = 0.0
    processing_buckets: tuple[int, ...] = (0,) * len(PROCESSING_BUCKETS)  # cumulative counts per bucket
    run: int | None = None
    run_spills: int = 0
    run_eot: float = 0.0
    run_candidates: int = 0
    last: Mapping[str, Any] | None = None  # last QA record dict
    quality: Mapping[str, Any] | None = None  # last SpillQuality.to_dict()
    findings: tuple[Mapping[str, Any], ...] = ()  # last active channel findings (dicts)
    published_at: float | None = None
    errors_by_source: Mapping[str, int] = field(default_factory=lambda: _EMPTY)  # srcID label -> decode errors
    spills_by_quality: Mapping[str, int] = field(default_factory=lambda: _EMPTY)  # overall state -> spills
    archived_spills: int = 0  # spills whose archive transaction committed
    archived_at: float | None = None  # Unix s of the last committed archive write

    def with_archive_write(self, now: float | None = None) -> "MonitorSnapshot":
        """One more spill committed to the archive."""
        return replace(self, archived_spills=self.archived_spills + 1,
                       archived_at=time.time() if now is None else now)

    def with_spill(self, record: model.SpillRecord | Mapping[str, Any], quality=None, findings=None,
                   now: float | None = None) -> "MonitorSnapshot":
        """A new snapshot with one more spill: ``record`` = the QA record (:class:`~.model.SpillRecord` or
        its JSON), ``quality`` = its :class:`~.model.SpillQuality`, ``findings`` = a
        :class:`~.model.HealthReport` or a list of :class:`~.model.ChannelFinding` (anything they validate)."""
        record = to_json(record)
        errors = dict(self.decode_errors)
        notices = dict(self.decode_notices)
        attributed = 0
        for per_src in (record.get("errors_by_src") or {}).values():
            for label, n in per_src.items():
                key = label if label in ERROR_KINDS else "other"
                errors[key] = errors.get(key, 0) + int(n)
                attributed += int(n)
        by_source = dict(self.errors_by_source)
        for src, per_src in (record.get("errors_by_src") or {}).items():
            label = "event" if str(src) in ("-1", "event") else str(src)
            by_source[label] = by_source.get(label, 0) + sum(int(n) for n in per_src.values())
        rest = int(record.get("decode_errors") or 0) - attributed
        if rest > 0:
            errors["other"] = errors.get("other", 0) + rest
        for per_src in (record.get("notices_by_src") or {}).values():
            for label, n in per_src.items():
                key = label if label in NOTICE_KINDS else "other"
                notices[key] = notices.get(key, 0) + int(n)
        seconds = float(record.get("processing_seconds") or 0.0)
        buckets = tuple(c + (seconds <= le) for c, le in zip(self.processing_buckets, PROCESSING_BUCKETS))
        run = record.get("run")
        new_run = run is not None and run != self.run
        eot = float(record.get("eot") or 0.0)
        ncand = len(record.get("candidates") or ())
        if quality is not None:
            quality = to_json(model.SpillQuality.model_validate(quality))
        if findings is not None and not isinstance(findings, (list, tuple)):
            findings = model.HealthReport.model_validate(findings).findings
        findings = tuple(to_json(model.ChannelFinding.model_validate(f)) for f in (findings or ()))
        by_quality = dict(self.spills_by_quality)
        overall = (quality or {}).get("overall")
        overall = str(getattr(overall, "name", overall) or "NONE")
        overall = overall if overall in SPILL_QUALITIES else "NONE"
        by_quality[overall] = by_quality.get(overall, 0) + 1
        return replace(
            self,
            spills=self.spills + 1,
            events=self.events + int(record.get("events") or 0),
            lost_events=self.lost_events + int(record.get("lost_events") or 0),
            dropped_events=self.dropped_events + int(record.get("dropped_events") or 0),
            incomplete_events=self.incomplete_events + int(record.get("incomplete_events") or 0),
            lost_messages=self.lost_messages + _total(record.get("lost_messages")),
            modules_missing=self.modules_missing + int(record.get("modules_missing") or 0),
            skipped_bytes=self.skipped_bytes + int(record.get("skipped_bytes") or 0),
            decode_errors=MappingProxyType(errors),
            decode_notices=MappingProxyType(notices),
            beam_particles=self.beam_particles + int(record.get("beam") or 0),
            eot=self.eot + eot,
            candidates=self.candidates + ncand,
            processing_seconds_sum=self.processing_seconds_sum + seconds,
            processing_buckets=buckets,
            run=run if run is not None else self.run,
            run_spills=1 if new_run else self.run_spills + 1,
            run_eot=eot if new_run else self.run_eot + eot,
            run_candidates=ncand if new_run else self.run_candidates + ncand,
            last=MappingProxyType(dict(record)),
            quality=MappingProxyType(dict(quality)) if quality is not None else None,
            findings=findings,
            published_at=time.time() if now is None else now,
            errors_by_source=MappingProxyType(by_source),
            spills_by_quality=MappingProxyType(by_quality),
        )


def _total(value) -> int:
    if value is None:
        return 0
    if isinstance(value, Mapping):
        return int(value["total"]) if "total" in value else int(sum(value.values()))
    return int(value)


@dataclass(frozen=True)
class DetectorLabels:
    """The label values the detector table allows: every detector of the table (channel findings),
    those with channels in the map (per-detector values), the judged quality subsystems."""

    table: tuple[str, ...]
    mapped: tuple[str, ...]
    subsystems: tuple[str, ...]

    @classmethod
    def of(cls, channel_map: ChannelMap) -> "DetectorLabels":
        return cls(channel_map.detectors.names, channel_map.present_detectors(),
                   subsystems_of(channel_map.detector_subsystems()))


def _default_labels() -> DetectorLabels:
    return DetectorLabels.of(ChannelMap.default())


class SnapshotStore:
    """Holds the latest :class:`MonitorSnapshot` and :class:`ServiceHealth`; thread-safe.

    ``detectors``: the label values of the service's channel map (:meth:`use_channel_map`; default:
    the packaged map's)."""

    def __init__(self, detectors: DetectorLabels | None = None) -> None:
        self._lock = threading.Lock()
        self._monitor = MonitorSnapshot()
        self._service = ServiceHealth()
        self.detectors = detectors or _default_labels()

    def use_channel_map(self, channel_map: ChannelMap) -> None:
        """Label detectors and subsystems after this map and its detector table."""
        self.detectors = DetectorLabels.of(channel_map)

    @property
    def monitor(self) -> MonitorSnapshot:
        return self._monitor

    @property
    def service(self) -> ServiceHealth:
        return self._service

    def publish_spill(self, record: Mapping[str, Any], quality=None, findings=None) -> MonitorSnapshot:
        """Fold a finished spill in (once per spill); returns the new snapshot."""
        with self._lock:
            self._monitor = self._monitor.with_spill(record, quality, findings)
            return self._monitor

    def publish_service(self, health: ServiceHealth) -> None:
        with self._lock:
            self._service = health

    def publish_archive_write(self, now: float | None = None) -> MonitorSnapshot:
        """A spill's archive transaction committed (``na64_archive_*``)."""
        with self._lock:
            self._monitor = self._monitor.with_archive_write(now)
            return self._monitor

    def publish(self, monitor: MonitorSnapshot | None = None, service: ServiceHealth | None = None) -> None:
        """Replace either snapshot wholesale (e.g. restored from the archive)."""
        with self._lock:
            if monitor is not None:
                self._monitor = monitor
            if service is not None:
                self._service = service
