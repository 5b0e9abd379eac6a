"""Private numba kernel of the spill histograms' fill (wrapper: :meth:`.histograms.SpillHistograms.fill`).

One pass over a reconstructed chunk: each data event's exclusive class (``event_classes``) and its
bin on every histogram, counted straight into the histograms' Int64 storages, instead of the class
codes, the calorimeter sum, the SRD sum and the VETO maximum as numpy temporaries and eight
boost-histogram fills.

The bins are boost-histogram's, bit for bit: a regular axis of ``bins`` bins over [``low``,
``high``) with flow bins puts ``x`` at ``z = (x - low) / (high - low)``: below 0 the underflow, from
1 on (and NaN) the overflow, else bin ``int(z * bins)`` (boost/histogram/axis/regular.hpp,
``index``); the storage is column-major, the class axis fastest, flow bins included.
tests/test_histograms.py compares every count with boost-histogram's own fill.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _bin(x, low, width, bins):
    """The storage index (flow bins included: 0 underflow, ``bins`` + 1 overflow) of ``x`` on a regular axis."""
    z = (x - low) / width
    if z < 1.0:
        if z >= 0.0:
            return np.int64(z * bins) + 1
        return np.int64(0)
    return np.int64(bins) + 1  # NaN too


@numba.njit(cache=True, nogil=True)
def fill_histograms(is_data, beam, physics, electron, candidate, trigger_mask, event_type, e_ecal, e_ps, e_hcal,
                    e_wcal, srd, veto, trigger_time, random_bit, calibration_type, axes, classes, h_ecal, h_ps,
                    h_hcal, h_total, h_plane, h_srd, h_veto, h_time):
    """Add each data event (``is_data``) of a chunk to the class-coded histograms (flat column-major
    Int64 storages with flow bins, ``classes`` fastest).

    Class: ``be + 3 pk + 9 r + 18 c`` with be = beam trigger (+1 with the electron tag), pk = physics
    trigger (+1 for a candidate), r = trigger bit ``random_bit``, c = type ``calibration_type``.
    Values: E_ECAL, E_PS, E_HCAL, (E_ECAL + E_HCAL) + E_WCAL, the SRD modules summed in order, the
    largest VETO module (numpy's ``maximum``: NaN wins), (E_ECAL, E_HCAL) on the plane and the trigger
    time (events with a time >= 0 only). ``axes`` rows (bins, low, high): e_ecal, e_ps, e_hcal,
    e_total, srd, veto, time, plane E_ECAL, plane E_HCAL. Sizes checked by the wrapper."""
    n_ecal, w_ecal, lo_ecal = axes[0, 0], axes[0, 2] - axes[0, 1], axes[0, 1]
    n_ps, w_ps, lo_ps = axes[1, 0], axes[1, 2] - axes[1, 1], axes[1, 1]
    n_hcal, w_hcal, lo_hcal = axes[2, 0], axes[2, 2] - axes[2, 1], axes[2, 1]
    n_total, w_total, lo_total = axes[3, 0], axes[3, 2] - axes[3, 1], axes[3, 1]
    n_srd, w_srd, lo_srd = axes[4, 0], axes[4, 2] - axes[4, 1], axes[4, 1]
    n_veto, w_veto, lo_veto = axes[5, 0], axes[5, 2] - axes[5, 1], axes[5, 1]
    n_time, w_time, lo_time = axes[6, 0], axes[6, 2] - axes[6, 1], axes[6, 1]
    n_px, w_px, lo_px = axes[7, 0], axes[7, 2] - axes[7, 1], axes[7, 1]
    n_py, w_py, lo_py = axes[8, 0], axes[8, 2] - axes[8, 1], axes[8, 1]
    stride_py = (np.int64(n_px) + 2) * classes
    modules_srd = srd.shape[1]
    modules_veto = veto.shape[1]
    for i in range(is_data.shape[0]):
        if not is_data[i]:
            continue
        be = np.int64(beam[i]) + np.int64(beam[i] and electron[i])
        pk = np.int64(physics[i]) + np.int64(physics[i] and candidate[i])
        r = np.int64((trigger_mask[i] >> random_bit) & 1)
        c = np.int64(event_type[i] == calibration_type)
        code = be + 3 * pk + 9 * r + 18 * c
        ecal = e_ecal[i]
        hcal = e_hcal[i]
        total = ecal + hcal + e_wcal[i]
        srd_sum = 0.0
        if modules_srd:
            srd_sum = srd[i, 0]
            for m in range(1, modules_srd):
                srd_sum += srd[i, m]
        veto_max = 0.0
        if modules_veto:
            veto_max = veto[i, 0]
            for m in range(1, modules_veto):
                v = veto[i, m]
                if v > veto_max or v != v:
                    if veto_max == veto_max:  # NaN stays
                        veto_max = v
        h_ecal[code + classes * _bin(ecal, lo_ecal, w_ecal, n_ecal)] += 1
        h_ps[code + classes * _bin(e_ps[i], lo_ps, w_ps, n_ps)] += 1
        h_hcal[code + classes * _bin(hcal, lo_hcal, w_hcal, n_hcal)] += 1
        h_total[code + classes * _bin(total, lo_total, w_total, n_total)] += 1
        h_srd[code + classes * _bin(srd_sum, lo_srd, w_srd, n_srd)] += 1
        h_veto[code + classes * _bin(veto_max, lo_veto, w_veto, n_veto)] += 1
        h_plane[code + classes * _bin(ecal, lo_px, w_px, n_px) + stride_py * _bin(hcal, lo_py, w_py, n_py)] += 1
        t = trigger_time[i]
        if t >= 0:
            h_time[code + classes * _bin(np.float64(t), lo_time, w_time, n_time)] += 1


@numba.njit(cache=True, nogil=True)
def trigger_counts(coded, membership, out):
    """``out`` (flat, trigger fastest: a trigger-axis histogram's column-major storage) = per bin, the counts
    of ``coded`` (flat, class fastest) summed over the classes of each trigger (``membership`` (triggers,
    classes) 0/1): ``membership @ counts`` per bin, in integers (exact in any order). Sizes checked by the
    wrapper."""
    triggers, classes = membership.shape[0], membership.shape[1]
    # unsigned indices: no negative-index checks, so the class loop becomes vector code (see ..decoders.estimators)
    for b in range(np.uint64(coded.shape[0] // classes)):
        row = b * np.uint64(classes)
        for t in range(np.uint64(triggers)):
            total = np.int64(0)
            for c in range(np.uint64(classes)):
                total += coded[row + c] & -membership[t, c]  # all bits or none: vector ANDs, no 64-bit multiply
            out[b * np.uint64(triggers) + t] = total
