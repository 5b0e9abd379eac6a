"""The live service's archive writes, on a thread of their own: a database that hangs or is down never
stops the spill loop (and with it the ingest, the dashboard and the systemd watchdog's pings).

Jobs run one at a time in the order they were given — a spill's transaction (its record, quality,
histograms and alarm transitions), alarm transitions of no spill (acknowledgements), and the
collision question a spill's finish asks before its alarms are judged. Every job therefore sees
the archive as every earlier job left it, as when the loop wrote by itself.

- **The collision question waits at most ``answer_timeout_s``,** and not at all while the writer is
  behind: a job that has run longer than that, or an archive that failed its last attempt. The
  answer is then ``None`` (unknown): the live record leaves ``archive_collision`` out and the write
  decides it inside its own transaction, into the archived row.
- **A write that fails for the database's sake** (down, locked, unreachable: SQLAlchemy's
  ``OperationalError`` and its kin; an archive whose database did not answer at start and is not
  open yet) is tried again, first after 0.5 s, then doubling to 30 s, and keeps its place: spills
  are archived in order once the database is back. Any other failure (a
  record the archive refuses) is logged and counted (``failed``), and the writer goes on.
- **At most ``queue_spills`` spills wait.** A spill that finds the queue full is not archived: it is
  counted (``dropped``) and logged with its run and spill; its alarm transitions are still queued.
- :meth:`close` waits ``drain_timeout_s`` for what is queued, then names the spills it leaves.

:class:`DirectWrites` has the same interface and writes in the caller's thread (``replay``,
``reprocess``: the record is printed after its spill is committed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from ...errors import ArchiveUnavailable
from .store import TRANSIENT, Archive, _db_reason

log = logging.getLogger(__name__)

FIRST_RETRY_S, LAST_RETRY_S = 0.5, 30.0


class DirectWrites:
    """The archive written in the caller's thread (the interface of :class:`ArchiveWriter`)."""

    def __init__(self, archive: Archive, on_commit: Callable[[], None] | None = None) -> None:
        self.archive = archive
        self.on_commit = on_commit

    def collides(self, record: Mapping[str, Any]) -> bool | None:
        return self.archive.collides(record)

    def store_spill(self, record, quality, histograms, alarm_events: Iterable[Mapping[str, Any]], *,
                    decide_collision: bool = False) -> None:
        self.archive.store_spill(record, quality, histograms, alarm_events, decide_collision=decide_collision)
        if self.on_commit is not None:
            self.on_commit()

    def record_alarm_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.archive.record_alarm_events(events)

    def status(self) -> dict[str, Any]:
        return {"pending_spills": 0, "dropped": 0, "failed": 0, "attempts_failed": 0, "behind_since": None}

    def close(self) -> list[tuple[Any, Any]]:
        return []


def _run_and_spill(record) -> tuple[Any, Any]:
    """(run, spill) of a QA record (a :class:`~..model.SpillRecord` or its JSON), for the log."""
    if isinstance(record, Mapping):
        return record.get("run"), record.get("spill")
    return getattr(record, "run", None), getattr(record, "spill", None)


class AlarmStoreVia:
    """The alarm engine's store (:class:`~..alarms.engine.AlarmStore`): it reads the archive of ``writes``, and
    its writes go through ``writes``, in order with the spills' transactions."""

    def __init__(self, writes: ArchiveWriter | DirectWrites) -> None:
        self.archive = writes.archive
        self.writes = writes

    def record_alarm_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.writes.record_alarm_events(events)

    def active_alarms(self) -> list[dict]:
        return self.archive.active_alarms()

    def alarm_history(self, **filters: Any) -> list[dict]:
        return self.archive.alarm_history(**filters)


@dataclass
class _Job:
    kind: str  # "spill", "alarm_events" or "collides"
    args: tuple
    spill: tuple[Any, Any] = (None, None)
    answer: Future | None = None
    attempts: int = 0
    not_before: float = 0.0


class ArchiveWriter:
    """One thread that writes the archive, in order, behind a bounded queue (module docstring)."""

    def __init__(self, archive: Archive, *, queue_spills: int = 256, answer_timeout_s: float = 1.0,
                 drain_timeout_s: float = 10.0, on_commit: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.archive = archive
        self.queue_spills = int(queue_spills)
        self.answer_timeout_s = float(answer_timeout_s)
        self.drain_timeout_s = float(drain_timeout_s)
        self.on_commit = on_commit
        self.clock = clock
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._spills_queued = 0
        self._running_since: float | None = None  # when the job being run started
        self._failing_since: float | None = None  # when the job at the head first failed (cleared on success)
        #: spills not archived: the queue was full, or :meth:`close` left them
        self.dropped = 0
        #: jobs given up: the archive refused them (not a failure of the database)
        self.failed = 0
        #: attempts that failed for the database's sake (each one retried)
        self.attempts_failed = 0
        self._thread = threading.Thread(target=self._run, name="na64-archive", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side
    def behind(self) -> bool:
        """The archive does not keep up: a job has run longer than ``answer_timeout_s``, or is being retried."""
        with self._cond:
            return self._behind_since() is not None

    def _behind_since(self) -> float | None:
        """Since when the archive has not kept up (:meth:`behind`), or None; under ``_cond``."""
        if self._failing_since is not None:
            return self._failing_since
        started = self._running_since
        return started if started is not None and self.clock() - started > self.answer_timeout_s else None

    def collides(self, record: Mapping[str, Any]) -> bool | None:
        """:meth:`.Archive.collides` after every job queued before it; ``None`` when the answer does not come
        within ``answer_timeout_s`` or the writer is :meth:`behind`."""
        if self.behind():
            return None
        answer: Future = Future()
        if not self._put(_Job("collides", (dict(record),), answer=answer)):
            return None
        try:
            return answer.result(self.answer_timeout_s)
        except FutureTimeout:
            answer.cancel()  # the writer skips it when it comes to it
            return None
        except ArchiveUnavailable as exc:  # asked again by the write itself
            log.warning("archive %s: no collision answer: %s", self.archive.name, exc)
            return None
        except Exception:  # noqa: BLE001 - the question is not worth a spill: asked again by the write itself
            log.exception("archive %s: the collision check failed", self.archive.name)
            return None

    def store_spill(self, record, quality, histograms, alarm_events: Iterable[Mapping[str, Any]], *,
                    decide_collision: bool = False) -> None:
        """Queue one spill's transaction (:meth:`.Archive.store_spill`); dropped, and counted, when
        ``queue_spills`` spills wait already."""
        events = [dict(e) for e in alarm_events]
        spill = _run_and_spill(record)
        with self._cond:
            full = self._spills_queued >= self.queue_spills
            if full:
                self.dropped += 1
        if full:
            log.error("archive %s: %d spills wait for the archive already; run %s spill %s is not archived",
                      self.archive.name, self.queue_spills, *spill)
            self.record_alarm_events(events)
            return
        self._put(_Job("spill", (record, quality, histograms, events, decide_collision), spill=spill))

    def record_alarm_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Queue alarm transitions that belong to no spill (:meth:`.Archive.record_alarm_events`)."""
        events = [dict(e) for e in events]
        if events:
            self._put(_Job("alarm_events", (events,)))

    def status(self) -> dict[str, Any]:
        """``pending_spills``, ``dropped``, ``failed``, ``attempts_failed``, ``behind_since`` (monotonic s)."""
        with self._cond:
            return {"pending_spills": self._spills_queued, "dropped": self.dropped, "failed": self.failed,
                    "attempts_failed": self.attempts_failed, "behind_since": self._behind_since()}

    def close(self) -> list[tuple[Any, Any]]:
        """Wait up to ``drain_timeout_s`` for the queued jobs; returns the (run, spill) of those not archived."""
        deadline = self.clock() + self.drain_timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._jobs and self.clock() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - self.clock())))
            left = [job.spill for job in self._jobs if job.kind == "spill"]
            self.dropped += len(left)
            self._jobs.clear()
            self._spills_queued = 0
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - self.clock()) + 0.5)
        if left:
            log.error("archive %s: %d spill(s) not archived at stop (the archive did not answer within %.0f s): %s",
                      self.archive.name, len(left), self.drain_timeout_s,
                      ", ".join(f"run {r} spill {s}" for r, s in left))
        return left

    # ------------------------------------------------------------------ the writer's side
    def _put(self, job: _Job) -> bool:
        with self._cond:
            if self._closing:
                return False
            self._jobs.append(job)
            if job.kind == "spill":
                self._spills_queued += 1
            self._cond.notify_all()
            return True

    def _next(self) -> _Job | None:
        """The job at the head once it is due (None: closing and nothing left)."""
        with self._cond:
            while True:
                if not self._jobs:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                job = self._jobs[0]
                wait = job.not_before - self.clock()
                if wait <= 0:
                    self._running_since = self.clock()
                    return job
                self._cond.wait(wait)

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._do(job)
            except (*TRANSIENT, ArchiveUnavailable) as exc:
                self._retry(job, exc)
                continue
            except Exception:  # noqa: BLE001 - one refused job must not stop the archive's writes
                log.exception("archive %s: %s of run %s spill %s failed; not archived", self.archive.name,
                              job.kind, *job.spill)
                with self._cond:
                    self.failed += 1
            self._done(job)

    def _do(self, job: _Job) -> None:
        if job.kind == "collides":
            if job.answer.set_running_or_notify_cancel():
                try:
                    job.answer.set_result(self.archive.collides(*job.args))
                except BaseException as exc:  # noqa: BLE001 - handed to the one who asked
                    job.answer.set_exception(exc)
        elif job.kind == "spill":
            record, quality, histograms, events, decide_collision = job.args
            self.archive.store_spill(record, quality, histograms, events, decide_collision=decide_collision)
            if self.on_commit is not None:
                self.on_commit()
        else:
            self.archive.record_alarm_events(*job.args)

    def _retry(self, job: _Job, exc: BaseException) -> None:
        job.attempts += 1
        delay = min(LAST_RETRY_S, FIRST_RETRY_S * 2 ** (job.attempts - 1))
        with self._cond:
            self.attempts_failed += 1
            self._running_since = None
            if self._failing_since is None:
                self._failing_since = self.clock()
            job.not_before = self.clock() + delay
            waiting = self._spills_queued
        log.warning("archive %s: %s of run %s spill %s failed (%s); tried again in %.1f s, %d spill(s) wait",
                    self.archive.name, job.kind, *job.spill, _db_reason(exc)[:200], delay, waiting)

    def _done(self, job: _Job) -> None:
        with self._cond:
            if self._jobs and self._jobs[0] is job:
                self._jobs.popleft()
                if job.kind == "spill":
                    self._spills_queued -= 1
            self._running_since = None
            self._failing_since = None
            self._cond.notify_all()
