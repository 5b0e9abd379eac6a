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
    quantity = "hadron_fraction"        # a named quantity (monitor/alarms/quantities.py, docs/alarms.md)
    op = ">"                            # > >= < <= == !=
    threshold = 0.15                    # number, true/false, or a string (quality states may be ordered)
    persist_spills = 3                  # consecutive spills before raising
    severity = "warning"                # info | warning | critical
    description = "Hadron contamination of the beam is high"
    missing = "false"                   # quantity absent/null: "false" (default), "true", "hold" (spill ignored)
    category = "physics"                # physics (default) | channels | daq | service: Alertmanager routing and
                                        # inhibition (physics and channels are held back while the DAQ is stopped)
    runbook_url = "https://…#anchor"    # default: [alarms] runbook_url + "#" + the name (the shifter's guide entry)

``condition = "hadron_fraction > 0.15"`` may replace ``quantity``/``op``/``threshold``.
Quantities are names from a registry generated from the spill model
(:mod:`.quantities`): record fields (``dropped_events``), nested ones
(``lost_messages.total``), list sizes (``candidates.count``), quality states
(``quality.overall``, ``quality.subsystems.ecal``), channel findings by kind
(``channel_findings.dead``) and issue counts (``errors.adc_bad_key``). A rule
naming anything else is refused when it is loaded, with the near names; its
threshold must fit the quantity's kind (a number, true/false, a quality state).
Quality states order as GOOD < NO_DATA < WARNING < BAD.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .quantities import QUANTITIES, SpillContext, unknown_quantity_message


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
    "category", "runbook_url",
}
#: the ``category`` label of an alarm (shared with deploy/prometheus's rules; deploy/alertmanager routes on it)
CATEGORIES: tuple[str, ...] = ("physics", "channels", "daq", "service")
#: the category of each service alarm (:data:`SERVICE_ALARMS`)
SERVICE_ALARM_CATEGORIES: dict[str, str] = {"no_data": "daq"}

#: severity name -> rank (info < warning < critical)
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

DEFAULT_RULES_TOML = """\
# Default alarm rules of na64-online (see monitor/alarms/rules.py for the syntax).

[[rules]]
name = "daq_quality_bad"
quantity = "quality.subsystems.daq"
op = "=="
threshold = "BAD"
persist_spills = 2
severity = "critical"
category = "daq"
description = "DAQ quality BAD (decode errors, lost events or messages, missing modules, dead time, incomplete spills)"

[[rules]]
name = "spill_quality_bad"
quantity = "quality.overall"
op = "=="
threshold = "BAD"
persist_spills = 3
severity = "warning"
category = "physics"
description = "Spill quality BAD in consecutive spills (see the failing subsystem)"

[[rules]]
name = "no_beam"
quantity = "beam"
op = "<"
threshold = 1
persist_spills = 2
severity = "warning"
category = "physics"
missing = "hold"
description = "No beam counted in the END_OF_BURST scalers"

[[rules]]
name = "no_events"
quantity = "events"
op = "<"
threshold = 1
persist_spills = 2
severity = "critical"
category = "daq"
description = "The DAQ delivers spills without events"

[[rules]]
name = "high_hadron_fraction"
quantity = "hadron_fraction"
op = ">"
threshold = 0.15
persist_spills = 3
severity = "warning"
category = "physics"
description = "Hadron contamination of the beam (E_HCAL > 10 GeV in beam-trigger events) is high"

[[rules]]
name = "decode_errors"
quantity = "decode_errors"
op = ">"
threshold = 0
persist_spills = 3
severity = "warning"
category = "daq"
description = "Corrupted or rejected data in consecutive spills"

[[rules]]
name = "decode_errors_burst"
quantity = "decode_errors"
op = ">="
threshold = 1000
persist_spills = 1
severity = "critical"
category = "daq"
description = "Very many decode errors in one spill"

[[rules]]
name = "dropped_events"
quantity = "dropped_events"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
category = "daq"
missing = "hold"
description = "The live service dropped events: decoding fell behind or a worker failed (dropped_events)"

[[rules]]
name = "lost_events"
quantity = "lost_events"
op = ">"
threshold = 0
persist_spills = 3
severity = "warning"
category = "daq"
description = "Events missing from the event-number sequence"

[[rules]]
name = "archive_collision"
quantity = "archive_collision"
op = "=="
threshold = true
persist_spills = 1
severity = "warning"
category = "daq"
description = "A spill's (run, spill) was archived already with other data (a fragment, or a run/spill number reused): both kept, see archive fragments"

[[rules]]
name = "incomplete_spill"
quantity = "complete"
op = "=="
threshold = false
persist_spills = 2
severity = "warning"
category = "daq"
description = "END_OF_BURST missing: spills cut off (end of data or timeout)"

[[rules]]
name = "lost_messages"
quantity = "lost_messages.total"
op = ">"
threshold = 0
persist_spills = 2
severity = "warning"
category = "daq"
description = "ZeroMQ sequence gaps: readout messages lost (live)"

[[rules]]
name = "bad_messages"
quantity = "bad_messages.total"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
category = "daq"
missing = "hold"
description = "Bad readout messages (live): bad envelopes, damaged payloads, duplicates, reordered messages or sequence jumps; the record's bad_messages.by_ldc says which"

[[rules]]
name = "dead_channels"
quantity = "channel_findings.dead"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
category = "channels"
description = "Dead channels (channel-health findings; they carry their own raise/clear hysteresis)"

[[rules]]
name = "hot_channels"
quantity = "channel_findings.hot"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
category = "channels"
description = "Hot channels (channel-health findings)"

[[rules]]
name = "noisy_channels"
quantity = "channel_findings.noisy"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
category = "channels"
description = "Noisy channels: pedestal RMS far above the channel's own history"

[[rules]]
name = "pedestal_drift"
quantity = "channel_findings.drifting"
op = ">"
threshold = 0
persist_spills = 1
severity = "warning"
category = "channels"
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
    category: str = "physics"
    runbook_url: str | None = None

    def __post_init__(self) -> None:
        where = f"alarm rule {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"{where}: name must be letters, digits, '_', '.', ':' or '-'")
        if not isinstance(self.quantity, str) or not self.quantity:
            raise ConfigError(f"{where}: quantity must be a name such as 'hadron_fraction', not {self.quantity!r}")
        if self.quantity not in QUANTITIES:
            raise ConfigError(f"{where}: {unknown_quantity_message(self.quantity)}")
        kind = QUANTITIES[self.quantity].kind
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
        expected = {"number": "a number", "integer": "a number", "flag": "true or false",
                    "state": "a quality state", "text": "a string"}[kind]
        fits = {"number": isinstance(t, (int, float)) and not isinstance(t, bool),
                "integer": isinstance(t, (int, float)) and not isinstance(t, bool),
                "flag": isinstance(t, bool),
                "state": isinstance(t, str) and t.upper() in QUALITY_ORDER,
                "text": isinstance(t, str)}[kind]
        if not fits:
            raise ConfigError(f"{where}: {self.quantity} is {'an' if kind == 'integer' else 'a'} {kind}: "
                              f"compare it with {expected}, not {_fmt(t)}")
        if isinstance(self.persist_spills, bool) or not isinstance(self.persist_spills, int) or self.persist_spills < 1:
            raise ConfigError(f"{where}: persist_spills must be an integer >= 1, not {self.persist_spills!r}")
        if not isinstance(self.severity, str) or self.severity.lower() not in SEVERITIES:
            raise ConfigError(f"{where}: severity must be one of {', '.join(SEVERITIES)}, not {self.severity!r}")
        object.__setattr__(self, "severity", self.severity.lower())
        if not isinstance(self.description, str):
            raise ConfigError(f"{where}: description must be a string")
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(f"{where}: missing must be one of {', '.join(MISSING_POLICIES)}, not {self.missing!r}")
        if self.category not in CATEGORIES:
            raise ConfigError(f"{where}: category must be one of {', '.join(CATEGORIES)}, not {self.category!r}")
        if self.runbook_url is not None and (not isinstance(self.runbook_url, str)
                                             or not self.runbook_url.startswith(("http://", "https://", "/"))):
            raise ConfigError(f"{where}: runbook_url must be an http(s) URL or a path, not {self.runbook_url!r}")

    @property
    def condition(self) -> str:
        """The rule as text, e.g. ``hadron_fraction > 0.15``."""
        return f"{self.quantity} {self.op} {_fmt(self.threshold)}"

    def value(self, context: SpillContext) -> Any:
        """The rule's quantity of one spill (:data:`~.quantities.QUANTITIES`); ``None`` when absent."""
        return QUANTITIES[self.quantity].get(context)

    def test(self, value: Any) -> bool | None:
        """Whether ``value`` meets the condition; ``None`` when it cannot be compared (absent, null, wrong type)."""
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
            "category": self.category,
            "runbook_url": self.runbook_url,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


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
