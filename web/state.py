"""What the web layer may read: the latest immutable spill snapshot, the alarm engine, the archive."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from prometheus_client import CollectorRegistry

from ..monitor.spill_monitor import SpillMonitor

if TYPE_CHECKING:  # the store loads SQLAlchemy: imported only when there is an archive to read
    from ..monitor.archive import Archive

T = TypeVar("T")


class CommandUnavailable(RuntimeError):
    """A state change asked for over HTTP could not run (the service thread is stopped or too busy)."""


@dataclass
class AppState:
    """Handles passed to :func:`~.app.create_app`; the web never writes spill data itself.

    ``monitor``: the per-spill monitor (its ``latest`` snapshot, alarms);
    ``registry``: the Prometheus registry to expose; ``service_health``: a
    callable giving the ingest's health dict (live service only);
    ``failure``: a callable giving the reason the service failed, or None.
    ``run_command(fn)``: runs ``fn()`` in the thread that owns the monitor's
    state and returns its result (the live service's command queue); without
    one (replay, tests) commands run here one at a time. ``archive``: the web's
    own read-only connection to the monitor's archive (opened here by default).
    """

    monitor: SpillMonitor
    registry: CollectorRegistry
    service_health: Callable[[], dict[str, Any]] | None = None
    #: why the service failed (a core thread died), or None; /api/health answers 503 with it
    failure: Callable[[], str | None] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: live service only: a callable giving its ``monitor.liveness.Liveness`` (is data flowing?)
    liveness: Callable[[], Any] | None = None
    run_command: Callable[[Callable[[], Any]], Any] | None = None
    archive: Archive | None = None
    #: ``(run, spill, event) -> dict`` in the form of ``na64-online dump --json`` (the dashboard's event
    #: display), or None where no raw data are kept
    event_lookup: Callable[[int, int, int], dict | None] | None = None
    _inline_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.archive is None and self.monitor.archive is not None:
            from ..monitor.archive import Archive

            # a database that does not answer yet is opened at a read once it does (503 until then)
            self.archive = Archive(self.monitor.archive.target, readonly=True, wait_for_database=True)

    def command(self, fn: Callable[[], T]) -> T:
        """Run a state change where the state lives; raises :class:`CommandUnavailable` if it cannot."""
        if self.run_command is not None:
            return self.run_command(fn)
        with self._inline_lock:
            return fn()

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()
