"""Everything that happens to a finished spill, live or replayed, in one place.

accumulated spill → QA record → channel health (against each channel's own
history) → run-cumulative histograms → quality states (optionally against a
reference spill) → alarms → metrics snapshot → immutable :class:`SpillSnapshot`
for the dashboard → archive (one transaction; live, queued for the archive's
own thread: :mod:`.archive.writer`).

One thread calls :meth:`SpillMonitor.handle`; readers (web, Prometheus) only
take the latest immutable snapshot.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from ..decoders import beam as beam_profiles
from ..decoders.beam import DEFAULT_PROFILE
from ..decoders.channelmap import ChannelMap
from ..errors import ArchiveUnavailable, ConfigError
from .alarms import AlarmConfig, AlarmEngine
from .archive.config import UNVERSIONED, ArchiveConfig
from . import model
from .health import ChannelHistory, ChannelStats, HealthConfig, hit_threshold
from .histograms import HistogramConfig, RunHistograms, SpillHistograms
from ..daq.live import LiveExtras
from .pipeline import MonitorConfig, SpillAccumulator, SpillProcessor
from .model import SpillRecord
from .quality import QualityConfig, assess, interrupted_quality

if TYPE_CHECKING:  # the metrics' store: only the live service passes one
    from .archive.writer import ArchiveWriter, DirectWrites
    from .snapshots import SnapshotStore

STATS, HISTOGRAMS = "channel_stats", "histograms"
log = logging.getLogger(__name__)


def make_processor(
    channel_map: ChannelMap, monitor: MonitorConfig = MonitorConfig(), histograms: HistogramConfig = HistogramConfig(),
    health: HealthConfig = HealthConfig(),
) -> SpillProcessor:
    """The spill processor with the monitoring extensions (channel statistics, histograms).

    The channel statistics count hits above ``health.hit_threshold``, by default the reconstruction's
    ``monitor.reconstruction.amplitude_threshold`` (:func:`.health.hit_threshold`).

    Built from plain arguments, so decoder workers — local processes or other
    hosts — build the very same one from the set-up text the service sends them
    (``na64_online/worker_setup.py``).
    """
    return SpillProcessor(
        monitor,
        channel_map,
        extensions={STATS: functools.partial(ChannelStats, hit_threshold=hit_threshold(health, monitor.reconstruction)),
                    HISTOGRAMS: functools.partial(SpillHistograms, config=histograms)},
    )


def reference_histograms(archive, run: int, spill: int | None = None) -> dict:
    """The archived histograms of a spill (``spill=None``: the whole run, summed), to compare spectra with;
    ``ValueError`` when there are none (or no archive)."""
    if archive is None:
        raise ValueError("a reference needs the archive")
    hists = archive.run_histograms(run) if spill is None else archive.get_histograms(run, spill)
    if not hists:
        what = f"run {run}" if spill is None else f"run {run} spill {spill}"
        raise ValueError(f"no archived histograms for {what}")
    return hists


class SpillSnapshot(model.SpillSnapshot):
    """What the dashboard shows after a spill (typed: :class:`~.model.SpillSnapshot`) plus the
    histograms in their JSON shape; never mutated once published."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    histograms: dict = {}  # this spill's, JSON form (model_served.HistogramSetJSON)
    run_histograms: dict = {}  # run-cumulative, JSON form
    channel_stats: dict = {}
    published_at: float = Field(default_factory=time.time)
    #: the raw words (bytes, raw-file layout) of this spill's first candidates (``[monitor]
    #: candidate_events_per_spill``): ``((event number, bytes), …)`` — the event display's data
    candidate_events: tuple[tuple[int, bytes], ...] = Field(default=(), exclude=True)


class SpillMonitor:
    """Turns accumulated spills into records, quality, alarms, archive rows and metrics."""

    def __init__(
        self,
        channel_map: ChannelMap,
        monitor: MonitorConfig = MonitorConfig(),
        histograms: HistogramConfig = HistogramConfig(),
        health: HealthConfig = HealthConfig(),
        quality: QualityConfig = QualityConfig(),
        alarms: AlarmConfig = AlarmConfig(),
        archive: ArchiveConfig | None = None,
        metrics: SnapshotStore | None = None,
        reference: tuple[int, int | None] | None = None,
        beam_profile: str = DEFAULT_PROFILE,
        processing_version: str = UNVERSIONED,
        snapshots: bool = True,
        archive_thread: bool = False,
    ) -> None:
        missing = [role for role in beam_profiles.profile(beam_profile).requires
                   if channel_map.detectors.by_role(role) is None
                   or not channel_map.slots(channel_map.detectors.by_role(role).code).size]
        if missing:
            raise ConfigError(f"beam profile {beam_profile} needs a detector of role {', '.join(missing)} in the "
                              f"channel map ({channel_map.source}, detector table {channel_map.detectors.source})")
        self.beam_profile = beam_profile
        self.channel_map = channel_map
        self.processing_version = processing_version
        self.detector_subsystems = channel_map.detector_subsystems()
        self.histogram_config = histograms
        self.quality_config = quality
        self.processor = make_processor(channel_map, monitor, histograms, health)
        self.history = ChannelHistory(channel_map, health)
        self.run_histograms = RunHistograms(histograms, trend_spills=monitor.trend_spills)
        #: the store the metrics read, published into after each spill; None: nothing reads metrics (replay)
        self.metrics = metrics
        #: the archive's writes: on a thread of their own (``archive_thread``, the live service: a database
        #: that hangs never stops the spill loop), else in this thread (replay: a record once its spill is
        #: committed); None without an archive
        self.archive_writes: ArchiveWriter | DirectWrites | None = None
        #: spills committed to the archive so far (one thread writes): readers of the archive read again on a change
        self.archive_commits = 0
        if archive is not None:
            from .archive.store import Archive  # SQLAlchemy: only with an archive
            from .archive.writer import AlarmStoreVia, ArchiveWriter, DirectWrites

            # live, a database that does not answer yet is opened by the writer once it does
            self.archive = Archive.from_config(archive, version=processing_version, wait_for_database=archive_thread)
            if archive_thread:
                self.archive_writes = ArchiveWriter(
                    self.archive, queue_spills=archive.queue_spills, answer_timeout_s=archive.answer_timeout_s,
                    drain_timeout_s=archive.drain_timeout_s, on_commit=self._archive_committed)
            else:
                self.archive_writes = DirectWrites(self.archive, on_commit=self._archive_committed)
            self.alarms = AlarmEngine.from_config(alarms, AlarmStoreVia(self.archive_writes))
        else:
            self.archive = None
            self.alarms = AlarmEngine.from_config(alarms, None)
        if metrics is not None:
            metrics.use_channel_map(channel_map)
        self.reference: dict | None = None
        self.reference_id: tuple[int, int] | None = None
        #: build the dashboard's :class:`SpillSnapshot` after each judged spill (:attr:`latest`); False when
        #: nothing reads it (``replay``, ``reprocess``): its histogram and channel-statistics JSON were about
        #: half of a spill's finish (~9 of 19 ms for 10^5 events), and the run histograms' JSON grows with them
        self.snapshots = snapshots
        self._latest: SpillSnapshot | None = None
        self._lock = threading.Lock()
        self.spills_handled = 0
        self.spills_interrupted = 0
        if reference is not None:
            try:
                self.set_reference(*reference)
            except ArchiveUnavailable as exc:  # live, started while the database does not answer
                log.error("the configured reference %s is not in use: %s (PUT /api/reference sets it later)",
                          reference, exc)

    # ------------------------------------------------------------ reference
    def set_reference(self, run: int, spill: int | None = None) -> None:
        """Compare spectra with this archived spill (or, ``spill=None``, the whole run summed) from now on."""
        self.use_reference(run, spill, reference_histograms(self.archive, run, spill))

    def use_reference(self, run: int, spill: int | None, hists: dict) -> None:
        """Compare spectra with ``hists`` (:func:`reference_histograms`, read in any thread) from now on."""
        with self._lock:
            self.reference, self.reference_id = hists, (run, spill)

    def reference_in_use(self) -> tuple[tuple[int, int | None] | None, dict | None]:
        """(reference id, its histograms) as one pair, from any thread."""
        with self._lock:
            return self.reference_id, self.reference

    # ------------------------------------------------------------ per spill
    def handle(
        self, acc: SpillAccumulator, *, complete: bool | None = None, live: LiveExtras | None = None
    ) -> dict:
        """Finish one spill; returns its QA record as JSON data (:meth:`.model.SpillRecord.to_dict`) (spec §12 keys, quality, alarms, …).

        A spill the live service cut short when it stopped (``live.interrupted``)
        is archived as interrupted and nothing else: see :meth:`_handle_interrupted`.
        """
        decoded: SpillRecord = self.processor.finish(acc, complete=complete, live=live)
        decoded = decoded.model_copy(update={"beam_profile": self.beam_profile})  # decoders/beam-profiles.toml
        if live is not None and live.interrupted:
            return self._handle_interrupted(decoded, acc)
        stats: ChannelStats | None = acc.extensions.get(STATS)
        spill_hists: SpillHistograms | None = acc.extensions.get(HISTOGRAMS)
        report = self.history.update(stats) if stats is not None else None
        with self._lock:
            reference = self.reference
        facts = decoded.model_dump()  # the quality checks read the decoded facts by key
        quality = model.SpillQuality.model_validate(assess(
            facts, spill_hists, report.findings if report is not None else None, reference=reference,
            config=self.quality_config, detector_subsystems=self.detector_subsystems,
        ))
        self.run_histograms.add(spill_hists, facts)
        health = model.HealthReport.model_validate(report) if report is not None else model.HealthReport()
        record = decoded.model_copy(update=dict(
            quality=quality,
            channel_findings=list(health.findings),
            eot_run=self.run_histograms.eot,
            reference=tuple(self.reference_id) if self.reference_id else None,
            # a (run, spill) archived already with other data: both are kept, and the alarm says so; None: the
            # archive did not answer in time (its write decides it, into the archived row)
            archive_collision=self.archive_writes.collides(facts) if self.archive_writes is not None else False,
        ))
        active = self.alarms.evaluate(record, quality, extra={"health": health})
        record = record.model_copy(update=dict(alarms=[model.ActiveAlarm.model_validate(a) for a in active]))
        alarm_events = self.alarms.take_events()
        if self.metrics is not None:
            self.metrics.publish_spill(record, quality, health)
        if self.snapshots:
            self._publish(record, quality, health, spill_hists, stats, acc)
        if self.archive_writes is not None:
            # last: the metrics and the dashboard have the spill before the archive's thread starts on it
            self.archive_writes.store_spill(record, quality, spill_hists.hists if spill_hists is not None else {},
                                            alarm_events, decide_collision=record.archive_collision is None)
        self.spills_handled += 1
        return record.to_dict()

    def _publish(self, record, quality, health, spill_hists, stats, acc) -> None:
        """The dashboard's snapshot of the spill just judged (:attr:`latest`)."""
        snapshot = SpillSnapshot(
            record=record,
            quality=quality,
            health=health,
            histograms=spill_hists.to_json() if spill_hists is not None else {},
            run_histograms=self.run_histograms.to_json(),
            channel_stats=stats.to_json() if stats is not None else {},
            candidate_events=tuple((int(e), w.tobytes()) for e, w in acc.candidate_events),
        )
        with self._lock:
            self._latest = snapshot

    def _handle_interrupted(self, record: SpillRecord, acc: SpillAccumulator) -> dict:
        """Archive a spill cut short by a stop, marked interrupted, without judging it.

        No quality check, no alarm evaluated (none raised, none cleared: alarm
        states stay as they were), no channel history, run histograms, metrics
        or dashboard snapshot — a partial spill would look like dead channels
        and a bad DAQ. Its QA record and histograms go to the archive.
        """
        spill_hists: SpillHistograms | None = acc.extensions.get(HISTOGRAMS)
        quality = model.SpillQuality.model_validate(interrupted_quality(record.run, record.spill))
        record = record.model_copy(update=dict(
            interrupted=True,
            quality=quality,
            channel_findings=[],
            eot_run=self.run_histograms.eot,
            reference=tuple(self.reference_id) if self.reference_id else None,
            alarms=[],  # none evaluated from this spill
        ))
        if self.archive_writes is not None:
            self.archive_writes.store_spill(record, quality, spill_hists.hists if spill_hists is not None else {}, ())
        self.spills_interrupted += 1
        return record.to_dict()

    def _archive_committed(self) -> None:
        """A spill's archive transaction committed (the writer's thread, or this one)."""
        self.archive_commits += 1
        if self.metrics is not None:
            self.metrics.publish_archive_write()

    @property
    def latest(self) -> SpillSnapshot | None:
        """The snapshot of the last judged spill (None before one, or without ``snapshots``)."""
        return self._latest

    def reset_run_histograms(self, reason: str = "operator") -> None:
        self.run_histograms.reset(reason)

    def close(self) -> None:
        """Stop the alarm engine, write what waits for the archive (bounded: ``drain_timeout_s``), close it."""
        self.alarms.close()
        if self.archive is not None:
            self.archive_writes.close()
            self.archive.close()

    def status(self) -> dict[str, Any]:
        return {
            "spills_handled": self.spills_handled,
            "spills_interrupted": self.spills_interrupted,
            "reference": list(self.reference_id) if self.reference_id else None,
            "alarm_rules_error": getattr(self.alarms, "rules_error", None),
            "archive": self.archive_writes.status() if self.archive_writes is not None else None,
        }
