"""The decoder workers' result on the wire: an explicit, versioned format (no pickle).

A :class:`~.pipeline.SpillAccumulator` (with its channel statistics and
histograms) travels as ZeroMQ frames::

    frame 0        header: UTF-8 JSON object
                   {"format": "na64-spill-accumulator", "version": 3,
                    "scalars": {...}, "issues": [[src, label, n], ...],
                    "extensions": {name: {"kind": ..., ...}},
                    "arrays": [{"name": ..., "dtype": "<i8" | "<f8" | "|b1" | "<u4", "shape": [...]}, ...]}
    frames 1 … n   the arrays' raw bytes, C order, in the order of "arrays"
    frame n + 1    CRC-32 (4 bytes, little-endian) of frames 0 … n

Histograms travel sparse: per histogram ``H`` of extension ``X`` two arrays,
``X.H.bins`` (``<i8``, strictly increasing indices into the histogram's
counts with flow bins, flattened in Fortran order — the first axis fastest,
as boost-histogram stores them, so that encoding reads them in place) and ``X.H.counts`` (``<i8``, the
counts there); every other bin is zero. A chunk of a few thousand events fills
few bins: the E_ECAL–E_HCAL plane (213 444 bins, 1.7 MB dense) has about a
hundred, so a result is some 100 kB instead of 2.3 MB, and the service adds in
only the bins that are set.

Decoding trusts nothing: the frame count, the checksum, the header's size,
format name and version (another version is refused), every scalar's type
and range, and every array's name, dtype and shape against the frame it
describes — all before a numpy view is made. Extensions must be exactly
those of the receiving service's own processor (a :class:`ResultSchema` taken
once from its ``new_accumulator()``) with the same binning and map size.
The raw events of the first candidates (the live dashboard's event display)
travel as three arrays: ``candidate_events.event`` (event numbers),
``candidate_events.size`` (words each) and ``candidate_events.words`` (the
built DATE events one after the other, ``<u4``); at most the service's
``candidate_events_per_spill``, each a candidate of the same result, each
indexing as whole accepted events of that number and no other.
Anything else raises :class:`ResultFormatError`. :func:`read_accumulator`
gives the validated result as views of the frames, which
``SpillAccumulator.merge`` adds into the spill's accumulator (what the live
service does: no accumulator, no histogram object is built per result);
:func:`decode_accumulator` fills it into a fresh accumulator.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any, Sequence

import numpy as np

from ..errors import Issue, ResultFormatError
from .health import ChannelStats
from .histograms import HistogramConfig, SpillHistograms
from .pipeline import Candidate, SpillAccumulator

FORMAT = "na64-spill-accumulator"
VERSION = 4  # 2: per-detector energy and hits; 3: candidates' raw events; 4: histograms sparse
MAX_HEADER_BYTES = 1 << 20
MAX_EVENT_NUMBER = 1 << 32  # event number in burst is a 32-bit field (spec §3)
_CRC = struct.Struct("<I")
_DTYPES = {"<i8": np.dtype("<i8"), "<f8": np.dtype("<f8"), "|b1": np.dtype("|b1"), "<u4": np.dtype("<u4")}
#: largest candidate event accepted (words): far above a built NA64 event (a few kB)
MAX_CANDIDATE_EVENT_WORDS = 1 << 18
_INT64 = (-(1 << 63), (1 << 63) - 1)
_COUNT = (0, (1 << 63) - 1)
_ISSUE_LABELS = frozenset(i.label for i in Issue if i != Issue.NONE)
_COUNTERS = ("events", "physics_events", "calibration_events", "beam_events", "hadron_events",
             "no_electron_beam_events", "rejected_events", "skipped_bytes", "bytes_decoded")
_FLAGS = ("saw_start_of_burst", "saw_end_of_burst")
_CANDIDATE_VALUES = ("e_ps", "e_ecal", "e_hcal", "srd_sum", "veto_max")
_MAX_SCALERS = 64


# =========================================================================== encoding
def encode_accumulator(acc: SpillAccumulator) -> list:
    """The frames of ``acc`` (arrays are sent as they are, without copying)."""
    arrays: list[tuple[str, np.ndarray]] = []

    def add(name: str, value: np.ndarray, dtype: str) -> dict:
        arr = np.ascontiguousarray(value, dtype=_DTYPES[dtype])
        arrays.append((name, arr))
        return {"name": name, "dtype": dtype, "shape": list(arr.shape)}

    descriptors = [add("seen_events", acc.seen_events, "|b1")]
    cands = acc.candidates
    descriptors.append(add("candidates.event", np.array([c.event for c in cands], dtype=np.int64), "<i8"))
    values = np.array([[getattr(c, k) for k in _CANDIDATE_VALUES] for c in cands], dtype=np.float64)
    descriptors.append(add("candidates.values", values.reshape(len(cands), len(_CANDIDATE_VALUES)), "<f8"))
    kept = acc.candidate_events
    descriptors.append(add("candidate_events.event", np.array([e for e, _ in kept], dtype=np.int64), "<i8"))
    descriptors.append(add("candidate_events.size", np.array([len(w) for _, w in kept], dtype=np.int64), "<i8"))
    descriptors.append(add("candidate_events.words", np.concatenate([w for _, w in kept]) if kept
                           else np.zeros(0, dtype=np.uint32), "<u4"))
    descriptors.append(add("detector_energy_kev", acc.detector_energy_kev, "<i8"))
    descriptors.append(add("detector_hits", acc.detector_hits, "<i8"))
    extensions: dict[str, dict] = {}
    for name, ext in acc.extensions.items():
        if isinstance(ext, ChannelStats):
            extensions[name] = {"kind": "channel_stats", "nslots": ext.nslots, "hit_threshold": ext.hit_threshold,
                                "run": ext.run, "spill": ext.spill, "events": ext.events}
            descriptors.append(add(f"{name}.counts", ext.counts, "<i8"))
            descriptors.append(add(f"{name}.sums", ext.sums, "<f8"))
        elif isinstance(ext, SpillHistograms):
            extensions[name] = {"kind": "spill_histograms", "config": _config_json(ext.config),
                                "run": ext.run, "spill": ext.spill, "events": ext.events,
                                "histograms": sorted(ext._coded)}  # noqa: SLF001 - same package
            for hname in sorted(ext._coded):  # noqa: SLF001
                # Fortran order: boost-histogram's own, a view (C order would copy and transpose each histogram)
                flat = np.asarray(ext._coded[hname].view(flow=True)).ravel(order="F")  # noqa: SLF001
                bins = np.flatnonzero(flat != 0)  # on a bool array: several times faster than on the counts
                descriptors.append(add(f"{name}.{hname}.bins", bins, "<i8"))
                descriptors.append(add(f"{name}.{hname}.counts", flat[bins], "<i8"))
        else:
            raise TypeError(f"extension {name!r} ({type(ext).__name__}) has no wire format")
    scalars: dict[str, Any] = {name: int(getattr(acc, name)) for name in _COUNTERS}
    scalars.update({name: bool(getattr(acc, name)) for name in _FLAGS})
    scalars.update(run=acc.run, spill=acc.spill, first_time=acc.first_time, last_time=acc.last_time,
                   decode_seconds=float(acc.decode_seconds), scalers=acc.scalers)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "scalars": scalars,
        "issues": [[int(src), str(label), int(n)] for (src, label), n in sorted(acc.issues.items())],
        "extensions": extensions,
        "arrays": descriptors,
    }
    frames: list = [json.dumps(header, separators=(",", ":"), allow_nan=False).encode()]
    frames.extend(memoryview(arr).cast("B") if arr.nbytes else b"" for _, arr in arrays)
    return frames + [_CRC.pack(_crc(frames))]


def _config_json(config: HistogramConfig) -> dict:
    return {k: list(v) for k, v in vars(config).items()}


def _crc(frames: Sequence) -> int:
    crc = 0
    for f in frames:
        crc = zlib.crc32(f, crc)
    return crc


# =========================================================================== decoding
class ResultSchema:
    """What a result must match: the extensions of this service's processor, their binning and sizes.

    Taken once from a fresh accumulator (``new_accumulator()``), so that reading a result builds no
    histogram objects."""

    def __init__(self, template: SpillAccumulator) -> None:
        self.detectors = len(template.detector_energy_kev)  # detectors of the service's table
        self.candidate_event_cap = template.candidate_event_cap
        self.extensions: dict[str, tuple] = {}
        for name, ext in template.extensions.items():
            if isinstance(ext, ChannelStats):
                self.extensions[name] = ("channel_stats", ext.nslots, ext.hit_threshold, ext.counts.shape,
                                         ext.sums.shape)
            elif isinstance(ext, SpillHistograms):
                coded = ext._coded  # noqa: SLF001 - same package
                self.extensions[name] = ("spill_histograms", ext.config, _config_json(ext.config),
                                         {h: coded[h].view(flow=True).shape for h in sorted(coded)})
            else:
                raise TypeError(f"extension {name!r} ({type(ext).__name__}) has no wire format")


class ChannelStatsResult:
    """A worker's channel statistics as read from the wire (arrays are views of the frames)."""

    def __init__(self, nslots: int, hit_threshold: float) -> None:
        self.nslots, self.hit_threshold = nslots, hit_threshold
        self.run = self.spill = None
        self.events = 0
        self.counts = self.sums = None


class SparseCounts:
    """A histogram's counts with flow bins as they travel: the bins set (Fortran-order flat indices, strictly
    increasing, validated against ``shape``) and their counts, views of the frames."""

    def __init__(self, bins: np.ndarray, counts: np.ndarray, shape: tuple[int, ...]) -> None:
        self.bins, self.counts, self.shape = bins, counts, shape

    def add_to(self, dense: np.ndarray) -> None:
        """Add into ``dense`` (counts with flow bins of ``shape``, any memory layout)."""
        if dense.shape != self.shape:
            raise ValueError(f"sparse counts of shape {self.shape} cannot be added to {dense.shape}")
        if self.bins.shape[0]:
            dense[np.unravel_index(self.bins, self.shape, order="F")] += self.counts  # unique bins: no lost adds

    def toarray(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.int64)
        self.add_to(out)
        return out


class HistogramsResult:
    """A worker's spill histograms as read from the wire: per histogram its :class:`SparseCounts`
    (views of the frames), as ``SpillHistograms.merge`` adds them."""

    def __init__(self, config: HistogramConfig) -> None:
        self.config = config
        self.run = self.spill = None
        self.events = 0
        self._coded: dict[str, np.ndarray] = {}


class AccumulatorResult:
    """A worker's result, validated, as ``SpillAccumulator.merge`` takes it: no accumulator is built
    for it and its arrays are not copied (they are views of the received frames, kept alive by them)."""

    def __init__(self) -> None:
        self.extensions: dict[str, Any] = {}


def read_accumulator(frames: Sequence, schema: ResultSchema) -> AccumulatorResult:
    """The result in ``frames``, validated against ``schema``: what ``SpillAccumulator.merge`` adds.

    Raises :class:`ResultFormatError` (saying what is wrong) for anything that
    is not exactly a result of this format and of the schema's set-up.
    """
    buffers = [_buffer(f, i) for i, f in enumerate(frames)]
    if len(buffers) < 3:
        raise ResultFormatError(f"a result has a header, arrays and a checksum; got {len(buffers)} frame(s)")
    if len(buffers[-1]) != _CRC.size:
        raise ResultFormatError(f"checksum frame has {len(buffers[-1])} bytes, not {_CRC.size}")
    (expected,) = _CRC.unpack(buffers[-1])
    if _crc(buffers[:-1]) != expected:
        raise ResultFormatError("checksum mismatch: the result was damaged")
    header = _header(buffers[0])
    descriptors = _descriptors(header.get("arrays"), len(buffers) - 2)
    arrays: dict[str, np.ndarray] = {}
    for desc, buf in zip(descriptors, buffers[1:-1]):
        name, dtype, shape = desc
        nbytes = math.prod(shape) * dtype.itemsize
        if len(buf) != nbytes:
            raise ResultFormatError(f"array {name!r}: header says {shape} × {dtype.str} = {nbytes} bytes, "
                                    f"frame has {len(buf)}")
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape) if nbytes else np.zeros(shape, dtype)
    acc = AccumulatorResult()
    _scalars(acc, header.get("scalars"))
    acc.issues = _issues(header.get("issues"))
    used = {"seen_events", "candidates.event", "candidates.values", "detector_energy_kev", "detector_hits",
            "candidate_events.event", "candidate_events.size", "candidate_events.words"}
    seen = _array(arrays, "seen_events", "|b1", ndim=1)
    if len(seen) > MAX_EVENT_NUMBER + 1:
        raise ResultFormatError(f"seen_events: {len(seen)} entries, beyond the 32-bit event number")
    acc.seen_events = seen.view(np.uint8) != 0
    events = _array(arrays, "candidates.event", "<i8", ndim=1)
    values = _array(arrays, "candidates.values", "<f8", shape=(len(events), len(_CANDIDATE_VALUES)))
    acc.candidates = [Candidate(int(e), *(float(x) for x in row)) for e, row in zip(events, values)]
    acc.candidate_events = _candidate_events(arrays, {c.event for c in acc.candidates}, schema.candidate_event_cap)
    for name in ("detector_energy_kev", "detector_hits"):  # one entry per detector of the service's table
        arr = _array(arrays, name, "<i8", shape=(schema.detectors,))
        if np.any(arr < 0):
            raise ResultFormatError(f"array {name!r}: negative entries")
        setattr(acc, name, arr)
    extensions = header.get("extensions")
    if not isinstance(extensions, dict) or set(extensions) != set(schema.extensions):
        raise ResultFormatError(f"extensions {sorted(extensions) if isinstance(extensions, dict) else extensions!r}"
                                f" are not this service's {sorted(schema.extensions)}")
    for name, expect in schema.extensions.items():
        meta = extensions[name]
        if not isinstance(meta, dict):
            raise ResultFormatError(f"extension {name!r}: expected an object")
        if expect[0] == "channel_stats":
            ext, names = _channel_stats(expect, name, meta, arrays)
        else:
            ext, names = _histograms(expect, name, meta, arrays)
        acc.extensions[name] = ext
        used |= names
    extra = set(arrays) - used
    if extra:
        raise ResultFormatError(f"unexpected array(s) {sorted(extra)}")
    return acc


def _candidate_events(arrays: dict, candidates: set[int], cap: int) -> list[tuple[int, np.ndarray]]:
    """The candidates' raw events: (event number, words view), each checked to be that candidate's event."""
    from ..decoders.decode import index_events

    numbers = _array(arrays, "candidate_events.event", "<i8", ndim=1)
    sizes = _array(arrays, "candidate_events.size", "<i8", shape=(len(numbers),))
    words = _array(arrays, "candidate_events.words", "<u4", ndim=1)
    if len(numbers) > cap:
        raise ResultFormatError(f"candidate_events: {len(numbers)} events, this service keeps at most {cap}")
    if np.any(sizes < 1) or np.any(sizes > MAX_CANDIDATE_EVENT_WORDS) or int(sizes.sum()) != len(words):
        raise ResultFormatError(f"candidate_events: sizes {_short(sizes.tolist())} do not divide the "
                                f"{len(words)} words")
    out = []
    start = 0
    for number, size in zip(numbers.tolist(), sizes.tolist()):
        if number not in candidates:
            raise ResultFormatError(f"candidate_events: event {number} is not a candidate of this result")
        event = words[start: start + size]
        start += size
        index = index_events(event)
        if (not len(index) or index.end != size or np.any(index.status != 0)
                or np.any(index.event != number)):
            raise ResultFormatError(f"candidate_events: the words given for event {number} are not that "
                                    "event, whole")
        out.append((number, event))
    return out


def decode_accumulator(frames: Sequence, template: SpillAccumulator,
                       schema: ResultSchema | None = None) -> SpillAccumulator:
    """The accumulator in ``frames``, filled into ``template`` (a fresh ``new_accumulator()``;
    ``schema``: its :class:`ResultSchema`, if kept). Nothing is filled in when the result is refused
    (:class:`ResultFormatError`)."""
    template.merge(read_accumulator(frames, schema or ResultSchema(template)))
    return template


def _buffer(frame, i: int) -> memoryview:
    buf = getattr(frame, "buffer", frame)  # zmq.Frame or bytes-like
    try:
        view = memoryview(buf)
    except TypeError:
        raise ResultFormatError(f"frame {i} is not bytes") from None
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def _header(buf: memoryview) -> dict:
    if len(buf) > MAX_HEADER_BYTES:
        raise ResultFormatError(f"header of {len(buf)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(buf).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ResultFormatError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ResultFormatError("header is not a JSON object")
    if header.get("format") != FORMAT:
        raise ResultFormatError(f"format {header.get('format')!r} is not {FORMAT!r}")
    version = header.get("version")
    if version != VERSION or isinstance(version, bool):
        raise ResultFormatError(f"format version {version!r} is not supported (this service reads {VERSION})")
    return header


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _descriptors(value, n_frames: int) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    if not isinstance(value, list):
        raise ResultFormatError("header 'arrays' must be a list")
    if len(value) != n_frames:
        raise ResultFormatError(f"header describes {len(value)} array(s), message carries {n_frames}")
    out = []
    names = set()
    for i, desc in enumerate(value):
        if not isinstance(desc, dict) or set(desc) != {"name", "dtype", "shape"}:
            raise ResultFormatError(f"array {i}: expected {{name, dtype, shape}}, got {_short(desc)}")
        name, dtype, shape = desc["name"], desc["dtype"], desc["shape"]
        if not isinstance(name, str) or not 0 < len(name) <= 64 or name in names:
            raise ResultFormatError(f"array {i}: bad or repeated name {_short(name)}")
        names.add(name)
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ResultFormatError(f"array {name!r}: dtype {_short(dtype)} not one of {sorted(_DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > 4
                or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 40 for n in shape)):
            raise ResultFormatError(f"array {name!r}: bad shape {_short(shape)}")
        out.append((name, _DTYPES[dtype], tuple(shape)))
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(value, where: str, bounds=_INT64, optional: bool = False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ResultFormatError(f"{where}: expected an integer within {bounds[0]}..{bounds[1]}, got {_short(value)}")
    return value


def _scalars(acc: SpillAccumulator, s) -> None:
    if not isinstance(s, dict):
        raise ResultFormatError("header 'scalars' must be an object")
    known = set(_COUNTERS) | set(_FLAGS) | {"run", "spill", "first_time", "last_time", "decode_seconds", "scalers"}
    if set(s) != known:
        raise ResultFormatError(f"scalars: missing {sorted(known - set(s))}, unexpected {sorted(set(s) - known)}")
    for name in _COUNTERS:
        setattr(acc, name, _int(s[name], f"scalars.{name}", _COUNT))
    for name in _FLAGS:
        if not isinstance(s[name], bool):
            raise ResultFormatError(f"scalars.{name}: expected true or false, got {_short(s[name])}")
        setattr(acc, name, s[name])
    for name in ("run", "spill", "first_time", "last_time"):
        setattr(acc, name, _int(s[name], f"scalars.{name}", optional=True))
    seconds = s["decode_seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e9:
        raise ResultFormatError(f"scalars.decode_seconds: expected seconds >= 0, got {_short(seconds)}")
    acc.decode_seconds = float(seconds)
    scalers = s["scalers"]
    if scalers is not None:
        if not isinstance(scalers, list) or len(scalers) > _MAX_SCALERS:
            raise ResultFormatError(f"scalars.scalers: expected a list of at most {_MAX_SCALERS}, got {_short(scalers)}")
        scalers = [_int(v, f"scalars.scalers[{i}]", optional=True) for i, v in enumerate(scalers)]
    acc.scalers = scalers


def _issues(value) -> dict[tuple[int, str], int]:
    if not isinstance(value, list):
        raise ResultFormatError("header 'issues' must be a list")
    out: dict[tuple[int, str], int] = {}
    for i, item in enumerate(value):
        if not isinstance(item, list) or len(item) != 3:
            raise ResultFormatError(f"issues[{i}]: expected [srcID, label, count], got {_short(item)}")
        src = _int(item[0], f"issues[{i}] srcID", (-1, 1 << 16))
        if not isinstance(item[1], str) or item[1] not in _ISSUE_LABELS:  # a list or object is no label
            raise ResultFormatError(f"issues[{i}]: unknown issue label {_short(item[1])}")
        key = (src, item[1])
        out[key] = out.get(key, 0) + _int(item[2], f"issues[{i}] count", _COUNT)
    return out


def _array(arrays: dict, name: str, dtype: str, ndim: int | None = None, shape: tuple | None = None) -> np.ndarray:
    arr = arrays.get(name)
    if arr is None:
        raise ResultFormatError(f"array {name!r} is missing")
    if arr.dtype != _DTYPES[dtype]:
        raise ResultFormatError(f"array {name!r}: dtype {arr.dtype.str}, expected {dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ResultFormatError(f"array {name!r}: {arr.ndim} dimensions, expected {ndim}")
    if shape is not None and arr.shape != tuple(shape):
        raise ResultFormatError(f"array {name!r}: shape {list(arr.shape)}, expected {list(shape)}")
    return arr


def _run_spill_events(ext, name: str, meta: dict) -> None:
    ext.run = _int(meta.get("run"), f"extension {name!r} run", optional=True)
    ext.spill = _int(meta.get("spill"), f"extension {name!r} spill", optional=True)
    ext.events = _int(meta.get("events"), f"extension {name!r} events", _COUNT)


def _channel_stats(expect: tuple, name: str, meta: dict, arrays: dict) -> tuple[ChannelStatsResult, set[str]]:
    _, nslots, hit_threshold, counts_shape, sums_shape = expect
    if set(meta) != {"kind", "nslots", "hit_threshold", "run", "spill", "events"} or meta["kind"] != "channel_stats":
        raise ResultFormatError(f"extension {name!r}: not channel statistics as this service keeps them")
    if meta["nslots"] != nslots or meta["hit_threshold"] != hit_threshold:
        raise ResultFormatError(f"extension {name!r}: {_short(meta['nslots'])} slots / threshold "
                                f"{_short(meta['hit_threshold'])}, this service has {nslots} / {hit_threshold}")
    ext = ChannelStatsResult(nslots, hit_threshold)
    _run_spill_events(ext, name, meta)
    ext.counts = _array(arrays, f"{name}.counts", "<i8", shape=counts_shape)
    ext.sums = _array(arrays, f"{name}.sums", "<f8", shape=sums_shape)
    return ext, {f"{name}.counts", f"{name}.sums"}


def _histograms(expect: tuple, name: str, meta: dict, arrays: dict) -> tuple[HistogramsResult, set[str]]:
    _, config, config_json, shapes = expect
    if (set(meta) != {"kind", "config", "run", "spill", "events", "histograms"}
            or meta["kind"] != "spill_histograms"):
        raise ResultFormatError(f"extension {name!r}: not spill histograms as this service keeps them")
    if meta["config"] != config_json:
        raise ResultFormatError(f"extension {name!r}: binning {_short(meta['config'])} differs from this service's")
    if meta["histograms"] != list(shapes):
        raise ResultFormatError(f"extension {name!r}: histograms {_short(meta['histograms'])}, "
                                f"expected {list(shapes)}")
    ext = HistogramsResult(config)
    _run_spill_events(ext, name, meta)
    for hname, shape in shapes.items():
        ext._coded[hname] = _sparse_counts(arrays, f"{name}.{hname}", shape)  # noqa: SLF001
    return ext, {f"{name}.{hname}.{part}" for hname in shapes for part in ("bins", "counts")}


def _sparse_counts(arrays: dict, name: str, shape: tuple[int, ...]) -> SparseCounts:
    """``name.bins`` / ``name.counts``: as many counts as bins, bins strictly increasing within ``shape``."""
    bins = _array(arrays, f"{name}.bins", "<i8", ndim=1)
    counts = _array(arrays, f"{name}.counts", "<i8", shape=bins.shape)
    size = math.prod(shape)
    if bins.shape[0] > size:
        raise ResultFormatError(f"array {name + '.bins'!r}: {bins.shape[0]} bins, the histogram has {size}")
    if bins.shape[0] and (bins[0] < 0 or bins[-1] >= size or np.any(bins[1:] <= bins[:-1])):
        raise ResultFormatError(f"array {name + '.bins'!r}: bins not strictly increasing within 0 … {size - 1}")
    return SparseCounts(bins, counts, tuple(shape))
