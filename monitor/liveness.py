"""Is data flowing? Staleness of the live service, on an injectable clock.

The service is *stale* when no spill record came for ``no_data_after_seconds``
(counted from when the service started listening, before the first spill).
Then it tells two causes apart:

* ``readout_silent`` — nothing arrives on the SUB socket either (the readout
  nodes, the network, or the beam: no message for that long);
* ``monitor_stuck`` — messages arrive but no spill record comes out of them
  (or the service loop itself stopped turning, so it cannot even tell).

:class:`LivenessWatch` reads only immutable snapshots
(:class:`~.metrics.SnapshotStore`: the last spill's publication time, the
ingest's last message time and last loop pass) plus the start of listening;
:meth:`LivenessWatch.status` is what ``/readyz``, ``/api/health`` and the
Prometheus collector ask at request time; :meth:`LivenessWatch.check`, called
periodically, raises the ``no_data`` alarm when the service goes stale and
clears it once spills flow again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from .snapshots import NO_DATA_REASONS, SnapshotStore

NO_DATA_ALARM = "no_data"
READOUT_SILENT, MONITOR_STUCK = NO_DATA_REASONS
REASONS = NO_DATA_REASONS


@dataclass(frozen=True)
class Liveness:
    """Answer of :meth:`LivenessWatch.status`; ages in seconds (``None``: never)."""

    status: str  # "warming_up" | "ok" | "no_data"
    reason: str | None  # READOUT_SILENT | MONITOR_STUCK when status is "no_data"
    latest_spill_age_seconds: float | None
    latest_message_age_seconds: float | None
    loop_age_seconds: float | None  # since the service loop last turned
    listening_seconds: float | None  # since the service subscribed to the readout nodes
    no_data_after_seconds: float

    @property
    def stale(self) -> bool:
        return self.status == "no_data"

    @property
    def ready(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.status != "no_data":
            return self.status
        spill = (f"no spill for {self.latest_spill_age_seconds:.0f} s"
                 if self.latest_spill_age_seconds is not None else "no spill yet")
        message = ("no message ever" if self.latest_message_age_seconds is None
                   else f"last message {self.latest_message_age_seconds:.0f} s ago")
        if self.reason == READOUT_SILENT:
            return f"{spill}: the readout nodes are silent ({message})"
        return f"{spill}: the monitor is stuck ({message}, but no spill record produced)"


class LivenessWatch:
    """Staleness from the snapshots in ``store``.

    ``listening_since()`` gives the Unix time the service subscribed to the
    readout nodes (``None`` while it warms up); ``clock`` is ``time.time`` or a
    test's own.
    """

    def __init__(self, store: SnapshotStore, no_data_after_seconds: float,
                 listening_since: Callable[[], float | None], clock: Callable[[], float] = time.time) -> None:
        if not no_data_after_seconds > 0:
            raise ValueError(f"no_data_after_seconds must be > 0, got {no_data_after_seconds}")
        self.store = store
        self.no_data_after_seconds = float(no_data_after_seconds)
        self.listening_since = listening_since
        self.clock = clock
        self._lock = threading.Lock()

    def status(self, now: float | None = None) -> Liveness:
        now = self.clock() if now is None else now
        since = self.listening_since()
        m, s = self.store.monitor, self.store.service
        spill_age = now - m.published_at if m.published_at is not None else None
        message_age = now - s.last_message_time if s.last_message_time is not None else None
        loop_at = getattr(s, "loop_time", None)
        loop_age = now - loop_at if loop_at is not None else None
        limit = self.no_data_after_seconds

        def fresh(age: float | None, fallback: float | None) -> bool:
            age = age if age is not None else fallback
            return age is not None and age < limit

        status, reason = "ok", None
        if since is None:
            status = "warming_up"
        elif not fresh(spill_age, now - since):
            status = "no_data"
            if fresh(message_age, None) or not fresh(loop_age, now - since):
                reason = MONITOR_STUCK
            else:
                reason = READOUT_SILENT
        return Liveness(status, reason, spill_age, message_age, loop_age,
                        now - since if since is not None else None, limit)

    def check(self, alarms, now: float | None = None, run=None, spill=None) -> Liveness:
        """Raise the ``no_data`` alarm when stale, clear it once a spill came in time; returns the status.

        ``alarms``: the :class:`~.alarms.AlarmEngine`. An alarm restored after
        a restart is cleared only by a fresh spill, not by the restart itself.
        """
        with self._lock:
            live = self.status(now)
            last = self.store.monitor.last or {}
            if live.stale:
                alarms.set_condition(NO_DATA_ALARM, True, detail=live.describe(),
                                     run=last.get("run"), spill=last.get("spill"))
            elif live.status == "ok" and live.latest_spill_age_seconds is not None:
                alarms.set_condition(NO_DATA_ALARM, False,
                                     detail=f"spills again: the latest {live.latest_spill_age_seconds:.0f} s ago",
                                     run=last.get("run"), spill=last.get("spill"))
            return live

