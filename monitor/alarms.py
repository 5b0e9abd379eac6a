"""Alarm rules on per-spill QA quantities, their life cycle, and Alertmanager.

A rule compares one quantity of a spill with a threshold; the alarm is
**raised** when the comparison held in ``persist_spills`` consecutive spills,
may be **acknowledged** (who, comment) by the shift crew, and is **cleared**
at the first spill where the comparison no longer holds (an acknowledgement
ends with it: the next occurrence is a new, unacknowledged alarm).

Rules live in TOML (the service's config file or a file of their own) and are
read again when that file changes, without a restart (:meth:`AlarmEngine.check_reload`,
called at every spill); a file with an error is reported and the rules in
force stay::

    [[rules]]                           # or [[alarms.rules]] inside the main config
    name = "high_hadron_fraction"       # unique; Alertmanager 'alertname'
    quantity = "hadron_fraction"        # dotted path into the QA record; 'quality.…' into the quality states
    op = ">"                            # > >= < <= == !=
    threshold = 0.15                    # number, true/false, or a string (quality states may be ordered)
    persist_spills = 3                  # consecutive spills before raising
    severity = "warning"                # info | warning | critical
    description = "Hadron contamination of the beam is high"
    missing = "false"                   # quantity absent/null: "false" (default), "true", "hold" (spill ignored)

``condition = "hadron_fraction > 0.15"`` may replace ``quantity``/``op``/``threshold``.
A path element that meets a list takes an index (``candidates.0``) or the
element whose ``name`` matches, dots allowed
(``quality.checks.beam.hadron_fraction.state``); ``key[field=value]`` keeps
the matching list items (``health.findings[kind=dead]``); a list compared with
a number counts its elements; a ``{"state": …}`` / ``{"value": …}`` object
compares as that entry. Quality states order as GOOD < NO_DATA < WARNING < BAD.

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

import json
import logging
import math
import operator
import os
import queue
import re
import subprocess
import threading
import time
import tomllib
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from ..decoders.errors import ConfigError

log = logging.getLogger(__name__)

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
#: Order of quality states for ``<``/``>`` comparisons against a state name
#: (as monitor/quality.py: GOOD < NO_DATA < WARNING < BAD).
QUALITY_ORDER: dict[str, int] = {"GOOD": 0, "OK": 0, "NO_DATA": 1, "WARNING": 2, "BAD": 3}
MISSING_POLICIES: tuple[str, ...] = ("false", "true", "hold")

#: the states an alarm passes through, as stored in the alarm history
ALARM_STATES = ("raised", "acknowledged", "cleared")
#: Alarms the service raises itself, from no rule on a spill (:meth:`AlarmEngine.set_condition`):
#: name -> (severity, description). They survive rule reloads and restarts like rule alarms.
SERVICE_ALARMS: dict[str, tuple[str, str]] = {
    "no_data": ("warning", "No spill for longer than [monitor] no_data_after_seconds: "
                           "readout nodes silent, or the monitor stuck (see /api/health)"),
}

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]+$")
_CONDITION_RE = re.compile(r"^\s*(\S+?)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")
_RULE_KEYS = {
    "name", "quantity", "op", "threshold", "persist_spills", "severity", "description", "missing", "condition",
}
_MISSING = object()

DEFAULT_RULES_TOML = """\
# Default alarm rules of na64-online (see monitor/alarms.py for the syntax).

[[rules]]
name = "daq_quality_bad"
quantity = "quality.subsystems.daq"
op = "=="
threshold = "BAD"
persist_spills = 2
severity = "critical"
description = "DAQ quality BAD (decode errors, lost events or messages, missing modules, dead time, incomplete spills)"

[[rules]]
name = "spill_quality_bad"
quantity = "quality.overall"
op = "=="
threshold = "BAD"
persist_spills = 3
severity = "warning"
description = "Spill quality BAD in consecutive spills (see the failing subsystem)"

[[rules]]
name = "no_beam"
quantity = "beam"
op = "<"
threshold = 1
persist_spills = 2
severity = "warning"
missing = "hold"
description = "No beam counted in the END_OF_BURST scalers"

[[rules]]
name = "no_events"
quantity = "events"
op = "<"
threshold = 1
persist_spills = 2
severity = "critical"
description = "The DAQ delivers spills without events"

[[rules]]
name = "high_hadron_fraction"
quantity = "hadron_fraction"
op = ">"
threshold = 0.15
persist_spills = 3
severity = "warning"
description = "Hadron contamination of the beam (E_HCAL > 10 GeV in beam-trigger events) is high"

[[rules]]
name = "decode_errors"
quantity = "decode_errors"
op = ">"
threshold = 0
persist_spills = 3
severity = "warning"
description = "Corrupted or rejected data in consecutive spills"

[[rules]]
name = "decode_errors_burst"
quantity = "decode_errors"
op = ">="
threshold = 1000
persist_spills = 1
severity = "critical"
description = "Very many decode errors in one spill"

[[rules]]
name = "dropped_events"
quantity = "dropped_events"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
missing = "hold"
description = "The live service dropped events: decoding fell behind or a worker failed (dropped_events)"

[[rules]]
name = "lost_events"
quantity = "lost_events"
op = ">"
threshold = 0
persist_spills = 3
severity = "warning"
description = "Events missing from the event-number sequence"

[[rules]]
name = "archive_collision"
quantity = "archive_collision"
op = "=="
threshold = true
persist_spills = 1
severity = "warning"
description = "A spill's (run, spill) was archived already with other data (a fragment, or a run/spill number reused): both kept, see archive fragments"

[[rules]]
name = "incomplete_spill"
quantity = "complete"
op = "=="
threshold = false
persist_spills = 2
severity = "warning"
description = "END_OF_BURST missing: spills cut off (end of data or timeout)"

[[rules]]
name = "lost_messages"
quantity = "lost_messages.total"
op = ">"
threshold = 0
persist_spills = 2
severity = "warning"
description = "ZeroMQ sequence gaps: readout messages lost (live)"

[[rules]]
name = "bad_messages"
quantity = "bad_messages.total"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
missing = "hold"
description = "Bad readout messages (live): bad envelopes, damaged payloads, duplicates, reordered messages or sequence jumps; the record's bad_messages.by_ldc says which"

[[rules]]
name = "dead_channels"
quantity = "health.findings[kind=dead]"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
description = "Dead channels (channel-health findings; they carry their own raise/clear hysteresis)"

[[rules]]
name = "hot_channels"
quantity = "health.findings[kind=hot]"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
description = "Hot channels (channel-health findings)"

[[rules]]
name = "noisy_channels"
quantity = "health.findings[kind=noisy]"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
description = "Noisy channels: pedestal RMS far above the channel's own history"

[[rules]]
name = "pedestal_drift"
quantity = "health.findings[kind=drifting]"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
description = "Pedestals drifting away from the channel's own baseline"
"""


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class AlarmRule:
    """One alarm rule. Invalid values raise :class:`ConfigError`."""

    name: str
    quantity: str
    op: str
    threshold: float | int | bool | str
    persist_spills: int = 1
    severity: str = "warning"
    description: str = ""
    missing: str = "false"

    def __post_init__(self) -> None:
        where = f"alarm rule {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"{where}: name must be letters, digits, '_', '.', ':' or '-'")
        if not isinstance(self.quantity, str) or not self.quantity or any(not p for p in _split_path(self.quantity)):
            raise ConfigError(f"{where}: quantity must be a dotted path such as 'hadron_fraction', not {self.quantity!r}")
        if self.op not in OPERATORS:
            raise ConfigError(f"{where}: unknown operator {self.op!r} (use one of {' '.join(OPERATORS)})")
        t = self.threshold
        if isinstance(t, bool):
            if self.op not in ("==", "!="):
                raise ConfigError(f"{where}: true/false can only be compared with == or !=")
        elif isinstance(t, (int, float)):
            if not math.isfinite(t):
                raise ConfigError(f"{where}: threshold must be finite")
        elif isinstance(t, str):
            if self.op not in ("==", "!=") and t.upper() not in QUALITY_ORDER:
                raise ConfigError(
                    f"{where}: a string threshold can be ordered ({self.op}) only if it is a quality state "
                    f"({', '.join(QUALITY_ORDER)}), not {t!r}"
                )
        else:
            raise ConfigError(f"{where}: threshold must be a number, true/false or a string, not {t!r}")
        if isinstance(self.persist_spills, bool) or not isinstance(self.persist_spills, int) or self.persist_spills < 1:
            raise ConfigError(f"{where}: persist_spills must be an integer >= 1, not {self.persist_spills!r}")
        if not isinstance(self.severity, str) or self.severity.lower() not in SEVERITIES:
            raise ConfigError(f"{where}: severity must be one of {', '.join(SEVERITIES)}, not {self.severity!r}")
        object.__setattr__(self, "severity", self.severity.lower())
        if not isinstance(self.description, str):
            raise ConfigError(f"{where}: description must be a string")
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(f"{where}: missing must be one of {', '.join(MISSING_POLICIES)}, not {self.missing!r}")

    @property
    def condition(self) -> str:
        """The rule as text, e.g. ``hadron_fraction > 0.15``."""
        return f"{self.quantity} {self.op} {_fmt(self.threshold)}"

    def value(self, context: Mapping[str, Any]) -> Any:
        """The rule's quantity in ``context`` (QA record + ``quality``); ``None`` when absent."""
        v = resolve(context, self.quantity)
        return None if v is _MISSING else v

    def test(self, value: Any) -> bool | None:
        """Whether ``value`` meets the condition; ``None`` when it cannot be compared (absent, null, wrong type)."""
        value = _comparable(value)
        if value is None:
            return None
        t = self.threshold
        compare = OPERATORS[self.op]
        if isinstance(t, bool):
            if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
                return compare(bool(value), t)
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return compare(value.lower() == "true", t)
            return None
        if isinstance(t, (int, float)):
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, (int, float)):
                return None if isinstance(value, float) and math.isnan(value) else compare(value, t)
            return None
        # string threshold
        if not isinstance(value, str):
            return None
        if self.op in ("==", "!="):
            return compare(value.upper(), t.upper())
        a, b = QUALITY_ORDER.get(value.upper()), QUALITY_ORDER.get(t.upper())
        return None if a is None or b is None else compare(a, b)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "quantity": self.quantity,
            "op": self.op,
            "threshold": self.threshold,
            "persist_spills": self.persist_spills,
            "severity": self.severity,
            "description": self.description,
            "missing": self.missing,
            "condition": self.condition,
        }


def _comparable(value: Any) -> Any:
    if value is None or value is _MISSING:
        return None
    if isinstance(value, Mapping):
        for key in ("state", "value", "status"):
            if key in value:
                return _comparable(value[key])
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        return len(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:  # numpy scalar
        return value.item()
    return value


_FILTER_RE = re.compile(r"^([^\[\]]*)\[([^\[\]=]+)=([^\[\]]*)\]$")


def _split_path(path: str) -> list[str]:
    """Split on dots outside ``[...]``."""
    parts, depth, cur = [], 0, ""
    for ch in path:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "." and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def resolve(context: Any, path: str) -> Any:
    """Follow a dotted ``path`` through dicts and lists; a sentinel when it leads nowhere.

    Dict keys are tried as written, then as integers (``errors_by_src.928`` or
    ``0x3a0``); list elements by index or by their ``name`` entry, which may
    itself hold dots (``quality.checks.beam.hadron_fraction.state``). An element
    ``key[field=value]`` keeps the list items whose ``field`` equals ``value``
    (``health.findings[kind=dead]``; compared with a number: how many).
    """
    parts = _split_path(path)
    cur = context
    i = 0
    while i < len(parts):
        part = parts[i]
        m = _FILTER_RE.match(part)
        if m:
            if m.group(1):
                cur = _step(cur, m.group(1))
            if not isinstance(cur, (list, tuple)):
                return _MISSING
            key, wanted = m.group(2).strip(), m.group(3).strip()
            cur = [item for item in cur if isinstance(item, Mapping) and str(item.get(key)) == wanted]
            i += 1
            continue
        if isinstance(cur, (list, tuple)) and not part.lstrip("-").isdigit():
            # element by name; the longest dotted name that matches
            names = {str(item.get("name")): item for item in cur if isinstance(item, Mapping)}
            for j in range(len(parts), i, -1):
                candidate = ".".join(parts[i:j])
                if candidate in names:
                    cur, i = names[candidate], j
                    break
            else:
                return _MISSING
            continue
        cur = _step(cur, part)
        if cur is _MISSING:
            return _MISSING
        i += 1
    return cur


def _step(cur: Any, part: str) -> Any:
    if isinstance(cur, Mapping):
        if part in cur:
            return cur[part]
        try:
            key = int(part, 0)
        except ValueError:
            return _MISSING
        if key in cur:
            return cur[key]
        return cur.get(str(key), _MISSING)
    if isinstance(cur, (list, tuple)):
        try:
            return cur[int(part)]
        except (ValueError, IndexError):
            return _MISSING
    return _MISSING


def _parse_threshold(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def rule_from_dict(data: Mapping[str, Any], index: int = 0) -> AlarmRule:
    """One rule from its TOML table (see the module docstring)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"alarm rule #{index + 1} must be a table, not {data!r}")
    label = f"alarm rule #{index + 1} ({data.get('name', 'unnamed')!r})"
    unknown = set(data) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {', '.join(sorted(unknown))}")
    fields = dict(data)
    condition = fields.pop("condition", None)
    if condition is not None:
        if any(k in fields for k in ("quantity", "op", "threshold")):
            raise ConfigError(f"{label}: give either 'condition' or 'quantity'/'op'/'threshold', not both")
        m = _CONDITION_RE.match(str(condition))
        if not m:
            raise ConfigError(f"{label}: condition {condition!r} is not '<quantity> <op> <threshold>'")
        fields["quantity"], fields["op"], fields["threshold"] = m.group(1), m.group(2), _parse_threshold(m.group(3))
    for key in ("name", "quantity", "op", "threshold"):
        if key not in fields:
            raise ConfigError(f"{label}: missing field {key!r}")
    return AlarmRule(**fields)


def rules_from_config(data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> tuple[AlarmRule, ...]:
    """Rules from parsed TOML: ``{"rules": [...]}``, ``{"alarms": {"rules": [...]}}`` or a list of tables."""
    if isinstance(data, Mapping):
        if "rules" in data:
            tables = data["rules"]
        elif isinstance(data.get("alarms"), Mapping) and "rules" in data["alarms"]:
            tables = data["alarms"]["rules"]
        else:
            raise ConfigError("no alarm rules: expected [[rules]] or [[alarms.rules]] tables")
    else:
        tables = data
    if not isinstance(tables, Sequence) or isinstance(tables, (str, bytes)):
        raise ConfigError("alarm rules must be an array of tables ([[rules]])")
    rules = tuple(rule_from_dict(t, i) for i, t in enumerate(tables))
    seen: set[str] = set()
    for r in rules:
        if r.name in seen:
            raise ConfigError(f"alarm rule name {r.name!r} is used twice")
        seen.add(r.name)
    return rules


def load_rules(source: str | os.PathLike | Mapping | Sequence[Mapping]) -> tuple[AlarmRule, ...]:
    """Alarm rules from TOML text, a TOML file (``Path``, or a one-line ``str`` without ``=``) or parsed TOML.

    Raises :class:`ConfigError` naming the file and the problem.
    """
    origin = "alarm rules"
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source and "=" not in source and source.strip()):
        path = Path(source)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read alarm rules {path}: {exc}") from exc
    elif isinstance(source, str):
        text = source
    else:
        return rules_from_config(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: invalid TOML: {exc}") from exc
    try:
        return rules_from_config(data)
    except ConfigError as exc:
        if origin != "alarm rules":
            raise ConfigError(f"{origin}: {exc.reason}") from exc
        raise


def default_rules() -> tuple[AlarmRule, ...]:
    """The rules of :data:`DEFAULT_RULES_TOML`."""
    return load_rules(DEFAULT_RULES_TOML)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AlarmConfig:
    """Alarm settings (composed into the service configuration by the caller).

    ``rules_path``: TOML file of rules (``None``: :data:`DEFAULT_RULES_TOML`),
    watched for changes. ``alertmanager_url``: base URL(s) of Alertmanager
    (``http://host:9093``), ``None`` to send nothing. ``timeout``: seconds per
    HTTP request. ``resend_seconds``: active alerts are sent again this often
    (Alertmanager resolves alerts it has not heard of for a while).
    ``queue_size``: batches waiting for the sender thread before the oldest is
    dropped.
    """

    rules_path: Path | None = None
    alertmanager_url: str | tuple[str, ...] | None = None
    timeout: float = 2.0
    resend_seconds: float = 60.0
    queue_size: int = 64
    #: control-room sound: a command run (name, severity, detail appended) when an alarm is raised
    sound_command: tuple[str, ...] | None = None
    sound_min_severity: str = "critical"

    def __post_init__(self) -> None:
        if self.rules_path is not None:
            object.__setattr__(self, "rules_path", Path(self.rules_path))
        if isinstance(self.alertmanager_url, list):
            object.__setattr__(self, "alertmanager_url", tuple(self.alertmanager_url))
        urls = (self.alertmanager_url,) if isinstance(self.alertmanager_url, str) else (self.alertmanager_url or ())
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigError(f"alertmanager_url must be an http(s) URL, not {url!r}")
        if not (isinstance(self.timeout, (int, float)) and 0 < self.timeout <= 60):
            raise ConfigError(f"alarm timeout must be in (0, 60] seconds, not {self.timeout!r}")
        if not (isinstance(self.resend_seconds, (int, float)) and self.resend_seconds > 0):
            raise ConfigError(f"alarm resend_seconds must be positive, not {self.resend_seconds!r}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ConfigError(f"alarm queue_size must be a positive integer, not {self.queue_size!r}")
        if isinstance(self.sound_command, (list, str)):
            command = [self.sound_command] if isinstance(self.sound_command, str) else self.sound_command
            object.__setattr__(self, "sound_command", tuple(command))
        if self.sound_command is not None and (not self.sound_command or not all(
                isinstance(part, str) and part for part in self.sound_command)):
            raise ConfigError(f"alarm sound_command must be a non-empty list of strings, not {self.sound_command!r}")
        if self.sound_min_severity not in SEVERITIES:
            raise ConfigError(f"alarm sound_min_severity must be one of {', '.join(SEVERITIES)}")


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


_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


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


# --------------------------------------------------------------------------- Alertmanager


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_STOP = object()


class AlertmanagerNotifier:
    """Posts alarms to Alertmanager (``POST /api/v2/alerts``) from a background thread.

    :meth:`notify` never blocks: batches go to a bounded queue (the oldest is
    dropped when it is full, counted in :attr:`dropped`). Each HTTP request has
    ``timeout`` seconds; failures are counted (:attr:`failed`,
    :attr:`last_error`) and logged once per outage. Proxies from the
    environment are not used.

    Alert: labels ``alertname``, ``severity``, ``service`` (+ ``labels``);
    annotations ``summary`` (description), ``description`` (detail),
    ``state``, ``since``, ``acknowledged_by``/``ack_comment`` when
    acknowledged; ``startsAt`` = raised; ``endsAt`` = now +
    ``valid_seconds`` while active, the clearing time once cleared.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        timeout: float = 2.0,
        queue_size: int = 64,
        *,
        valid_seconds: float = 240.0,
        labels: Mapping[str, str] | None = None,
        generator_url: str | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        self.urls = [u if u.rstrip("/").endswith("/api/v2/alerts") else u.rstrip("/") + "/api/v2/alerts" for u in urls]
        self.timeout = timeout
        self.valid_seconds = valid_seconds
        self.labels = {"service": "na64-online", **dict(labels or {})}
        self.generator_url = generator_url
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._put_lock = threading.Lock()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._thread: threading.Thread | None = None
        self._failing = False

    def to_alert(self, alarm: Mapping[str, Any], now: float) -> dict:
        """The Alertmanager API v2 object for one alarm dict of the engine."""
        annotations = {
            "summary": alarm.get("description") or alarm["name"],
            "description": alarm.get("detail") or "",
            "state": alarm.get("state") or "raised",
            "since": f"run {alarm.get('since_run')} spill {alarm.get('since_spill')}",
        }
        if alarm.get("acknowledged_by"):
            annotations["acknowledged_by"] = str(alarm["acknowledged_by"])
            annotations["ack_comment"] = str(alarm.get("ack_comment") or "")
        cleared = alarm.get("state") == "cleared"
        alert = {
            "labels": {**self.labels, "alertname": alarm["name"], "severity": alarm.get("severity") or "warning"},
            "annotations": annotations,
            "startsAt": _rfc3339(alarm.get("raised_at") or now),
            "endsAt": _rfc3339((alarm.get("cleared_at") or now) if cleared else now + self.valid_seconds),
        }
        if self.generator_url:
            alert["generatorURL"] = self.generator_url
        return alert

    def notify(self, alarms: Sequence[Mapping[str, Any]]) -> bool:
        """Queue alarms (active or just cleared) for sending; ``False`` if an older batch was dropped."""
        if not alarms:
            return True
        now = time.time()
        batch = [self.to_alert(a, now) for a in alarms]
        self._ensure_thread()
        ok = True
        with self._put_lock:
            try:
                self._queue.put_nowait(batch)
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                except queue.Empty:
                    pass
                self.dropped += 1
                ok = False
                self._queue.put_nowait(batch)
        return ok

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="alertmanager-notifier", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                self._queue.task_done()
                return
            # coalesce what else is waiting into one request (later entries win in Alertmanager)
            batches = [batch]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    self._queue.task_done()
                    break
                batches.append(more)
            try:
                self._post([a for b in batches for a in b])
            finally:
                for _ in batches:
                    self._queue.task_done()
            if stop:
                return

    def _post(self, alerts: list[dict]) -> None:
        body = json.dumps(alerts).encode()
        for url in self.urls:
            request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    response.read()
            except Exception as exc:  # URLError, HTTPError, timeout, connection reset, …
                self.failed += 1
                self.last_error = f"{url}: {exc}"
                if not self._failing:
                    log.warning("Alertmanager notification failed (%s); further failures logged at debug level", self.last_error)
                else:
                    log.debug("Alertmanager notification failed (%s), %d failures", self.last_error, self.failed)
                self._failing = True
            else:
                self.sent += 1
                if self._failing:
                    log.info("Alertmanager %s reachable again", url)
                self._failing = False

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued batch was attempted; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (waiting at most ``timeout``) and stop the thread."""
        if self._thread is None or not self._thread.is_alive():
            return
        self.flush(timeout)
        with self._put_lock:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                return  # daemon thread; it dies with the process
        self._thread.join(timeout)

    def stats(self) -> dict:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "last_error": self.last_error}


# --------------------------------------------------------------------------- helpers


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


__all__ = [
    "AlarmConfig",
    "AlarmEngine",
    "AlarmRule",
    "AlertmanagerNotifier",
    "DEFAULT_RULES_TOML",
    "QUALITY_ORDER",
    "SERVICE_ALARMS",
    "SEVERITIES",
    "default_rules",
    "load_rules",
    "resolve",
    "rule_from_dict",
    "rules_from_config",
]


class SoundNotifier:
    """The control-room sound: runs ``command`` (+ name, severity, detail) once per raised alarm.

    Only alarms of at least ``min_severity`` sound, once per occurrence (an
    acknowledged, re-sent or cleared alarm stays quiet). The command runs
    detached; while the previous one still plays, a new sound is skipped and
    counted (:attr:`skipped`), so a storm of alarms never piles up processes.
    """

    def __init__(self, command: Sequence[str], min_severity: str = "critical") -> None:
        self.command = list(command)
        self.min_rank = _SEVERITY_RANK[min_severity]
        self._lock = threading.Lock()  # notify() runs in the spill thread and in acknowledging threads
        self._sounded: set[str] = set()
        self._process: subprocess.Popen | None = None
        self.played = 0
        self.skipped = 0
        self.failed = 0

    def notify(self, alarms: list[dict]) -> None:
        with self._lock:
            self._notify_locked(alarms)

    def _notify_locked(self, alarms: list[dict]) -> None:
        for alarm in alarms:
            key = str(alarm.get("alarm_id") or alarm.get("name"))
            if (alarm.get("state") != "raised" or key in self._sounded
                    or _SEVERITY_RANK.get(alarm.get("severity"), 0) < self.min_rank):
                continue
            self._sounded.add(key)
            if self._process is not None and self._process.poll() is None:
                self.skipped += 1
                continue
            try:
                self._process = subprocess.Popen(
                    [*self.command, str(alarm.get("name")), str(alarm.get("severity")), str(alarm.get("detail", ""))],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                self.played += 1
            except OSError as exc:
                self.failed += 1
                log.error("alarm sound command %s failed: %s", self.command[0], exc)

    def close(self, timeout: float = 2.0) -> None:
        with self._lock:
            process = self._process
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()


class Notifiers:
    """Several notifiers behind one (Alertmanager and the sound, say)."""

    def __init__(self, notifiers: Sequence) -> None:
        self.notifiers = list(notifiers)

    def notify(self, alarms: list[dict]) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(alarms)
            except Exception:  # one failing notifier must not silence the others
                log.exception("alarm notifier %s failed", type(notifier).__name__)

    def close(self) -> None:
        for notifier in self.notifiers:
            notifier.close()
