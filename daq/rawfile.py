"""Raw files (docs/raw-format.md §10) and the split of an event stream into spills.

A raw file is DATE events concatenated, no file header. It is memory-mapped
and indexed by walking the DATE headers only; :func:`segment_spills` then
assigns each indexed event to a spill:

- a spill is keyed by (run, burst); START_OF_BURST opens one, END_OF_BURST
  closes it (``complete``); a change of key, or the end of the stream, closes
  the open spill as incomplete;
- a rejected event (byte-swapped, truncated, …) belongs to the spill being
  read when it came; one that comes while no spill is open (before the first,
  or between an END_OF_BURST and the next spill) belongs to the next spill;
- events of a spill's key arriving after its END_OF_BURST are late: counted,
  not merged;
- run-level and unknown event types belong to no spill: counted;
- header damage: a single event whose (run, burst) disagrees with its
  neighbours inside a spill is rejected as ``header_mismatch`` in that spill,
  not taken for a new spill or run (:func:`header_damaged`);
- an event number out of the running sequence of its spill is header damage
  too (``header_mismatch``, :func:`out_of_sequence`); one seen again in a spill
  is a ``duplicate_event``: counted, decoded once (the first copy).
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..decoders import layout
from ..decoders.decode import EventIndex, fragment_starts, index_bytes, index_stream_step, stream_index
from ..errors import DaqError, Issue, NotDateStreamError

SPILL_TYPES = (layout.START_OF_BURST, layout.END_OF_BURST, layout.PHYSICS_EVENT, layout.CALIBRATION_EVENT)


@dataclass(frozen=True, eq=False)
class SpillSegment:
    """The events of one spill inside a buffer of words (rows of its index)."""

    run: int
    spill: int
    words: np.ndarray
    index: EventIndex
    complete: bool
    truncated: bool = False  # the stream ended inside this spill's events


@dataclass
class StreamStats:
    """What the stream held beside its spills (service metrics, not QA records)."""

    other_events: int = 0  # START_OF_RUN, END_OF_RUN and unknown types
    late_events: int = 0  # events of an already closed spill
    orphan_rejected: int = 0  # rejected events with no spill after them
    truncated: bool = False  # the file ends inside its last event (no event starts after it)
    trailing_bytes: int = 0
    skipped_bytes: int = 0  # bytes of rejected events and of garbage skipped while resynchronising
    orphan_skipped_bytes: int = 0  # … of those, in no spill (after the last one)
    realigned: bool = False  # a byte-shifted resync re-aligned the rest of the stream
    events_by_type: dict[int, int] = field(default_factory=dict)


def header_damaged(key: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Which events of a spill-event sequence carry a damaged (run, burst): a boolean mask.

    ``key``/``kind``: (run, burst) key and type of the accepted START_OF_BURST,
    END_OF_BURST, PHYSICS and CALIBRATION events in stream order. Only a single
    event whose key differs from both its neighbours' can be damaged, and not
    when its key is that of a spill closed by an END_OF_BURST before it (a late
    event). Data events are judged first:

    1. a PHYSICS/CALIBRATION event is damaged when its neighbours inside a
       spill — the nearest event before it that is not a single event itself,
       unless an END_OF_BURST comes first, and the nearest after it, unless a
       START_OF_BURST comes first — exist (at least one) and agree;
    2. then, without the data events found damaged and without late events: a START_OF_BURST is damaged
       when an event that is not a START_OF_BURST follows it (the spill it opens
       is the following events'), or a START_OF_BURST that opens the next events'
       spill (it would open an empty spill: a damaged key); an END_OF_BURST when an event that is not an
       END_OF_BURST precedes it (the spill it closes is the preceding events').
    """
    n = len(key)
    damaged = np.zeros(n, dtype=bool)
    if n < 2:
        return damaged
    first_eob: dict[int, int] = {}
    for position in np.flatnonzero(kind == layout.END_OF_BURST).tolist():
        first_eob.setdefault(int(key[position]), position)
    is_data = (kind != layout.START_OF_BURST) & (kind != layout.END_OF_BURST)

    def singles(positions: np.ndarray) -> list[int]:
        k = key[positions]
        single = np.ones(len(positions), dtype=bool)
        differs = k[1:] != k[:-1]
        single[1:] &= differs
        single[:-1] &= differs
        out = []
        for i in np.flatnonzero(single).tolist():
            closed_at = first_eob.get(int(k[i]))
            if closed_at is None or closed_at >= positions[i]:  # else a late event of a closed spill
                out.append(i)
        return out

    everything = np.arange(n)
    lonely = np.zeros(n, dtype=bool)  # single events, late or not: no neighbour to go by
    differs = key[1:] != key[:-1]
    lonely[:] = True
    lonely[1:] &= differs
    lonely[:-1] &= differs
    for i in singles(everything):
        if not is_data[i]:
            continue
        around = []
        j = i - 1  # the nearest event before that is not single itself, unless an END_OF_BURST comes first
        while j >= 0 and kind[j] != layout.END_OF_BURST and lonely[j]:
            j -= 1
        if j >= 0 and kind[j] != layout.END_OF_BURST:
            around.append(int(key[j]))
        j = i + 1  # … and after, unless a START_OF_BURST comes first
        while j < n and kind[j] != layout.START_OF_BURST and lonely[j]:
            j += 1
        if j < n and kind[j] != layout.START_OF_BURST:
            around.append(int(key[j]))
        damaged[i] = len(around) > 0 and len(set(around)) == 1
    # late: after the first END_OF_BURST of its own key
    keys, which = np.unique(key, return_inverse=True)
    eob_at = np.full(len(keys), n, dtype=np.int64)
    ends = np.flatnonzero(kind == layout.END_OF_BURST)
    np.minimum.at(eob_at, which[ends], ends)
    late = eob_at[which] < everything
    rest = np.flatnonzero(~damaged & ~late)  # late events stand outside the spills around them
    for j in singles(rest):
        i = int(rest[j])
        if kind[i] == layout.START_OF_BURST and j + 1 < len(rest):
            following = int(rest[j + 1])
            # … or a START_OF_BURST that opens the next spill itself: this one would open an empty spill
            opens_next = j + 2 < len(rest) and key[rest[j + 2]] == key[following]
            damaged[i] = kind[following] != layout.START_OF_BURST or opens_next
        elif kind[i] == layout.END_OF_BURST:
            damaged[i] = j > 0 and kind[rest[j - 1]] != layout.END_OF_BURST
    return damaged


def out_of_sequence(numbers: np.ndarray) -> np.ndarray:
    """Which of a spill's event numbers (stream order) break the running sequence: a boolean mask.

    Inside: a number outside [previous, next] while previous < next. The first:
    above the second while the second is below the third. The last: below the
    one before while that one is not below its own predecessor. (A flipped bit
    in an event number would otherwise count thousands of lost events.)
    """
    n = len(numbers)
    bad = np.zeros(n, dtype=bool)
    if n < 3:
        return bad
    prev, cur, nxt = numbers[:-2], numbers[1:-1], numbers[2:]
    bad[1:-1] = (prev < nxt) & ~((prev <= cur) & (cur <= nxt))
    bad[0] = numbers[0] > numbers[1] and numbers[1] < numbers[2]
    bad[-1] = numbers[-1] < numbers[-2] and numbers[-3] <= numbers[-2]
    return bad


def _run_burst_key(run: np.ndarray, burst: np.ndarray) -> np.ndarray:
    """run × 4096 + burst: one integer per (run, burst)."""
    return run.astype(np.int64) * 4096 + burst


def _spill_key(index: EventIndex, rows: np.ndarray) -> np.ndarray:
    return _run_burst_key(index.run[rows], index.spill[rows])


def segment_spills(words: np.ndarray, index: EventIndex, stats: StreamStats | None = None,
                   closed: set[int] | None = None) -> list[SpillSegment]:
    """The spills of indexed events; ``closed``: keys (run × 4096 + burst) of spills closed by an END_OF_BURST
    in earlier parts of the stream (their events here are late), updated with the spills closed here."""
    stats = stats if stats is not None else StreamStats()
    accepted = index.status == 0
    types, counts = np.unique(index.type[accepted], return_counts=True)
    for t, c in zip(types.tolist(), counts.tolist()):
        stats.events_by_type[t] = stats.events_by_type.get(t, 0) + c
    in_spill = accepted & np.isin(index.type, SPILL_TYPES)
    stats.other_events += int(np.count_nonzero(accepted & ~in_spill))
    # header damage first: such events are rejected where they stand, so they neither open nor split a spill
    lead = fragment_starts(index)
    rows = np.flatnonzero(in_spill & lead)
    damaged = rows[header_damaged(_spill_key(index, rows), index.type[rows])]
    status = index.status.copy()
    skipped = index.skipped.copy()
    # the other fragments of an event rejected with its leading fragment: one event, so one issue, counted
    # on the lead row; these rows leave the stream, their skipped bytes go to the lead row
    absorbed = np.zeros(len(index), dtype=bool)

    def reject(group: np.ndarray, issue: Issue, lead: np.ndarray, lead_of: np.ndarray) -> None:
        status[group] = int(issue)
        rows = np.flatnonzero(group & ~lead)
        absorbed[rows] = True
        np.add.at(skipped, lead_of[rows], skipped[rows])
        skipped[rows] = 0

    if len(damaged):
        lead_of = np.flatnonzero(lead)[np.cumsum(lead) - 1]
        reject(np.isin(lead_of, damaged) & in_spill, Issue.HEADER_MISMATCH, lead, lead_of)
        index = index.with_status(status, skipped)
        accepted = status == 0
        in_spill &= accepted
        lead = fragment_starts(index)
    # plain-event fragments of one trigger go with the fragment that leads them
    lead_rows = np.flatnonzero(lead)
    lead_of = lead_rows[np.cumsum(lead) - 1]
    group_end = np.append(lead_rows[1:], len(index))  # row after each lead row's group
    rows = np.flatnonzero(in_spill & lead)
    if not len(rows):
        stats.orphan_rejected += int(np.count_nonzero(~accepted & ~absorbed))
        stats.orphan_skipped_bytes += int(index.skipped.sum())
        return []
    index = index.with_status(status, skipped)  # duplicates are marked in ``status`` spill by spill
    key = _spill_key(index, rows)
    kind = index.type[rows]
    starts = np.ones(len(rows), dtype=bool)
    starts[1:] = (key[1:] != key[:-1]) | (kind[1:] == layout.START_OF_BURST) | (kind[:-1] == layout.END_OF_BURST)
    # a repeated START_OF_BURST right after the opening one does not open a new spill
    starts[1:] &= ~((kind[1:] == layout.START_OF_BURST) & (kind[:-1] == layout.START_OF_BURST) & (key[1:] == key[:-1]))
    first_rows = np.flatnonzero(starts)
    data_kind = (kind == layout.PHYSICS_EVENT) | (kind == layout.CALIBRATION_EVENT)
    segments: list[SpillSegment] = []
    closed = closed if closed is not None else set()
    pending_from = 0  # first index row not yet given to a spill
    for i, j in enumerate(first_rows):
        stop_j = first_rows[i + 1] if i + 1 < len(first_rows) else len(rows)
        member = rows[j:stop_j]
        complete = bool(kind[stop_j - 1] == layout.END_OF_BURST)
        k = int(key[j])
        last_row = int(member[-1])
        if k in closed and kind[j] != layout.START_OF_BURST:
            stats.late_events += len(member)
            continue
        # an event number out of the running sequence is header damage; one seen again in the
        # spill is counted once and decoded once (the first copy)
        data_rows = member[data_kind[j:stop_j]]
        wrong = data_rows[out_of_sequence(index.event[data_rows].astype(np.int64))]
        if len(wrong):
            reject(np.isin(lead_of, wrong), Issue.HEADER_MISMATCH, lead, lead_of)
            data_rows = np.setdiff1d(data_rows, wrong)
        if len(data_rows) > 1:
            _, first = np.unique(index.event[data_rows], return_index=True)
            if len(first) < len(data_rows):
                again = np.setdiff1d(data_rows, data_rows[first])
                reject(np.isin(lead_of, again), Issue.DUPLICATE_EVENT, lead, lead_of)
        # rejected rows from the last spill's end up to this spill's last event
        last_end = int(group_end[np.searchsorted(lead_rows, last_row)])
        end_row = last_end if complete else (int(rows[stop_j]) if stop_j < len(rows) else len(index))
        span = np.arange(pending_from, end_row)
        take = span[~absorbed[span] & (~accepted[span] | (in_spill[span] & np.isin(lead_of[span], member)))]
        pending_from = end_row
        if complete:
            closed.add(k)
        segments.append(
            SpillSegment(
                run=int(index.run[j_row := int(member[0])]),
                spill=int(index.spill[j_row]),
                words=words,
                index=index.take(take),
                complete=complete,
                truncated=bool(index.truncated and end_row == len(index)),
            )
        )
    tail = np.arange(pending_from, len(index))
    stats.orphan_rejected += int(np.count_nonzero(~accepted[tail] & ~absorbed[tail]))
    stats.orphan_skipped_bytes += int(index.skipped[tail].sum())
    return segments


class RawFile:
    """A memory-mapped raw file: its spills one at a time (:meth:`iter_spills`, bounded memory) or its whole
    index (:attr:`index`, built on first use: ~100 bytes per event)."""

    #: bytes indexed at once by :meth:`iter_spills` (grown while a window holds no spill boundary)
    WINDOW_BYTES = 64 << 20

    def __init__(self, path: str | os.PathLike, verified: bool = False) -> None:
        """``verified``: the file was opened before and found a DATE stream (a later step of its index
        pass, :meth:`walk_step`): its start is not indexed again to tell."""
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except IsADirectoryError:
            raise DaqError(f"{self.path} is a directory, not a raw file") from None
        except OSError as exc:
            raise DaqError(f"cannot open {self.path}: {exc.strerror}") from None
        self.stats = StreamStats(trailing_bytes=size % 4)
        self.size = size
        self._data = np.frombuffer(self._map, dtype=np.uint8) if self._map else np.empty(0, np.uint8)
        self._whole: tuple[np.ndarray, EventIndex] | None = None
        if verified:
            return
        # garbage at the start is damage when DATE events follow it; with none anywhere it is not a DATE file
        head = self._index_range(0, min(size, self.WINDOW_BYTES))
        if size <= self.WINDOW_BYTES:  # a small file: indexed whole already
            self._whole = head
            self._set_stats(head[1], whole=True)
        head = head[1]
        if size and (len(head) == 0 or (head.status[0] in _NOT_DATE_AT_START and not np.any(head.status == 0))):
            if size <= self.WINDOW_BYTES or not np.any(self.index.status == 0):
                raise NotDateStreamError(f"{self.path} is not a DATE raw data stream (no DATE event at its start)",
                                         offset=0)

    # ------------------------------------------------------------------ the whole file at once
    def _whole_index(self) -> tuple[np.ndarray, EventIndex]:
        if self._whole is None:
            # words: the mapped file, or a re-aligned copy after a byte-shifted resync (see index_bytes)
            words, index = index_bytes(self._data)
            self._whole = words, index
            self._set_stats(index, whole=True)
        return self._whole

    @property
    def words(self) -> np.ndarray:
        return self._whole_index()[0]

    @property
    def index(self) -> EventIndex:
        """The whole file's index (built once, on first use, and kept)."""
        return self._whole_index()[1]

    def _set_stats(self, index: EventIndex, whole: bool) -> None:
        """The stream-level figures of an index of the file (``whole``) or of its next part (added up)."""
        if whole:
            self.stats.truncated, self.stats.skipped_bytes, self.stats.realigned = False, 0, False
        self.stats.truncated = index.truncated
        self.stats.skipped_bytes += int(index.skipped.sum())
        self.stats.realigned |= bool(np.any(index.source_offset != index.offset * 4))

    def spills(self) -> list[SpillSegment]:
        """Every spill, from the whole file's index (see :meth:`iter_spills` for bounded memory)."""
        return segment_spills(self.words, self.index, self.stats)

    # ------------------------------------------------------------------ spill by spill
    def _index_range(self, start: int, stop: int) -> tuple[np.ndarray, EventIndex]:
        """Index bytes [start, stop) of the file; offsets into the returned words (the mapped file itself
        when ``start`` is on the word grid and nothing re-aligned), ``source_offset`` into the file."""
        part = self._data[start:stop]
        words, index = index_bytes(part if start % 4 == 0 else part.copy())  # the kernels take aligned words
        index.source_offset[:] += start
        aligned = not np.any(index.source_offset - start != index.offset * 4)
        if aligned and start % 4 == 0 and self.size >= 4:
            index.offset[:] += start // 4
            index = dataclasses.replace(index, end=index.end + start // 4)
            words = self._data[:self.size - self.size % 4].view(layout.WORD)
        return words, index

    @staticmethod
    def _spill_cut(index: EventIndex) -> int | None:
        """Row of the last clean spill boundary of an index of part of the file, or None (:func:`_spill_cut_rows`)."""
        return _spill_cut_rows(index.status, index.type, index.run, index.spill)

    def iter_spills(self, window_bytes: int | None = None):
        """The spills one by one, from one index pass walked a step at a time (:meth:`walk_step`): memory
        bounded by the largest spill, not the file (mapped pages apart). The same spills and stream figures
        as :meth:`spills`: the walk's rows are the whole index's, row for row, and a part ends at a clean
        spill boundary (:meth:`_spill_cut`), so damage only loses its neighbours across that boundary."""
        if self._whole is not None:
            yield from self.spills()
            return
        walk = self.start_walk()
        while not walk.done:
            segments, walk = self.walk_step(walk, window_bytes)
            self.stats = walk.stats
            yield from segments

    def start_walk(self) -> "IndexWalk":
        return IndexWalk(stats=StreamStats(trailing_bytes=self.size % 4), done=self.size == 0)

    def _file_words(self) -> np.ndarray:
        return self._data[:self.size - self.size % 4].view(layout.WORD)

    def walk_step(self, walk: "IndexWalk", window_bytes: int | None = None) -> tuple[list[SpillSegment], "IndexWalk"]:
        """The next step of the file's one index pass: the spills it completes (maybe none) and where the walk
        stands then (a new :class:`IndexWalk`; ``walk`` is left as it was, so a step can be re-run).

        A step is one call of the index kernel from where the walk stands (the call :func:`index_bytes` makes
        there: the same rows, so no row is indexed twice and none differs from the whole index); the rows
        since the last spill cut before the last clean boundary among them (:meth:`_spill_cut`) are
        segmented into spills. After a byte-shifted resync (the rest of the stream off the word grid) the
        walk goes on from its last cut by windows re-indexed whole (:meth:`_window_step`), as the mapped
        file cannot serve as the re-aligned words.
        """
        if walk.done:
            return [], walk
        stats = dataclasses.replace(walk.stats, events_by_type=dict(walk.stats.events_by_type))
        closed = set(walk.closed)
        if walk.windowed_from is not None:
            segments, stop = self._window_step(walk.windowed_from, stats, closed, window_bytes)
            return segments, IndexWalk(stats=stats, closed=frozenset(closed), windowed_from=stop,
                                       start=stop, done=stop >= self.size)
        words = self._file_words()
        step = index_stream_step(words, self._data, walk.position, walk.want_super, walk.calls)
        if step.shift >= 0:  # re-aligned from there on: by windows from the last cut
            return self.walk_step(IndexWalk(stats=walk.stats, closed=walk.closed, windowed_from=walk.start,
                                            start=walk.start), window_bytes)
        pending = ({k: np.concatenate((walk.pending[k], v)) for k, v in step.columns.items()}
                   if walk.pending else step.columns)
        if step.position >= len(words) or step.truncated:  # the end of the stream: as index_bytes ends it
            trailing = self.size - 4 * len(words)
            tail = bool(trailing and not step.truncated and not step.lost_sync and step.position == len(words))
            index = stream_index(pending, 4 * len(words) if tail else self.size, step.position, step.truncated,
                                 trailing if tail else 0)
            segments = self._segment(words, index, stats, closed)
            return segments, IndexWalk(stats=stats, closed=frozenset(closed), start=self.size, done=True)
        following = IndexWalk(position=step.position, want_super=step.want_super, calls=walk.calls + 1,
                              pending=pending, closed=walk.closed, stats=walk.stats, start=walk.start)
        status, kind = pending["status"], pending["type"]
        cut = _spill_cut_rows(status, kind, pending["run"], pending["spill"])
        if cut is None:
            return [], following
        head = {k: v[:cut] for k, v in pending.items()}
        start = int(pending["source_offset"][cut])
        index = stream_index(head, start, int(pending["offset"][cut]), False)
        segments = self._segment(words, index, stats, closed)
        rest = {k: v[cut:] for k, v in pending.items()}
        return segments, dataclasses.replace(following, pending=rest, closed=frozenset(closed), stats=stats,
                                             start=start)

    def release_pages(self, stop: int) -> None:
        """Unmap this process's pages of bytes [0, ``stop``) (rounded down to a page, unless the end): the
        resident memory they count for goes, the page cache keeps them, a later read of them maps them again.
        The mapping stays valid."""
        stop = self.size if stop >= self.size else stop - stop % mmap.PAGESIZE  # the file's end: its last page too
        if self._map is not None and stop > 0:
            self._map.madvise(mmap.MADV_DONTNEED, 0, stop)

    def _segment(self, words, index: EventIndex, stats: StreamStats, closed: set[int]) -> list[SpillSegment]:
        stats.truncated = index.truncated
        stats.skipped_bytes += int(index.skipped.sum())
        stats.realigned |= bool(np.any(index.source_offset != index.offset * 4))
        return segment_spills(words, index, stats, closed)

    def _window_step(self, start: int, stats: StreamStats, closed: set[int],
                     window_bytes: int | None) -> tuple[list[SpillSegment], int]:
        """The spills of the next part of a re-aligned stream from byte ``start``: windows indexed from
        ``start`` (doubled while none holds a clean spill boundary), then the part up to the last boundary
        indexed again (its rows do not depend on the bytes after it); returns them and where the part ends."""
        window = window_bytes or self.WINDOW_BYTES
        while True:
            stop = min(self.size, start + window)
            if stop >= self.size:
                break
            _, part = self._index_range(start, stop)
            cut = self._spill_cut(part)
            if cut is not None:
                stop = int(part.source_offset[cut])
                break
            window *= 2
        words, index = self._index_range(start, stop)
        return self._segment(words, index, stats, closed), stop

    def find_event(self, spill: int, event: int, run: int | None = None) -> EventIndex:
        """Index rows (accepted) of the event with this number in burst, in this spill."""
        ix = self.index
        match = (ix.status == 0) & (ix.spill == spill) & (ix.event == event) & np.isin(ix.type, SPILL_TYPES[2:])
        if run is not None:
            match &= ix.run == run
        return ix.take(np.flatnonzero(match))


_NOT_DATE_AT_START = (int(Issue.EVENT_BAD_MAGIC),)


def _spill_cut_rows(status: np.ndarray, kind_of: np.ndarray, run: np.ndarray, burst: np.ndarray) -> int | None:
    """Row of the last clean spill boundary among consecutive index rows (their columns), or None.

    A clean boundary: an accepted START_OF_BURST (not the first row) that the accepted spill event
    before it — an END_OF_BURST of another (run, burst) — closes a spill to, and whose (run, burst) the
    accepted event after it shares. Everything before it belongs to earlier spills."""
    rows = np.flatnonzero((status == 0) & np.isin(kind_of, SPILL_TYPES))
    if len(rows) < 3:
        return None
    key = _run_burst_key(run[rows], burst[rows])
    kind = kind_of[rows]
    clean = ((kind[1:-1] == layout.START_OF_BURST) & (kind[:-2] == layout.END_OF_BURST)
             & (key[1:-1] != key[:-2]) & (key[1:-1] == key[2:]))
    found = np.flatnonzero(clean)
    return int(rows[found[-1] + 1]) if len(found) else None


@dataclass(frozen=True, eq=False)
class IndexWalk:
    """Where a file's one index pass stands between two :meth:`RawFile.walk_step` calls (picklable: a step
    can be a task on another process).

    ``position``/``want_super``/``calls``: the index kernel's place and state; ``pending``: index columns of the rows
    since the last spill cut (not yet in a spill); ``start``: byte of that cut; ``closed``: keys of the
    spills closed so far; ``stats``: the stream figures so far; ``windowed_from``: after a byte-shifted
    resync, the byte where the walk goes on by windows; ``done``: nothing more to index.
    """

    stats: StreamStats
    position: int = 0
    want_super: int = -1
    calls: int = 0  # kernel calls made
    pending: dict | None = None
    start: int = 0
    closed: frozenset = frozenset()
    windowed_from: int | None = None
    done: bool = False
