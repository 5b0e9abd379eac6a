"""Decoder workers fed over ZeroMQ: one mechanism for local processes and other hosts.

The service binds a ROUTER socket (``worker_bind``, e.g. ``tcp://*:5570``);
each worker — a local process the service starts, a thread in the service
process, or ``na64-online worker --connect tcp://SERVICE:5570`` on another
host — connects a DEALER socket to it. The protocol (multipart frames):

======================  =============================================================
worker → service        ``HELLO, protocol, setup id`` (at start, and every second while
                        idle: a restarted service finds its workers again)
service → worker        ``SETUP, setup id, pickle((factory, args, kwargs))``: the worker
                        builds its ``SpillProcessor`` from the service's own configuration
                        and channel map, so every worker decodes exactly alike
worker → service        ``READY, setup id, capacity``: the worker takes ``capacity`` tasks
service → worker        ``TASK, task id, meta, words``: whole built DATE events of one
                        spill (raw-file layout)
worker → service        ``RESULT, task id, pickle(SpillAccumulator)`` (or ``ERROR, task
                        id, text``); each frees one unit of capacity
service → worker        ``STOP``
======================  =============================================================

The service hands a task only to a worker with free capacity; tasks wait in a
bounded queue (when it is full the caller drops whole events and counts them).
A task that gets no result within ``task_timeout_s`` (worker died, host
unreachable) is given to another worker (``task_retries`` times), then
reported failed. Results are merged by the service in chunk order.

Pickles travel both ways: the worker port belongs on the trusted DAQ network
(see deploy/README.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import socket as _socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zmq

from ..decoders import layout as L

log = logging.getLogger(__name__)

PROTOCOL = b"na64-worker/1"
HELLO, SETUP, READY, TASK, RESULT, ERROR, STOP = (
    b"HELLO", b"SETUP", b"READY", b"TASK", b"RESULT", b"ERROR", b"STOP")
_ID = struct.Struct("<Q")


# =========================================================================== worker side
def _socket_options(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 5000)


def _warm_up(processor) -> None:
    """Decode a tiny simulated spill once, so that the first real task finds the kernels loaded."""
    try:
        from .simulator import ReadoutSimulator, SimulationConfig

        sim = ReadoutSimulator(SimulationConfig(events_per_spill=4, run_events=False),
                               getattr(processor, "channel_map", None))
        for spill in sim.spills():
            processor.accumulate(np.frombuffer(bytearray(spill.raw()), dtype=L.WORD))  # writable, as tasks are
    except Exception:  # noqa: BLE001 - only an optimisation
        log.debug("warm-up failed", exc_info=True)


def run_worker(
    endpoint: str,
    *,
    capacity: int = 2,
    context: zmq.Context | None = None,
    stop: threading.Event | None = None,
    hello_interval_s: float = 1.0,
    name: str | None = None,
    warm_up: bool = True,
    parent_pid: int | None = None,
) -> int:
    """Serve decoding tasks from the service at ``endpoint`` until STOP (or ``stop`` is set).

    ``parent_pid``: a local worker started by the service ends when the service
    process is gone. Returns the number of tasks done.
    """
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    ident = (name or f"{_socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}").encode()
    sock.setsockopt(zmq.IDENTITY, ident)
    _socket_options(sock)
    sock.connect(endpoint)
    processor = None
    setup_id = b""
    setup_failed = False
    done = 0
    last_rx = 0.0
    try:
        sock.send_multipart([HELLO, PROTOCOL, setup_id])
        last_hello = time.monotonic()
        while stop is None or not stop.is_set():
            if not sock.poll(100, zmq.POLLIN):
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("the service (pid %d) is gone: worker exits", parent_pid)
                    break
                now = time.monotonic()
                if now - max(last_rx, last_hello) >= (hello_interval_s if not setup_failed else 10.0):
                    sock.send_multipart([HELLO, PROTOCOL, setup_id])
                    last_hello = now
                continue
            frames = sock.recv_multipart(copy=False)
            last_rx = time.monotonic()
            kind = frames[0].bytes
            if kind == STOP:
                break
            if kind == SETUP:
                new_id = frames[1].bytes
                try:
                    factory, args, kwargs = pickle.loads(frames[2].buffer)
                    processor = factory(*args, **kwargs)
                    setup_id = new_id
                    if warm_up:
                        _warm_up(processor)
                except Exception as exc:  # noqa: BLE001 - reported to the service
                    log.exception("worker setup failed")
                    sock.send_multipart([ERROR, _ID.pack(0), f"setup failed: {exc!r}".encode()])
                    setup_failed = True  # ask again, but only every 10 s
                    continue
                setup_failed = False
                sock.send_multipart([READY, setup_id, str(int(capacity)).encode()])
                continue
            if kind == TASK:
                task_id = frames[1].bytes
                if processor is None:
                    sock.send_multipart([ERROR, task_id, b"worker has no setup"])
                    sock.send_multipart([HELLO, PROTOCOL, setup_id])
                    continue
                try:
                    words = np.frombuffer(frames[3].buffer, dtype=L.WORD)
                    acc = processor.accumulate(words)
                    blob = pickle.dumps(acc, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as exc:  # noqa: BLE001 - reported to the service
                    log.exception("task failed")
                    sock.send_multipart([ERROR, task_id, repr(exc).encode()])
                    continue
                sock.send_multipart([RESULT, task_id, blob], copy=False)
                done += 1
                continue
            log.warning("worker: unknown message %r", kind[:16])
    finally:
        sock.close(linger=0)
    return done


def main(argv=None) -> int:
    """``python -m na64_online.daq.workers --connect tcp://SERVICE:5570`` (also ``na64-online worker``)."""
    p = argparse.ArgumentParser(prog="na64-online worker", description="NA64 online decoder worker")
    p.add_argument("--connect", required=True, metavar="ENDPOINT", help="the service's worker endpoint")
    p.add_argument("--capacity", type=int, default=2, help="tasks held at once (default 2)")
    p.add_argument("--parent-pid", type=int, help="exit when this process (the local service) is gone")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    try:
        run_worker(args.connect, capacity=args.capacity, parent_pid=args.parent_pid)
    except KeyboardInterrupt:
        pass
    return 0


# =========================================================================== service side
@dataclass(eq=False)
class Task:
    """Built events of one spill to decode (chunk ``index`` of the spill)."""

    run: int
    spill: int
    index: int
    words: np.ndarray
    data_events: int
    n_events: int
    task_id: int = 0
    attempts: int = 0
    queued_at: float = 0.0
    sent_at: float = 0.0
    worker: bytes | None = None


@dataclass(frozen=True, eq=False)
class TaskDone:
    task: Task
    result: Any  # the unpickled accumulator; None when failed
    error: str | None = None


@dataclass
class _Worker:
    ident: bytes
    ready: bool = False
    credits: int = 0
    capacity: int = 0
    last_seen: float = 0.0
    tasks: set = field(default_factory=set)


@dataclass
class PoolStats:
    tasks_submitted: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0
    tasks_retried: int = 0
    late_results: int = 0
    workers_seen: int = 0
    workers_lost: int = 0
    local_restarts: int = 0
    bytes_sent: int = 0


class WorkerPool:
    """The service's end of the worker protocol: a ROUTER socket owned by one thread.

    ``setup`` is ``(factory, args, kwargs)``; each worker calls
    ``factory(*args, **kwargs)`` to get an object with ``accumulate(words)``.
    """

    def __init__(
        self,
        setup: tuple[Callable, tuple, dict],
        *,
        bind: str = "tcp://127.0.0.1:*",
        context: zmq.Context | None = None,
        max_queued_tasks: int = 8,
        task_timeout_s: float = 60.0,
        task_retries: int = 1,
        queue_timeout_s: float | None = None,
        sndhwm: int = 1000,
    ) -> None:
        self.context = context or zmq.Context.instance()
        self.setup_blob = pickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL)
        self.setup_id = uuid.uuid4().hex.encode()
        self.max_queued_tasks = max(1, int(max_queued_tasks))
        self.task_timeout_s = float(task_timeout_s)
        self.task_retries = max(0, int(task_retries))
        self.queue_timeout_s = float(queue_timeout_s) if queue_timeout_s is not None else self.task_timeout_s
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, int(sndhwm))
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        self.socket.bind(bind)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.workers: dict[bytes, _Worker] = {}
        self.queue: deque[Task] = deque()
        self.outstanding: dict[int, Task] = {}
        self.stats = PoolStats()
        self._next_id = 1
        self._procs: list[subprocess.Popen] = []
        self._threads: list[tuple[threading.Thread, threading.Event]] = []
        self._proc_args: list[str] = []
        self._respawn_at: list[float] = []
        self._failed: list[TaskDone] = []  # failures found outside receive()/poll(), reported by them

    # --------------------------------------------------------------- local workers
    @property
    def connect_endpoint(self) -> str:
        """The endpoint a worker on this host connects to."""
        ep = self.endpoint
        for wildcard in ("tcp://0.0.0.0:", "tcp://[::]:"):
            if ep.startswith(wildcard):
                return "tcp://127.0.0.1:" + ep[len(wildcard):]
        return ep

    def spawn_processes(self, n: int, capacity: int = 2) -> None:
        """Start ``n`` local worker processes (the same program as a remote worker)."""
        self._proc_args = [sys.executable, "-m", "na64_online.daq.workers", "--connect", self.connect_endpoint,
                           "--capacity", str(int(capacity)), "--parent-pid", str(os.getpid())]
        for _ in range(n):
            self._procs.append(subprocess.Popen(self._proc_args, stdin=subprocess.DEVNULL))
            self._respawn_at.append(0.0)

    def start_threads(self, n: int, capacity: int = 2) -> None:
        """Run ``n`` workers as threads of this process (small set-ups, tests)."""
        for i in range(n):
            ev = threading.Event()
            t = threading.Thread(
                target=run_worker, args=(self.connect_endpoint,),
                kwargs=dict(capacity=capacity, context=self.context, stop=ev, name=f"thread-{os.getpid()}-{i}"),
                name=f"na64-worker-{i}", daemon=True)
            t.start()
            self._threads.append((t, ev))

    @property
    def n_ready(self) -> int:
        return sum(1 for w in self.workers.values() if w.ready)

    @property
    def capacity(self) -> int:
        return sum(w.capacity for w in self.workers.values() if w.ready)

    # --------------------------------------------------------------- tasks
    def can_accept(self) -> bool:
        """Whether a new task fits: a free worker or room in the bounded queue."""
        return len(self.queue) < self.max_queued_tasks

    def submit(self, task: Task, now: float, *, force: bool = False) -> bool:
        """Queue ``task``; False (task not taken) when the queue is full, unless ``force``."""
        if not force and not self.can_accept():
            return False
        task.task_id = self._next_id
        self._next_id += 1
        task.queued_at = now
        self.queue.append(task)
        self.stats.tasks_submitted += 1
        self._dispatch(now)
        return True

    def _send(self, ident: bytes, frames: list) -> bool:
        try:
            self.socket.send_multipart([ident, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:  # host unreachable (ROUTER_MANDATORY) or HWM
            log.warning("cannot send to worker %s: %s", ident.decode(errors="replace"), exc)
            return False

    def _dispatch(self, now: float) -> None:
        while self.queue:
            free = [w for w in self.workers.values() if w.ready and w.credits > 0]
            if not free:
                return
            w = max(free, key=lambda w: (w.credits, -len(w.tasks)))
            task = self.queue.popleft()
            meta = f"{task.run} {task.spill} {task.index}".encode()
            if not self._send(w.ident, [TASK, _ID.pack(task.task_id), meta, task.words]):
                self.queue.appendleft(task)
                self._forget(w, now)
                continue
            w.credits -= 1
            w.tasks.add(task.task_id)
            task.worker = w.ident
            task.sent_at = now
            task.attempts += 1
            self.outstanding[task.task_id] = task
            self.stats.bytes_sent += int(task.words.nbytes)

    def _forget(self, w: _Worker, now: float) -> list[TaskDone]:
        """Drop a worker; its tasks go back to the queue (or fail)."""
        self.workers.pop(w.ident, None)
        self.stats.workers_lost += 1
        out: list[TaskDone] = []
        for tid in sorted(w.tasks, reverse=True):
            task = self.outstanding.pop(tid, None)
            if task is not None:
                out.extend(self._retry(task, now, "worker lost"))
        return out

    def _retry(self, task: Task, now: float, why: str) -> list[TaskDone]:
        if task.attempts <= self.task_retries:
            self.stats.tasks_retried += 1
            task.worker = None
            task.queued_at = now
            self.queue.appendleft(task)
            return []
        self.stats.tasks_failed += 1
        self._failed.append(TaskDone(task, None, why))
        return []

    # --------------------------------------------------------------- socket
    def receive(self, now: float, max_messages: int = 256) -> list[TaskDone]:
        out: list[TaskDone] = []
        for _ in range(max_messages):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            out.extend(self._handle(frames, now))
        self._dispatch(now)
        return self._take_failed(out)

    def _take_failed(self, out: list[TaskDone]) -> list[TaskDone]:
        if self._failed:
            out.extend(self._failed)
            self._failed = []
        return out

    def _handle(self, frames, now: float) -> list[TaskDone]:
        if len(frames) < 2:
            return []
        ident = frames[0].bytes
        kind = frames[1].bytes
        w = self.workers.get(ident)
        if kind == HELLO:
            proto = frames[2].bytes if len(frames) > 2 else b""
            if proto != PROTOCOL:
                log.error("worker %s speaks %r, not %r: ignored", ident.decode(errors="replace"), proto, PROTOCOL)
                return []
            their_setup = frames[3].bytes if len(frames) > 3 else b""
            if w is None:
                w = self.workers[ident] = _Worker(ident)
                self.stats.workers_seen += 1
                log.info("worker %s connected", ident.decode(errors="replace"))
            w.last_seen = now
            if their_setup != self.setup_id or not w.ready:
                w.ready = False
                self._send(ident, [SETUP, self.setup_id, self.setup_blob])
            return []
        if w is None:
            # a worker we forgot (timed out) or from before a restart: make it introduce itself
            if kind == RESULT:
                self.stats.late_results += 1
            w = self.workers[ident] = _Worker(ident, last_seen=now)
            self._send(ident, [SETUP, self.setup_id, self.setup_blob])
            return []
        w.last_seen = now
        if kind == READY:
            if frames[2].bytes == self.setup_id:
                w.ready = True
                w.capacity = max(1, int(frames[3].bytes))
                w.credits = w.capacity - len(w.tasks)
            return []
        if kind in (RESULT, ERROR):
            (tid,) = _ID.unpack(frames[2].bytes)
            if tid == 0:  # setup failed
                log.error("worker %s: %s", ident.decode(errors="replace"), frames[3].bytes.decode(errors="replace"))
                return []
            w.credits = min(w.capacity, w.credits + 1)
            w.tasks.discard(tid)
            task = self.outstanding.pop(tid, None)
            if task is None:
                self.stats.late_results += 1
                return []
            if kind == ERROR:
                text = frames[3].bytes.decode(errors="replace")
                log.error("task %d (run %d spill %d chunk %d) failed on %s: %s", tid, task.run, task.spill,
                          task.index, ident.decode(errors="replace"), text)
                self.stats.tasks_failed += 1
                return [TaskDone(task, None, text)]
            try:
                result = pickle.loads(frames[3].buffer)
            except Exception as exc:  # noqa: BLE001
                self.stats.tasks_failed += 1
                return [TaskDone(task, None, f"bad result: {exc!r}")]
            self.stats.tasks_done += 1
            return [TaskDone(task, result)]
        return []

    def poll(self, now: float) -> list[TaskDone]:
        """Timers: tasks without result, tasks waiting too long, dead local processes."""
        out: list[TaskDone] = []
        for task in list(self.outstanding.values()):
            if now - task.sent_at >= self.task_timeout_s:
                w = self.workers.get(task.worker) if task.worker else None
                log.warning("task %d (run %d spill %d chunk %d): no result after %.0f s", task.task_id, task.run,
                            task.spill, task.index, now - task.sent_at)
                if w is not None:
                    out.extend(self._forget(w, now))
                else:
                    self.outstanding.pop(task.task_id, None)
                    out.extend(self._retry(task, now, "timeout"))
        if self.queue and any(now - t.queued_at >= self.queue_timeout_s for t in self.queue):
            keep: deque[Task] = deque()
            for task in self.queue:
                if now - task.queued_at >= self.queue_timeout_s:
                    self.stats.tasks_failed += 1
                    out.append(TaskDone(task, None, "no worker took the task"))
                else:
                    keep.append(task)
            self.queue = keep
        for i, proc in enumerate(self._procs):
            if proc.poll() is not None and self._proc_args and now >= self._respawn_at[i]:
                log.warning("local worker process %d exited (status %s): restarting it", proc.pid, proc.returncode)
                self._procs[i] = subprocess.Popen(self._proc_args, stdin=subprocess.DEVNULL)
                self._respawn_at[i] = now + 5.0
                self.stats.local_restarts += 1
        self._dispatch(now)
        return self._take_failed(out)

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.outstanding)

    def close(self, timeout_s: float = 3.0) -> None:
        for ident in list(self.workers):
            self._send(ident, [STOP])
        for _, ev in self._threads:
            ev.set()
        deadline = time.monotonic() + timeout_s
        for t, _ in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs = []
        self._proc_args = []
        self.socket.close(linger=0)


if __name__ == "__main__":
    sys.exit(main())
