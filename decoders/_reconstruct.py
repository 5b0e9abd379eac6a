"""Private numba kernels of the §11 reconstruction (wrapper: :func:`.reconstruct.reconstruct`).

One pass over a chunk's (event, slot) energies computes every channel-group sum
the selection needs — preshower, ECAL, HCAL, WCAL, each SRD and VETO module,
every other detector — and the hottest main-ECAL cell, so the energy plane is
read once, row by row, instead of once per group by numpy.

The sums are numpy's, bit for bit. ``energy[:, a:b].sum(axis=1)`` (a group of
adjacent slots: a slice) adds each row by pairwise summation
(numpy/_core/src/umath/loops_utils.h.src: fewer than 8 values in order from
0.0; up to 128 in 8 interleaved partial sums combined as
((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the rest in order; more: the two
halves, split at a multiple of 8, summed the same way and added).
``energy[:, slots].sum(axis=1)`` (scattered slots) sums a copy that numpy lays
out column-major, so the rows are added column by column, in order — unless
the chunk has one row (then the copy is a contiguous row: pairwise again).
:func:`group_sums` repeats whichever order numpy takes, so the records stay
identical to the numpy reconstruction (tests/test_reconstruct.py compares
them with numpy itself, for both kinds of group).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_LANES = 8  # numpy's pairwise summation: partial sums
_BLOCK = 128  # numpy's pairwise summation: largest run summed without splitting


@njit(cache=True, nogil=True)
def _pairwise_split(energy, i, columns, lo, n):
    """numpy's pairwise sum of ``energy[i, columns[lo:lo + n]]`` for any n (recursive above 128)."""
    if n <= _BLOCK:
        return _pairwise(energy, i, columns, lo, n)
    half = n // 2
    half -= half % _LANES
    return _pairwise_split(energy, i, columns, lo, half) + _pairwise_split(energy, i, columns, lo + half, n - half)


@njit(cache=True, nogil=True, inline="always")
def _pairwise(energy, i, columns, lo, n):
    """numpy's pairwise sum of ``energy[i, columns[lo:lo + n]]``, n <= 128."""
    if n < _LANES:
        total = 0.0
        for t in range(lo, lo + n):
            total += energy[i, columns[t]]
        return total
    r0 = energy[i, columns[lo]]
    r1 = energy[i, columns[lo + 1]]
    r2 = energy[i, columns[lo + 2]]
    r3 = energy[i, columns[lo + 3]]
    r4 = energy[i, columns[lo + 4]]
    r5 = energy[i, columns[lo + 5]]
    r6 = energy[i, columns[lo + 6]]
    r7 = energy[i, columns[lo + 7]]
    whole = n - n % _LANES
    t = _LANES
    while t < whole:
        b = lo + t
        r0 += energy[i, columns[b]]
        r1 += energy[i, columns[b + 1]]
        r2 += energy[i, columns[b + 2]]
        r3 += energy[i, columns[b + 3]]
        r4 += energy[i, columns[b + 4]]
        r5 += energy[i, columns[b + 5]]
        r6 += energy[i, columns[b + 6]]
        r7 += energy[i, columns[b + 7]]
        t += _LANES
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for t in range(lo + whole, lo + n):
        total += energy[i, columns[t]]
    return total


@njit(cache=True, nogil=True, inline="always")
def _pairwise_adjacent(row, a, n):
    """numpy's pairwise sum of ``row[a:a + n]``, n <= 128: the same order as :func:`_pairwise`, on adjacent
    values (unsigned indices: no negative-index check, so the 8 partial sums become two vector lanes)."""
    base = np.uint64(a)
    if n < _LANES:
        total = 0.0
        for t in range(np.uint64(n)):
            total += row[base + t]
        return total
    r0 = row[base]
    r1 = row[base + np.uint64(1)]
    r2 = row[base + np.uint64(2)]
    r3 = row[base + np.uint64(3)]
    r4 = row[base + np.uint64(4)]
    r5 = row[base + np.uint64(5)]
    r6 = row[base + np.uint64(6)]
    r7 = row[base + np.uint64(7)]
    whole = np.uint64(n - n % _LANES)
    for t in range(np.uint64(_LANES), whole, np.uint64(_LANES)):
        b = base + t
        r0 += row[b]
        r1 += row[b + np.uint64(1)]
        r2 += row[b + np.uint64(2)]
        r3 += row[b + np.uint64(3)]
        r4 += row[b + np.uint64(4)]
        r5 += row[b + np.uint64(5)]
        r6 += row[b + np.uint64(6)]
        r7 += row[b + np.uint64(7)]
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for t in range(whole, np.uint64(n)):
        total += row[base + t]
    return total


@njit(cache=True, nogil=True)
def group_sums(energy, columns, starts, scattered, main_columns, sums, hottest, top):
    """Per event i: ``sums[i, g]`` = numpy's sum of ``energy[i, columns[starts[g]:starts[g + 1]]]``
    (``scattered[g]``: numpy indexed the group with a slot array, not a slice); ``hottest[i]`` the
    position in ``main_columns`` of the first largest main-ECAL energy (numpy's argmax) and ``top[i]``
    that energy. Every index was checked by the wrapper."""
    groups = starts.shape[0] - 1
    cells = main_columns.shape[0]
    rows = energy.shape[0]
    adjacent = cells > 0  # main-ECAL columns side by side (the default map's): searched in the row itself
    for c in range(cells):
        adjacent &= main_columns[c] == main_columns[0] + c
    for i in range(rows):
        for g in range(groups):
            lo = starts[g]
            n = starts[g + 1] - lo
            if scattered[g] and rows > 1:
                total = 0.0
                if n > 0:
                    total = energy[i, columns[lo]]
                for t in range(lo + 1, lo + n):
                    total += energy[i, columns[t]]
                sums[i, g] = total
            elif n <= _BLOCK and not scattered[g]:
                sums[i, g] = _pairwise_adjacent(energy[i], columns[lo] if n else 0, n)
            elif n <= _BLOCK:
                sums[i, g] = _pairwise(energy, i, columns, lo, n)
            else:
                sums[i, g] = _pairwise_split(energy, i, columns, lo, n)
        if cells:
            if adjacent:
                best = _first_largest_adjacent(energy[i], main_columns[0], cells)
            else:
                best = _first_largest(energy, i, main_columns, cells)
            hottest[i] = best
            top[i] = energy[i, main_columns[best]]


@njit(cache=True, nogil=True, inline="always")
def _first_largest(energy, i, main_columns, cells):
    """numpy's argmax of ``energy[i, main_columns]`` (cells >= 1): the first largest value, or the first NaN.

    Two passes instead of one compare-and-branch per cell (whose branch follows the data): the largest
    value in four independent running maxima, with a NaN flag, then the first cell equal to it (or the
    first NaN). Ties and signed zeros: ``==`` finds the first cell that compares equal to the largest,
    which is the cell numpy's strict ``>`` scan keeps."""
    m0 = energy[i, main_columns[0]]
    m1 = m0
    m2 = m0
    m3 = m0
    nan = m0 != m0
    c = 1
    while c + 3 < cells:
        e0 = energy[i, main_columns[c]]
        e1 = energy[i, main_columns[c + 1]]
        e2 = energy[i, main_columns[c + 2]]
        e3 = energy[i, main_columns[c + 3]]
        nan |= (e0 != e0) | (e1 != e1) | (e2 != e2) | (e3 != e3)
        m0 = e0 if e0 > m0 else m0
        m1 = e1 if e1 > m1 else m1
        m2 = e2 if e2 > m2 else m2
        m3 = e3 if e3 > m3 else m3
        c += 4
    while c < cells:
        e0 = energy[i, main_columns[c]]
        nan |= e0 != e0
        m0 = e0 if e0 > m0 else m0
        c += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m0 = m2 if m2 > m0 else m0
    for c in range(cells):
        e = energy[i, main_columns[c]]
        if (e != e) if nan else (e == m0):
            return c
    return 0


@njit(cache=True, nogil=True)
def select_events(sums, hottest, top, energy, beam_column, is_data, trigger_mask, widths, n_srd, srd_sum_in,
                  detector_codes, detector_groups, main_xy, cuts, e_ps, e_ecal, e_hcal, e_wcal, srd, veto,
                  detector_energy, physics, beam, electron, hadron_like, candidate, hottest_xy):
    """The §11 selection per event from :func:`group_sums`' results, in one pass (the numpy
    expressions of :func:`.reconstruct.reconstruct` before, element by element: same values).

    ``sums`` columns: preshower, ECAL, HCAL, WCAL, SRD modules, VETO modules (``widths``: their
    channel counts), other detectors; ``detector_groups[d]`` is the sums column of detector
    ``detector_codes[d]``. ``beam_column``: the energy column of the beam cell, −1 without one.
    ``srd_sum_in``: the SRD sums per event when numpy's order is not the sequential one (8 or more
    modules), else empty. ``cuts``: (srd module min, srd sum min, srd sum max, hadron HCAL min,
    candidate PS min, ECAL max, HCAL max, VETO max, physics bit, beam bit).
    """
    srd_module_min, srd_sum_min, srd_sum_max, hadron_hcal_min = cuts[0], cuts[1], cuts[2], cuts[3]
    ps_min, ecal_max, hcal_max, veto_max = cuts[4], cuts[5], cuts[6], cuts[7]
    physics_bit, beam_bit = np.int64(cuts[8]), np.int64(cuts[9])
    n_veto = widths.shape[0] - n_srd
    cells = main_xy.shape[0]
    for i in range(sums.shape[0]):
        ps, ecal, hcal = sums[i, 0], sums[i, 1], sums[i, 2]
        e_ps[i] = ps
        e_ecal[i] = ecal
        e_hcal[i] = hcal
        e_wcal[i] = sums[i, 3]
        tag = n_srd > 0
        total = 0.0
        for m in range(n_srd):
            x = sums[i, 4 + m]
            srd[i, m] = x
            tag &= x >= srd_module_min
            total += x
        if srd_sum_in.shape[0]:
            total = srd_sum_in[i]
        quiet = True
        for m in range(n_veto):
            w = widths[n_srd + m]
            v = sums[i, 4 + n_srd + m] / max(w, 1) if w > 0 else 0.0
            veto[i, m] = v
            quiet &= v < veto_max
        for d in range(detector_codes.shape[0]):
            detector_energy[i, detector_codes[d]] = sums[i, detector_groups[d]]
        mask = np.int64(trigger_mask[i])
        data = is_data[i]
        phys = data and ((mask >> physics_bit) & 1) == 1
        bm = data and ((mask >> beam_bit) & 1) == 1
        tag = tag and total >= srd_sum_min and total <= srd_sum_max
        physics[i] = phys
        beam[i] = bm
        electron[i] = tag
        hadron_like[i] = bm and hcal > hadron_hcal_min
        beam_cell = False
        hottest_xy[i, 0] = -1
        hottest_xy[i, 1] = -1
        if cells:
            best = top[i]
            if best > 0:
                hottest_xy[i, 0] = main_xy[hottest[i], 0]
                hottest_xy[i, 1] = main_xy[hottest[i], 1]
                if beam_column >= 0:
                    beam_cell = energy[i, beam_column] >= best  # a tie still counts: the beam cell holds the most
        candidate[i] = (phys and tag and ps > ps_min and ecal < ecal_max and hcal < hcal_max and quiet
                        and beam_cell)


@njit(cache=True, nogil=True)
def tally_events(status, event_type, time, is_data, beam, electron, hadron_like, detector_energy, kinds, kev_per_gev,
                 counts, kev, hits):
    """One pass over a reconstructed chunk: ``counts`` (11 values, overwritten; the fields of
    :class:`.reconstruct.ChunkTally`) = data events,
    data PHYSICS and CALIBRATION events, beam-trigger events, hadron-like ones, beam-trigger events without
    the electron tag, rejected rows (status in 1 … first notice − 1), 1 if an accepted START_OF_BURST row,
    the last accepted END_OF_BURST row (−1: none), the first and last ``time`` of a data event (0 without
    data events); and over the data events ``kev[d]`` += ``detector_energy[i, d]`` in keV rounded to an
    integer (numpy's ``rint``: half to even), ``hits[d]`` += 1 where above 0. ``kinds``:
    (PHYSICS type, CALIBRATION type, START_OF_BURST type, END_OF_BURST type, first notice status). Integer
    counts and sums: equal to numpy's reductions whatever the order. Sizes checked by the wrapper."""
    physics_type, calibration_type, sob_type, eob_type, first_notice = kinds[0], kinds[1], kinds[2], kinds[3], kinds[4]
    events = physics_events = calibration_events = beam_events = hadron_events = no_electron = rejected = 0
    sob = 0
    eob = -1
    first = last = 0
    for i in range(status.shape[0]):
        s = np.int64(status[i])
        t = np.int64(event_type[i])
        if s == 0:
            if t == sob_type:
                sob = 1
            elif t == eob_type:
                eob = i
        elif s < first_notice:
            rejected += 1
        hadron_events += hadron_like[i]
        if beam[i]:
            beam_events += 1
            no_electron += not electron[i]
        if is_data[i]:
            x = time[i]
            if events == 0:
                first = x
                last = x
            else:
                first = min(first, x)
                last = max(last, x)
            events += 1
            physics_events += t == physics_type
            calibration_events += t == calibration_type
            for d in range(detector_energy.shape[1]):
                e = detector_energy[i, d]
                kev[d] += np.int64(np.rint(e * kev_per_gev))
                hits[d] += e > 0
    counts[0] = events
    counts[1] = physics_events
    counts[2] = calibration_events
    counts[3] = beam_events
    counts[4] = hadron_events
    counts[5] = no_electron
    counts[6] = rejected
    counts[7] = sob
    counts[8] = eob
    counts[9] = first
    counts[10] = last


@njit(cache=True, nogil=True, inline="always")
def _first_largest_adjacent(row, a, cells):
    """:func:`_first_largest` of ``row[a:a + cells]`` (cells >= 1): the same comparisons in the same order,
    on adjacent values read with unsigned indices (no column lookups, no negative-index checks)."""
    base = np.uint64(a)
    m0 = row[base]
    m1 = m0
    m2 = m0
    m3 = m0
    nan = m0 != m0
    c = np.uint64(1)
    n = np.uint64(cells)
    while c + np.uint64(3) < n:
        at = base + c
        e0 = row[at]
        e1 = row[at + np.uint64(1)]
        e2 = row[at + np.uint64(2)]
        e3 = row[at + np.uint64(3)]
        nan |= (e0 != e0) | (e1 != e1) | (e2 != e2) | (e3 != e3)
        m0 = e0 if e0 > m0 else m0
        m1 = e1 if e1 > m1 else m1
        m2 = e2 if e2 > m2 else m2
        m3 = e3 if e3 > m3 else m3
        c += np.uint64(4)
    while c < n:
        e0 = row[base + c]
        nan |= e0 != e0
        m0 = e0 if e0 > m0 else m0
        c += np.uint64(1)
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m0 = m2 if m2 > m0 else m0
    for c in range(n):
        e = row[base + c]
        if (e != e) if nan else (e == m0):
            return np.int64(c)
    return np.int64(0)
