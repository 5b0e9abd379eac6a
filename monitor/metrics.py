"""Prometheus metrics, collected at scrape time from the latest immutable snapshots.

Nothing on the hot path touches a metric. Two immutable snapshots are
published into a :class:`SnapshotStore` (swapping a reference under a lock):

* :class:`ServiceHealth` — by the ingest code, whenever it likes (e.g. once a
  second): messages, events and bytes received, rates, lag, queue depth, drops;
* :class:`MonitorSnapshot` — once per finished spill, by
  :meth:`SnapshotStore.publish_spill` (folds the QA record into totals since
  service start and keeps the last spill's record, quality and findings).

:class:`Na64Collector` (registered on the registry passed to
:func:`register_metrics`) reads both at scrape time. Label sets are bounded:
``kind`` = the decoder's :class:`~na64_online.decoders.errors.Issue` labels
(anything else counts as ``other``), ``subsystem`` = beam, ecal, hcal, srd,
veto, daq, overall; ``estimator`` = hcal, srd; ``detector`` × channel-finding
``kind``; ``reason`` = readout_silent, monitor_stuck. Quality states are
numbers: 0 GOOD, 1 NO_DATA, 2 WARNING, 3 BAD (−1 before the first spill);
while the service is stale (no spill for ``no_data_after_seconds``, see
:mod:`.liveness`) every subsystem and the overall state read 1 (NO_DATA),
and ``na64_no_data{reason}`` says why.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ..decoders.channelmap import DETECTORS
from ..decoders.errors import Issue
from .health import KINDS as FINDING_KINDS
from .quality import SUBSYSTEMS, QualityState

ERROR_KINDS = tuple(i.label for i in Issue if i.is_error) + ("other",)
NOTICE_KINDS = tuple(i.label for i in Issue if not i.is_error and i != Issue.NONE) + ("other",)
QUALITY_SUBSYSTEMS = SUBSYSTEMS + ("overall",)
NO_DATA_REASONS = ("readout_silent", "monitor_stuck")  # monitor.liveness.REASONS
BAD_MESSAGE_KINDS = ("bad_envelope", "damaged_payload", "duplicate", "reordered", "sequence_jump")  # daq.subscriber
MEMORY_STAGES = ("builder", "tasks")
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
    loop_time: float | None = None  # Unix s of the ingest loop's last pass (a stuck loop stops it)
    #: bad messages since start: LDC label (an expected LDC, "other", "unknown") -> kind -> count
    bad_messages: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # plain: /api/health asdict()s it
    memory_budget_bytes: int = 0  # [ingest] max_memory_mb in bytes (0: not known yet)
    memory_resident_bytes: int = 0  # the service process's resident memory
    memory_buffered_bytes: Mapping[str, int] = field(default_factory=dict)  # by stage
    receive_hwm_messages: int = 0  # the SUB socket's receive high-water mark now (derived from the budget)
    #: per readout node (LDC id as text): connected, last_message_time (Unix s), messages, lost_messages,
    #: messages_per_second — the dashboard's node tiles
    nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


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

    def with_spill(self, record: Mapping[str, Any], quality=None, findings=None, now: float | None = None
                   ) -> "MonitorSnapshot":
        """A new snapshot with one more spill: ``record`` = QA record dict, ``quality`` = SpillQuality
        (or its dict), ``findings`` = HealthReport or list of findings (objects or dicts)."""
        errors = dict(self.decode_errors)
        notices = dict(self.decode_notices)
        attributed = 0
        for per_src in (record.get("errors_by_src") or {}).values():
            for label, n in per_src.items():
                key = label if label in ERROR_KINDS else "other"
                errors[key] = errors.get(key, 0) + int(n)
                attributed += int(n)
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
        if quality is not None and hasattr(quality, "to_dict"):
            quality = quality.to_dict()
        if findings is not None and hasattr(findings, "findings"):
            findings = findings.findings
        findings = tuple(f.to_dict() if hasattr(f, "to_dict") else dict(f) for f in (findings or ()))
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
        )


def _total(value) -> int:
    if value is None:
        return 0
    if isinstance(value, Mapping):
        return int(value["total"]) if "total" in value else int(sum(value.values()))
    return int(value)


class SnapshotStore:
    """Holds the latest :class:`MonitorSnapshot` and :class:`ServiceHealth`; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._monitor = MonitorSnapshot()
        self._service = ServiceHealth()

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

    def publish(self, monitor: MonitorSnapshot | None = None, service: ServiceHealth | None = None) -> None:
        """Replace either snapshot wholesale (e.g. restored from the archive)."""
        with self._lock:
            if monitor is not None:
                self._monitor = monitor
            if service is not None:
                self._service = service


def _finite(value, default=math.nan) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


class Na64Collector(Collector):
    """Custom collector: every sample is computed from the store's snapshots at scrape time."""

    def __init__(self, store: SnapshotStore, clock=time.time, liveness=None) -> None:
        self.store = store
        self.clock = clock
        self.liveness = liveness  # callable giving a liveness.Liveness (live service), or None

    def describe(self):
        return self._families(MonitorSnapshot(), ServiceHealth(started=0.0), describe=True)

    def collect(self):
        return self._families(self.store.monitor, self.store.service)

    def _families(self, m: MonitorSnapshot, s: ServiceHealth, describe: bool = False):
        out = []
        live = self.liveness() if self.liveness is not None and not describe else None
        stale = live is not None and live.stale

        def counter(name, doc, value, unit=""):
            out.append(CounterMetricFamily(name, doc, value=None if describe else value, unit=unit))

        def gauge(name, doc, value, unit=""):
            out.append(GaugeMetricFamily(name, doc, value=None if describe else _finite(value), unit=unit))

        # ---------------------------------------------------------- service health
        counter("na64_ingest_messages", "ZeroMQ messages received", s.messages_received)
        counter("na64_ingest_events", "DATE events received", s.events_received)
        counter("na64_ingest_bytes", "payload bytes received", s.bytes_received, unit="bytes")
        counter("na64_ingest_dropped_messages", "messages dropped by the service (queue full)", s.dropped_messages)
        counter("na64_ingest_skipped_events", "events of types outside spills, skipped", s.skipped_events)
        gauge("na64_ingest_events_per_second", "recent ingest rate, events per second", s.ingest_events_per_second)
        gauge("na64_ingest_bytes_per_second", "recent ingest rate, bytes per second", s.ingest_bytes_per_second)
        gauge("na64_ingest_lag_seconds", "how far processing is behind arrival", s.lag_seconds, unit="seconds")
        age = self.clock() - s.last_message_time if s.last_message_time is not None else math.nan
        gauge("na64_ingest_last_message_age_seconds", "time since the newest message arrived", age, unit="seconds")
        gauge("na64_ingest_queue_messages", "messages waiting in the processing queue", s.queue_depth)
        gauge("na64_ingest_queue_capacity_messages", "capacity of the processing queue", s.queue_capacity)
        gauge("na64_ingest_sources_connected", "readout nodes connected", s.sources_connected)
        counter("na64_worker_refused_messages", "malformed messages refused on the worker port",
                s.worker_refused_messages)
        counter("na64_worker_refused_results", "worker results refused (did not decode)", s.worker_refused_results)
        counter("na64_worker_refused_peers", "workers refused (CurveZMQ handshake or protocol)",
                s.worker_refused_peers)
        gauge("na64_service_start_time_seconds", "Unix time the service started", s.started, unit="seconds")
        fam = CounterMetricFamily("na64_bad_messages", "bad readout messages by LDC (an expected LDC's id, other, "
                                  "unknown: envelope unreadable) and kind", labels=["ldc", "kind"])
        if not describe:
            for ldc, kinds in sorted(s.bad_messages.items()):
                for kind in BAD_MESSAGE_KINDS:
                    fam.add_metric([str(ldc), kind], int(kinds.get(kind, 0)))
        out.append(fam)
        gauge("na64_memory_budget_bytes", "the service's memory budget ([ingest] max_memory_mb)",
              s.memory_budget_bytes or math.nan, unit="bytes")
        gauge("na64_memory_resident_bytes", "resident memory of the service process", s.memory_resident_bytes or
              math.nan, unit="bytes")
        fam = GaugeMetricFamily("na64_memory_buffered_bytes", "bytes held in flight by stage", labels=["stage"],
                                unit="bytes")
        if not describe:
            for stage in MEMORY_STAGES:
                fam.add_metric([stage], float(s.memory_buffered_bytes.get(stage, 0)))
        out.append(fam)
        gauge("na64_ingest_receive_hwm_messages", "receive high-water mark per readout node (from the budget)",
              s.receive_hwm_messages)

        # ---------------------------------------------------------- spill totals (since service start)
        counter("na64_spills", "spills processed", m.spills)
        counter("na64_events", "data events (PHYSICS + CALIBRATION) accepted", m.events)
        counter("na64_lost_events", "events missing from the event numbering (spec §12)", m.lost_events)
        counter("na64_dropped_events", "events dropped by the live path", m.dropped_events)
        counter("na64_incomplete_events", "events some readout node never sent", m.incomplete_events)
        counter("na64_lost_messages", "ZeroMQ sequence gaps", m.lost_messages)
        counter("na64_modules_missing", "module-missing placeholders", m.modules_missing)
        counter("na64_skipped_bytes", "bytes skipped undecoded: rejected events and garbage passed while"
                " resynchronising", m.skipped_bytes, unit="bytes")
        fam = CounterMetricFamily("na64_decode_errors", "decode errors (spec §5) by kind", labels=["kind"])
        fam_n = CounterMetricFamily("na64_decode_notices", "decode notices (not errors) by kind", labels=["kind"])
        if not describe:
            for kind in ERROR_KINDS:
                fam.add_metric([kind], m.decode_errors.get(kind, 0))
            for kind in NOTICE_KINDS:
                fam_n.add_metric([kind], m.decode_notices.get(kind, 0))
        out += [fam, fam_n]
        counter("na64_beam_particles", "beam particles on target (scaler S1·S2), summed", m.beam_particles)
        counter("na64_eot", "electrons on target, summed since service start", m.eot)
        counter("na64_candidates", "missing-energy candidates", m.candidates)
        h = HistogramMetricFamily("na64_spill_processing_seconds", "decode + monitoring time per spill",
                                  unit="seconds")
        if not describe:
            h.add_metric([], [(str(le), c) for le, c in zip(PROCESSING_BUCKETS, m.processing_buckets)]
                         + [("+Inf", m.spills)], m.processing_seconds_sum)
        out.append(h)

        # ---------------------------------------------------------- current run and last spill
        last = m.last or {}
        gauge("na64_run_number", "run of the last spill", m.run if m.run is not None else math.nan)
        gauge("na64_run_spills", "spills of the current run", m.run_spills)
        gauge("na64_run_eot", "electrons on target in the current run", m.run_eot)
        gauge("na64_run_candidates", "missing-energy candidates in the current run", m.run_candidates)
        gauge("na64_spill_number", "number of the last spill", last.get("spill"))
        gauge("na64_spill_last_timestamp_seconds", "Unix time the last spill was published", m.published_at,
              unit="seconds")
        if live is not None:
            spill_age = live.latest_spill_age_seconds
            if spill_age is None:
                spill_age = live.listening_seconds  # none yet: since the service listens
        else:
            spill_age = self.clock() - m.published_at if m.published_at is not None else math.nan
        gauge("na64_latest_spill_age_seconds", "time since the latest spill record (before the first: since the "
              "service started listening)", spill_age, unit="seconds")
        fam = GaugeMetricFamily("na64_no_data", "1 while no spill came for no_data_after_seconds, by cause",
                                labels=["reason"])
        if not describe:
            for reason in NO_DATA_REASONS:
                fam.add_metric([reason], 1.0 if stale and live.reason == reason else 0.0)
        out.append(fam)
        gauge("na64_spill_events", "data events of the last spill", last.get("events"))
        gauge("na64_beam_particles_last_spill", "beam particles on target in the last spill", last.get("beam"))
        beam, duration = last.get("beam"), last.get("spill_duration_us")
        rate = beam / (duration * 1e-6) if beam is not None and duration else math.nan
        gauge("na64_beam_rate_hertz", "beam particles per second of spill, last spill", rate, unit="hertz")
        gauge("na64_spill_duration_seconds", "spill duration from the scalers, last spill",
              duration * 1e-6 if duration else math.nan, unit="seconds")
        gauge("na64_triggers_accepted_last_spill", "accepted triggers, last spill", last.get("triggers_accepted"))
        gauge("na64_triggers_raw_last_spill", "raw triggers, last spill", last.get("triggers_raw"))
        gauge("na64_dead_time_ratio", "1 − accepted/raw triggers, last spill", last.get("dead_time_fraction"),
              unit="ratio")
        fam = GaugeMetricFamily("na64_hadron_fraction", "hadron fraction of beam-trigger events, last spill "
                                "(estimator hcal: E_HCAL > 10 GeV; srd: no electron tag)", labels=["estimator"])
        if not describe:
            fam.add_metric(["hcal"], _finite(last.get("hadron_fraction")))
            fam.add_metric(["srd"], _finite(last.get("hadron_fraction_srd")))
        out.append(fam)
        gauge("na64_eot_last_spill", "electrons on target, last spill", last.get("eot"))
        gauge("na64_candidates_last_spill", "missing-energy candidates, last spill",
              len(last.get("candidates") or ()) if m.last is not None else math.nan)

        # ---------------------------------------------------------- quality and channels
        fam = GaugeMetricFamily("na64_quality_state", "quality of the last spill: 0 GOOD, 1 NO_DATA (also while "
                                "no spill comes: na64_no_data), 2 WARNING, 3 BAD, -1 none yet", labels=["subsystem"])
        if not describe:
            q = m.quality or {}
            states = dict(q.get("subsystems") or {})
            states["overall"] = q.get("overall")
            for sub in QUALITY_SUBSYSTEMS:
                name = "NO_DATA" if stale else states.get(sub)
                fam.add_metric([sub], float(QualityState[name]) if name in QualityState.__members__ else -1.0)
        out.append(fam)
        fam = GaugeMetricFamily("na64_channel_findings", "active channel-health findings", labels=["detector", "kind"])
        if not describe:
            counts = {(d, k): 0 for d in DETECTORS for k in FINDING_KINDS}
            for f in m.findings:
                key = (str(f.get("detector")), str(f.get("kind")))
                if key in counts:
                    counts[key] += 1
            for (d, k), n in counts.items():
                fam.add_metric([d, k], n)
        out.append(fam)
        return out


def register_metrics(registry: CollectorRegistry, store: SnapshotStore | None = None,
                     liveness=None) -> SnapshotStore:
    """Register an :class:`Na64Collector` on ``registry``; returns the store to publish into.

    ``liveness``: a callable giving the live service's :class:`~.liveness.Liveness` (staleness)."""
    store = store or SnapshotStore()
    registry.register(Na64Collector(store, liveness=liveness))
    return store
