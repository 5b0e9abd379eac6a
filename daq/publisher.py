"""A readout node's publisher (spec §9): what ``na64-online simulate --publish`` runs.

It binds a PUB socket (an XPUB, which is a PUB on the wire: subscribers see no
difference; it lets the node see its subscribers, e.g. to wait for one before
the first spill) and sends its LDC's sub-events as 3-frame messages: topic,
envelope (LDC id, sequence number 0, 1, 2 …), payload of whole DATE events of
one spill. It never blocks on a slow subscriber (ZeroMQ drops at the
high-water mark; the subscriber sees the gap) unless ``nodrop`` asks it to
(benchmarks measuring what a monitor sustains).

Pacing is the SPS's: the events of a spill spread evenly over
``spill_duration_s`` (START_OF_BURST at its start, END_OF_BURST at its end),
then ``spill_gap_s`` of nothing; ``fast`` sends as fast as possible. Messages
batch at most ``batch_events`` events and wait at most ``batch_interval_s``.

Faults to inject (tests, commissioning): ``lose`` (sequence numbers not sent:
the subscriber must count them lost), ``loss_probability`` (random, seeded),
``corrupt`` (sequence number → kind of damage, :data:`CORRUPTIONS`); a
restart is :meth:`close` and a new publisher on the same endpoint (its
sequence begins again at 0).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import numpy as np
import zmq

from ..decoders import layout as L

from .envelope import pack_envelope

log = logging.getLogger(__name__)

#: kinds of damage :class:`ReadoutPublisher` can inject into a message
CORRUPTIONS = {
    "magic": "envelope magic is not N64Z",
    "version": "envelope version 99",
    "short-envelope": "envelope frame of 20 bytes",
    "frames": "two frames only (no payload)",
    "count": "envelope announces one event more than the payload holds",
    "truncate": "payload cut in the middle of its last event",
    "swap": "first event of the payload byte-swapped",
}


@dataclass(frozen=True)
class PublisherConfig:
    endpoint: str
    ldc: int
    spill_duration_s: float = 4.8
    spill_gap_s: float = 10.0
    fast: bool = False
    batch_events: int = 200
    batch_interval_s: float = 0.05
    sndhwm: int = 10000
    nodrop: bool = False  # block (bounded by send_timeout_ms) instead of dropping at the HWM
    send_timeout_ms: int = 10000
    wait_subscribers: int = 0  # before the first message, wait for this many subscribers
    wait_timeout_s: float = 10.0
    lose: frozenset[int] = frozenset()
    loss_probability: float = 0.0
    corrupt: Mapping[int, str] = field(default_factory=dict)
    seed: int = 0
    start_sequence: int = 0

    def __post_init__(self) -> None:
        bad = sorted(set(self.corrupt.values()) - set(CORRUPTIONS))
        if bad:
            raise ValueError(f"unknown corruption kind(s) {bad}; known: {sorted(CORRUPTIONS)}")
        if self.batch_events < 1:
            raise ValueError("batch_events must be >= 1")
        if self.spill_duration_s < 0 or self.spill_gap_s < 0:
            raise ValueError("spill_duration_s and spill_gap_s must be >= 0")
        if not 0 <= self.loss_probability <= 1:
            raise ValueError("loss_probability must be within [0, 1]")


@dataclass
class PublisherStats:
    messages: int = 0  # sent
    events: int = 0
    bytes: int = 0
    lost_injected: int = 0
    corrupted: int = 0
    spills: int = 0
    send_waits: int = 0


def _bind(sock: zmq.Socket, endpoint: str, retry_s: float = 5.0) -> str:
    """Bind, retrying while a previous instance's port is still being released (restart)."""
    ep = endpoint
    if ep.startswith("tcp://") and ep.endswith(":0"):
        ep = ep[:-2] + ":*"
    deadline = time.monotonic() + retry_s
    while True:
        try:
            sock.bind(ep)
            return sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class ReadoutPublisher:
    """Publishes one LDC's sub-events; owned by one thread."""

    def __init__(self, config: PublisherConfig, *, context: zmq.Context | None = None) -> None:
        self.config = config
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.XPUB)
        s = self.socket
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.SNDHWM, int(config.sndhwm))
        s.setsockopt(zmq.XPUB_VERBOSE, 1)
        if config.nodrop:
            s.setsockopt(zmq.XPUB_NODROP, 1)
            s.setsockopt(zmq.SNDTIMEO, int(config.send_timeout_ms))
        self.endpoint = _bind(s, config.endpoint)
        self.sequence = int(config.start_sequence)
        self.subscribers = 0
        self.stats = PublisherStats()
        self._rng = random.Random(config.seed)

    # ------------------------------------------------------------------ subscribers
    def _drain_subscriptions(self, timeout_ms: int = 0) -> None:
        while self.socket.poll(timeout_ms, zmq.POLLIN):
            msg = self.socket.recv()
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)
            timeout_ms = 0

    def wait_for_subscribers(self, n: int, timeout_s: float) -> bool:
        """Wait until ``n`` subscriptions arrived (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._drain_subscriptions()
            if self.subscribers >= n:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._drain_subscriptions(int(min(left, 0.1) * 1000) + 1)

    # ------------------------------------------------------------------ sending
    def send(self, events: list[bytes]) -> bool:
        """One message with ``events`` (whole DATE events of one spill); applies injected faults.

        Returns whether a message went out (False: lost on purpose).
        """
        cfg = self.config
        seq = self.sequence
        self.sequence += 1
        if seq in cfg.lose or (cfg.loss_probability and self._rng.random() < cfg.loss_probability):
            self.stats.lost_injected += 1
            return False
        payload = b"".join(events)
        envelope = pack_envelope(cfg.ldc, seq, len(events))
        frames = [L.ZMQ_TOPIC, envelope, payload]
        kind = cfg.corrupt.get(seq)
        if kind is not None:
            frames = self._corrupt(kind, frames, events)
            self.stats.corrupted += 1
        self._send_frames(frames, len(events))
        return True

    def send_payload(self, payload: bytes, count: int) -> None:
        """One message of ``count`` whole DATE events already joined into ``payload`` (sent zero-copy, so
        ``payload`` must not change afterwards); no fault injection."""
        seq = self.sequence
        self.sequence += 1
        self._send_frames([L.ZMQ_TOPIC, pack_envelope(self.config.ldc, seq, count), payload], count)

    def _send_frames(self, frames: list[bytes], events: int) -> None:
        payload = frames[-1]
        self._drain_subscriptions()
        while True:
            try:
                self.socket.send_multipart(frames, copy=len(payload) < 65536)
                break
            except zmq.Again:  # only with nodrop: a subscriber is full; wait for it (send_timeout_ms each)
                self.stats.send_waits += 1
                self._drain_subscriptions()
        self.stats.messages += 1
        self.stats.events += events
        self.stats.bytes += sum(len(f) for f in frames)

    def _corrupt(self, kind: str, frames: list[bytes], events: list[bytes]) -> list[bytes]:
        cfg = self.config
        topic, envelope, payload = frames
        seq = self.sequence - 1
        if kind == "magic":
            return [topic, pack_envelope(cfg.ldc, seq, len(events), magic=b"XXXX"), payload]
        if kind == "version":
            return [topic, pack_envelope(cfg.ldc, seq, len(events), version=99), payload]
        if kind == "short-envelope":
            return [topic, envelope[:20], payload]
        if kind == "frames":
            return [topic, envelope]
        if kind == "count":
            return [topic, pack_envelope(cfg.ldc, seq, len(events) + 1), payload]
        if kind == "truncate":
            last = len(events[-1]) if events else 0
            cut = max(4, (last // 8) * 4)
            return [topic, envelope, payload[: len(payload) - cut]]
        if kind == "swap":
            first = np.frombuffer(events[0], dtype=L.WORD).byteswap().tobytes()
            return [topic, envelope, first + payload[len(first):]]
        raise ValueError(kind)

    # ------------------------------------------------------------------ spills
    def publish_spill(self, events: list[bytes] | Iterable[bytes]) -> None:
        """Send one spill's sub-events (START_OF_BURST … END_OF_BURST), paced unless ``fast``."""
        cfg = self.config
        events = list(events)
        n = len(events)
        self.stats.spills += 1
        if cfg.fast or cfg.spill_duration_s == 0 or n <= 2:
            for i in range(0, n, cfg.batch_events):
                self.send(events[i:i + cfg.batch_events])
            return
        # event i (1 … n-2) is due at (i / (n-1)) × duration; START_OF_BURST at 0, END_OF_BURST at the end
        t0 = time.monotonic()
        due = np.arange(n) / (n - 1) * cfg.spill_duration_s
        i = 0
        while i < n:
            now = time.monotonic() - t0
            ready = int(np.searchsorted(due, now, side="right"))
            if ready > i and (ready - i >= cfg.batch_events or now - due[i] >= cfg.batch_interval_s
                              or ready == n):
                stop = min(ready, i + cfg.batch_events)
                self.send(events[i:stop])
                i = stop
                continue
            # sleep until the batch is full or its oldest event waited long enough
            wake = min(due[min(i + cfg.batch_events, n) - 1], due[i] + cfg.batch_interval_s)
            time.sleep(max(0.0, min(wake - now, 0.1)))

    def publish(self, spills: Iterable[list[bytes]]) -> None:
        """Spill after spill, with the gap between them (none in ``fast`` mode)."""
        cfg = self.config
        if cfg.wait_subscribers and not self.wait_for_subscribers(cfg.wait_subscribers, cfg.wait_timeout_s):
            log.warning("LDC %d: only %d of %d subscribers after %.0f s; publishing anyway", cfg.ldc,
                        self.subscribers, cfg.wait_subscribers, cfg.wait_timeout_s)
        first = True
        for events in spills:
            if not first and not cfg.fast and cfg.spill_gap_s:
                time.sleep(cfg.spill_gap_s)
            first = False
            self.publish_spill(events)

    def close(self, linger_ms: int = 1000) -> None:
        self.socket.close(linger=linger_ms)

    def __enter__(self) -> "ReadoutPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def simulated_ldc_spills(sim, ldc: int, skip_spills: int = 0) -> Iterator[list[bytes]]:
    """One LDC's sub-events of each simulated spill (``ReadoutSimulator``), in order."""
    for k, spill in enumerate(sim.spills()):
        if k < skip_spills:
            continue
        yield spill.ldc_events(ldc)


class SharedSimulation:
    """One simulation feeding several readout nodes: each spill is simulated once (its waveforms made
    once, then encoded per node) and each node's thread takes its own part (:meth:`node_spills`).

    A node ahead of the others waits once ``max_pending`` spills are made but not taken by all."""

    def __init__(self, sim, ldcs: Iterable[int], max_pending: int = 2) -> None:
        self.ldcs = tuple(ldcs)
        self.max_pending = int(max_pending)
        self._spills = sim.spills()
        self._made: dict[int, dict[int, list[bytes]]] = {}  # spill index -> node -> its events, not taken yet
        self._count = 0  # spills made
        self._exhausted = False
        self._cond = threading.Condition()

    def node_spills(self, ldc: int) -> Iterator[list[bytes]]:
        """That node's sub-events of each spill, in order (as :func:`simulated_ldc_spills`)."""
        if ldc not in self.ldcs:
            raise ValueError(f"no readout node {ldc} in this simulation ({self.ldcs})")
        k = 0
        while True:
            events = self._take(ldc, k)
            if events is None:
                return
            yield events
            k += 1

    def _take(self, ldc: int, k: int) -> list[bytes] | None:
        with self._cond:
            while k >= self._count:
                if self._exhausted:
                    return None
                if len(self._made) >= self.max_pending:
                    self._cond.wait(1.0)
                    continue
                spill = next(self._spills, None)  # simulated under the lock: the others wait for it anyway
                if spill is None:
                    self._exhausted = True
                    return None
                self._made[self._count] = {node: spill.ldc_events(node) for node in self.ldcs}
                self._count += 1
            parts = self._made[k]
            events = parts.pop(ldc)
            if not parts:
                del self._made[k]
                self._cond.notify_all()
            return events


def parse_corruptions(items: Iterable[str]) -> dict[int, str]:
    """``["5:truncate", "9:magic"]`` → ``{5: "truncate", 9: "magic"}`` (command line)."""
    out: dict[int, str] = {}
    for item in items:
        for part in str(item).split(","):
            if not part:
                continue
            seq, _, kind = part.partition(":")
            try:
                out[int(seq)] = kind or "truncate"
            except ValueError:
                raise ValueError(f"expected SEQ:KIND, got {part!r}") from None
            if out[int(seq)] not in CORRUPTIONS:
                raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(sorted(CORRUPTIONS))}")
    return out


def parse_sequences(items: Iterable[str]) -> frozenset[int]:
    """``["3,7", "10-12"]`` → ``{3, 7, 10, 11, 12}`` (command line)."""
    out: set[int] = set()
    for item in items:
        for part in str(item).split(","):
            if not part:
                continue
            a, sep, b = part.partition("-")
            try:
                out.update(range(int(a), int(b) + 1) if sep else (int(a),))
            except ValueError:
                raise ValueError(f"expected sequence numbers like 3,7,10-12, got {part!r}") from None
    return frozenset(out)
