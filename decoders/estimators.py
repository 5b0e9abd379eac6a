"""Per-channel estimators of spec §11: small numba functions of one channel's samples.

The parse kernel (:mod:`._kernels`) hands every channel over de-interleaved by
parity, as the MSADC packs it: ``even[i]`` is sample 2i, ``odd[i]`` sample
2i+1 (the two interleaved ADC phases have their own pedestal); ``n`` is the
number of samples, so ``even`` holds ``(n + 1) // 2`` of them and ``odd``
``n // 2``. Samples are 12-bit ADC counts.

This module is the one place an estimator changes; each function has a slow
twin of the same name in tests/reference_decoder.py, and tests/test_estimators.py
holds them equal (bit for bit) on every shape of channel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import layout

_FULL_SCALE = layout.ADC_SATURATION


@njit(cache=True, nogil=True)
def pedestals(even, odd, n, window):
    """(even, odd) pedestal: the mean of samples 0 … window−1 (at most n) of each parity; 0.0 for none."""
    m = min(window, n)
    count_even = (m + 1) // 2
    count_odd = m // 2
    sum_even = 0
    sum_odd = 0
    for i in range(count_even):
        sum_even += even[i]
    for i in range(count_odd):
        sum_odd += odd[i]
    pedestal_even = sum_even / count_even if count_even > 0 else 0.0
    pedestal_odd = sum_odd / count_odd if count_odd > 0 else 0.0
    return pedestal_even, pedestal_odd


@njit(cache=True, nogil=True)
def amplitude(even, odd, n, window, pedestal_even, pedestal_odd):
    """The largest of (sample − pedestal of its parity) over samples window … n−1; 0.0 if n ≤ window.

    Taken as (largest sample of a parity) − (its pedestal): rounding is
    monotonic, so this is bit for bit the largest of the differences.
    """
    if n <= window:
        return 0.0
    best = -np.inf
    first, stop = (window + 1) // 2, (n + 1) // 2  # even samples 2i with window <= 2i < n
    if first < stop:
        top = even[first]
        for i in range(first, stop):
            top = max(top, even[i])
        best = top - pedestal_even
    first, stop = window // 2, n // 2  # odd samples 2i+1 with window <= 2i+1 < n
    if first < stop:
        top = odd[first]
        for i in range(first, stop):
            top = max(top, odd[i])
        best = max(best, top - pedestal_odd)
    return best


@njit(cache=True, nogil=True)
def saturated(even, odd, n):
    """Whether any of the n samples is at the ADC's full scale (4095)."""
    top = 0
    for i in range((n + 1) // 2):
        top = max(top, even[i])
    for i in range(n // 2):
        top = max(top, odd[i])
    return top >= _FULL_SCALE


@njit(cache=True, nogil=True)
def energy(amplitude, gain_gev, threshold):
    """Channel energy in GeV: gain × amplitude above the threshold, else 0.0."""
    return gain_gev * amplitude if amplitude > threshold else 0.0
