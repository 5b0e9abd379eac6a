"""Event building and spill assembly across readout nodes (issue #3, spec §1, §2.1, §9).

Each readout node (LDC) sends, per spill, its own sub-events in order:
START_OF_BURST, PHYSICS/CALIBRATION events with the event number in burst
running 1, 2, 3 …, END_OF_BURST. :class:`EventBuilder` groups the sub-events
of one spill from every LDC by (run, spill, event number in burst) and writes
each group as one DATE *super event*, exactly as the event builder writes raw
files (spec §2.1, §10): a 17-word header copied from the first sub-event, word
13 with the super-event bit set, LDC id 0, GDC id ``gdc_id``, size = header +
the sub-events, which follow in ascending LDC order. The bytes handed on are
therefore the very layout a raw file has, and the decoder reads live data and
files with one code path.

Nothing is copied here (protocol ``na64-worker/5``): a chunk is a *plan* — the
message payloads it references (the received frames, kept alive by the chunk)
and per sub-event ``(payload, word offset, words)`` in building order, with the
group starts (one group per super event). Whoever decodes it — a worker, or a
test through :attr:`BuiltChunk.words` — gathers the sub-events into its own
buffer with :func:`gather`, which writes each super event's header in front of
its sub-events: the very bytes a raw file holds.

Rules (all counted, none silent):

* an LDC *joins* at its first START_OF_BURST: what it sends before is skipped
  (``skipped_before_join``) — a monitor started mid-spill joins cleanly at the
  next spill; once joined, data of an unknown spill opens it (its
  START_OF_BURST was lost);
* an event is built as soon as every expected LDC has either sent it or gone
  past it (an LDC's stream is ordered, so what it skipped will not come), or
  when the spill closes; events some expected LDC did not send are built from
  what there is and counted (``incomplete_events``);
* a spill is complete when every expected LDC sent its END_OF_BURST; it is
  closed as soon as every expected LDC sent END_OF_BURST or moved on to a
  later spill, or after ``spill_timeout_s`` without data for it, or when more
  than ``max_open_spills`` are open; missing END_OF_BURSTs are listed
  (``missing_ldcs``) and the spill is flagged incomplete;
* a single sub-event whose (run, burst) differs from the rest of its message
  (which is all of one spill, spec §9) is header damage, not another spill:
  left out and counted (``header_mismatch``, in the spill's QA record);
* sub-events for an already built event, a duplicate, or data for a closed
  spill are late: counted, never merged (late data for a closed spill is
  reported with the next spill that closes, and in the totals);
* memory is bounded: at most ``max_open_spills`` spills, at most
  ``max_pending_bytes`` of unbuilt sub-events per spill (beyond, everything
  pending is built at once, incomplete if need be), at most
  ``chunk_events`` built events before they are handed on; with
  ``max_buffered_bytes`` (the service's memory budget share) all open spills
  together hold at most that many bytes — the message payloads unbuilt
  sub-events keep alive, and built events not handed on — beyond which the
  fullest spill is built at once and handed on (``memory_builds``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np

from ..decoders import layout as L
from ..decoders._aot import kernels as _k
from ..decoders.decode import PlannedRows
from ..decoders.kernel_args import PLAN_COLUMNS as PLAN_COLUMN_NAMES

from .envelope import EOB_KEY, NO_SPILL_KEY, SOB_KEY, PayloadScan, scan_payload

INF_KEY = 1 << 62
#: sequence-jump sizes kept per closed spill (all are counted)
MAX_JUMPS_KEPT = 16
DATA_TYPES = (L.PHYSICS_EVENT, L.CALIBRATION_EVENT)
CONTROL_TYPES = (L.START_OF_BURST, L.END_OF_BURST)

_HDR = L.DATE_HEADER_WORDS


#: largest task a plan may describe (words of built events): 256 MB, a worker's message limit
MAX_TASK_WORDS = 64 << 20
#: sub-event columns of a plan: payload index, word offset, words
PLAN_COLUMNS = len(PLAN_COLUMN_NAMES)


class PlanError(ValueError):
    """A chunk's plan that does not describe whole sub-events inside its payloads (refused, never gathered)."""


def copy_events(dst: np.ndarray, dst_pos: np.ndarray, src: np.ndarray, src_off: np.ndarray,
                sizes: np.ndarray) -> None:
    """Copy events ``src[src_off[i]:src_off[i] + sizes[i]]`` to ``dst[dst_pos[i]:…]`` (uint32 word arrays,
    C-contiguous, not the same memory)."""
    if dst.dtype != L.WORD or src.dtype != L.WORD or not (dst.flags.c_contiguous and src.flags.c_contiguous):
        raise ValueError("event copy needs C-contiguous uint32 word arrays")
    if np.may_share_memory(dst, src):
        raise ValueError("event copy between overlapping buffers")
    if sizes.shape[0]:
        if (src_off.min() < 0 or dst_pos.min() < 0 or sizes.min() < 0
                or (src_off + sizes).max() > src.shape[0] or (dst_pos + sizes).max() > dst.shape[0]):
            raise ValueError("event copy out of bounds")
        _k.copy_events(dst, np.ascontiguousarray(dst_pos, dtype=np.int64), src,
                       np.ascontiguousarray(src_off, dtype=np.int64), np.ascontiguousarray(sizes, dtype=np.int64))


def write_super_headers(dst: np.ndarray, g_pos: np.ndarray, g_size: np.ndarray, gdc: int) -> None:
    """Write the 17-word header of each super event at ``g_pos`` (``g_size`` words long) from the header
    of its first sub-event, which follows it: size, header size, super-event bit, LDC 0, GDC ``gdc``."""
    if g_pos.shape[0]:
        if g_pos.min() < 0 or (g_size < 2 * _HDR).any() or (g_pos + g_size).max() > dst.shape[0]:
            raise ValueError("super event header out of bounds")
        _k.write_headers(dst, np.ascontiguousarray(g_pos, dtype=np.int64),
                         np.ascontiguousarray(g_size, dtype=np.int64), int(gdc))


def validate_plan(subs: np.ndarray, groups: np.ndarray, payload_words: Sequence[int]) -> int:
    """Check a plan before any memory is touched; returns the words the built events take.

    ``subs``: (n, 3) ``<i8`` — per sub-event, in building order, the payload it is in, its word offset
    there and its words (>= one 17-word header); ``groups``: n_groups + 1 ``<i8`` sub-event indices, the
    first 0, strictly increasing, the last n (one group per super event); ``payload_words``: the words of
    each payload. Raises :class:`PlanError` saying what is wrong."""
    if subs.ndim != 2 or subs.shape[1] != PLAN_COLUMNS or subs.dtype != np.int64:
        raise PlanError(f"plan sub-events: shape {subs.shape} {subs.dtype}, expected (n, {PLAN_COLUMNS}) int64")
    if groups.ndim != 1 or groups.dtype != np.int64 or groups.shape[0] < 2:
        raise PlanError(f"plan groups: shape {groups.shape} {groups.dtype}, expected at least 2 int64 starts")
    n = subs.shape[0]
    if groups[0] != 0 or groups[-1] != n or np.any(groups[1:] <= groups[:-1]):
        raise PlanError(f"plan groups must run strictly increasing from 0 to {n} sub-events")
    frame, off, size = subs[:, 0], subs[:, 1], subs[:, 2]
    k = len(payload_words)
    if frame.min() < 0 or frame.max() >= k:
        raise PlanError(f"plan names payloads outside 0 … {k - 1}")
    if off.min() < 0 or size.min() < _HDR:
        raise PlanError(f"plan has a negative offset or a sub-event under {_HDR} words")
    limit = np.asarray(payload_words, dtype=np.int64)[frame]
    if np.any(size > limit) or np.any(off > limit - size):
        raise PlanError("plan has a sub-event beyond the end of its payload")
    total = int(size.sum()) + _HDR * (groups.shape[0] - 1)
    if total > MAX_TASK_WORDS:
        raise PlanError(f"plan describes {total} words, more than {MAX_TASK_WORDS}")
    return total


def _words_buffer(out: np.ndarray | None, total: int) -> np.ndarray:
    if out is None or out.shape[0] < total or out.dtype != L.WORD or not out.flags.c_contiguous:
        out = np.empty(total + total // 8, L.WORD)  # room for a somewhat larger next chunk
    return out[:total]


def gather(payloads: Sequence[np.ndarray], subs: np.ndarray, groups: np.ndarray, gdc: int,
           out: np.ndarray | None = None) -> np.ndarray:
    """The built super events a plan describes (raw-file layout), as words.

    The plan is validated first (:func:`validate_plan`); each sub-event is copied once, from its payload to
    its place, and each super event's 17-word header written in front of its sub-events from the first one's
    (:func:`write_super_headers`). ``out``: a buffer to write into if large enough (a view of it is returned)."""
    dst = _words_buffer(out, validate_plan(subs, groups, [p.shape[0] for p in payloads]))
    size = subs[:, 2]
    ngroups = groups.shape[0] - 1
    counts = np.diff(groups)
    g_size = np.add.reduceat(size, groups[:-1]) + _HDR
    g_pos = np.cumsum(g_size) - g_size
    group = np.repeat(np.arange(ngroups), counts)
    within = np.cumsum(size) - size
    dst_pos = g_pos[group] + _HDR + (within - within[groups[:-1]][group])
    frame = subs[:, 0]
    if len(payloads) == 1:
        copy_events(dst, dst_pos, payloads[0], subs[:, 1], size)
    else:
        order = np.argsort(frame, kind="stable")
        cuts = np.searchsorted(frame[order], np.arange(len(payloads) + 1))
        for f, payload in enumerate(payloads):
            sel = order[cuts[f]:cuts[f + 1]]
            if sel.shape[0]:
                copy_events(dst, dst_pos[sel], payload, subs[sel, 1], size[sel])
    write_super_headers(dst, g_pos, g_size, gdc)
    return dst


def plan_headers(payloads: Sequence[np.ndarray], subs: np.ndarray, groups: np.ndarray, gdc: int,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, PlannedRows | None]:
    """A plan's super events for decoding where their sub-events lie, without gathering them: words as
    :func:`gather` gives them but holding only each super event's header (and its first sub-event's), the
    rest of the buffer as it was; and the :class:`~na64_online.decoders.decode.PlannedRows` to decode the
    sub-events from their payloads with. ``None`` for the rows when a sub-event's header lacks the DATE
    magic or gives another size than the plan: such a plan is decoded gathered, as its damage demands.
    The plan is validated first (:func:`validate_plan`), then walked once by a kernel."""
    payloads = tuple(np.ascontiguousarray(p, dtype=L.WORD) for p in payloads)
    dst = _words_buffer(out, validate_plan(subs, groups, [p.shape[0] for p in payloads]))
    subs = np.ascontiguousarray(subs, dtype=np.int64)
    groups = np.ascontiguousarray(groups, dtype=np.int64)
    position = np.empty(subs.shape[0], np.int64)
    g_pos, g_size = np.empty(groups.shape[0] - 1, np.int64), np.empty(groups.shape[0] - 1, np.int64)
    address = np.array([p.ctypes.data for p in payloads], dtype=np.int64)
    length = np.array([p.shape[0] for p in payloads], dtype=np.int64)
    irregular = _k.plan_headers(address, length, subs, groups, int(gdc), dst, position, g_pos, g_size)
    if irregular:
        return dst, None
    return dst, PlannedRows(payloads, subs, groups, position, g_pos, g_size)


@dataclass(frozen=True, eq=False)
class BuiltChunk:
    """Built super events of one spill, in order, as a plan over the message payloads they came in.

    ``payloads``: the payloads' words (uint32 views of the received frames); ``sources``: the same payloads as
    they are sent on (the received ``zmq.Frame`` objects, or the arrays); ``subs``/``groups``: the plan
    (:func:`validate_plan`); ``types``/``keys``: each super event's type and sort key (event number + 1,
    :data:`~.envelope.SOB_KEY`, :data:`~.envelope.EOB_KEY`). :attr:`words` gathers the events (a copy:
    tests and tools; the service sends the plan)."""

    run: int
    spill: int
    index: int  # chunk number within the spill: 0, 1, …
    payloads: tuple
    sources: tuple
    subs: np.ndarray  # (sub-events, 3) int64: payload, word offset, words
    groups: np.ndarray  # super events + 1, int64: first sub-event of each, then the number of sub-events
    types: np.ndarray
    keys: np.ndarray
    gdc: int
    final: bool  # the spill's last chunk

    @property
    def n_events(self) -> int:
        return int(self.types.shape[0])

    @property
    def data_events(self) -> int:
        """PHYSICS + CALIBRATION events (what a drop loses)."""
        return int(np.count_nonzero(np.isin(self.types, DATA_TYPES)))

    def data_event_numbers(self) -> np.ndarray:
        """Event numbers in burst of its PHYSICS/CALIBRATION events (from the plan: no index of built words)."""
        return (self.keys[np.isin(self.types, DATA_TYPES)] - 1).astype(np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of the payloads it references (what it keeps alive)."""
        return int(sum(p.nbytes for p in self.payloads))

    @property
    def sizes(self) -> np.ndarray:
        """Words of each super event."""
        return np.add.reduceat(self.subs[:, 2], self.groups[:-1]) + _HDR if self.n_events else np.zeros(0, np.int64)

    @property
    def offsets(self) -> np.ndarray:
        """Word offset of each super event in :attr:`words`."""
        sizes = self.sizes
        return np.cumsum(sizes) - sizes

    @cached_property
    def words(self) -> np.ndarray:
        """The built super events (raw-file layout), gathered: a copy."""
        if not self.n_events:
            return np.zeros(0, L.WORD)
        return gather(self.payloads, self.subs, self.groups, self.gdc)

    def plan_frames(self) -> list[bytes]:
        """The plan as it travels: sub-events (``<i8``, n × 3), group starts (``<i8``, n_groups + 1)."""
        return [self.subs.astype("<i8", copy=False).tobytes(), self.groups.astype("<i8", copy=False).tobytes()]

    def control_only(self) -> "BuiltChunk | None":
        """The START_OF_BURST / END_OF_BURST events of this chunk (kept when its data is dropped): the same
        payloads, the plan cut to their groups."""
        keep = np.flatnonzero(~np.isin(self.types, DATA_TYPES))
        if not keep.shape[0]:
            return None
        counts = np.diff(self.groups)[keep]
        rows = np.concatenate([np.arange(self.groups[g], self.groups[g + 1]) for g in keep.tolist()])
        groups = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        return BuiltChunk(self.run, self.spill, self.index, self.payloads, self.sources, self.subs[rows], groups,
                          self.types[keep], self.keys[keep], self.gdc, self.final)

    @classmethod
    def from_words(cls, run: int, spill: int, index: int, words: np.ndarray) -> "BuiltChunk":
        """The plan of super events already built (a raw file's), over ``words`` as the one payload."""
        words = np.ascontiguousarray(words, dtype=L.WORD)
        subs, starts, types, keys = [], [], [], []
        gdc = 0
        pos, n = 0, words.shape[0]
        while pos + _HDR <= n:
            size = int(words[pos + L.H_SIZE]) // 4
            hsize = int(words[pos + L.H_HEADER_SIZE]) // 4
            if size < 2 * _HDR or pos + size > n or not words[pos + L.H_ATTRIBUTES_2] & L.SUPER_EVENT_BIT:
                raise PlanError(f"word {pos}: not a whole super event")
            starts.append(len(subs))
            types.append(int(words[pos + L.H_TYPE]) & L.TYPE_MASK)
            event = int(words[pos + L.H_BURST_EVENT]) & L.EVENT_IN_BURST_MASK
            keys.append({L.START_OF_BURST: SOB_KEY, L.END_OF_BURST: EOB_KEY}.get(types[-1], event + 1))
            gdc = int(words[pos + L.H_GDC])
            sub = pos + hsize
            while sub < pos + size:
                ssize = int(words[sub + L.H_SIZE]) // 4
                if ssize < _HDR or sub + ssize > pos + size:
                    raise PlanError(f"word {sub}: sub-event of {ssize} words does not fit its super event")
                subs.append((0, sub, ssize))
                sub += ssize
            pos += size
        return cls(run, spill, index, (words,), (words,), np.array(subs, np.int64).reshape(-1, PLAN_COLUMNS),
                   np.array(starts + [len(subs)], np.int64), np.array(types, np.int32), np.array(keys, np.int64),
                   gdc, final=True)


@dataclass(frozen=True)
class ClosedSpill:
    """A spill the builder closed; all its chunks (``chunks`` of them) were emitted before it."""

    run: int
    spill: int
    complete: bool
    missing_ldcs: tuple[int, ...]  # expected LDCs that never sent END_OF_BURST
    incomplete_events: int
    late_events: int
    lost_messages: dict[int, int]
    chunks: int
    events: int  # super events built (all types)
    data_events: int  # PHYSICS + CALIBRATION super events built
    reason: str  # "end_of_burst", "moved_on", "timeout", "overflow", "flush"
    opened_at: float
    closed_at: float
    last_eob_at: float | None  # when the last END_OF_BURST arrived
    header_mismatch: int = 0  # sub-events left out: (run, burst) disagreeing with their message's spill
    #: expected LDCs that joined (first START_OF_BURST) only at a later spill: the service started while this
    #: spill was under way and saw part of it, so it is not to be judged
    joined_late: tuple[int, ...] = ()
    #: bad messages reported with this spill: LDC label -> kind -> count (see daq.subscriber)
    bad_messages: dict[str, dict[str, int]] = field(default_factory=dict)
    #: (LDC label, size) of the sequence jumps reported with this spill (at most MAX_JUMPS_KEPT)
    sequence_jumps: tuple[tuple[str, int], ...] = ()


@dataclass
class BuilderStats:
    """Totals since start (service metrics)."""

    messages: int = 0
    sub_events: int = 0
    built_events: int = 0
    incomplete_events: int = 0
    late_events: int = 0
    header_mismatch: int = 0
    skipped_before_join: int = 0
    other_events: int = 0  # run-level and unknown types: belong to no spill
    spills_opened: int = 0
    spills_closed: int = 0
    spills_incomplete: int = 0
    forced_builds: int = 0
    memory_builds: int = 0  # forced builds because the open spills held more than max_buffered_bytes
    chunks: int = 0


class HeldPayloads:
    """Bytes of the payloads something holds, each payload once however many references it has (a message
    cut by a build is referenced by a plan and by its pending rest): a running count, O(1) per change."""

    __slots__ = ("_refs", "bytes")

    def __init__(self) -> None:
        self._refs: dict[int, list] = {}  # id(payload) -> [references, bytes]
        self.bytes = 0

    def hold(self, payload) -> None:
        entry = self._refs.get(id(payload))
        if entry is None:
            self._refs[id(payload)] = [1, payload.nbytes]
            self.bytes += payload.nbytes
        else:
            entry[0] += 1

    def release(self, payload) -> None:
        key = id(payload)
        entry = self._refs[key]
        entry[0] -= 1
        if not entry[0]:
            del self._refs[key]
            self.bytes -= entry[1]

    def __contains__(self, payload) -> bool:
        return id(payload) in self._refs

    def __len__(self) -> int:
        return len(self._refs)


@dataclass
class _Batch:
    """Sub-events of one message (views of its payload; ``source``: the payload as it is sent on)."""

    words: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    keys: np.ndarray
    types: np.ndarray
    source: object

    def split(self, k: int) -> tuple["_Batch", "_Batch"]:
        """The first ``k`` sub-events and the rest (views, no copy)."""
        return (_Batch(self.words, self.offsets[:k], self.sizes[:k], self.keys[:k], self.types[:k], self.source),
                _Batch(self.words, self.offsets[k:], self.sizes[k:], self.keys[k:], self.types[k:], self.source))


@dataclass
class _ChunkPlan:
    """The chunk being planned: the payloads it references and, per slice of super events built, the
    sub-events' (payload, offset, words), the sub-events per super event, their types and keys."""

    payloads: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    slot: dict = field(default_factory=dict)  # id(payload words) -> index in payloads
    subs: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    types: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    used: int = 0  # words of the built events
    events: int = 0

    def payload_index(self, batch: "_Batch", held: HeldPayloads) -> int:
        i = self.slot.get(id(batch.words))
        if i is None:
            i = self.slot[id(batch.words)] = len(self.payloads)
            self.payloads.append(batch.words)
            self.sources.append(batch.source)
            held.hold(batch.words)  # the plan references it until handed on
        return i

    def chunk(self, run: int, spill: int, index: int, gdc: int, final: bool) -> BuiltChunk:
        cat = (lambda parts: parts[0] if len(parts) == 1 else np.concatenate(parts))
        counts = cat(self.counts)
        groups = np.zeros(counts.shape[0] + 1, np.int64)
        np.cumsum(counts, out=groups[1:])
        return BuiltChunk(run, spill, index, tuple(self.payloads), tuple(self.sources), cat(self.subs), groups,
                          cat(self.types), cat(self.keys), gdc, final)


@dataclass
class _Part:
    """One LDC's sub-events of one spill that are not built yet."""

    batches: deque = field(default_factory=deque)
    pending_words: int = 0
    last_key: int = -1
    eob: bool = False


@dataclass
class _Spill:
    run: int
    spill: int
    order: int
    opened_at: float
    last_activity: float
    parts: dict[int, _Part] = field(default_factory=dict)
    built_upto: int = -1
    buffer: _ChunkPlan | None = None  # the chunk being planned
    full: list = field(default_factory=list)  # full chunk plans not handed on yet
    out_words: int = 0  # words built, not handed on (full chunks and the one being filled)
    out_since: float | None = None  # when the chunk being filled got its first event
    build_due: float | None = None  # buildable events wait (too few for a chunk) until then at the latest
    chunks: int = 0
    events: int = 0
    data_events: int = 0
    incomplete_events: int = 0
    late_events: int = 0
    header_mismatch: int = 0
    lost_messages: dict[int, int] = field(default_factory=dict)
    last_eob_at: float | None = None
    bad_messages: dict[str, dict[str, int]] = field(default_factory=dict)
    sequence_jumps: list = field(default_factory=list)
    #: the message payloads it references: each pending batch, and each plan not handed on, once per payload
    held: HeldPayloads = field(default_factory=HeldPayloads)

    @property
    def key(self) -> tuple[int, int]:
        return (self.run, self.spill)

    @property
    def pending_words(self) -> int:
        return sum(p.pending_words for p in self.parts.values())

    @property
    def buffered_bytes(self) -> int:
        """Memory this spill holds: message payloads of unbuilt sub-events, and those the chunks of built
        events not handed on reference (whole payloads, each once; a running count)."""
        return self.held.bytes


Output = BuiltChunk | ClosedSpill


class EventBuilder:
    """Builds super events from the sub-events of several LDCs; not thread-safe (one owner).

    Feed it with :meth:`add` (one message's scanned payload) and :meth:`poll`
    (timers); both return what became ready: :class:`BuiltChunk` objects, and a
    :class:`ClosedSpill` after the last chunk of each closed spill.
    """

    def __init__(
        self,
        expected_ldcs: Iterable[int] = (1, 2),
        *,
        gdc_id: int = 1,
        spill_timeout_s: float = 10.0,
        ldc_down_s: float | None = None,
        max_open_spills: int = 4,
        max_pending_bytes: int = 256 << 20,
        chunk_events: int = 5000,
        chunk_bytes: int = 32 << 20,
        chunk_max_age_s: float = 0.5,
        closed_memory: int = 256,
        max_buffered_bytes: int | None = None,
    ) -> None:
        self.expected = tuple(sorted(set(int(x) for x in expected_ldcs)))
        if not self.expected:
            raise ValueError("expected_ldcs must name at least one LDC")
        self.gdc_id = int(gdc_id)
        self.spill_timeout_s = float(spill_timeout_s)
        self.ldc_down_s = float(ldc_down_s) if ldc_down_s is not None else float(spill_timeout_s)
        self.max_open_spills = max(1, int(max_open_spills))
        self.max_pending_words = max(1, int(max_pending_bytes) // 4)
        self.chunk_events = max(1, int(chunk_events))
        self.chunk_words = max(1, int(chunk_bytes) // 4)
        self.chunk_max_age_s = float(chunk_max_age_s)
        self.stats = BuilderStats()
        self._open: OrderedDict[tuple[int, int], _Spill] = OrderedDict()
        self._closed: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._closed_memory = max(1, int(closed_memory))
        #: all open spills together hold at most about this much (None: only max_pending_bytes per spill)
        self.max_buffered_bytes = None if max_buffered_bytes is None else max(1, int(max_buffered_bytes))
        self._order = 0
        #: LDC -> the (run, spill) of the START_OF_BURST it joined at
        self._joined: dict[int, tuple[int, int]] = {}
        self._ldc_order: dict[int, int] = {}  # order of the spill each LDC last sent to
        self._ldc_seen: dict[int, float] = {}
        self._pending_late = 0
        self._pending_lost: dict[int, int] = {}
        self._pending_bad: dict[str, dict[str, int]] = {}
        self._pending_jumps: list = []

    # ------------------------------------------------------------------ input
    @property
    def open_spills(self) -> list[tuple[int, int]]:
        return list(self._open)

    def add_payload(self, ldc: int, payload, now: float, lost: int = 0) -> list[Output]:
        """Convenience: scan a payload (bytes) and :meth:`add` it."""
        return self.add(ldc, scan_payload(payload), now, lost=lost)

    def note_lost(self, ldc: int, lost: int) -> None:
        """Lost messages that cannot be attributed to a spill: reported with the next closed spill."""
        if lost:
            self._pending_lost[ldc] = self._pending_lost.get(ldc, 0) + int(lost)

    @property
    def buffered_bytes(self) -> int:
        """Memory the open spills hold (unbuilt message payloads, payloads of built events not handed on)."""
        return sum(sp.buffered_bytes for sp in self._open.values())

    def note_bad(self, ldc: str, kind: str, spill: tuple[int, int] | None = None, jump: int = 0) -> None:
        """A bad message of LDC label ``ldc``: reported with ``spill`` if open, else with the next closed spill."""
        sp = self._open.get(spill) if spill is not None else None
        bad, jumps = (sp.bad_messages, sp.sequence_jumps) if sp is not None else (self._pending_bad,
                                                                                    self._pending_jumps)
        per_ldc = bad.setdefault(ldc, {})
        per_ldc[kind] = per_ldc.get(kind, 0) + 1
        if kind == "sequence_jump" and len(jumps) < MAX_JUMPS_KEPT:
            jumps.append((ldc, int(jump)))

    def recover_lost(self, ldc: int, spill: tuple[int, int] | None = None) -> bool:
        """A message of ``ldc`` counted lost arrived late after all: take one lost message back.

        From ``spill`` if it is open and has one, else from the latest open spill that has one, else
        from the lost messages not yet reported. False when the loss was reported already (in a
        finished spill): then it stays a lost message."""
        ldc = int(ldc)
        candidates = [self._open[spill]] if spill in self._open else []
        candidates += reversed(self._open.values())
        for sp in candidates:
            if sp.lost_messages.get(ldc, 0) > 0:
                sp.lost_messages[ldc] -= 1
                return True
        if self._pending_lost.get(ldc, 0) > 0:
            self._pending_lost[ldc] -= 1
            return True
        return False

    def add(self, ldc: int, scan: PayloadScan, now: float, lost: int = 0, source=None) -> list[Output]:
        """Take the whole events of one message of ``ldc`` (all of one spill).

        ``lost`` is the number of messages of this LDC lost just before this one
        (sequence gap); it is reported with this message's spill. ``source``: the payload as the
        chunks hand it on (the received ``zmq.Frame``; by default ``scan.words``).
        """
        ldc = int(ldc)
        self.stats.messages += 1
        if not self._ldc_seen:  # an expected LDC never heard of counts from the first message on
            self._ldc_seen = {l: now for l in self.expected}
        self._ldc_seen[ldc] = now
        keys = scan.keys
        n = keys.shape[0]
        in_spill = keys != NO_SPILL_KEY
        n_other = int(n - np.count_nonzero(in_spill))
        self.stats.other_events += n_other
        self.stats.sub_events += n - n_other
        out: list[Output] = []
        if n_other == n:
            self.note_lost(ldc, lost)
            return out
        offsets, sizes, types = scan.offsets, scan.sizes, scan.types
        if n_other:
            offsets, sizes, keys, types = offsets[in_spill], sizes[in_spill], keys[in_spill], types[in_spill]
        if ldc not in self._joined:
            sob = np.flatnonzero(keys == SOB_KEY)
            if not sob.shape[0]:
                self.stats.skipped_before_join += int(keys.shape[0])
                self.note_lost(ldc, lost)
                return out
            first = int(sob[0])
            if first:
                self.stats.skipped_before_join += first
                offsets, sizes, keys, types = offsets[first:], sizes[first:], keys[first:], types[first:]
            self._joined[ldc] = (int(scan.run), int(scan.spill))
        skey = (int(scan.run), int(scan.spill))
        if skey in self._closed:
            self._pending_late += int(keys.shape[0])
            self.stats.late_events += int(keys.shape[0])
            self.note_lost(ldc, lost)
            return out
        sp = self._open.get(skey)
        if sp is None:
            out.extend(self._make_room(now))
            sp = _Spill(run=skey[0], spill=skey[1], order=self._order, opened_at=now, last_activity=now)
            self._order += 1
            self._open[skey] = sp
            self.stats.spills_opened += 1
        sp.last_activity = now
        if scan.header_mismatch:
            sp.header_mismatch += scan.header_mismatch
            self.stats.header_mismatch += scan.header_mismatch
        if lost:
            sp.lost_messages[ldc] = sp.lost_messages.get(ldc, 0) + int(lost)
        self._ldc_order[ldc] = max(self._ldc_order.get(ldc, -1), sp.order)
        part = sp.parts.get(ldc)
        if part is None:
            part = sp.parts[ldc] = _Part()
        # ordered, not yet built, no duplicates
        floor = max(part.last_key, sp.built_upto)
        running = np.maximum.accumulate(np.concatenate(([floor], keys)))[:-1]
        ok = keys > running
        n_bad = int(keys.shape[0] - np.count_nonzero(ok))
        if n_bad:
            sp.late_events += n_bad
            self.stats.late_events += n_bad
            offsets, sizes, keys, types = offsets[ok], sizes[ok], keys[ok], types[ok]
        if keys.shape[0]:
            part.batches.append(_Batch(scan.words, offsets, sizes, keys, types,
                                       scan.words if source is None else source))
            sp.held.hold(scan.words)
            part.pending_words += int(sizes.sum())
            part.last_key = int(keys[-1])
            if part.last_key == EOB_KEY and not part.eob:
                part.eob = True
                sp.last_eob_at = now
        out.extend(self._advance(now))
        if sp.key in self._open and sp.pending_words > self.max_pending_words:
            self.stats.forced_builds += 1
            upto = self._forced_upto(sp)
            self._build(sp, upto)
            out.extend(self._emit(sp, now, final=False))
        out.extend(self._fit_memory(now))
        return out

    def _fit_memory(self, now: float) -> list[Output]:
        """Beyond ``max_buffered_bytes``: build (incomplete if need be) and hand on the fullest spills."""
        out: list[Output] = []
        if self.max_buffered_bytes is None:
            return out
        tried: set = set()
        while self.buffered_bytes > self.max_buffered_bytes:
            candidates = [s for s in self._open.values() if s.key not in tried and s.buffered_bytes]
            if not candidates:
                break  # what is left cannot be built yet (END_OF_BURSTs waiting for the other nodes')
            sp = max(candidates, key=lambda s: s.buffered_bytes)
            tried.add(sp.key)
            self.stats.memory_builds += 1
            self._build(sp, self._forced_upto(sp))
            out.extend(self._emit(sp, now, final=False, force=True))
        return out

    def _forced_upto(self, sp: _Spill) -> int:
        """How far a forced build goes: every pending data event, not the END_OF_BURST (unless every
        expected LDC sent it) — a node's END_OF_BURST still to come must not turn late."""
        upto = max(p.last_key for p in sp.parts.values())
        if upto >= EOB_KEY and not all(sp.parts.get(l) is not None and sp.parts[l].eob for l in self.expected):
            upto = EOB_KEY - 1
        return upto

    def poll(self, now: float) -> list[Output]:
        """Timers: spill timeouts, LDCs gone silent, chunks waiting too long."""
        out = self._advance(now)
        for sp in list(self._open.values()):
            if now - sp.last_activity >= self.spill_timeout_s:
                out.extend(self._close(sp, now, "timeout"))
            elif sp.out_since is not None and now - sp.out_since >= self.chunk_max_age_s:
                out.extend(self._emit(sp, now, final=False, force=True))
        return out

    def flush(self, now: float) -> list[Output]:
        """Close every open spill (shutdown, end of a test)."""
        out: list[Output] = []
        for sp in list(self._open.values()):
            out.extend(self._close(sp, now, "flush"))
        return out

    # --------------------------------------------------------------- internal
    def _done(self, sp: _Spill, ldc: int) -> bool:
        part = sp.parts.get(ldc)
        if part is not None and part.eob:
            return True
        return self._ldc_order.get(ldc, -1) > sp.order

    def _horizon(self, sp: _Spill, now: float) -> int:
        h = INF_KEY
        for ldc in self.expected:
            if self._done(sp, ldc):
                continue
            # down: silent for ldc_down_s while this spill is open (the gap between spills does not count);
            # not waited for when building (the spill still waits for its END_OF_BURST or the timeout)
            seen = max(self._ldc_seen.get(ldc, sp.opened_at), sp.opened_at)
            if now - seen > self.ldc_down_s:
                continue
            part = sp.parts.get(ldc)
            h = min(h, part.last_key if part is not None else -1)
        return h

    def _advance(self, now: float) -> list[Output]:
        out: list[Output] = []
        for sp in list(self._open.values()):
            if all(self._done(sp, ldc) for ldc in self.expected):
                complete = all(sp.parts.get(l) is not None and sp.parts[l].eob for l in self.expected)
                out.extend(self._close(sp, now, "end_of_burst" if complete else "moved_on"))
                continue
            h = self._horizon(sp, now)
            if h > sp.built_upto:
                ready = self._worth_building(sp, h, now)
                if ready:
                    self._build(sp, h)
                    out.extend(self._emit(sp, now, final=False, force=ready == "due"))
        return out

    def _worth_building(self, sp: _Spill, horizon: int, now: float) -> str | bool:
        """Whether to plan the buildable events (keys up to ``horizon``) now: when they fill the chunk being
        planned (by events or words), or once they waited ``chunk_max_age_s`` ("due": the chunk is then
        handed on too). Planning a message's worth at a time cost a dozen numpy calls per message; what is
        built, and into which chunks, is the same either way (an LDC's stream is ordered, so nothing below
        the horizon can still change), only the plan is made per chunk instead of per message."""
        buf = sp.buffer
        if horizon - sp.built_upto >= self.chunk_events - (buf.events if buf is not None else 0):
            return True  # keys are event numbers + 1: at least that many events (END_OF_BURST's key is beyond)
        if sp.pending_words >= min(self.chunk_words - (buf.used if buf is not None else 0),
                                   self.max_pending_words // 2):  # never near a forced (incomplete) build
            return True
        if sp.build_due is None:
            sp.build_due = now + self.chunk_max_age_s
            return False
        return "due" if now >= sp.build_due else False

    def _make_room(self, now: float) -> list[Output]:
        out: list[Output] = []
        while len(self._open) >= self.max_open_spills:
            oldest = next(iter(self._open.values()))
            out.extend(self._close(oldest, now, "overflow"))
        return out

    def _build(self, sp: _Spill, upto: int) -> None:
        """Build every pending event of ``sp`` with key <= ``upto``: plan them into its chunks.

        Nothing is copied: the chunk records where each sub-event is (payload, offset, words), in
        building order (by event, then LDC), and how many sub-events each super event has."""
        sp.build_due = None
        pieces: list[tuple[_Batch, int]] = []
        for ldc in sorted(sp.parts):
            part = sp.parts[ldc]
            while part.batches:
                b = part.batches[0]
                if b.keys[-1] <= upto:
                    part.batches.popleft()
                    sp.held.release(b.words)  # pending no more (the plan takes its own reference below)
                    take = b
                else:
                    k = int(np.searchsorted(b.keys, upto, side="right"))
                    if k == 0:
                        break
                    take, part.batches[0] = b.split(k)
                part.pending_words -= int(take.sizes.sum())
                pieces.append((take, ldc))
                if take is not b:
                    break
        sp.built_upto = max(sp.built_upto, min(upto, INF_KEY - 1))
        if not pieces:
            return
        counts = [b.keys.shape[0] for b, _ in pieces]
        cat = (lambda arrays: arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
        keys = cat([b.keys for b, _ in pieces]).astype(np.int64, copy=False)
        # by event, then LDC: the sub-events in building order. The pieces come LDC by LDC in ascending order,
        # each LDC's keys strictly increasing (add() keeps them so): a stable sort by key alone gives that order
        # (timsort merges the sorted runs), as a lexsort by (key, LDC) would at several times the cost
        order = np.argsort(keys, kind="stable")
        source = np.repeat(np.arange(len(pieces)), counts)[order]
        src_off = cat([b.offsets for b, _ in pieces]).astype(np.int64, copy=False)[order]
        sizes = cat([b.sizes for b, _ in pieces]).astype(np.int64, copy=False)[order]
        skeys = keys[order]
        n = skeys.shape[0]
        first = np.empty(n, bool)
        first[0] = True
        np.not_equal(skeys[1:], skeys[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        ngroups = starts.shape[0]
        g_size = np.add.reduceat(sizes, starts) + _HDR
        g_end = np.cumsum(g_size)
        g_pos = g_end - g_size  # where each super event goes if all are written one after the other
        g_types = cat([b.types for b, _ in pieces]).astype(np.int32, copy=False)[order][starts]
        # completeness: expected LDCs present in each group
        expected_piece = np.array([ldc in self.expected for _, ldc in pieces], np.int64)
        members = np.add.reduceat(expected_piece[source], starts)
        is_data = (g_types == DATA_TYPES[0]) | (g_types == DATA_TYPES[1])
        incomplete = int(np.count_nonzero(is_data & (members < len(self.expected))))
        sp.incomplete_events += incomplete
        self.stats.incomplete_events += incomplete
        sp.events += ngroups
        sp.data_events += int(np.count_nonzero(is_data))
        self.stats.built_events += ngroups
        # into chunks: a chunk is full at chunk_events events, or once chunk_words are used
        counts = np.diff(np.append(starts, n))
        g = 0
        while g < ngroups:
            buf = sp.buffer
            if buf is not None and (buf.events >= self.chunk_events or buf.used >= self.chunk_words):
                sp.full.append(buf)
                sp.buffer = buf = None
            if buf is None:
                sp.buffer = buf = _ChunkPlan()
            room = self.chunk_events - buf.events
            # groups starting before chunk_words (at least one: the chunk is not full)
            k = int(np.searchsorted(g_pos[g:], self.chunk_words - buf.used + g_pos[g], side="left"))
            gb = g + max(1, min(room, k, ngroups - g))
            span = int(g_end[gb - 1] - g_pos[g])
            ma, mb = int(starts[g]), (int(starts[gb]) if gb < ngroups else n)
            src = source[ma:mb]
            slots = np.zeros(len(pieces), np.int64)
            for i in (range(len(pieces)) if len(pieces) == 1 else np.unique(src).tolist()):
                slots[i] = buf.payload_index(pieces[i][0], sp.held)  # only the payloads this chunk's events are in
            plan = np.empty((mb - ma, PLAN_COLUMNS), np.int64)
            plan[:, 0] = slots[src]
            plan[:, 1] = src_off[ma:mb]
            plan[:, 2] = sizes[ma:mb]
            buf.subs.append(plan)
            buf.counts.append(counts[g:gb])
            buf.types.append(g_types[g:gb])
            buf.keys.append(skeys[starts[g:gb]])
            buf.used += span
            buf.events += gb - g
            sp.out_words += span
            g = gb

    def _emit(self, sp: _Spill, now: float, *, final: bool, force: bool = False) -> list[Output]:
        """Hand on built events: full chunks (and the one being planned when ``final``/``force``)."""
        buf = sp.buffer
        if buf is not None and (buf.events >= self.chunk_events or buf.used >= self.chunk_words):
            sp.full.append(buf)
            sp.buffer = buf = None
        take = sp.full
        sp.full = []
        if buf is not None and (final or force):
            take.append(buf)
            sp.buffer = buf = None
        if buf is None:
            sp.out_since = None
        elif take or sp.out_since is None:
            sp.out_since = now  # a partial chunk stays: handed on chunk_max_age_s from now at the latest
        out: list[Output] = []
        for i, b in enumerate(take):
            sp.out_words -= b.used
            for words in b.payloads:
                sp.held.release(words)  # handed on: the chunk keeps them alive now
            out.append(b.chunk(sp.run, sp.spill, sp.chunks, self.gdc_id, final=final and i == len(take) - 1))
            sp.chunks += 1
            self.stats.chunks += 1
        return out

    def _close(self, sp: _Spill, now: float, reason: str) -> list[Output]:
        self._build(sp, INF_KEY)
        out = self._emit(sp, now, final=True)
        del self._open[sp.key]
        self._closed[sp.key] = None
        while len(self._closed) > self._closed_memory:
            self._closed.popitem(last=False)
        missing = tuple(l for l in self.expected if not (sp.parts.get(l) is not None and sp.parts[l].eob))
        late = sp.late_events + self._pending_late
        self._pending_late = 0
        lost = dict(sp.lost_messages)
        for ldc, k in self._pending_lost.items():
            lost[ldc] = lost.get(ldc, 0) + k
        self._pending_lost = {}
        bad = {l: dict(k) for l, k in sp.bad_messages.items()}
        for l, kinds in self._pending_bad.items():
            per_ldc = bad.setdefault(l, {})
            for kind, k in kinds.items():
                per_ldc[kind] = per_ldc.get(kind, 0) + k
        jumps = tuple(sp.sequence_jumps + self._pending_jumps)[:MAX_JUMPS_KEPT]
        self._pending_bad, self._pending_jumps = {}, []
        self.stats.spills_closed += 1
        if missing:
            self.stats.spills_incomplete += 1
        out.append(
            ClosedSpill(
                run=sp.run, spill=sp.spill, complete=not missing, missing_ldcs=missing,
                incomplete_events=sp.incomplete_events, late_events=late, lost_messages=lost,
                chunks=sp.chunks, events=sp.events, data_events=sp.data_events, reason=reason,
                opened_at=sp.opened_at, closed_at=now, last_eob_at=sp.last_eob_at,
                header_mismatch=sp.header_mismatch,
                joined_late=tuple(sorted(l for l, k in self._joined.items() if l in self.expected
                                         and k > (sp.run, sp.spill))),
                bad_messages=bad, sequence_jumps=jumps,
            )
        )
        return out


# ---------------------------------------------------------------------------
# helpers (tests, tools)

def split_super_events(data) -> dict[int, list[bytes]]:
    """The sub-events of a stream of super events, per LDC, in order (the inverse of building)."""
    words = np.frombuffer(data, dtype=L.WORD) if not isinstance(data, np.ndarray) else data
    out: dict[int, list[bytes]] = {}
    pos = 0
    n = words.shape[0]
    while pos < n:
        size = int(words[pos + L.H_SIZE]) // 4
        hsize = int(words[pos + L.H_HEADER_SIZE]) // 4
        if words[pos + L.H_ATTRIBUTES_2] & L.SUPER_EVENT_BIT:
            sub = pos + hsize
            while sub < pos + size:
                ssize = int(words[sub + L.H_SIZE]) // 4
                out.setdefault(int(words[sub + L.H_LDC]), []).append(words[sub:sub + ssize].tobytes())
                sub += ssize
        else:
            out.setdefault(int(words[pos + L.H_LDC]), []).append(words[pos:pos + size].tobytes())
        pos += size
    return out


def build_all(events_by_ldc: dict[int, list[bytes]], *, gdc_id: int = 1) -> np.ndarray:
    """Build complete streams of sub-events (one or several spills) at once: the super events, as words."""
    b = EventBuilder(expected_ldcs=events_by_ldc.keys(), gdc_id=gdc_id, max_open_spills=1 << 20,
                     spill_timeout_s=float("inf"), max_pending_bytes=1 << 62,
                     chunk_events=1 << 30, chunk_bytes=1 << 62, chunk_max_age_s=float("inf"))
    parts: list[np.ndarray] = []
    outputs: list[Output] = []
    for ldc, events in sorted(events_by_ldc.items()):
        for ev in events:
            outputs.extend(b.add_payload(ldc, ev, 0.0))
    outputs.extend(b.flush(0.0))
    parts = [o.words for o in outputs if isinstance(o, BuiltChunk)]
    return np.concatenate(parts) if parts else np.zeros(0, L.WORD)
