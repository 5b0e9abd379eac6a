"""Prometheus metrics, collected at scrape time from the latest immutable snapshots.

Nothing on the hot path touches a metric. Two immutable snapshots (:mod:`.snapshots`, which
imports no Prometheus client) are published into a
:class:`SnapshotStore` (swapping a reference under a lock):

* :class:`ServiceHealth` — by the ingest code, whenever it likes (e.g. once a
  second): messages, events and bytes received, rates, lag, queue depth, drops;
* :class:`MonitorSnapshot` — once per finished spill, by
  :meth:`SnapshotStore.publish_spill` (folds the QA record into totals since
  service start and keeps the last spill's record, quality and findings).

:class:`Na64Collector` (registered on the registry passed to
:func:`register_metrics`) reads both at scrape time. Label sets are bounded:
``kind`` = the decoder's :class:`~na64_online.errors.Issue` labels
(anything else counts as ``other``), ``subsystem`` = beam, ecal, hcal, srd,
veto, daq (plus those the detector table's mapped detectors add), overall;
``estimator`` = hcal, srd; ``detector`` = the detector table's names (× channel-finding
``kind``); ``profile`` = the beam profiles' names; ``reason`` = readout_silent, monitor_stuck. Quality states are
numbers: 0 GOOD, 1 NO_DATA, 2 WARNING, 3 BAD (−1 before the first spill);
while the service is stale (no spill for ``no_data_after_seconds``, see
:mod:`.liveness`) every subsystem and the overall state read 1 (NO_DATA),
and ``na64_no_data{reason}`` says why.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ..decoders.beam import profiles as beam_profiles
from .health import KINDS as FINDING_KINDS
from .model import finite_float
from .quality import QualityState
from .snapshots import (  # re-exported: the snapshots and label sets live in .snapshots (no Prometheus there)
    ALARM_SEVERITIES, ALERTMANAGER_OUTCOMES, BAD_MESSAGE_KINDS, ERROR_KINDS, MEMORY_STAGES, NO_DATA_REASONS,
    NOTICE_KINDS, PROCESSING_BUCKETS, QUALITY_SUBSYSTEMS, SPILL_QUALITIES, DetectorLabels, MonitorSnapshot,
    ServiceHealth, SnapshotStore,
)


class Na64Collector(Collector):
    """Custom collector: every sample is computed from the store's snapshots at scrape time."""

    def __init__(self, store: SnapshotStore, clock=time.time, liveness=None, *, sources: Sequence[str] = (),
                 alarms=None, archive=False) -> None:
        self.store = store
        self.clock = clock
        self.liveness = liveness  # callable giving a liveness.Liveness (live service), or None
        #: srcID labels of na64_decode_errors_by_source_total (the channel map's, plus event and other)
        self.sources = tuple(dict.fromkeys([*(str(s) for s in sources), "event", "other"]))
        #: callable giving the alarm engine's view: {"active": [alarm dicts], "delivery": {sent, failed, dropped…}}
        self.alarms = alarms
        #: whether the spills are archived (na64_archive_* exported); a callable: also the archive writer's
        #: state (``ArchiveWriter.status()``: pending spills, dropped, failed, retried, behind since)
        self.archive = archive

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
            out.append(GaugeMetricFamily(name, doc, value=None if describe else finite_float(value), unit=unit))

        # ---------------------------------------------------------- service health
        counter("na64_ingest_messages", "ZeroMQ messages received", s.messages_received)
        counter("na64_ingest_events", "DATE events received", s.events_received)
        counter("na64_ingest_bytes", "payload bytes received", s.bytes_received, unit="bytes")
        counter("na64_ingest_dropped_messages", "readout messages lost before the service: ZeroMQ sequence gaps "
                "summed over the readout nodes (dropped at a high-water mark or in the network)", s.dropped_messages)
        counter("na64_ingest_skipped_events", "events of types outside spills, skipped", s.skipped_events)
        gauge("na64_ingest_events_per_second", "recent ingest rate, events per second", s.ingest_events_per_second)
        gauge("na64_ingest_bytes_per_second", "recent ingest rate, bytes per second", s.ingest_bytes_per_second)
        gauge("na64_ingest_lag_seconds", "how far processing is behind arrival", s.lag_seconds, unit="seconds")
        age = self.clock() - s.last_message_time if s.last_message_time is not None else math.nan
        gauge("na64_ingest_last_message_age_seconds", "time since the newest message arrived", age, unit="seconds")
        gauge("na64_ingest_queue_tasks", "decoding tasks waiting for a worker or at a worker", s.queue_depth)
        gauge("na64_ingest_queue_capacity_tasks", "decoding tasks that may wait or be at workers at once",
              s.queue_capacity)
        gauge("na64_ingest_sources_connected", "readout nodes connected", s.sources_connected)
        counter("na64_worker_refused_messages", "malformed messages refused on the worker port",
                s.worker_refused_messages)
        counter("na64_worker_refused_results", "worker results refused (did not decode)", s.worker_refused_results)
        counter("na64_worker_refused_peers", "workers refused (CurveZMQ handshake or protocol)",
                s.worker_refused_peers)
        counter("na64_worker_refused_tasks", "tasks a worker refused (plan or frames not fitting)",
                s.worker_refused_tasks)
        counter("na64_worker_tasks_by_reference", "tasks local workers read from the service's memory",
                s.worker_tasks_by_reference)
        counter("na64_worker_reads_refused", "local workers not allowed to read the service's memory (sent bytes)",
                s.worker_reads_refused)
        gauge("na64_service_start_time_seconds", "Unix time the service process started", s.started,
              unit="seconds")
        gauge("na64_workers_ready", "decoder workers (local and remote) ready for tasks", s.workers_ready)
        counter("na64_workers_seen", "decoder workers that said HELLO since start", s.workers_seen)
        counter("na64_workers_lost", "decoder workers taken for dead since start (no result in task_timeout_s)",
                s.workers_lost)
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
        fam = CounterMetricFamily("na64_decode_errors_by_source", "decode errors by srcID (the channel map's "
                                  "srcIDs; event: damage above any equipment; other: any other srcID)",
                                  labels=["src_id"])
        if not describe:
            counts = dict.fromkeys(self.sources, 0)
            for src, n in m.errors_by_source.items():
                key = src if src in counts else "other"
                counts[key] += int(n)
            for src, n in counts.items():
                fam.add_metric([src], n)
        out.append(fam)
        fam = CounterMetricFamily("na64_spills_by_quality", "spills processed by their overall quality "
                                  "(NONE: judged without a state)", labels=["quality"])
        if not describe:
            for q in SPILL_QUALITIES:
                fam.add_metric([q], m.spills_by_quality.get(q, 0))
        out.append(fam)
        if self.archive:
            counter("na64_archive_spills", "spills committed to the archive", m.archived_spills)
            gauge("na64_archive_last_write_timestamp_seconds", "Unix time of the last archive commit",
                  m.archived_at if m.archived_at is not None else math.nan, unit="seconds")
            if callable(self.archive):
                w = self.archive() if not describe else {}
                behind = w.get("behind_since")
                gauge("na64_archive_pending_spills", "spills waiting for the archive (written on the archive's "
                      "own thread; at most [archive] queue_spills)", w.get("pending_spills", 0))
                gauge("na64_archive_behind_seconds", "how long the archive has not kept up: its current write "
                      "retried after a failure, or running longer than [archive] answer_timeout_s (0 when it "
                      "keeps up)", time.monotonic() - behind if behind is not None else 0.0, unit="seconds")
                counter("na64_archive_spills_dropped", "spills not archived: the queue for the archive was full, "
                        "or the stop left them", w.get("dropped", 0))
                counter("na64_archive_write_retries", "archive writes that failed for the database's sake "
                        "(down, locked, unreachable) and were tried again", w.get("attempts_failed", 0))
                counter("na64_archive_writes_failed", "archive writes given up: the archive refused the data",
                        w.get("failed", 0))
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
                                "(estimator hcal: E_HCAL > 10 GeV; srd: no electron tag)", labels=["estimator"],
                                unit="ratio")
        if not describe:
            fam.add_metric(["hcal"], finite_float(last.get("hadron_fraction")))
            fam.add_metric(["srd"], finite_float(last.get("hadron_fraction_srd")))
        out.append(fam)
        gauge("na64_eot_last_spill", "electrons on target, last spill", last.get("eot"))
        gauge("na64_candidates_last_spill", "missing-energy candidates, last spill",
              len(last.get("candidates") or ()) if m.last is not None else math.nan)

        fam = GaugeMetricFamily("na64_beam_profile", "1 for the beam profile the last spill was judged with "
                                "(decoders/beam-profiles.toml), 0 for the others", labels=["profile"])
        if not describe:
            for name in beam_profiles():
                fam.add_metric([name], 1.0 if last.get("beam_profile") == name else 0.0)
        out.append(fam)

        # ---------------------------------------------------------- detectors (the table's)
        labels = self.store.detectors
        per_detector = last.get("detectors") or {}
        for name, doc, key, unit in (
            ("na64_detector_channels", "channels of the detector in the channel map", "channels", ""),
            ("na64_detector_energy_mean_gev", "mean energy per data event in the detector, last spill [GeV]",
             "energy_mean_gev", ""),
            ("na64_detector_hit_ratio", "fraction of data events with energy in the detector, last spill",
             "hit_fraction", "ratio"),
        ):
            fam = GaugeMetricFamily(name, doc, labels=["detector"], unit=unit)
            if not describe:
                for detector in labels.mapped:
                    fam.add_metric([detector], finite_float((per_detector.get(detector) or {}).get(key)))
            out.append(fam)

        # ---------------------------------------------------------- quality and channels
        fam = GaugeMetricFamily("na64_quality_state", "quality of the last spill: 0 GOOD, 1 NO_DATA (also while "
                                "no spill comes: na64_no_data), 2 WARNING, 3 BAD, -1 none yet", labels=["subsystem"])
        if not describe:
            q = m.quality or {}
            states = dict(q.get("subsystems") or {})
            states["overall"] = q.get("overall")
            for sub in labels.subsystems + ("overall",):
                name = "NO_DATA" if stale else states.get(sub)
                fam.add_metric([sub], float(QualityState[name]) if name in QualityState.__members__ else -1.0)
        out.append(fam)
        fam = GaugeMetricFamily("na64_channel_findings", "active channel-health findings", labels=["detector", "kind"])
        if not describe:
            counts = {(d, k): 0 for d in labels.table for k in FINDING_KINDS}
            for f in m.findings:
                key = (str(f.get("detector")), str(f.get("kind")))
                if key in counts:
                    counts[key] += 1
            for (d, k), n in counts.items():
                fam.add_metric([d, k], n)
        out.append(fam)
        if self.alarms is not None:
            out += self._alarm_families(describe)
        return out

    def _alarm_families(self, describe: bool) -> list:
        """The service's own alarms as a metric (like Prometheus's ALERTS) and their delivery to Alertmanager."""
        view = {} if describe else (self.alarms() or {})
        active = GaugeMetricFamily("na64_alarm_active", "1 per active alarm of the service (its rules and service "
                                   "alarms), by name, severity and state (raised, acknowledged, silenced)",
                                   labels=["alertname", "severity", "state"])
        for alarm in view.get("active", ()):
            state = "silenced" if alarm.get("state") == "raised" and alarm.get("silenced_by") else alarm.get("state")
            active.add_metric([str(alarm.get("name")), str(alarm.get("severity")), str(state)], 1.0)
        out = [active]
        delivery = view.get("delivery") or {}
        for outcome, doc in (("sent", "requests Alertmanager accepted"),
                             ("failed", "requests to Alertmanager that failed (unreachable, timeout, HTTP error)"),
                             ("dropped", "batches of alerts dropped unsent (the sender's queue was full)")):
            out.append(CounterMetricFamily(f"na64_alertmanager_{outcome}", doc,
                                           value=None if describe else int(delivery.get(outcome, 0))))
        out.append(GaugeMetricFamily("na64_alertmanager_last_success_timestamp_seconds",
                                     "Unix time Alertmanager last accepted a request (NaN: never)",
                                     value=None if describe else finite_float(delivery.get("last_success")),
                                     unit="seconds"))
        return out


def register_metrics(registry: CollectorRegistry, store: SnapshotStore | None = None,
                     liveness=None, *, sources: Sequence[str] = (), alarms=None, archive=False,
                     process: bool = False) -> SnapshotStore:
    """Register an :class:`Na64Collector` on ``registry``; returns the store to publish into.

    ``liveness``: a callable giving the live service's :class:`~.liveness.Liveness` (staleness);
    ``sources``: the channel map's srcIDs (labels of ``na64_decode_errors_by_source_total``);
    ``alarms``: a callable giving ``{"active": [...], "delivery": {...}}`` (``na64_alarm_active``,
    ``na64_alertmanager_*``); ``archive``: export ``na64_archive_*`` (a callable giving the archive writer's
    ``status()``: also its queue, delays and losses); ``process``: also the standard
    ``process_*`` and ``python_info`` collectors and ``na64_build_info``.
    """
    store = store or SnapshotStore()
    registry.register(Na64Collector(store, liveness=liveness, sources=sources, alarms=alarms, archive=archive))
    if process:
        from prometheus_client import PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(BuildInfoCollector())
    return store


def alarm_view(engine) -> dict:
    """The alarm engine's active alarms and Alertmanager delivery counts, for metrics and /api/health."""
    return {"active": engine.active(), "delivery": engine.delivery()}


class BuildInfoCollector(Collector):
    """``na64_build_info{version, python}`` = 1: which build runs (join on it in queries)."""

    def collect(self):
        import platform

        from .. import __version__

        fam = GaugeMetricFamily("na64_build_info", "the running build: version of na64-online and Python",
                                labels=["version", "python"])
        fam.add_metric([__version__, platform.python_version()], 1.0)
        yield fam
