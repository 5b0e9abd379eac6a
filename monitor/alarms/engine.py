"""The alarm engine: rules evaluated spill by spill, the alarms' life cycle, history.

The rule syntax and the default rules are in :mod:`.rules`; delivery
(Alertmanager, the control-room sound) in :mod:`.notifiers`.

Wiring in the spill loop (history goes into the archive in the same
transaction as the spill)::

    active = engine.evaluate(record, quality, extra={"health": report.to_dict()})  # active alarm dicts
    record["alarms"] = active                          # name, severity, detail, state, …
    archive.store_spill(record, quality, histograms, engine.take_events())

Acknowledgements (web thread) are written to the ``store`` at once. The
engine is thread-safe. History: :meth:`AlarmEngine.history` (the store's
``alarm_history``, or an in-memory ring when there is no store).
"""

from __future__ import annotations

import logging
import math
import os
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
from .notifiers import AlertmanagerNotifier, Notifiers, SoundNotifier
from .rules import (
    _SEVERITY_RANK,
    SERVICE_ALARMS,
    SEVERITIES,
    AlarmRule,
    _comparable,
    _fmt,
    default_rules,
    load_rules,
)

log = logging.getLogger(__name__)


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
    ) -> None:
        self._lock = threading.RLock()
        self.store = store
        self.notifier = notifier
        self.resend_seconds = resend_seconds
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

    @classmethod
    def from_config(cls, cfg: AlarmConfig, store: AlarmStore | None = None) -> AlarmEngine:
        """Engine with the configured rules (default rules without a file) and notifier."""
        rules = load_rules(cfg.rules_path) if cfg.rules_path is not None else default_rules()
        notifiers = []
        if cfg.alertmanager_url:
            notifiers.append(AlertmanagerNotifier(
                cfg.alertmanager_url, timeout=cfg.timeout, queue_size=cfg.queue_size,
                valid_seconds=4 * cfg.resend_seconds,
            ))
        if cfg.sound_command:
            notifiers.append(SoundNotifier(cfg.sound_command, cfg.sound_min_severity))
        notifier = notifiers[0] if len(notifiers) == 1 else (Notifiers(notifiers) if notifiers else None)
        return cls(rules, store, notifier, rules_path=cfg.rules_path, resend_seconds=cfg.resend_seconds)

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
        if hasattr(record, "to_dict") and not isinstance(record, Mapping):
            record = record.to_dict()  # a QARecord
        if hasattr(quality, "to_dict") and not isinstance(quality, Mapping):
            quality = quality.to_dict()  # a SpillQuality
        context = dict(record)
        if quality is not None:
            context["quality"] = quality
        if extra:
            context.update(extra)
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
                        f"{rule.quantity} = {_fmt(_comparable(value))} ({rule.op} {_fmt(rule.threshold)}) "
                        f"for {streak} spill{'s' if streak != 1 else ''} since run {since_run} spill {since_spill}"
                    )
                    if alarm is not None:
                        alarm.detail, alarm.spills, alarm.value = detail, streak, _jsonable(_comparable(value))
                    elif streak >= rule.persist_spills:
                        alarm = _Alarm(
                            alarm_id=uuid.uuid4().hex[:16], name=name, severity=rule.severity,
                            description=rule.description, condition=rule.condition,
                            since_run=since_run, since_spill=since_spill,
                            raised_at=now, raised_run=run, raised_spill=spill,
                            detail=detail, value=_jsonable(_comparable(value)), spills=streak,
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
                        detail = f"{rule.quantity} = {_fmt(_comparable(value))}: condition {rule.condition} no longer holds"
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
                    raised_spill=spill, detail=detail,
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

    def _clear(self, alarm: _Alarm, now: float, run: Any, spill: Any, detail: str) -> dict:
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
                self._active[name] = alarm  # cleared by the service once the condition is gone
                continue
            rule = self._rules.get(name)
            if rule is None or name in self._active:
                self._emit_direct(self._clear(alarm, now, None, None, "rule removed from the configuration")["event"])
                continue
            alarm.severity, alarm.condition = rule.severity, rule.condition
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

    def close(self) -> None:
        """Stop the notifier's sender thread (after a short flush)."""
        if self.notifier is not None:
            self.notifier.close()


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
