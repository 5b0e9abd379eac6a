"""What the web layer may read: the latest immutable spill snapshot, the alarm engine, the archive."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from ..monitor.spill_monitor import SpillMonitor


@dataclass
class AppState:
    """Handles passed to :func:`~.app.create_app`; the web never writes spill data.

    ``monitor``: the per-spill monitor (its ``latest`` snapshot, alarms, archive);
    ``registry``: the Prometheus registry to expose; ``service_health``: a
    callable giving the ingest's health dict (live service only).
    """

    monitor: SpillMonitor
    registry: CollectorRegistry
    service_health: Callable[[], dict[str, Any]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: live service only: a callable giving its ``monitor.liveness.Liveness`` (is data flowing?)
    liveness: Callable[[], Any] | None = None
