"""The live service: readout nodes → event building → decoder workers → one QA record per spill.

One thread owns every socket (ZeroMQ sockets are not thread-safe) and runs a
poll loop:

    SUB (all readout nodes) ─ validate envelope, sequence gaps ─► EventBuilder
        ─ chunks of one spill: plans over the received payloads (no copy) ─► WorkerPool (ROUTER)
        ─ workers: gather the super events, SpillProcessor.accumulate ─► results merged in chunk order
        ─ spill closed and every chunk merged ─► SpillProcessor.finish ─► on_record

The decoding is the very ``SpillProcessor`` code ``replay`` runs on a raw file,
on the very bytes a raw file holds (built super events): live and replay give
the same QA record.

Never block, never lose silently — every queue is bounded:

* the PUB side never blocks (a slow monitor's messages are dropped by
  ZeroMQ at the high-water marks and show up as sequence gaps:
  ``lost_messages`` per LDC, exact);
* unbuilt sub-events per spill (``max_pending_bytes``), open spills
  (``max_open_spills``), built events waiting to be handed on
  (``chunk_events``/``chunk_bytes``);
* decoding tasks: each worker holds at most ``worker_capacity`` tasks, at
  most ``max_queued_tasks`` wait; when decoding falls behind a new chunk's
  PHYSICS/CALIBRATION events are dropped whole and counted
  (``dropped_events`` in the spill's QA record and in the metrics); its
  START_OF_BURST/END_OF_BURST events (scalers) are always decoded;
* QA records, latencies: bounded deques;
* all of it in bytes too: ``max_memory_mb`` for the whole process, its warm
  footprint measured before subscribing and the rest shared between the
  receive queues (high-water mark derived from the message sizes seen), the
  builder's open spills and the decoding tasks (:mod:`.memory`).

Bad messages (unreadable envelopes, damaged payloads, duplicates, late
messages, sequence jumps: :mod:`.subscriber`) are reported per LDC and kind
with the spill their payload belongs to (``bad_messages`` in the QA record),
or with the next spill that closes when there is none.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import zmq

from ..decoders import layout as L
from .builder import BuiltChunk, ClosedSpill, EventBuilder
from .ingest_config import IngestConfig  # noqa: F401 - the [ingest] section, re-exported
from .live import LiveExtras
from .memory import MemoryBudget, resident_bytes, retain_freed_memory
from .subscriber import UNKNOWN_LDC, Subscriber
from .workers import Task, TaskDone, WorkerPool, WorkerSetup

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    """Totals since start (exported as metrics)."""

    records: int = 0
    records_incomplete: int = 0
    dropped_events: int = 0  # PHYSICS/CALIBRATION events dropped because decoding fell behind
    dropped_chunks: int = 0
    failed_events: int = 0  # events of tasks that failed (worker error / timeout)
    last_latency_s: float | None = None  # last END_OF_BURST → QA record
    max_latency_s: float | None = None
    loop_seconds: float = 0.0
    internal_errors: int = 0  # messages the builder failed on (a bug): logged, skipped
    relost_messages: int = 0  # late messages whose gap was reported with a finished spill: stay lost
    records_interrupted: int = 0  # spills cut short by a stop (not judged)


@dataclass
class _SpillState:
    run: int
    spill: int
    acc: Any = None
    next_index: int = 0
    done: dict = field(default_factory=dict)  # chunk index -> accumulator or None (nothing to merge)
    dropped_events: int = 0
    dropped_numbers: list = field(default_factory=list)  # event numbers of dropped events (arrays)
    closed: ClosedSpill | None = None
    interrupted: bool = False  # cut short by the service stopping: archived, not judged
    ready: bool = False  # closed and every chunk merged: finished when the spills closed before it are
    record: Any = None


class IngestService:
    """Subscribes to readout nodes, builds, decodes and emits one QA record per spill.

    ``processor_factory(*processor_args, **processor_kwargs)`` must give an
    object with ``accumulate(words) -> acc`` (``acc.merge(other)``),
    ``finish(acc, complete=, live=)`` and ``new_accumulator()`` — normally
    :class:`na64_online.monitor.pipeline.SpillProcessor` — and
    ``encode_result(acc)`` / ``decode_result(frames)``, the result's wire
    format (``read_result(frames)``, if it has one, is used instead: a result
    that ``acc.merge`` adds into the spill's accumulator, without an
    accumulator built per result). ``worker_setup`` (:class:`~.workers.WorkerSetup`) is what workers
    build theirs from: text sent over the worker port; without it only
    in-process worker threads run, built with the same factory.
    ``finish(acc, complete=, live=)`` (default: the processor's) turns a
    merged spill into its record — the service passes
    ``SpillMonitor.handle``, the very call ``replay`` makes, so that quality,
    alarms, archive and metrics are the same too. ``on_record(record)`` is called
    in the service thread for each finished spill, in the order the spills
    closed; ``on_health(dict)`` every ``health_interval_s`` with the keyword
    arguments of ``monitor.metrics.ServiceHealth`` (:meth:`health`).
    :meth:`metrics` gives every counter at any time.

    Start-up (``phase``: starting → warming_up → running → stopping → stopped):
    the worker port is bound and the local workers started first; ``warm_up()``
    (the service's own kernels, e.g. the monitor's) runs and the builder's
    kernels are loaded on ``warm_up_events()`` (LDC id -> plain events of one
    spill, e.g. :func:`na64_online.sim.warmup.ldc_sample`) while the workers compile theirs; only when every local
    worker said READY (or ``warmup_timeout_s`` passed) does the SUB socket
    connect to the readout nodes, so a cold start drops nothing.
    Stop: spills still open are closed and finished with
    ``LiveExtras(interrupted=True)`` — archived as interrupted, not judged.
    """

    def __init__(
        self,
        config: IngestConfig,
        processor_factory: Callable,
        processor_args: tuple = (),
        processor_kwargs: dict | None = None,
        *,
        finish: Callable[..., Any] | None = None,
        new_accumulator: Callable[[], Any] | None = None,
        on_record: Callable[[Any], None] | None = None,
        on_health: Callable[[dict], None] | None = None,
        health_interval_s: float = 1.0,
        context: zmq.Context | None = None,
        worker_setup: WorkerSetup | None = None,
        warm_up: Callable[[], None] | None = None,
        warm_up_events: Callable[[], Mapping[int, Sequence[bytes]]] | None = None,
    ) -> None:
        self.config = config
        self.warm_up = warm_up
        self.warm_up_events = warm_up_events
        self.phase = "starting"
        #: Unix time the SUB socket connected to the readout nodes (after the warm-up)
        self.listening_since: float | None = None
        #: Unix time of the last pass of the service loop (a stuck loop is told apart from silent nodes)
        self.loop_time: float | None = None
        self.processor_kwargs = dict(processor_kwargs or {})
        self.processor = processor_factory(*processor_args, **self.processor_kwargs)
        self._factory = (processor_factory, tuple(processor_args), self.processor_kwargs)
        if worker_setup is None and config.workers:
            raise ValueError("worker processes need a worker_setup (what they build their processor from)")
        self.worker_setup = worker_setup
        self._finish = finish if finish is not None else self.processor.finish
        self._new_accumulator = new_accumulator if new_accumulator is not None else self.processor.new_accumulator
        self.on_record = on_record
        self.on_health = on_health
        self.health_interval_s = float(health_interval_s)
        self._health_prev: tuple[float, int, int] | None = None
        self._last_message_time: float | None = None
        self.context = context or zmq.Context.instance()
        self.stats = IngestStats()
        self.records: deque = deque(maxlen=config.keep_records)
        self.latencies: deque = deque(maxlen=1000)
        self._states: dict[tuple[int, int], _SpillState] = {}
        self._closing: deque[_SpillState] = deque()  # closed spills, in closing order (records go out so)
        self._stop = threading.Event()
        self._started = threading.Event()
        #: Unix time this service was created (``na64_service_start_time_seconds``)
        self.created_at = time.time()
        self._thread: threading.Thread | None = None
        self._commands: deque = deque()  # (callable) run in the service thread
        self._error: BaseException | None = None
        self.subscriber: Subscriber | None = None
        self.memory_budget: MemoryBudget | None = None
        self.builder: EventBuilder | None = None
        self.pool: WorkerPool | None = None
        self.worker_endpoint: str | None = None

    # ------------------------------------------------------------------ life
    def start(self, timeout_s: float | None = None, abort: threading.Event | None = None) -> "IngestService":
        """Start the service thread; returns once the kernels are warm and the readout nodes subscribed to.

        ``abort`` (e.g. set by SIGTERM) ends the wait early and stops the service.
        """
        self._thread = threading.Thread(target=self._run_guarded, name="na64-ingest", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.config.warmup_timeout_s + 60)
        while not self._started.wait(0.1):
            if abort is not None and abort.is_set():
                self.stop()
                return self
            if time.monotonic() >= deadline or not self._thread.is_alive():
                self._stop.set()
                raise RuntimeError("ingest service did not start")
        if self._error is not None:
            raise self._error
        return self

    def run(self) -> None:
        """Run in the calling thread until :meth:`stop` (from a signal handler or another thread)."""
        self._run_guarded()
        if self._error is not None:
            raise self._error

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop: close open spills, wait for their results (``drain_timeout_s``), emit their records.

        Spills cut short by the stop are finished as interrupted (not judged). Stopped while warming
        up (no message taken yet), it does not wait for a kernel compilation to end: the thread is a
        daemon, local workers end with the process."""
        self._stop.set()
        if self._thread is None and self.pool is not None:  # workers spawned early, never started
            self.pool.close()
            self.pool = None
        if self._thread is not None and self._thread is not threading.current_thread():
            if timeout_s is None:
                timeout_s = 2.0 if self.phase in ("starting", "warming_up") else self.config.drain_timeout_s + 10
            self._thread.join(timeout_s)

    def __enter__(self) -> "IngestService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def failure(self) -> str | None:
        """Why the service thread is gone although nobody stopped it (None while it runs or after stop())."""
        if self._error is not None:
            return f"ingest thread died: {type(self._error).__name__}: {self._error}"
        t = self._thread
        if t is not None and self._started.is_set() and not t.is_alive() and not self._stop.is_set():
            return "ingest thread ended unexpectedly"
        return None

    def connect(self, endpoint: str) -> None:
        """Connect to another readout node (thread-safe)."""
        self._commands.append(lambda: self.subscriber.connect(endpoint))

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` in the service thread between two polls (thread-safe); ``fn`` must not raise."""
        self._commands.append(fn)

    @property
    def running(self) -> bool:
        """Whether the service loop runs and will take commands."""
        return (self._started.is_set() and self._error is None and not self._stop.is_set()
                and (self._thread is None or self._thread.is_alive()))

    def wait_records(self, n: int, timeout_s: float) -> list:
        """Block until ``n`` records were emitted in total (tests, tools); returns the kept ones."""
        deadline = time.monotonic() + timeout_s
        while self.stats.records < n and time.monotonic() < deadline:
            if self._thread is not None and not self._thread.is_alive():
                break
            time.sleep(0.01)
        return list(self.records)

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> dict:
        """A snapshot of every counter (plain numbers and dicts), for /metrics and tests."""
        sub = self.subscriber
        out: dict[str, Any] = {"ingest": asdict(self.stats)}
        if sub is not None:
            out["subscriber"] = {
                **asdict(sub.stats),
                "lost_messages": dict(sub.sequences.lost),
                "restarts": dict(sub.sequences.restarts),
                "received": dict(sub.sequences.received),
                "duplicate_messages": dict(sub.sequences.duplicates),
                "reordered_messages": dict(sub.sequences.reordered),
                "sequence_jumps": dict(sub.sequences.jumps),
                "last_jump": dict(sub.sequences.last_jump),
                "bad_messages": {l: dict(k) for l, k in sub.stats.bad_messages.items()},
                "rcvhwm": sub.rcvhwm,
                "hwm_reconnects": sub.hwm_reconnects,
            }
        try:
            out["memory"] = self.memory()
        except RuntimeError:  # a dict changed under us (called from another thread): next time
            out["memory"] = {}
        if self.builder is not None:
            out["builder"] = asdict(self.builder.stats)
            out["builder"]["open_spills"] = [list(k) for k in self.builder.open_spills]
        if self.pool is not None:
            out["workers"] = {**asdict(self.pool.stats), "ready": self.pool.n_ready,
                              "queued_tasks": len(self.pool.queue), "outstanding_tasks": len(self.pool.outstanding)}
        return out

    def health(self, now: float | None = None) -> dict:
        """Ingest health as the keyword arguments of ``monitor.metrics.ServiceHealth`` (service thread)."""
        now = time.monotonic() if now is None else now
        sub, builder, pool = self.subscriber, self.builder, self.pool
        if sub is None or builder is None or pool is None:
            return {}
        msgs, events, nbytes = sub.stats.messages, sub.stats.events, sub.stats.bytes
        ev_rate = byte_rate = 0.0
        if self._health_prev is not None:
            t, e, b = self._health_prev
            if now > t:
                ev_rate, byte_rate = (events - e) / (now - t), (nbytes - b) / (now - t)
        self._health_prev = (now, events, nbytes)
        nodes = self._node_health(now, seen := builder._ldc_seen)  # noqa: SLF001 - same package
        waiting = [t.queued_at for t in pool.queue] + [t.sent_at for t in pool.outstanding.values()]
        return dict(
            started=self.created_at,
            messages_received=msgs,
            events_received=events,
            bytes_received=nbytes,
            ingest_events_per_second=ev_rate,
            ingest_bytes_per_second=byte_rate,
            lag_seconds=(now - min(waiting)) if waiting else 0.0,
            queue_depth=len(pool.queue) + len(pool.outstanding),
            queue_capacity=self.config.max_queued_tasks + pool.capacity,
            dropped_messages=sum(sub.sequences.lost.values()),
            skipped_events=builder.stats.other_events,
            last_message_time=self._last_message_time,
            sources_connected=sum(1 for t in seen.values() if now - t <= self.config.ldc_down_s),
            worker_refused_messages=pool.stats.refused_messages,
            worker_refused_results=pool.stats.refused_results,
            worker_refused_peers=pool.stats.refused_peers,
            worker_refused_tasks=pool.stats.refused_tasks,
            worker_tasks_by_reference=pool.stats.tasks_by_reference,
            worker_reads_refused=pool.stats.reads_refused,
            loop_time=self.loop_time,
            bad_messages=self.bad_messages_by_label(),
            memory_budget_bytes=self.memory_budget.total_bytes if self.memory_budget else 0,
            memory_resident_bytes=resident_bytes() or 0,
            memory_buffered_bytes={"builder": builder.buffered_bytes, "tasks": pool.task_bytes},
            receive_hwm_messages=sub.rcvhwm,
            workers_ready=pool.n_ready,
            workers_seen=pool.stats.workers_seen,
            workers_lost=pool.stats.workers_lost,
            nodes=nodes,
            spill_in_progress=self._spill_in_progress(now),
        )

    def _spill_in_progress(self, now: float) -> dict:
        """The newest spill being built: run, spill, events so far, wall time it opened (the dashboard)."""
        open_spills = list(self.builder._open.values())  # noqa: SLF001 - same package
        if not open_spills:
            return {}
        sp = max(open_spills, key=lambda s: s.order)
        return {"run": sp.run, "spill": sp.spill, "events": sp.events,
                "started_at": time.time() - (now - sp.opened_at)}

    def _node_health(self, now: float, seen: dict) -> dict[str, dict]:
        """Per readout node (at most the LDCs the builder tracks): connected (heard within ``ldc_down_s``),
        wall time of its last message, messages received and lost since start, message rate since the
        previous call."""
        seq = self.subscriber.sequences
        wall = time.time()
        prev = getattr(self, "_node_prev", None) or (now, {})
        dt = now - prev[0]
        out: dict[str, dict] = {}
        for ldc, t in list(seen.items()):
            received = seq.received.get(ldc, 0)
            before = prev[1].get(ldc)
            out[str(ldc)] = {"connected": now - t <= self.config.ldc_down_s, "last_message_time": wall - (now - t),
                             "messages": received, "lost_messages": seq.lost.get(ldc, 0),
                             "messages_per_second": (received - before) / dt if before is not None and dt > 0 else None}
        self._node_prev = (now, {ldc: seq.received.get(ldc, 0) for ldc in seen})
        return out

    def bad_messages_by_label(self) -> dict[str, dict[str, int]]:
        """The subscriber's bad messages with a bounded LDC label: an expected LDC's id, "other" or
        "unknown" (no readable envelope)."""
        expected = {str(l) for l in self.config.expected_ldcs}
        out: dict[str, dict[str, int]] = {}
        for ldc, kinds in list(self.subscriber.stats.bad_messages.items()):
            label = ldc if ldc in expected or ldc == UNKNOWN_LDC else "other"
            per = out.setdefault(label, {})
            for kind, n in list(kinds.items()):
                per[kind] = per.get(kind, 0) + n
        return out

    # ------------------------------------------------------------------ loop
    def _run_guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported to start()/run()
            log.exception("ingest service failed")
            self._error = exc
            self._started.set()

    def spawn_workers(self) -> None:
        """Bind the workers' socket and start the local worker processes now, from the calling thread.

        They then warm up (import, load the kernels) while the caller goes on — e.g. imports the web
        stack — and :meth:`start` waits for them instead of starting them. Called once, before
        :meth:`start`; without it :meth:`start` does the same. :meth:`stop` ends them even unstarted."""
        if self.pool is None:
            self._setup_pool()

    def _setup_pool(self) -> None:
        c = self.config
        factory, args, kwargs = self._factory
        setup = self.worker_setup or WorkerSetup((b"in-process",), lambda payload: factory(*args, **kwargs))
        read_result = getattr(self.processor, "read_result", None) or self.processor.decode_result
        self.pool = WorkerPool(setup, read_result, bind=c.worker_bind, context=self.context,
                               max_queued_tasks=c.max_queued_tasks, task_timeout_s=c.task_timeout_s,
                               task_retries=c.task_retries, queue_timeout_s=c.queue_timeout_s,
                               curve=c.worker_curve, local_reads=c.local_worker_reads)
        self.worker_endpoint = self.pool.endpoint
        if c.workers:
            self.pool.spawn_processes(c.workers, c.worker_capacity)

    def _setup_sockets(self) -> None:
        c = self.config
        self.subscriber = Subscriber(  # connected to the readout nodes after the warm-up
            (), context=self.context, rcvhwm=c.rcvhwm, rcvbuf=c.rcvbuf,
            reconnect_ivl_ms=c.reconnect_ivl_ms, reconnect_ivl_max_ms=c.reconnect_ivl_max_ms,
            heartbeat_ivl_ms=c.heartbeat_ivl_ms, heartbeat_timeout_ms=c.heartbeat_timeout_ms,
            sequence_window=c.sequence_window, max_sequence_jump=c.max_sequence_jump)
        self.builder = EventBuilder(
            c.expected_ldcs, gdc_id=c.gdc_id, spill_timeout_s=c.spill_timeout_s, ldc_down_s=c.ldc_down_s,
            max_open_spills=c.max_open_spills, max_pending_bytes=c.max_pending_bytes,
            chunk_events=c.chunk_events, chunk_bytes=c.chunk_bytes, chunk_max_age_s=c.chunk_max_age_s)
        if self.pool is None:
            self._setup_pool()
        threads = c.worker_threads or (0 if c.workers else 1)
        if threads:
            self.pool.start_threads(threads, c.worker_capacity)
        self._local_workers = c.workers + threads

    def _warm_up_and_subscribe(self) -> None:
        """Load every kernel (here and in the local workers), then connect to the readout nodes."""
        self.phase = "warming_up"
        t0 = time.monotonic()
        if self.warm_up_events is not None:
            try:
                warm_up_builder(self.config, self.warm_up_events())
            except Exception:  # noqa: BLE001 - only a delay would follow
                log.exception("builder warm-up failed")
        if self.warm_up is not None and not self._stop.is_set():
            self.warm_up()
        pool, deadline = self.pool, t0 + self.config.warmup_timeout_s
        while pool.n_ready < self._local_workers and not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                log.warning("ingest: %d of %d local workers ready after %.0f s; subscribing anyway",
                            pool.n_ready, self._local_workers, now - t0)
                break
            if pool.socket.poll(50, zmq.POLLIN):
                self._on_done(pool.receive(now))
            self._on_done(pool.poll(now))
        if self._stop.is_set():
            return  # stopped while warming up: nothing was taken, nothing to subscribe to
        self._apply_memory_budget()
        for endpoint in self.config.endpoints:
            self.subscriber.connect(endpoint)
        self.listening_since = time.time()
        self.phase = "running"
        log.info("ingest: warm after %.1f s (%d workers ready)", time.monotonic() - t0, pool.n_ready)

    def _apply_memory_budget(self) -> None:
        """Share ``max_memory_mb`` between the stages, the process's warm footprint measured now."""
        budget = self.memory_budget = MemoryBudget.plan(self.config.max_memory_mb)
        # freed memory (received messages, results) stays mapped up to the buffers' share, and blocks up to
        # 32 MB come from the heap: the next message lands in pages already faulted in, not in fresh ones
        retain_freed_memory(keep_bytes=budget.buffer_bytes)
        self.subscriber.set_queue_bytes(budget.receive_bytes)
        self.builder.max_buffered_bytes = budget.builder_bytes
        self.pool.max_task_bytes = budget.task_bytes
        if budget.fits:
            log.info("ingest: %s", budget.describe())
        else:
            log.warning("ingest: max_memory_mb %d is below what the service needs before any data: %s; "
                        "buffers get the minimum", self.config.max_memory_mb, budget.describe())

    def memory(self) -> dict:
        """Bytes held per stage now, and the budget (service thread, or a snapshot for tests)."""
        sub, builder, pool, budget = self.subscriber, self.builder, self.pool, self.memory_budget
        mean = sub.mean_message_bytes if sub is not None else None
        return dict(
            budget_bytes=budget.total_bytes if budget else None,
            footprint_bytes=budget.footprint_bytes if budget else None,
            resident_bytes=resident_bytes(),
            receive_limit_bytes=budget.receive_bytes if budget else None,
            builder_bytes=builder.buffered_bytes if builder is not None else 0,
            builder_limit_bytes=budget.builder_bytes if budget else None,
            task_bytes=pool.task_bytes if pool is not None else 0,
            task_limit_bytes=budget.task_bytes if budget else None,
            rcvhwm=sub.rcvhwm if sub is not None else None,
            mean_message_bytes=mean,
        )

    def _take_messages(self, now: float) -> None:
        """Read what the readout nodes sent (at most ``messages_per_turn``) into the builder.

        Bad messages are reported with their spill (the one their payload belongs to) while it is
        open, else with the next spill that closes."""
        sub, builder = self.subscriber, self.builder
        received = sub.recv(0, max_messages=self.config.messages_per_turn)
        faults = deque(sub.take_faults())
        open_spills = builder._open  # noqa: SLF001 - same package

        def note(f) -> None:
            builder.note_bad(f.ldc, f.kind, f.spill, f.jump)

        for r in received:
            while faults and faults[0].message < r.message:  # bad envelopes, duplicates before this one
                note(faults.popleft())
            own_after = []
            while faults and faults[0].message == r.message:  # this message's: its spill may open with it
                f = faults.popleft()
                if f.spill in open_spills:
                    note(f)
                else:
                    own_after.append(f)
            try:
                if r.recovered:
                    spill = (r.scan.run, r.scan.spill) if r.scan.spill is not None else None
                    if not builder.recover_lost(r.envelope.ldc, spill):
                        sub.sequences.keep_lost(r.envelope.ldc)
                        self.stats.relost_messages += 1
                self._on_outputs(builder.add(r.envelope.ldc, r.scan, now, lost=r.lost, source=r.payload), now)
            except Exception:  # noqa: BLE001 - one bad message must not stop the service
                self.stats.internal_errors += 1
                log.exception("LDC %d message %d could not be built; skipped", r.envelope.ldc,
                              r.envelope.sequence)
            for f in own_after:
                note(f)
        for f in faults:
            note(f)

    def _run(self) -> None:
        self._setup_sockets()
        self._warm_up_and_subscribe()
        sub, builder, pool = self.subscriber, self.builder, self.pool
        poller = zmq.Poller()
        poller.register(sub.socket, zmq.POLLIN)
        poller.register(pool.socket, zmq.POLLIN)
        self._started.set()
        log.info("ingest: connected to %s; workers at %s", ", ".join(sub.endpoints) or "(none yet)", pool.endpoint)
        next_timer = next_health = 0.0
        try:
            while not self._stop.is_set():
                self.loop_time = time.time()
                while self._commands:
                    try:
                        self._commands.popleft()()
                    except Exception:  # noqa: BLE001 - a command's bug must not stop the ingest
                        self.stats.internal_errors += 1
                        log.exception("service command failed")
                ready = dict(poller.poll(20))
                t0 = time.perf_counter()
                now = time.monotonic()
                if pool.socket in ready:
                    self._on_done(pool.receive(now))
                if sub.socket in ready:
                    self._last_message_time = time.time()
                    self._take_messages(now)
                if now >= next_timer:
                    sub.idle(now)  # a lower receive high-water mark, applied between spills
                    self._on_outputs(builder.poll(now), now)
                    self._on_done(pool.poll(now))
                    next_timer = now + 0.05
                    if self.on_health is not None and now >= next_health:
                        next_health = now + self.health_interval_s
                        try:
                            self.on_health(self.health(now))
                        except Exception:  # noqa: BLE001
                            log.exception("on_health callback failed")
                self.stats.loop_seconds += time.perf_counter() - t0
            self.phase = "stopping"
            self._drain()
        finally:
            pool.close()
            sub.close()
            self.phase = "stopped"

    def _drain(self) -> None:
        """Close every open spill and wait (bounded) for the results still out."""
        builder, pool = self.builder, self.pool
        now = time.monotonic()
        self._on_outputs(builder.flush(now), now, stopping=True)
        deadline = now + self.config.drain_timeout_s
        while self._states and time.monotonic() < deadline:
            if pool.socket.poll(20, zmq.POLLIN):
                self._on_done(pool.receive(time.monotonic()))
            self._on_done(pool.poll(time.monotonic()))
        for key in list(self._states):  # results that never came: finish with what there is
            st = self._states[key]
            if st.closed is not None:
                for i in range(st.closed.chunks):
                    if i not in st.done and i >= st.next_index:
                        st.interrupted = True  # a result the stop did not wait for
                    st.done.setdefault(i, None)
                self._merge_ready(st)
                self._maybe_finish(st, time.monotonic(), force=True)

    # ------------------------------------------------------------------ spills
    def _state(self, run: int, spill: int) -> _SpillState:
        st = self._states.get((run, spill))
        if st is None:
            st = self._states[(run, spill)] = _SpillState(run, spill)
        return st

    def _on_outputs(self, outputs, now: float, stopping: bool = False) -> None:
        for o in outputs:
            if isinstance(o, BuiltChunk):
                self._submit(o, now)
            elif isinstance(o, ClosedSpill):
                st = self._state(o.run, o.spill)
                st.closed = o
                # cut short by the stop, or seen only in part because the service started during it
                st.interrupted = st.interrupted or (stopping and not o.complete) or bool(o.joined_late)
                self._closing.append(st)
                self._maybe_finish(st, now)

    def _submit(self, chunk: BuiltChunk, now: float) -> None:
        st = self._state(chunk.run, chunk.spill)
        pool = self.pool
        task = Task(chunk.run, chunk.spill, chunk.index, chunk, chunk.data_events, chunk.n_events)
        if pool.submit(task, now):
            return
        # decoding is behind: drop this chunk's PHYSICS/CALIBRATION events, keep START/END_OF_BURST
        st.dropped_events += chunk.data_events
        st.dropped_numbers.append(chunk.data_event_numbers())
        self.stats.dropped_events += chunk.data_events
        self.stats.dropped_chunks += 1
        control = chunk.control_only()
        if control is not None:
            pool.submit(Task(chunk.run, chunk.spill, chunk.index, control, 0, control.n_events), now, force=True)
        else:
            st.done[chunk.index] = None
            self._merge_ready(st)
            self._maybe_finish(st, now)

    def _on_done(self, dones: list[TaskDone]) -> None:
        now = time.monotonic()
        for d in dones:
            task = d.task
            st = self._states.get((task.run, task.spill))
            if st is None:
                continue
            if d.result is None:
                st.dropped_events += task.data_events
                st.dropped_numbers.append(task.chunk.data_event_numbers() if task.data_events else
                                          np.zeros(0, np.int64))
                self.stats.failed_events += task.data_events
            st.done[task.index] = d.result
            self._merge_ready(st)
            self._maybe_finish(st, now)

    def _merge_ready(self, st: _SpillState) -> None:
        while st.next_index in st.done:
            acc = st.done.pop(st.next_index)
            if acc is not None:
                if st.acc is None:
                    st.acc = self._new_accumulator()
                st.acc.merge(acc)
            st.next_index += 1

    def _maybe_finish(self, st: _SpillState, now: float, force: bool = False) -> None:
        """Mark a closed spill ready once every chunk is merged (or ``force``), then finish the ready spills
        at the head of the closing order: run-level sums (``eot_run``, run histograms), the archive and the
        records follow the spills' order, whatever order the workers' results came in."""
        closed = st.closed
        if closed is None or st.ready or (st.next_index < closed.chunks and not force):
            return
        st.ready = True
        del self._states[(st.run, st.spill)]
        while self._closing and self._closing[0].ready:
            done = self._closing.popleft()
            self._finish_spill(done)
            if done.record is not False:
                self._emit(done.record, done.closed)

    def _finish_spill(self, st: _SpillState) -> None:
        closed = st.closed
        lost = {ldc: 0 for ldc in self.config.expected_ldcs}
        for ldc, n in closed.lost_messages.items():
            lost[ldc] = lost.get(ldc, 0) + n
        live = LiveExtras(
            lost_messages=lost,
            incomplete_events=closed.incomplete_events,
            late_events=closed.late_events,
            header_mismatch=closed.header_mismatch,
            dropped_events=st.dropped_events,
            dropped_event_numbers=(np.concatenate(st.dropped_numbers) if st.dropped_numbers
                                   else np.zeros(0, dtype=np.int64)),
            missing_ldcs=tuple(closed.missing_ldcs),
            interrupted=st.interrupted,
            bad_messages={l: dict(k) for l, k in closed.bad_messages.items()},
            sequence_jumps=tuple(closed.sequence_jumps),
        )
        if st.interrupted:
            self.stats.records_interrupted += 1
            why = (f"LDC {', '.join(map(str, closed.joined_late))} joined only at a later spill (service started "
                   "during this one)" if closed.joined_late else "cut short by the stop")
            log.warning("run %d spill %d %s: archived as interrupted, not judged", st.run, st.spill, why)
        acc = st.acc if st.acc is not None else self._new_accumulator()
        try:
            st.record = self._finish(acc, complete=closed.complete, live=live)
        except Exception:  # noqa: BLE001 - never stop the ingest; the spill is reported in the log
            log.exception("finishing run %d spill %d failed", st.run, st.spill)
            self.stats.internal_errors += 1
            st.record = False  # nothing to emit
        if closed.last_eob_at is not None:
            latency = time.monotonic() - closed.last_eob_at
            self.latencies.append(latency)
            self.stats.last_latency_s = latency
            self.stats.max_latency_s = max(latency, self.stats.max_latency_s or 0.0)

    def _emit(self, record, closed: ClosedSpill) -> None:
        self.records.append(record)
        if not closed.complete:
            self.stats.records_incomplete += 1
        self.stats.records += 1
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:  # noqa: BLE001 - a consumer's bug must not stop the ingest
                log.exception("on_record callback failed")


def warm_up_builder(config: IngestConfig, events_by_ldc: Mapping[int, Sequence[bytes]]) -> None:
    """Build one spill of plain events per readout node (LDC id -> events, §9) with a throwaway :class:`EventBuilder`.

    Loads (or compiles, on a cold numba cache) the kernels the service thread
    runs on live messages — the payload scan (building only plans) — before
    the first message arrives.
    """
    from .envelope import pack_envelope, parse_message

    ldcs = tuple(events_by_ldc)
    builder = EventBuilder(ldcs, gdc_id=config.gdc_id, chunk_events=4)
    outputs = []
    for seq, ldc in enumerate(ldcs):
        events = events_by_ldc[ldc]
        frames = [L.ZMQ_TOPIC, pack_envelope(ldc, seq, len(events)), b"".join(events)]
        _, scan = parse_message([memoryview(f) for f in frames])
        outputs += builder.add(ldc, scan, 0.0)
    outputs += builder.flush(0.0)
    for o in outputs:
        if isinstance(o, BuiltChunk):
            o.data_event_numbers()
