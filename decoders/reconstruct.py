"""Event-level reference reconstruction, spec §11, vectorised over a decoded chunk.

From per-channel energies: detector sums by the role each detector has in the
map's detector table (decoders/detectors.toml): E_PS = the ``ecal`` detector's
module 0 (preshower), E_ECAL = all its modules, E_HCAL = the ``hcal`` detector,
E_WCAL = the ``wcal`` detector (visible mode; 0 without one), the
``electron_tag`` (SRD) per module, the ``veto`` per module (mean of its PMTs);
the electron tag, hadron-like beam-trigger events and missing-energy
candidates; and every detector's energy sum per event (``detector_energy``,
columns in table order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

from ..config_section import ConfigSection, FieldProblem
from . import layout
from ._aot import kernels as _k
from .channelmap import ChannelMap
from .decode import DecodeBuffers, DecodedEvents
from ..errors import FIRST_NOTICE, ISSUE_DESCRIPTIONS, Issue


class PhysicsCuts(ConfigSection):
    """Spec §11 selection; every number is configuration, defaults are the spec's (``[monitor.cuts]``)."""

    section: ClassVar[str] = "monitor.cuts"

    srd_module_min_gev: float = 0.001
    srd_sum_min_gev: float = 0.005
    srd_sum_max_gev: float = 0.150
    hadron_hcal_min_gev: float = 10.0
    candidate_ps_min_gev: float = 0.5
    candidate_ecal_max_gev: float = 50.0
    candidate_hcal_max_gev: float = 1.0
    candidate_veto_max_gev: float = 0.01
    beam_cell: tuple[int, int] = (2, 2)
    physics_trigger_bit: int = Field(0, ge=0, le=31)
    beam_trigger_bit: int = Field(1, ge=0, le=31)

    @model_validator(mode="after")
    def _agree(self) -> "PhysicsCuts":
        if self.srd_sum_min_gev > self.srd_sum_max_gev:
            raise FieldProblem("srd_sum_min_gev", f"must not exceed srd_sum_max_gev ({self.srd_sum_max_gev})")
        if self.physics_trigger_bit == self.beam_trigger_bit:
            raise FieldProblem("beam_trigger_bit", f"must differ from physics_trigger_bit ({self.physics_trigger_bit})")
        return self


def _columns(slots: np.ndarray):
    """A slice when the slots are contiguous (a view, no copy), else the slot array."""
    if len(slots) and np.array_equal(slots, np.arange(slots[0], slots[0] + len(slots))):
        return slice(int(slots[0]), int(slots[0]) + len(slots))
    return slots


@dataclass(frozen=True)
class DetectorGeometry:
    """Slot groups of a channel map used by the sums (computed once per map).

    Groups are column selectors of the (event, slot) arrays: slices where the
    map keeps a detector's channels together, slot arrays otherwise.
    """

    ecal: np.ndarray | slice
    preshower: np.ndarray | slice
    main_ecal: np.ndarray | slice
    main_ecal_xy: np.ndarray  # (main-ECAL cells, 2)
    hcal: np.ndarray | slice
    srd_modules: tuple[np.ndarray | slice, ...]
    veto_modules: tuple[np.ndarray | slice, ...]
    wcal: np.ndarray | slice = field(default_factory=lambda: slice(0, 0))
    #: (table code, role, columns) of every detector of the table with channels in the map
    detectors: tuple[tuple[int, str, np.ndarray | slice], ...] = ()
    n_detectors: int = 0  # rows of the table (columns of ``detector_energy``)

    def __post_init__(self) -> None:
        # the groups summed per event, as one column list with group boundaries (the kernel's input):
        # preshower, ECAL, HCAL, WCAL, each SRD module, each VETO module, then every other detector
        others = tuple(columns for _, role, columns in self.detectors if role not in _OWN_SUMS)
        groups = (self.preshower, self.ecal, self.hcal, self.wcal, *self.srd_modules, *self.veto_modules, *others)
        columns = [_column_array(g) for g in groups]
        object.__setattr__(self, "sum_columns", np.ascontiguousarray(np.concatenate(columns), dtype=np.int64))
        object.__setattr__(self, "sum_starts", np.cumsum([0] + [len(c) for c in columns]).astype(np.int64))
        # numpy sums a slice's columns pairwise, a slot array's copy column by column (see ._reconstruct)
        object.__setattr__(self, "sum_scattered", np.array([not isinstance(g, slice) for g in groups], dtype=np.bool_))
        object.__setattr__(self, "main_columns", np.ascontiguousarray(_column_array(self.main_ecal), dtype=np.int64))
        object.__setattr__(self, "module_widths", np.array([len(c) for c in columns[_FIRST_MODULE:]], dtype=np.int64))

    @classmethod
    def from_map(cls, channel_map: ChannelMap) -> "DetectorGeometry":
        table = channel_map.detectors
        none = np.zeros(0, dtype=np.int64)

        def slots(role: str, module: int | None = None) -> np.ndarray:
            d = table.by_role(role)
            return channel_map.slots(d.code, module) if d is not None else none

        def modules(role: str) -> tuple[np.ndarray, ...]:
            d = table.by_role(role)
            if d is None:
                return ()
            # sorted(set()), not np.unique: that imports numpy.ma (≈ 10 % of numpy's import) for a few modules
            present = sorted(set(channel_map.module[channel_map.detector == d.code].tolist()))
            return tuple(_columns(channel_map.slots(d.code, m)) for m in present)

        main = slots("ecal", 1)
        present = [(d.code, d.role, _columns(channel_map.slots(d.code))) for d in table
                   if np.any(channel_map.detector == d.code)]
        return cls(
            ecal=_columns(slots("ecal")),
            preshower=_columns(slots("ecal", 0)),
            main_ecal=_columns(main),
            main_ecal_xy=np.stack([channel_map.x[main], channel_map.y[main]], axis=1).astype(np.int64),
            hcal=_columns(slots("hcal")),
            srd_modules=modules("electron_tag"),
            veto_modules=modules("veto"),
            wcal=_columns(slots("wcal")),
            detectors=tuple(present),
            n_detectors=len(table),
        )


@dataclass(frozen=True, eq=False)
class EventPhysics:
    """Per-event quantities of a decoded chunk (all arrays of length n)."""

    e_ps: np.ndarray
    e_ecal: np.ndarray
    e_hcal: np.ndarray
    srd: np.ndarray  # (n, SRD modules)
    veto: np.ndarray  # (n, VETO modules)
    is_data: np.ndarray
    physics_trigger: np.ndarray
    beam_trigger: np.ndarray
    electron: np.ndarray
    hadron_like: np.ndarray
    candidate: np.ndarray
    main_ecal_max_cell: np.ndarray  # (n, 2) x, y of the hottest main-ECAL cell; −1 if no energy
    e_wcal: np.ndarray  # visible mode's WCAL sum (zeros without a wcal detector)
    detector_energy: np.ndarray  # (n, detectors of the table): each detector's energy sum


#: roles whose detector sum is one of the selection's own (not summed twice)
_OWN_SUMS = ("ecal", "hcal", "wcal")
_PS, _ECAL, _HCAL, _WCAL = range(4)
_FIRST_MODULE = 4  # group index of the first SRD module


def _column_array(columns: np.ndarray | slice) -> np.ndarray:
    if isinstance(columns, slice):
        return np.arange(columns.start, columns.stop, dtype=np.int64)
    return np.asarray(columns, dtype=np.int64)


def _group_sums(energy: np.ndarray, geometry: DetectorGeometry, buffers=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sums (n, groups), first hottest main-ECAL column position (n,), its energy (n,)) from the kernel,
    after checking the arrays it indexes."""
    energy = np.ascontiguousarray(energy, dtype=np.float64)
    if energy.ndim != 2:
        raise ValueError("energy must be (events, slots)")
    n, nslots = energy.shape
    _check_columns(geometry, nslots)
    take = (buffers or DecodeBuffers()).take
    sums = take("group_sums", (n, len(geometry.sum_starts) - 1), np.float64)
    hottest = take("hottest_column", (n,), np.int64, 0)
    top = take("hottest_energy", (n,), np.float64, 0.0)
    _k.group_sums(energy, geometry.sum_columns, geometry.sum_starts, geometry.sum_scattered,
                  geometry.main_columns, sums, hottest, top)
    return sums, hottest, top


def _check_columns(geometry: DetectorGeometry, nslots: int) -> None:
    """Refuse group or main-ECAL columns outside ``nslots`` slots (once per geometry and width)."""
    checked = geometry.__dict__.setdefault("_columns_checked", set())
    if nslots in checked:
        return
    for columns in (geometry.sum_columns, geometry.main_columns):
        if len(columns) and (columns.min() < 0 or columns.max() >= nslots):
            raise ValueError(f"geometry columns outside the {nslots} slots of the decoded chunk")
    checked.add(nslots)


def _selection_setup(geometry: DetectorGeometry, cuts: PhysicsCuts, nslots: int, ngroups: int):
    """(module widths, main-ECAL cells' x/y, beam-cell energy column or −1, cut values) for the selection
    kernel, checked against the group sums and the slots; computed once per geometry, cuts and width."""
    limits = (cuts.srd_module_min_gev, cuts.srd_sum_min_gev, cuts.srd_sum_max_gev, cuts.hadron_hcal_min_gev,
              cuts.candidate_ps_min_gev, cuts.candidate_ecal_max_gev, cuts.candidate_hcal_max_gev,
              cuts.candidate_veto_max_gev, cuts.physics_trigger_bit, cuts.beam_trigger_bit)
    key = (nslots, ngroups, limits, tuple(cuts.beam_cell))
    cache = geometry.__dict__.setdefault("_selection_setup", {})
    found = cache.get(key)
    if found is not None:
        return found
    n_srd, n_veto = len(geometry.srd_modules), len(geometry.veto_modules)
    widths = np.ascontiguousarray(geometry.module_widths[:n_srd + n_veto])
    _, groups = _detector_columns(geometry)
    xy = np.ascontiguousarray(geometry.main_ecal_xy, dtype=np.int64).reshape(-1, 2)
    beam_column = -1
    if len(xy):
        beam_col = np.flatnonzero((xy[:, 0] == cuts.beam_cell[0]) & (xy[:, 1] == cuts.beam_cell[1]))
        if len(beam_col):
            beam_column = int(geometry.main_columns[beam_col[0]])
    if len(xy) != len(geometry.main_columns):
        raise ValueError("main-ECAL positions do not match its columns")
    if (_FIRST_MODULE + n_srd + n_veto > ngroups or (len(groups) and groups.max() >= ngroups)
            or not -1 <= beam_column < nslots):
        raise ValueError("geometry groups outside the group sums")
    if len(cache) > 16:  # configurations change rarely; keep the cache bounded anyway
        cache.clear()
    found = cache[key] = (widths, xy, beam_column, np.array(limits, dtype=np.float64))
    return found


def reconstruct(decoded: DecodedEvents, geometry: DetectorGeometry, cuts: PhysicsCuts = PhysicsCuts(),
                buffers: DecodeBuffers | None = None) -> EventPhysics:
    """The §11 quantities of a decoded chunk. ``buffers``: reuse these arrays for the results (as
    :func:`.decode.decode_events` does: the result's arrays are then valid until the next call with
    the same buffers)."""
    n = decoded.n
    energy = np.ascontiguousarray(decoded.energy, dtype=np.float64)
    sums, col, top = _group_sums(energy, geometry, buffers)
    n_srd, n_veto = len(geometry.srd_modules), len(geometry.veto_modules)
    widths, xy, beam_column, limits = _selection_setup(geometry, cuts, energy.shape[1], sums.shape[1])
    # numpy adds fewer than 8 values in order (as the kernel does); more, pairwise: then numpy's own sum
    srd_sum = (np.ascontiguousarray(sums[:, _FIRST_MODULE:_FIRST_MODULE + n_srd]).sum(axis=1) if n_srd >= 8
               else np.zeros(0))
    codes, groups = _detector_columns(geometry)
    take = (buffers or DecodeBuffers()).take
    e_ps, e_ecal, e_hcal, e_wcal = (take(name, (n,), np.float64) for name in ("e_ps", "e_ecal", "e_hcal", "e_wcal"))
    srd, veto = take("srd", (n, n_srd), np.float64), take("veto", (n, n_veto), np.float64)
    detector_energy = take("detector_energy", (n, geometry.n_detectors), np.float64, 0.0)
    physics, beam, electron, hadron_like, candidate = (
        take(name, (n,), np.bool_) for name in ("physics_trigger", "beam_trigger", "electron", "hadron_like",
                                                "candidate"))
    hottest = take("main_ecal_max_cell", (n, 2), np.int64)
    is_data = np.ascontiguousarray(decoded.is_data, dtype=np.bool_)
    _k.select_events(sums, col, top, energy, beam_column, is_data,
                     np.ascontiguousarray(decoded.index.trigger_mask, dtype=np.uint32), widths, n_srd,
                     srd_sum, codes, groups, xy, limits, e_ps, e_ecal, e_hcal, e_wcal, srd, veto,
                     detector_energy, physics, beam, electron, hadron_like, candidate, hottest)
    return EventPhysics(
        e_ps=e_ps,
        e_ecal=e_ecal,
        e_hcal=e_hcal,
        srd=srd,
        veto=veto,
        is_data=is_data,
        physics_trigger=physics,
        beam_trigger=beam,
        electron=electron,
        hadron_like=hadron_like,
        candidate=candidate,
        main_ecal_max_cell=hottest,
        e_wcal=e_wcal,
        detector_energy=detector_energy,
    )


KEV_PER_GEV = 1e6


@dataclass(frozen=True)
class ChunkTally:
    """What a spill's totals take from one reconstructed chunk (:func:`tally_chunk`)."""

    events: int  # data events (accepted PHYSICS or CALIBRATION)
    physics_events: int
    calibration_events: int
    beam_events: int
    hadron_events: int
    no_electron_beam_events: int
    rejected_events: int  # rows rejected with an error (not a notice)
    start_of_burst: bool  # an accepted START_OF_BURST row
    last_end_of_burst: int  # row of the last accepted END_OF_BURST, −1 without one
    first_time: int | None  # earliest and latest DATE time of a data event (None without data events)
    last_time: int | None


_TALLY_KINDS = np.array([layout.PHYSICS_EVENT, layout.CALIBRATION_EVENT, layout.START_OF_BURST,
                         layout.END_OF_BURST, FIRST_NOTICE], dtype=np.int64)


def tally_chunk(decoded: DecodedEvents, physics: EventPhysics, kev: np.ndarray, hits: np.ndarray) -> ChunkTally:
    """Count a reconstructed chunk's events in one pass, and add its data events' detector energies to
    per-detector totals, in place: ``kev`` the energy in keV, rounded per event (``np.rint(energy * 1e6)``),
    ``hits`` the events with energy (> 0); both int64, one entry per detector code at least (as
    ``detector_energy``'s columns)."""
    ix = decoded.index
    n = decoded.n
    energy = np.ascontiguousarray(physics.detector_energy, dtype=np.float64)
    columns = [np.ascontiguousarray(a, dtype=d) for a, d in (
        (ix.status, np.int16), (ix.type, np.int32), (ix.time, np.int64), (physics.is_data, np.bool_),
        (physics.beam_trigger, np.bool_), (physics.electron, np.bool_), (physics.hadron_like, np.bool_))]
    if energy.ndim != 2 or energy.shape[0] != n or any(c.shape != (n,) for c in columns):
        raise ValueError("index, physics and detector energies must have one entry per row of the chunk")
    for name, total in (("kev", kev), ("hits", hits)):
        if (not isinstance(total, np.ndarray) or total.dtype != np.int64 or total.ndim != 1
                or total.shape[0] < energy.shape[1] or not total.flags.c_contiguous or not total.flags.writeable):
            raise ValueError(f"{name} must be a writable contiguous int64 array of at least {energy.shape[1]} entries")
    counts = np.zeros(len(ChunkTally.__dataclass_fields__), dtype=np.int64)
    _k.tally_events(*columns, energy, _TALLY_KINDS, KEV_PER_GEV, counts, kev, hits)
    c = counts.tolist()
    return ChunkTally(*c[:7], bool(c[7]), c[8], c[9] if c[0] else None, c[10] if c[0] else None)


def _detector_columns(geometry: DetectorGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(table code, column of the group sums) of every detector with channels: the selection's own sums
    for the ECAL, HCAL and WCAL roles, the next "other" group for the rest (the order of ``__post_init__``)."""
    cached = geometry.__dict__.get("_detector_columns")
    if cached is not None:
        return cached
    own = {"ecal": _ECAL, "hcal": _HCAL, "wcal": _WCAL}
    other = _FIRST_MODULE + len(geometry.srd_modules) + len(geometry.veto_modules)
    codes, groups = [], []
    for code, role, _ in geometry.detectors:
        codes.append(code)
        if role in own:
            groups.append(own[role])
        else:
            groups.append(other)
            other += 1
    if codes and (min(codes) < 0 or max(codes) >= geometry.n_detectors):
        raise ValueError("detector codes outside the detector table")
    result = np.array(codes, dtype=np.int64), np.array(groups, dtype=np.int64)
    object.__setattr__(geometry, "_detector_columns", result)
    return result


def event_dict(decoded: DecodedEvents, physics: EventPhysics, channel_map: ChannelMap, row: int) -> dict:
    """Row ``row`` of a decoded chunk as one JSON-ready dict: header, sums, issues, every present channel."""
    ix = decoded.index
    channels = []
    for slot in np.flatnonzero(decoded.present[row]):
        n = int(decoded.nsamples[row, slot])
        channels.append({
            **channel_map.describe(int(slot)),
            "pedestal_even": float(decoded.pedestal_even[row, slot]),
            "pedestal_odd": float(decoded.pedestal_odd[row, slot]),
            "amplitude": float(decoded.amplitude[row, slot]),
            "energy_gev": float(decoded.energy[row, slot]),
            "saturated": bool(decoded.saturated[row, slot]),
            "samples": decoded.samples[row, slot, :n].tolist(),
        })
    issues = [
        {"src_id": int(i["src_id"]), "kind": Issue(int(i["kind"])).label,
         "reason": ISSUE_DESCRIPTIONS[Issue(int(i["kind"]))], "byte_offset": int(i["offset"])}
        for i in decoded.issues if int(i["event"]) == row
    ]
    return {
        "run": int(ix.run[row]),
        "spill": int(ix.spill[row]),
        "event": int(ix.event[row]),
        "type": layout.EVENT_TYPE_NAMES.get(int(ix.type[row]), str(int(ix.type[row]))),
        "trigger_mask": int(ix.trigger_mask[row]),
        "time": int(ix.time[row]),
        "trigger_time_us": int(decoded.trigger_time_us[row]) if decoded.trigger_time_us[row] >= 0 else None,
        "ldcs": [b for b in range(32) if int(decoded.ldc_mask[row]) >> b & 1],
        "e_ps": float(physics.e_ps[row]),
        "e_ecal": float(physics.e_ecal[row]),
        "e_hcal": float(physics.e_hcal[row]),
        "srd": physics.srd[row].tolist(),
        "veto": physics.veto[row].tolist(),
        "electron": bool(physics.electron[row]),
        "hadron_like": bool(physics.hadron_like[row]),
        "candidate": bool(physics.candidate[row]),
        "issues": issues,
        "channels": channels,
    }
