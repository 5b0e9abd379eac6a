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
from enum import IntEnum
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
from pydantic import model_validator
from scipy import stats as _stats

from ..config_section import ConfigSection, FieldProblem

from .histograms import TRIGGER_INDEX

SUBSYSTEMS = ("beam", "ecal", "hcal", "srd", "veto", "daq")
DETECTOR_SUBSYSTEM = {"ECAL": "ecal", "HCAL": "hcal", "SRD": "srd", "VETO": "veto", "S": "beam"}
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
        if self.reference_trigger not in TRIGGER_INDEX:
            raise FieldProblem("reference_trigger", f"must be one of {', '.join(TRIGGER_INDEX)}, "
                                                    f"got {self.reference_trigger!r}")
        return self


@dataclass(frozen=True)
class Check:
    name: str  # "<subsystem>.<what>"
    subsystem: str
    state: QualityState
    value: float | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        v = self.value
        if v is not None and not math.isfinite(v):
            v = None
        return {"name": self.name, "subsystem": self.subsystem, "state": self.state.name, "value": v,
                "detail": self.detail}


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

    def to_dict(self) -> dict:
        return {
            "run": self.run, "spill": self.spill, "overall": self.overall.name,
            "subsystems": {k: v.name for k, v in self.subsystems.items()},
            "checks": [c.to_dict() for c in self.checks],
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
    res = _stats.chi2_contingency(np.vstack([a, b]), correction=False)
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


def assess(
    record: Mapping[str, Any],
    histograms=None,
    channel_findings=None,
    reference=None,
    config: QualityConfig | None = None,
) -> SpillQuality:
    """Judge one spill.

    ``record``: the QA record dict (``QARecord.to_dict()``); ``histograms``: the
    spill's :class:`~.histograms.SpillHistograms` or its ``{name: hist.Hist}``
    (None: histogram checks left out); ``channel_findings``: a
    :class:`~.health.HealthReport` or a list of findings (objects or dicts with
    ``detector``, ``slot``, ``kind``), None to leave channel checks out;
    ``reference``: histograms to compare spectra with, same forms (a good
    spill, a :class:`~.histograms.RunHistograms`, or the archive's
    ``get_histograms`` of a chosen spill); None: no comparison.
    """
    cfg = config or QualityConfig()
    hists = _hist_dict(histograms) if histograms is not None else None
    ref_hists = _hist_dict(reference) if reference is not None else None
    S = QualityState
    checks: list[Check] = []

    def add(name: str, state: QualityState, value: float | None = None, detail: str = "") -> None:
        checks.append(Check(name, name.split(".", 1)[0], state, value, detail))

    events = int(record.get("events") or 0)
    enough = events >= cfg.min_events
    complete = bool(record.get("complete"))

    # ------------------------------------------------------------------ DAQ
    add("daq.complete", S.GOOD if complete else S.WARNING, float(complete),
        "END_OF_BURST received" if complete else "spill cut off: no END_OF_BURST (from every readout node)")
    errors = int(record.get("decode_errors") or 0)
    denom = max(events, 1)
    for name, count, warn, bad in (
        ("decode_errors", errors, cfg.decode_error_rate_warning, cfg.decode_error_rate_bad),
        ("modules_missing", int(record.get("modules_missing") or 0), cfg.modules_missing_rate_warning,
         cfg.modules_missing_rate_bad),
        ("dropped_events", int(record.get("dropped_events") or 0), cfg.dropped_event_rate_warning,
         cfg.dropped_event_rate_bad),
        ("incomplete_events", int(record.get("incomplete_events") or 0), cfg.incomplete_event_rate_warning,
         cfg.incomplete_event_rate_bad),
    ):
        rate = count / denom
        state = S.BAD if count and not events else _upper(rate, warn, bad)
        add(f"daq.{name}", state, rate, f"{count} in {events} events")
    lost = int(record.get("lost_events") or 0)
    rate = lost / max(events + lost, 1)
    add("daq.lost_events", _upper(rate, cfg.lost_event_rate_warning, cfg.lost_event_rate_bad), rate,
        f"{lost} lost of {events + lost}")
    lost_messages = _count(record.get("lost_messages"))
    if "lost_messages" in record:
        add("daq.lost_messages", S.WARNING if lost_messages else S.GOOD, float(lost_messages),
            f"{lost_messages} ZeroMQ messages lost (sequence gaps)")
    dead_time = _num(record, "dead_time_fraction")
    raw, accepted = _num(record, "triggers_raw"), _num(record, "triggers_accepted")
    if dead_time is None and raw and accepted is not None:
        dead_time = 1.0 - accepted / raw
    if dead_time is None:
        add("daq.dead_time", S.NO_DATA, None, "no trigger scalers")
    else:
        add("daq.dead_time", _upper(dead_time, cfg.dead_time_warning, cfg.dead_time_bad), dead_time,
            f"accepted {accepted} of {raw} raw triggers")
    if accepted is None:
        add("daq.trigger_count", S.NO_DATA, None, "no trigger scalers")
    else:
        recorded = events + lost
        mismatch = abs(accepted - recorded) / max(accepted, 1.0)
        add("daq.trigger_count", _upper(mismatch, cfg.trigger_mismatch_warning, cfg.trigger_mismatch_bad),
            mismatch, f"{accepted:.0f} accepted triggers, {recorded} events recorded or lost")

    # ------------------------------------------------------------------ beam
    beam = _num(record, "beam")
    if beam is None:
        add("beam.intensity", S.NO_DATA, None, "no beam scaler (END_OF_BURST missing)")
    else:
        lo_b, hi_b = cfg.beam_range_bad
        lo_w, hi_w = cfg.beam_range_warning
        state = S.BAD if not lo_b <= beam <= hi_b else S.WARNING if not lo_w <= beam <= hi_w else S.GOOD
        duration = _num(record, "spill_duration_us")
        rate = f", {beam / (duration * 1e-6):.3g} /s" if duration else ""
        add("beam.intensity", state, beam, f"{beam:.0f} particles on target{rate}")
    duration = _num(record, "spill_duration_us")
    if cfg.spill_duration_range_us is not None and duration is not None:
        lo, hi = cfg.spill_duration_range_us
        add("beam.spill_duration", S.GOOD if lo <= duration <= hi else S.WARNING, duration,
            f"spill {duration * 1e-6:.2f} s")
    hf = _num(record, "hadron_fraction")
    beam_events = int(record.get("beam_events") or 0) if "beam_events" in record else None
    few_beam = (beam_events < cfg.min_beam_events) if beam_events is not None else not enough
    if hf is None or few_beam:
        add("beam.hadron_fraction", S.NO_DATA, hf, f"{beam_events or 0} beam-trigger events")
    else:
        add("beam.hadron_fraction", _upper(hf, cfg.hadron_fraction_warning, cfg.hadron_fraction_bad), hf,
            f"hadron-like fraction of beam-trigger events {hf:.4f}")
    if hists is not None and "time" in hists:
        checks.append(_time_profile(hists, cfg))

    # ------------------------------------------------------------------ SRD: tag efficiency
    hf_srd = _num(record, "hadron_fraction_srd")
    if hf is None or hf_srd is None or few_beam:
        add("srd.electron_tag", S.NO_DATA, None, "too few beam-trigger events")
    else:
        excess = hf_srd - hf
        add("srd.electron_tag", _upper(excess, cfg.srd_excess_warning, cfg.srd_excess_bad), excess,
            f"untagged beam events {hf_srd:.4f} vs HCAL hadron fraction {hf:.4f}")

    # ------------------------------------------------------------------ ECAL energy scale
    if hists is not None and cfg.beam_energy_gev and "e_ecal" in hists:
        h = hists["e_ecal"]
        counts = _spectrum(hists, "e_ecal", "electron", flow=False)
        n = int(counts.sum())
        if n < cfg.min_peak_events:
            add("ecal.energy_scale", S.NO_DATA, None, f"{n} tagged electrons")
        else:
            peak = _peak(counts, h.axes[1].edges)
            dev = abs(peak / cfg.beam_energy_gev - 1.0)
            add("ecal.energy_scale", _upper(dev, cfg.energy_scale_warning, cfg.energy_scale_bad), peak,
                f"electron peak {peak:.1f} GeV for a {cfg.beam_energy_gev:g} GeV beam")

    # ------------------------------------------------------------------ reference spectra
    if ref_hists is not None and hists is not None:
        for subsystem, names in REFERENCE_SPECTRA.items():
            for name in names:
                if name not in hists or name not in ref_hists:
                    continue
                a = _spectrum(hists, name, cfg.reference_trigger, flow=True)
                b = _spectrum(ref_hists, name, cfg.reference_trigger, flow=True)
                check = f"{subsystem}.{name}_vs_reference"
                if a.sum() < cfg.reference_min_entries or b.sum() < cfg.reference_min_entries or not enough:
                    add(check, S.NO_DATA, None, f"{int(a.sum())} entries, reference {int(b.sum())}")
                    continue
                chi2, dof, p = compare_spectra(a, b, cfg.reference_min_bin_count)
                if not math.isfinite(p):
                    add(check, S.NO_DATA, None, "too few filled bins")
                    continue
                state = S.BAD if p < cfg.reference_p_bad else S.WARNING if p < cfg.reference_p_warning else S.GOOD
                add(check, state, p, f"chi2/ndf {chi2:.1f}/{dof}, p = {p:.3g}")

    # ------------------------------------------------------------------ channels
    findings, judged = _findings_list(channel_findings)
    if judged is not None:
        by_sub: dict[str, dict[int, list[str]]] = {s: {} for s in ("beam", "ecal", "hcal", "srd", "veto")}
        for f in findings:
            sub = DETECTOR_SUBSYSTEM.get(str(_get(f, "detector")), "daq")
            by_sub.setdefault(sub, {}).setdefault(int(_get(f, "slot")), []).append(str(_get(f, "kind")))
        for sub, slots in by_sub.items():
            n = len(slots)
            if n >= cfg.channels_bad:
                state = S.BAD
            elif n >= cfg.channels_warning:
                state = S.WARNING
            else:
                state = S.GOOD if judged else S.NO_DATA
            kinds = sorted({k for ks in slots.values() for k in ks})
            add(f"{sub}.channels", state, float(n),
                f"{n} problem channels ({', '.join(kinds)})" if n else "all channels healthy" if judged else
                "not judged (too few events)")

    subsystems = {s: QualityState.worst(c.state for c in checks if c.subsystem == s) for s in SUBSYSTEMS}
    return SpillQuality(
        run=record.get("run"), spill=record.get("spill"), overall=QualityState.worst(subsystems.values()),
        subsystems=subsystems, checks=tuple(checks),
    )


def _time_profile(hists: Mapping[str, Any], cfg: QualityConfig) -> Check:
    """Spikes in the events-versus-time-in-spill profile (beam trigger, else physics trigger)."""
    S = QualityState
    best = max(("beam", "physics"), key=lambda t: _spectrum(hists, "time", t, flow=True).sum())
    counts = _spectrum(hists, "time", best, flow=False)
    n = counts.sum()
    if n < cfg.spike_min_events:
        return Check("beam.time_profile", "beam", S.NO_DATA, None, f"{int(n)} timed events")
    r = max(1, cfg.spike_rebin)
    counts = counts[: len(counts) // r * r].reshape(-1, r).sum(axis=1)
    nz = np.flatnonzero(counts)
    active = counts[nz[0]: nz[-1] + 1]
    if len(active) < 5:
        return Check("beam.time_profile", "beam", S.NO_DATA, None, f"only {len(active)} active time bins")
    med = float(np.median(active))
    top = int(np.argmax(active))
    peak = float(active[top])
    ratio = peak / med if med > 0 else float("inf")
    edges = hists["time"].axes[1].edges
    t_ms = (edges[0] + (nz[0] + top) * r * (edges[1] - edges[0])) * 1e-3
    spike = ratio > cfg.spike_factor and peak - med > 5.0 * math.sqrt(max(med, 1.0))
    return Check("beam.time_profile", "beam", S.WARNING if spike else S.GOOD, ratio,
                 f"max {peak:.0f} events per {r * (edges[1] - edges[0]) * 1e-3:.0f} ms at {t_ms:.0f} ms "
                 f"= {ratio:.2f} x median ({best} trigger)")


__all__ = [
    "QualityState", "QualityConfig", "Check", "SpillQuality", "assess", "compare_spectra", "merge_sparse_bins",
    "SUBSYSTEMS",
]
