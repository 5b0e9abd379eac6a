"""Small synthetic stand-ins for DecodedEvents / EventPhysics, for the monitor unit tests.

Arrays follow the decoder's interface (docs in decoders/decode.py and
decoders/reconstruct.py); numbers are made up but physical enough: pedestals
100–400 ADC with ~1 count event-to-event noise, per-channel hit probabilities,
100 GeV electrons with a few % hadrons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHYSICS, CALIBRATION, EOB = 7, 8, 6


@dataclass(eq=False)
class FakeDecoded:
    type: np.ndarray
    run: np.ndarray
    spill: np.ndarray
    event: np.ndarray
    trigger_mask: np.ndarray
    time: np.ndarray
    trigger_time_us: np.ndarray
    nsamples: np.ndarray
    pedestal_even: np.ndarray
    pedestal_odd: np.ndarray
    amplitude: np.ndarray
    energy: np.ndarray
    saturated: np.ndarray
    scalers: np.ndarray

    @property
    def n(self) -> int:
        return len(self.type)

    @property
    def nslots(self) -> int:
        return self.nsamples.shape[1]

    @property
    def present(self) -> np.ndarray:
        return self.nsamples > 0

    @property
    def accepted(self) -> np.ndarray:
        return np.ones(self.n, dtype=bool)

    @property
    def is_data(self) -> np.ndarray:
        return (self.type == PHYSICS) | (self.type == CALIBRATION)

    def take(self, rows) -> "FakeDecoded":
        return FakeDecoded(**{k: v[rows] for k, v in vars(self).items()})


@dataclass(eq=False)
class FakePhysics:
    e_ps: np.ndarray
    e_ecal: np.ndarray
    e_hcal: np.ndarray
    srd: np.ndarray
    veto: np.ndarray
    is_data: np.ndarray
    physics_trigger: np.ndarray
    beam_trigger: np.ndarray
    electron: np.ndarray
    hadron_like: np.ndarray
    candidate: np.ndarray
    e_wcal: np.ndarray  # visible mode's WCAL sum: none here

    def take(self, rows) -> "FakePhysics":
        return FakePhysics(**{k: v[rows] for k, v in vars(self).items()})


def channel_constants(nslots: int, seed: int = 99):
    """Per-slot pedestal (even, odd), noise and hit probability; fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    ped_even = rng.uniform(100, 400, nslots)
    ped_odd = ped_even + rng.normal(0, 6, nslots)
    noise = rng.uniform(0.8, 1.5, nslots)
    occupancy = rng.uniform(0.05, 0.6, nslots)
    return ped_even, ped_odd, noise, occupancy


def make_spill(nslots: int = 120, n: int = 2000, *, run: int = 1, spill: int = 1, seed: int = 0,
               dead=(), hot=(), noisy=(), pedestal_shift=None, energy_scale: float = 1.0,
               hadron_fraction: float = 0.02, calibration: int = 5, constants_seed: int = 99,
               spike: tuple[float, int] | None = None):
    """One spill of ``n`` data events (+ one END_OF_BURST row at the end).

    ``dead``: slots with a flat pedestal and no hits; ``hot``: slots hit in 90 %
    of events; ``noisy``: slots with 8× noise; ``pedestal_shift``: {slot: counts};
    ``spike``: (time µs, extra events) piled into one instant of the spill.
    """
    rng = np.random.default_rng([seed, spill])
    ped_e0, ped_o0, noise, occ = channel_constants(nslots, constants_seed)
    noise = noise.copy()
    occ = occ.copy()
    shift = np.zeros(nslots)
    for slot, v in (pedestal_shift or {}).items():
        shift[slot] = v
    noise[list(noisy)] *= 8.0
    occ[list(hot)] = 0.9
    total = n + 1
    types = np.full(total, PHYSICS, dtype=np.int16)
    types[rng.choice(n, size=calibration, replace=False)] = CALIBRATION
    types[-1] = EOB
    mask = np.where(rng.random(total) < 0.3, 3, 1).astype(np.uint32)  # 30 % also beam-trigger
    mask[rng.random(total) < 0.02] = 4  # random trigger
    mask[types == CALIBRATION] = 8
    mask[-1] = 0
    t_us = np.sort(rng.uniform(0, 4.8e6, total)).astype(np.int64)
    if spike is not None:
        at, extra = spike
        t_us[:extra] = int(at)
        t_us = np.sort(t_us)
    t_us[-1] = -1
    # per-event pedestal: mean of 3 samples of noise σ → σ/√3
    pe = ped_e0 + shift + rng.normal(0, 1, (total, nslots)) * noise / np.sqrt(3)
    po = ped_o0 + shift + rng.normal(0, 1, (total, nslots)) * noise / np.sqrt(3)
    hit = rng.random((total, nslots)) < occ
    amp = np.where(hit, 21.0 + rng.exponential(200.0, (total, nslots)), np.abs(rng.normal(0, 3, (total, nslots))))
    sat = hit & (amp > 1500)
    amp = np.minimum(amp, 4095 - pe)
    for slot in dead:
        pe[:, slot] = ped_e0[slot]
        po[:, slot] = ped_e0[slot]
        amp[:, slot] = 0.0
        sat[:, slot] = False
    nsamples = np.full((total, nslots), 32, dtype=np.uint16)
    nsamples[-1] = 0
    energy = np.where(amp > 20, amp * 0.01, 0.0)
    scalers = np.full((total, 5), -1, dtype=np.int64)
    scalers[-1] = (40 * n, 43 * n, n + 100, n, 4_800_000)
    decoded = FakeDecoded(
        type=types, run=np.full(total, run), spill=np.full(total, spill), event=np.r_[np.arange(1, total), 0],
        trigger_mask=mask, time=np.full(total, 1_700_000_000), trigger_time_us=t_us, nsamples=nsamples,
        pedestal_even=pe, pedestal_odd=po, amplitude=amp, energy=energy, saturated=sat, scalers=scalers,
    )
    # event physics
    is_data = decoded.is_data
    beam = is_data & ((mask & 2) > 0)
    phys = is_data & ((mask & 1) > 0)
    hadron = rng.random(total) < hadron_fraction
    e_beam = 100.0 * energy_scale * (1 + rng.normal(0, 0.02, total))
    e_hcal = np.where(hadron, 85.0 * rng.uniform(0.7, 1.0, total), rng.exponential(0.05, total))
    e_ecal = np.where(hadron, rng.uniform(0.3, 10.0, total), e_beam)
    e_ps = np.where(hadron, 0.2, rng.gamma(2.2, 0.9, total) + 0.5)
    srd = np.where(hadron[:, None], 0.0, rng.lognormal(np.log(0.02), 0.35, (total, 3)))
    veto = np.where(hadron[:, None], 0.025, 0.0) * np.ones((total, 3))
    for arr in (e_hcal, e_ecal, e_ps):
        arr[~is_data] = 0.0
    srd[~is_data] = 0.0
    veto[~is_data] = 0.0
    electron = np.all(srd >= 0.001, axis=1) & (srd.sum(axis=1) >= 0.005) & (srd.sum(axis=1) <= 0.15)
    candidate = np.zeros(total, dtype=bool)
    candidate[np.flatnonzero(phys & electron)[:3]] = True  # three signal-like events
    e_ecal[candidate], e_hcal[candidate] = 30.0, 0.1
    physics = FakePhysics(
        e_ps=e_ps, e_ecal=e_ecal, e_hcal=e_hcal, srd=srd, veto=veto, is_data=is_data, physics_trigger=phys,
        beam_trigger=beam, electron=electron, hadron_like=beam & (e_hcal > 10), candidate=candidate,
        e_wcal=np.zeros(total),
    )
    return decoded, physics


def record_for(decoded, physics, **overrides) -> dict:
    """A QA record dict (spec §12 + extras) consistent with a synthetic spill."""
    data = physics.is_data
    beam_events = int(np.count_nonzero(physics.beam_trigger))
    hadrons = int(np.count_nonzero(physics.hadron_like))
    untagged = int(np.count_nonzero(physics.beam_trigger & ~physics.electron))
    sc = decoded.scalers[-1]
    hf = hadrons / beam_events if beam_events else None
    rec = {
        "run": int(decoded.run[0]), "spill": int(decoded.spill[0]), "events": int(np.count_nonzero(data)),
        "lost_events": 0, "decode_errors": 0, "modules_missing": 0, "complete": True,
        "beam": int(sc[0]), "triggers_accepted": int(sc[3]),
        "hadron_fraction": hf, "hadron_fraction_srd": untagged / beam_events if beam_events else None,
        "eot": sc[0] * (1 - hf) if hf is not None else None,
        "candidates": decoded.event[physics.candidate].tolist(), "alarms": [],
        "triggers_raw": int(sc[2]), "s0": int(sc[1]), "spill_duration_us": int(sc[4]),
        "dead_time_fraction": 1 - sc[3] / sc[2], "physics_events": int(np.count_nonzero(decoded.type == PHYSICS)),
        "calibration_events": int(np.count_nonzero(decoded.type == CALIBRATION)), "beam_events": beam_events,
        "hadron_events": hadrons, "rejected_events": 0, "errors_by_src": {}, "notices_by_src": {},
        "candidate_details": [], "processing_seconds": 0.1,
    }
    rec.update(overrides)
    return rec
