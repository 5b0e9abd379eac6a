"""Readout simulator: NA64 raw data as the readout would send it (docs/raw-format.md).

The simulator produces, for a run of spills, what the two readout nodes (LDC 1:
srcID 610; LDC 2: srcIDs 611, 612, the trigger time 701 and, in END_OF_BURST,
the scalers 700) publish, and what the event builder writes to a raw file
(super events, §2.1 and §10), with ground truth for every spill.

Usage::

    sim = ReadoutSimulator(SimulationConfig(events_per_spill=1000, seed=1))
    for spill in sim.spills():
        data = spill.raw()                  # SOB, events, EOB as the file holds them
        ldc1 = spill.ldc_events(1)          # that node's plain events, §9
        spill.truth.signal_events           # event numbers of signal-like events

    truths = write_raw_file("run.dat", config)   # streamed, whole run

Every bit position comes from :mod:`..decoders.layout`; the channel map from
:class:`..decoders.channelmap.ChannelMap`.

Physics model (the numbers are the module constants below):

- beam: electrons of ``beam_energy_gev`` (100 GeV), with ``hadron_fraction``
  pions and ``muon_fraction`` muons; ``signal_fraction`` of the physics-trigger
  events are signal-like (dark-photon) events.
- electron: total ECAL energy ``E (1 + N(0, 3%/sqrt(E) (+) 1%))``; preshower
  (ECAL module 0) gets ``0.5 + Gamma(2.2, 0.9)`` GeV (mean ~2.5 GeV, capped at
  8 GeV), the main ECAL (module 1) the rest.  Lateral profile: per axis a double
  Gaussian (core 0.25, tail 0.9 cell widths, 75 % core; preshower 0.15/0.5/85 %)
  around an impact point N(0, 0.12 cells), clipped at 0.3, from the centre of cell (2, 2): the
  beam cell holds ~67 % of the main-ECAL energy (~2500 ADC counts with the
  default gains, so a single electron does not saturate; in-time pile-up does),
  the 8 neighbours ~24 %.  Reconstructed E_ECAL (§11, 20-count threshold) is
  ~96-99 GeV.  SRD: each module lognormal(median 0.02 GeV, sigma 0.35), clipped
  to [0.006, 0.045] GeV, so the §11 electron tag always passes for one electron.
  VETO and HCAL: nothing.
- hadron (pion): MIP in the ECAL (~0.2 GeV preshower, ~0.4 GeV main beam cell),
  in 35 % of the cases a partial shower of 5-40 % of E in the main ECAL; the
  rest times a response N(0.85, 0.08) in the HCAL, shared between the 4 modules
  (Dirichlet 6:3:1.2:0.5) and laterally around cell (1, 1) (so E_HCAL is tens
  of GeV, always > 10 GeV at 100 GeV); VETO MIP (~0.025 GeV per PMT); no SRD.
- muon: MIP in the preshower and the main ECAL beam cell, ~1.2 GeV in the
  central cell of each HCAL module (E_HCAL ~5 GeV), VETO ~0.03 GeV per PMT, no
  SRD.
- signal-like: electron tag, preshower U(1, 4) GeV, total ECAL U(20, 45) GeV
  with the electron profile (beam cell is the most energetic), no HCAL, no
  VETO, never pile-up: passes the §11 candidate selection.
- every beam particle: S0, S1, S2 ~ 0.025 GeV each.
- pile-up: a second beam particle, its pulses shifted by U(-3, 8) samples.
- random trigger: pedestals only; calibration (LED): every channel pulses
  with a per-channel amplitude U(600, 2000) counts, 1 % intensity jitter.
- pulse: ``g(s) = (s/3.5)^1.6 exp(1.6 (1 - s/3.5))``, peak at sample
  12 + N(0, 0.25) (+ a fixed offset per detector), scaled so that its largest
  sample equals the amplitude; rise (10-90 %) ~2 samples, 1/e decay ~5.5.
  Pedestals U(100, 400) per channel, odd samples offset by N(0, 6), noise
  U(1, 2) counts; 12-bit clip at 4095.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr, ndtri

from ..decoders import layout
from ..decoders.channelmap import ChannelMap

__all__ = [
    "CORRUPTION_KINDS",
    "EVENT_CORRUPTIONS",
    "FILE_CORRUPTIONS",
    "PARTICLE_NAMES",
    "Corruption",
    "ReadoutSimulator",
    "SimulatedSpill",
    "SimulationConfig",
    "SpillTruth",
    "write_raw_file",
    "beam_settings",
]

# ---------------------------------------------------------------------------
# Vocabulary

#: Corruptions injected per event (probability per PHYSICS/CALIBRATION event).
#: The names are the error labels of the §5 table (``module_missing`` is the
#: placeholder, not an error).
EVENT_CORRUPTIONS = (
    "adc_bad_key",
    "adc_bad_size",
    "adc_event_mismatch",
    "channel_bad_id",
    "channel_bad_samples",
    "data_bad_marker",
    "slink_event_mismatch",
    "slink_size_mismatch",
    "equipment_bad_size",
    "event_byte_swapped",
    "event_old_layout",
    "event_bad_header_size",
    "module_missing",
)
#: Corruptions of the whole file (probability per run).
FILE_CORRUPTIONS = ("truncate_file",)
CORRUPTION_KINDS = EVENT_CORRUPTIONS + FILE_CORRUPTIONS

#: Kinds that damage a whole DATE event (the reader rejects it).
EVENT_LEVEL = frozenset({"event_byte_swapped", "event_old_layout", "event_bad_header_size"})
#: Kinds inside MSADC chip data (need an MSADC srcID).
MSADC_LEVEL = frozenset(
    {"adc_bad_key", "adc_bad_size", "adc_event_mismatch", "channel_bad_id", "channel_bad_samples",
     "data_bad_marker", "module_missing"}
)
#: Kinds at the equipment / S-Link level (any equipment of the event, 701 included).
EQUIPMENT_LEVEL = frozenset({"slink_event_mismatch", "slink_size_mismatch", "equipment_bad_size"})

# Particle codes in SpillTruth.particle
ELECTRON, HADRON, MUON, SIGNAL, NOTHING, LED = range(6)
PARTICLE_NAMES = ("electron", "hadron", "muon", "signal", "nothing", "led")
_BEAM_PARTICLES = (ELECTRON, HADRON, MUON, SIGNAL)

LDC_IDS = (1, 2)
GDC_ID = 1
LDC_OF_SRC = {610: 1}  # every other MSADC srcID, 701 and 700 come from LDC 2 (§1, §8)
DEFAULT_LDC = 2
SCALER_LDC = 2

#: Events per random-number stream and per encoding pass.  Fixed, so that the
#: output for a seed does not depend on how the caller chunks it.
CHUNK_EVENTS = 1024
#: Spills up to this many events keep their generated samples (raw() and
#: ldc_events() then do not simulate twice).
CACHE_EVENTS = 16384

# Detector response constants (see the module docstring)
PULSE_PEAK_SAMPLE = 12.0
PULSE_JITTER = 0.25
PULSE_TAU = 3.5
PULSE_POWER = 1.6
#: pulse time offset (samples) by the detector's role in the table (decoders/detectors.toml); others 0
ROLE_TIME_OFFSET = {"ecal": 0.0, "hcal": 0.8, "electron_tag": -1.0, "veto": 0.5, "beam_counter": -1.5,
                    "wcal": -0.5}
PEDESTAL_RANGE = (100.0, 400.0)
PEDESTAL_ODD_SIGMA = 6.0
NOISE_RANGE = (1.0, 2.0)
LED_RANGE = (600.0, 2000.0)
ECAL_STOCHASTIC = 0.03
ECAL_CONSTANT = 0.01
PS_OFFSET_GEV, PS_SHAPE, PS_SCALE, PS_MAX_GEV = 0.5, 2.2, 0.9, 8.0
BEAM_SPOT_CELLS = 0.12
BEAM_SPOT_MAX = 0.3
MAIN_PROFILE = (0.25, 0.9, 0.75)  # core sigma, tail sigma (cell widths), core share
PS_PROFILE = (0.15, 0.5, 0.85)
HADRON_ECAL_PROFILE = (0.5, 1.2, 0.6)
HCAL_PROFILE = (0.35, 1.0, 0.6)
SRD_MEDIAN_GEV, SRD_SIGMA, SRD_RANGE = 0.02, 0.35, (0.006, 0.045)
COUNTER_MEAN_GEV = 0.025
VETO_MIP_GEV = 0.025
MUON_VETO_GEV = 0.03
HADRON_SHOWER_PROBABILITY = 0.35
HADRON_SHOWER_RANGE = (0.05, 0.40)
HCAL_RESPONSE = (0.85, 0.08)
HCAL_LONGITUDINAL = (6.0, 3.0, 1.2, 0.5)
MUON_HCAL_GEV = (1.2, 0.25)
SIGNAL_ECAL_RANGE = (20.0, 45.0)
SIGNAL_PS_RANGE = (1.0, 4.0)
# visible mode (a ``wcal`` detector in the map): electrons shower in the WCAL, leaking a little into the
# ECAL; a signal-like event leaves part of the energy in the WCAL, the decay's shower the rest in the ECAL
WCAL_PROFILE = (0.3, 0.9, 0.8)
WCAL_LEAK_MEAN = 0.01  # mean fraction of an electron's energy leaking from the WCAL into the ECAL
VISIBLE_SIGNAL_WCAL_RANGE = (0.3, 0.7)  # share of the beam energy left in the WCAL
MONITOR_MIP_GEV = 0.02  # a beam particle crossing a ``monitor`` detector (its cells at the beam spot)
PILEUP_SHIFT_RANGE = (-3.0, 8.0)
HOT_AMPLITUDE = (30.0, 300.0)  # offset + exponential mean, ADC counts
S0_EXTRA = 0.08  # S0 singles above S1.S2 coincidences
DEAD_TIME = 0.07  # raw triggers lost to dead time
OLD_LAYOUT_VERSION = 0x00000003


# ---------------------------------------------------------------------------
# Configuration


def beam_settings(profile, hadron_fraction: float | None = None, muon_fraction: float | None = None) -> dict:
    """``SimulationConfig`` keywords of a beam profile (:mod:`..decoders.beam`): its energy and expected
    hadron contamination (``hadron_fraction`` given: that instead); muons fill at most the rest."""
    hf = profile.hadron_fraction_expected if hadron_fraction is None else hadron_fraction
    mf = SimulationConfig.muon_fraction if muon_fraction is None else muon_fraction
    return {"beam_energy_gev": profile.energy_gev, "hadron_fraction": hf, "muon_fraction": min(mf, 1.0 - hf)}



class _FrozenMap(Mapping):
    """Small immutable, hashable, picklable mapping (for the frozen config)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping | Iterable = ()) -> None:
        self._items = tuple(sorted(dict(items).items()))

    def __getitem__(self, key):
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self):
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return repr(dict(self._items))

    def __reduce__(self):
        return (_FrozenMap, (self._items,))


def _channel_tuple(name: str, value) -> tuple[tuple[int, int, int], ...]:
    out = []
    for item in value:
        try:
            src, port, ch = (int(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected (src_id, port, channel) triples, got {item!r}") from None
        if not (0 <= src < layout.MAX_SRC_ID and 0 <= port < layout.PORTS and 0 <= ch < layout.CHANNELS_PER_PORT):
            raise ValueError(f"{name}: {item!r} is not a valid (src_id, port, channel) address")
        out.append((src, port, ch))
    return tuple(out)


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate.  Validated on construction (``ValueError``).

    Triggers: each event is CALIBRATION (LED, mask 8) with
    ``calibration_fraction``, random (mask 4) with ``random_fraction``,
    beam-only (mask 2) with ``beam_only_fraction``, physics-only (mask 1) with
    ``physics_only_fraction``, else physics+beam (mask 3).

    ``corruption_rates`` maps a kind of :data:`EVENT_CORRUPTIONS` to its
    probability per PHYSICS/CALIBRATION event (at most one kind per event, so
    the rates must sum to <= 1), and ``truncate_file`` to the probability that
    the run is cut inside its last event (no END_OF_BURST, no END_OF_RUN).

    Scalers: beam ~ Poisson(``beam_per_spill``), or Poisson(events x
    ``beam_per_event``) when ``beam_per_spill`` is None.
    """

    run: int = 1
    spills: int = 1
    events_per_spill: int = 1000
    first_spill: int = 1
    seed: int = 0
    # beam composition and physics
    hadron_fraction: float = 0.015
    muon_fraction: float = 0.005
    signal_fraction: float = 2e-4
    pileup_probability: float = 0.02
    beam_energy_gev: float = 100.0
    # triggers
    calibration_fraction: float = 0.002
    random_fraction: float = 0.005
    beam_only_fraction: float = 0.05
    physics_only_fraction: float = 0.10
    # digitisation
    samples: int = 32
    zero_suppression: bool = True
    zero_suppression_threshold: float = 8.0  # ADC counts above pedestal
    dead_channels: tuple = ()
    noisy_channels: tuple = ()
    noisy_sigma: float = 15.0
    hot_channels: tuple = ()
    hot_probability: float = 0.2
    pedestal_drift_per_spill: float = 0.0
    drift_channels: tuple = ()  # empty: every channel drifts
    # format
    header_bytes: int = 68
    super_events: bool = True
    run_events: bool = True  # START_OF_RUN / END_OF_RUN around the run in files
    # scalers and timing
    beam_per_event: float = 20.0
    beam_per_spill: float | None = None
    spill_duration_s: float = 4.8
    spill_period_s: float = 20.0
    start_time: int = 1_700_000_000
    # damage
    corruption_rates: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        def setattr_(name, value):
            object.__setattr__(self, name, value)

        def integer(name, lo, hi=None):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < lo or (hi is not None and value > hi):
                bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be {bound}, got {value}")
            setattr_(name, int(value))

        def number(name, lo=None, hi=None, *, lo_open=False):
            value = getattr(self, name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, got {value!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            if lo is not None and (value < lo or (lo_open and value == lo)):
                raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
            if hi is not None and value > hi:
                raise ValueError(f"{name} must be <= {hi}, got {value}")
            setattr_(name, value)

        integer("run", 0, 0xFFFFFFFF)
        integer("spills", 0)
        integer("events_per_spill", 0, layout.EVENT_IN_BURST_MASK)
        integer("first_spill", 1, layout.BURST_MASK)
        if self.first_spill + self.spills - 1 > layout.BURST_MASK:
            raise ValueError(
                f"spill numbers {self.first_spill}..{self.first_spill + self.spills - 1} do not fit the "
                f"12-bit DATE burst number (max {layout.BURST_MASK})"
            )
        integer("seed", 0)
        for name in ("hadron_fraction", "muon_fraction", "signal_fraction", "pileup_probability",
                     "calibration_fraction", "random_fraction", "beam_only_fraction",
                     "physics_only_fraction", "hot_probability"):
            number(name, 0.0, 1.0)
        if self.hadron_fraction + self.muon_fraction > 1.0:
            raise ValueError("hadron_fraction + muon_fraction must be <= 1")
        triggers = self.calibration_fraction + self.random_fraction + self.beam_only_fraction + self.physics_only_fraction
        if triggers > 1.0 + 1e-12:
            raise ValueError(f"trigger fractions (calibration, random, beam-only, physics-only) sum to {triggers} > 1")
        number("beam_energy_gev", 0.0, 1000.0, lo_open=True)
        integer("samples", 16, 500)
        if not isinstance(self.zero_suppression, bool):
            raise ValueError("zero_suppression must be a bool")
        number("zero_suppression_threshold", 0.0)
        for name in ("dead_channels", "noisy_channels", "hot_channels", "drift_channels"):
            setattr_(name, _channel_tuple(name, getattr(self, name)))
        number("noisy_sigma", 0.0, 1000.0)
        number("pedestal_drift_per_spill", -4095.0, 4095.0)
        integer("header_bytes", layout.DATE_HEADER_BYTES, 1024)
        if self.header_bytes % layout.WORD_BYTES:
            raise ValueError(f"header_bytes must be a multiple of 4 (68 or 80), got {self.header_bytes}")
        for name in ("super_events", "run_events"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")
        number("beam_per_event", 1.0, 1e6)
        if self.beam_per_spill is not None:
            number("beam_per_spill", 0.0, 4e9)
            if self.beam_per_spill <= self.events_per_spill:
                raise ValueError(
                    f"beam_per_spill ({self.beam_per_spill}) must exceed events_per_spill ({self.events_per_spill}):"
                    " the beam count is larger than the accepted triggers"
                )
        number("spill_duration_s", 0.0, 4000.0, lo_open=True)
        number("spill_period_s", 0.0, lo_open=True)
        if self.spill_period_s < self.spill_duration_s:
            raise ValueError("spill_period_s must be >= spill_duration_s")
        integer("start_time", 0, 0xFFFFFFFF)
        rates = self.corruption_rates
        if rates is None:
            rates = {}
        if not isinstance(rates, Mapping):
            raise ValueError(f"corruption_rates must be a mapping kind -> probability, got {type(rates).__name__}")
        clean = {}
        for kind, rate in rates.items():
            if kind not in CORRUPTION_KINDS:
                raise ValueError(f"unknown corruption kind {kind!r}; known: {', '.join(CORRUPTION_KINDS)}")
            try:
                rate = float(rate)
            except (TypeError, ValueError):
                raise ValueError(f"corruption rate of {kind} must be a number, got {rate!r}") from None
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"corruption rate of {kind} must be in [0, 1], got {rate}")
            clean[kind] = rate
        total = sum(r for k, r in clean.items() if k in EVENT_CORRUPTIONS)
        if total > 1.0 + 1e-12:
            raise ValueError(f"per-event corruption rates sum to {total} > 1 (at most one kind per event)")
        setattr_("corruption_rates", _FrozenMap(clean))
        if self.spill_duration_us > 0xFFFFFFFF:
            raise ValueError("spill_duration_s does not fit the 32-bit µs scaler")

    @property
    def spill_duration_us(self) -> int:
        return int(round(self.spill_duration_s * 1e6))

    @property
    def spill_numbers(self) -> range:
        return range(self.first_spill, self.first_spill + self.spills)


# ---------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class Corruption:
    """One injected corruption.

    ``ldc`` is the readout node whose data is damaged and ``src_id`` the
    equipment (None for event-level kinds).  Event-level kinds damage that
    node's event in its own stream (``ldc_events``) and in a file of plain
    events; in a file of super events they damage the whole super event.
    ``truncate_file`` has ``event`` = the cut event (the last of the run).
    """

    event: int
    kind: str
    ldc: int | None = None
    src_id: int | None = None

    def to_dict(self) -> dict:
        return {"event": self.event, "kind": self.kind, "ldc": self.ldc, "src_id": self.src_id}


@dataclass(frozen=True, eq=False)
class SpillTruth:
    """What was simulated in one spill.  Per-event arrays are indexed by
    ``event number in burst - 1``; list properties give event numbers."""

    run: int
    spill: int
    events: int
    event_type: np.ndarray  # DATE type: 7 physics, 8 calibration
    trigger_mask: np.ndarray
    particle: np.ndarray  # codes into PARTICLE_NAMES
    pileup: np.ndarray  # bool
    pileup_particle: np.ndarray  # code of the second particle, -1 if none
    trigger_time_us: np.ndarray
    time: np.ndarray  # DATE time word (Unix seconds)
    e_ps_true: np.ndarray  # deposited GeV (primary + pile-up), before digitisation
    e_ecal_true: np.ndarray
    e_hcal_true: np.ndarray
    scalers: dict  # beam, s0, triggers_raw, triggers_accepted, spill_duration_us
    corruptions: tuple[Corruption, ...] = ()
    truncated: bool = False  # the stream ends inside this spill's last event

    def _numbers(self, mask: np.ndarray) -> list[int]:
        return (np.flatnonzero(mask) + 1).tolist()

    @property
    def event_numbers(self) -> list[int]:
        return list(range(1, self.events + 1))

    @property
    def electron_events(self) -> list[int]:
        return self._numbers(self.particle == ELECTRON)

    @property
    def hadron_events(self) -> list[int]:
        return self._numbers(self.particle == HADRON)

    @property
    def muon_events(self) -> list[int]:
        return self._numbers(self.particle == MUON)

    @property
    def signal_events(self) -> list[int]:
        return self._numbers(self.particle == SIGNAL)

    @property
    def calibration_events(self) -> list[int]:
        return self._numbers(self.event_type == layout.CALIBRATION_EVENT)

    @property
    def random_events(self) -> list[int]:
        return self._numbers(self.trigger_mask == layout.TRIGGER_RANDOM)

    @property
    def pileup_events(self) -> list[int]:
        return self._numbers(self.pileup)

    @property
    def beam_trigger(self) -> np.ndarray:
        return (self.trigger_mask & layout.TRIGGER_BEAM) != 0

    @property
    def physics_trigger(self) -> np.ndarray:
        return (self.trigger_mask & layout.TRIGGER_PHYSICS) != 0

    @property
    def beam_trigger_events(self) -> int:
        return int(self.beam_trigger.sum())

    @property
    def hadron_fraction(self) -> float | None:
        """True fraction of hadrons (primary particle) among beam-trigger events."""
        n = self.beam_trigger_events
        return None if n == 0 else float((self.beam_trigger & (self.particle == HADRON)).sum()) / n

    @property
    def corrupted_events(self) -> dict[int, str]:
        return {c.event: c.kind for c in self.corruptions if c.kind in EVENT_CORRUPTIONS}

    @property
    def rejected_events(self) -> list[int]:
        """Events a reader of a super-event file rejects (event-level damage, truncation)."""
        out = {c.event for c in self.corruptions if c.kind in EVENT_LEVEL}
        if self.truncated and self.events:
            out.add(self.events)
        return sorted(out)

    def counts(self) -> dict[str, int]:
        return {name: int((self.particle == code).sum()) for code, name in enumerate(PARTICLE_NAMES)}

    def to_dict(self) -> dict:
        """JSON-ready summary (event-number lists, not the per-event arrays)."""
        return {
            "run": self.run,
            "spill": self.spill,
            "events": self.events,
            "counts": self.counts(),
            "beam_trigger_events": self.beam_trigger_events,
            "hadron_fraction": self.hadron_fraction,
            "signal_events": self.signal_events,
            "hadron_events": self.hadron_events,
            "muon_events": self.muon_events,
            "calibration_events": self.calibration_events,
            "random_events": self.random_events,
            "pileup_events": self.pileup_events,
            "scalers": dict(self.scalers),
            "corruptions": [c.to_dict() for c in self.corruptions],
            "rejected_events": self.rejected_events,
            "truncated": self.truncated,
        }


# ---------------------------------------------------------------------------
# Geometry: the channel map in encoding order


class _Geometry:
    """Channel map sorted by (srcID, port, channel): ADC groups, equipments, cells."""

    def __init__(self, cmap: ChannelMap) -> None:
        order = np.lexsort((cmap.channel, cmap.port, cmap.src_id))
        self.order = order
        self.src = cmap.src_id[order].astype(np.int64)
        self.port = cmap.port[order].astype(np.int64)
        self.channel = cmap.channel[order].astype(np.int64)
        self.detector = cmap.detector[order].astype(np.int64)
        self.module = cmap.module[order].astype(np.int64)
        self.x = cmap.x[order].astype(np.int64)
        self.y = cmap.y[order].astype(np.int64)
        self.gain = cmap.gain_gev[order].astype(np.float64)
        C = self.n_channels = len(order)
        self.chan_id = (self.channel % layout.CHANNELS_PER_ADC).astype(np.uint32)
        self.adc_id = self.channel // layout.CHANNELS_PER_ADC
        self.address = {(int(s), int(p), int(c)): i for i, (s, p, c) in enumerate(zip(self.src, self.port, self.channel))}

        # ADC groups: consecutive columns with the same (src, port, adc_id)
        key = (self.src * layout.PORTS + self.port) * 4 + self.adc_id
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        self.group_start = starts
        self.group_size = np.diff(np.r_[starts, C])
        self.group_of_col = np.repeat(np.arange(len(starts)), self.group_size)
        self.group_src = self.src[starts]
        self.group_port = self.port[starts]
        self.group_adc = self.adc_id[starts]
        self.n_groups = len(starts)

        # Equipments, per LDC in order: LDC 1 then LDC 2; MSADC srcIDs ascending, 701 last on its LDC.
        self.msadc_srcs = sorted({int(s) for s in self.src})
        eqs = [(LDC_OF_SRC.get(s, DEFAULT_LDC), s) for s in self.msadc_srcs]
        eqs.append((DEFAULT_LDC if layout.SRC_TRIGGER_TIME not in LDC_OF_SRC else LDC_OF_SRC[layout.SRC_TRIGGER_TIME],
                    layout.SRC_TRIGGER_TIME))
        eqs.sort(key=lambda e: (e[0], e[1] == layout.SRC_TRIGGER_TIME, e[1]))
        self.eq_ldc = np.array([e[0] for e in eqs], dtype=np.int64)
        self.eq_src = np.array([e[1] for e in eqs], dtype=np.int64)
        self.n_eq = len(eqs)
        self.ldcs = LDC_IDS
        self.ldc_index = {ldc: i for i, ldc in enumerate(self.ldcs)}
        self.eq_ldc_index = np.array([self.ldc_index[l] for l in self.eq_ldc])
        self.eqs_of_ldc = [np.flatnonzero(self.eq_ldc_index == i) for i in range(len(self.ldcs))]
        self.eq_tt = int(np.flatnonzero(self.eq_src == layout.SRC_TRIGGER_TIME)[0])
        self.eq_of_src = {int(s): i for i, s in enumerate(self.eq_src)}
        self.eq_msadc = np.array([i for i, s in enumerate(self.eq_src) if s != layout.SRC_TRIGGER_TIME])
        self.eq_of_group = np.array([self.eq_of_src[int(s)] for s in self.group_src])
        # first group of each MSADC equipment (groups of one src are contiguous)
        self.eq_group_start = np.zeros(self.n_eq, dtype=np.int64)
        self.groups_of_eq = {}
        for e in self.eq_msadc:
            self.groups_of_eq[e] = np.flatnonzero(self.eq_of_group == e)
            self.eq_group_start[e] = self.groups_of_eq[e][0]
        self.groups_of_src = {s: np.flatnonzero(self.group_src == s) for s in self.msadc_srcs}
        self.cols_of_src = {s: np.flatnonzero(self.src == s) for s in self.msadc_srcs}

        # Cell grids: [y, x] -> column, C (a dummy column) where the map has no channel.
        def grid(det, module, ny, nx):
            g = np.full((ny, nx), C, dtype=np.int64)
            sel = np.flatnonzero((self.detector == det) & (self.module == module) & (self.x < nx) & (self.y < ny))
            g[self.y[sel], self.x[sel]] = sel
            return g

        table = cmap.detectors

        def role(name: str):
            d = table.by_role(name)
            return (d.code, d.modules, d.ny, d.nx) if d is not None else (-1, 0, 1, 1)

        ecal, hcal, srd, veto, counters, wcal = (role(r) for r in (
            "ecal", "hcal", "electron_tag", "veto", "beam_counter", "wcal"))
        ECAL, HCAL = ecal[0], hcal[0]
        self.ecal = [grid(ECAL, m, 6, 6) for m in (0, 1)]
        self.hcal = [grid(HCAL, m, 3, 3) for m in range(4)]
        self.srd = [grid(srd[0], m, 1, 1)[0, 0] for m in range(3)]
        self.veto = [grid(veto[0], m, 1, 2)[0] for m in range(3)]
        self.counters = [grid(counters[0], m, 1, 1)[0, 0] for m in range(3)]
        # visible mode: the WCAL's cells (module 0), empty without one in the map
        self.wcal = grid(wcal[0], 0, wcal[2], wcal[3]) if np.any(self.detector == wcal[0]) else None
        # detectors only monitored: the cell under the beam spot of each module (all modules) gets a MIP
        self.monitor_cells = [
            grid(d.code, m, d.ny, d.nx)[d.ny // 2, d.nx // 2] for d in table if d.role == "monitor"
            for m in range(d.modules) if np.any((self.detector == d.code) & (self.module == m))]
        self.time_offset = np.array([ROLE_TIME_OFFSET.get(d.role, 0.0) for d in table])
        self.det_index = self.detector
        self.is_ecal = self.detector == ECAL
        self.is_hcal = self.detector == HCAL
        self.is_ps = self.is_ecal & (self.module == 0)

        # Columns never zero-suppressed: main ECAL, and the beam cells.
        keep = (self.detector == ECAL) & (self.module == 1)
        keep |= (self.detector == ECAL) & (self.module == 0) & (self.x == 2) & (self.y == 2)
        keep |= (self.detector == HCAL) & (self.x == 1) & (self.y == 1)
        self.always_keep = keep


# ---------------------------------------------------------------------------
# Header packing (vectorised over events)


def _date_headers(n_words: int, size_bytes, event_type, run, event_in_run, burst, event, mask, ldc, gdc,
                  time, super_event: bool) -> np.ndarray:
    """DATE headers, one row per event: [n, n_words] uint32 (extra words 0)."""
    size_bytes = np.asarray(size_bytes, dtype=np.int64)
    n = size_bytes.shape[0]
    h = np.zeros((n, n_words), dtype=np.uint32)
    mask = np.asarray(mask, dtype=np.int64) & 0xFFFFFFFF
    h[:, layout.H_SIZE] = size_bytes
    h[:, layout.H_MAGIC] = layout.DATE_MAGIC
    h[:, layout.H_HEADER_SIZE] = n_words * layout.WORD_BYTES
    h[:, layout.H_VERSION] = layout.DATE_VERSION
    h[:, layout.H_TYPE] = event_type
    h[:, layout.H_RUN] = run
    h[:, layout.H_EVENT_IN_RUN] = event_in_run
    h[:, layout.H_BURST_EVENT] = (np.asarray(burst, dtype=np.int64) << layout.BURST_SHIFT) | np.asarray(event, dtype=np.int64)
    h[:, layout.H_TRIGGER_0] = (mask << 1) & 0xFFFFFFFF  # layout.trigger_words, vectorised
    h[:, layout.H_TRIGGER_1] = (mask >> 31) & 1
    h[:, layout.H_ATTRIBUTES_2] = layout.SUPER_EVENT_BIT if super_event else 0
    h[:, layout.H_LDC] = ldc
    h[:, layout.H_GDC] = gdc
    h[:, layout.H_TIME] = time
    return h


def _slink_word0(size_words, src_id, event_type):
    return (
        (np.asarray(size_words, dtype=np.int64) << layout.SLINK_WORD0["size"].shift)
        | (np.asarray(src_id, dtype=np.int64) << layout.SLINK_SRC_SHIFT)
        | ((np.asarray(event_type, dtype=np.int64) & layout.SLINK_WORD0["type"].mask) << layout.SLINK_WORD0["type"].shift)
    )


def _slink_word1(event, spill):
    return (np.asarray(event, dtype=np.int64) & layout.SLINK_EVENT_MASK) | (
        (np.asarray(spill, dtype=np.int64) & layout.SLINK_SPILL_MASK) << layout.SLINK_SPILL_SHIFT
    )


def _equipment(src_id: int, event_type: int, event: int, spill: int, chip: list[int]) -> list[int]:
    """One equipment (header, S-Link header, chip words) as a list of words (small events)."""
    slink_words = layout.SLINK_HEADER_WORDS + len(chip)
    return [
        layout.WORD_BYTES * (layout.EQUIPMENT_HEADER_WORDS + slink_words),
        layout.EQUIPMENT_TYPE_SLINK,
        src_id,
        0,
        0,
        0,
        layout.EQUIPMENT_ELEMENT_SIZE,
        layout.SLINK_WORD0.pack(size=slink_words, src_id=src_id, type=event_type & 0x1F),
        layout.SLINK_WORD1.pack(event=event, spill=spill & layout.SLINK_SPILL_MASK),
        layout.SLINK_WORD2_VALUE,
        *chip,
    ]


# ---------------------------------------------------------------------------
# Physics helpers


def _profile_1d(center: np.ndarray, n: int, shape: tuple[float, float, float]) -> np.ndarray:
    """Share of a double-Gaussian profile in cells 0..n-1 (cell i spans i±0.5): [len(center), n]."""
    core, tail, share = shape
    edges = np.arange(n + 1, dtype=np.float64) - 0.5
    d = edges[None, :] - center[:, None]
    c = ndtr(d / core)
    t = ndtr(d / tail)
    return share * np.diff(c, axis=1) + (1.0 - share) * np.diff(t, axis=1)


def _profile_2d(cx: np.ndarray, cy: np.ndarray, n: int, shape) -> np.ndarray:
    """[len, n*n] shares, flattened [y, x] like the cell grids."""
    px = _profile_1d(cx, n, shape)
    py = _profile_1d(cy, n, shape)
    return (py[:, :, None] * px[:, None, :]).reshape(len(cx), n * n)


_NORMAL_TABLE = ndtri((np.arange(1 << 16) + 0.5) / (1 << 16)).astype(np.float32)


@dataclass
class _Chunk:
    first: int  # index of the first event (event number - 1)
    n: int
    samples: np.ndarray  # uint16 [n, C, S]
    present: np.ndarray  # bool [n, C] (channels written)
    placeholder: np.ndarray  # bool [n, G] (module-missing placeholder instead of the group)
    plans: list  # (row, Corruption, rng_state_int)


# ---------------------------------------------------------------------------
# The simulator


class ReadoutSimulator:
    """Simulates a run: ``spills()`` yields one :class:`SimulatedSpill` per spill."""

    def __init__(self, config: SimulationConfig | None = None, channel_map: ChannelMap | None = None) -> None:
        self.config = config if config is not None else SimulationConfig()
        if not isinstance(self.config, SimulationConfig):
            raise TypeError("config must be a SimulationConfig")
        self.channel_map = channel_map if channel_map is not None else ChannelMap.default()
        geo = self.geometry = _Geometry(self.channel_map)
        cfg = self.config
        C, S = geo.n_channels, cfg.samples
        for name in ("dead_channels", "noisy_channels", "hot_channels", "drift_channels"):
            for address in getattr(cfg, name):
                if address not in geo.address:
                    raise ValueError(f"{name}: {address} is not in the channel map ({self.channel_map.source})")

        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, cfg.run, 0]))
        self.pedestal_even = rng.uniform(*PEDESTAL_RANGE, C)
        self.pedestal_odd = self.pedestal_even + rng.normal(0.0, PEDESTAL_ODD_SIGMA, C)
        self.noise = rng.uniform(*NOISE_RANGE, C)
        self.led_amplitude = rng.uniform(*LED_RANGE, C)
        self._truncate = rng.random() < cfg.corruption_rates.get("truncate_file", 0.0)
        self.dead = np.zeros(C, dtype=bool)
        self.hot = np.zeros(C, dtype=bool)
        for address in cfg.dead_channels:
            self.dead[geo.address[address]] = True
        for address in cfg.noisy_channels:
            self.noise[geo.address[address]] = cfg.noisy_sigma
        for address in cfg.hot_channels:
            self.hot[geo.address[address]] = True
        self.pedestal_odd[self.dead] = self.pedestal_even[self.dead]  # flat
        self.noise[self.dead] = 0.0
        self.drift = np.zeros(C)
        if cfg.pedestal_drift_per_spill:
            if cfg.drift_channels:
                for address in cfg.drift_channels:
                    self.drift[geo.address[address]] = cfg.pedestal_drift_per_spill
            else:
                self.drift[:] = cfg.pedestal_drift_per_spill
        self._inv_gain = np.where(geo.gain > 0, 1.0 / np.where(geo.gain > 0, geo.gain, 1.0), 0.0)
        k = np.arange(S, dtype=np.float64)
        self._sample_index = k
        self._parity_odd = (np.arange(S) % 2).astype(bool)

    # -- public --------------------------------------------------------------

    @property
    def truncated(self) -> bool:
        """Whether this run's stream is cut inside its last event (``truncate_file``)."""
        return self._truncate and self.config.spills > 0 and self.config.events_per_spill > 0

    def spills(self) -> Iterator["SimulatedSpill"]:
        for spill in self.config.spill_numbers:
            yield self.spill(spill)

    def spill(self, spill: int) -> "SimulatedSpill":
        if spill not in self.config.spill_numbers:
            raise ValueError(f"spill {spill} is not simulated (spills {self.config.spill_numbers})")
        return SimulatedSpill(self, spill)

    def run_event(self, event_type: int, ldc: int | None = None) -> bytes:
        """START_OF_RUN / END_OF_RUN: burst 0, event number 0, no equipment.

        ``ldc`` None: as the file holds it (a super event when ``super_events``,
        else both nodes' plain events); else that node's plain event.
        """
        if event_type not in (layout.START_OF_RUN, layout.END_OF_RUN):
            raise ValueError("run_event makes START_OF_RUN or END_OF_RUN events")
        cfg = self.config
        time = cfg.start_time if event_type == layout.START_OF_RUN else int(
            cfg.start_time + cfg.spills * cfg.spill_period_s)
        subs = {l: [] for l in LDC_IDS}
        return self._small_event(event_type, 0, 0, 0, time, subs, ldc)

    def iter_raw(self, block_events: int = 8 * CHUNK_EVENTS) -> Iterator[bytes]:
        """The whole run as the file holds it, in chunks of bytes."""
        if self.config.run_events:
            yield self.run_event(layout.START_OF_RUN)
        for spill in self.spills():
            yield from spill.iter_raw(block_events)
        if self.config.run_events and not self.truncated:
            yield self.run_event(layout.END_OF_RUN)

    # -- small events (SOB, EOB, SOR, EOR) -------------------------------------

    def _small_event(self, event_type: int, event_in_run: int, burst: int, event: int, time: int,
                     equipments: dict[int, list[int]], ldc: int | None) -> bytes:
        """``equipments``: words of each LDC's payload.  ldc None: file layout."""
        cfg = self.config
        hw = cfg.header_bytes // layout.WORD_BYTES

        def header(size, ldc_id, gdc, super_event):
            return _date_headers(hw, [size], event_type, cfg.run, event_in_run, burst, event, 0, ldc_id, gdc, time,
                                 super_event)[0]

        subs = {}
        for l in LDC_IDS:
            payload = np.asarray(equipments.get(l, []), dtype=np.uint32)
            size = layout.WORD_BYTES * (hw + len(payload))
            subs[l] = np.concatenate([header(size, l, 0, False), payload]).astype(layout.WORD)
        if ldc is not None:
            return subs[ldc].tobytes()
        if not cfg.super_events:
            return b"".join(subs[l].tobytes() for l in LDC_IDS)
        body = np.concatenate([subs[l] for l in LDC_IDS])
        size = layout.WORD_BYTES * (hw + len(body))
        return np.concatenate([header(size, 0, GDC_ID, True), body]).astype(layout.WORD).tobytes()


class SimulatedSpill:
    """One simulated spill.  The truth is made at once; waveforms and bytes on demand
    (deterministically, chunk by chunk), so a 10^5-event spill can be streamed."""

    def __init__(self, sim: ReadoutSimulator, spill: int) -> None:
        self.sim = sim
        self.config = cfg = sim.config
        self.run = cfg.run
        self.spill = spill
        self.index = spill - cfg.first_spill
        self.truncated = sim.truncated and spill == cfg.first_spill + cfg.spills - 1 and cfg.events_per_spill > 0
        self._cache: dict[int, _Chunk] | None = {} if cfg.events_per_spill <= CACHE_EVENTS else None
        self._make_truth()

    # -- truth ------------------------------------------------------------------

    def _make_truth(self) -> None:
        cfg, geo = self.config, self.sim.geometry
        n = cfg.events_per_spill
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, cfg.run, self.spill, 1]))

        # triggers
        u = rng.random(n)
        edges = np.cumsum([cfg.calibration_fraction, cfg.random_fraction, cfg.beam_only_fraction,
                           cfg.physics_only_fraction])
        kind = np.searchsorted(edges, u, side="right")  # 0 calib, 1 random, 2 beam, 3 physics, 4 both
        masks = np.array([layout.TRIGGER_CALIBRATION, layout.TRIGGER_RANDOM, layout.TRIGGER_BEAM,
                          layout.TRIGGER_PHYSICS, layout.TRIGGER_PHYSICS | layout.TRIGGER_BEAM], dtype=np.uint32)
        trigger_mask = masks[kind]
        event_type = np.where(kind == 0, layout.CALIBRATION_EVENT, layout.PHYSICS_EVENT).astype(np.uint8)

        # particles
        beam = kind >= 2
        particle = self._beam_particles(rng, n)
        physics = (trigger_mask & layout.TRIGGER_PHYSICS) != 0
        signal = physics & (rng.random(n) < cfg.signal_fraction)
        particle[signal] = SIGNAL
        particle[kind == 0] = LED
        particle[kind == 1] = NOTHING
        pileup = beam & (particle != SIGNAL) & (rng.random(n) < cfg.pileup_probability)
        pileup_particle = np.full(n, -1, dtype=np.int8)
        pileup_particle[pileup] = self._beam_particles(rng, int(pileup.sum()))

        # time in spill, scalers
        duration = cfg.spill_duration_us
        t_us = np.sort(rng.integers(0, duration, n)).astype(np.uint32)
        spill_start = cfg.start_time + self.index * cfg.spill_period_s
        self.spill_start = spill_start
        time = (spill_start + t_us / 1e6).astype(np.int64)
        expected_beam = cfg.beam_per_spill if cfg.beam_per_spill is not None else n * cfg.beam_per_event
        beam_count = max(int(rng.poisson(expected_beam)), n + 1)
        s0 = beam_count + int(rng.poisson(beam_count * S0_EXTRA))
        triggers_raw = n + int(rng.poisson(n * DEAD_TIME))
        scalers = {
            "beam": beam_count,
            "s0": s0,
            "triggers_raw": triggers_raw,
            "triggers_accepted": n,
            "spill_duration_us": duration,
        }

        # corruptions (at most one kind per event)
        corruptions = []
        rates = [(k, cfg.corruption_rates.get(k, 0.0)) for k in EVENT_CORRUPTIONS]
        rates = [(k, r) for k, r in rates if r > 0]
        if rates and n:
            u = rng.random(n)
            edges = np.cumsum([r for _, r in rates])
            which = np.searchsorted(edges, u, side="right")
            for i in np.flatnonzero(which < len(rates)):
                k = rates[which[i]][0]
                if k in EVENT_LEVEL:
                    ldc, src = int(rng.choice(LDC_IDS)), None
                elif k in MSADC_LEVEL:
                    src = int(rng.choice(geo.msadc_srcs))
                    ldc = LDC_OF_SRC.get(src, DEFAULT_LDC)
                else:
                    src = int(rng.choice(geo.eq_src))
                    ldc = int(geo.eq_ldc[geo.eq_of_src[src]])
                corruptions.append(Corruption(int(i) + 1, k, ldc, src))
        if self.truncated:
            corruptions.append(Corruption(n, "truncate_file"))

        self._energy = {"e_ps": np.zeros(n), "e_ecal": np.zeros(n), "e_hcal": np.zeros(n)}
        self.truth = SpillTruth(
            run=cfg.run,
            spill=self.spill,
            events=n,
            event_type=event_type,
            trigger_mask=trigger_mask,
            particle=particle,
            pileup=pileup,
            pileup_particle=pileup_particle,
            trigger_time_us=t_us,
            time=time,
            e_ps_true=self._energy["e_ps"],
            e_ecal_true=self._energy["e_ecal"],
            e_hcal_true=self._energy["e_hcal"],
            scalers=scalers,
            corruptions=tuple(corruptions),
            truncated=self.truncated,
        )
        self._corruption_of_event = {c.event - 1: c for c in corruptions if c.kind in EVENT_CORRUPTIONS}
        # True deposited energies need the per-event physics, made chunk by chunk:
        # fill them now (cheap: no waveforms) so the truth is complete at once.
        for first in range(0, n, CHUNK_EVENTS):
            m = min(CHUNK_EVENTS, n - first)
            self._physics(first, m)

    def _beam_particles(self, rng, n: int) -> np.ndarray:
        cfg = self.config
        u = rng.random(n)
        p = np.full(n, ELECTRON, dtype=np.int8)
        p[u < cfg.hadron_fraction + cfg.muon_fraction] = MUON
        p[u < cfg.hadron_fraction] = HADRON
        return p

    # -- physics: energies per channel ---------------------------------------------

    def _chunk_rng(self, first: int, stream: int) -> np.random.Generator:
        cfg = self.config
        return np.random.default_rng(np.random.SeedSequence([cfg.seed, cfg.run, self.spill, stream, first]))

    def _physics(self, first: int, m: int):
        """Amplitudes (ADC counts) [m, C] of the primary and of the pile-up particle
        (rows of pile-up events only), the pile-up shifts, LED rows.  Deterministic."""
        geo, sim, cfg = self.sim.geometry, self.sim, self.config
        rng = self._chunk_rng(first, 2)
        C = geo.n_channels
        sl = slice(first, first + m)
        particle = self.truth.particle[sl]
        E = self._deposits(rng, particle)
        rows_p = np.flatnonzero(self.truth.pileup[sl])
        E2 = self._deposits(rng, self.truth.pileup_particle[sl][rows_p])
        shift = rng.uniform(*PILEUP_SHIFT_RANGE, len(rows_p))
        # truth energies (deposited, both particles)
        for name, cols in (("e_ps", geo.is_ps), ("e_ecal", geo.is_ecal), ("e_hcal", geo.is_hcal)):
            tot = E[:, :C][:, cols].sum(axis=1)
            tot[rows_p] += E2[:, :C][:, cols].sum(axis=1)
            self._energy[name][sl] = tot
        A = E[:, :C] * sim._inv_gain
        A2 = E2[:, :C] * sim._inv_gain
        led = np.flatnonzero(particle == LED)
        if len(led):
            intensity = 1.0 + rng.normal(0.0, 0.01, (len(led), 1))
            A[led] = sim.led_amplitude * intensity * (1.0 + rng.normal(0.0, 0.005, (len(led), C)))
        if sim.hot.any():
            hot_cols = np.flatnonzero(sim.hot)
            fire = rng.random((m, len(hot_cols))) < cfg.hot_probability
            amp = HOT_AMPLITUDE[0] + rng.exponential(HOT_AMPLITUDE[1], (m, len(hot_cols)))
            A[:, hot_cols] += np.where(fire, amp, 0.0)
        A[:, sim.dead] = 0.0
        A2[:, sim.dead] = 0.0
        return A, rows_p, A2, shift

    def _deposits(self, rng: np.random.Generator, particle: np.ndarray) -> np.ndarray:
        """Deposited energy (GeV) [n, C+1]; column C collects cells the map lacks."""
        geo, cfg = self.sim.geometry, self.config
        n = len(particle)
        C = geo.n_channels
        E = np.zeros((n, C + 1))
        if n == 0:
            return E
        E0 = cfg.beam_energy_gev

        def add(rows, cols, values):
            if len(rows):
                E[rows[:, None], np.asarray(cols)[None, :]] += values

        def impact(k):  # beam spot, clipped so that the beam cell always holds the shower core
            spot = np.clip(rng.normal(0.0, BEAM_SPOT_CELLS, (2, k)), -BEAM_SPOT_MAX, BEAM_SPOT_MAX)
            return 2.0 + spot[0], 2.0 + spot[1]

        def em_shower(rows, e_ps, e_main):
            k = len(rows)
            cx, cy = impact(k)
            ps = _profile_2d(cx, cy, 6, PS_PROFILE) * (1.0 + rng.normal(0.0, 0.02, (k, 36)))
            main = _profile_2d(cx, cy, 6, MAIN_PROFILE) * (1.0 + rng.normal(0.0, 0.02, (k, 36)))
            add(rows, geo.ecal[0].ravel(), e_ps[:, None] * np.clip(ps, 0.0, None))
            add(rows, geo.ecal[1].ravel(), e_main[:, None] * np.clip(main, 0.0, None))

        def srd_tag(rows):
            k = len(rows)
            for m in range(3):
                e = np.exp(np.log(SRD_MEDIAN_GEV) + SRD_SIGMA * rng.standard_normal(k))
                add(rows, [geo.srd[m]], np.clip(e, *SRD_RANGE)[:, None])

        def mip(mean, k):
            return rng.gamma(4.0, mean / 4.0, k)

        # every beam particle: S counters
        beam_rows = np.flatnonzero(np.isin(particle, _BEAM_PARTICLES))
        for m in range(3):
            add(beam_rows, [geo.counters[m]], rng.gamma(6.0, COUNTER_MEAN_GEV / 6.0, len(beam_rows))[:, None])

        # detectors only monitored: a MIP in the cell under the beam spot (drawn only when the map has one)
        for cell in geo.monitor_cells:
            add(beam_rows, [cell], mip(MONITOR_MIP_GEV, len(beam_rows))[:, None])

        def wcal_shower(rows, e):
            k = len(rows)
            cx, cy = impact(k)
            ny, nx = geo.wcal.shape  # centred on the WCAL's middle cell
            px = _profile_1d(cx - 2.0 + nx // 2, nx, WCAL_PROFILE)
            py = _profile_1d(cy - 2.0 + ny // 2, ny, WCAL_PROFILE)
            add(rows, geo.wcal.ravel(), e[:, None] * (py[:, :, None] * px[:, None, :]).reshape(k, ny * nx))

        # electrons
        rows = np.flatnonzero(particle == ELECTRON)
        if len(rows):
            k = len(rows)
            sigma = math.hypot(ECAL_STOCHASTIC / math.sqrt(E0), ECAL_CONSTANT)
            total = E0 * (1.0 + sigma * rng.standard_normal(k))
            e_ps = np.minimum(PS_OFFSET_GEV + rng.gamma(PS_SHAPE, PS_SCALE, k), min(PS_MAX_GEV, 0.5 * E0))
            if geo.wcal is None:
                em_shower(rows, e_ps, np.clip(total - e_ps, 0.0, None))
            else:  # visible mode: the shower stays in the WCAL but for a small leak into the ECAL
                leak = np.clip(total * rng.exponential(WCAL_LEAK_MEAN, k), 0.0, total)
                wcal_shower(rows, np.clip(total - leak, 0.0, None))
                em_shower(rows, 0.1 * leak, 0.9 * leak)
            srd_tag(rows)

        # signal-like: invisible mode, a dark photon carries the rest of the energy away; visible mode,
        # it decays behind the WCAL into e+e-, whose shower in the ECAL holds the rest of the beam energy
        rows = np.flatnonzero(particle == SIGNAL)
        if len(rows) and geo.wcal is not None:
            k = len(rows)
            sigma = math.hypot(ECAL_STOCHASTIC / math.sqrt(E0), ECAL_CONSTANT)
            total = E0 * (1.0 + sigma * rng.standard_normal(k))
            e_wcal = rng.uniform(*VISIBLE_SIGNAL_WCAL_RANGE, k) * total
            wcal_shower(rows, e_wcal)
            e_ps = np.minimum(rng.uniform(*SIGNAL_PS_RANGE, k), 0.5 * (total - e_wcal))
            em_shower(rows, e_ps, total - e_wcal - e_ps)
            srd_tag(rows)
            rows = rows[:0]
        if len(rows):
            k = len(rows)
            total = rng.uniform(*SIGNAL_ECAL_RANGE, k) * min(1.0, E0 / 100.0)
            e_ps = np.minimum(rng.uniform(*SIGNAL_PS_RANGE, k), 0.5 * total)
            em_shower(rows, e_ps, total - e_ps)
            srd_tag(rows)

        # hadrons
        rows = np.flatnonzero(particle == HADRON)
        if len(rows):
            k = len(rows)
            cx, cy = impact(k)
            ps_mip = mip(0.2, k)
            main_mip = mip(0.4, k)
            add(rows, [geo.ecal[0][2, 2]], ps_mip[:, None])
            add(rows, [geo.ecal[1][2, 2]], main_mip[:, None])
            shower = rng.random(k) < HADRON_SHOWER_PROBABILITY
            e_shower = np.where(shower, rng.uniform(*HADRON_SHOWER_RANGE, k) * E0, 0.0)
            prof = _profile_2d(cx, cy, 6, HADRON_ECAL_PROFILE)
            add(rows, geo.ecal[1].ravel(), e_shower[:, None] * prof)
            response = np.clip(rng.normal(*HCAL_RESPONSE, k), 0.5, 1.0)
            e_h = np.clip(E0 - e_shower - ps_mip - main_mip, 0.0, None) * response
            share = rng.dirichlet(HCAL_LONGITUDINAL, k)
            hx, hy = 1.0 + rng.normal(0.0, 0.1, k), 1.0 + rng.normal(0.0, 0.1, k)
            lateral = _profile_2d(hx, hy, 3, HCAL_PROFILE)
            for m in range(4):
                add(rows, geo.hcal[m].ravel(), (e_h * share[:, m])[:, None] * lateral)
            veto_extra = np.where(shower, mip(0.02, k), 0.0)
            for m in range(3):
                add(rows, geo.veto[m], (mip(VETO_MIP_GEV, 2 * k).reshape(k, 2) + veto_extra[:, None]))

        # muons
        rows = np.flatnonzero(particle == MUON)
        if len(rows):
            k = len(rows)
            add(rows, [geo.ecal[0][2, 2]], mip(0.2, k)[:, None])
            add(rows, [geo.ecal[1][2, 2]], mip(0.4, k)[:, None])
            for m in range(4):
                e = np.clip(rng.normal(*MUON_HCAL_GEV, k), 0.3, None)
                add(rows, [geo.hcal[m][1, 1]], e[:, None])
            for m in range(3):
                add(rows, geo.veto[m], mip(MUON_VETO_GEV, 2 * k).reshape(k, 2))
        return E

    # -- waveforms -------------------------------------------------------------

    def _chunk(self, first: int) -> _Chunk:
        if self._cache is not None and first in self._cache:
            return self._cache[first]
        chunk = self._make_chunk(first)
        if self._cache is not None:
            self._cache[first] = chunk
        return chunk

    def _make_chunk(self, first: int) -> _Chunk:
        sim, geo, cfg = self.sim, self.sim.geometry, self.config
        m = min(CHUNK_EVENTS, cfg.events_per_spill - first)
        C, S = geo.n_channels, cfg.samples
        A, rows_p, A2, shift = self._physics(first, m)
        rng = self._chunk_rng(first, 3)

        # pulse shapes per (event, detector): peak sample 12 + jitter + detector offset
        offsets = geo.time_offset
        peak = PULSE_PEAK_SAMPLE + rng.normal(0.0, PULSE_JITTER, m)[:, None] + offsets[None, :]
        shape = self._pulse(peak)  # [m, 5, S]
        det = geo.det_index
        # Gaussian noise from a 16-bit inverse-CDF table (4x faster than standard_normal; tails cut at 4.3 sigma)
        wave = _NORMAL_TABLE[np.frombuffer(rng.bytes(2 * m * C * S), dtype=np.uint16).reshape(m, C, S)]
        wave *= sim.noise.astype(np.float32)[None, :, None]
        ped = np.where(sim._parity_odd[None, :], sim.pedestal_odd[:, None], sim.pedestal_even[:, None])
        ped = ped + (sim.drift * self.index)[:, None]
        wave += ped.astype(np.float32)[None]
        pulses = shape[:, det, :]  # [m, C, S]
        pulses *= A.astype(np.float32)[:, :, None]
        wave += pulses
        del pulses
        if len(rows_p):
            shape2 = self._pulse(peak[rows_p] + shift[:, None])
            wave[rows_p] += shape2[:, det, :] * A2.astype(np.float32)[:, :, None]
        np.rint(wave, out=wave)
        np.clip(wave, 0, layout.ADC_SATURATION, out=wave)
        samples = wave.astype(np.uint16)
        del wave

        # zero suppression (as the MSADC firmware would: on the data)
        if cfg.zero_suppression:
            s = samples.view(np.int16)  # 12-bit values: a free view
            ped_even = s[:, :, 0:6:2].mean(axis=2)
            ped_odd = s[:, :, 1:6:2].mean(axis=2)
            peak_adc = np.maximum(s[:, :, 6::2].max(axis=2) - ped_even, s[:, :, 7::2].max(axis=2) - ped_odd)
            present = (peak_adc > cfg.zero_suppression_threshold) | geo.always_keep[None, :]
            present[self.truth.event_type[first:first + m] == layout.CALIBRATION_EVENT] = True
        else:
            present = np.ones((m, C), dtype=bool)

        # corruption targets
        placeholder = np.zeros((m, geo.n_groups), dtype=bool)
        plans = []
        for row in range(m):
            c = self._corruption_of_event.get(first + row)
            if c is None:
                continue
            detail = int(rng.integers(0, 2**31))
            if c.kind == "module_missing":
                g = int(np.random.default_rng(detail).choice(geo.groups_of_src[c.src_id]))
                placeholder[row, g] = True
                gs = geo.group_start[g]
                present[row, gs:gs + geo.group_size[g]] = False
            elif c.kind in MSADC_LEVEL:
                cols = geo.cols_of_src[c.src_id]
                if not present[row, cols].any():  # damage needs data: keep one channel
                    present[row, np.random.default_rng(detail).choice(cols)] = True
            plans.append((row, c, detail))
        return _Chunk(first, m, samples, present, placeholder, plans)

    def _pulse(self, peak: np.ndarray) -> np.ndarray:
        """Pulse shapes [*, 5, S] with the largest sample scaled to 1."""
        k = self.sim._sample_index
        s = (k[None, None, :] - (peak[..., None] - PULSE_TAU)) / PULSE_TAU
        s = np.clip(s, 0.0, None)
        g = np.power(s, PULSE_POWER) * np.exp(PULSE_POWER * (1.0 - s))
        # the largest sample is the amplitude; a peak outside the window keeps its analytic scale
        inside = (peak >= 0) & (peak <= len(k) - 1)
        g /= np.where(inside, g.max(axis=-1), 1.0)[..., None]
        return g.astype(np.float32)

    # -- encoding ----------------------------------------------------------------

    def _encode(self, chunk: _Chunk, super_events: bool):
        """Words of the chunk's events: super events (file) or plain per-LDC events.

        Returns (words, ev_start, ev_words, sub_start, sub_words), offsets in words.
        """
        geo, cfg = self.sim.geometry, self.config
        m, S = chunk.n, cfg.samples
        hw = cfg.header_bytes // layout.WORD_BYTES
        R = 1 + (S + 1) // 2  # channel header + data words
        present, ph = chunk.present, chunk.placeholder
        sl = slice(chunk.first, chunk.first + m)
        event_no = np.arange(chunk.first + 1, chunk.first + m + 1, dtype=np.int64)
        ev_type = self.truth.event_type[sl].astype(np.int64)

        n_g = np.add.reduceat(present, geo.group_start, axis=1).astype(np.int64)  # [m, G]
        gw = np.where(ph, 1, np.where(n_g > 0, 1 + n_g * R, 0))
        chip = np.zeros((m, geo.n_eq), dtype=np.int64)
        for e in geo.eq_msadc:
            chip[:, e] = gw[:, geo.groups_of_eq[e]].sum(axis=1)
        chip[:, geo.eq_tt] = 1
        eqw = layout.EQUIPMENT_HEADER_WORDS + layout.SLINK_HEADER_WORDS + chip
        L = len(geo.ldcs)
        subw = np.empty((m, L), dtype=np.int64)
        eq_in_sub = np.empty_like(eqw)  # offset of each equipment after its sub-event header
        for li in range(L):
            eqs = geo.eqs_of_ldc[li]
            subw[:, li] = hw + eqw[:, eqs].sum(axis=1)
            eq_in_sub[:, eqs] = np.cumsum(eqw[:, eqs], axis=1) - eqw[:, eqs]
        top = hw if super_events else 0
        evw = subw.sum(axis=1) + top
        ev_start = np.cumsum(evw) - evw
        sub_start = ev_start[:, None] + top + (np.cumsum(subw, axis=1) - subw)
        eq_start = sub_start[:, geo.eq_ldc_index] + hw + eq_in_sub
        gcs = np.cumsum(gw, axis=1) - gw
        g_start = (eq_start[:, geo.eq_of_group] + layout.EQUIPMENT_HEADER_WORDS + layout.SLINK_HEADER_WORDS
                   + gcs - gcs[:, geo.eq_group_start[geo.eq_of_group]])
        total = int(evw.sum())
        out = np.zeros(total, dtype=np.uint32)

        event_in_run = self.index * cfg.events_per_spill + event_no
        mask = self.truth.trigger_mask[sl]
        time = self.truth.time[sl]
        hdr_cols = np.arange(hw)
        if super_events:
            h = _date_headers(hw, evw * 4, ev_type, cfg.run, event_in_run, self.spill, event_no, mask, 0, GDC_ID,
                              time, True)
            out[ev_start[:, None] + hdr_cols] = h
        for li, ldc in enumerate(geo.ldcs):
            h = _date_headers(hw, subw[:, li] * 4, ev_type, cfg.run, event_in_run, self.spill, event_no, mask, ldc,
                              0, time, False)
            out[sub_start[:, li, None] + hdr_cols] = h

        # equipment + S-Link headers [m, E, 10]
        eh = np.zeros((m, geo.n_eq, layout.EQUIPMENT_HEADER_WORDS + layout.SLINK_HEADER_WORDS), dtype=np.int64)
        eh[:, :, 0] = eqw * 4
        eh[:, :, 1] = layout.EQUIPMENT_TYPE_SLINK
        eh[:, :, 2] = geo.eq_src[None, :]
        eh[:, :, 6] = layout.EQUIPMENT_ELEMENT_SIZE
        eh[:, :, 7] = _slink_word0(eqw - layout.EQUIPMENT_HEADER_WORDS, geo.eq_src[None, :], ev_type[:, None])
        eh[:, :, 8] = _slink_word1(event_no, self.spill)[:, None]
        eh[:, :, 9] = layout.SLINK_WORD2_VALUE
        out[eq_start[:, :, None] + np.arange(eh.shape[2])] = eh
        out[eq_start[:, geo.eq_tt] + 10] = self.truth.trigger_time_us[sl]

        # ADC block headers and placeholders
        ev12 = (event_no & layout.ADC_EVENT_MASK)[:, None]
        common = ev12 | (geo.group_adc[None, :] << layout.ADC_ID_SHIFT) | (geo.group_port[None, :] << layout.ADC_PORT_SHIFT)
        key = np.where(ph, layout.ADC_KEY_PLACEHOLDER, layout.ADC_KEY)
        gh = common | (gw << layout.ADC_SIZE_SHIFT) | (key << layout.ADC_KEY_SHIFT)
        written = gw > 0
        out[g_start[written]] = gh[written]

        # channel records
        rows, cols = np.nonzero(present)
        if len(rows):
            pc = np.cumsum(present, axis=1) - present
            rank = pc[rows, cols] - pc[rows, geo.group_start[geo.group_of_col[cols]]]
            start = g_start[rows, geo.group_of_col[cols]] + 1 + rank * R
            s = chunk.samples[rows, cols].astype(np.uint32)  # [N, S]
            if S % 2:
                s = np.concatenate([s, np.zeros((len(s), 1), dtype=np.uint32)], axis=1)
            rec = np.empty((len(s), R), dtype=np.uint32)
            rec[:, 0] = ((s.sum(axis=1, dtype=np.uint64) & 0xFFFF).astype(np.uint32)
                         | np.uint32(S << layout.CH_SAMPLES_SHIFT)
                         | (geo.chan_id[cols] << np.uint32(layout.CH_CHAN_SHIFT))
                         | np.uint32(layout.CHANNEL_ID << layout.CH_ID_SHIFT))
            marker = np.full(R - 1, layout.DATA_MARKER_NEXT << layout.DATA_MARKER_SHIFT, dtype=np.uint32)
            marker[0] = layout.DATA_MARKER_FIRST << layout.DATA_MARKER_SHIFT
            rec[:, 1:] = s[:, 0::2] | (s[:, 1::2] << np.uint32(layout.SAMPLE_ODD_SHIFT)) | marker
            out[start[:, None] + np.arange(R)] = rec

        layout_info = {"eq_start": eq_start, "g_start": g_start, "gw": gw, "n_g": n_g, "chip": chip, "R": R,
                       "sub_start": sub_start, "subw": subw}
        for row, c, detail in chunk.plans:
            self._damage(out, row, c, detail, layout_info, ev_start[row], evw[row], super_events, chunk, event_no[row])
        return out, ev_start, evw, sub_start, subw

    def _damage(self, out, row, c: Corruption, detail, info, ev_start, ev_words, super_events, chunk, event_no):
        """Apply one corruption in place (sizes of the layout stay as they are)."""
        geo = self.sim.geometry
        rng = np.random.default_rng(detail)
        kind = c.kind
        if kind == "module_missing":
            return  # in the layout already
        if kind in EVENT_LEVEL:
            if super_events:
                a, w = int(ev_start), int(ev_words)
            else:
                li = geo.ldc_index[c.ldc]
                a, w = int(info["sub_start"][row, li]), int(info["subw"][row, li])
            if kind == "event_byte_swapped":
                out[a:a + w] = out[a:a + w].byteswap()
            elif kind == "event_old_layout":
                out[a + layout.H_VERSION] = OLD_LAYOUT_VERSION
            else:  # event_bad_header_size
                choice = int(rng.integers(0, 3))
                bad = (layout.DATE_HEADER_BYTES - 4, layout.DATE_HEADER_BYTES + 2, 4 * w + 4)[choice]
                out[a + layout.H_HEADER_SIZE] = bad
            return
        e = geo.eq_of_src[c.src_id]
        eq = int(info["eq_start"][row, e])
        if kind in EQUIPMENT_LEVEL:
            slink = eq + layout.EQUIPMENT_HEADER_WORDS
            if kind == "slink_event_mismatch":
                wrong = (event_no + 1 + int(rng.integers(0, 1000))) & layout.SLINK_EVENT_MASK
                out[slink + 1] = (int(out[slink + 1]) & ~layout.SLINK_EVENT_MASK) | int(wrong)
            elif kind == "slink_size_mismatch":
                size = int(out[slink]) & layout.SLINK_SIZE_MASK
                new = size + 1 if (rng.random() < 0.5 or size == 0) else size - 1
                out[slink] = (int(out[slink]) & ~layout.SLINK_SIZE_MASK) | (new & layout.SLINK_SIZE_MASK)
            else:  # equipment_bad_size: past the end of the (sub-)event
                li = geo.ldc_index[c.ldc]
                sub_end = int(info["sub_start"][row, li] + info["subw"][row, li])
                out[eq] = 4 * (sub_end - eq) + 4 * int(rng.integers(1, 64))
            return

        # inside MSADC chip data: pick a written ADC block of this srcID
        groups = [g for g in geo.groups_of_src[c.src_id] if info["n_g"][row, g] > 0 and not chunk.placeholder[row, g]]
        g = int(rng.choice(groups))
        gs = int(info["g_start"][row, g])
        gwords = int(info["gw"][row, g])
        if kind == "adc_bad_key":
            key = int(rng.choice([0, 1, 2]))
            out[gs] = (int(out[gs]) & ~(layout.ADC_KEY_MASK << layout.ADC_KEY_SHIFT)) | (key << layout.ADC_KEY_SHIFT)
        elif kind == "adc_bad_size":
            chip_end = int(info["eq_start"][row, e]) + 10 + int(info["chip"][row, e])
            past = chip_end - gs + 1 + int(rng.integers(0, 8))
            size = 0 if (rng.random() < 0.5 or past > layout.ADC_SIZE_MASK) else past
            out[gs] = (int(out[gs]) & ~(layout.ADC_SIZE_MASK << layout.ADC_SIZE_SHIFT)) | (size << layout.ADC_SIZE_SHIFT)
        elif kind == "adc_event_mismatch":
            wrong = (event_no + 1 + int(rng.integers(0, 4000))) & layout.ADC_EVENT_MASK
            out[gs] = (int(out[gs]) & ~layout.ADC_EVENT_MASK) | int(wrong)
        else:  # channel-level: pick a channel of the block
            R = info["R"]
            j = int(rng.integers(0, info["n_g"][row, g]))
            ch = gs + 1 + j * R
            if kind == "channel_bad_id":
                bad = int(rng.choice([0, 2, 3]))
                out[ch] = (int(out[ch]) & ~(layout.CH_ID_MASK << layout.CH_ID_SHIFT)) | (bad << layout.CH_ID_SHIFT)
            elif kind == "channel_bad_samples":
                room = gs + gwords - (ch + 1)  # data words left in the block
                n = 2 * room + 1 + int(rng.integers(0, 2))
                if rng.random() < 0.5 or n > layout.CH_SAMPLES_MASK:
                    n = 0
                out[ch] = (int(out[ch]) & ~(layout.CH_SAMPLES_MASK << layout.CH_SAMPLES_SHIFT)) | (
                    n << layout.CH_SAMPLES_SHIFT)
            else:  # data_bad_marker
                k = int(rng.integers(0, R - 1))
                good = layout.DATA_MARKER_FIRST if k == 0 else layout.DATA_MARKER_NEXT
                bad = int(rng.choice([v for v in range(4) if v != good]))
                w = ch + 1 + k
                out[w] = (int(out[w]) & ~(layout.DATA_MARKER_MASK << layout.DATA_MARKER_SHIFT)) | (
                    bad << layout.DATA_MARKER_SHIFT)

    # -- start / end of burst ----------------------------------------------------------

    def _sob(self, ldc: int | None) -> bytes:
        return self.sim._small_event(layout.START_OF_BURST, 0, self.spill, 0, int(self.spill_start), {}, ldc)

    def _eob(self, ldc: int | None) -> bytes:
        cfg = self.config
        sc = self.truth.scalers
        chip = [sc[name] for name in layout.SCALER_NAMES]
        eq = _equipment(layout.SRC_SCALERS, layout.END_OF_BURST, 0, self.spill, chip)
        time = int(self.spill_start + cfg.spill_duration_s)
        return self.sim._small_event(layout.END_OF_BURST, 0, self.spill, 0, time, {SCALER_LDC: eq}, ldc)

    # -- public output -------------------------------------------------------------------

    def _chunk_firsts(self) -> range:
        return range(0, self.config.events_per_spill, CHUNK_EVENTS)

    def _encoded(self, super_events: bool) -> Iterator[tuple[_Chunk, tuple]]:
        for first in self._chunk_firsts():
            chunk = self._chunk(first)
            yield chunk, self._encode(chunk, super_events)

    def iter_raw(self, block_events: int = 8 * CHUNK_EVENTS) -> Iterator[bytes]:
        """The spill as the file holds it (START_OF_BURST, events, END_OF_BURST), in
        byte chunks of about ``block_events`` events (rounded up to 1024)."""
        cfg = self.config
        per = max(1, -(-int(block_events) // CHUNK_EVENTS))
        yield self._sob(None)
        pending: list[bytes] = []
        last_first = self._chunk_firsts()[-1] if cfg.events_per_spill else -1
        for chunk, (words, ev_start, evw, _, subw) in self._encoded(cfg.super_events):
            if self.truncated and chunk.first == last_first:
                # keep whole words up to the middle of the last event (the last sub-event in plain files)
                last_len = int(subw[-1, -1]) if not cfg.super_events else int(evw[-1])
                cut_words = int(ev_start[-1] + evw[-1]) - last_len + last_len // 2
                words = words[:cut_words]
            pending.append(words.tobytes())
            if len(pending) >= per:
                yield b"".join(pending)
                pending = []
        if pending:
            yield b"".join(pending)
        if not self.truncated:
            yield self._eob(None)

    def raw(self) -> bytes:
        """The spill as the file holds it (super events, or plain events if not ``super_events``)."""
        return b"".join(self.iter_raw(1 << 30))

    def ldc_events(self, ldc: int) -> list[bytes]:
        """That readout node's plain events, in order: START_OF_BURST, the
        PHYSICS/CALIBRATION events, END_OF_BURST (what it publishes, §9)."""
        if ldc not in LDC_IDS:
            raise ValueError(f"no readout node {ldc}; nodes are {LDC_IDS}")
        li = self.sim.geometry.ldc_index[ldc]
        events = [self._sob(ldc)]
        for chunk, (words, _, _, sub_start, subw) in self._encoded(False):
            buf = words.tobytes()
            starts = (sub_start[:, li] * 4).tolist()
            ends = ((sub_start[:, li] + subw[:, li]) * 4).tolist()
            events.extend(buf[a:b] for a, b in zip(starts, ends))
        if self.truncated:
            last = events[-1]
            events[-1] = last[: 4 * (len(last) // 8)]
        else:
            events.append(self._eob(ldc))
        return events

    def iter_ldc_events(self, ldc: int) -> Iterator[bytes]:
        """Like :meth:`ldc_events`, generated chunk by chunk (for long spills)."""
        if ldc not in LDC_IDS:
            raise ValueError(f"no readout node {ldc}; nodes are {LDC_IDS}")
        li = self.sim.geometry.ldc_index[ldc]
        yield self._sob(ldc)
        pending = None
        for chunk, (words, _, _, sub_start, subw) in self._encoded(False):
            buf = words.tobytes()
            for a, b in zip((sub_start[:, li] * 4).tolist(), ((sub_start[:, li] + subw[:, li]) * 4).tolist()):
                if pending is not None:
                    yield pending
                pending = buf[a:b]
        if pending is not None:
            yield pending[: 4 * (len(pending) // 8)] if self.truncated else pending
        if not self.truncated:
            yield self._eob(ldc)


def write_raw_file(path: str | os.PathLike, config: SimulationConfig, channel_map: ChannelMap | None = None,
                   block_events: int = 8 * CHUNK_EVENTS) -> list[SpillTruth]:
    """Write the run to ``path`` spill by spill (never the whole run in memory);
    return the truth of every spill."""
    sim = ReadoutSimulator(config, channel_map)
    truths = []
    with open(Path(path), "wb") as f:
        if config.run_events:
            f.write(sim.run_event(layout.START_OF_RUN))
        for spill in sim.spills():
            for data in spill.iter_raw(block_events):
                f.write(data)
            truths.append(spill.truth)
            del spill
        if config.run_events and not sim.truncated:
            f.write(sim.run_event(layout.END_OF_RUN))
    return truths
