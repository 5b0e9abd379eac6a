"""The alarm engine: rules evaluated spill by spill, the alarms' life cycle, history.

The rule syntax and the default rules are in :mod:`.rules`; delivery
(Alertmanager, the control-room sound) in :mod:`.notifiers`.

Wiring in the spill loop (history goes into the archive in the same
transaction as the spill)::

    active = engine.evaluate(record, quality, extra={"health": health})  # model.SpillRecord, SpillQuality,
    record = record.model_copy(update={"alarms": active})                # HealthReport; active alarm dicts
    archive.store_spill(record, quality, histograms, engine.take_events())

Acknowledgements (web thread) are written to the ``store`` at once. The
engine is thread-safe. History: :meth:`AlarmEngine.history` (the store's
``alarm_history``, or an in-memory ring when there is no store).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import Field, field_validator

from ...config_section import ConfigSection

from ...errors import ConfigError
from ..model import to_json
from .notifiers import AlertmanagerNotifier, Notifiers, SilenceHandle, SoundNotifier
from .quantities import SpillContext
from .rules import (
    _SEVERITY_RANK,
    SERVICE_ALARM_CATEGORIES,
    SERVICE_ALARMS,
    SEVERITIES,
    AlarmRule,
    _fmt,
    default_rules,
    load_rules,
)

log = logging.getLogger(__name__)

_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ANCHOR_DROP = re.compile(r"[^a-z0-9_-]+")


def runbook_anchor(name: str) -> str:
    """The anchor of an alarm's entry in the shifter's guide (as /docs renders headings)."""
    return _ANCHOR_DROP.sub("-", name.strip().lower()).strip("-")


# --------------------------------------------------------------------------- config


class AlarmConfig(ConfigSection):
    """Alarm settings (``[alarms]``).

    ``rules_path``: TOML file of rules (``None``: :data:`DEFAULT_RULES_TOML`),
    watched for changes. ``alertmanager_url``: base URL(s) of Alertmanager
    (``http://host:9093``), ``None`` to send nothing. ``timeout``: seconds per
    HTTP request. ``resend_seconds``: active alerts are sent again this often
    (Alertmanager resolves alerts it has not heard of for a while).
    ``queue_size``: batches waiting for the sender thread before the oldest is
    dropped.
    """

    section: ClassVar[str] = "alarms"

    rules_path: Path | None = None
    alertmanager_url: str | tuple[str, ...] | None = None
    timeout: float = Field(2.0, gt=0, le=60)
    resend_seconds: float = Field(60.0, gt=0)
    queue_size: int = Field(64, ge=1)
    #: control-room sound: a command run (name, severity, detail appended) when an alarm is raised;
    #: a single string is a command without arguments
    sound_command: tuple[str, ...] | None = None
    sound_min_severity: str = "critical"
    #: labels added to every alert (e.g. instance, job); ``service`` defaults to na64-online
    labels: dict[str, str] = Field(default_factory=dict)
    #: the dashboard's public URL: each alert's generatorURL ("source" link)
    generator_url: str | None = None
    #: the shifter's guide (runbook) URL; an alarm's runbook_url is this + "#" + its name, unless its rule
    #: gives one. Default: generator_url + "docs/shifter-guide"
    runbook_url: str | None = None
    #: an acknowledgement creates an Alertmanager silence of that alarm, ended when the alarm clears
    silence_on_ack: bool = True
    #: such a silence is made for this long and renewed while the alarm stays active
    silence_seconds: float = Field(3600.0, ge=60, le=7 * 86400)

    @field_validator("alertmanager_url")
    @classmethod
    def _http(cls, value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        for url in (value,) if isinstance(value, str) else (value or ()):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"must be an http(s) URL, not {url!r}")
        return value

    @field_validator("sound_command", mode="before")
    @classmethod
    def _one_word(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("sound_command")
    @classmethod
    def _command(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not all(value)):
            raise ValueError(f"must be a non-empty list of non-empty strings, not {list(value)!r}")
        return value

    @field_validator("sound_min_severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        if value not in SEVERITIES:
            raise ValueError(f"must be one of {', '.join(SEVERITIES)}, not {value!r}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not _LABEL_RE.match(key) or key.startswith("__"):
                raise ValueError(f"label name {key!r} is not a Prometheus label name")
            if key in ("alertname", "severity", "category"):
                raise ValueError(f"label {key!r} is set per alarm and cannot be configured")
            if not value:
                raise ValueError(f"label {key!r} must be a non-empty string")
        return labels

    @field_validator("generator_url", "runbook_url")
    @classmethod
    def _page_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, not {url!r}")
        return url

    @property
    def runbook_base(self) -> str | None:
        """Where an alarm's runbook entry is (its name as the anchor)."""
        if self.runbook_url:
            return self.runbook_url
        return self.generator_url.rstrip("/") + "/docs/shifter-guide" if self.generator_url else None


# --------------------------------------------------------------------------- engine


class AlarmStore(Protocol):
    """What the engine needs from the archive (:class:`~na64_online.monitor.archive.Archive`)."""

    def record_alarm_events(self, events: Iterable[Mapping[str, Any]]) -> None: ...
    def active_alarms(self) -> list[dict]: ...
    def alarm_history(self, **filters: Any) -> list[dict]: ...


@dataclass
class _Alarm:
    alarm_id: str
    name: str
    severity: str
    description: str
    condition: str
    since_run: Any
    since_spill: Any
    raised_at: float
    raised_run: Any
    raised_spill: Any
    detail: str = ""
    value: Any = None
    spills: int = 0
    state: str = "raised"
    acknowledged_by: str | None = None
    ack_comment: str | None = None
    acknowledged_at: float | None = None
    cleared_at: float | None = None
    acknowledgements: list[dict] = field(default_factory=list)  # every one: user, time, comment (oldest first)
    category: str = "physics"
    runbook_url: str | None = None
    silence: SilenceHandle | None = None  # the acknowledgement's silence in Alertmanager
    silences: list[dict] = field(default_factory=list)  # silences muting its alert now (read from Alertmanager)

    @property
    def silenced_by(self) -> str | None:
        """Who made a silence (other than this alarm's acknowledgement) that mutes it now."""
        own = self.silence.id if self.silence is not None else None
        return next((s.get("created_by") for s in self.silences if s.get("id") != own), None)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "severity": self.severity,
            "detail": self.detail,
            "state": self.state,
            "since_run": self.since_run,
            "since_spill": self.since_spill,
            "spills": self.spills,
            "value": self.value,
            "condition": self.condition,
            "description": self.description,
            "alarm_id": self.alarm_id,
            "raised_at": self.raised_at,
            "raised_run": self.raised_run,
            "raised_spill": self.raised_spill,
            "acknowledged_by": self.acknowledged_by,
            "ack_comment": self.ack_comment,
            "acknowledged_at": self.acknowledged_at,
            "cleared_at": self.cleared_at,
            "acknowledgements": [dict(a) for a in self.acknowledgements],
            "category": self.category,
            "runbook_url": self.runbook_url,
            "silence_id": self.silence.id if self.silence is not None else None,
            "silenced_by": self.silenced_by,
            "silences": [dict(x) for x in self.silences],
        }


class AlarmEngine:
    """Evaluates the rules spill by spill and keeps the alarms' life cycle.

    ``store``: the archive (history, acknowledgements, and the active alarms
    restored at start-up); ``None`` keeps a bounded in-memory history.
    ``notifier``: e.g. :class:`AlertmanagerNotifier`. ``rules_path``: file the
    rules came from, re-read when it changes (:meth:`check_reload`).
    """

    def __init__(
        self,
        rules: Iterable[AlarmRule] | None = None,
        store: AlarmStore | None = None,
        notifier: AlertmanagerNotifier | None = None,
        *,
        rules_path: str | os.PathLike | None = None,
        resend_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        history_size: int = 10000,
        runbook_url: str | None = None,
        silence_on_ack: bool = True,
        silence_seconds: float = 3600.0,
    ) -> None:
        self._lock = threading.RLock()
        self.store = store
        self.notifier = notifier
        self.resend_seconds = resend_seconds
        self.runbook_base = runbook_url
        self.silence_seconds = silence_seconds
        #: the Alertmanager among the notifiers (silences), or None
        self.alertmanager: AlertmanagerNotifier | None = (
            notifier if isinstance(notifier, AlertmanagerNotifier)
            else notifier.alertmanager() if isinstance(notifier, Notifiers) else None)
        self.silence_on_ack = silence_on_ack and self.alertmanager is not None
        self._timer_stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._clock = clock
        self.rules_path = Path(rules_path) if rules_path is not None else None
        self._rules_stamp = self._stamp()
        #: last error met re-reading the rules file (``None`` when it loaded)
        self.rules_error: str | None = None
        self._rules: dict[str, AlarmRule] = {}
        self._streak: dict[str, int] = {}
        self._first: dict[str, tuple[Any, Any]] = {}
        self._active: dict[str, _Alarm] = {}
        self._pending: list[dict] = []
        self._memory: deque[dict] = deque(maxlen=history_size)
        self._last_notify = -math.inf
        self._set_rules(default_rules() if rules is None else rules)
        if store is not None:
            self._restore()
        if notifier is not None:
            self._timer = threading.Thread(target=self._deliver, name="alarm-delivery", daemon=True)
            self._timer.start()

    @classmethod
    def from_config(cls, cfg: AlarmConfig, store: AlarmStore | None = None) -> AlarmEngine:
        """Engine with the configured rules (default rules without a file) and notifier."""
        rules = load_rules(cfg.rules_path) if cfg.rules_path is not None else default_rules()
        notifiers = []
        if cfg.alertmanager_url:
            notifiers.append(AlertmanagerNotifier(
                cfg.alertmanager_url, timeout=cfg.timeout, queue_size=cfg.queue_size,
                valid_seconds=4 * cfg.resend_seconds, labels=cfg.labels, generator_url=cfg.generator_url,
            ))
        if cfg.sound_command:
            notifiers.append(SoundNotifier(cfg.sound_command, cfg.sound_min_severity))
        notifier = notifiers[0] if len(notifiers) == 1 else (Notifiers(notifiers) if notifiers else None)
        return cls(rules, store, notifier, rules_path=cfg.rules_path, resend_seconds=cfg.resend_seconds,
                   runbook_url=cfg.runbook_base, silence_on_ack=cfg.silence_on_ack,
                   silence_seconds=cfg.silence_seconds)

    # ---------------------------------------------------------------- rules

    @property
    def rules(self) -> tuple[AlarmRule, ...]:
        with self._lock:
            return tuple(self._rules.values())

    def _set_rules(self, rules: Iterable[AlarmRule]) -> None:
        rules = tuple(rules)
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ConfigError("alarm rule names must be unique")
        self._rules = {r.name: r for r in rules}

    def reload(self, rules: Iterable[AlarmRule]) -> None:
        """Use new rules. Rules kept (same name) keep their streak and active alarm
        (taking the new severity); alarms of removed rules are cleared."""
        now = self._clock()
        with self._lock:
            self._set_rules(rules)
            removed = [name for name in list(self._streak) + list(self._active)
                       if name not in self._rules and name not in SERVICE_ALARMS]
            cleared = []
            for name in dict.fromkeys(removed):
                self._streak.pop(name, None)
                self._first.pop(name, None)
                alarm = self._active.pop(name, None)
                if alarm is not None:
                    cleared.append(self._clear(alarm, now, None, None, "rule removed from the configuration"))
            for name, alarm in self._active.items():
                rule = self._rules.get(name)
                if rule is None:  # a service alarm
                    continue
                alarm.severity, alarm.description, alarm.condition = rule.severity, rule.description, rule.condition
                alarm.category, alarm.runbook_url = rule.category, self._runbook(name, rule.runbook_url)
            for result in cleared:
                self._emit_direct(result["event"])
        if cleared and self.notifier is not None:
            self._notify([c["alarm"] for c in cleared])
        log.info("alarm rules loaded: %d rules", len(self._rules))

    def _stamp(self) -> tuple[int, int] | None:
        if self.rules_path is None:
            return None
        try:
            st = self.rules_path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def check_reload(self) -> bool:
        """Re-read ``rules_path`` if it changed; returns whether new rules are in force.

        A file that cannot be used is logged (and kept in :attr:`rules_error`);
        the rules in force stay.
        """
        if self.rules_path is None:
            return False
        stamp = self._stamp()
        if stamp == self._rules_stamp:
            return False
        self._rules_stamp = stamp
        try:
            rules = load_rules(self.rules_path)
        except ConfigError as exc:
            self.rules_error = str(exc)
            log.error("alarm rules not reloaded, keeping the previous ones: %s", exc)
            return False
        self.rules_error = None
        self.reload(rules)
        return True

    # ---------------------------------------------------------------- evaluation

    def evaluate(
        self,
        record: Mapping[str, Any],
        quality: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> list[dict]:
        """Apply the rules to one spill; returns the active alarms (most severe first).

        ``quality`` (the quality-states dict) is reachable as ``quality.…``;
        ``extra`` adds more top-level names (e.g. ``{"health": report.to_dict()}``
        for ``health.findings[kind=dead]``). Transitions are queued for
        :meth:`take_events`.
        """
        self.check_reload()
        record, quality, extra = to_json(record), to_json(quality), to_json(extra or {})
        context = SpillContext(record, quality, extra.get("health"))
        run, spill = record.get("run"), record.get("spill")
        now = self._clock()
        changed: list[dict] = []
        with self._lock:
            for rule in self._rules.values():
                value = rule.value(context)
                met = rule.test(value)
                if met is None:
                    met = {"false": False, "true": True, "hold": None}[rule.missing]
                    if met is None:
                        continue
                name = rule.name
                alarm = self._active.get(name)
                if met:
                    if self._streak.get(name, 0) == 0:
                        self._first[name] = (run, spill)
                    streak = self._streak[name] = self._streak.get(name, 0) + 1
                    since_run, since_spill = self._first[name]
                    detail = (
                        f"{rule.quantity} = {_fmt(value)} ({rule.op} {_fmt(rule.threshold)}) "
                        f"for {streak} spill{'s' if streak != 1 else ''} since run {since_run} spill {since_spill}"
                    )
                    if alarm is not None:
                        alarm.detail, alarm.spills, alarm.value = detail, streak, value
                    elif streak >= rule.persist_spills:
                        alarm = _Alarm(
                            alarm_id=uuid.uuid4().hex[:16], name=name, severity=rule.severity,
                            description=rule.description, condition=rule.condition,
                            since_run=since_run, since_spill=since_spill,
                            raised_at=now, raised_run=run, raised_spill=spill,
                            detail=detail, value=value, spills=streak,
                            category=rule.category, runbook_url=self._runbook(name, rule.runbook_url),
                        )
                        self._active[name] = alarm
                        event = self._event(alarm, "raised", now, run, spill)
                        self._queue_event(event)
                        changed.append(alarm.to_dict())
                        log.warning("ALARM raised [%s] %s: %s", rule.severity, name, detail)
                else:
                    self._streak[name] = 0
                    if alarm is not None:
                        del self._active[name]
                        detail = f"{rule.quantity} = {_fmt(value)}: condition {rule.condition} no longer holds"
                        result = self._clear(alarm, now, run, spill, detail)
                        self._queue_event(result["event"])
                        changed.append(result["alarm"])
                        log.info("alarm cleared %s: %s", name, detail)
            active = self._active_dicts()
        if self.notifier is not None and (changed or now - self._last_notify >= self.resend_seconds):
            self._notify(active + [c for c in changed if c["state"] == "cleared"])
            self._last_notify = now
        return active

    def set_condition(self, name: str, active: bool, *, detail: str = "", run: Any = None,
                      spill: Any = None) -> dict | None:
        """Raise (``active``) or clear the service alarm ``name`` (:data:`SERVICE_ALARMS`), e.g. ``no_data``.

        Not tied to a spill: the transition is archived at once. Calling it
        again in the same state only updates the detail. Returns the alarm
        dict on a transition, else ``None``.
        """
        severity, description = SERVICE_ALARMS[name]
        now = self._clock()
        with self._lock:
            alarm = self._active.get(name)
            if active and alarm is not None:
                alarm.detail = detail
                return None
            if not active and alarm is None:
                return None
            if active:
                alarm = _Alarm(
                    alarm_id=uuid.uuid4().hex[:16], name=name, severity=severity, description=description,
                    condition=name, since_run=run, since_spill=spill, raised_at=now, raised_run=run,
                    raised_spill=spill, detail=detail, category=SERVICE_ALARM_CATEGORIES.get(name, "service"),
                    runbook_url=self._runbook(name),
                )
                self._active[name] = alarm
                self._emit_direct(self._event(alarm, "raised", now, run, spill))
                changed = alarm.to_dict()
                log.warning("ALARM raised [%s] %s: %s", severity, name, detail)
            else:
                del self._active[name]
                result = self._clear(alarm, now, run, spill, detail)
                self._emit_direct(result["event"])
                changed = result["alarm"]
                log.info("alarm cleared %s: %s", name, detail)
            active_alarms = self._active_dicts()
        if self.notifier is not None:
            self._notify(active_alarms + ([changed] if changed["state"] == "cleared" else []))
            self._last_notify = now
        return changed

    def _runbook(self, name: str, own: str | None = None) -> str | None:
        """The alarm's runbook entry: its rule's ``runbook_url``, else the shifter's guide at its anchor."""
        if own:
            return own
        return f"{self.runbook_base}#{runbook_anchor(name)}" if self.runbook_base else None

    def _clear(self, alarm: _Alarm, now: float, run: Any, spill: Any, detail: str) -> dict:
        if alarm.silence is not None and self.alertmanager is not None:
            self.alertmanager.expire(alarm.silence)  # the acknowledgement's silence ends with the alarm
        alarm.state, alarm.cleared_at, alarm.detail = "cleared", now, detail
        return {"alarm": alarm.to_dict(), "event": self._event(alarm, "cleared", now, run, spill)}

    @staticmethod
    def _event(alarm: _Alarm, state: str, now: float, run: Any, spill: Any, user: str | None = None,
               comment: str | None = None) -> dict:
        return {
            "time": now,
            "alarm_id": alarm.alarm_id,
            "name": alarm.name,
            "severity": alarm.severity,
            "state": state,
            "run": run,
            "spill": spill,
            "detail": alarm.detail,
            "description": alarm.description,
            "since_run": alarm.since_run,
            "since_spill": alarm.since_spill,
            "user": user,
            "comment": comment,
        }

    def _queue_event(self, event: dict) -> None:
        self._pending.append(event)
        if self.store is None:
            self._memory.append(event)

    def _emit_direct(self, event: dict) -> None:
        """An event that belongs to no spill: to the store now, unless its alarm's raise is still queued."""
        if self.store is None or any(e["alarm_id"] == event["alarm_id"] for e in self._pending):
            self._queue_event(event)
            return
        try:
            self.store.record_alarm_events([event])
        except Exception:
            log.exception("alarm event could not be archived; queued with the next spill")
            self._pending.append(event)

    def take_events(self) -> list[dict]:
        """Alarm transitions since the last call, for ``Archive.store_spill(..., alarm_events=...)``."""
        with self._lock:
            events, self._pending = self._pending, []
        return events

    def _active_dicts(self) -> list[dict]:
        alarms = sorted(self._active.values(), key=lambda a: (-_SEVERITY_RANK[a.severity], a.raised_at, a.name))
        return [a.to_dict() for a in alarms]

    def active(self) -> list[dict]:
        """The active alarms (raised or acknowledged), most severe first."""
        with self._lock:
            return self._active_dicts()

    # ---------------------------------------------------------------- acknowledgement

    def acknowledge(self, name: str, user: str, comment: str = "") -> dict:
        """Acknowledge the active alarm ``name`` (or its ``alarm_id``); returns it.

        Raises ``KeyError`` if no such alarm is active, ``ValueError`` without a user.
        Every acknowledgement is kept (``acknowledgements``, oldest first, and one
        history event each); ``acknowledged_by``/``ack_comment`` stay the first one's.
        """
        if not isinstance(user, str) or not user.strip():
            raise ValueError("an acknowledgement needs the name of who acknowledges")
        now = self._clock()
        with self._lock:
            alarm = self._active.get(name) or next((a for a in self._active.values() if a.alarm_id == name), None)
            if alarm is None:
                raise KeyError(f"no active alarm {name!r}")
            if not alarm.acknowledgements:
                alarm.acknowledged_by, alarm.ack_comment, alarm.acknowledged_at = user.strip(), comment, now
            alarm.state = "acknowledged"
            alarm.acknowledgements.append({"user": user.strip(), "time": now, "comment": comment})
            event = self._event(alarm, "acknowledged", now, None, None, user=user.strip(), comment=comment)
            self._emit_direct(event)
            if self.silence_on_ack and alarm.silence is None:
                alarm.silence = self.alertmanager.silence(alarm.to_dict(), user.strip(), comment,  # type: ignore[union-attr]
                                                          self.silence_seconds)
            result = alarm.to_dict()
        log.info("alarm %s acknowledged by %s: %s", alarm.name, user, comment)
        if self.notifier is not None:
            self._notify([result])
        return result

    # ---------------------------------------------------------------- history / restore

    def history(self, **filters: Any) -> list[dict]:
        """Alarm transitions, newest first (``Archive.alarm_history`` filters:
        name, state, since, until, run, spill, alarm_id, limit)."""
        if self.store is not None:
            return self.store.alarm_history(**filters)
        limit = filters.pop("limit", 1000)
        with self._lock:  # the spill thread appends while a web request reads
            events = list(self._memory)
        out = []
        for ev in reversed(events):
            if filters.get("name") is not None and ev["name"] != filters["name"]:
                continue
            if any(filters.get(k) is not None and ev.get(k) != filters[k] for k in ("state", "run", "spill", "alarm_id")):
                continue
            if filters.get("since") is not None and ev["time"] < filters["since"]:
                continue
            if filters.get("until") is not None and ev["time"] >= filters["until"]:
                continue
            out.append(dict(ev))
            if len(out) >= limit:
                break
        return out

    def _restore(self) -> None:
        """Take over the alarms the archive says are still active (after a restart)."""
        try:
            rows = self.store.active_alarms()  # type: ignore[union-attr]
        except Exception:
            log.exception("active alarms could not be read from the archive")
            return
        now = self._clock()
        for row in rows:
            name = row["name"]
            alarm = _Alarm(
                alarm_id=row["alarm_id"], name=name, severity=row.get("severity") or "warning",
                description=row.get("description") or "", condition="",
                since_run=row.get("since_run"), since_spill=row.get("since_spill"),
                raised_at=row.get("raised_at") or now, raised_run=row.get("raised_run"),
                raised_spill=row.get("raised_spill"), detail=row.get("detail") or "",
                state=row.get("state") or "raised", acknowledged_by=row.get("acked_by"),
                ack_comment=row.get("ack_comment"), acknowledged_at=row.get("acked_at"),
            )
            self._restore_acknowledgements(alarm)
            if name in SERVICE_ALARMS and name not in self._active:
                alarm.category, alarm.runbook_url = SERVICE_ALARM_CATEGORIES.get(name, "service"), self._runbook(name)
                self._active[name] = alarm  # cleared by the service once the condition is gone
                continue
            rule = self._rules.get(name)
            if rule is None or name in self._active:
                self._emit_direct(self._clear(alarm, now, None, None, "rule removed from the configuration")["event"])
                continue
            alarm.severity, alarm.condition = rule.severity, rule.condition
            alarm.category, alarm.runbook_url = rule.category, self._runbook(name, rule.runbook_url)
            alarm.spills = rule.persist_spills
            self._active[name] = alarm
            self._streak[name] = rule.persist_spills
            self._first[name] = (alarm.since_run, alarm.since_spill)
        if self._active:
            log.info("restored %d active alarm(s) from the archive", len(self._active))

    def _restore_acknowledgements(self, alarm: _Alarm) -> None:
        """Every acknowledgement of a restored alarm, from the archive's history (oldest first)."""
        try:
            events = self.store.alarm_history(alarm_id=alarm.alarm_id, state="acknowledged", limit=1000)  # type: ignore[union-attr]
        except Exception:
            log.exception("acknowledgements of alarm %s could not be read from the archive", alarm.name)
            return
        alarm.acknowledgements = [{"user": e.get("user"), "time": e.get("time"), "comment": e.get("comment")}
                                  for e in reversed(events)]
        if alarm.acknowledgements:
            first = alarm.acknowledgements[0]
            alarm.acknowledged_by, alarm.ack_comment, alarm.acknowledged_at = first["user"], first["comment"], first["time"]

    # ---------------------------------------------------------------- notifier

    def _notify(self, alarms: list[dict]) -> None:
        try:
            self.notifier.notify(alarms)  # type: ignore[union-attr]
        except Exception:  # a notifier must never break the spill loop
            log.exception("alarm notifier failed")

    def _deliver(self) -> None:
        """The delivery timer (its own thread, every ``resend_seconds``, spills or not): re-send the active
        alarms so Alertmanager never resolves one the service still shows (their ``endsAt`` is 4 periods
        ahead), renew acknowledgement silences, and read back which silences mute each alarm."""
        while not self._timer_stop.wait(self.resend_seconds):
            try:
                self.resend()
                self.sync_silences()
            except Exception:  # noqa: BLE001 - the timer must keep running
                log.exception("alarm delivery timer failed")

    def resend(self) -> None:
        """Send the active alarms again (if nothing was sent for most of a period)."""
        now = self._clock()
        with self._lock:
            due = now - self._last_notify >= 0.9 * self.resend_seconds
            active = self._active_dicts() if due else []
            if due:
                self._last_notify = now
        if active and self.notifier is not None:
            self._notify(active)

    def sync_silences(self) -> None:
        """Renew acknowledgement silences about to end; record the silences muting each active alarm."""
        am = self.alertmanager
        if am is None:
            return
        with self._lock:
            alarms = list(self._active.values())
        for alarm in alarms:
            handle = alarm.silence
            if handle is not None and handle.id is not None and handle.ends_at - time.time() < self.silence_seconds / 2:
                am.renew(handle, self.silence_seconds)
        found = am.silences_by_alert([a.name for a in alarms])
        with self._lock:
            for alarm in alarms:
                silences = found.get(alarm.name, [])
                tag = f"[na64-online alarm {alarm.alarm_id}]"
                for s in silences:  # after a restart: the acknowledgement's silence is found again by its tag
                    if alarm.silence is None and tag in (s.get("comment") or ""):
                        alarm.silence = SilenceHandle(alarm.alarm_id, time.time())
                        alarm.silence.id = s["id"]
                alarm.silences = silences

    def delivery(self) -> dict:
        """Alertmanager delivery counts (sent, failed, dropped, last_success, last_error) and whether configured."""
        out = {"configured": self.alertmanager is not None, "sent": 0, "failed": 0, "dropped": 0,
               "last_success": None, "last_error": None}
        if self.alertmanager is not None:
            out.update(self.alertmanager.stats())
        return out

    def close(self) -> None:
        """Stop the delivery timer and the notifier's sender thread (after a short flush)."""
        self._timer_stop.set()
        if self._timer is not None:
            self._timer.join(2.0)
        if self.notifier is not None:
            self.notifier.close()
