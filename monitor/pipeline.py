"""One spill in, one QA record out (spec §12) — the single code path of replay and live.

``SpillProcessor.accumulate`` decodes a buffer of whole DATE events of one
spill in chunks (bounded memory) into a :class:`SpillAccumulator`; partial
accumulators from worker processes merge exactly; ``finish`` turns the merged
result into an immutable :class:`QARecord`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from ..config_section import ConfigSection

from ..daq.live import LiveExtras
from ..decoders import layout
from ..decoders.channelmap import ChannelMap
from ..decoders.decode import (
    DecodeBuffers,
    DecodedEvents,
    EventIndex,
    PlannedRows,
    ReconstructionParams,
    decode_events,
    fragment_starts,
    index_events,
    issue_counts,
    merge_fragments,
)
from ..errors import Issue
from ..decoders.reconstruct import DetectorGeometry, PhysicsCuts, reconstruct, tally_chunk
from .model import BadMessages, LostMessages, SequenceJump, SpillRecord

_NOTICE_LABELS = {i.label for i in Issue if not i.is_error and i != Issue.NONE}


class MonitorConfig(ConfigSection):
    """Per-spill processing settings (``[monitor]``)."""

    section: ClassVar[str] = "monitor"

    chunk_events: int = Field(4096, ge=1, le=1 << 20)
    reconstruction: ReconstructionParams = ReconstructionParams()
    cuts: PhysicsCuts = PhysicsCuts()
    #: live service: no spill record for this long raises ``no_data``, /readyz answers 503
    #: (default: three of the simulator's 20 s SPS cycles; the spec has a spill every ~15–40 s).
    #: At least 2 s: the ingest loop reports itself once a second, a shorter silence could not tell a stuck loop.
    no_data_after_seconds: float = Field(60.0, ge=2, le=86400)
    #: raw events of the first this many missing-energy candidates of each spill travel with the spill's
    #: result (decoder workers included) for the live dashboard's event display; 0: none
    candidate_events_per_spill: int = Field(16, ge=0, le=256)
    #: the run histograms' per-spill trend rows kept, the newest (the run's totals count every spill): a run
    #: that never changes number must not grow the service's memory, nor every spill's snapshot, without bound
    trend_spills: int = Field(2000, ge=1, le=1_000_000)


@dataclass(frozen=True)
class Candidate:
    """A missing-energy candidate with the numbers that made it pass."""

    event: int
    e_ps: float
    e_ecal: float
    e_hcal: float
    srd_sum: float
    veto_max: float


@dataclass
class SpillAccumulator:
    """Exactly mergeable partial result of one spill (on the wire: :mod:`.wire`)."""

    run: int | None = None
    spill: int | None = None
    events: int = 0
    physics_events: int = 0
    calibration_events: int = 0
    beam_events: int = 0
    hadron_events: int = 0
    no_electron_beam_events: int = 0
    rejected_events: int = 0
    skipped_bytes: int = 0
    saw_start_of_burst: bool = False
    saw_end_of_burst: bool = False
    scalers: list[int] | None = None
    seen_events: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    issues: dict[tuple[int, str], int] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    first_time: int | None = None
    last_time: int | None = None
    bytes_decoded: int = 0
    decode_seconds: float = 0.0
    #: per detector of the table (code order), over data events: energy summed in keV (integers, so
    #: merging partial results is exact) and events in which the detector had energy
    detector_energy_kev: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    detector_hits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    extensions: dict[str, Any] = field(default_factory=dict)
    #: the raw words (built DATE event, raw-file layout) of the first ``candidate_event_cap`` candidates,
    #: in the order they were decoded: ``(event number, words)``
    candidate_events: list[tuple[int, np.ndarray]] = field(default_factory=list)
    candidate_event_cap: int = 0

    def keep_candidate_event(self, event: int, words: np.ndarray) -> bool:
        """Keep a candidate's raw words (a copy) if fewer than the cap are kept; whether it was kept."""
        if len(self.candidate_events) >= self.candidate_event_cap:
            return False
        self.candidate_events.append((int(event), np.array(words, dtype=layout.WORD, copy=True)))
        return True

    def _mark_events(self, numbers: np.ndarray) -> None:
        if not len(numbers):
            return
        top = int(numbers.max())
        if top >= len(self.seen_events):
            grown = np.zeros(max(top + 1, 2 * len(self.seen_events)), dtype=bool)
            grown[: len(self.seen_events)] = self.seen_events
            self.seen_events = grown
        self.seen_events[numbers] = True

    def merge(self, other: "SpillAccumulator") -> None:
        """Add ``other`` (another part of the same spill) into this one."""
        if self.run is None:
            self.run, self.spill = other.run, other.spill
        elif other.run is not None and (other.run, other.spill) != (self.run, self.spill):
            raise ValueError(f"cannot merge spill {other.run}/{other.spill} into {self.run}/{self.spill}")
        for name in (
            "events", "physics_events", "calibration_events", "beam_events", "hadron_events",
            "no_electron_beam_events", "rejected_events", "skipped_bytes", "bytes_decoded", "decode_seconds",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.saw_start_of_burst |= other.saw_start_of_burst
        self.saw_end_of_burst |= other.saw_end_of_burst
        if other.scalers is not None:
            self.scalers = other.scalers
        self._mark_events(np.flatnonzero(other.seen_events))
        for key, n in other.issues.items():
            self.issues[key] = self.issues.get(key, 0) + n
        self.candidates.extend(other.candidates)
        for event, words in getattr(other, "candidate_events", ()):  # the first ones of the spill, up to the cap
            if not self.keep_candidate_event(event, words):
                break
        for name in ("detector_energy_kev", "detector_hits"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if len(mine) < len(theirs):
                mine = np.concatenate([mine, np.zeros(len(theirs) - len(mine), dtype=np.int64)])
            mine[: len(theirs)] += theirs
            setattr(self, name, mine)
        times = [t for t in (self.first_time, other.first_time) if t is not None]
        self.first_time = min(times) if times else None
        times = [t for t in (self.last_time, other.last_time) if t is not None]
        self.last_time = max(times) if times else None
        for name, value in other.extensions.items():
            mine = self.extensions.get(name)
            if mine is None:
                self.extensions[name] = value
            else:
                mine.merge(value)

    @property
    def lost_events(self) -> int:
        return self.lost_events_besides(np.zeros(0, dtype=np.int64))

    def lost_events_besides(self, sent: np.ndarray) -> int:
        """Event numbers 1 … highest accepted carried neither by an accepted event nor by ``sent``."""
        numbers = np.flatnonzero(self.seen_events)
        numbers = numbers[numbers >= 1]
        if not len(numbers):
            return 0
        top = int(numbers[-1])
        sent = sent[(sent >= 1) & (sent <= top)]
        missing = top - len(numbers)
        if len(sent):  # each sent number once (a mask, not np.unique: that imports numpy.ma)
            carried = np.zeros(top + 1, dtype=bool)
            carried[sent] = True
            missing -= int(np.count_nonzero(carried & ~self.seen_events[:top + 1]))
        return missing

    def counts(self, errors: bool) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for (src, label), n in sorted(self.issues.items()):
            if (label not in _NOTICE_LABELS) == errors:
                out.setdefault(src, {})[label] = n
        return out


class TaskDecoder:
    """A decoder worker's per-task step — ``decoder(words)`` gives the result frames of
    ``processor.encode_result(processor.accumulate(words))`` — keeping from one task to the next what
    replay keeps from one chunk to the next: the decode buffers (the thread's,
    :meth:`SpillProcessor.decode_buffers`) and the histograms' storage (emptied in place, not made anew:
    the frames of a result are copies of it, sparse bins and counts). A task of up to 1.5 chunks is
    decoded as one chunk (5000 events, the ingest's default task, were 4096 + 904). One per thread."""

    #: a task may come as planned rows (:func:`~na64_online.daq.workers.decode_task`)
    takes_planned_rows: ClassVar[bool] = True

    def __init__(self, processor: SpillProcessor) -> None:
        self.processor = processor
        self._done: SpillAccumulator | None = None  # the last task's, encoded and sent

    def __call__(self, words: np.ndarray, planned: PlannedRows | None = None) -> list | None:
        """The result frames of the built events ``words``; with ``planned``, of the super events whose
        headers ``words`` holds and whose sub-events lie where ``planned`` says — or ``None`` if the
        headers do not index as planned (damage: the caller gathers the events and calls again)."""
        index = index_events(words)
        if planned is not None and not planned.indexes(index):
            return None
        step = self.processor.config.chunk_events
        acc = self.processor.accumulate(words, index, recycle=self._done,  # this thread's decode buffers
                                        chunk_events=len(index) if len(index) <= step * 3 // 2 else step,
                                        planned=planned)
        self._done = None
        frames = self.processor.encode_result(acc)
        self._done = acc
        return frames


#: the QA record of one spill (typed; :mod:`.model`)
QARecord = SpillRecord


def _by_src(counts: dict[int, dict[str, int]]) -> dict[str, dict[str, int]]:
    """srcID -> kind -> count with string keys; srcID −1 (damage above any equipment) as ``"event"``."""
    return {("event" if k == -1 else str(k)): v for k, v in counts.items()}


def _lost_messages(by_ldc: dict) -> LostMessages:
    return LostMessages(total=sum(by_ldc.values()), by_ldc={str(k): v for k, v in sorted(by_ldc.items())})


def _bad_messages(live: LiveExtras) -> BadMessages:
    """Live: refused messages per LDC label and kind, and the sequence jumps (LDC label, size)."""
    by_ldc = {str(l): dict(k) for l, k in live.bad_messages.items()}
    return BadMessages(total=sum(n for kinds in by_ldc.values() for n in kinds.values()),
                       by_ldc={k: dict(sorted(v.items())) for k, v in sorted(by_ldc.items())},
                       sequence_jumps=[SequenceJump(ldc=str(l), size=int(n)) for l, n in live.sequence_jumps or ()])


class SpillProcessor:
    """Decodes and aggregates spills; holds configuration (safe to share between threads) and, per thread, the
    decoder's output buffers, kept from one spill to the next (:meth:`decode_buffers`)."""

    def __init__(self, config: MonitorConfig, channel_map: ChannelMap, extensions=()) -> None:
        self.config = config
        self.channel_map = channel_map
        self.geometry = DetectorGeometry.from_map(channel_map)
        # factories of per-spill extension accumulators: name -> callable(channel_map) with
        # .fill(decoded, physics) and .merge(other); ``decoded``'s arrays are reused for the next chunk
        # (:class:`DecodeBuffers`), so an extension copies what it keeps
        self.extensions = dict(extensions)

    def decode_buffers(self) -> DecodeBuffers:
        """This thread's decode buffers: one spill's chunks after another decode into them (a 4096-event chunk's
        outputs are 17 MB: allocated and cleared once per thread, not once per spill). Nothing of them outlives
        :meth:`accumulate` (an extension copies what it keeps), and one thread runs one ``accumulate`` at a time."""
        local = self.__dict__.get("_thread_buffers")
        if local is None:
            local = self.__dict__.setdefault("_thread_buffers", threading.local())
        buffers = getattr(local, "buffers", None)
        if buffers is None:
            buffers = local.buffers = DecodeBuffers()
        return buffers

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_thread_buffers", None)  # per thread of this process
        return state

    def new_accumulator(self, recycle: SpillAccumulator | None = None) -> SpillAccumulator:
        """An empty accumulator. ``recycle``: one its owner is done with (encoded, nothing of it in use):
        an extension with ``cleared()`` (the histograms: 2.3 MB of counts, 16 ``hist`` objects — 2.5 ms to
        make) is emptied in place and taken over instead of made anew."""
        n = self.geometry.n_detectors
        acc = SpillAccumulator(detector_energy_kev=np.zeros(n, dtype=np.int64),
                               detector_hits=np.zeros(n, dtype=np.int64),
                               candidate_event_cap=self.config.candidate_events_per_spill)
        old = recycle.extensions if recycle is not None else {}
        for name, factory in self.extensions.items():
            ext = old.get(name)
            acc.extensions[name] = ext.cleared() if hasattr(ext, "cleared") else factory(self.channel_map)
        return acc

    def task_decoder(self) -> "TaskDecoder":
        """What a decoder worker runs per task (:class:`TaskDecoder`): words in, result frames out."""
        return TaskDecoder(self)

    def encode_result(self, acc: SpillAccumulator) -> list:
        """``acc`` as the frames a decoder worker sends (:mod:`.wire`, no pickle)."""
        from .wire import encode_accumulator

        return encode_accumulator(acc)

    def decode_result(self, frames) -> SpillAccumulator:
        """A worker's result frames as an accumulator of this processor's set-up;
        raises :class:`~.wire.ResultFormatError` for anything else."""
        from .wire import decode_accumulator

        return decode_accumulator(frames, self.new_accumulator(), self._result_schema())

    def read_result(self, frames):
        """A worker's result frames, validated against this processor's set-up, as
        :meth:`SpillAccumulator.merge` adds them (views of the frames: no accumulator built, nothing
        copied); raises :class:`~.wire.ResultFormatError` for anything else."""
        from .wire import read_accumulator

        return read_accumulator(frames, self._result_schema())

    def _result_schema(self):
        schema = self.__dict__.get("_schema")
        if schema is None:
            from .wire import ResultSchema

            schema = self.__dict__["_schema"] = ResultSchema(self.new_accumulator())
        return schema

    def accumulate(self, words: np.ndarray, index: EventIndex | None = None, *,
                   buffers: DecodeBuffers | None = None, recycle: SpillAccumulator | None = None,
                   chunk_events: int | None = None, planned: PlannedRows | None = None) -> SpillAccumulator:
        """Decode the events of one spill (all of ``words``, or the rows of ``index``).

        ``buffers``: decode outputs kept from an earlier call (not shared between threads), else new ones;
        ``recycle``: an accumulator done with (:meth:`new_accumulator`); ``chunk_events``: rows decoded at a
        time, the configuration's by default; ``planned``: built super events whose sub-events lie where
        they were received, ``words`` holding their headers only (:func:`decode_events`)."""
        started = time.perf_counter()
        if index is None:
            index = index_events(words)
        acc = self.new_accumulator(recycle)
        starts = fragment_starts(index)
        boundaries = np.flatnonzero(starts)
        step = chunk_events or self.config.chunk_events
        position = 0
        if buffers is None:  # every chunk is done with (added to ``acc``) before the next is decoded
            buffers = self.decode_buffers()
        # an extension that takes per-slot sums (channel statistics) gets them from the decoder, added while
        # each row is in the cache, for chunks whose rows are whole events (no plain-event fragments to merge)
        by_decoder = next((name for name, ext in acc.extensions.items() if hasattr(ext, "slot_sums")), None)
        while position < len(index):
            # chunks end where an event starts, so plain-event fragments stay together
            stop = min(position + step, len(index))
            if stop < len(index) and not starts[stop]:
                stop = int(boundaries[np.searchsorted(boundaries, stop)]) if boundaries[-1] > stop else len(index)
            chunk = index.slice(position, stop)
            summed = by_decoder is not None and bool(starts[position:stop].all())
            slot_sums = None
            if summed:
                # the rows ChannelStats.fill selects: accepted PHYSICS events
                select = (chunk.status == 0) & (chunk.type == layout.PHYSICS_EVENT)
                slot_sums = acc.extensions[by_decoder].slot_sums(select)
            rows = planned.rows(position, stop) if planned is not None else None
            decoded = decode_events(words, chunk, self.channel_map, self.config.reconstruction, buffers=buffers,
                                    slot_sums=slot_sums, planned=rows)
            self._add_chunk(acc, merge_fragments(decoded, starts[position:stop]), words,
                            summed_by_decoder=by_decoder if summed else None, buffers=buffers, planned=rows)
            position = stop
        acc.bytes_decoded += int(index.size[index.status == 0].sum()) * 4
        acc.decode_seconds += time.perf_counter() - started
        return acc

    def _add_chunk(self, acc: SpillAccumulator, decoded: DecodedEvents, words: np.ndarray | None = None,
                   summed_by_decoder: str | None = None, buffers: DecodeBuffers | None = None,
                   planned: PlannedRows | None = None) -> None:
        ix = decoded.index
        acc.skipped_bytes += int(ix.skipped.sum())
        if acc.run is None:
            ok = np.flatnonzero(ix.status == 0)
            if len(ok):
                acc.run, acc.spill = int(ix.run[ok[0]]), int(ix.spill[ok[0]])
        physics = reconstruct(decoded, self.geometry, self.config.cuts, buffers)
        data = physics.is_data
        tally = tally_chunk(decoded, physics, acc.detector_energy_kev, acc.detector_hits)
        acc.events += tally.events
        acc.physics_events += tally.physics_events
        acc.calibration_events += tally.calibration_events
        acc.beam_events += tally.beam_events
        acc.hadron_events += tally.hadron_events
        acc.no_electron_beam_events += tally.no_electron_beam_events
        acc.rejected_events += tally.rejected_events
        acc._mark_events(ix.event[data].astype(np.int64))
        acc.saw_start_of_burst |= tally.start_of_burst
        if tally.last_end_of_burst >= 0:
            acc.saw_end_of_burst = True
            values = decoded.scalers[tally.last_end_of_burst]
            acc.scalers = [int(v) if v >= 0 else None for v in values]
        if tally.first_time is not None:
            t0, t1 = tally.first_time, tally.last_time
            acc.first_time = t0 if acc.first_time is None else min(acc.first_time, t0)
            acc.last_time = t1 if acc.last_time is None else max(acc.last_time, t1)
        for key, n in issue_counts(ix, decoded.issues).items():
            acc.issues[key] = acc.issues.get(key, 0) + n
        for row in np.flatnonzero(physics.candidate):
            acc.candidates.append(
                Candidate(
                    event=int(ix.event[row]),
                    e_ps=float(physics.e_ps[row]),
                    e_ecal=float(physics.e_ecal[row]),
                    e_hcal=float(physics.e_hcal[row]),
                    srd_sum=float(physics.srd[row].sum()),
                    veto_max=float(physics.veto[row].max()) if physics.veto.shape[1] else 0.0,
                )
            )
            if words is not None and len(acc.candidate_events) < acc.candidate_event_cap:
                # a built event is one row; plain fragments of one trigger are consecutive rows (merged)
                start = int(ix.offset[row])
                acc.keep_candidate_event(int(ix.event[row]), words[start: start + int(ix.size[row])]
                                         if planned is None else planned.event_words(words, row))
        for name, ext in acc.extensions.items():
            if name == summed_by_decoder:
                ext.fill(decoded, physics, summed=True)
            else:
                ext.fill(decoded, physics)

    def finish(
        self, acc: SpillAccumulator, *, complete: bool | None = None, live: LiveExtras | None = None
    ) -> QARecord:
        """The QA record of a fully accumulated spill. ``complete`` defaults to 'END_OF_BURST seen'."""
        if complete is None:
            complete = acc.saw_end_of_burst
        errors = acc.counts(errors=True)
        notices = acc.counts(errors=False)
        if live is not None and live.header_mismatch:  # left out by the event builder (live)
            label = Issue.HEADER_MISMATCH.label
            errors.setdefault(-1, {})[label] = errors.get(-1, {}).get(label, 0) + live.header_mismatch
        scalers = acc.scalers or [None] * layout.N_SCALERS
        beam, s0, raw, accepted, duration = (scalers + [None] * layout.N_SCALERS)[: layout.N_SCALERS]
        hf = acc.hadron_events / acc.beam_events if acc.beam_events else None
        hf_srd = acc.no_electron_beam_events / acc.beam_events if acc.beam_events else None
        eot = beam * (1.0 - hf) if beam is not None and hf is not None else None
        dead_time = 1.0 - accepted / raw if raw and accepted is not None else None
        beam_rate = beam / (duration * 1e-6) if beam is not None and duration else None
        candidates = sorted(acc.candidates, key=lambda c: c.event)
        return QARecord(
            run=acc.run,
            spill=acc.spill,
            events=acc.events,
            lost_events=acc.lost_events_besides(live.dropped_event_numbers) if live else acc.lost_events,
            decode_errors=sum(n for per_src in errors.values() for n in per_src.values()),
            modules_missing=sum(per_src.get(Issue.MODULE_MISSING.label, 0) for per_src in notices.values()),
            complete=bool(complete),
            beam=beam,
            triggers_accepted=accepted,
            hadron_fraction=hf,
            hadron_fraction_srd=hf_srd,
            eot=eot,
            candidates=[c.event for c in candidates],
            triggers_raw=raw,
            s0=s0,
            spill_duration_us=duration,
            dead_time_fraction=dead_time,
            beam_rate_hz=beam_rate,
            physics_events=acc.physics_events,
            calibration_events=acc.calibration_events,
            beam_events=acc.beam_events,
            hadron_events=acc.hadron_events,
            rejected_events=acc.rejected_events,
            skipped_bytes=acc.skipped_bytes,
            header_mismatch=errors.get(-1, {}).get(Issue.HEADER_MISMATCH.label, 0),
            duplicate_event=notices.get(-1, {}).get(Issue.DUPLICATE_EVENT.label, 0),
            errors_by_src=_by_src(errors),
            notices_by_src=_by_src(notices),
            candidate_details=[vars(c) for c in candidates],
            lost_messages=_lost_messages(live.lost_messages) if live else None,
            incomplete_events=live.incomplete_events if live else None,
            late_events=live.late_events if live else None,
            dropped_events=live.dropped_events if live else None,
            missing_ldcs=list(live.missing_ldcs) if live else None,
            bad_messages=_bad_messages(live) if live else None,
            first_event_time=acc.first_time,
            last_event_time=acc.last_time,
            bytes_decoded=acc.bytes_decoded,
            processing_seconds=acc.decode_seconds,
            finished_at=time.time(),
            detectors=self.detector_values(acc),
        )

    def detector_values(self, acc: SpillAccumulator) -> dict[str, dict]:
        """The record's ``detectors``: name -> channels, mean energy per data event [GeV] and the
        fraction of data events with energy in it (None without data events)."""
        out = {}
        for code, _, _ in self.geometry.detectors:
            name = self.channel_map.detectors[code].name
            energy = int(acc.detector_energy_kev[code]) if code < len(acc.detector_energy_kev) else 0
            hits = int(acc.detector_hits[code]) if code < len(acc.detector_hits) else 0
            out[name] = {
                "channels": int(np.count_nonzero(self.channel_map.detector == code)),
                "energy_mean_gev": energy * 1e-6 / acc.events if acc.events else None,
                "hit_fraction": hits / acc.events if acc.events else None,
            }
        return out

    def process(
        self, words: np.ndarray, index: EventIndex | None = None, *, complete: bool | None = None,
        live: LiveExtras | None = None,
    ) -> QARecord:
        return self.finish(self.accumulate(words, index), complete=complete, live=live)
