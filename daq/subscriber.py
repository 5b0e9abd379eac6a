"""Receiving readout nodes' messages: SUB sockets, envelope validation, sequence tracking (spec §9).

One SUB socket connects to every readout node's endpoint (ZeroMQ fair-queues
between them and reconnects by itself when a node goes away and comes back).
Every message is validated (:func:`~na64_online.daq.envelope.parse_message`);
per LDC the sequence numbers are followed by :class:`SequenceTracker`:

* ``seq == last + 1``: in order;
* ``last + 1 < seq <= last + max_sequence_jump``: ``seq - last - 1`` messages
  were lost (a slow monitor whose receive queue filled up, or a network
  problem: the PUB side drops, it never blocks);
* ``seq == 0``: the node restarted (and only that: a restart is recognised by
  sequence 0 alone); nothing is counted lost;
* a number among the last ``sequence_window`` (64) that arrived already: a
  ``duplicate`` — counted, not handed on; one that was counted lost: a
  late, ``reordered`` message — counted, handed on, and taken back from the
  lost messages (if the spill its gap was reported with is finished already,
  it stays counted lost there and here: totals and records agree);
* any other number (forwards beyond ``max_sequence_jump``, backwards beyond
  the window): a ``sequence_jump``, counted with its size, never as lost
  messages; the tracker follows whichever numbering the next message goes on
  with;
* the first message seen from a node may have any number (the monitor joined
  late): nothing is lost before it.

A message whose frames or envelope are wrong cannot be attributed: it is
counted (``bad_envelopes``), logged and skipped; its sequence number shows up
later as a gap. A message with a good envelope but a damaged payload
(truncated, byte-swapped, events of two spills, a wrong event count) is
counted (``corrupt_messages`` per LDC); the whole events before the damage
are kept. Every bad message is also counted by LDC and kind
(``stats.bad_messages``, :data:`BAD_MESSAGE_KINDS`) and queued as a
:class:`Fault` for the service, which reports it with a spill.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from collections import deque
from typing import Iterable, NamedTuple

import zmq

from ..decoders import layout as L
from ..errors import EnvelopeError
from .envelope import Envelope, PayloadScan, parse_message

log = logging.getLogger(__name__)


#: Kinds of bad message, counted per LDC (``Subscriber.stats.bad_messages``, the QA record's
#: ``bad_messages``, the metric ``na64_bad_messages_total{ldc,kind}``); a bounded label set.
BAD_MESSAGE_KINDS = ("bad_envelope", "damaged_payload", "duplicate", "reordered", "sequence_jump")
#: LDC label of a message whose envelope could not be read (no trustworthy LDC)
UNKNOWN_LDC = "unknown"
#: sequence numbers remembered per LDC to tell a duplicate or a late message from a loss
SEQUENCE_WINDOW = 64
#: more messages skipped than this at once is not taken as that many lost messages (``sequence_jump``)
MAX_SEQUENCE_JUMP = 100_000
#: message size assumed for the receive high-water mark before the first message arrives
ASSUMED_MESSAGE_BYTES = 1 << 20
#: readout nodes whose mean message size is followed (for the receive high-water mark)
MAX_NODES_TRACKED = 256
#: ``ZMQ_MAXMSGSIZE`` is never set below this (a budget share smaller than one message)
MIN_MAX_MESSAGE_BYTES = 4 << 20
#: a lower receive high-water mark found while data flows waits until no message came for this long (and the
#: queue is empty): the reconnection that applies it then drops nothing
HWM_QUIET_S = 1.0


class Observed(NamedTuple):
    """What one sequence number said (:meth:`SequenceTracker.observe`)."""

    lost: int = 0  # messages counted lost just before this one (a gap)
    restarted: bool = False  # sequence 0: the node restarted
    fault: str | None = None  # "duplicate", "reordered" or "sequence_jump"
    recovered: bool = False  # a late message that had been counted lost: taken back from ``lost``
    jump: int = 0  # sequence_jump: the step (seq - last - 1; negative backwards)


@dataclass
class SequenceTracker:
    """Per-LDC sequence numbers (spec §9): gaps are lost messages, seq 0 is a restart.

    The last ``window`` numbers of each LDC are remembered (received, or
    counted lost). A number within the window that arrived already is a
    ``duplicate``; one that was counted lost is ``reordered`` and taken back
    from ``lost`` (``recovered``), so that the total is exact; a step beyond
    the window backwards or beyond ``max_jump`` forwards is a
    ``sequence_jump``: counted with its size, never as lost messages. After a
    jump the tracker keeps following the old numbers; if the next message
    continues from the new number instead, it resynchronises there (one jump
    either way); if it goes on with ``last + 2``, the jump took the place of
    message ``last + 1`` (a damaged number), which is then not lost either.
    """

    window: int = SEQUENCE_WINDOW
    max_jump: int = MAX_SEQUENCE_JUMP
    last: dict[int, int] = field(default_factory=dict)
    lost: dict[int, int] = field(default_factory=dict)
    restarts: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    duplicates: dict[int, int] = field(default_factory=dict)
    reordered: dict[int, int] = field(default_factory=dict)
    jumps: dict[int, int] = field(default_factory=dict)
    last_jump: dict[int, int] = field(default_factory=dict)  # size of each LDC's latest jump
    _seen: dict[int, int] = field(default_factory=dict, repr=False)  # bit i: seq last-i received
    _missing: dict[int, int] = field(default_factory=dict, repr=False)  # bit i: seq last-i counted lost
    _jumped_to: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.window < 1 or self.max_jump < self.window:
            raise ValueError(f"sequence window {self.window} must be >= 1 and <= max_jump {self.max_jump}")

    @staticmethod
    def _add(counter: dict[int, int], ldc: int, n: int = 1) -> None:
        counter[ldc] = counter.get(ldc, 0) + n

    def _reset(self, ldc: int, seq: int) -> None:
        self.last[ldc] = seq
        self._seen[ldc] = 1
        self._missing[ldc] = 0

    def _advance(self, ldc: int, seq: int) -> int:
        """Move ``last`` forward to ``seq``; returns the gap (messages lost)."""
        step = seq - self.last[ldc]
        full = (1 << self.window) - 1
        if step >= self.window:
            self._seen[ldc] = 1
            self._missing[ldc] = full & ~1
        else:
            gap_bits = ((1 << step) - 2) & full  # bits 1 … step-1: the numbers skipped
            self._seen[ldc] = ((self._seen[ldc] << step) | 1) & full
            self._missing[ldc] = ((self._missing[ldc] << step) | gap_bits) & full
        self.last[ldc] = seq
        gap = step - 1
        if gap:
            self._add(self.lost, ldc, gap)
        return gap

    def observe(self, ldc: int, seq: int) -> Observed:
        """Record message ``seq`` of ``ldc``."""
        self._add(self.received, ldc)
        last = self.last.get(ldc)
        jumped_to = self._jumped_to.pop(ldc, None)
        if last is None:  # the first message seen: the monitor may have joined late, nothing lost before
            self._reset(ldc, seq)
            return Observed()
        if seq == 0:
            self._reset(ldc, 0)
            self._add(self.restarts, ldc)
            return Observed(restarted=True)
        step = seq - last
        if jumped_to is not None and step == 2:
            # the jump came in place of message last+1 (its number damaged): that message was not lost
            self._advance(ldc, seq - 1)
            return Observed(lost=self._advance(ldc, seq))
        if 0 < step <= self.max_jump + 1:  # at most max_jump messages skipped
            return Observed(lost=self._advance(ldc, seq))
        if -self.window < step <= 0:
            bit = 1 << -step
            if self._missing[ldc] & bit:
                self._missing[ldc] &= ~bit
                self._seen[ldc] |= bit
                self.lost[ldc] -= 1
                self._add(self.reordered, ldc)
                return Observed(fault="reordered", recovered=True)
            if self._seen[ldc] & bit:
                self._add(self.duplicates, ldc)
                return Observed(fault="duplicate")
            self._seen[ldc] |= bit  # older than the first message seen: late, never counted lost
            self._add(self.reordered, ldc)
            return Observed(fault="reordered")
        if jumped_to is not None and 0 < seq - jumped_to <= self.max_jump + 1:
            # the numbers go on from the jump's: the node really jumped (counted then); follow it
            self._reset(ldc, jumped_to)
            return Observed(lost=self._advance(ldc, seq))
        self._jumped_to[ldc] = seq
        self._add(self.jumps, ldc)
        self.last_jump[ldc] = step - 1
        return Observed(fault="sequence_jump", jump=step - 1)

    def keep_lost(self, ldc: int) -> None:
        """Count a recovered message as lost again (its gap was already reported in a finished spill)."""
        self._add(self.lost, ldc)

    def forget(self, ldc: int) -> None:
        self.last.pop(ldc, None)
        self._jumped_to.pop(ldc, None)


@dataclass
class SubscriberStats:
    messages: int = 0
    bytes: int = 0
    events: int = 0
    bad_envelopes: int = 0
    corrupt_messages: dict[int, int] = field(default_factory=dict)
    #: every bad message by LDC label (str(ldc) or "unknown") and kind (:data:`BAD_MESSAGE_KINDS`)
    bad_messages: dict[str, dict[str, int]] = field(default_factory=dict)
    last_error: str = ""
    last_error_at: float | None = None
    #: messages counted lost in the first gap of each LDC after a reconnection that changed the receive
    #: high-water mark (what the old connection's queues held; also in ``lost``)
    lost_on_reconnect: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    """One bad message, for the per-spill accounting: ``spill`` = (run, spill) of its payload, if known."""

    ldc: str
    kind: str
    spill: tuple[int, int] | None = None
    jump: int = 0
    message: int = 0  # ordinal of the message (``stats.messages`` when it came)


@dataclass(frozen=True, eq=False)
class Received:
    """One accepted message: its envelope, scanned payload and what the sequence said."""

    envelope: Envelope
    scan: PayloadScan
    lost: int  # messages of this LDC lost just before this one
    restarted: bool
    corrupt: bool  # payload damaged; ``scan`` holds the whole events before the damage
    nbytes: int
    fault: str | None = None  # "reordered" or "sequence_jump" (duplicates are not handed on)
    recovered: bool = False  # a late message that had been counted lost (``lost`` was taken back)
    message: int = 0  # ordinal of the message (``stats.messages`` when it came; :attr:`Fault.message`)
    #: the payload frame as received (a ``zmq.Frame``: the builder's chunks hand it on to workers uncopied)
    payload: object = None


class Subscriber:
    """A SUB socket on one or more readout-node endpoints; owned by one thread.

    ``rcvhwm`` caps each node's receive queue in messages. With ``queue_bytes``
    (the memory budget's share for the receive queues, all nodes together) the
    high-water mark is derived from the message size seen:
    ``queue_bytes / (sum over the nodes of their mean message bytes)`` (a node not
    heard of yet counts as the largest seen; at most ``rcvhwm``, at least 1),
    set before connecting (a size of :data:`ASSUMED_MESSAGE_BYTES` assumed for the
    nodes not heard of yet) and lowered while data flows when the messages turn
    out larger (by more than 25 %, at most every 5 s) — by reconnecting, since
    changing the mark of a live connection can stall it for good. A reconnection
    drops what the old connections held (the receive queue, the publisher's
    queue for it), so a lower mark found while data flows waits until the
    readout nodes are quiet (:meth:`idle`: nothing received for
    :data:`HWM_QUIET_S` and the queue empty — between spills), where nothing is
    in flight; the queues may hold more than their share meanwhile (at most the
    ratio of the message sizes seen to those assumed). A gap that still
    follows a reconnection is counted lost and also under
    ``stats.lost_on_reconnect`` (per LDC). A mark that could be higher waits for
    the next (re)connection or :meth:`set_queue_bytes`. One message may not exceed
    the share (``ZMQ_MAXMSGSIZE``). Messages beyond are dropped by ZeroMQ on the
    readout node's side and counted here as sequence gaps.
    """

    def __init__(
        self,
        endpoints: Iterable[str] = (),
        *,
        context: zmq.Context | None = None,
        rcvhwm: int = 10000,
        reconnect_ivl_ms: int = 100,
        reconnect_ivl_max_ms: int = 2000,
        heartbeat_ivl_ms: int = 1000,
        heartbeat_timeout_ms: int = 5000,
        rcvbuf: int = 0,
        queue_bytes: int | None = None,
        sequence_window: int = SEQUENCE_WINDOW,
        max_sequence_jump: int = MAX_SEQUENCE_JUMP,
        max_faults: int = 4096,
    ) -> None:
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.SUB)
        s = self.socket
        s.setsockopt(zmq.LINGER, 0)
        self.max_rcvhwm = int(rcvhwm)
        self.rcvhwm = int(rcvhwm)
        s.setsockopt(zmq.RCVHWM, self.rcvhwm)
        if rcvbuf:
            s.setsockopt(zmq.RCVBUF, int(rcvbuf))
        s.setsockopt(zmq.RECONNECT_IVL, int(reconnect_ivl_ms))
        s.setsockopt(zmq.RECONNECT_IVL_MAX, int(reconnect_ivl_max_ms))
        # detect a dead node (power cut, cable): then reconnect. TCP keepalive, not ZMTP heartbeats: with a
        # full receive queue libzmq stops reading the connection, a heartbeat then times out and libzmq
        # aborts the process on the next read (Assertion failed: _input_stopped, libzmq issues 3937 and
        # 4767); the kernel answers keepalive probes whether or not the queue is full.
        idle_s = max(1, round(heartbeat_ivl_ms / 1000))
        s.setsockopt(zmq.TCP_KEEPALIVE, 1)
        s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, idle_s)
        s.setsockopt(zmq.TCP_KEEPALIVE_INTVL, idle_s)
        s.setsockopt(zmq.TCP_KEEPALIVE_CNT, max(1, round(heartbeat_timeout_ms / 1000 / idle_s)))
        s.setsockopt(zmq.SUBSCRIBE, L.ZMQ_TOPIC)
        self.endpoints: list[str] = []
        self.sequences = SequenceTracker(window=int(sequence_window), max_jump=int(max_sequence_jump))
        self.stats = SubscriberStats()
        #: bad messages not yet taken by the consumer (:meth:`take_faults`); the oldest go beyond ``max_faults``
        self.faults: deque[Fault] = deque(maxlen=max_faults)
        self.queue_bytes: int | None = None
        self.mean_message_bytes: float | None = None
        self._ldc_mean: dict[int, float] = {}  # per node (at most MAX_NODES_TRACKED), for the HWM
        self._since_hwm_check = 0
        self._hwm_changed_at = -1e9
        self.hwm_reconnects = 0  # times the receive high-water mark was changed by reconnecting
        #: a lower mark found while data flowed, applied by :meth:`idle` once the nodes are quiet
        self.pending_hwm: int | None = None
        self._last_message_at = -1e9
        self._after_reconnect: set[int] = set()  # LDCs whose next gap is what a reconnection dropped
        if queue_bytes is not None:
            self.set_queue_bytes(queue_bytes)
        for ep in endpoints:
            self.connect(ep)

    # ------------------------------------------------------------------ memory
    def set_queue_bytes(self, queue_bytes: int) -> None:
        """Bound the receive queues (all nodes together) to about ``queue_bytes``."""
        self.queue_bytes = max(1, int(queue_bytes))
        self.socket.setsockopt(zmq.MAXMSGSIZE, max(self.queue_bytes, MIN_MAX_MESSAGE_BYTES))
        self._apply_hwm(explicit=True)  # a new budget applies at once

    def _apply_hwm(self, explicit: bool = False) -> None:
        if self.queue_bytes is None:
            return
        # one high-water mark for every node's queue: HWM × (sum of the nodes' mean message sizes) fits
        means = list(self._ldc_mean.values())
        unseen = max(0, len(self.endpoints) - len(means), 1 if not means else 0)
        total = sum(means) + unseen * max(means, default=ASSUMED_MESSAGE_BYTES)
        hwm = int(self.queue_bytes // total)
        hwm = max(1, min(self.max_rcvhwm, hwm))
        if hwm == self.rcvhwm:
            return
        live = bool(self.stats.messages and self.endpoints)
        if live and not explicit:  # data flows: only a mark too high for the budget, rarely, by reconnecting
            now = time.monotonic()
            if not hwm < 0.8 * self.rcvhwm or now - self._hwm_changed_at < 5.0:
                return
            self.pending_hwm = hwm  # when the nodes are quiet (idle()): a reconnection now would drop the queues
            return
        self._set_hwm(hwm, live)

    def idle(self, now: float | None = None) -> bool:
        """Apply a lower high-water mark found while data flowed, if the readout nodes are quiet now: nothing
        received for :data:`HWM_QUIET_S` and nothing queued (the service calls it with its timers). True when
        it reconnected."""
        if self.pending_hwm is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_message_at < HWM_QUIET_S or self.socket.poll(0, zmq.POLLIN):
            return False
        hwm, self.pending_hwm = self.pending_hwm, None
        self._hwm_changed_at = now
        self._set_hwm(hwm, bool(self.stats.messages and self.endpoints))
        return True

    def _set_hwm(self, hwm: int, live: bool) -> None:
        self.pending_hwm = None
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.rcvhwm = hwm
        if live:
            # libzmq (4.3.5) applies a new RCVHWM to connections already made, but a connection whose
            # queue is full can then stall for good (its writer waits for a wake-up computed from the old
            # mark: seen here with a mark raised from 1 to 18). New connections get consistent marks:
            # reconnect. What the old queues held is dropped and shows up as sequence gaps (counted).
            for endpoint in self.endpoints:
                self.socket.disconnect(endpoint)
                self.socket.connect(endpoint)
            self.hwm_reconnects += 1
            self._after_reconnect = set(self.sequences.last)
            log.info("receive high-water mark now %d messages per node (mean message %.0f kB): reconnected",
                     hwm, (self.mean_message_bytes or 0) / 1e3)

    def connect(self, endpoint: str) -> None:
        self.endpoints.append(endpoint)
        self._apply_hwm()
        self.socket.connect(endpoint)

    def disconnect(self, endpoint: str) -> None:
        self.socket.disconnect(endpoint)
        self.endpoints.remove(endpoint)
        self._apply_hwm()

    def close(self) -> None:
        self.socket.close(linger=0)

    def _error(self, message: str) -> None:
        now = time.monotonic()
        # log at most once a second; everything is counted anyway
        if self.stats.last_error_at is None or now - self.stats.last_error_at >= 1.0:
            log.warning("%s", message)
        self.stats.last_error = message
        self.stats.last_error_at = now

    def _bad(self, ldc: str, kind: str, spill: tuple[int, int] | None = None, jump: int = 0) -> None:
        per_ldc = self.stats.bad_messages.setdefault(ldc, {})
        per_ldc[kind] = per_ldc.get(kind, 0) + 1
        self.faults.append(Fault(ldc, kind, spill, jump, self.stats.messages))

    def take_faults(self) -> list[Fault]:
        """The bad messages since the last call (the service attributes them to spills)."""
        out = list(self.faults)
        self.faults.clear()
        return out

    def handle(self, frames: list) -> Received | None:
        """Validate one multipart message (frames as bytes or zmq.Frame).

        None for a message that is not handed on: a bad envelope (no LDC to trust) or a
        duplicate (its sequence number arrived already); both are counted."""
        views = [f.buffer if isinstance(f, zmq.Frame) else f for f in frames]
        nbytes = sum(len(v) for v in views)
        self.stats.messages += 1
        self.stats.bytes += nbytes
        self._last_message_at = time.monotonic()
        mean = self.mean_message_bytes
        self.mean_message_bytes = float(nbytes) if mean is None else mean + (nbytes - mean) / 32.0
        try:
            env, scan = parse_message(views)
        except EnvelopeError as exc:
            self.stats.bad_envelopes += 1
            self._bad(UNKNOWN_LDC, "bad_envelope")
            self._error(f"message skipped: {exc}")
            return None
        ldc = str(env.ldc)
        spill = (scan.run, scan.spill) if scan.spill is not None else None
        m = self._ldc_mean.get(env.ldc)
        if m is not None:
            self._ldc_mean[env.ldc] = m + (nbytes - m) / 32.0
        elif len(self._ldc_mean) < MAX_NODES_TRACKED:
            self._ldc_mean[env.ldc] = float(nbytes)
        obs = self.sequences.observe(env.ldc, env.sequence)
        if self._after_reconnect and env.ldc in self._after_reconnect:
            self._after_reconnect.discard(env.ldc)
            if obs.lost:
                self.stats.lost_on_reconnect[env.ldc] = self.stats.lost_on_reconnect.get(env.ldc, 0) + obs.lost
        if obs.restarted:
            log.info("readout node LDC %d restarted (sequence 0 after %s)", env.ldc,
                     self.sequences.received.get(env.ldc, 0))
        if obs.fault is not None:
            self._bad(ldc, obs.fault, spill, obs.jump)
            if obs.fault == "sequence_jump":
                self._error(f"LDC {env.ldc} message {env.sequence}: sequence jump of {obs.jump} "
                            f"(not counted as lost messages)")
            elif obs.fault == "duplicate":
                self._error(f"LDC {env.ldc} message {env.sequence}: duplicate, skipped")
                return None
        corrupt = not scan.ok
        if corrupt:
            self.stats.corrupt_messages[env.ldc] = self.stats.corrupt_messages.get(env.ldc, 0) + 1
            self._bad(ldc, "damaged_payload", spill)
            self._error(f"LDC {env.ldc} message {env.sequence}: damaged payload, "
                        f"kept {scan.n_events} of {env.events} events: {scan.describe()}")
        self.stats.events += scan.n_events
        return Received(env, scan, obs.lost, obs.restarted, corrupt, nbytes, obs.fault, obs.recovered,
                        self.stats.messages, frames[2])

    def recv(self, timeout_ms: int = 100, max_messages: int = 256) -> list[Received]:
        """Whatever arrives within ``timeout_ms`` (at most ``max_messages``); never raises on bad data."""
        out: list[Received] = []
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return out
        n = 0
        for _ in range(max_messages):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            n += 1
            r = self.handle(frames)
            if r is not None:
                out.append(r)
        self._since_hwm_check += n
        if self._since_hwm_check >= 64:
            self._since_hwm_check = 0
            self._apply_hwm()
        return out
