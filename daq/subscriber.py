"""Receiving readout nodes' messages: SUB sockets, envelope validation, sequence tracking (spec §9).

One SUB socket connects to every readout node's endpoint (ZeroMQ fair-queues
between them and reconnects by itself when a node goes away and comes back).
Every message is validated (:func:`~na64_online.daq.envelope.parse_message`);
per LDC the sequence numbers are followed by :class:`SequenceTracker`:

* ``seq == last + 1``: in order;
* ``seq > last + 1``: ``seq - last - 1`` messages were lost (a slow monitor
  whose receive buffer filled up, or a network problem: the PUB side drops,
  it never blocks);
* ``seq <= last``: the node restarted (its sequence begins again at 0); the
  messages ``0 … seq-1`` of the new run of the node that did not arrive are
  lost — never ``2**64`` of them;
* the first message seen from a node may have any number (the monitor joined
  late): nothing is lost before it.

A message whose frames or envelope are wrong cannot be attributed: it is
counted (``bad_envelopes``), logged and skipped; its sequence number shows up
later as a gap. A message with a good envelope but a damaged payload
(truncated, byte-swapped, events of two spills, a wrong event count) is
counted (``corrupt_messages`` per LDC); the whole events before the damage
are kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable

import zmq

from ..decoders import layout as L

from .envelope import Envelope, EnvelopeError, PayloadScan, parse_message

log = logging.getLogger(__name__)


@dataclass
class SequenceTracker:
    """Per-LDC sequence numbers: gaps are lost messages, a step back is a restart."""

    last: dict[int, int] = field(default_factory=dict)
    lost: dict[int, int] = field(default_factory=dict)
    restarts: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)

    def observe(self, ldc: int, seq: int) -> tuple[int, bool]:
        """Record message ``seq`` of ``ldc``; returns (messages lost just before it, node restarted)."""
        last = self.last.get(ldc)
        self.last[ldc] = seq
        self.received[ldc] = self.received.get(ldc, 0) + 1
        if last is None or seq == last + 1:
            return 0, False
        if seq > last + 1:
            lost = seq - last - 1
            restarted = False
        else:
            lost = seq  # messages 0 … seq-1 of the restarted node
            restarted = True
            self.restarts[ldc] = self.restarts.get(ldc, 0) + 1
        if lost:
            self.lost[ldc] = self.lost.get(ldc, 0) + lost
        return lost, restarted

    def forget(self, ldc: int) -> None:
        self.last.pop(ldc, None)


@dataclass
class SubscriberStats:
    messages: int = 0
    bytes: int = 0
    events: int = 0
    bad_envelopes: int = 0
    corrupt_messages: dict[int, int] = field(default_factory=dict)
    last_error: str = ""
    last_error_at: float | None = None


@dataclass(frozen=True, eq=False)
class Received:
    """One accepted message: its envelope, scanned payload and what the sequence said."""

    envelope: Envelope
    scan: PayloadScan
    lost: int  # messages of this LDC lost just before this one
    restarted: bool
    corrupt: bool  # payload damaged; ``scan`` holds the whole events before the damage
    nbytes: int


class Subscriber:
    """A SUB socket on one or more readout-node endpoints; owned by one thread."""

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
    ) -> None:
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.SUB)
        s = self.socket
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, int(rcvhwm))
        if rcvbuf:
            s.setsockopt(zmq.RCVBUF, int(rcvbuf))
        s.setsockopt(zmq.RECONNECT_IVL, int(reconnect_ivl_ms))
        s.setsockopt(zmq.RECONNECT_IVL_MAX, int(reconnect_ivl_max_ms))
        # detect a dead node (power cut, cable) even when TCP does not: then reconnect
        s.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat_ivl_ms))
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(heartbeat_timeout_ms))
        s.setsockopt(zmq.HEARTBEAT_TTL, int(heartbeat_timeout_ms))
        s.setsockopt(zmq.SUBSCRIBE, L.ZMQ_TOPIC)
        self.endpoints: list[str] = []
        self.sequences = SequenceTracker()
        self.stats = SubscriberStats()
        for ep in endpoints:
            self.connect(ep)

    def connect(self, endpoint: str) -> None:
        self.socket.connect(endpoint)
        self.endpoints.append(endpoint)

    def disconnect(self, endpoint: str) -> None:
        self.socket.disconnect(endpoint)
        self.endpoints.remove(endpoint)

    def close(self) -> None:
        self.socket.close(linger=0)

    def _error(self, message: str) -> None:
        now = time.monotonic()
        # log at most once a second; everything is counted anyway
        if self.stats.last_error_at is None or now - self.stats.last_error_at >= 1.0:
            log.warning("%s", message)
        self.stats.last_error = message
        self.stats.last_error_at = now

    def handle(self, frames: list) -> Received | None:
        """Validate one multipart message (frames as bytes or zmq.Frame)."""
        views = [f.buffer if isinstance(f, zmq.Frame) else f for f in frames]
        nbytes = sum(len(v) for v in views)
        self.stats.messages += 1
        self.stats.bytes += nbytes
        try:
            env, scan = parse_message(views)
        except EnvelopeError as exc:
            self.stats.bad_envelopes += 1
            self._error(f"message skipped: {exc}")
            return None
        lost, restarted = self.sequences.observe(env.ldc, env.sequence)
        if restarted:
            log.info("readout node LDC %d restarted (sequence %d after %s)", env.ldc, env.sequence,
                     "a higher one")
        corrupt = not scan.ok
        if corrupt:
            self.stats.corrupt_messages[env.ldc] = self.stats.corrupt_messages.get(env.ldc, 0) + 1
            self._error(f"LDC {env.ldc} message {env.sequence}: damaged payload, "
                        f"kept {scan.n_events} of {env.events} events: {scan.describe()}")
        self.stats.events += scan.n_events
        return Received(env, scan, lost, restarted, corrupt, nbytes)

    def recv(self, timeout_ms: int = 100, max_messages: int = 256) -> list[Received]:
        """Whatever arrives within ``timeout_ms`` (at most ``max_messages``); never raises on bad data."""
        out: list[Received] = []
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return out
        for _ in range(max_messages):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            r = self.handle(frames)
            if r is not None:
                out.append(r)
        return out
