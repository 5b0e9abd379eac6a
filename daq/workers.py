"""Decoder workers fed over ZeroMQ: one mechanism for local processes and other hosts.

The service binds a ROUTER socket (``worker_bind``, by default on 127.0.0.1);
each worker — a local process the service starts, a thread in the service
process, or ``na64-online worker --connect tcp://SERVICE:5570`` on another
host — connects a DEALER socket to it. The protocol (multipart frames):

======================  =============================================================
worker → service        ``HELLO, protocol, setup id`` (at start, and every second while
                        idle: a restarted service finds its workers again)
service → worker        ``SETUP, setup id, payload…``: text (the configuration as TOML,
                        the channel map as CSV); the worker builds its processor from it
                        (:class:`WorkerSetup`), so every worker decodes exactly alike
worker → service        ``READY, setup id, capacity``: the worker takes ``capacity`` tasks
service → worker        ``TASK, task id, meta, sub-events, groups, payload 0 … k-1``: built
                        DATE events of one spill as a plan (:mod:`.builder`): ``meta``
                        "run spill chunk gdc"; ``sub-events`` ``<i8`` n × 3 (payload,
                        word offset, words), ``groups`` ``<i8`` super events + 1 (first
                        sub-event of each, then n); the payloads are the readout nodes'
                        message payloads as received (zero-copy frames). The worker
                        validates the plan before touching memory and gathers the
                        events into its own buffer (raw-file layout); a plan or
                        frame that does not fit is refused: ``ERROR, task id,
                        "refused task: …"``, counted by both sides
service → worker        ``TASKREF, task id, meta, sub-events, groups, references``: the
                        same task, sent only to a local worker process the service
                        started itself (its identity names its pid): instead of the
                        payloads, one ``<i8`` (address, bytes) row per payload in the
                        service's memory, which the worker reads with
                        ``process_vm_readv`` (one copy, made by the worker; no bytes
                        through the kernel's socket buffers twice). A worker that may
                        not read them (another parent, a system that forbids it) answers
                        ``ERROR, task id, "cannot read the service's memory: …"``; the
                        service sends it that task and the next ones as TASK
worker → service        ``RESULT, task id, result frames…`` (the processor's explicit,
                        versioned format) or ``ERROR, task id, text``; each frees one unit
                        of capacity
service → worker        ``STOP``
======================  =============================================================

Nothing received is unpickled. The service checks every message's command,
frame count and field formats before using it; a malformed message, a result
that does not decode, or a HELLO of another protocol (``na64-worker/4`` and
older: whole events in one frame) is refused, counted
(:class:`PoolStats` ``refused_messages``, ``refused_results``,
``refused_peers``; a task a worker refused: ``refused_tasks``) and logged (rate-limited), and the thread goes on. With
:class:`CurveServer` keys the port speaks CurveZMQ: only workers whose public
key is in the allowed directory get through (others are refused during the
handshake and counted in ``refused_peers``); required beyond loopback.

The service hands a task only to a worker with free capacity; tasks wait in a
bounded queue (when it is full — ``max_queued_tasks``, or ``max_task_bytes``
held by tasks waiting or at workers — the caller drops whole events and
counts them).
A task that gets no result within ``task_timeout_s`` (worker died, host
unreachable) is given to another worker (``task_retries`` times), then
reported failed; a task a worker's HELLOs show it never got (sent before one,
unanswered at the next: lost with a reset connection) is retried at once. Results are merged by the service in chunk order.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import socket as _socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import zmq
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

from ..decoders import layout as L
from ..errors import ConfigError
from ..decoders.decode import PlannedRows
from .builder import PLAN_COLUMNS, BuiltChunk, HeldPayloads, PlanError, gather, plan_headers
from .endpoints import is_loopback  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

#: 3: results carry the candidates' raw events (result format 3); 4: sparse histograms; 5: tasks are plans over
#: the received payloads (zero-copy), gathered by the worker
PROTOCOL = b"na64-worker/5"
HELLO, SETUP, READY, TASK, RESULT, ERROR, STOP = (
    b"HELLO", b"SETUP", b"READY", b"TASK", b"RESULT", b"ERROR", b"STOP")
_ID = struct.Struct("<Q")
MAX_CAPACITY = 1024
ZAP_DOMAIN = "na64-workers"
#: largest frame the service accepts from a worker (a result is a few MB)
MAX_MESSAGE_BYTES = 256 << 20
#: prefix of the ERROR text of a task a worker refused (a plan or frame that does not fit)
REFUSED_TASK = b"refused task: "
#: a task by reference (``TASKREF``): a local worker the service started reads the payloads from its memory
TASKREF = b"TASKREF"
#: prefix of the ERROR text of a TASKREF the worker could not read (the service sends that task again, as bytes)
CANNOT_READ = b"cannot read the service's memory: "
_MAX_U32 = (1 << 32) - 1
#: iovecs per process_vm_readv call (IOV_MAX on Linux)
_IOV_MAX = 1024
#: prctl option (linux/prctl.h): which process may ptrace (and so read) this one under Yama
_PR_SET_PTRACER = 0x59616D61


def _byte_views(frames: Sequence) -> list[memoryview]:
    """The frames' bytes (``zmq.Frame``, bytes or arrays) as flat byte views, nothing copied."""
    return [memoryview(getattr(f, "buffer", f)).cast("B") for f in frames]


def _int64_rows(buf: memoryview, columns: int, what: str) -> np.ndarray:
    """A frame of ``<i8`` rows of ``columns`` (one column: a flat array); :class:`PlanError` if ragged."""
    if len(buf) % (8 * columns):
        raise PlanError(f"{what}: {len(buf)} bytes are not whole rows of {columns} <i8")
    rows = np.frombuffer(buf, dtype="<i8")
    return rows if columns == 1 else rows.reshape(-1, columns)


def _task_plan(frames: Sequence) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, int]:
    """A TASK message's (``TASK, id, meta, sub-events, groups, payload…``) payloads, plan and gdc, the frames
    checked (:class:`PlanError`); the plan itself is validated where it is used."""
    n = len(frames)
    if n < 6:
        raise PlanError(f"a task has TASK, id, meta, sub-events, groups and at least one payload; got {n} frames")
    bufs = _byte_views(frames[2:])
    meta = bytes(bufs[0][:64]).split(b" ")
    if len(bufs[0]) > 64 or len(meta) != 4 or not all(m.isdigit() and len(m) <= 10 for m in meta):
        raise PlanError(f"meta {bytes(bufs[0][:64])!r} is not 'run spill chunk gdc'")
    gdc = int(meta[3])
    if gdc > _MAX_U32:
        raise PlanError(f"gdc {gdc} is not a 32-bit number")
    subs, groups = _int64_rows(bufs[1], PLAN_COLUMNS, "plan sub-events"), _int64_rows(bufs[2], 1, "plan groups")
    payloads = [np.frombuffer(b[:len(b) - len(b) % 4], dtype=L.WORD) for b in bufs[3:]]
    return payloads, subs, groups, gdc


class _ProcessMemory:
    """``process_vm_readv(2)`` through ctypes: copies ranges of another process's memory into this one's,
    in one system call per 1024 ranges (Linux; ``available`` False elsewhere)."""

    def __init__(self) -> None:
        self.read = self.libc = None
        try:
            self.libc = ctypes.CDLL(None, use_errno=True)
            read = self.libc.process_vm_readv
        except (OSError, AttributeError):
            return
        read.restype = ctypes.c_ssize_t
        read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                         ctypes.c_ulong]
        self.read = read

    @property
    def available(self) -> bool:
        return self.read is not None

    def copy(self, pid: int, local: np.ndarray, remote: np.ndarray) -> None:
        """Fill the (address, bytes) ranges ``local`` of this process from ``remote`` of ``pid`` (both
        uint64 rows, the same lengths); :class:`OSError` when the system refuses or a range is not mapped."""
        if self.read is None:
            raise OSError(errno.ENOSYS, "process_vm_readv is not available here")
        for start in range(0, local.shape[0], _IOV_MAX):
            lo, ro = local[start:start + _IOV_MAX], remote[start:start + _IOV_MAX]
            want = int(lo[:, 1].sum())
            got = self.read(pid, lo.ctypes.data, lo.shape[0], ro.ctypes.data, ro.shape[0], 0)
            if got != want:
                err = ctypes.get_errno() if got < 0 else errno.EFAULT
                raise OSError(err, f"process_vm_readv read {got} of {want} bytes: {os.strerror(err)}")


_process_memory = _ProcessMemory()


def read_task_payloads(pid: int, frames: Sequence, buffer: np.ndarray | None = None
                       ) -> tuple[list, np.ndarray]:
    """A TASKREF message (``TASKREF, id, meta, sub-events, groups, references``; the references one (address,
    bytes) <i8 row per payload in the service's memory) as the TASK message it stands for: the ranges of the
    payloads the plan uses are read from process ``pid`` into ``buffer`` (kept between tasks, grown when too
    small) and the plan's offsets moved to them. Returns (the TASK frames, the buffer).

    The frames are checked before anything is read (:class:`PlanError`); what the plan then says about the
    payloads is checked where the frames are used, as for a TASK. :class:`OSError` when the read fails."""
    if len(frames) != 6:
        raise PlanError(f"a task by reference has TASK, id, meta, sub-events, groups and references; got "
                        f"{len(frames)} frames")
    bufs = _byte_views(frames)
    subs, refs = _int64_rows(bufs[3], PLAN_COLUMNS, "plan sub-events"), _int64_rows(bufs[5], 2, "references")
    k = refs.shape[0]
    if not k or np.any(refs[:, 0] <= 0) or np.any(refs[:, 1] < 0) or np.any(refs[:, 1] > MAX_MESSAGE_BYTES):
        raise PlanError(f"references must be one or more positive addresses of at most {MAX_MESSAGE_BYTES} bytes")
    index, offset, words = subs[:, 0], subs[:, 1], subs[:, 2]
    if subs.shape[0] and (index.min() < 0 or index.max() >= k or offset.min() < 0 or words.min() < 0):
        raise PlanError("a sub-event of the plan is outside the referenced payloads")
    # the words of each payload the plan uses: [first, end) in words, clipped to the payload
    first = np.full(k, np.iinfo(np.int64).max, np.int64)
    end = np.zeros(k, np.int64)
    np.minimum.at(first, index, offset)
    np.maximum.at(end, index, np.minimum(offset + words, refs[index, 1] // 4))
    used = end > first
    first = np.where(used, first, 0)
    length = np.where(used, end - first, 0)
    total = int(length.sum())
    if buffer is None or buffer.shape[0] < total:  # grown by half again: a few sizes, not one per task
        buffer = np.empty(max(total, 1, 0 if buffer is None else buffer.shape[0] * 3 // 2), dtype=L.WORD)
    starts = np.cumsum(length) - length
    rows = np.flatnonzero(length)
    local = np.empty((rows.shape[0], 2), np.uint64)
    remote = np.empty((rows.shape[0], 2), np.uint64)
    local[:, 0] = buffer.ctypes.data + 4 * starts[rows]
    local[:, 1] = 4 * length[rows]
    remote[:, 0] = refs[rows, 0] + 4 * first[rows]
    remote[:, 1] = local[:, 1]
    _process_memory.copy(pid, local, remote)
    moved = subs.copy()
    moved[:, 1] -= first[index]
    payloads = [buffer[starts[i]:starts[i] + length[i]] for i in range(k)]
    return [TASK, frames[1], frames[2], moved, frames[4], *payloads], buffer


def task_references(payloads: Sequence[np.ndarray]) -> bytes:
    """A TASKREF's references frame: each payload's address in this process and its bytes, ``<i8`` rows."""
    return np.array([(p.ctypes.data, p.nbytes) for p in payloads], dtype="<i8").tobytes()


def allow_children_to_read_memory() -> bool:
    """Where Yama restricts ptrace (``ptrace_scope`` 1), let this process's descendants read its memory
    (``prctl(PR_SET_PTRACER, own pid)``): the local workers read their tasks' payloads from it. False where
    there is nothing to allow (no Yama) or it is refused; a worker that still cannot read says so, and the
    service sends it bytes."""
    try:
        return _process_memory.libc.prctl(_PR_SET_PTRACER, os.getpid(), 0, 0, 0) == 0
    except AttributeError:  # no C library found, or no prctl in it
        return False


def gather_task(frames: Sequence, out: np.ndarray | None = None) -> np.ndarray:
    """The built events of a TASK message (``TASK, id, meta, sub-events, groups, payload…``), gathered into
    ``out`` if large enough (a view of it), else a new buffer. Everything is checked before memory is touched:
    frame count, meta, the plan's shapes and every sub-event inside its payload; :class:`PlanError` otherwise."""
    return gather(*_task_plan(frames), out=out)


def plan_task(frames: Sequence, out: np.ndarray | None = None) -> tuple[np.ndarray, PlannedRows | None]:
    """A TASK message's built events to decode where they were received (:func:`.builder.plan_headers`):
    their super headers in ``out`` (if large enough; a view of it), and the planned rows, or ``None`` when
    they must be gathered (:func:`gather_task`). Checked as :func:`gather_task` checks."""
    return plan_headers(*_task_plan(frames), out=out)


def decode_task(decoder: Callable, frames: Sequence, scratch: np.ndarray | None) -> tuple[list, np.ndarray]:
    """A task's result frames and the buffer to use for the next: decoded where its sub-events were received
    when the decoder takes planned rows (:class:`~na64_online.monitor.pipeline.TaskDecoder`), else (or when
    the plan's headers are damaged) gathered first. :class:`PlanError` before anything is decoded."""
    if getattr(decoder, "takes_planned_rows", False):
        heads, planned = plan_task(frames, scratch)
        scratch = heads.base if heads.base is not None else heads
        result = decoder(heads, planned) if planned is not None else None
        if result is not None:
            return result, scratch
    words = gather_task(frames, scratch)
    return decoder(words), words.base if words.base is not None else words


_AUTH_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to decode exactly as the service does, without pickle.

    ``payload``: the SETUP frames (text); ``build(payload)`` gives the worker's
    processor (``accumulate(words)``, ``encode_result(acc) -> frames``);
    ``command``: the program of a local worker process, to which the pool adds
    ``--connect``, ``--capacity``, ``--parent-pid`` (and ``--key``/``--server-key``).
    """

    payload: tuple[bytes, ...]
    build: Callable[[Sequence[bytes]], Any]
    command: tuple[str, ...] = ()


# =========================================================================== CurveZMQ keys
def load_key(path: str | os.PathLike, *, secret: bool, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret) Z85 keys of a ``zmq.auth`` certificate file; ConfigError naming ``what``."""
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot read a CurveZMQ certificate from {path}: {exc}") from None
    if len(public) != 40 or (secret and (secret_key is None or len(secret_key) != 40)):
        raise ConfigError(f"{what}: {path} holds no {'secret' if secret else 'public'} CurveZMQ key "
                          f"(make one with `na64-online keys DIR NAME`)")
    return public, secret_key


def make_keys(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Create a CurveZMQ key pair ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret`` (mode 0600)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def write_public_key(path: str | os.PathLike, public: bytes) -> None:
    """A public-key certificate file (the format ``zmq.auth`` reads)."""
    Path(path).write_text('#   ZeroMQ CURVE public certificate\nmetadata\ncurve\n'
                          f'    public-key = "{public.decode("ascii")}"\n')


class _AllowedKeys:
    """ZAP credentials: the public keys in ``directory`` (re-read when it changes) plus extra ones."""

    def __init__(self, directory: str, extra: set[bytes]) -> None:
        self.directory = directory
        self.extra = extra
        self._stamp: tuple | None = None
        self._keys: set[bytes] = set()

    def _reload(self) -> None:
        try:
            entries = sorted(p for p in Path(self.directory).glob("*.key"))
            stamp = tuple((p.name, p.stat().st_mtime_ns) for p in entries)
        except OSError as exc:
            log.error("worker_clients_dir %s: %s", self.directory, exc)
            return
        if stamp == self._stamp:
            return
        keys = set()
        for p in entries:
            try:
                keys.add(zmq.auth.load_certificate(p)[0])
            except (OSError, ValueError) as exc:
                log.warning("worker_clients_dir: %s skipped: %s", p, exc)
        self._keys, self._stamp = keys, stamp

    def callback(self, domain: str, key: bytes) -> bool:
        self._reload()
        return key in self._keys or key in self.extra


@dataclass(frozen=True)
class CurveServer:
    """The service's CurveZMQ identity and who may connect (``[ingest]`` keys)."""

    secret_key_file: str
    clients_dir: str

    def load(self) -> tuple[bytes, bytes]:
        public, secret = load_key(self.secret_key_file, secret=True, what="ingest.worker_secret_key")
        if not Path(self.clients_dir).is_dir():
            raise ConfigError(f"ingest.worker_clients_dir: {self.clients_dir} is not a directory")
        return public, secret


# =========================================================================== worker side
def keepalive(sock: zmq.Socket, idle_s: int = 1, count: int = 5) -> None:
    """Detect a dead peer (host down, cable) by TCP keepalive: probes after ``idle_s`` of silence, every
    ``idle_s``, ``count`` of them. Not ZMTP heartbeats: those are answered by the peer's ZeroMQ I/O thread,
    so a peer stalled for a few seconds (a loaded or paging host) missed them and its connection was closed
    — with the tasks or results queued on it, a task then waiting ``task_timeout_s`` for its retry; the kernel
    answers keepalive probes however busy the process is. (A local worker on ``ipc://`` that dies closes its
    socket.)"""
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, idle_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, idle_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, count)


def _socket_options(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    keepalive(sock)


def _warm_up(warm_up: Callable[[Any], None], processor) -> None:
    """Run ``warm_up(processor)`` (e.g. decode a tiny spill), so that the first real task finds the kernels loaded."""
    try:
        warm_up(processor)
    except Exception:  # noqa: BLE001 - only an optimisation
        log.debug("warm-up failed", exc_info=True)


def run_worker(
    endpoint: str,
    build: Callable[[Sequence[bytes]], Any],
    *,
    capacity: int = 2,
    context: zmq.Context | None = None,
    stop: threading.Event | None = None,
    hello_interval_s: float = 1.0,
    name: str | None = None,
    warm_up: Callable[[Any], None] | None = None,
    parent_pid: int | None = None,
    curve: tuple[bytes, bytes, bytes] | None = None,
) -> int:
    """Serve decoding tasks from the service at ``endpoint`` until STOP (or ``stop`` is set).

    ``build(setup payload)`` makes the processor (see :class:`WorkerSetup`).
    ``curve``: (own public key, own secret key, the service's public key), Z85.
    ``parent_pid``: a local worker started by the service ends when the service
    process is gone. ``warm_up(processor)``: run after each set-up, before READY
    (the ``worker`` command passes :func:`na64_online.sim.warmup.warm_up_processor`,
    which decodes a tiny simulated spill). Returns the number of tasks done.
    """
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    ident = (name or f"{_socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}").encode()
    sock.setsockopt(zmq.IDENTITY, ident)
    _socket_options(sock)
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
    sock.connect(endpoint)
    processor = None
    setup_id = b""
    setup_failed = False
    done = refused = 0
    last_rx = 0.0
    scratch = None  # the buffer tasks' headers are written (or tasks gathered) into (kept: its pages stay mapped)
    payload_buffer = None  # the buffer tasks by reference are read into (kept too)
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
            if kind == SETUP and len(frames) >= 3:
                new_id = frames[1].bytes
                try:
                    processor = build([f.bytes for f in frames[2:]])
                    # words -> result frames; a processor's own per-task step keeps its buffers between tasks
                    task_step = (processor.task_decoder() if hasattr(processor, "task_decoder")
                                 else lambda w, p=processor: p.encode_result(p.accumulate(w)))
                    setup_id = new_id
                    if warm_up is not None:
                        _warm_up(warm_up, processor)
                except Exception as exc:  # noqa: BLE001 - reported to the service
                    log.error("worker setup failed: %s", exc)
                    processor = None
                    sock.send_multipart([ERROR, _ID.pack(0), f"setup failed: {exc}".encode()[:4096]])
                    setup_failed = True  # ask again, but only every 10 s
                    continue
                setup_failed = False
                sock.send_multipart([READY, setup_id, str(int(capacity)).encode()])
                continue
            if kind in (TASK, TASKREF) and len(frames) >= 2 and len(frames[1].bytes) == _ID.size:
                task_id = frames[1].bytes
                if processor is None:
                    sock.send_multipart([ERROR, task_id, b"worker has no setup"])
                    sock.send_multipart([HELLO, PROTOCOL, setup_id])
                    continue
                try:
                    if kind == TASKREF:
                        try:
                            if parent_pid is None:
                                raise OSError(errno.EPERM, "this worker was not started by the service")
                            frames, payload_buffer = read_task_payloads(parent_pid, frames, payload_buffer)
                        except OSError as exc:  # the service sends this task (and the next ones) as bytes
                            sock.send_multipart([ERROR, task_id, CANNOT_READ + str(exc).encode()[:2000]])
                            continue
                    result, scratch = decode_task(task_step, frames, scratch)  # the next task's buffer
                except PlanError as exc:  # refused before any memory was touched
                    refused += 1
                    log.warning("task refused (%d so far): %s", refused, exc)
                    sock.send_multipart([ERROR, task_id, REFUSED_TASK + str(exc).encode()[:4000]])
                    continue
                except Exception as exc:  # noqa: BLE001 - reported to the service
                    log.exception("task failed")
                    sock.send_multipart([ERROR, task_id, repr(exc).encode()[:4096]])
                    continue
                sock.send_multipart([RESULT, task_id, *result], copy=False)
                done += 1
                continue
            log.warning("worker: message %r with %d frame(s) not understood; ignored", kind[:16], len(frames))
    finally:
        sock.close(linger=0)
    return done


# =========================================================================== service side
@dataclass(eq=False)
class Task:
    """Built events of one spill to decode (chunk ``index`` of the spill), as the builder planned them."""

    run: int
    spill: int
    index: int
    chunk: BuiltChunk
    data_events: int
    n_events: int
    task_id: int = 0
    attempts: int = 0
    queued_at: float = 0.0
    sent_at: float = 0.0
    worker: bytes | None = None
    by_reference: bool = False  # last sent as TASKREF


@dataclass(frozen=True, eq=False)
class TaskDone:
    task: Task
    result: Any  # the decoded result (accumulator); None when failed
    error: str | None = None


@dataclass
class _Worker:
    ident: bytes
    ready: bool = False
    credits: int = 0
    capacity: int = 0
    last_seen: float = 0.0
    tasks: set = field(default_factory=set)
    hello_at: float | None = None  # when its last HELLO arrived
    reads: bool = False  # a local process this pool started: it gets tasks by reference (TASKREF)


@dataclass
class PoolStats:
    tasks_submitted: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0
    tasks_retried: int = 0
    #: of those, tasks a worker's HELLOs showed it never got (lost with its connection): retried at once
    tasks_lost_in_transit: int = 0
    late_results: int = 0
    workers_seen: int = 0
    workers_lost: int = 0
    local_restarts: int = 0
    bytes_sent: int = 0
    #: messages refused: unknown command, wrong frame count or field format
    refused_messages: int = 0
    #: RESULT messages whose result did not decode (the task counts as failed)
    refused_results: int = 0
    #: peers refused: CurveZMQ handshake failed (unknown key), or a HELLO of another protocol
    refused_peers: int = 0
    #: tasks a worker refused (``ERROR, id, "refused task: …"``: a plan or frame that does not fit; counted failed)
    refused_tasks: int = 0
    #: tasks sent by reference (TASKREF: a local worker read the payloads from the service's memory)
    tasks_by_reference: int = 0
    #: local workers that could not read the service's memory (each is sent bytes from then on)
    reads_refused: int = 0


class _RateLimitedLog:
    """At most one log line per ``interval_s`` per reason; the rest are only counted."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, reason: str, message: str, *args) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(reason, (-1e9, 0))
        if now - last < self.interval_s:
            self._last[reason] = (last, suppressed + 1)
            return
        if suppressed:
            message += f" ({suppressed} more like it not logged)"
        log.warning(message, *args)
        self._last[reason] = (now, 0)


def _who(ident: bytes) -> str:
    return repr(ident[:64].decode("utf-8", errors="replace"))


class WorkerPool:
    """The service's end of the worker protocol: a ROUTER socket owned by one thread.

    ``setup``: what workers build their processor from (text payload, see
    :class:`WorkerSetup`); ``decode_result(frames)`` turns a RESULT's frames
    into the result (raising on anything malformed: the result is refused).
    ``curve``: CurveZMQ keys; required when ``bind`` is beyond loopback.
    """

    def __init__(
        self,
        setup: WorkerSetup,
        decode_result: Callable[[Sequence], Any],
        *,
        bind: str = "tcp://127.0.0.1:*",
        context: zmq.Context | None = None,
        max_queued_tasks: int = 8,
        task_timeout_s: float = 60.0,
        task_retries: int = 1,
        queue_timeout_s: float | None = None,
        sndhwm: int = 1000,
        curve: CurveServer | None = None,
        max_task_bytes: int | None = None,
        local_reads: bool = True,
    ) -> None:
        if curve is None and not is_loopback(bind):
            raise ConfigError(f"ingest.worker_bind {bind} is beyond loopback: set ingest.worker_secret_key and "
                              "ingest.worker_clients_dir (CurveZMQ) to accept workers from other hosts")
        self.setup = setup
        self.decode_result = decode_result
        self.setup_id = uuid.uuid4().hex.encode()
        #: local worker processes read their tasks' payloads from this process's memory (TASKREF)
        self.local_reads = bool(local_reads) and _process_memory.available
        self.max_queued_tasks = max(1, int(max_queued_tasks))
        #: tasks waiting or at workers hold at most about this many bytes of events (None: no byte bound)
        self.max_task_bytes = None if max_task_bytes is None else max(1, int(max_task_bytes))
        self.task_timeout_s = float(task_timeout_s)
        self.task_retries = max(0, int(task_retries))
        self.queue_timeout_s = float(queue_timeout_s) if queue_timeout_s is not None else self.task_timeout_s
        self.curve = curve
        self._auth = None
        self._key_dir: str | None = None
        self._ipc_dir: str | None = None  # the local workers' ipc socket's directory (local_endpoint)
        self._ipc_endpoint: str | None = None
        self._inproc_endpoint: str | None = None  # the worker threads' (thread_endpoint)
        self._local_keys: tuple[bytes, bytes] | None = None
        self._server_public: bytes | None = None
        if curve is not None:
            public, secret = curve.load()
            # an own context: the ZAP authenticator is per context, and this one is the pool's alone
            self.context = zmq.Context()
            self._own_context = True
            self._local_keys = zmq.curve_keypair()  # for the local workers (threads and processes)
            self._server_public = public
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self.context, log=logging.getLogger(__name__ + ".auth"))
            self._auth.start()
            self._auth.configure_curve_callback(
                ZAP_DOMAIN, credentials_provider=_AllowedKeys(curve.clients_dir, {self._local_keys[0]}))
        else:
            self.context = context or zmq.Context.instance()
            self._own_context = False
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, int(sndhwm))
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        keepalive(self.socket)
        self.monitor_socket = None
        if curve is not None:
            self.socket.curve_server = True
            self.socket.curve_publickey, self.socket.curve_secretkey = public, secret
            self.socket.zap_domain = ZAP_DOMAIN.encode()
            self.monitor_socket = self.socket.get_monitor_socket(_AUTH_FAILED)
        try:
            self.socket.bind(bind)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise ConfigError(f"ingest.worker_bind: cannot bind {bind}: {exc}") from None
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.workers: dict[bytes, _Worker] = {}
        self.queue: deque[Task] = deque()
        self.outstanding: dict[int, Task] = {}
        #: the payloads the tasks waiting or at workers reference, each once (a running count)
        self._held = HeldPayloads()
        self.stats = PoolStats()
        self._next_id = 1
        self._procs: list[subprocess.Popen] = []
        self._threads: list[tuple[threading.Thread, threading.Event]] = []
        self._proc_args: list[str] = []
        self._respawn_at: list[float] = []
        self._failed: list[TaskDone] = []  # failures found outside receive()/poll(), reported by them
        self._log = _RateLimitedLog()

    # --------------------------------------------------------------- local workers
    @property
    def connect_endpoint(self) -> str:
        """The endpoint a worker on this host connects to."""
        ep = self.endpoint
        for wildcard in ("tcp://0.0.0.0:", "tcp://[::]:"):
            if ep.startswith(wildcard):
                return "tcp://127.0.0.1:" + ep[len(wildcard):]
        return ep

    @property
    def local_endpoint(self) -> str:
        """Where worker processes on this host connect: an ``ipc://`` socket in a private directory (mode
        0700, removed at close), bound beside :attr:`endpoint` on first use, where ZeroMQ has ipc — a task's
        bytes cost the kernel less through a Unix socket than through loopback TCP —, else
        :attr:`connect_endpoint`. The same ROUTER socket: the protocol, the checks and CurveZMQ are the same."""
        if self._ipc_endpoint is None and zmq.has("ipc") and not self.endpoint.startswith(("ipc://", "inproc://")):
            where = tempfile.mkdtemp(prefix="na64-workers-")
            endpoint = f"ipc://{where}/workers"
            try:
                self.socket.bind(endpoint)
            except zmq.ZMQError as exc:  # e.g. a path too long for a Unix socket: TCP it is
                log.warning("local workers connect over %s: cannot bind %s: %s", self.connect_endpoint, endpoint, exc)
                shutil.rmtree(where, ignore_errors=True)
                self._ipc_endpoint = ""
            else:
                self._ipc_dir, self._ipc_endpoint = where, endpoint
        return self._ipc_endpoint or self.connect_endpoint

    @property
    def thread_endpoint(self) -> str:
        """Where worker threads of this process connect: an ``inproc://`` endpoint of the same ROUTER socket (the
        protocol, the checks and CurveZMQ are the same), bound on first use. A task's frames reach the thread by
        reference: no byte is copied, where loopback TCP copied each twice and the I/O thread moved it."""
        if self._inproc_endpoint is None:
            endpoint = f"inproc://na64-workers-{os.getpid()}-{id(self):x}"
            self.socket.bind(endpoint)
            self._inproc_endpoint = endpoint
        return self._inproc_endpoint

    def _local_curve(self) -> tuple[bytes, bytes, bytes] | None:
        if self._local_keys is None:
            return None
        return (*self._local_keys, self._server_public)

    def spawn_processes(self, n: int, capacity: int = 2) -> None:
        """Start ``n`` local worker processes (the same program as a remote worker)."""
        if not self.setup.command:
            raise ValueError("worker processes need WorkerSetup.command (the worker program)")
        args = [*self.setup.command, "--connect", self.local_endpoint, "--capacity", str(int(capacity)),
                "--parent-pid", str(os.getpid())]
        if self._local_keys is not None:
            # the local workers' keys in a private directory (mode 0700), removed at close
            self._key_dir = tempfile.mkdtemp(prefix="na64-worker-keys-")
            key = Path(self._key_dir, "local.key_secret")
            public, secret = self._local_keys
            key.write_text(f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
                           f'    secret-key = "{secret.decode()}"\n')
            os.chmod(key, 0o600)
            server = Path(self._key_dir, "server.key")
            write_public_key(server, self._server_public)
            args += ["--key", str(key), "--server-key", str(server)]
        self._proc_args = args
        if self.local_reads:
            allow_children_to_read_memory()
        for _ in range(n):
            self._procs.append(subprocess.Popen(self._proc_args, stdin=subprocess.DEVNULL))
            self._respawn_at.append(0.0)

    def start_threads(self, n: int, capacity: int = 2, build: Callable[[Sequence[bytes]], Any] | None = None) -> None:
        """Run ``n`` workers as threads of this process (small set-ups, tests).

        ``build``: how they make their processor (default: from the set-up's text, as any worker).
        """
        for i in range(n):
            ev = threading.Event()
            t = threading.Thread(
                target=run_worker, args=(self.thread_endpoint, build or self.setup.build),
                kwargs=dict(capacity=capacity, context=self.context, stop=ev, name=f"thread-{os.getpid()}-{i}",
                            curve=self._local_curve()),
                name=f"na64-worker-{i}", daemon=True)
            t.start()
            self._threads.append((t, ev))

    def _started_here(self, ident: bytes) -> bool:
        """Whether ``ident`` is a worker process this pool started and that still runs (a worker's own
        identity is "host:pid:…")."""
        parts = ident.split(b":")
        if len(parts) != 3 or not parts[1].isdigit() or parts[0] != _socket.gethostname().encode():
            return False
        pid = int(parts[1])
        return any(p.pid == pid and p.poll() is None for p in self._procs)

    @property
    def n_ready(self) -> int:
        return sum(1 for w in self.workers.values() if w.ready)

    @property
    def capacity(self) -> int:
        return sum(w.capacity for w in self.workers.values() if w.ready)

    # --------------------------------------------------------------- tasks
    @property
    def task_bytes(self) -> int:
        """Bytes the service holds for tasks, waiting or sent and kept for a retry: the message payloads
        they reference (a payload shared by two tasks counted once)."""
        return self._held.bytes

    def _hold(self, task: Task) -> None:
        for p in task.chunk.payloads:
            self._held.hold(p)

    def _release(self, task: Task) -> None:
        """``task`` leaves the pool (answered, failed, or timed out waiting): its payloads are not held for it."""
        for p in task.chunk.payloads:
            self._held.release(p)

    def can_accept(self, chunk: BuiltChunk | None = None) -> bool:
        """Whether a new task of ``chunk`` fits: room in the bounded queue, and within ``max_task_bytes`` with
        the payloads it references that no task holds yet (one task always fits when none is held)."""
        if len(self.queue) >= self.max_queued_tasks:
            return False
        if self.max_task_bytes is None or not (self.queue or self.outstanding):
            return True
        held = self._held
        extra = 0 if chunk is None else sum(p.nbytes for p in chunk.payloads if p not in held)
        return held.bytes + extra <= self.max_task_bytes

    def submit(self, task: Task, now: float, *, force: bool = False) -> bool:
        """Queue ``task``; False (task not taken) when the queue is full, unless ``force``."""
        if not force and not self.can_accept(task.chunk):
            return False
        task.task_id = self._next_id
        self._next_id += 1
        task.queued_at = now
        self.queue.append(task)
        self._hold(task)
        self.stats.tasks_submitted += 1
        self._dispatch(now)
        return True

    def _send(self, ident: bytes, frames: list) -> bool:
        try:
            self.socket.send_multipart([ident, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:  # host unreachable (ROUTER_MANDATORY) or HWM
            log.warning("cannot send to worker %s: %s", _who(ident), exc)
            return False

    def _send_setup(self, ident: bytes) -> None:
        self._send(ident, [SETUP, self.setup_id, *self.setup.payload])

    def _dispatch(self, now: float) -> None:
        while self.queue:
            free = [w for w in self.workers.values() if w.ready and w.credits > 0]
            if not free:
                return
            w = max(free, key=lambda w: (w.credits, -len(w.tasks)))
            task = self.queue.popleft()
            chunk = task.chunk
            meta = f"{task.run} {task.spill} {task.index} {chunk.gdc}".encode()
            if w.reads:  # where the payloads are in this process: the worker reads them
                frames = [TASKREF, _ID.pack(task.task_id), meta, *chunk.plan_frames(), task_references(chunk.payloads)]
            else:  # the payloads as received (zmq.Frame: sent by reference, no copy), after the plan
                frames = [TASK, _ID.pack(task.task_id), meta, *chunk.plan_frames(), *chunk.sources]
            if not self._send(w.ident, frames):
                self.queue.appendleft(task)
                self._forget(w, now)
                continue
            task.by_reference = w.reads
            if w.reads:
                self.stats.tasks_by_reference += 1
            else:
                self.stats.bytes_sent += chunk.nbytes
            w.credits -= 1
            w.tasks.add(task.task_id)
            task.worker = w.ident
            task.sent_at = now
            task.attempts += 1
            self.outstanding[task.task_id] = task

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
        self._release(task)
        self._failed.append(TaskDone(task, None, why))
        return []

    # --------------------------------------------------------------- socket
    def receive(self, now: float, max_messages: int = 256) -> list[TaskDone]:
        """Handle waiting messages; a bad one is refused and counted, never raised."""
        out: list[TaskDone] = []
        for _ in range(max_messages):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                out.extend(self._handle(frames, now))
            except Exception:  # noqa: BLE001 - a bug met by a peer's message must not stop the thread
                self.stats.refused_messages += 1
                log.exception("message from worker %s could not be handled; refused",
                              _who(frames[0].bytes) if frames else "?")
        self._read_monitor()
        self._dispatch(now)
        return self._take_failed(out)

    def _read_monitor(self) -> None:
        """Count CurveZMQ handshakes refused (unknown or wrong keys)."""
        mon = self.monitor_socket
        while mon is not None:
            try:
                msg = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except Exception:  # noqa: BLE001 - a malformed monitor event: skip
                continue
            if msg["event"] & _AUTH_FAILED:
                self.stats.refused_peers += 1
                self._log.warning("auth", "worker connection from %s refused: CurveZMQ handshake failed (%s)",
                                  msg.get("endpoint", b"?"), msg["event"])

    def _take_failed(self, out: list[TaskDone]) -> list[TaskDone]:
        if self._failed:
            out.extend(self._failed)
            self._failed = []
        return out

    def _refuse(self, ident: bytes, why: str) -> list[TaskDone]:
        self.stats.refused_messages += 1
        self._log.warning("message " + why.split(" ", 1)[0], "message from worker %s refused: %s", _who(ident), why)
        return []

    def _handle(self, frames, now: float) -> list[TaskDone]:
        n = len(frames)
        ident = frames[0].bytes
        if n < 2:
            return self._refuse(ident, "no command frame")
        kind = frames[1].bytes
        if kind == HELLO:
            if n != 4:
                return self._refuse(ident, f"HELLO with {n - 1} frames, expected 3")
            proto = frames[2].bytes
            if proto != PROTOCOL:
                self.stats.refused_peers += 1
                self._log.warning("protocol", "worker %s speaks %r, not %r: refused", _who(ident), proto[:32],
                                  PROTOCOL)
                return []
            w = self.workers.get(ident)
            if w is None:
                w = self.workers[ident] = _Worker(ident)
                self.stats.workers_seen += 1
                log.info("worker %s connected", _who(ident))
            w.last_seen = now
            lost = self._lost_in_transit(w, now)
            if frames[3].bytes != self.setup_id or not w.ready:
                w.ready = False
                self._send_setup(ident)
            return lost
        if kind == READY:
            if n != 4:
                return self._refuse(ident, f"READY with {n - 1} frames, expected 3")
            text = frames[3].bytes
            if not (text.isdigit() and len(text) <= 6 and 1 <= int(text) <= MAX_CAPACITY):
                return self._refuse(ident, f"READY capacity {text[:16]!r} is not 1..{MAX_CAPACITY}")
        elif kind in (RESULT, ERROR):
            if (n < 4 or (kind == ERROR and n != 4)) or len(frames[2].bytes) != _ID.size:
                return self._refuse(ident, f"{kind.decode()} with {n - 1} frames or a bad task id")
        else:
            return self._refuse(ident, f"unknown command {kind[:16]!r}")
        w = self.workers.get(ident)
        if w is None:
            # a worker we forgot (timed out) or from before a restart: make it introduce itself
            if kind == RESULT:
                self.stats.late_results += 1
            self.workers[ident] = _Worker(ident, last_seen=now)
            self._send_setup(ident)
            return []
        w.last_seen = now
        if kind == READY:
            if frames[2].bytes == self.setup_id:
                w.ready = True
                w.capacity = int(frames[3].bytes)
                w.credits = w.capacity - len(w.tasks)
                w.reads = self.local_reads and self._started_here(ident)
            return []
        (tid,) = _ID.unpack(frames[2].bytes)
        if tid == 0 and kind == ERROR:  # setup failed
            self._log.warning("setup", "worker %s: %s", _who(ident), frames[3].bytes[:500].decode(errors="replace"))
            return []
        task = self.outstanding.get(tid)
        if task is None or task.worker != ident:
            self.stats.late_results += 1
            return []
        del self.outstanding[tid]
        self._release(task)
        w.credits = min(w.capacity, w.credits + 1)
        w.tasks.discard(tid)
        if kind == ERROR and task.by_reference and frames[3].bytes.startswith(CANNOT_READ):
            if w.reads:  # this task and the next ones as bytes
                w.reads = False
                self.stats.reads_refused += 1
                why = frames[3].bytes[len(CANNOT_READ):200].decode(errors="replace")
                self._log.warning("reads", "worker %s cannot read this process's memory (%s): it is sent the "
                                  "payloads", _who(ident), why)
            task.attempts -= 1
            task.worker = None
            task.queued_at = now
            self.queue.appendleft(task)
            self._hold(task)
            return []
        if kind == ERROR:
            text = frames[3].bytes[:2000].decode(errors="replace")
            if frames[3].bytes.startswith(REFUSED_TASK):
                self.stats.refused_tasks += 1
            log.error("task %d (run %d spill %d chunk %d) failed on %s: %s", tid, task.run, task.spill,
                      task.index, _who(ident), text)
            self.stats.tasks_failed += 1
            return [TaskDone(task, None, text)]
        try:
            result = self.decode_result(frames[3:])
        except Exception as exc:  # noqa: BLE001 - refused, whatever is wrong with it
            self.stats.refused_results += 1
            self.stats.tasks_failed += 1
            self._log.warning("result", "result of task %d from worker %s refused: %s", tid, _who(ident), exc)
            return [TaskDone(task, None, f"result refused: {exc}")]
        self.stats.tasks_done += 1
        return [TaskDone(task, result)]

    def _lost_in_transit(self, w: _Worker, now: float) -> list[TaskDone]:
        """A HELLO from ``w``: retry now the tasks sent to it before its previous HELLO arrived and still
        unanswered — tasks its connection lost (a reset: the worker reconnects under the same identity,
        what was queued on the old connection is gone), which would otherwise wait ``task_timeout_s``.

        A worker says HELLO only after a second with nothing received and nothing in its socket, and
        answers every task before it reads the next message: a task it got before its second HELLO was
        answered before that HELLO (one connection keeps the order). So a task sent before the first of
        two HELLOs and unanswered at the second never reached it (or is still in transit after more than
        a second; then the retry only costs a decode — the first answer is taken, the other is late)."""
        since, w.hello_at = w.hello_at, now
        if since is None or not w.tasks:
            return []
        lost = [t for t in (self.outstanding.get(tid) for tid in sorted(w.tasks))
                if t is not None and t.worker == w.ident and t.sent_at < since]
        for task in lost:
            del self.outstanding[task.task_id]
            w.tasks.discard(task.task_id)
            w.credits = min(w.capacity, w.credits + 1)
            self.stats.tasks_lost_in_transit += 1
            self._log.warning("transit", "task %d (run %d spill %d chunk %d) never reached worker %s (its "
                              "connection was reset): retried", task.task_id, task.run, task.spill, task.index,
                              _who(w.ident))
            self._retry(task, now, "lost with the worker's connection")
        return []

    def poll(self, now: float) -> list[TaskDone]:
        """Timers: tasks without result, tasks waiting too long, dead local processes."""
        out: list[TaskDone] = []
        for task in list(self.outstanding.values()):
            if self.outstanding.get(task.task_id) is not task:
                continue  # taken back already in this pass, with the other tasks of its worker (_forget)
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
                    self._release(task)
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
        self._read_monitor()
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
        self._close_sockets()

    def _close_sockets(self) -> None:
        if self.monitor_socket is not None:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor_socket.close(linger=0)
            self.monitor_socket = None
        self.socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._key_dir is not None:
            shutil.rmtree(self._key_dir, ignore_errors=True)
            self._key_dir = None
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None
        if self._own_context:
            self.context.term()
            self._own_context = False


def worker_curve_keys(key_file: str, server_key_file: str) -> tuple[bytes, bytes, bytes]:
    """(public, secret, server public) for ``na64-online worker --key FILE --server-key FILE``."""
    public, secret = load_key(key_file, secret=True, what="--key")
    server, _ = load_key(server_key_file, secret=False, what="--server-key")
    return public, secret, server


__all__ = ["PROTOCOL", "REFUSED_TASK", "decode_task", "gather_task", "plan_task", "CurveServer", "PoolStats", "Task",
           "TaskDone", "WorkerPool", "WorkerSetup", "is_loopback", "load_key", "make_keys", "run_worker",
           "worker_curve_keys", "write_public_key"]

if __name__ == "__main__":  # pragma: no cover - the worker program is `na64-online worker`
    sys.exit("run `na64-online worker --connect ENDPOINT` (python -m na64_online.cli worker)")
