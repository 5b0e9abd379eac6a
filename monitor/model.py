"""One typed result per spill: the QA record, its quality, channel findings, alarms and the snapshot.

Pydantic models for everything a finished spill hands to the next layer —
archive, alarms, metrics, web. They are built once per spill (by
:class:`~.pipeline.SpillProcessor` and :class:`~.spill_monitor.SpillMonitor`)
and serialised once, at the edges, by :func:`to_json` (archive rows, API
answers, ``replay --json`` lines, the Alertmanager payload): strict JSON, a
non-finite number (NaN, ±inf) written as ``null``.

Field names are the record's keys (docs: README "The QA record"):

- :class:`SpillRecord` — spec §12 keys first (``run`` … ``alarms``), then the
  extras; live-only keys (``lost_messages``, ``incomplete_events``, ``late_events``,
  ``dropped_events``, ``missing_ldcs``, ``bad_messages``) are left out of the JSON
  of a replayed spill, ``interrupted`` out of a judged one, ``archive_collision``
  out of an interrupted one;
- :class:`SpillQuality` — ``overall``, per ``subsystems`` state, the ``checks``
  (:class:`QualityCheck`: name ``<subsystem>.<what>``, state, value, detail, reason)
  and ``reasons`` (why it is not GOOD);
- :class:`ChannelFinding` — a channel problem (dead, hot, noisy, drifting,
  saturating) by detector position (``detector``, ``module``, ``x``, ``y``) and by
  electronic address (``src_id``, ``port``, ``channel``);
- :class:`ActiveAlarm` (an alarm occurrence as the engine keeps it) and
  :class:`AlarmEvent` (one transition in the history);
- :class:`SpillSnapshot` — what the web reads after a spill: the record, its
  quality and channel health, and when it was published.

What only the web and the archive answer — the histogram JSON shape
(:class:`~.model_served.HistogramJSON`, in the API, the dashboard and the
archive's JSON export; the archive keeps histograms as exact binary blobs,
:mod:`.archive.codec`) and the archive's rows — is in :mod:`.model_served`:
``replay`` builds records but serves nothing, and does not define those.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_serializer


def _state_name(value: Any) -> Any:
    """A quality state given as the enum (``QualityState.BAD``) or as its name."""
    return value.name if isinstance(value, Enum) else value


#: a quality state by name; monitor/quality.py's ``QualityState`` members are taken by their name
QualityName = Annotated[Literal["GOOD", "NO_DATA", "WARNING", "BAD", "INTERRUPTED"], BeforeValidator(_state_name)]
Severity = Literal["info", "warning", "critical"]
AlarmState = Literal["raised", "acknowledged", "cleared"]
FindingKind = Literal["dead", "hot", "noisy", "drifting", "saturating"]


def finite_float(value: Any, default: float = math.nan) -> float:
    """``value`` as a finite float, or ``default`` when it is none, not a number, NaN or infinite (what the
    metrics and the dashboard read from a record)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _finite_or_none(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


#: a float that is written as ``null`` in JSON when it is NaN or infinite
Real = Annotated[float, PlainSerializer(_finite_or_none, return_type=float | None, when_used="json")]
#: a scalar an alarm compared (a number, a state name, a flag)
Scalar = str | bool | int | Real | None


class Model(BaseModel):
    """Base: immutable, unknown keys refused; ``_omit_if_none`` fields are left out of the JSON when None."""

    model_config = ConfigDict(frozen=True, extra="forbid", from_attributes=True, defer_build=True)
    _omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler):
        data = handler(self)
        for name in self._omit_if_none:
            if data.get(name, 0) is None:
                del data[name]
        return data


def to_json(value: Any) -> Any:
    """The one serialisation: strict JSON-ready Python data of a model, or of plain data holding models.

    Models dump themselves (``mode="json"``); around them, NaN/±inf become ``None``, numpy
    scalars and arrays plain Python values, tuples and sets lists, mapping keys strings and
    paths strings.
    """
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def dumps(value: Any) -> str:
    """:func:`to_json` as text (what ``replay --json`` prints and the API answers)."""
    return json.dumps(to_json(value), separators=(", ", ": "), allow_nan=False)


# --------------------------------------------------------------------------- quality


class QualityCheck(Model):
    """One check of a spill: ``name`` is ``<subsystem>.<what>`` (``beam.hadron_fraction``)."""

    name: str
    subsystem: str
    state: QualityName
    value: Real | None = None
    detail: str = ""
    #: the verdict in words with its numbers (detail, and what was expected)
    reason: str = ""


class SpillQuality(Model):
    """Quality states of one spill: overall (the worst subsystem), per subsystem, per check, and
    ``reasons``: why it is not GOOD, one line per check that is not (or why it was not judged)."""

    run: int | None = None
    spill: int | None = None
    overall: QualityName
    subsystems: dict[str, QualityName]
    checks: list[QualityCheck] = []
    reasons: list[str] = []

    def check(self, name: str) -> QualityCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


# --------------------------------------------------------------------------- channel health


class ChannelFinding(Model):
    """An active channel problem; ``value`` / ``reference`` in the unit of the check (see monitor/health.py).

    ``slot``: the channel's row in the channel map; ``since``: (run, spill) where it was raised;
    ``spills``: consecutive bad spills so far.
    """

    _omit_if_none = frozenset({"src_id", "port", "channel"})

    slot: int
    detector: str
    module: int
    x: int
    y: int
    kind: FindingKind
    value: Real
    reference: Real | None
    spills: int
    since: tuple[int | None, int | None]
    detail: str = ""
    #: electronic address (srcID, MSADC port, channel) — where to look in the crate
    src_id: int | None = None
    port: int | None = None
    channel: int | None = None


class HealthReport(Model):
    """Channel health after one spill: active ``findings``, and those ``raised`` / ``cleared`` by it.

    ``judged``: False when the spill had too few physics events to judge channels.
    """

    run: int | None = None
    spill: int | None = None
    judged: bool = True
    events: int = 0
    findings: list[ChannelFinding] = []
    raised: list[ChannelFinding] = []
    cleared: list[ChannelFinding] = []


# --------------------------------------------------------------------------- alarms


class Acknowledgement(Model):
    user: str
    time: Real
    comment: str | None = None


class ActiveAlarm(Model):
    """An alarm occurrence: raised after ``spills`` consecutive spills where ``condition`` held, since
    ``since_run``/``since_spill``; ``value`` is the quantity compared at the last spill."""

    name: str
    severity: Severity
    detail: str = ""
    state: AlarmState = "raised"
    since_run: int | None = None
    since_spill: int | None = None
    spills: int = 0
    value: Scalar = None
    condition: str = ""
    description: str = ""
    alarm_id: str
    raised_at: Real
    raised_run: int | None = None
    raised_spill: int | None = None
    acknowledged_by: str | None = None
    ack_comment: str | None = None
    acknowledged_at: Real | None = None
    cleared_at: Real | None = None
    acknowledgements: list[Acknowledgement] = []
    #: routing label shared with deploy/ (physics, channels, daq, service) and the runbook to follow
    category: str | None = None
    runbook_url: str | None = None
    #: Alertmanager: the acknowledgement's silence, who else silenced the alert, the silences muting it now
    silence_id: str | None = None
    silenced_by: str | None = None
    silences: list[dict[str, Any]] = []


class AlarmEvent(Model):
    """One transition of an alarm occurrence (raised, acknowledged, cleared) in the history.

    ``id``: the archive's row id (absent in the in-memory history); ``description``,
    ``since_run``, ``since_spill``: only in the in-memory history (the archive keeps
    them on the occurrence).
    """

    _omit_if_none = frozenset({"id"})
    model_config = ConfigDict(frozen=True, extra="allow", from_attributes=True)

    id: int | None = None
    time: Real
    alarm_id: str
    name: str
    severity: Severity
    state: AlarmState
    run: int | None = None
    spill: int | None = None
    detail: str | None = ""
    user: str | None = None
    comment: str | None = None


# --------------------------------------------------------------------------- the record


class CandidateDetail(Model):
    """A missing-energy candidate and the numbers that made it pass (GeV)."""

    event: int
    e_ps: Real
    e_ecal: Real
    e_hcal: Real
    srd_sum: Real
    veto_max: Real


class LostMessages(Model):
    total: int
    by_ldc: dict[str, int]


class SequenceJump(Model):
    ldc: str
    size: int


class BadMessages(Model):
    total: int
    by_ldc: dict[str, dict[str, int]]
    sequence_jumps: list[SequenceJump] = []


class DetectorValues(Model):
    """One detector's figures in a spill: mapped ``channels``, mean energy per data event (GeV) and the
    fraction of data events with energy in it (None without data events)."""

    model_config = ConfigDict(frozen=True, extra="allow", from_attributes=True)

    channels: int
    energy_mean_gev: Real | None = None
    hit_fraction: Real | None = None


class SpillRecord(Model):
    """The QA record of one spill (spec §12 keys first, then extras; README "The QA record").

    Built by :meth:`~.pipeline.SpillProcessor.finish` (the decoded facts) and completed by
    :class:`~.spill_monitor.SpillMonitor` (``quality``, ``channel_findings``, ``alarms``,
    ``eot_run``, ``reference``, ``archive_collision`` / ``interrupted``).
    ``errors_by_src`` / ``notices_by_src``: srcID (``"event"`` for damage above any
    equipment) -> issue kind -> count.
    """

    _omit_if_none = frozenset({
        "lost_messages", "incomplete_events", "late_events", "dropped_events", "missing_ldcs", "bad_messages",
        "quality", "channel_findings", "eot_run", "interrupted", "archive_collision", "beam_profile",
    })

    run: int | None
    spill: int | None
    events: int
    lost_events: int
    decode_errors: int
    modules_missing: int
    complete: bool
    beam: int | None
    triggers_accepted: int | None
    hadron_fraction: Real | None
    hadron_fraction_srd: Real | None
    eot: Real | None
    candidates: list[int]
    alarms: list[ActiveAlarm] = []
    # extras
    triggers_raw: int | None = None
    s0: int | None = None
    spill_duration_us: int | None = None
    dead_time_fraction: Real | None = None
    beam_rate_hz: Real | None = None
    physics_events: int = 0
    calibration_events: int = 0
    beam_events: int = 0
    hadron_events: int = 0
    rejected_events: int = 0
    skipped_bytes: int = 0
    header_mismatch: int = 0
    duplicate_event: int = 0
    errors_by_src: dict[str, dict[str, int]] = {}
    notices_by_src: dict[str, dict[str, int]] = {}
    candidate_details: list[CandidateDetail] = []
    lost_messages: LostMessages | None = None
    incomplete_events: int | None = None
    late_events: int | None = None
    dropped_events: int | None = None
    missing_ldcs: list[int] | None = None
    bad_messages: BadMessages | None = None
    first_event_time: int | None = None
    last_event_time: int | None = None
    bytes_decoded: int = 0
    processing_seconds: Real = 0.0
    finished_at: Real = 0.0
    #: per detector with channels in the map (table order)
    detectors: dict[str, DetectorValues] = {}
    #: the beam profile whose cuts and expectations were used (decoders/beam-profiles.toml)
    beam_profile: str | None = None
    # added by the monitor (absent from a bare decoded record)
    quality: SpillQuality | None = None
    channel_findings: list[ChannelFinding] | None = None
    eot_run: Real | None = None
    reference: tuple[int, int | None] | None = Field(None, description="the reference (run, spill) the spectra "
                                                                      "were compared with; spill null: whole run")
    archive_collision: bool | None = None
    interrupted: bool | None = None

    @model_serializer(mode="wrap")
    def _omit(self, handler):
        data = handler(self)
        for name in self._omit_if_none:
            if data.get(name, 0) is None:
                del data[name]
        if self.quality is None:  # a bare decoded record: the monitor has not compared it with a reference
            data.pop("reference", None)
        return data

    def to_dict(self) -> dict:
        """The record as JSON-ready data (:func:`to_json`)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- snapshot


class SpillSnapshot(Model):
    """What the web answers for the latest spill (``/api/spills/latest``)."""

    record: SpillRecord
    quality: SpillQuality | None
    health: HealthReport
    published_at: Real


__all__ = [
    "ActiveAlarm",
    "AlarmEvent",
    "ChannelFinding",
    "HealthReport",
    "QualityCheck",
    "SpillQuality",
    "SpillRecord",
    "SpillSnapshot",
    "to_json",
]
