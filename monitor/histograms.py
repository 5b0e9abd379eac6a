"""Per-spill and run-cumulative physics histograms (``hist`` / boost-histogram).

Every histogram has a leading ``trigger`` axis that splits events by
selection (an event may enter several): ``beam`` (trigger bit 1, unbiased
prescaled S1·S2 — its rate is proportional to the beam intensity),
``physics`` (bit 0, S1·S2·S3·V̄·ECAL), ``random`` (bit 2), ``calibration``
(CALIBRATION events, LED), ``electron`` (beam trigger with the SRD electron
tag) and ``candidate`` (missing-energy candidates, spec §11).

Histograms (energies in GeV, spec §11 sums):

========== ===============================================================
e_ecal     E_ECAL, both ECAL modules — 100 GeV electron peak
e_ps       E_PS, ECAL preshower (module 0)
e_hcal     E_HCAL, all HCAL modules — hadrons above 10 GeV
e_total    E_ECAL + E_HCAL (+ E_WCAL in visible mode) — the beam energy for
           electrons and hadrons; missing-energy events sit far below it
ecal_hcal  E_ECAL versus E_HCAL plane
srd        SRD sum (synchrotron-radiation tag window 5–150 MeV)
veto       largest VETO module energy (module = mean of its two PMTs; the
           candidate cut requires every module below 10 MeV)
time       trigger time in the spill (srcID 701, µs): intensity profile,
           spikes and early-spill saturation
========== ===============================================================

Storage is ``Int64`` (counts), so merging partial results of worker
processes is exact and order-independent. Filling is one vectorised
``fill`` per histogram per decoded chunk, never per event, with one entry per
event: internally the first axis is not the (overlapping) trigger selection
but an exclusive event *class* (beam / beam+electron tag × physics /
physics+candidate × random × calibration, 36 classes); the public ``hists``
(trigger axis) are the class counts summed per selection, made when read.

Reset semantics: a :class:`SpillHistograms` lives for one spill and is never
reset. :class:`RunHistograms` adds spills up; it resets itself when a spill
of another run arrives (``reason="new run"``) and on :meth:`RunHistograms.reset`
(operator); ``since`` / ``reset_reason`` / ``spills`` say what it holds.
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any, ClassVar, Mapping

import boost_histogram as bh
import hist
import numpy as np
from pydantic import model_validator

from ..config_section import ConfigSection, FieldProblem
from ..decoders._aot import kernels as _k

TRIGGERS = ("beam", "physics", "random", "calibration", "electron", "candidate")
TRIGGER_INDEX = {name: i for i, name in enumerate(TRIGGERS)}
_CALIBRATION_TYPE = 8
_RANDOM_BIT = 2


class HistogramConfig(ConfigSection):
    """Binning (GeV unless stated; ``[histograms]``): (bins, low, high). Spill and run histograms share it."""

    section: ClassVar[str] = "histograms"

    e_ecal: tuple[int, float, float] = (300, 0.0, 150.0)
    e_ps: tuple[int, float, float] = (250, 0.0, 50.0)
    e_hcal: tuple[int, float, float] = (300, 0.0, 150.0)
    e_total: tuple[int, float, float] = (200, 0.0, 200.0)
    plane: tuple[int, float, float] = (75, 0.0, 150.0)  # both axes of ecal_hcal
    srd: tuple[int, float, float] = (150, 0.0, 0.3)
    veto: tuple[int, float, float] = (100, 0.0, 0.05)
    time_us: tuple[int, float, float] = (600, 0.0, 6.0e6)  # 10 ms bins over 6 s

    @model_validator(mode="after")
    def _bins(self) -> "HistogramConfig":
        for name in type(self).model_fields:
            bins, lo, hi = getattr(self, name)
            if bins < 1 or not hi > lo:
                raise FieldProblem(name, f"need bins >= 1 and high > low, got {list(getattr(self, name))}")
        return self


N_CLASSES = 36  # be (3) × pk (3) × random (2) × calibration (2)


def _membership() -> np.ndarray:
    """(len(TRIGGERS), N_CLASSES) 0/1 matrix: which event class belongs to which trigger selection."""
    code = np.arange(N_CLASSES)
    be, pk, r, c = code % 3, (code // 3) % 3, (code // 9) % 2, code // 18
    rows = {"beam": be >= 1, "physics": pk >= 1, "random": r == 1, "calibration": c == 1,
            "electron": be == 2, "candidate": pk == 2}
    return np.array([rows[t] for t in TRIGGERS], dtype=np.int64)


MEMBERSHIP = _membership()
#: the histograms in the order of the fill kernel's count arguments
_KERNEL_ORDER = ("e_ecal", "e_ps", "e_hcal", "e_total", "ecal_hcal", "srd", "veto", "time")


def _flat(h: bh.Histogram, first: int) -> np.ndarray:
    """The Int64 storage of ``h`` (flow bins included) as a flat view in its own order: column-major, the
    first axis (``first`` classes or triggers) fastest — what the kernels write in place."""
    view = np.asarray(h.view(flow=True))
    if view.dtype != np.int64 or not view.flags.f_contiguous or view.shape[0] != first:
        raise RuntimeError(f"histogram {h.name}: storage is not column-major int64 with {first} rows first")
    counts = view.T.reshape(-1)  # C order of the transpose: a view
    if not np.shares_memory(counts, view):
        raise RuntimeError(f"histogram {h.name}: flat storage is not a view")
    return counts


def event_classes(decoded, physics) -> np.ndarray:
    """Exclusive class code per event (0..35); ``N_CLASSES`` for events that are not data.

    beam/electron: 0 no beam trigger, 1 beam trigger, 2 beam trigger with the SRD electron tag;
    physics/candidate: 0, 1 physics trigger, 2 physics-trigger missing-energy candidate (§11:
    candidates are physics-trigger events); random trigger bit; CALIBRATION event.
    """
    data = np.asarray(physics.is_data, dtype=bool)
    beam = np.asarray(physics.beam_trigger, dtype=bool)
    phys = np.asarray(physics.physics_trigger, dtype=bool)
    be = beam.astype(np.int64) + (beam & np.asarray(physics.electron, dtype=bool))
    pk = phys.astype(np.int64) + (phys & np.asarray(physics.candidate, dtype=bool))
    mask = np.asarray(decoded.trigger_mask).astype(np.int64)
    r = (mask >> _RANDOM_BIT) & 1
    c = (np.asarray(decoded.type) == _CALIBRATION_TYPE).astype(np.int64)
    code = be + 3 * pk + 9 * r + 18 * c
    code[~data] = N_CLASSES
    return code


def _class_axis() -> hist.axis.Integer:
    return hist.axis.Integer(0, N_CLASSES, name="class", label="event class (internal)", underflow=False,
                             overflow=False)


def _trigger_axis() -> hist.axis.Integer:
    return hist.axis.Integer(
        0, len(TRIGGERS), name="trigger", label="trigger: " + ", ".join(f"{i} {t}" for i, t in enumerate(TRIGGERS)),
        underflow=False, overflow=False,
    )


def _regular(spec, name: str, label: str) -> hist.axis.Regular:
    bins, lo, hi = spec
    return hist.axis.Regular(int(bins), float(lo), float(hi), name=name, label=label)


def make_histograms(cfg: HistogramConfig) -> dict[str, hist.Hist]:
    """Empty histograms of the configured binning (Int64 storage)."""
    t = _trigger_axis
    i64 = hist.storage.Int64
    return {
        "e_ecal": hist.Hist(t(), _regular(cfg.e_ecal, "e", "E_ECAL [GeV]"), storage=i64(), name="e_ecal", label="ECAL energy"),
        "e_ps": hist.Hist(t(), _regular(cfg.e_ps, "e", "E_PS [GeV]"), storage=i64(), name="e_ps", label="preshower energy"),
        "e_hcal": hist.Hist(t(), _regular(cfg.e_hcal, "e", "E_HCAL [GeV]"), storage=i64(), name="e_hcal", label="HCAL energy"),
        "e_total": hist.Hist(
            t(), _regular(cfg.e_total, "e", "E_ECAL + E_HCAL [GeV]"), storage=i64(), name="e_total", label="total energy"
        ),
        "ecal_hcal": hist.Hist(
            t(), _regular(cfg.plane, "e_ecal", "E_ECAL [GeV]"), _regular(cfg.plane, "e_hcal", "E_HCAL [GeV]"),
            storage=i64(), name="ecal_hcal", label="E_ECAL vs E_HCAL",
        ),
        "srd": hist.Hist(t(), _regular(cfg.srd, "e", "SRD sum [GeV]"), storage=i64(), name="srd", label="SRD sum"),
        "veto": hist.Hist(
            t(), _regular(cfg.veto, "e", "largest VETO module energy [GeV]"), storage=i64(), name="veto",
            label="VETO (max over modules)",
        ),
        "time": hist.Hist(
            t(), _regular(cfg.time_us, "t", "trigger time in spill [µs]"), storage=i64(), name="time",
            label="events versus time in spill",
        ),
    }


def selections(decoded, physics) -> np.ndarray:
    """Boolean (len(TRIGGERS), n) matrix: which event enters which trigger selection."""
    code = event_classes(decoded, physics)
    member = np.concatenate([MEMBERSHIP, np.zeros((len(TRIGGERS), 1), dtype=np.int64)], axis=1)
    return member[:, code].astype(bool)


def _make_coded(cfg: HistogramConfig) -> dict[str, hist.Hist]:
    """Internal class-coded twins of :func:`make_histograms` (first axis: event class)."""
    return {
        name: hist.Hist(_class_axis(), *h.axes[1:], storage=hist.storage.Int64(), name=name)
        for name, h in make_histograms(cfg).items()
    }


@functools.lru_cache(maxsize=8)
def _coded_template(cfg: HistogramConfig) -> dict[str, hist.Hist]:
    """Empty class-coded histograms of a binning, never filled: copied for each new set (a copy takes
    about a third of the time of building the histograms and their axes anew)."""
    return _make_coded(cfg)


@functools.lru_cache(maxsize=8)
def _trigger_template(cfg: HistogramConfig) -> dict[str, hist.Hist]:
    """Empty :func:`make_histograms` of a binning, never filled: copied for each set's ``hists``."""
    return make_histograms(cfg)


def _copies(template: dict[str, hist.Hist]) -> dict[str, hist.Hist]:
    """Copies of a template's histograms, each with a storage of its own."""
    return {name: copy.copy(h) for name, h in template.items()}


def _row_reduce(values: np.ndarray, op) -> np.ndarray:
    """Reduce an (n, k) array over its few columns (much faster than ``.sum(axis=1)`` for small k)."""
    if values.ndim == 1:
        return values
    if values.shape[1] == 0:
        return np.zeros(values.shape[0])
    out = values[:, 0].copy()
    for k in range(1, values.shape[1]):
        op(out, values[:, k], out=out)
    return out


def histogram_json(h: bh.Histogram) -> dict:
    """THE JSON shape of a histogram (:class:`~.model_served.HistogramJSON`: API, dashboard, archive JSON export).

    ``{"name", "label", "axes": [{"name", "label", "edges" | "categories"}], "values", "entries",
    "outside"}``: ``values`` are the bin contents without flow bins (nested lists in axis order,
    integers for counting storages); ``entries`` counts every fill, ``outside`` those that fell in
    under/overflow. The trigger axis lists :data:`TRIGGERS`; integer and category axes their
    categories, other axes their bin edges. (Exact copies, flow bins and all: the archive's blobs
    and the ROOT export.)
    """
    axes = []
    for ax in h.axes:
        entry: dict[str, Any] = {"name": ax.name, "label": ax.label}
        if ax.name == "trigger":
            entry["categories"] = list(TRIGGERS)
        elif isinstance(ax, bh.axis.Integer):
            entry["categories"] = [int(v) for v in ax.centers - 0.5]
        elif isinstance(ax, (bh.axis.IntCategory, bh.axis.StrCategory)):
            entry["categories"] = list(ax)
        else:
            entry["edges"] = ax.edges.tolist()
        axes.append(entry)
    values = np.asarray(h.values())
    counting = values.dtype.kind in "iu" or (values.size and np.all(np.mod(values, 1) == 0))
    total = h.sum(flow=True)
    total = float(getattr(total, "value", total))  # a weighted storage sums to (value, variance)
    inside = float(values.sum())
    as_number = int if counting else float
    return {
        "name": h.name,
        "label": h.label,
        "axes": axes,
        "values": values.astype(np.int64).tolist() if counting else values.tolist(),
        "entries": as_number(total),
        "outside": as_number(total - inside),
    }


class HistogramSet:
    """A named set of histograms of one binning; base of spill and run sets.

    ``hists`` are ``hist.Hist`` objects with the trigger axis, made from the
    internal class counts when read (cached until the next fill / merge):
    treat them as read-only results.
    """

    def __init__(self, config: HistogramConfig | None = None) -> None:
        self.config = config or HistogramConfig()
        self._coded: dict[str, hist.Hist] = _copies(_coded_template(self.config))
        self._cache: dict[str, hist.Hist] | None = None
        self.events = 0  # data events (PHYSICS + CALIBRATION) filled

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        state.pop("_flat_storages", None)  # views of this object's storages
        return state

    @property
    def hists(self) -> dict[str, hist.Hist]:
        if self._cache is None:
            out = _copies(_trigger_template(self.config))
            for name, h in out.items():
                # both storages are column-major (class / trigger axis fastest): flat views in that order, summed
                # per bin by a kernel in integers (numpy's int64 matmul has no BLAS: ~2 ms per set, a float64
                # product would start OpenBLAS's threads)
                _k.trigger_counts(_flat(self._coded[name], N_CLASSES), MEMBERSHIP, _flat(h, len(TRIGGERS)))
            self._cache = out
        return self._cache

    def __getitem__(self, name: str) -> hist.Hist:
        return self.hists[name]

    def spectrum(self, name: str, trigger: str, flow: bool = True) -> np.ndarray:
        """Counts of a 1-d histogram for one trigger selection (flow bins at both ends if ``flow``)."""
        h = self._coded[name]
        if h.ndim != 2:
            raise ValueError(f"{name} is not a spectrum (has {h.ndim - 1} value axes)")
        return MEMBERSHIP[TRIGGER_INDEX[trigger]] @ np.asarray(h.view(flow=flow))

    def entries(self, name: str, trigger: str) -> int:
        """Entries (flow included) of one trigger selection of any histogram."""
        coded = np.asarray(self._coded[name].view(flow=True)).reshape(N_CLASSES, -1).sum(axis=1)
        return int(MEMBERSHIP[TRIGGER_INDEX[trigger]] @ coded)

    def _add(self, other: "HistogramSet") -> None:
        if other.config != self.config:
            raise ValueError("cannot add histograms of a different binning (HistogramConfig differs)")
        for name, h in other._coded.items():
            # counts with flow bins, added in place (``other`` may hold plain arrays, or a worker's sparse counts)
            counts = self._coded[name].view(flow=True)
            if isinstance(h, bh.Histogram):
                counts += h.view(flow=True)
            elif isinstance(h, np.ndarray):
                counts += h
            else:  # a worker's result: the bins set and their counts (monitor/wire.py SparseCounts)
                h.add_to(counts)
        self.events += other.events
        self._cache = None

    def to_json(self) -> dict:
        """JSON-ready dict: ``{"events", "histograms": {name: {axes, values, entries, outside}}}``."""
        return {"events": self.events, "histograms": {n: histogram_json(h) for n, h in self.hists.items()}}


class SpillHistograms(HistogramSet):
    """Histograms of one spill, filled chunk by chunk; exactly mergeable and picklable.

    Usable as a ``SpillProcessor`` extension: ``SpillHistograms(channel_map)``
    (the map is not needed, it is accepted for the factory signature).
    """

    def __init__(self, channel_map=None, config: HistogramConfig | None = None) -> None:
        super().__init__(config)
        self.run: int | None = None
        self.spill: int | None = None

    def fill(self, decoded, physics) -> None:
        """Add one decoded chunk (``DecodedEvents`` + its ``EventPhysics``): one kernel pass
        (:func:`._histogram_kernels.fill_histograms`), the same counts as :meth:`fill_numpy`."""
        data = np.ascontiguousarray(physics.is_data, dtype=np.bool_)
        ndata = int(np.count_nonzero(data))
        if not ndata:
            return
        storages = self._storages()  # checked against the binning before anything is counted
        n = len(data)
        columns = [np.ascontiguousarray(a, dtype=d) for a, d in (
            (physics.beam_trigger, np.bool_), (physics.physics_trigger, np.bool_), (physics.electron, np.bool_),
            (physics.candidate, np.bool_), (decoded.trigger_mask, np.uint32), (decoded.type, np.int32),
            (physics.e_ecal, np.float64), (physics.e_ps, np.float64), (physics.e_hcal, np.float64),
            (physics.e_wcal, np.float64))]
        srd = np.ascontiguousarray(physics.srd, dtype=np.float64)
        veto = np.ascontiguousarray(physics.veto, dtype=np.float64)
        time_us = np.ascontiguousarray(decoded.trigger_time_us, dtype=np.int64)
        if (any(c.shape != (n,) for c in columns) or time_us.shape != (n,) or srd.ndim != 2 or veto.ndim != 2
                or srd.shape[0] != n or veto.shape[0] != n):
            raise ValueError("decoded and physics columns must have one entry per row of the chunk")
        self.events += ndata
        if self.run is None:
            first = int(np.flatnonzero(data)[0])
            self.run, self.spill = int(decoded.run[first]), int(decoded.spill[first])
        _k.fill_histograms(data, *columns, srd, veto, time_us, _RANDOM_BIT, _CALIBRATION_TYPE, self._axes(),
                           N_CLASSES, *storages)
        self._cache = None

    def fill_numpy(self, decoded, physics) -> None:
        """:meth:`fill` with numpy and boost-histogram's own fills (one per histogram): the reference
        the kernel is tested against."""
        data = np.asarray(physics.is_data, dtype=bool)
        ndata = int(np.count_nonzero(data))
        if not ndata:
            return
        self.events += ndata
        if self.run is None:
            first = int(np.flatnonzero(data)[0])
            self.run, self.spill = int(decoded.run[first]), int(decoded.spill[first])
        # one entry per event: the event's exclusive class (non-data rows get a code outside the
        # class axis, which has no flow bins, so boost-histogram drops them)
        code = event_classes(decoded, physics)
        e_ecal = np.asarray(physics.e_ecal)
        e_hcal = np.asarray(physics.e_hcal)
        columns = {
            "e_ecal": e_ecal,
            "e_ps": np.asarray(physics.e_ps),
            "e_hcal": e_hcal,
            # the calorimeter sum: visible mode adds the WCAL (zeros without one: E_ECAL + E_HCAL exactly)
            "e_total": e_ecal + e_hcal + np.asarray(physics.e_wcal),
            "srd": _row_reduce(np.asarray(physics.srd), np.add),
            "veto": _row_reduce(np.asarray(physics.veto), np.maximum),
        }
        fill = bh.Histogram.fill  # hist.Hist.fill only adds name handling on top
        h = self._coded
        for name, values in columns.items():
            fill(h[name], code, values)
        fill(h["ecal_hcal"], code, e_ecal, e_hcal)
        t = np.asarray(decoded.trigger_time_us)
        fill(h["time"], np.where(t >= 0, code, N_CLASSES), t.astype(np.float64))
        self._cache = None

    def cleared(self) -> "SpillHistograms":
        """This set emptied in place (counts zeroed, no run or spill), for reuse by its owner once it is
        done with it — e.g. a decoder worker after encoding its result (which copies the counts)."""
        for h in self._coded.values():
            h.reset()
        self.events = 0
        self.run = self.spill = None
        self._cache = None
        return self

    def _axes(self) -> np.ndarray:
        """(bins, low, high) rows of the kernel's axes: e_ecal, e_ps, e_hcal, e_total, srd, veto, time, plane
        E_ECAL, plane E_HCAL."""
        axes = self.__dict__.get("_axes_table")
        if axes is None:
            c = self.config
            axes = np.array([c.e_ecal, c.e_ps, c.e_hcal, c.e_total, c.srd, c.veto, c.time_us, c.plane, c.plane],
                            dtype=np.float64)
            self.__dict__["_axes_table"] = axes
        return axes

    def _storages(self) -> list[np.ndarray]:
        """The fill kernel's count arrays: each histogram's storage, flat (:func:`_flat`), cached."""
        flat = self.__dict__.get("_flat_storages")
        if flat is None:
            flat = [_flat(self._coded[name], N_CLASSES) for name in _KERNEL_ORDER]
            # the kernel indexes them with the configured axes: refuse storages of another binning
            axes = self._axes()
            bins = [int(b) + 2 for b in axes[:, 0]]
            wanted = dict(zip(("e_ecal", "e_ps", "e_hcal", "e_total", "srd", "veto", "time"), bins))
            wanted["ecal_hcal"] = bins[7] * bins[8]
            for name, counts in zip(_KERNEL_ORDER, flat):
                if len(counts) != N_CLASSES * wanted[name]:
                    raise ValueError(f"histogram {name}: storage of {len(counts)} counts, not the configured binning's")
            self.__dict__["_flat_storages"] = flat
        return flat

    def merge(self, other: "SpillHistograms") -> None:
        """Add another part of the same spill (exact: integer counts)."""
        if self.run is None:
            self.run, self.spill = other.run, other.spill
        elif other.run is not None and (other.run, other.spill) != (self.run, self.spill):
            raise ValueError(f"cannot merge spill {other.run}/{other.spill} into {self.run}/{self.spill}")
        self._add(other)

    def to_json(self) -> dict:
        out = super().to_json()
        out.update(run=self.run, spill=self.spill)
        return out


_TREND_KEYS = (
    "spill", "events", "beam", "triggers_accepted", "triggers_raw", "spill_duration_us", "dead_time_fraction",
    "hadron_fraction", "hadron_fraction_srd", "eot", "decode_errors", "lost_events", "finished_at",
)


class RunHistograms(HistogramSet):
    """Run-cumulative histograms plus per-spill trend rows (the newest ``trend_spills``) and run totals.

    ``add(spill_histograms, record)`` sums a finished spill in (``record`` is
    the spill's QA record dict; optional, it feeds the totals and trend).
    A spill of another run resets first (``reset_reason = "new run"``);
    :meth:`reset` is the operator's reset. Totals: spills, events, beam,
    electrons on target (EOT, spec §11 summed over the run), candidates.
    """

    MAX_CANDIDATES = 10000  # candidate rows kept per run (all are counted in ``candidates_total``)

    def __init__(self, config: HistogramConfig | None = None, run: int | None = None,
                 trend_spills: int = 2000) -> None:
        super().__init__(config)
        self.run = run
        self.trend_spills = trend_spills
        self._start("start")

    def _start(self, reason: str) -> None:
        self.reset_reason = reason
        self.since = time.time()
        self.spills = 0
        self.first_spill: int | None = None
        self.last_spill: int | None = None
        self.beam = 0
        self.eot = 0.0
        self.candidates: list[dict] = []  # {"spill", "event", ...numbers that made it pass}
        self.candidates_total = 0
        self.trend: list[dict] = []  # one row per spill added with a record, the newest trend_spills

    def reset(self, reason: str = "operator", run: int | None = None) -> None:
        """Empty everything (histograms, totals, trend); ``run`` given: the new run number."""
        self._coded = _copies(_coded_template(self.config))
        self._cache = None
        self.events = 0
        if run is not None:
            self.run = run
        self._start(reason)

    def add(self, spill: SpillHistograms | None, record: Mapping[str, Any] | None = None) -> None:
        """Sum a finished spill in (histograms and/or its QA record dict); another run resets first."""
        run = spill.run if spill is not None and spill.run is not None else (record or {}).get("run")
        if run is not None and self.run is not None and run != self.run:
            self.reset("new run", run=run)
        if run is not None:
            self.run = run
        if spill is not None:
            self._add(spill)
        number = spill.spill if spill is not None and spill.spill is not None else (record or {}).get("spill")
        self.spills += 1
        if number is not None:
            self.first_spill = number if self.first_spill is None else self.first_spill
            self.last_spill = number
        if record is not None:
            self.beam += int(record.get("beam") or 0)
            self.eot += float(record.get("eot") or 0.0)
            details = record.get("candidate_details") or [{"event": e} for e in record.get("candidates") or ()]
            self.candidates_total += len(details)
            room = self.MAX_CANDIDATES - len(self.candidates)
            self.candidates.extend({"spill": number, **dict(d)} for d in list(details)[: max(room, 0)])
            self.trend.append({k: record.get(k) for k in _TREND_KEYS} | {"candidates": len(record.get("candidates") or ())})
            if len(self.trend) > self.trend_spills:
                del self.trend[0]

    def to_json(self) -> dict:
        out = super().to_json()
        out.update(
            run=self.run, since=self.since, reset_reason=self.reset_reason, spills=self.spills,
            first_spill=self.first_spill, last_spill=self.last_spill, beam=self.beam, eot=self.eot,
            # copies: the snapshot of a spill must not change as the next spills are added
            candidates=list(self.candidates), candidates_total=self.candidates_total, trend=list(self.trend),
        )
        return out
