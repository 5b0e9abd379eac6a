"""Spill quality: per-check, per-subsystem and overall states from a spill's QA record,
histograms and channel findings, optionally against a reference spill or run.

States are ordered GOOD < NO_DATA < WARNING < BAD and every roll-up is the
worst of its parts (``QualityState.worst``): a subsystem, or the spill, is GOOD
only when every check in it could be judged and passed; NO_DATA (too few
events to judge) is not GOOD, but never hides a WARNING or BAD. Checks that do
not apply (no reference given, nothing configured) are left out, not NO_DATA.

Subsystems: ``beam`` (scalers, hadron contamination, time-in-spill profile,
beam counters S0–S2), ``ecal``, ``hcal``, ``srd``, ``veto``, ``daq`` (decode
errors, lost events and messages, missing modules, dead time, trigger
bookkeeping, spill completeness).

Reference comparison: each spectrum is compared with the same spectrum of the
reference (a good spill or a run sum, any :class:`~.histograms.HistogramSet`)
by Pearson's chi-square test of homogeneity on the two histograms' contents
(``scipy.stats.chi2_contingency`` on the 2 × bins table; adjacent sparse bins
are merged first so that the asymptotic chi-square holds). The check's value
is the p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from enum import IntEnum
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
from pydantic import model_validator

from ..config_section import ConfigSection, FieldProblem
from ..decoders.detectors import BASE_SUBSYSTEMS

from .histograms import TRIGGER_INDEX

SUBSYSTEMS = BASE_SUBSYSTEMS  # judged in every spill; the detector table may add more (decoders/detectors.toml)
#: subsystems that have a problem-channel check in every spill (then those of the map's other detectors)
DETECTOR_SUBSYSTEMS = ("beam", "ecal", "hcal", "srd", "veto")
# spectra compared with the reference, by subsystem: (histogram name, ...)
REFERENCE_SPECTRA = {"beam": ("e_total",), "ecal": ("e_ecal", "e_ps"), "hcal": ("e_hcal",), "srd": ("srd",),
                     "veto": ("veto",)}


#: overall "state" of a spill cut short by the service stopping: archived, never judged (not a QualityState)
INTERRUPTED = "INTERRUPTED"


def interrupted_quality(run: int | None, spill: int | None) -> dict:
    """The quality dict of an interrupted spill: no check run, every state INTERRUPTED."""
    return {"run": run, "spill": spill, "overall": INTERRUPTED, "subsystems": {s: INTERRUPTED for s in SUBSYSTEMS},
            "checks": [], "reasons": ["the service stopped during this spill: not judged"]}


class QualityState(IntEnum):
    """Ordered so that ``max`` is the worst."""

    GOOD = 0
    NO_DATA = 1
    WARNING = 2
    BAD = 3

    @classmethod
    def worst(cls, states: Iterable["QualityState"]) -> "QualityState":
        """Worst of ``states``; NO_DATA for none."""
        states = list(states)
        return max(states) if states else cls.NO_DATA


class QualityConfig(ConfigSection):
    """Thresholds (``[quality]``). ``*_warning`` / ``*_bad`` are upper limits unless named ``range``."""

    section: ClassVar[str] = "quality"

    min_events: int = 200  # data events to judge physics checks
    min_beam_events: int = 100  # beam-trigger events to judge the hadron fraction
    # beam
    beam_range_warning: tuple[float, float] = (1.0e3, 2.0e7)  # particles on target per spill
    beam_range_bad: tuple[float, float] = (1.0, 5.0e7)
    spill_duration_range_us: tuple[float, float] | None = (3.5e6, 6.5e6)  # WARNING outside
    hadron_fraction_warning: float = 0.05
    hadron_fraction_bad: float = 0.15
    spike_factor: float = 5.0  # a time bin above this × the median of the active bins
    spike_rebin: int = 5  # 10 ms bins merged to 50 ms
    spike_min_events: int = 500
    # ECAL energy scale: electron-tagged E_ECAL peak / beam energy
    beam_energy_gev: float | None = 100.0
    energy_scale_warning: float = 0.05
    energy_scale_bad: float = 0.15
    min_peak_events: int = 200
    # SRD: fraction of beam events without electron tag minus HCAL hadron fraction
    srd_excess_warning: float = 0.05
    srd_excess_bad: float = 0.20
    # DAQ (rates per data event)
    decode_error_rate_warning: float = 1e-4
    decode_error_rate_bad: float = 1e-2
    lost_event_rate_warning: float = 1e-3
    lost_event_rate_bad: float = 1e-2
    modules_missing_rate_warning: float = 0.0
    modules_missing_rate_bad: float = 1e-2
    dropped_event_rate_warning: float = 0.0
    dropped_event_rate_bad: float = 1e-2
    incomplete_event_rate_warning: float = 0.0
    incomplete_event_rate_bad: float = 1e-2
    dead_time_warning: float = 0.3
    dead_time_bad: float = 0.6
    trigger_mismatch_warning: float = 0.01  # |accepted − (events + lost)| / accepted
    trigger_mismatch_bad: float = 0.10
    # channels: distinct problem channels per subsystem
    channels_warning: int = 1
    channels_bad: int = 3
    # reference comparison
    reference_trigger: str = "physics"
    reference_p_warning: float = 1e-3
    reference_p_bad: float = 1e-6
    reference_min_entries: int = 200
    reference_min_bin_count: float = 10.0  # merge adjacent bins until spill + reference ≥ this
    # set by the beam profile (decoders/beam-profiles.toml) unless given explicitly
    energy_spectrum: str = "e_ecal"  # histogram whose peak must sit at beam_energy_gev × energy_peak_fraction
    energy_trigger: str = "electron"  # its trigger selection
    energy_peak_fraction: float = 1.0  # expected peak / beam energy (e/pi of a calorimeter for hadrons)
    checks_off: tuple[str, ...] = ()  # checks that do not apply (e.g. the electron tag on a hadron beam)

    @model_validator(mode="after")
    def _agree(self) -> "QualityConfig":
        if not self.reference_p_bad <= self.reference_p_warning:
            raise FieldProblem("reference_p_bad", f"must not exceed reference_p_warning ({self.reference_p_warning})")
        for name in ("hadron_fraction", "energy_scale", "srd_excess", "decode_error_rate", "lost_event_rate",
                     "dead_time", "trigger_mismatch", "modules_missing_rate", "dropped_event_rate",
                     "incomplete_event_rate", "channels"):
            if getattr(self, f"{name}_bad") < getattr(self, f"{name}_warning"):
                raise FieldProblem(f"{name}_bad", f"must not be below {name}_warning ({getattr(self, f'{name}_warning')})")
        for name in ("beam_range_warning", "beam_range_bad", "spill_duration_range_us"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] <= bounds[1]:
                raise FieldProblem(name, f"needs low <= high, got {list(bounds)}")
        for name in ("reference_trigger", "energy_trigger"):
            if getattr(self, name) not in TRIGGER_INDEX:
                raise FieldProblem(name, f"must be one of {', '.join(TRIGGER_INDEX)}, got {getattr(self, name)!r}")
        if not 0 < self.energy_peak_fraction <= 2:
            raise FieldProblem("energy_peak_fraction", f"must be within (0, 2], got {self.energy_peak_fraction}")
        return self


@dataclass(frozen=True)
class Check:
    """One check's verdict; ``detail`` says what was measured, ``expected`` what it should be."""

    name: str  # "<subsystem>.<what>"
    subsystem: str
    state: QualityState
    value: float | None = None
    detail: str = ""
    expected: str = ""

    @property
    def reason(self) -> str:
        """The verdict in words with its numbers, e.g. "electron peak 91.8 GeV for a 100 GeV beam,
        expected 100 ± 5 GeV"."""
        return f"{self.detail}, expected {self.expected}" if self.expected else self.detail

    def to_dict(self) -> dict:
        v = self.value
        if v is not None and not math.isfinite(v):
            v = None
        return {"name": self.name, "subsystem": self.subsystem, "state": self.state.name, "value": v,
                "detail": self.detail, "reason": self.reason}


@dataclass(frozen=True)
class SpillQuality:
    run: int | None
    spill: int | None
    overall: QualityState
    subsystems: Mapping[str, QualityState]
    checks: tuple[Check, ...] = field(default_factory=tuple)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def reasons(self) -> list[str]:
        """Why the spill is not GOOD: ``"<check>: <reason>"`` for every check that is not GOOD."""
        return [f"{c.name} {c.state.name}: {c.reason}" for c in self.checks if c.state != QualityState.GOOD]

    def to_dict(self) -> dict:
        return {
            "run": self.run, "spill": self.spill, "overall": self.overall.name,
            "subsystems": {k: v.name for k, v in self.subsystems.items()},
            "checks": [c.to_dict() for c in self.checks],
            "reasons": self.reasons,
        }

    def alarms(self) -> list[dict]:
        """Spec §12 alarm objects for the checks that are WARNING (severity "warning") or BAD
        ("critical"; the severities of monitor/alarms/rules.py)."""
        return [
            {"name": c.name, "severity": "critical" if c.state == QualityState.BAD else "warning",
             "detail": c.detail, "subsystem": c.subsystem, "state": c.state.name, "value": c.to_dict()["value"]}
            for c in self.checks if c.state >= QualityState.WARNING
        ]


# --------------------------------------------------------------------------- helpers


def _upper(value: float, warning: float, bad: float) -> QualityState:
    if value > bad:
        return QualityState.BAD
    if value > warning:
        return QualityState.WARNING
    return QualityState.GOOD


def _num(record: Mapping, key: str) -> float | None:
    v = record.get(key)
    if isinstance(v, bool) or v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _count(value: Any) -> int:
    """An int, or a ``{"total": n}`` / ``{ldc: n}`` mapping (lost messages), as one number."""
    if value is None:
        return 0
    if isinstance(value, Mapping):
        if "total" in value:
            return int(value["total"] or 0)
        return int(sum(int(v or 0) for v in value.values()))
    return int(value)


def merge_sparse_bins(a: np.ndarray, b: np.ndarray, min_count: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins (left to right) until each group's a + b reaches ``min_count``.

    A trailing group below the limit joins the previous one; empty groups vanish.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    total = a + b
    if min_count <= 0:
        keep = total > 0
        return a[keep], b[keep]
    # greedy left-to-right grouping: a group closes at the first bin where the
    # running total since the group started reaches min_count
    group = np.empty(len(total), dtype=np.int64)
    g, acc = 0, 0.0
    for i, t in enumerate(total):  # bins are few (hundreds); runs once per spill and spectrum
        group[i] = g
        acc += t
        if acc >= min_count:
            g, acc = g + 1, 0.0
    ga = np.bincount(group, weights=a)
    gb = np.bincount(group, weights=b)
    if len(ga) > 1 and ga[-1] + gb[-1] < min_count:
        ga[-2] += ga[-1]
        gb[-2] += gb[-1]
        ga, gb = ga[:-1], gb[:-1]
    keep = (ga + gb) > 0
    return ga[keep], gb[keep]


def compare_spectra(spill: np.ndarray, reference: np.ndarray, min_bin_count: float = 10.0) -> tuple[float, int, float]:
    """Chi-square test that two histograms' contents come from one distribution.

    Returns (chi2, degrees of freedom, p-value); totals may differ (shape test).
    """
    a, b = merge_sparse_bins(spill, reference, min_bin_count)
    if len(a) < 2 or a.sum() <= 0 or b.sum() <= 0:
        return float("nan"), 0, float("nan")
    from scipy import stats  # here, not at import: scipy alone costs commands ~0.3 s of start-up

    res = stats.chi2_contingency(np.vstack([a, b]), correction=False)
    return float(res.statistic), int(res.dof), float(res.pvalue)


def _peak(counts: np.ndarray, edges: np.ndarray) -> float | None:
    """Position of the main peak: mode of the spectrum refined by the mean within ±10 % of it."""
    if counts.sum() <= 0:
        return None
    centers = 0.5 * (edges[1:] + edges[:-1])
    width = max(1, len(counts) // 100)  # smooth over ~1 % of the range
    smooth = np.convolve(counts, np.ones(2 * width + 1), mode="same")
    mode = centers[int(np.argmax(smooth))]
    win = np.abs(centers - mode) <= 0.1 * abs(mode) + (edges[1] - edges[0])
    w = counts[win]
    return float(np.sum(w * centers[win]) / w.sum()) if w.sum() > 0 else float(mode)


def _findings_list(channel_findings) -> tuple[list, bool | None]:
    """(findings, judged) from a HealthReport, a list of findings / dicts, or None."""
    if channel_findings is None:
        return [], None
    if hasattr(channel_findings, "findings"):
        return list(channel_findings.findings), bool(getattr(channel_findings, "judged", True))
    return list(channel_findings), True


def _hist_dict(x) -> Mapping[str, Any]:
    """The ``{name: hist.Hist}`` of a histogram set, or the mapping itself (e.g. from the archive)."""
    return x.hists if hasattr(x, "hists") else x


def _spectrum(hists: Mapping[str, Any], name: str, trigger: str, flow: bool) -> np.ndarray:
    """Counts of one trigger selection of a spectrum (first axis = trigger)."""
    return np.asarray(hists[name].view(flow=flow))[TRIGGER_INDEX[trigger]].astype(np.float64)


def _get(f, key):
    return f.get(key) if isinstance(f, Mapping) else getattr(f, key)


# --------------------------------------------------------------------------- assessment


@dataclass(frozen=True)
class Inputs:
    """What every check reads: one spill's record, histograms, channel findings, the reference, the
    configuration, and the detectors of the channel map (name -> quality subsystem, table order)."""

    record: Mapping[str, Any]
    hists: Mapping[str, Any] | None
    reference: Mapping[str, Any] | None
    findings: list
    judged: bool | None  # None: channel checks left out
    config: QualityConfig
    detector_subsystems: Mapping[str, str]

    @property
    def events(self) -> int:
        return int(self.record.get("events") or 0)

    @property
    def enough(self) -> bool:
        """Enough data events to judge physics checks."""
        return self.events >= self.config.min_events

    @property
    def hadron_fraction(self) -> float | None:
        return _num(self.record, "hadron_fraction")

    @property
    def beam_events(self) -> int | None:
        return int(self.record.get("beam_events") or 0) if "beam_events" in self.record else None

    @property
    def few_beam_events(self) -> bool:
        """Too few beam-trigger events to judge the hadron fraction and the electron tag."""
        n = self.beam_events
        return (n < self.config.min_beam_events) if n is not None else not self.enough


def check(name: str, state: QualityState, value: float | None = None, detail: str = "", expected: str = "") -> Check:
    """A :class:`Check` named ``<subsystem>.<what>``."""
    return Check(name, name.split(".", 1)[0], state, value, detail, expected)


@lru_cache(maxsize=1)
def default_detector_subsystems() -> dict[str, str]:
    """The packaged channel map's detectors and their quality subsystems (decoders/detectors.toml)."""
    from ..decoders.channelmap import ChannelMap

    return ChannelMap.default().detector_subsystems()


def subsystems_of(detector_subsystems: Mapping[str, str]) -> tuple[str, ...]:
    """The judged subsystems: the base ones, then those the detectors add, in order."""
    out = list(SUBSYSTEMS)
    for sub in detector_subsystems.values():
        if sub not in out:
            out.append(sub)
    return tuple(out)


def assess(
    record: Mapping[str, Any],
    histograms=None,
    channel_findings=None,
    reference=None,
    config: QualityConfig | None = None,
    detector_subsystems: Mapping[str, str] | None = None,
) -> SpillQuality:
    """Judge one spill: run every check of the registry (:mod:`.checks`, per subsystem) in order.

    ``record``: the QA record dict (``QARecord.to_dict()``); ``histograms``: the
    spill's :class:`~.histograms.SpillHistograms` or its ``{name: hist.Hist}``
    (None: histogram checks left out); ``channel_findings``: a
    :class:`~.health.HealthReport` or a list of findings (objects or dicts with
    ``detector``, ``slot``, ``kind``), None to leave channel checks out;
    ``reference``: histograms to compare spectra with, same forms (a good
    spill, a :class:`~.histograms.RunHistograms`, or the archive's
    ``get_histograms`` of a chosen spill); None: no comparison.
    ``detector_subsystems``: the channel map's detectors -> quality subsystem
    (``ChannelMap.detector_subsystems()``); default: the packaged map's.
    """
    from .checks import REGISTRY

    cfg = config or QualityConfig()
    findings, judged = _findings_list(channel_findings)
    inputs = Inputs(
        record=record,
        hists=_hist_dict(histograms) if histograms is not None else None,
        reference=_hist_dict(reference) if reference is not None else None,
        findings=findings,
        judged=judged,
        config=cfg,
        detector_subsystems=dict(detector_subsystems if detector_subsystems is not None
                                 else default_detector_subsystems()),
    )
    checks: list[Check] = []
    for entry in REGISTRY:
        checks.extend(c for c in entry.run(inputs) if c.name not in cfg.checks_off)
    subsystems = {s: QualityState.worst(c.state for c in checks if c.subsystem == s)
                  for s in subsystems_of(inputs.detector_subsystems)}
    return SpillQuality(
        run=record.get("run"), spill=record.get("spill"), overall=QualityState.worst(subsystems.values()),
        subsystems=subsystems, checks=tuple(checks),
    )


__all__ = [
    "QualityState", "QualityConfig", "Check", "SpillQuality", "assess", "compare_spectra", "merge_sparse_bins",
    "SUBSYSTEMS", "Inputs", "check",
]
