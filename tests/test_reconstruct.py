"""The §11 reconstruction (decoders/reconstruct.py): its numba group sums equal numpy's, bit for bit.

The kernel (decoders/_reconstruct.py) reads each event's energies once and sums
every channel group in numpy's pairwise order, so the records stay what the
numpy reconstruction gave (tests/test_model.py holds the golden records).
Here the sums are compared with numpy's own on random energies of every group
size (past numpy's 128-value block) and on a decoded simulated spill.
"""

from __future__ import annotations

import numpy as np
import pytest

from na64_online.decoders import _reconstruct
from na64_online.decoders.decode import as_words, decode_events, index_events
from na64_online.decoders.reconstruct import DetectorGeometry, reconstruct
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig


def test_group_sums_are_numpy_sums_bit_for_bit():
    rng = np.random.default_rng(7)
    nslots = 400
    energy = rng.standard_normal((20, nslots)) * 10.0 ** rng.uniform(-4, 3, (20, nslots))
    energy[rng.random(energy.shape) < 0.4] = 0.0
    sizes = [0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 127, 128, 129, 136, 255, 256, 300, 399]
    # scattered slots (numpy indexes with the array) and adjacent ones (numpy takes a slice)
    groups = [rng.permutation(nslots)[:k] for k in sizes] + [slice(a, a + k) for a, k in zip(range(0, 400, 37), sizes)]
    arrays = [np.arange(g.start, min(g.stop, nslots)) if isinstance(g, slice) else g for g in groups]
    columns = np.concatenate(arrays).astype(np.int64)
    starts = np.cumsum([0] + [len(g) for g in arrays]).astype(np.int64)
    scattered = np.array([not isinstance(g, slice) for g in groups])
    main = groups[4].astype(np.int64)
    for rows in (20, 1):  # one row: numpy's copy of scattered slots is a contiguous row, summed pairwise
        part = energy[:rows]
        sums = np.empty((rows, len(groups)))
        hottest = np.zeros(rows, dtype=np.int64)
        top = np.zeros(rows)
        _reconstruct.group_sums(part, columns, starts, scattered, main, sums, hottest, top)
        for g, cols in enumerate(groups):
            want = part[:, cols].sum(axis=1)
            assert np.array_equal(sums[:, g], want), (rows, g, sums[:, g] - want)
        assert np.array_equal(hottest, np.argmax(part[:, main], axis=1))
        assert np.array_equal(top, part[np.arange(rows), main[hottest]])


@pytest.mark.parametrize("zero_suppression", [True, False])
def test_reconstruction_equals_numpy_on_a_simulated_spill(channel_map, zero_suppression):
    sim = ReadoutSimulator(SimulationConfig(events_per_spill=300, seed=5, run_events=False,
                                            zero_suppression=zero_suppression, hadron_fraction=0.3))
    words, _ = as_words(next(iter(sim.spills())).raw())
    decoded = decode_events(words, index_events(words), channel_map)
    geometry = DetectorGeometry.from_map(channel_map)
    physics = reconstruct(decoded, geometry)
    energy = decoded.energy
    assert np.array_equal(physics.e_ps, energy[:, geometry.preshower].sum(axis=1))
    assert np.array_equal(physics.e_ecal, energy[:, geometry.ecal].sum(axis=1))
    assert np.array_equal(physics.e_hcal, energy[:, geometry.hcal].sum(axis=1))
    assert np.array_equal(physics.e_wcal, energy[:, geometry.wcal].sum(axis=1))
    for m, columns in enumerate(geometry.srd_modules):
        assert np.array_equal(physics.srd[:, m], energy[:, columns].sum(axis=1))
    for m, columns in enumerate(geometry.veto_modules):
        assert np.array_equal(physics.veto[:, m], energy[:, columns].mean(axis=1))
    for code, _, columns in geometry.detectors:
        assert np.array_equal(physics.detector_energy[:, code], energy[:, columns].sum(axis=1))
    main = energy[:, geometry.main_ecal]
    col = np.argmax(main, axis=1)
    has = main[np.arange(decoded.n), col] > 0
    assert np.array_equal(physics.main_ecal_max_cell[has], geometry.main_ecal_xy[col[has]])
    assert (physics.main_ecal_max_cell[~has] == -1).all()
    assert physics.e_ecal.max() > 0 and physics.srd.max() > 0 and physics.hadron_like.any()


def test_geometry_outside_the_chunk_is_refused(channel_map):
    words, _ = as_words(next(iter(ReadoutSimulator(SimulationConfig(events_per_spill=5, seed=1, run_events=False))
                                  .spills())).raw())
    decoded = decode_events(words, index_events(words), channel_map)
    geometry = DetectorGeometry.from_map(channel_map)
    narrow = decoded.energy[:, :10]
    with pytest.raises(ValueError, match="outside"):
        from na64_online.decoders.reconstruct import _group_sums

        _group_sums(narrow, geometry)


def numpy_selection(decoded, geometry, cuts):
    """The §11 selection in plain numpy over the decoded energies (the reconstruction before its selection
    kernel, expression for expression): the reference twin of ``_reconstruct.select_events``."""
    energy = decoded.energy
    n = decoded.n
    e_ps, e_ecal, e_hcal = (energy[:, g].sum(axis=1) for g in (geometry.preshower, geometry.ecal, geometry.hcal))
    e_wcal = energy[:, geometry.wcal].sum(axis=1)
    srd = np.stack([energy[:, g].sum(axis=1) for g in geometry.srd_modules], axis=1).reshape(n, -1)
    veto = np.stack([energy[:, g].mean(axis=1) if np.size(np.arange(energy.shape[1])[g]) else np.zeros(n)
                     for g in geometry.veto_modules], axis=1).reshape(n, -1)
    detector_energy = np.zeros((n, geometry.n_detectors))
    for code, _, columns in geometry.detectors:
        detector_energy[:, code] = energy[:, columns].sum(axis=1)
    is_data = decoded.is_data
    mask = decoded.index.trigger_mask.astype(np.int64)
    physics = is_data & ((mask >> cuts.physics_trigger_bit) & 1).astype(bool)
    beam = is_data & ((mask >> cuts.beam_trigger_bit) & 1).astype(bool)
    srd_sum = srd.sum(axis=1)
    electron = (np.all(srd >= cuts.srd_module_min_gev, axis=1) & (srd_sum >= cuts.srd_sum_min_gev)
                & (srd_sum <= cuts.srd_sum_max_gev) & (srd.shape[1] > 0))
    main = energy[:, geometry.main_ecal]
    col = np.argmax(main, axis=1)
    top = main[np.arange(n), col]
    has = top > 0
    hottest = np.full((n, 2), -1, dtype=np.int64)
    hottest[has] = geometry.main_ecal_xy[col[has]]
    beam_col = np.flatnonzero((geometry.main_ecal_xy[:, 0] == cuts.beam_cell[0])
                              & (geometry.main_ecal_xy[:, 1] == cuts.beam_cell[1]))
    beam_cell = has & (main[:, beam_col[0]] >= top) if len(beam_col) else np.zeros(n, dtype=bool)
    candidate = (physics & electron & (e_ps > cuts.candidate_ps_min_gev) & (e_ecal < cuts.candidate_ecal_max_gev)
                 & (e_hcal < cuts.candidate_hcal_max_gev) & np.all(veto < cuts.candidate_veto_max_gev, axis=1)
                 & beam_cell)
    return dict(e_ps=e_ps, e_ecal=e_ecal, e_hcal=e_hcal, e_wcal=e_wcal, srd=srd, veto=veto, is_data=is_data,
                physics_trigger=physics, beam_trigger=beam, electron=electron, hadron_like=beam & (e_hcal > cuts.hadron_hcal_min_gev),
                candidate=candidate, main_ecal_max_cell=hottest, detector_energy=detector_energy)


@pytest.mark.parametrize("zero_suppression", [True, False])
def test_selection_kernel_equals_numpy(channel_map, zero_suppression):
    """Every per-event quantity of the one-pass selection kernel equals the numpy expressions, with the default
    cuts and with loose ones under which candidates, electrons and hadrons are all common."""
    from na64_online.decoders.reconstruct import PhysicsCuts

    sim = ReadoutSimulator(SimulationConfig(events_per_spill=400, seed=11, run_events=False,
                                            zero_suppression=zero_suppression, hadron_fraction=0.3))
    words, _ = as_words(next(iter(sim.spills())).raw())
    decoded = decode_events(words, index_events(words), channel_map)
    geometry = DetectorGeometry.from_map(channel_map)
    loose = PhysicsCuts(srd_module_min_gev=0.0, srd_sum_min_gev=0.0, srd_sum_max_gev=10.0, candidate_ps_min_gev=0.0,
                        candidate_ecal_max_gev=200.0, candidate_hcal_max_gev=200.0, candidate_veto_max_gev=1.0,
                        hadron_hcal_min_gev=1.0, physics_trigger_bit=1, beam_trigger_bit=0)
    seen = set()
    for cuts in (PhysicsCuts(), loose):
        physics = reconstruct(decoded, geometry, cuts)
        want = numpy_selection(decoded, geometry, cuts)
        for name, value in want.items():
            got = getattr(physics, name)
            assert got.dtype == value.dtype and np.array_equal(got, value), name
        seen |= {(name, flag) for name in ("candidate", "electron", "hadron_like")
                 for flag in np.unique(getattr(physics, name)).tolist()}
    assert seen == {(name, flag) for name in ("candidate", "electron", "hadron_like") for flag in (False, True)}


@pytest.mark.parametrize("zero_suppression", [True, False], ids=["zs", "full"])
def test_detector_totals_equal_numpy(channel_map, zero_suppression):
    """The per-detector totals ``tally_chunk`` adds over a chunk's data events equal numpy's expression on the
    simulated spill, and (the kernel itself, over rows picked as data events) on energies that sit exactly
    half a keV apart (rint's ties go to even) or are not positive; a wrong shape is refused."""
    from na64_online.decoders.reconstruct import _TALLY_KINDS, KEV_PER_GEV, EventPhysics, tally_chunk

    def numpy_totals(energy, select):
        per = energy[select]
        return np.rint(per * 1e6).astype(np.int64).sum(axis=0), np.count_nonzero(per > 0, axis=0)

    def tally_kernel(energy, select, kev, hits):  # tally_events over rows of nothing but energies
        n = energy.shape[0]
        no = np.zeros(n, dtype=np.bool_)
        _reconstruct.tally_events(np.zeros(n, np.int16), np.zeros(n, np.int32), np.zeros(n, np.int64), select,
                                  no, no, no, energy, _TALLY_KINDS, KEV_PER_GEV, np.zeros(11, np.int64), kev, hits)

    sim = ReadoutSimulator(SimulationConfig(events_per_spill=300, seed=5, run_events=False,
                                            zero_suppression=zero_suppression))
    words, _ = as_words(next(iter(sim.spills())).raw())
    decoded = decode_events(words, index_events(words), channel_map)
    physics = reconstruct(decoded, DetectorGeometry.from_map(channel_map))
    ties = np.array([[0.5e-6, 1.5e-6, 2.5e-6, -0.5e-6], [0.0, -1.0, 3.25, 2.5e-6], [7.0, 0.0, 0.0, 1e-9]])
    select_ties = np.array([True, True, False])
    for energy, select in ((physics.detector_energy, physics.is_data), (ties, select_ties)):
        kev, hits = np.full(energy.shape[1], 3, dtype=np.int64), np.zeros(energy.shape[1], dtype=np.int64)
        if energy is ties:
            tally_kernel(energy, select, kev, hits)
        else:
            tally_chunk(decoded, physics, kev, hits)
        want_kev, want_hits = numpy_totals(energy, select)
        assert np.array_equal(kev, want_kev + 3) and np.array_equal(hits, want_hits)
        assert hits.any()
    with pytest.raises(ValueError):
        tally_chunk(decoded, EventPhysics(**{**vars(physics), "is_data": physics.is_data[:-1]}), kev, hits)
    with pytest.raises(ValueError):
        tally_chunk(decoded, physics, kev[:1], hits)


def test_hottest_cell_is_numpys_argmax_with_ties_signed_zeros_and_nans():
    """The two-pass hottest-cell search gives numpy's argmax (the first largest, or the first NaN) and its
    energy, on rows built to trip it: ties, +0.0 against -0.0, NaN first, last or twice, every length."""
    rng = np.random.default_rng(3)
    for cells in (1, 2, 3, 4, 5, 7, 8, 9, 36, 37):
        rows = [rng.choice([0.0, -0.0, 1.0, 2.0, -1.0, np.nan], size=cells) for _ in range(400)]
        rows += [np.full(cells, -0.0), np.zeros(cells), np.full(cells, np.nan), rng.standard_normal(cells)]
        energy = np.array(rows)
        energy = np.concatenate([rng.standard_normal((len(energy), 3)), energy, rng.standard_normal((len(energy), 2))],
                                axis=1)
        # scattered columns (column lookups), and side by side (the default map's: searched in the row itself)
        for main in (rng.permutation(cells).astype(np.int64) + 3, np.arange(3, 3 + cells, dtype=np.int64)):
            sums = np.empty((len(energy), 0))
            hottest, top = np.zeros(len(energy), dtype=np.int64), np.zeros(len(energy))
            _reconstruct.group_sums(energy, np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64),
                                    np.zeros(0, dtype=bool), main, sums, hottest, top)
            want = np.argmax(energy[:, main], axis=1)
            assert np.array_equal(hottest, want), cells
            got_top, want_top = top, energy[np.arange(len(energy)), main[want]]
            assert np.array_equal(got_top, want_top, equal_nan=True)
            assert np.array_equal(np.signbit(got_top), np.signbit(want_top))


@pytest.mark.parametrize("zero_suppression", [True, False], ids=["zs", "full"])
def test_chunk_tally_equals_numpy(channel_map, zero_suppression):
    """One pass of ``tally_chunk`` gives the counts, burst markers, time range and detector totals that the
    numpy expressions give, on a spill with rejected rows (errors and notices) and loose cuts."""
    from na64_online.decoders import layout
    from na64_online.decoders.reconstruct import PhysicsCuts, tally_chunk
    from na64_online.errors import FIRST_NOTICE

    sim = ReadoutSimulator(SimulationConfig(events_per_spill=400, seed=13, run_events=False,
                                            zero_suppression=zero_suppression, hadron_fraction=0.3))
    words, _ = as_words(next(iter(sim.spills())).raw())
    index = index_events(words)
    status = index.status.copy()
    status[5:40:7] = 3  # a decode error
    status[6:60:9] = FIRST_NOTICE + 1  # a notice
    index = index.with_status(status)
    decoded = decode_events(words, index, channel_map)
    geometry = DetectorGeometry.from_map(channel_map)
    loose = PhysicsCuts(srd_module_min_gev=0.0, srd_sum_min_gev=0.0, srd_sum_max_gev=10.0, hadron_hcal_min_gev=1.0)
    nonzero = set()
    for cuts in (PhysicsCuts(), loose):
        physics = reconstruct(decoded, geometry, cuts)
        n_det = physics.detector_energy.shape[1]
        kev, hits = np.full(n_det, 5, dtype=np.int64), np.zeros(n_det, dtype=np.int64)
        tally = tally_chunk(decoded, physics, kev, hits)
        per = physics.detector_energy[physics.is_data]
        want_kev = 5 + np.rint(per * 1e6).astype(np.int64).sum(axis=0)
        want_hits = np.count_nonzero(per > 0, axis=0)
        assert np.array_equal(kev, want_kev) and np.array_equal(hits, want_hits)
        ok, data, t = index.status == 0, physics.is_data, index.type
        eob = np.flatnonzero(ok & (t == layout.END_OF_BURST))
        want = dict(
            events=np.count_nonzero(data), physics_events=np.count_nonzero(data & (t == layout.PHYSICS_EVENT)),
            calibration_events=np.count_nonzero(data & (t == layout.CALIBRATION_EVENT)),
            beam_events=np.count_nonzero(physics.beam_trigger), hadron_events=np.count_nonzero(physics.hadron_like),
            no_electron_beam_events=np.count_nonzero(physics.beam_trigger & ~physics.electron),
            rejected_events=np.count_nonzero(~ok & (index.status < FIRST_NOTICE)),
            start_of_burst=bool(np.any(ok & (t == layout.START_OF_BURST))),
            last_end_of_burst=int(eob[-1]) if len(eob) else -1,
            first_time=int(index.time[data].min()), last_time=int(index.time[data].max()))
        assert vars(tally) == want
        nonzero |= {name for name, value in want.items() if value}
    assert {"rejected_events", "hadron_events", "no_electron_beam_events", "calibration_events"} <= nonzero
    empty = decode_events(words, index.slice(0, 0), channel_map)
    tally = tally_chunk(empty, reconstruct(empty, geometry), kev, hits)
    assert (tally.events, tally.first_time, tally.last_end_of_burst) == (0, None, -1)
    with pytest.raises(ValueError):
        tally_chunk(decoded, physics, kev[:1], hits)
