"""``reprocess``: archived raw files decoded on a Dask cluster, records identical to ``replay``.

The work is split where ``replay`` splits it, at spills:

1. **index** (a chain of step tasks per file, on one worker): the file's
   index pass and spill segmentation, the code ``replay`` runs
   (:meth:`~.daq.rawfile.RawFile.walk_step`), a step up to a completed spill
   (:func:`index_step`). The worker keeps the file mapped and the walk (the
   index rows since the last spill cut) between the steps of a pass; a step
   that runs where its walk is not walks the file again from its start.
2. **decode**, where the spills are while there is an index pass per worker
   thread (several files): the step decodes the spills it completes itself,
   from the pages its kernel call has just mapped, by ``replay``'s own call
   (``SpillProcessor.accumulate`` on the segment), releases those pages, and
   its result — small: the spills' accumulators in the decoder workers' wire
   format (:mod:`~.monitor.wire`: JSON header + arrays + CRC), built from
   the service's set-up text (:mod:`.worker_setup`) as ``serve``'s workers do,
   and a :class:`StepSummary` (spills, bytes, at the end what the file got
   wrong) — is what the client fetches: one task per spill. With fewer
   passes than threads (one file, the last file of a run) the step gives
   the spills' plans instead (they stay on the worker; the client gets the
   summary, :func:`step_result`), and **spill tasks** spread them: the
   spill's index rows (:func:`spill_plan`, next to the step), its own byte
   range of the file mapped read-only (:func:`spill_words`) and the same
   ``accumulate``; up to 4 per worker thread in flight, in merge order, each
   on the least busy worker. Either way the file must be at the same path on
   every worker — shared storage — so raw bytes never pass through the
   scheduler or the client.
3. **merge** (client, in file and spill order): each accumulator goes through
   ``SpillMonitor.handle`` — quality, channel history, run histograms, alarms,
   archive — exactly as in ``replay``, so the records are identical (up to
   the processing time and the finishing time stamp, which say when and how
   fast, not what).

A task that raises is retried by Dask (``retries``); a task on a worker that
dies is re-run elsewhere by the scheduler (an index step there walks its file
again, index only, to where its pass stood). A file that cannot be read is
reported with its reason and skipped; the others go on.

Dask (``pip install 'na64-online[cluster]'``) is imported only here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import mmap
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .decoders import layout
from .decoders.decode import EventIndex

from .cluster_config import ClusterConfig  # the [cluster] section (also reached as reprocess.ClusterConfig)
from .errors import DaqError

INSTALL_HINT = "reprocess needs Dask: pip install 'na64-online[cluster]' (dask[distributed])"


# =========================================================================== the plan of a file (worker side)
@dataclass(frozen=True, eq=False)
class SpillPlan:
    """One spill's index rows, re-based onto the bytes it needs.

    ``pieces``: ``(byte offset in the file, bytes)`` to read and concatenate,
    in order; ``index.offset`` counts words into that concatenation.
    (Several pieces only after a byte-shifted resync re-aligned the stream.)
    """

    path: str
    run: int
    spill: int
    complete: bool
    index: EventIndex
    pieces: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SpillSummary:
    run: int
    spill: int
    complete: bool
    bytes: int  # read from the file for this spill


@dataclass(frozen=True)
class StepSummary:
    """What the client learns of one step of a file's index pass: the spills it completed, and at the
    file's end (``done``) what the file got wrong, as replay reports it; ``position``: the bytes the pass
    has gone through, up to its last spill cut (the file's size at its end)."""

    path: str
    size: int
    spills: tuple[SpillSummary, ...]
    done: bool
    notes: tuple[tuple[str, str], ...] = ()
    position: int = 0


@dataclass(frozen=True, eq=False)
class IndexStep:
    """A task's result: one step of a file's index pass (:meth:`~.daq.rawfile.RawFile.walk_step`), the spills it
    completed either decoded there (``results``: each spill's accumulator in the wire format, in spill order) or
    as plans for spill tasks (``spills``), and where the walk stands: ``number`` (steps from the file's start,
    this one included) and ``walk_id``, the walk kept by the worker that ran the step (:func:`_walk_after`).
    Without plans it is small (~0.3 MB per spill of 10^5 events): the client fetches it as it is."""

    summary: StepSummary
    spills: tuple[SpillPlan, ...]
    any_spill: bool
    results: tuple["PackedResult", ...] = ()
    number: int = 0
    walk_id: str | None = None


@dataclass(frozen=True, eq=False)
class StepResult:
    """What the client fetches of an index step: its summary and, when the step decoded its spills, their
    results (in spill order), ~0.3 MB per spill of 10^5 events."""

    summary: StepSummary
    results: tuple["PackedResult", ...] = ()


def _pieces(index: EventIndex) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], int]:
    """A spill's bytes: per re-aligned piece (one unless a byte-shifted resync re-aligned the stream) the word
    range of its accepted events; returns the accepted rows, their word offsets into the concatenated pieces,
    the pieces ``(byte offset in the file, bytes)`` and the words in all."""
    accepted = index.status == 0
    # byte shift of each row's word grid relative to the file (0 everywhere unless the stream was re-aligned)
    shift = index.source_offset - 4 * index.offset
    offsets = np.zeros(len(index), dtype=np.int64)  # rejected rows are never decoded: word 0 keeps them in range
    pieces = []
    base = 0
    for delta in dict.fromkeys(shift[accepted].tolist()):
        rows = np.flatnonzero(accepted & (shift == delta))
        lo = int(index.offset[rows].min())
        hi = int((index.offset[rows] + index.size[rows]).max())
        offsets[rows] = index.offset[rows] - lo + base
        pieces.append((lo * 4 + int(delta), (hi - lo) * 4))
        base += hi - lo
    return accepted, offsets, pieces, base


def _rebase(path: str, segment) -> SpillPlan:
    """Cut a spill's bytes out of the stream: the word ranges of its accepted events, per re-aligned piece."""
    index: EventIndex = segment.index
    _, offsets, pieces, base = _pieces(index)
    columns = {name: getattr(index, name) for name in ("size", "status", "type", "run", "spill", "event",
                                                        "trigger_mask", "time", "super_event", "ldc", "skipped",
                                                        "source_offset")}
    rebased = EventIndex(offset=offsets, **columns, end=base, truncated=False)
    return SpillPlan(path, segment.run, segment.spill, segment.complete, rebased, tuple(pieces))


#: the files this worker process has mapped for index steps, by path: (identity, RawFile), most recent last.
#: A file's next step on this worker decodes from the pages the last one mapped (its last kernel call
#: indexed into the next spill) instead of mapping and faulting them again; a step releases the pages
#: before its last spill cut (:meth:`~.daq.rawfile.RawFile.release_pages`), and the walk's end the file.
_RAW_FILES: collections.OrderedDict = collections.OrderedDict()
_RAW_FILES_LOCK = threading.Lock()
#: files kept mapped at most (passes of other runs, or of a client that went away, are dropped oldest first)
RAW_FILES_KEPT = 4


def _identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # RawFile says why
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _raw_file(path: str, verified: bool):
    """This worker's mapping of the file (a new one if it changed since it was mapped)."""
    from .daq.rawfile import RawFile

    identity = _identity(path)
    with _RAW_FILES_LOCK:
        kept = _RAW_FILES.get(path)
        if kept is not None and kept[0] == identity and identity is not None:
            _RAW_FILES.move_to_end(path)
            return kept[1]
    raw = RawFile(path, verified=verified)
    if identity is not None:
        with _RAW_FILES_LOCK:
            _RAW_FILES[path] = (identity, raw)
            while len(_RAW_FILES) > RAW_FILES_KEPT:
                _RAW_FILES.popitem(last=False)
    return raw


def _forget_raw_file(path: str, raw) -> None:
    with _RAW_FILES_LOCK:
        if path in _RAW_FILES and _RAW_FILES[path][1] is raw:
            del _RAW_FILES[path]


#: where the index passes run on this worker stand, by walk id (:class:`IndexStep`), most recent last: a
#: pass's next step takes its walk from here (an :class:`~.daq.rawfile.IndexWalk` holds the index rows since
#: the last spill cut, up to a kernel call's worth), so the walk never travels as a task's result
_WALKS: collections.OrderedDict = collections.OrderedDict()
#: walks kept at most (a pass whose next step never came: its run ended, its client went away)
WALKS_KEPT = 32


def _keep_walk(walk) -> str:
    walk_id = uuid.uuid4().hex
    with _RAW_FILES_LOCK:
        _WALKS[walk_id] = walk
        while len(_WALKS) > WALKS_KEPT:
            _WALKS.popitem(last=False)
    return walk_id


def _walk_after(raw, previous: IndexStep):
    """Where the walk stands after ``previous``: the walk that step left on this worker, or, when it is not
    here (the step ran on another worker, since gone; this step is re-run), the walk re-done from the file's
    start to there — the steps are the same (each up to a completed spill), only not decoded."""
    with _RAW_FILES_LOCK:
        walk = _WALKS.pop(previous.walk_id, None)
    if walk is not None:
        return walk
    walk = raw.start_walk()
    for _ in range(previous.number):
        segments: list = []
        while not segments and not walk.done:
            segments, walk = raw.walk_step(walk)
        del segments
        raw.release_pages(walk.start)
    return walk


def index_step(path: str, previous: IndexStep | None = None, setup: tuple[bytes, ...] | None = None) -> IndexStep:
    """Task: the next step of a file's index pass (``replay``'s, :meth:`~.daq.rawfile.RawFile.iter_spills`),
    from where ``previous`` left it (None: the file's start); steps until one completes a spill or ends
    the file. Chained (the previous step is its input, so Dask runs it where that one ran and the walk is
    there), so spills are decoded while the rest of the file is indexed.

    With ``setup`` (:func:`~.worker_setup.encode_setup`) the spills it completes are decoded here, from the
    pages the index pass just mapped, by ``replay``'s own call (``SpillProcessor.accumulate`` on the
    segment), and their results are part of the step; without, it gives their plans for spill tasks
    (:func:`process_spill`). Either way the pages before the last spill cut are released after."""
    from .service import file_notes

    number = previous.number + 1 if previous is not None else 1
    if previous is not None and previous.summary.done:  # asked ahead of the file's end: nothing more
        return IndexStep(dataclasses.replace(previous.summary, spills=(), notes=()), (), previous.any_spill,
                         number=number)
    raw = _raw_file(path, verified=previous is not None)
    if raw.size == 0:
        _forget_raw_file(path, raw)
        return IndexStep(StepSummary(path, 0, (), True, (("error", "the file is empty (0 bytes)"),)), (), False,
                         number=number)
    walk = _walk_after(raw, previous) if previous is not None else raw.start_walk()
    any_spill = previous is not None and previous.any_spill
    segments: list = []
    while not segments and not walk.done:
        segments, walk = raw.walk_step(walk)
    try:
        if setup is not None:
            processor = _processor(setup)
            plans: tuple[SpillPlan, ...] = ()
            results = tuple(_encoded(processor, processor.accumulate(s.words, s.index)) for s in segments)
            spills = tuple(SpillSummary(s.run, s.spill, s.complete, _pieces(s.index)[3] * 4) for s in segments)
        else:
            plans = tuple(_rebase(path, s) for s in segments)
            results = ()
            spills = tuple(SpillSummary(p.run, p.spill, p.complete, sum(n for _, n in p.pieces)) for p in plans)
    finally:
        del segments  # views of the mapping
        if walk.done:
            _forget_raw_file(path, raw)
        raw.release_pages(raw.size if walk.done else walk.start)
    any_spill = any_spill or bool(spills)
    notes = tuple((n.level, n.text) for n in file_notes(walk.stats, any_spill)) if walk.done else ()
    summary = StepSummary(path, raw.size, spills, walk.done, notes, raw.size if walk.done else walk.start)
    return IndexStep(summary, plans, any_spill, results, number, None if walk.done else _keep_walk(walk))


def step_result(step: IndexStep) -> StepResult:
    """Task: the part of an index step the client needs (its walk and plans stay on the worker)."""
    return StepResult(step.summary, step.results)


def spill_plan(step: IndexStep, number: int) -> SpillPlan:
    """Task: one spill's plan (runs where the index step is, so only this part travels)."""
    return step.spills[number]


@contextlib.contextmanager
def spill_words(plan: SpillPlan) -> Iterator[np.ndarray]:
    """The spill's bytes as the words its index points into, for the duration of the ``with``.

    A spill of one word-aligned piece (always, unless a byte-shifted resync
    re-aligned the stream) is a read-only view of the file mapped into memory,
    as ``replay`` decodes it: the worker allocates and copies nothing, and the
    pages are the page cache's (shared by the worker processes of a host and
    released when the task ends). Otherwise the pieces are read into one
    buffer (:func:`read_spill_words`).
    """
    if len(plan.pieces) != 1 or plan.pieces[0][0] % 4:
        yield read_spill_words(plan)
        return
    start, nbytes = plan.pieces[0]
    if nbytes == 0:
        yield np.zeros(0, dtype=layout.WORD)
        return
    with open(plan.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if start + nbytes > size:
            raise DaqError(f"{plan.path}: the file ended at byte {size} inside spill {plan.spill} "
                           f"of run {plan.run} (changed since it was indexed?)")
        page = start - start % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(f.fileno(), start + nbytes - page, access=mmap.ACCESS_READ, offset=page)
    try:
        yield np.frombuffer(mapped, dtype=layout.WORD, count=nbytes // 4, offset=start - page)
    finally:
        try:
            mapped.close()
        except BufferError:  # a view outlived the task (an exception's traceback): unmapped when collected
            pass


def read_spill_words(plan: SpillPlan) -> np.ndarray:
    """The spill's bytes from the file, copied into one buffer, as the words its index points into."""
    total = sum(n for _, n in plan.pieces)
    words = np.empty(total // 4, dtype=layout.WORD)
    view = memoryview(words.view(np.uint8))
    position = 0
    with open(plan.path, "rb") as f:
        fd = f.fileno()
        for start, nbytes in plan.pieces:
            done = 0
            while done < nbytes:
                got = os.preadv(fd, [view[position + done: position + nbytes]], start + done)
                if got == 0:
                    raise DaqError(f"{plan.path}: the file ended at byte {start + done} inside spill {plan.spill} "
                                   f"of run {plan.run} (changed since it was indexed?)")
                done += got
            position += nbytes
    return words


_PROCESSORS: dict[str, object] = {}
_PROCESSORS_LOCK = threading.Lock()


def _processor(setup: tuple[bytes, bytes]):
    """This worker process's processor for a set-up (built once per set-up, from its text)."""
    from .worker_setup import build_processor

    key = hashlib.sha256(b"\0".join(setup)).hexdigest()
    with _PROCESSORS_LOCK:
        processor = _PROCESSORS.get(key)
        if processor is None:
            processor = _PROCESSORS[key] = build_processor(setup)
    return processor


@dataclass(frozen=True, eq=False)
class PackedResult:
    """A spill's result — the decoder workers' wire frames (:mod:`~.monitor.wire`: header, ~30 arrays,
    CRC) — in one buffer: ``data`` holds frame ``k`` at ``[starts[k], starts[k] + sizes[k])`` (each
    frame at a multiple of 8 bytes, so the arrays read from it are aligned). Dask sends the one array's
    buffer as it is, where ~30 arrays were ~30 serialisations and frames per result, each handled by
    the worker's and the client's event loops (measured: ~1.5 ms of CPU per result, both sides)."""

    starts: tuple[int, ...]
    sizes: tuple[int, ...]
    data: np.ndarray

    @classmethod
    def pack(cls, frames) -> "PackedResult":
        views = [memoryview(f).cast("B") for f in frames]
        sizes = tuple(len(v) for v in views)
        starts = tuple(int(x) for x in np.cumsum([0] + [-(-n // 8) * 8 for n in sizes[:-1]]))
        data = np.empty(starts[-1] + sizes[-1] if views else 0, dtype=np.uint8)
        for start, view in zip(starts, views):
            data[start: start + len(view)] = np.frombuffer(view, dtype=np.uint8)
        return cls(starts, sizes, data)

    def frames(self) -> list[np.ndarray]:
        """The frames, as views of ``data`` (nothing copied)."""
        return [self.data[a: a + n] for a, n in zip(self.starts, self.sizes)]


def _encoded(processor, acc) -> PackedResult:
    return PackedResult.pack(processor.encode_result(acc))


def process_spill(plan: SpillPlan, setup: tuple[bytes, ...]) -> PackedResult:
    """Task: decode one spill from its own bytes; the accumulator in the workers' wire format."""
    processor = _processor(setup)
    with spill_words(plan) as words:
        acc = processor.accumulate(words, plan.index)
    return _encoded(processor, acc)


# =========================================================================== the client
@dataclass
class ReprocessStats:
    files: int = 0
    files_skipped: int = 0
    spills: int = 0
    events: int = 0
    bytes: int = 0  # raw file bytes of the files reprocessed
    seconds: float = 0.0
    cluster_seconds: float = 0.0  # starting / connecting to the cluster
    merge_seconds: float = 0.0  # the client's merge: results read, SpillMonitor.handle, on_record
    #: from the last spill result taken in to the end of the merge: the client's merge no worker overlaps (the
    #: spills of later files wait for the file before them: their merge is in spill order)
    tail_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.bytes / self.seconds / 1e9 if self.seconds else 0.0
        events = self.events / self.seconds if self.seconds else 0.0
        skipped = f" ({self.files_skipped} skipped)" if self.files_skipped else ""
        return (f"reprocessed {self.files} files{skipped}, {self.spills} spills, {self.events} events, "
                f"{self.bytes / 1e9:.3f} GB in {self.seconds:.2f} s: {rate:.3f} GB/s, {events:,.0f} events/s "
                f"(cluster start {self.cluster_seconds:.1f} s)")


def require_dask():
    """Import ``distributed``, or a :class:`DaqError` saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise DaqError(INSTALL_HINT) from None
    return distributed


def security_of(cluster: ClusterConfig):
    """Dask TLS ``Security`` from the configured certificate files (None without them)."""
    if not cluster.tls:
        return None
    from distributed.security import Security

    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if not Path(getattr(cluster, name)).is_file():
            raise DaqError(f"cluster {name}: no file {getattr(cluster, name)}")
    return Security(tls_ca_file=cluster.tls_ca_file, tls_client_cert=cluster.tls_cert_file,
                    tls_client_key=cluster.tls_key_file, tls_scheduler_cert=cluster.tls_cert_file,
                    tls_scheduler_key=cluster.tls_key_file, tls_worker_cert=cluster.tls_cert_file,
                    tls_worker_key=cluster.tls_key_file, require_encryption=True)


#: Dask settings of the cluster ``reprocess`` starts (deploy/reprocess.md gives them to workers started by
#: hand or by a batch system). Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which
#: also pins glibc's threshold for serving allocations by ``mmap`` at 128 KiB: every array of a decoded
#: chunk is then fresh pages, mapped and unmapped per chunk (measured: 38 000 page faults and +30 % CPU
#: per spill of 10^5 events); unset, glibc reuses those buffers as in ``replay``. The statistical
#: profiler (sampling every task thread every 10 ms, for a dashboard this cluster does not have) and
#: the 20 ms event-loop tick and 100 ms memory checks of every process cost an idle 2-worker cluster
#: 0.16 of a core (measured; 0.02 with these settings) — 8 % of a 2-core host, taken from the decoding.
WORKER_DASK_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
}


def cluster_dask_config(settings: dict | None = None) -> dict:
    """``settings`` (default :data:`WORKER_DASK_CONFIG`) less those the user's Dask configuration sets: in a
    YAML file (``~/.config/dask``, ``/etc/dask``, ``DASK_CONFIG``) or a ``DASK_…`` variable, or, by
    ``dask.config.set``, to other than Dask's default. The user's value wins, as with workers started by
    ``dask worker``."""
    import dask
    import distributed  # noqa: F401 - registers distributed's defaults in dask.config.defaults

    defaults: dict = {}
    for layer in dask.config.defaults:
        defaults = dask.config.merge(defaults, layer)
    # the YAML files and DASK_ variables, without the packaged defaults
    users = dask.config.collect(paths=dask.config.paths)
    absent = object()

    def users_own(key: str) -> bool:
        return (dask.config.get(key, absent, config=users) is not absent
                or dask.config.get(key, absent) != dask.config.get(key, absent, config=defaults))

    return {key: value for key, value in (WORKER_DASK_CONFIG if settings is None else settings).items()
            if not users_own(key)}


def local_cluster(workers: int, security=None):
    """A ``LocalCluster`` of ``workers`` processes of one thread each (the decoder is compiled code
    that holds no lock: processes scale), bound to 127.0.0.1, without dashboard, with
    :data:`WORKER_DASK_CONFIG` where the user's Dask configuration keeps Dask's defaults
    (:func:`cluster_dask_config`). Dask's default memory limit (the host's memory shared among the
    workers) leaves a spill of ~400 MB, which is mapped, not copied, far from its thresholds.

    Each nanny gets its own copy of that configuration for the workers it starts, a worker that died and is
    started again included: a nanny keeps only a shallow copy of the configuration it was made under, whose
    nested settings the end of the ``dask.config.set`` block would give back to Dask's defaults."""
    import copy

    import dask
    import distributed

    with dask.config.set(cluster_dask_config()):
        return distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
            protocol="tls://" if security else "tcp://", security=security, config=copy.deepcopy(dask.config.config),
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DaqError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, eq=False)
class _Decoded:
    """A spill's result decoded ahead of its merge (``acc`` None: it did not decode; ``frames`` again at the merge)."""

    acc: object
    frames: PackedResult


@dataclass(eq=False)
class _FileRun:
    """One file of a run, as the client follows it: its index steps asked for and not yet taken in (step,
    result futures), where its index pass runs, its spills known and not yet given a task, and its spills
    to merge, in order: decoded in their index step (the result at hand) or by a spill task (its future)."""

    i: int
    path: str
    asked: int = 0  # index steps asked for
    last: object = None  # the last step asked for (the next one's input)
    steps: collections.deque = field(default_factory=collections.deque)  # (step future, result future)
    heard: int = 0  # steps taken in
    worker: str | None = None  # where its index pass runs (a hint to Dask: loose)
    indexed: bool = False  # its index pass ended (or failed)
    end: StepSummary | None = None
    skipped: str | None = None  # why the file cannot be read
    waiting: collections.deque = field(default_factory=collections.deque)  # (step future, summary, n)
    items: collections.deque = field(default_factory=collections.deque)  # (summary, n, part, future, frames)
    size: int = 0
    position: int = 0  # bytes its pass has gone through, as last heard
    spills: int = 0  # spills found so far

    def nearly_done(self) -> bool:
        """Less than two spills' worth of the file (by its spills so far) is left to index: its next step is
        its last one, or the one after it."""
        return self.spills > 0 and self.size - self.position < 2 * self.position / self.spills

    def ending(self) -> bool:
        """At most one and a half spills' worth of the file (by its spills so far) is left to index: the step
        after the last one heard of is likely its last one."""
        return self.spills > 0 and 2 * (self.size - self.position) <= 3 * self.position / self.spills

    def decoded(self) -> int:
        """Its spills decoded in index steps, held here until merged."""
        return sum(1 for item in self.items if item[4] is not None)


class Reprocessor:
    """Runs files on a Dask cluster and merges the spills through ``replay``'s monitor, in order.

    ``on_record(record)`` / ``on_note(path, level, text)`` are called in the
    client's thread as results are merged. ``window``: spill tasks in flight (default 4 per worker
    thread); ``ahead``: spills decoded in the index steps of files after the one being merged that the
    client holds at most (default ``[cluster] ahead`` per worker thread, 16, ~0.3 MB each for 10^5 events).
    """

    def __init__(self, config, channel_map, cluster: ClusterConfig, *, archive: str | None = None,
                 progress: bool = False, window: int | None = None, ahead: int | None = None) -> None:
        self.config = config
        self.channel_map = channel_map
        self.cluster_config = cluster
        self.archive = archive
        self.progress = progress
        self.window = window
        self.ahead = ahead
        self.stats = ReprocessStats()

    def run(self, files: Sequence[str | os.PathLike], on_record: Callable[[dict], None],
            on_note: Callable[[str, str, str], None]) -> ReprocessStats:
        distributed = require_dask()
        from .service import Replayer
        from .worker_setup import encode_setup

        started = time.perf_counter()
        security = security_of(self.cluster_config)
        cluster = None
        if self.cluster_config.scheduler is None:
            cluster = local_cluster(self.cluster_config.workers, security)
            address = cluster.scheduler_address
        else:
            address = self.cluster_config.scheduler
        try:
            direct = self.cluster_config.direct_to_workers
            if direct is None:
                direct = cluster is not None
            with distributed.Client(address, security=security, timeout="30s", direct_to_workers=direct) as client:
                self.stats.cluster_seconds = time.perf_counter() - started
                replayer = Replayer(self.config, self.channel_map, archive_path=self.archive)
                try:
                    self._run(client, replayer, encode_setup(self.config, self.channel_map), files,
                              on_record, on_note)
                finally:
                    replayer.close()
        except OSError as exc:  # cannot reach the scheduler
            raise DaqError(f"cannot use the Dask scheduler at {address}: {exc}") from None
        finally:
            if cluster is not None:
                cluster.close()
        self.stats.seconds = time.perf_counter() - started - self.stats.cluster_seconds
        return self.stats

    def _run(self, client, replayer, setup, files, on_record, on_note) -> None:
        """Index the files step by step, decode their spills, and merge them in order.

        The client waits for whatever comes first — a step of an index pass, or the spill to merge next
        — so indexing, decoding and merging overlap. A file's index pass runs as chained step tasks
        (:func:`index_step`, each up to a completed spill), one step ahead of the step the client has
        heard of; the passes of up to one file per worker thread run at once, in file order, each kept
        on one worker (loosely: a pass whose worker leaves goes on elsewhere). While there are that many
        passes, each step decodes the spills it completes where it runs, from the pages it has just
        mapped (one task per spill; its result, small, is what the client fetches); the client
        holds the results of files after the one it merges, up to ``ahead`` spills (then only the file
        being merged is indexed). With fewer passes than threads (one file; the last files of a run)
        the steps only plan their spills, and spill tasks (:func:`process_spill`, ``window`` in flight,
        given in merge order, across file boundaries once a file is indexed whole) are placed on the
        worker with the fewest unfinished tasks of this run per thread: a spill task depends on its
        spill's index rows, which sit on the worker that indexed the file, and Dask runs a task where
        its inputs are (work stealing moves few of them), so without the placement one worker decoded a
        whole file while the others idled.
        """
        distributed = require_dask()
        retries = self.cluster_config.retries
        threads = sum(client.nthreads().values()) or 1
        window = self.window or max(4, 4 * threads)
        ahead = self.ahead if self.ahead is not None else self.cluster_config.ahead * threads
        token = f"{os.getpid()}-{time.time_ns()}"
        known = [time.monotonic(), client.nthreads()]

        def workers() -> dict[str, int]:
            """The workers and their threads, asked of the scheduler at most once a second (a round trip)."""
            if time.monotonic() - known[0] > 1.0:
                known[:] = time.monotonic(), client.nthreads()
            return known[1]

        files_ = [_FileRun(i, str(Path(f).resolve())) for i, f in enumerate(files)]
        arrived = [time.perf_counter()]  # when the last spill result was taken in
        bars: dict[int, object] = {}
        placed: dict[str, list] = {}  # worker address -> this run's spill tasks and decoding steps placed there
        in_flight = 0
        merging = 0  # the file merged now

        def pass_worker(file: "_FileRun") -> str | None:
            """The worker of the file's index pass: kept while it is there; else the one with the fewest passes."""
            nthreads = workers()
            if file.worker not in nthreads and nthreads:
                passes = collections.Counter(f.worker for f in files_ if not f.indexed and f is not file)
                file.worker = min(nthreads, key=lambda w: (passes[w] / max(nthreads[w], 1), len(placed.get(w, ()))))
            return file.worker

        def step(file: "_FileRun", decode: bool) -> None:
            """Ask for the file's next index step (after the last one asked for), decoding its spills or not."""
            number = file.asked
            worker = pass_worker(file)
            where = {"workers": [worker], "allow_other_workers": True} if worker else {}
            future = client.submit(index_step, file.path, file.last, setup if decode else None,
                                   key=f"na64-index-{token}-{file.i}-{number}", retries=retries, priority=2, **where)
            if decode:  # its result is small: the client takes it as it is
                result = future
                if worker:  # (finished ones dropped: a future held keeps its result on the worker)
                    placed[worker] = [f for f in placed.get(worker, ()) if not f.done()] + [future]
            else:  # its plans stay on the worker
                result = client.submit(step_result, future, key=f"na64-stepresult-{token}-{file.i}-{number}",
                                       priority=2)
            file.asked += 1
            file.last = future
            file.steps.append((future, result))

        def passes() -> list["_FileRun"]:
            """The files whose index pass goes on: in file order, up to one per worker thread — the file being
            merged always, later ones while the client holds fewer than ``ahead`` of their decoded spills."""
            room = sum(f.decoded() for f in files_[merging + 1:]) < ahead
            active = []
            for file in files_[merging:]:
                if file.indexed:
                    continue
                if active and not room:
                    break
                active.append(file)
                if len(active) == threads:
                    break
            return active

        def index_ahead() -> None:
            """Keep each file whose pass goes on a step ahead of what is known."""
            active = passes()
            for file in active:
                # with fewer passes than threads, spill tasks spread the work over the idle threads — unless
                # at most the spill of the step after the one running is left: spreading one spill gains nothing
                # and maps it twice
                decode = len(active) >= threads or file.nearly_done()
                # a step ahead of the running one, unless that one is (by the bytes per spill so far) the
                # file's last: a step asked past the file's end is a task that finds nothing
                while file.asked - file.heard < (1 if file.ending() else 2) and len(file.waiting) < window:
                    step(file, decode)

        def submit_ready() -> None:
            nonlocal in_flight
            for file in files_:
                while in_flight < window and file.waiting:
                    future_step, summary, n = file.waiting.popleft()
                    key = f"{token}-{file.i}-{future_step.key.rsplit('-', 1)[-1]}-{n}"
                    worker = self._least_busy(workers(), placed)
                    where = {"workers": [worker], "allow_other_workers": True} if worker else {}
                    part = client.submit(spill_plan, future_step, n, key=f"na64-spillplan-{key}", priority=1)
                    future = client.submit(process_spill, part, setup, key=f"na64-spill-{key}", retries=retries,
                                           **where)
                    if worker:
                        placed.setdefault(worker, []).append(future)
                    file.items.append((summary, n, part, future, None))
                    in_flight += 1
                if in_flight >= window or not file.indexed:
                    # in merge order: a later file's spills would hold the window while this file's next
                    # spills, not yet indexed, could get no task and the merge would wait for them forever
                    return

        def heard(file: "_FileRun") -> None:
            """Take in the file's index steps that have come, in order."""
            while file.steps and not file.indexed:
                future_step, result_future = file.steps[0]
                if not result_future.done():
                    return
                file.steps.popleft()
                file.heard += 1
                try:
                    result: IndexStep | StepResult = result_future.result()
                except Exception as exc:  # noqa: BLE001 - this file cannot be read (further): the others go on
                    file.indexed = True
                    if file.heard == 1:
                        file.skipped = _reason(exc)
                    else:  # its spills so far are merged; the rest of the file is lost
                        file.end = StepSummary(file.path, 0, (), True, (
                            ("error", f"indexing stopped: {_reason(exc)}; the rest of the file skipped"),))
                    break
                finally:
                    if result_future is not future_step:  # (a step's own future may be the next one's input)
                        result_future.release()
                summary = result.summary
                if file.heard == 1:
                    self.stats.files += 1
                    self.stats.bytes += summary.size
                file.size, file.position = summary.size, summary.position
                file.spills += len(summary.spills)
                self._bars_for(summary, bars)
                if result.results:  # decoded in the step
                    arrived[0] = time.perf_counter()
                    file.items.extend((summary, n, None, None, frames) for n, frames in enumerate(result.results))
                else:
                    file.waiting.extend((future_step, summary, n) for n in range(len(summary.spills)))
                if summary.done:
                    file.indexed = True
                    file.end = summary
            if file.indexed:
                for future_step, result_future in file.steps:  # asked ahead of the file's end
                    future_step.release()
                    if result_future is not future_step:
                        result_future.release()
                file.steps.clear()
                file.last = None

        try:
            while merging < len(files_):
                for file in files_[merging:]:
                    heard(file)
                index_ahead()
                submit_ready()
                file = files_[merging]
                if file.items:
                    summary, n, part, future, frames = file.items[0]
                    if frames is not None or future.done():
                        file.items.popleft()
                        if frames is None:
                            try:
                                frames = future.result()
                                arrived[0] = time.perf_counter()
                            except Exception as exc:  # noqa: BLE001 - reported, the next spills go on
                                spill = summary.spills[n]
                                reason = f"run {spill.run} spill {spill.spill}: {_reason(exc)}; spill skipped"
                                self.stats.errors.append(f"{summary.path}: {reason}")
                                on_note(summary.path, "error", reason)
                            finally:
                                part.release()
                                future.release()
                                in_flight -= 1
                            submit_ready()
                        if frames is not None:
                            self._merge(replayer, summary.spills[n], frames, on_record, bars)
                        continue
                elif file.indexed and not file.waiting:  # every spill of the file merged
                    if file.skipped is not None:
                        self._skip(file.path, file.skipped, on_note)
                    else:
                        for level, text in file.end.notes:
                            on_note(file.path, level, text)
                            if level == "error":
                                self.stats.errors.append(f"{file.path}: {text}")
                    merging += 1
                    continue
                if self._decode_ahead(replayer, files_[merging:]):  # the client's idle time used
                    continue
                # wait for what comes first: the spill to merge next, or an index step
                waiting_on = [f.steps[0][1] for f in files_[merging:] if f.steps and not f.indexed]
                if file.items:
                    waiting_on.append(file.items[0][3])
                if waiting_on:
                    distributed.wait(waiting_on, return_when="FIRST_COMPLETED")
        finally:
            self.stats.tail_seconds = time.perf_counter() - arrived[0]
            for bar in bars.values():
                bar.close()

    @staticmethod
    def _least_busy(nthreads: dict[str, int], placed: dict[str, list]) -> str | None:
        """The worker with the fewest unfinished spill tasks of this run per thread (None: no worker yet)."""
        for worker in list(placed):
            placed[worker] = [f for f in placed[worker] if not f.done()]
            if worker not in nthreads:
                del placed[worker]
        if not nthreads:
            return None
        return min(nthreads, key=lambda w: len(placed.get(w, ())) / max(nthreads[w], 1))

    def _skip(self, path: str, reason: str, on_note) -> None:
        self.stats.files_skipped += 1
        self.stats.errors.append(f"{path}: {reason}")
        on_note(path, "error", f"{reason}; file skipped")

    def _bars_for(self, summary: StepSummary, bars: dict) -> None:
        """One progress bar per run (spills of the run in this file added to its total)."""
        if not self.progress:
            return
        from tqdm import tqdm

        for s in summary.spills:
            bar = bars.get(s.run)
            if bar is None:
                bar = bars[s.run] = tqdm(total=0, unit="B", unit_scale=True, desc=f"run {s.run}",
                                         position=len(bars), leave=True, file=sys.stderr)
            bar.total += s.bytes
            bar.refresh()

    def _decode_ahead(self, replayer, files: list["_FileRun"]) -> bool:
        """Decode one result that waits for its turn to be merged (the spills of a later file, decoded in
        its index steps): done while the client would wait, not at the end of the run while the workers
        idle. False: none left."""
        for file in files:
            for k, (summary, n, part, future, frames) in enumerate(file.items):
                if frames is None or isinstance(frames, _Decoded):
                    continue
                started = time.perf_counter()
                try:
                    acc = replayer.monitor.processor.decode_result(frames.frames())
                except Exception:  # noqa: BLE001 - decoded again when merged, and fails there as replay would
                    acc = None
                file.items[k] = (summary, n, part, future, _Decoded(acc, frames))
                self.stats.merge_seconds += time.perf_counter() - started
                return True
        return False

    def _merge(self, replayer, spill: SpillSummary, frames, on_record, bars) -> None:
        """One spill's result through ``SpillMonitor.handle``, as ``replay`` finishes it."""
        merging = time.perf_counter()
        if isinstance(frames, _Decoded) and frames.acc is not None:
            acc = frames.acc
        else:
            acc = replayer.monitor.processor.decode_result((frames.frames if isinstance(frames, _Decoded) else frames).frames())
        record = replayer.monitor.handle(acc, complete=spill.complete)
        self.stats.spills += 1
        self.stats.events += int(record.get("events") or 0)
        bar = bars.get(spill.run)
        if bar is not None:
            bar.update(spill.bytes)
            bar.clear()
        on_record(record)
        if bar is not None:
            bar.refresh()
        self.stats.merge_seconds += time.perf_counter() - merging
