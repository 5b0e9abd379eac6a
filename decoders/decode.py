"""Public decoder surface: index DATE events in a buffer, decode a range of them.

Two steps, both numba kernels behind these wrappers:

``index_events(words)``
    walks the top-level DATE headers only and returns an :class:`EventIndex`
    (one row per event, rejected ones included with the reason);
``decode_events(words, index, channel_map)``
    decodes the equipments of a slice of the index into dense per-(event,
    channel slot) arrays (:class:`DecodedEvents`): pedestals, amplitude,
    saturation and energy per spec §11, optionally the raw samples.

``words`` is the raw bytes viewed as little-endian uint32 (:func:`as_words`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import Field

from ..config_section import ConfigSection
from . import kernel_args as _args, layout
from ._aot import kernels as _k
from .kernel_args import ISSUE_DTYPE
from .channelmap import ChannelMap
from ..errors import Issue

INDEX_WINDOW = 1 << 16
#: rows of the first window at least (each next one twice the last, up to INDEX_WINDOW): a live message of a few
#: hundred events then allocates columns of a few kB, not of 64 k rows (a megabyte per message, mapped and unmapped)
INDEX_FIRST_WINDOW = 1 << 12
#: index_events' first window has a row per this many words of input (if more than INDEX_FIRST_WINDOW): one kernel
#: call for a decoder's chunk of events of 64 words or more (NA64's are ~1000); index_bytes starts at
#: INDEX_FIRST_WINDOW (index_stream_step walks a file as it does)
INDEX_WORDS_PER_ROW = 64


def as_words(data) -> tuple[np.ndarray, int]:
    """View bytes-like ``data`` as uint32 words; returns (words, trailing bytes that make no word)."""
    if isinstance(data, np.ndarray) and data.dtype == layout.WORD and data.ndim == 1:
        return np.ascontiguousarray(data), 0
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    whole = len(buf) - len(buf) % 4
    return np.ascontiguousarray(buf[:whole]).view(layout.WORD), len(buf) - whole


class ReconstructionParams(ConfigSection):
    """Spec §11 per-channel numbers (every value is configuration; ``[monitor.reconstruction]``)."""

    section: ClassVar[str] = "monitor.reconstruction"

    pedestal_samples: int = Field(6, ge=1, le=510)
    #: ADC counts above pedestal for a hit; the channel-health occupancy uses it too (``health.hit_threshold``)
    amplitude_threshold: float = 20.0


@dataclass(frozen=True)
class EventIndex:
    """One row per top-level DATE event: where it is and what its header says.

    ``status`` is 0 for accepted events, else the :class:`Issue` that
    rejected it (then only ``offset``, ``size``, ``skipped`` and
    ``source_offset`` are meaningful; ``size`` is the number of words skipped).
    ``source_offset`` is the byte offset of the row in the input as given
    (before any re-alignment, see :func:`index_bytes`); ``skipped`` the bytes of
    the input the row stands for that were not decoded (its whole extent for a
    rejected row, 0 for an accepted one).
    """

    offset: np.ndarray  # word index of the event start
    size: np.ndarray  # words
    status: np.ndarray
    type: np.ndarray
    run: np.ndarray
    spill: np.ndarray
    event: np.ndarray
    trigger_mask: np.ndarray
    time: np.ndarray
    super_event: np.ndarray
    ldc: np.ndarray
    skipped: np.ndarray  # bytes not decoded (rejected rows)
    source_offset: np.ndarray  # byte offset in the input
    end: int  # word after the last indexed event
    truncated: bool  # the buffer ends inside an event

    def __len__(self) -> int:
        return len(self.offset)

    def slice(self, start: int, stop: int) -> "EventIndex":
        cols = {name: getattr(self, name)[start:stop] for name in _INDEX_COLUMNS}
        last = stop >= len(self)
        return EventIndex(**cols, end=self.end if last else int(self.offset[stop]), truncated=self.truncated and last)

    def take(self, rows: np.ndarray) -> "EventIndex":
        cols = {name: getattr(self, name)[rows] for name in _INDEX_COLUMNS}
        return EventIndex(**cols, end=self.end, truncated=False)

    def with_status(self, status: np.ndarray, skipped: np.ndarray | None = None) -> "EventIndex":
        """The same rows with another status column (rows rejected after indexing: spill-level checks)
        and, if given, another ``skipped`` column."""
        cols = {name: getattr(self, name) for name in _INDEX_COLUMNS}
        cols["status"] = status
        if skipped is not None:
            cols["skipped"] = skipped
        return EventIndex(**cols, end=self.end, truncated=self.truncated)


_INDEX_COLUMNS = (
    "offset", "size", "status", "type", "run", "spill", "event", "trigger_mask", "time", "super_event", "ldc",
    "skipped", "source_offset",
)
_INDEX_DTYPES = (
    np.int64, np.int64, np.int16, np.int32, np.int64, np.int32, np.int32, np.uint32, np.int64, np.bool_, np.int64,
    np.int64, np.int64,
)
_KERNEL_COLUMNS = len(_INDEX_COLUMNS) - 2  # the kernel fills all but skipped and source_offset


def _check_words(words: np.ndarray) -> None:
    if not isinstance(words, np.ndarray) or words.dtype != layout.WORD or words.ndim != 1:
        raise TypeError("words must be a 1-d little-endian uint32 numpy array (see as_words)")
    if not words.flags.c_contiguous:
        raise ValueError("words must be C-contiguous")


def _index_call(words, data, byte_limit, position, stop, want_super, allow_shift, window):
    """One call of the index kernel from word ``position``, for at most ``window`` rows (and
    :data:`INDEX_WINDOW`): (the rows' kernel columns, next word, truncated, want_super, lost_sync, shift)."""
    capacity = min(window, INDEX_WINDOW, (stop - position) // layout.DATE_HEADER_WORDS + 2)
    cols = [np.empty(capacity, dtype=dt) for dt in _INDEX_DTYPES[:_KERNEL_COLUMNS]]
    n, position, truncated, want_super, lost_sync, shift = _k.index_events(
        words, data, byte_limit, position, stop, want_super, allow_shift, _args.IndexColumns(*cols))
    return [c[:n] for c in cols], position, truncated, want_super, lost_sync, shift


def _index_words(words, data, byte_limit, start, stop, want_super, allow_shift, first_window=INDEX_FIRST_WINDOW):
    """Run the index kernel from ``start`` until ``stop``, a truncation or a byte shift; the first call asks
    for ``first_window`` rows, each next one for twice the last (up to :data:`INDEX_WINDOW`).

    Returns (columns, next word, truncated, want_super, lost_sync, shift byte or -1).
    """
    parts = []
    position, truncated, lost_sync, shift = start, False, False, -1
    window = first_window
    while position < stop and not truncated and shift < 0:
        cols, position, truncated, want_super, lost_sync, shift = _index_call(
            words, data, byte_limit, position, stop, want_super, allow_shift, window)
        window *= 2
        parts.append(cols)
    if parts:
        cols = [np.concatenate(c) for c in zip(*parts)] if len(parts) > 1 else parts[0]
    else:
        cols = [np.empty(0, dtype=dt) for dt in _INDEX_DTYPES[:_KERNEL_COLUMNS]]
    return cols, int(position), bool(truncated), int(want_super), bool(lost_sync), int(shift)


@dataclass(frozen=True)
class StreamStep:
    """One kernel call of :func:`index_bytes`' walk over a stream that has not re-aligned (:func:`index_stream_step`).

    ``columns``: the rows' columns named as :data:`INDEX_COLUMNS` without ``skipped`` (known only with the
    next row: :func:`rows_skipped`); ``source_offset`` is ``4 × offset``.
    """

    columns: dict[str, np.ndarray]
    position: int  # next word
    truncated: bool
    want_super: int
    lost_sync: bool
    shift: int  # >= 0: the next event starts at this byte, off the word grid (index_bytes re-aligns there)


def index_stream_step(words: np.ndarray, data: np.ndarray, position: int, want_super: int,
                      calls: int) -> StreamStep:
    """Kernel call number ``calls`` (from 0) of :func:`index_bytes` on a whole stream (``data``, its bytes;
    ``words``, its whole words), from word ``position`` with the walk's ``want_super`` (-1 at the start):
    the rows :func:`_index_words` asks of that call (:data:`INDEX_FIRST_WINDOW`, doubled per call, up to
    :data:`INDEX_WINDOW`), the very rows and state ``index_bytes`` gets from it, so a walk of such steps
    gives its index row for row until it needs a re-aligned copy (``shift >= 0``)."""
    _check_words(words)
    cols, position, truncated, want_super, lost_sync, shift = _index_call(
        words, data, len(data), position, len(words), want_super, True, INDEX_FIRST_WINDOW << min(calls, 40))
    columns = dict(zip(_INDEX_COLUMNS, cols))
    columns["source_offset"] = columns["offset"] * 4
    return StreamStep(columns, int(position), bool(truncated), int(want_super), bool(lost_sync), int(shift))


def stream_index(columns: dict[str, np.ndarray], next_source_offset: int, end: int, truncated: bool,
                 trailing_bytes: int = 0) -> EventIndex:
    """An :class:`EventIndex` of consecutive rows of a stream walk (:func:`index_stream_step`): ``skipped``
    from the byte where the row after them starts (``next_source_offset``; the stream's end for the last
    rows); ``trailing_bytes``: bytes after the stream's last whole word that start an event cut short,
    indexed as a truncated event (as :func:`index_bytes` does)."""
    cols = [columns[name] for name in _INDEX_COLUMNS if name != "skipped"]
    cols.insert(_INDEX_COLUMNS.index("skipped"), _skipped(cols, columns["source_offset"], next_source_offset))
    if trailing_bytes:
        cols = [np.concatenate(c) for c in zip(cols, _truncated_tail(end, 4 * end, trailing_bytes))]
        truncated = True
    return EventIndex(**dict(zip(_INDEX_COLUMNS, cols)), end=int(end), truncated=bool(truncated))


def _truncated_tail(offset: int, source_offset: int, nbytes: int) -> list[np.ndarray]:
    tail = [np.zeros(1, dtype=dt) for dt in _INDEX_DTYPES]
    for name, value in (("offset", offset), ("status", int(Issue.EVENT_TRUNCATED)), ("type", -1), ("run", -1),
                        ("spill", -1), ("event", -1), ("skipped", nbytes), ("source_offset", source_offset)):
        tail[_INDEX_COLUMNS.index(name)][0] = value
    return tail


def _skipped(cols: list[np.ndarray], source_offset: np.ndarray, end_byte: int) -> np.ndarray:
    """Bytes of each row not decoded: a rejected row's up to the next row's start (the last: up to
    ``end_byte``); for an accepted row, the 1–3 bytes dropped when the stream is re-aligned after it."""
    status = cols[_INDEX_COLUMNS.index("status")]
    size = cols[_INDEX_COLUMNS.index("size")]
    nxt = np.append(source_offset[1:], end_byte)
    return np.where(status != 0, nxt - source_offset, np.maximum(nxt - source_offset - 4 * size, 0)).astype(np.int64)


def index_events(words: np.ndarray, start: int = 0, stop: int | None = None, trailing_bytes: int = 0) -> EventIndex:
    """Index every top-level DATE event in ``words[start:stop]`` (resynchronising word by word).

    For buffers of whole, word-aligned events (a live message's payload). A
    file, where damage may shift the stream by bytes, goes through
    :func:`index_bytes`. ``trailing_bytes``: bytes after the last whole word
    (see :func:`as_words`); if there are any, they are the start of an event
    cut short, indexed as a truncated event.
    """
    _check_words(words)
    stop = len(words) if stop is None else stop
    if not 0 <= start <= stop <= len(words):
        raise ValueError(f"bad word range {start}:{stop} for {len(words)} words")
    data = words.view(np.uint8)
    cols, position, truncated, _, lost_sync, _ = _index_words(
        words, data, 4 * stop, start, stop, -1, False, max(INDEX_FIRST_WINDOW, (stop - start) // INDEX_WORDS_PER_ROW))
    source = cols[0] * 4
    # stray bytes after the last word start an event cut short, unless they are part of garbage
    tail = bool(trailing_bytes and not truncated and not lost_sync and position == stop == len(words))
    at_end = position == len(words) and not tail
    cols += [_skipped(cols, source, 4 * position + (trailing_bytes if at_end else 0)), source]
    if tail:
        cols = [np.concatenate(c) for c in zip(cols, _truncated_tail(stop, 4 * stop, trailing_bytes))]
        truncated = True
    return EventIndex(**dict(zip(_INDEX_COLUMNS, cols)), end=int(position), truncated=bool(truncated))


def index_bytes(data) -> tuple[np.ndarray, EventIndex]:
    """Index a whole byte stream (a raw file); returns ``(words, index)`` with the index into ``words``.

    Damage may shift the rest of a stream by 1–3 bytes (a byte inserted or
    lost). After any untrusted event start the reader looks for the next
    plausible event at every byte offset; when that event is not word-aligned
    the rest of the stream is copied into a new aligned buffer from there on.
    ``words`` is then the concatenation of the aligned pieces (every event
    starts on a word boundary of it; the 1–3 bytes dropped at each shift are in
    the damaged row's ``skipped``); otherwise it is a zero-copy view of ``data``.
    ``index.source_offset`` gives every row's byte offset in ``data``.
    The copy is paid only after a byte-shifted resync.
    """
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    total = len(raw)
    pieces: list[np.ndarray] = []  # aligned word pieces before the current one
    parts: list[list[np.ndarray]] = []
    base_words = 0  # words in ``pieces``
    origin = 0  # byte of ``raw`` where the current piece starts
    whole = total - total % 4
    words = raw[:whole].view(layout.WORD) if raw.flags.c_contiguous else np.ascontiguousarray(raw[:whole]).view(layout.WORD)
    position, want_super = 0, -1
    while True:
        data_here = raw[origin:]
        stop = len(words)
        cols, position, truncated, want_super, lost_sync, shift = _index_words(
            words, data_here, total - origin, position, stop, want_super, True)
        source = cols[0] * 4 + origin
        cols[0] = cols[0] + base_words
        if shift < 0:
            trailing = total - origin - 4 * stop
            tail = bool(trailing and not truncated and not lost_sync and position == stop)
            cols += [_skipped(cols, source, origin + 4 * stop if tail else total), source]
            parts.append(cols)
            if tail:
                parts.append(_truncated_tail(base_words + stop, origin + 4 * stop, trailing))
                truncated = True
            pieces.append(words)
            break
        # the next event starts ``shift`` bytes into this piece, off the word grid: re-align from there
        cols += [_skipped(cols, source, origin + shift), source]
        parts.append(cols)
        pieces.append(words[:position])
        base_words += position
        origin += shift
        rest = total - origin
        words = np.empty(rest // 4, dtype=layout.WORD)
        words.view(np.uint8)[:] = raw[origin: origin + 4 * (rest // 4)]
        position = 0
    cols = [np.concatenate(c) for c in zip(*parts)] if len(parts) > 1 else parts[0]
    out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return out, EventIndex(**dict(zip(_INDEX_COLUMNS, cols)), end=base_words + int(position), truncated=bool(truncated))


@dataclass(frozen=True, eq=False)
class DecodedEvents:
    """Decoded rows of an :class:`EventIndex` slice; arrays indexed [row] or [row, slot].

    Rows of rejected events (``status != 0``) hold zeros. ``nsamples == 0``
    marks a channel absent (zero-suppressed, damaged or never sent): its
    amplitude and energy are 0. ``trigger_time_us`` (srcID 701) and
    ``scalers`` (srcID 700, END_OF_BURST) are −1 where absent. ``issues`` lists
    every decode error and notice with srcID, kind, detail and byte offset
    relative to ``words``.
    """

    index: EventIndex
    nsamples: np.ndarray
    pedestal_even: np.ndarray
    pedestal_odd: np.ndarray
    amplitude: np.ndarray
    energy: np.ndarray
    saturated: np.ndarray
    trigger_time_us: np.ndarray
    scalers: np.ndarray
    ldc_mask: np.ndarray
    errors: np.ndarray  # decode errors per row
    issues: np.ndarray  # ISSUE_DTYPE
    samples: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.index)

    @property
    def nslots(self) -> int:
        return self.nsamples.shape[1]

    @property
    def present(self) -> np.ndarray:
        return self.nsamples > 0

    def __getattr__(self, name):
        # per-event header columns straight from the index: type, run, spill, event, ...
        if name in _INDEX_COLUMNS:
            return getattr(self.index, name)
        raise AttributeError(name)

    @property
    def accepted(self) -> np.ndarray:
        return self.index.status == 0

    @property
    def is_data(self) -> np.ndarray:
        """Accepted PHYSICS or CALIBRATION events."""
        t = self.index.type
        return self.accepted & ((t == layout.PHYSICS_EVENT) | (t == layout.CALIBRATION_EVENT))


class DecodeBuffers:
    """Output arrays of :func:`decode_events` kept from one call to the next (the chunks of a spill).

    Fresh arrays for every chunk cost more than filling them: each new page is faulted in by the
    kernel (a 4096-event chunk's outputs are 17 MB). With buffers, a call's results are views into
    them, valid until the next call with the same buffers: for a caller that is done with one chunk
    before it decodes the next (:meth:`~na64_online.monitor.pipeline.SpillProcessor.accumulate`),
    and that does not write into them (the kernel relies on what it left there). Not shared
    between threads.
    """

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self.rows = 0  # rows of the channel outputs (the largest chunk decoded into them)

    def take(self, name: str, shape: tuple[int, ...], dtype, fill=None, clean: bool = False) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype``, reusing storage: uninitialised, or all ``fill``,
        or — ``clean`` — zeros when new or of another shape than last time, else as the last call left it."""
        size = int(math.prod(shape))
        flat = self._flat.get(name)
        fresh = flat is None or flat.dtype != np.dtype(dtype) or len(flat) < size
        if fresh:
            flat = self._flat[name] = (np.zeros if clean else np.empty)(max(size, 1), dtype=dtype)
        out = flat[:size].reshape(shape)
        if fill is not None:
            out.fill(fill)
        elif clean and not fresh and self._shape.get(name) != tuple(shape):
            out.fill(0)
        self._shape[name] = tuple(shape)
        return out


@dataclass(frozen=True)
class SlotSums:
    """Per-slot statistics a decode adds its rows to (:func:`decode_events` ``slot_sums``).

    ``select`` (bool per row of the decoded index slice) picks the rows; ``counts`` (3, slots) int64
    counts presence, hits (amplitude > ``threshold``) and saturation, ``sums`` (6, slots) float64 sums
    the even pedestal and its square, the odd pedestal and its square, the hit amplitude and its square
    (rows: ``kernel_args.SLOT_COUNTS``, ``kernel_args.SLOT_SUMS``), both updated in place.
    """

    select: np.ndarray
    threshold: float
    counts: np.ndarray
    sums: np.ndarray

    def checked(self, rows: int, slots: int):
        """The kernel's tuple, after checking every shape and dtype against the decode."""
        select = np.ascontiguousarray(self.select, dtype=np.bool_)
        if select.shape != (rows,):
            raise ValueError(f"slot_sums.select must have one flag per row ({rows}), not {select.shape}")
        for name, array, dtype, width in (("counts", self.counts, np.int64, len(_args.SLOT_COUNTS)),
                                          ("sums", self.sums, np.float64, len(_args.SLOT_SUMS))):
            if (not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != (width, slots)
                    or not array.flags.c_contiguous or not array.flags.writeable):
                raise ValueError(f"slot_sums.{name} must be a writable C-contiguous {np.dtype(dtype)} array of "
                                 f"shape {(width, slots)}")
        return _args.SlotSums(select, float(self.threshold), self.counts, self.sums)


@dataclass(frozen=True, eq=False)
class PlannedRows:
    """Built super events whose sub-events stay where they were received (:func:`decode_events` ``planned``).

    ``payloads``: the received buffers (C-contiguous uint32 word arrays, kept alive by this object);
    ``subs``: (n, 3) int64 — per sub-event, in building order, its payload, word offset and words;
    ``first``: rows + 1 int64 — row k's sub-events are ``first[k]`` … ``first[k + 1]``; ``position``: (n,)
    int64 — where each sub-event lies in the gathered words (issue offsets are given there); ``offset``,
    ``size``: each row's super event in the gathered words. The words passed with it hold each row's
    17-word super header at its offset: their index must give exactly these rows (:meth:`indexes`)."""

    payloads: tuple
    subs: np.ndarray
    first: np.ndarray
    position: np.ndarray
    offset: np.ndarray
    size: np.ndarray

    def rows(self, start: int, stop: int) -> "PlannedRows":
        """Rows ``start`` … ``stop`` (as :meth:`EventIndex.slice`)."""
        return PlannedRows(self.payloads, self.subs, self.first[start:stop + 1], self.position,
                           self.offset[start:stop], self.size[start:stop])

    def event_words(self, words: np.ndarray, row: int) -> np.ndarray:
        """Row ``row``'s super event as gathered words (a copy): its header from ``words``, then its sub-events."""
        head = words[self.offset[row]:self.offset[row] + layout.DATE_HEADER_WORDS]
        subs = self.subs[self.first[row]:self.first[row + 1]]
        return np.concatenate([head, *(self.payloads[f][o:o + n] for f, o, n in subs)])

    def indexes(self, index: EventIndex) -> bool:
        """Whether ``index`` has exactly these rows (where each starts, how long it is)."""
        return (len(index) == len(self.offset) and not index.truncated
                and np.array_equal(index.offset, self.offset) and np.array_equal(index.size, self.size))

    def checked(self, rows: int, words: int) -> "_args.PlannedSubEvents":
        """The kernel's tuple, after checking every array and every sub-event against its payload."""
        for p in self.payloads:
            if not (isinstance(p, np.ndarray) and p.dtype == layout.WORD and p.ndim == 1 and p.flags.c_contiguous):
                raise ValueError("planned payloads must be C-contiguous uint32 word arrays")
        subs, first, position = self.subs, self.first, self.position
        for name, array, ndim in (("subs", subs, 2), ("first", first, 1), ("position", position, 1)):
            if (not isinstance(array, np.ndarray) or array.dtype != np.int64 or array.ndim != ndim
                    or not array.flags.c_contiguous):
                raise ValueError(f"planned {name} must be a C-contiguous int64 array of {ndim} dimension(s)")
        n = subs.shape[0]
        length = np.array([p.shape[0] for p in self.payloads], dtype=np.int64)
        if subs.shape[1:] != (len(_args.PLAN_COLUMNS),) or position.shape != (n,) or first.shape != (rows + 1,):
            raise ValueError(f"planned rows: subs {subs.shape}, first {first.shape}, position {position.shape} "
                             f"do not fit {rows} rows")
        if rows and (first[0] < 0 or first[-1] > n or np.any(first[1:] < first[:-1])):
            raise ValueError("planned first sub-events must be non-decreasing within the sub-events")
        if n:
            payload, offset, size = subs[:, 0], subs[:, 1], subs[:, 2]
            if payload.min() < 0 or payload.max() >= len(length):
                raise ValueError("a planned sub-event names no payload")
            if (offset.min() < 0 or size.min() < layout.DATE_HEADER_WORDS or np.any(offset > length[payload] - size)
                    or position.min() < 0 or np.any(position > words - size)):
                raise ValueError("a planned sub-event lies outside its payload or the gathered words")
        address = np.array([p.ctypes.data for p in self.payloads], dtype=np.int64)
        return _args.PlannedSubEvents(address, length, subs, first, position)


def decode_events(
    words: np.ndarray,
    index: EventIndex,
    channel_map: ChannelMap,
    params: ReconstructionParams = ReconstructionParams(),
    *,
    with_samples: bool = False,
    max_samples: int = 32,
    buffers: "DecodeBuffers | None" = None,
    slot_sums: "SlotSums | None" = None,
    planned: PlannedRows | None = None,
) -> DecodedEvents:
    """Decode the events of ``index`` (rows of ``index_events(words)``).

    ``planned``: the rows are built super events of which ``words`` holds the headers only, the
    sub-events being read from where :class:`PlannedRows` says (the same outputs as decoding the
    gathered words, when every sub-event's header has the DATE magic and its planned size).

    ``buffers``: reuse these output arrays (see :class:`DecodeBuffers`); the result's arrays are then
    views into them, valid until the next call with the same buffers.
    ``slot_sums``: also add the rows it selects to its per-slot statistics, while decoding them
    (:class:`SlotSums`).
    """
    _check_words(words)
    n, nslots = len(index), len(channel_map)
    accepted = index.status == 0
    if n and (
        index.offset.min() < 0
        or (index.offset + np.where(accepted, index.size, 0)).max() > len(words)
        or np.any(accepted & (index.size < layout.DATE_HEADER_WORDS))
    ):
        raise ValueError("index does not belong to these words")
    sources = None
    if planned is not None:
        if not planned.indexes(index):
            raise ValueError("index does not give the planned rows")
        sources = planned.checked(n, len(words))
    if with_samples and not 1 <= max_samples <= layout.MAX_SAMPLES:
        raise ValueError(f"max_samples must be within 1..{layout.MAX_SAMPLES}")
    rows = _args.EventRows(np.ascontiguousarray(index.offset, dtype=np.int64),
                           np.ascontiguousarray(index.size, dtype=np.int64), np.ascontiguousarray(index.status))
    setup = _args.DecodeSetup(channel_map.src_kind, channel_map.lookup, np.ascontiguousarray(channel_map.gain_gev))
    estimator_params = _args.EstimatorParams(int(params.pedestal_samples), float(params.amplitude_threshold),
                                             bool(with_samples))
    if slot_sums is None:
        sums = _args.SlotSums(np.zeros(0, dtype=np.bool_), 0.0, np.zeros((len(_args.SLOT_COUNTS), nslots), np.int64),
                              np.zeros((len(_args.SLOT_SUMS), nslots)))
    else:
        sums = slot_sums.checked(n, nslots)
    # channel outputs must arrive clean (zero estimates wherever nsamples is 0: see the kernel). With buffers
    # they keep the rows of the largest chunk so far (the kernel writes the first n, the rest stay clean), so
    # a chunk of another size (a spill's last one, the next spill's first) finds them clean instead of
    # clearing 4.2 kB per row: the estimate planes would move if their row count changed
    buffers = buffers or DecodeBuffers()
    rows_kept = buffers.rows = max(n, buffers.rows)
    take = buffers.take
    channels = _args.ChannelOutputs(
        nsamples=take("nsamples", (rows_kept, nslots), np.uint16, clean=True),
        estimates=take("estimates", (len(_args.ESTIMATES), rows_kept, nslots), np.float64, clean=True),
        saturated=take("saturated", (rows_kept, nslots), np.bool_, clean=True),
        samples=np.zeros((n, nslots, max_samples) if with_samples else (0, 0, 0), dtype=np.uint16),
        previous=np.empty(nslots, dtype=np.uint16),
    )
    estimates = dict(zip(_args.ESTIMATES, channels.estimates[:, :n]))  # one contiguous (n, nslots) plane each
    capacity = 64 + 4 * n
    while True:
        events = _args.EventOutputs(trigger_time=take("trigger_time", (n,), np.int64, -1),
                                    scalers=take("scalers", (n, layout.N_SCALERS), np.int64, -1),
                                    ldc_mask=take("ldc_mask", (n,), np.uint32, 0))
        log = _args.IssueLog(take("issues", (capacity,), ISSUE_DTYPE), np.zeros(1, dtype=np.int64),
                             take("event_errors", (n,), np.int32, 0))
        before = (sums.counts.copy(), sums.sums.copy()) if len(sums.select) else None
        if sources is None:
            _k.decode_events(words, rows, setup, estimator_params, channels, events, log, sums)
        else:
            _k.decode_planned_events(words, rows, sources, setup, estimator_params, channels, events, log, sums)
        total = int(log.counters[0])
        if total <= capacity:
            break
        # rare: more issues than room; decode again with room for all (outputs are overwritten, sums restored)
        capacity = total
        if before is not None:
            sums.counts[...], sums.sums[...] = before
    return DecodedEvents(
        index=index,
        nsamples=channels.nsamples[:n],
        pedestal_even=estimates["pedestal_even"],
        pedestal_odd=estimates["pedestal_odd"],
        amplitude=estimates["amplitude"],
        energy=estimates["energy"],
        saturated=channels.saturated[:n],
        trigger_time_us=events.trigger_time,
        scalers=events.scalers,
        ldc_mask=events.ldc_mask,
        errors=log.event_errors,
        issues=log.records[:total].copy(),
        samples=channels.samples if with_samples else None,
    )


def issue_counts(index: EventIndex, decoded_issues: np.ndarray) -> dict[tuple[int, str], int]:
    """Counts by (srcID or −1, issue label): rejected events of the index plus decode issues."""
    counts: dict[tuple[int, str], int] = {}
    for kind in index.status[index.status != 0]:
        key = (-1, Issue(int(kind)).label)
        counts[key] = counts.get(key, 0) + 1
    if len(decoded_issues):
        keys, n = np.unique(decoded_issues[["src_id", "kind"]], return_counts=True)
        for (src, kind), c in zip(keys.tolist(), n.tolist()):
            key = (int(src), Issue(int(kind)).label)
            counts[key] = counts.get(key, 0) + int(c)
    return counts


def fragment_starts(index: EventIndex) -> np.ndarray:
    """True where a new event starts; False for a plain event that continues the previous one.

    Readout nodes that write plain events send one fragment each per trigger:
    consecutive accepted plain events with the same type, run, burst and event
    number from different LDCs are one event, as an event builder would join
    them. Super events and rejected events always start their own.
    """
    starts = np.ones(len(index), dtype=bool)
    if len(index) > 1:
        plain_ok = (index.status == 0) & ~index.super_event
        same = plain_ok[1:] & plain_ok[:-1] & (index.ldc[1:] != index.ldc[:-1])
        for name in ("type", "run", "spill", "event"):
            column = getattr(index, name)
            same &= column[1:] == column[:-1]
        starts[1:] = ~same
    return starts


def merge_fragments(decoded: DecodedEvents, starts: np.ndarray) -> DecodedEvents:
    """Join the rows of plain-event fragments (see :func:`fragment_starts`) into one row each."""
    if starts.all():
        return decoded
    first = np.flatnonzero(starts)
    group = np.cumsum(starts) - 1
    index = decoded.index.take(first)
    index = EventIndex(**{**{n: getattr(index, n) for n in _INDEX_COLUMNS},
                          "size": np.add.reduceat(decoded.index.size, first),
                          "skipped": np.add.reduceat(decoded.index.skipped, first)},
                       end=decoded.index.end, truncated=decoded.index.truncated)
    issues = decoded.issues.copy()
    issues["event"] = group[issues["event"]]
    # fragments come from different LDCs, so at most one holds each channel: absent ones are 0
    return DecodedEvents(
        index=index,
        nsamples=np.maximum.reduceat(decoded.nsamples, first),
        pedestal_even=np.add.reduceat(decoded.pedestal_even, first),
        pedestal_odd=np.add.reduceat(decoded.pedestal_odd, first),
        amplitude=np.add.reduceat(decoded.amplitude, first),
        energy=np.add.reduceat(decoded.energy, first),
        saturated=np.logical_or.reduceat(decoded.saturated, first),
        trigger_time_us=np.maximum.reduceat(decoded.trigger_time_us, first),
        scalers=np.maximum.reduceat(decoded.scalers, first),
        ldc_mask=np.bitwise_or.reduceat(decoded.ldc_mask, first),
        errors=np.add.reduceat(decoded.errors, first),
        issues=issues,
        samples=None if decoded.samples is None else np.add.reduceat(decoded.samples, first),
    )
