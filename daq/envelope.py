"""The ZeroMQ envelope of a readout node's messages (docs/raw-format.md §9).

A message has three frames: the topic ``na64.raw``, a 24-byte envelope header
(:data:`~na64_online.decoders.layout.ENVELOPE_DTYPE`) and a payload of whole
DATE events of one spill. This module packs and validates them; it knows no
sockets.

Validation is strict and tells what is wrong:

* :func:`unpack_envelope` rejects a header of the wrong length, magic,
  version or flags (:class:`EnvelopeError`);
* :func:`scan_payload` walks the payload's DATE headers (the §2 reader rules)
  and reports, besides the table of events, where and why it had to stop
  (truncated payload, byte-swapped or unknown magic, old header layout,
  bad sizes, an event of another spill, more or fewer events than the
  envelope announced). The events before the damage are whole and usable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..decoders import layout as L
from ..decoders._aot import kernels as _k
from ..decoders.decode import INDEX_FIRST_WINDOW, INDEX_WORDS_PER_ROW
from ..decoders.decode import _index_words as _decoder_header_walk
from ..errors import EnvelopeError, Issue

ENVELOPE_BYTES = L.ENVELOPE_DTYPE.itemsize

#: Sort keys of the events of a spill (:data:`~..decoders.layout.SOB_KEY` …; 20-bit event numbers)
SOB_KEY, EOB_KEY, NO_SPILL_KEY = L.SOB_KEY, L.EOB_KEY, L.NO_SPILL_KEY


@dataclass(frozen=True, slots=True)
class Envelope:
    """The decoded 24-byte envelope header."""

    ldc: int
    sequence: int
    events: int
    version: int = L.ENVELOPE_VERSION
    flags: int = 0


def pack_envelope(ldc: int, sequence: int, events: int, *, flags: int = 0,
                  version: int = L.ENVELOPE_VERSION, magic: bytes = L.ENVELOPE_MAGIC) -> bytes:
    """The 24 bytes of an envelope header (``magic``/``version`` overridable to forge bad ones)."""
    rec = np.zeros((), dtype=L.ENVELOPE_DTYPE)
    rec["magic"] = magic
    rec["version"] = version
    rec["flags"] = flags
    rec["ldc"] = ldc
    rec["sequence"] = sequence
    rec["events"] = events
    return rec.tobytes()


def unpack_envelope(frame: bytes | memoryview) -> Envelope:
    """Decode and validate an envelope header frame; :class:`EnvelopeError` if it is not one."""
    n = len(frame)
    if n != ENVELOPE_BYTES:
        raise EnvelopeError(f"envelope header is {n} bytes, expected {ENVELOPE_BYTES}")
    rec = np.frombuffer(frame, dtype=L.ENVELOPE_DTYPE, count=1)[0]
    magic = bytes(rec["magic"])
    if magic != L.ENVELOPE_MAGIC:
        raise EnvelopeError(f"envelope magic {magic!r}, expected {L.ENVELOPE_MAGIC!r}")
    version = int(rec["version"])
    if version != L.ENVELOPE_VERSION:
        raise EnvelopeError(f"envelope version {version} is not supported (expected {L.ENVELOPE_VERSION})")
    flags = int(rec["flags"])
    if flags != 0:
        raise EnvelopeError(f"envelope flags {flags:#06x} are not 0")
    return Envelope(ldc=int(rec["ldc"]), sequence=int(rec["sequence"]), events=int(rec["events"]),
                    version=version, flags=flags)


def make_message(ldc: int, sequence: int, events: list[bytes] | tuple[bytes, ...]) -> list[bytes]:
    """The three frames of one message carrying ``events`` (whole DATE events, one spill)."""
    return [L.ZMQ_TOPIC, pack_envelope(ldc, sequence, len(events)), b"".join(events)]


# ---------------------------------------------------------------------------
# payload scan

#: Why :func:`scan_payload` stopped (0: it did not).
SCAN_OK = 0
SCAN_TRUNCATED = 1
SCAN_BYTE_SWAPPED = 2
SCAN_BAD_MAGIC = 3
SCAN_OLD_LAYOUT = 4
SCAN_BAD_HEADER_SIZE = 5
SCAN_OTHER_SPILL = 6
SCAN_NOT_WORDS = 7
SCAN_COUNT_MISMATCH = 8
SCAN_REASONS = {
    SCAN_OK: "",
    SCAN_TRUNCATED: "event size runs past the end of the payload (truncated)",
    SCAN_BYTE_SWAPPED: "byte-swapped DATE event (magic 0xFE5A1EDA)",
    SCAN_BAD_MAGIC: "no DATE magic where an event should start",
    SCAN_OLD_LAYOUT: "pre-3.6 DATE header layout is not supported",
    SCAN_BAD_HEADER_SIZE: "DATE header or event size not a multiple of 4, below 68 or beyond the event",
    SCAN_OTHER_SPILL: "event of another spill in the same message",
    SCAN_NOT_WORDS: "payload length is not a multiple of 4 bytes",
    SCAN_COUNT_MISMATCH: "number of events differs from the envelope",
}

_REASON_OF_ISSUE = {
    int(Issue.EVENT_TRUNCATED): SCAN_TRUNCATED,
    int(Issue.EVENT_BYTE_SWAPPED): SCAN_BYTE_SWAPPED,
    int(Issue.EVENT_BAD_MAGIC): SCAN_BAD_MAGIC,
    int(Issue.EVENT_OLD_LAYOUT): SCAN_OLD_LAYOUT,
    int(Issue.EVENT_BAD_HEADER_SIZE): SCAN_BAD_HEADER_SIZE,
}


def _scan(words: np.ndarray):
    """The decoder's header walk (the §2 rules, :func:`~..decoders.decode.index_events`' own walk over whole
    words, without the skipped-bytes and source-offset columns a message's scan does not use), cut at the
    first event it rejects; its keys and spills and whether its spill events carry one (run, spill) from
    one kernel (``summarize_scan``).

    Returns (offsets, sizes, types, keys, runs, bursts, reason, first spill event's row or -1, one spill)."""
    stop = words.shape[0]
    cols = _decoder_header_walk(words, words.view(np.uint8), 4 * stop, 0, stop, -1, False,
                                max(INDEX_FIRST_WINDOW, stop // INDEX_WORDS_PER_ROW))[0]
    offset, size, status, etype, run, spill, event = cols[:7]
    rows = status.shape[0]
    keys, bursts = np.empty(rows, np.int64), np.empty(rows, np.int64)
    n, bad, first, one_spill = _k.summarize_scan(status, etype, event, run, spill, keys, bursts)
    reason = _REASON_OF_ISSUE.get(int(bad), SCAN_BAD_MAGIC) if bad else SCAN_OK
    return (offset[:n], size[:n], etype[:n], keys[:n], run[:n], bursts[:n], reason, int(first),
            bool(one_spill))


@dataclass(frozen=True)
class PayloadScan:
    """The whole events found at the start of a payload, and why the scan stopped, if it did.

    ``offsets``/``sizes`` are in words of ``words``; ``keys`` order the events of a
    spill (START_OF_BURST 0, event number in burst + 1, END_OF_BURST :data:`EOB_KEY`,
    :data:`NO_SPILL_KEY` for run-level and unknown types). ``run``/``spill`` are
    those of the first spill event (``None`` if there is none).
    """

    words: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    types: np.ndarray
    keys: np.ndarray
    run: int | None
    spill: int | None
    reason: int
    error_offset: int | None  # byte offset in the payload where the scan stopped
    header_mismatch: int = 0  # single events whose (run, burst) disagreed with the message's: left out, counted

    @property
    def ok(self) -> bool:
        return self.reason == SCAN_OK

    @property
    def n_events(self) -> int:
        return int(self.offsets.shape[0])

    def describe(self) -> str:
        if self.ok:
            return "ok"
        return f"{SCAN_REASONS[self.reason]} (payload byte offset {self.error_offset})"


_empty_i64 = np.zeros(0, np.int64)


def scan_payload(payload: bytes | memoryview | np.ndarray, expected_events: int | None = None) -> PayloadScan:
    """Walk the DATE events of a message payload (§2 reader rules, §9 one spill per message).

    Never raises on bad data: the result holds the whole events before the first
    damage and the reason for stopping. A single event whose (run, burst)
    differs from the events around it, which carry the message's spill (the
    one most of its events carry), is header damage: left out and counted
    (``header_mismatch``). Events of another spill than the first spill event's
    stop the scan too (``SCAN_OTHER_SPILL``); run-level events
    (no spill) may come with any spill. ``expected_events`` (the envelope's
    count) turns a clean scan with another number of events into
    ``SCAN_COUNT_MISMATCH``.
    """
    if isinstance(payload, np.ndarray):
        raw = payload.view(np.uint8).reshape(-1)
    else:
        raw = np.frombuffer(payload, dtype=np.uint8)
    nbytes = raw.shape[0]
    usable = nbytes - nbytes % 4
    words = raw[:usable].view(L.WORD)
    offsets, sizes, types, keys, runs, bursts, reason, first, one_spill = _scan(words)
    err_off = None
    if reason == SCAN_OK and usable != nbytes:
        reason = SCAN_NOT_WORDS
    if reason != SCAN_OK:
        end = offsets[-1] + sizes[-1] if offsets.shape[0] else 0
        err_off = int(end) * 4
    run = spill = None
    found = offsets.shape[0]
    mismatched = 0
    if not one_spill:  # the usual message's spill events all carry one (run, spill)
        spill_idx = np.flatnonzero(keys != NO_SPILL_KEY)
        spill_runs, spill_bursts = runs[spill_idx], bursts[spill_idx]
        # the message's spill is the one most of its events carry; a single event with another
        # (run, burst) between two of the message's is header damage: left out and counted
        key = spill_runs.astype(np.int64) * 4096 + spill_bursts
        values, counts = np.unique(key, return_counts=True)
        main = values[np.argmax(counts)]
        fits = key == main
        single = ~fits & np.r_[False, fits[:-1]] & np.r_[fits[1:], False]  # between two of the message's
        if np.any(single):
            keep = np.ones(found, dtype=bool)
            keep[spill_idx[single]] = False
            mismatched = int(np.count_nonzero(single))
            offsets, sizes, types, keys, runs, bursts = (
                a[keep] for a in (offsets, sizes, types, keys, runs, bursts))
            spill_idx = np.flatnonzero(keys != NO_SPILL_KEY)
        first = int(spill_idx[0]) if spill_idx.shape[0] else -1
    if first >= 0:
        run, spill = int(runs[first]), int(bursts[first])
        other = spill_idx[(runs[spill_idx] != run) | (bursts[spill_idx] != spill)] if not one_spill else ()
        if len(other):
            cut = int(other[0])
            offsets, sizes, types, keys = offsets[:cut], sizes[:cut], types[:cut], keys[:cut]
            reason = SCAN_OTHER_SPILL
            err_off = int(offsets[cut - 1] + sizes[cut - 1]) * 4 if cut else 0
    if reason == SCAN_OK and expected_events is not None and found != expected_events:
        reason = SCAN_COUNT_MISMATCH
        err_off = usable
    return PayloadScan(words=words, offsets=offsets, sizes=sizes, types=types, keys=keys,
                       run=run, spill=spill, reason=int(reason), error_offset=err_off, header_mismatch=mismatched)


def parse_message(frames: list[bytes] | list[memoryview]) -> tuple[Envelope, PayloadScan]:
    """Validate the frames of one message: topic, envelope; scan the payload.

    Raises :class:`EnvelopeError` when the message cannot be attributed (wrong
    frame count, topic or envelope). A damaged payload does not raise: check
    ``scan.ok``; the events before the damage are whole.
    """
    if len(frames) != 3:
        raise EnvelopeError(f"message has {len(frames)} frames, expected 3 (topic, envelope, payload)")
    topic = bytes(frames[0])
    if topic != L.ZMQ_TOPIC:
        raise EnvelopeError(f"topic {topic[:32]!r}, expected {L.ZMQ_TOPIC!r}")
    env = unpack_envelope(frames[1])
    scan = scan_payload(frames[2], expected_events=env.events)
    return env, scan
