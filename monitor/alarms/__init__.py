"""Alarms on per-spill QA quantities: rules, the engine that keeps their life cycle, and delivery.

- :mod:`.rules` — :class:`AlarmRule`, the rule syntax (TOML), loading, the default rules;
- :mod:`.quantities` — the quantities a rule may name (:data:`QUANTITIES`, generated from the spill model);
- :mod:`.engine` — :class:`AlarmEngine` (raise / acknowledge / clear, history), :class:`AlarmConfig`,
  the :class:`AlarmStore` protocol the archive implements;
- :mod:`.notifiers` — :class:`AlertmanagerNotifier`, :class:`SoundNotifier`, :class:`Notifiers`.
"""

from .engine import AlarmConfig, AlarmEngine, AlarmStore
from .notifiers import AlertmanagerNotifier, Notifiers, SoundNotifier
from .quantities import QUANTITIES, Quantity, SpillContext
from .rules import (
    ALARM_STATES,
    CATEGORIES,
    SERVICE_ALARM_CATEGORIES,
    DEFAULT_RULES_TOML,
    MISSING_POLICIES,
    OPERATORS,
    QUALITY_ORDER,
    SERVICE_ALARMS,
    SEVERITIES,
    AlarmRule,
    default_rules,
    load_rules,
    rule_from_dict,
    rules_from_config,
)

__all__ = [
    "ALARM_STATES",
    "CATEGORIES",
    "SERVICE_ALARM_CATEGORIES",
    "AlarmConfig",
    "AlarmEngine",
    "AlarmRule",
    "AlarmStore",
    "AlertmanagerNotifier",
    "DEFAULT_RULES_TOML",
    "MISSING_POLICIES",
    "Notifiers",
    "OPERATORS",
    "QUANTITIES",
    "Quantity",
    "SpillContext",
    "QUALITY_ORDER",
    "SERVICE_ALARMS",
    "SEVERITIES",
    "SoundNotifier",
    "default_rules",
    "load_rules",
    "rule_from_dict",
    "rules_from_config",
]
