"""Per-channel estimators of spec §11: small numba functions of one channel's samples.

A channel's n samples stay where the parse kernel (:mod:`._kernels`) found
them, packed as the MSADC writes them (docs/layout.md, "MSADC data word"):
sample 2i in the low 12 bits of ``words[first + i]``, sample 2i+1 in the next
12 bits (the two interleaved ADC phases: even and odd samples have their own
pedestal). Reading them in place, with no copy, keeps every loop here a
branch-free reduction the compiler vectorises.

This module is the one place an estimator changes; each function has a slow
twin of the same name in tests/reference_decoder.py (over the list of
samples), and tests/test_estimators.py holds them equal, bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import _vector, layout

_FULL_SCALE = layout.ADC_SATURATION
_PER_WORD = layout.SAMPLES_PER_WORD
_ODD_SHIFT = layout.SAMPLE_ODD_SHIFT
_EVEN_MASK = np.uint32(layout.SAMPLE_MASK)
_ODD_MASK = np.uint32(layout.SAMPLE_MASK << layout.SAMPLE_ODD_SHIFT)


# Loops index with unsigned integers: numba then skips its negative-index check (wraparound), which
# otherwise keeps these short reductions from being vectorised (measured: 3-4x slower per channel); and
# maxima are cast back to uint32 (numba widens uint32 & uint32 to 64 bits: 4 vector lanes instead of 8;
# the casts made the whole decode 23 % faster).


@njit(cache=True, nogil=True, inline="always")
def even_sample(words, first, i):
    """Sample 2i of the channel whose first data word is ``words[first]``."""
    return words[np.uint64(first) + np.uint64(i)] & _EVEN_MASK


@njit(cache=True, nogil=True, inline="always")
def odd_sample(words, first, i):
    """Sample 2i+1 of the channel whose first data word is ``words[first]``."""
    return (words[np.uint64(first) + np.uint64(i)] & _ODD_MASK) >> _ODD_SHIFT


@njit(cache=True, nogil=True, inline="always")
def pedestals(words, first, n, window):
    """(even, odd) pedestal: the mean of samples 0 … window−1 (at most n) of each parity; 0.0 for none."""
    m = min(window, n)
    count_even = (m + 1) // _PER_WORD
    count_odd = m // _PER_WORD
    base = np.uint64(first)
    sum_even = np.uint64(0)
    sum_odd = np.uint64(0)
    for i in range(np.uint64(count_even)):
        sum_even += words[base + i] & _EVEN_MASK
    for i in range(np.uint64(count_odd)):
        sum_odd += (words[base + i] & _ODD_MASK) >> _ODD_SHIFT
    pedestal_even = sum_even / count_even if count_even > 0 else 0.0
    pedestal_odd = sum_odd / count_odd if count_odd > 0 else 0.0
    return pedestal_even, pedestal_odd


@njit(cache=True, nogil=True, inline="always")
def amplitude(words, first, n, window, pedestal_even, pedestal_odd):
    """The largest of (sample − pedestal of its parity) over samples window … n−1; 0.0 if n ≤ window.

    Taken as (largest sample of a parity) − (its pedestal): rounding is
    monotonic, so this is bit for bit the largest of the differences.
    """
    if n <= window:
        return 0.0
    best = -np.inf
    base = np.uint64(first)
    start, stop = (window + 1) // _PER_WORD, (n + 1) // _PER_WORD  # even samples 2i, window <= 2i < n
    if start < stop:
        top = np.uint32(0)
        for i in range(np.uint64(start), np.uint64(stop)):
            top = np.uint32(max(top, np.uint32(words[base + i] & _EVEN_MASK)))
        best = top - pedestal_even
    start, stop = window // _PER_WORD, n // _PER_WORD  # odd samples 2i+1, window <= 2i+1 < n
    if start < stop:
        top = np.uint32(0)
        for i in range(np.uint64(start), np.uint64(stop)):
            top = np.uint32(max(top, np.uint32(words[base + i] & _ODD_MASK)))
        best = max(best, (top >> _ODD_SHIFT) - pedestal_odd)
    return best


@njit(cache=True, nogil=True, inline="always")
def saturated(words, first, n):
    """Whether any of the n samples is at the ADC's full scale (4095)."""
    base = np.uint64(first)
    top_even = np.uint32(0)
    top_odd = np.uint32(0)
    for i in range(np.uint64(n // _PER_WORD)):  # words holding two samples
        w = words[base + i]
        top_even = np.uint32(max(top_even, np.uint32(w & _EVEN_MASK)))
        top_odd = np.uint32(max(top_odd, np.uint32(w & _ODD_MASK)))
    if n % _PER_WORD:  # the last word's odd half is padding
        top_even = max(top_even, even_sample(words, first, n // _PER_WORD))
    return max(top_even, top_odd >> _ODD_SHIFT) >= _FULL_SCALE


@njit(cache=True, nogil=True, inline="always")
def energy(amplitude, gain_gev, threshold):
    """Channel energy in GeV: gain × amplitude above the threshold, else 0.0."""
    return gain_gev * amplitude if amplitude > threshold else 0.0


@njit(cache=True, nogil=True, inline="always")
def channel(words, first, n, window):
    """(pedestal_even, pedestal_odd, amplitude, saturated) of one channel: bit for bit
    :func:`pedestals`, :func:`amplitude` and :func:`saturated`, in two passes over its words instead of five.

    The common shape — an even pedestal window ``w`` shorter than the channel — has one boundary
    for both parities: words 0 … w/2−1 hold the pedestal samples of both, the words after them the
    amplitude samples of both. So one loop sums and takes the maxima of the pedestal words, a second
    takes the maxima of the rest (in the odd lanes without shifting: ``w & 0xFFF000``), and saturation
    is the largest sample of the two (a 12-bit sample is 4095 iff the maximum is). Other shapes
    (an odd window, a channel no longer than the window) take the three estimators one by one.
    """
    if window % _PER_WORD != 0 or n <= window:
        pedestal_even, pedestal_odd = pedestals(words, first, n, window)
        amp = amplitude(words, first, n, window, pedestal_even, pedestal_odd)
        return pedestal_even, pedestal_odd, amp, saturated(words, first, n)
    base = np.uint64(first)
    half = np.uint64(window // _PER_WORD)  # pedestal samples per parity
    pairs = np.uint64(n // _PER_WORD)  # words holding two samples (an odd n adds a last even-only word)
    sum_even = np.uint32(0)
    sum_odd = np.uint32(0)  # of the odd lanes in place (12-bit shifted): at most 255 x 4095 << 12 < 2^32
    top_even = np.uint32(0)
    top_odd = np.uint32(0)
    for i in range(half):
        w = words[base + i]
        sum_even = np.uint32(sum_even + np.uint32(w & _EVEN_MASK))
        sum_odd = np.uint32(sum_odd + np.uint32(w & _ODD_MASK))
        top_even = np.uint32(max(top_even, np.uint32(w & _EVEN_MASK)))
        top_odd = np.uint32(max(top_odd, np.uint32(w & _ODD_MASK)))
    amp_even = np.uint32(0)
    amp_odd = np.uint32(0)
    for i in range(half, pairs):
        w = words[base + i]
        amp_even = np.uint32(max(amp_even, np.uint32(w & _EVEN_MASK)))
        amp_odd = np.uint32(max(amp_odd, np.uint32(w & _ODD_MASK)))
    if n % _PER_WORD:  # the last word's odd half is padding
        amp_even = np.uint32(max(amp_even, even_sample(words, first, pairs)))
    pedestal_even = sum_even / half
    pedestal_odd = (sum_odd >> _ODD_SHIFT) / half
    amp = amp_even - pedestal_even
    if pairs > half:  # an odd sample after the window
        amp = max(amp, (amp_odd >> _ODD_SHIFT) - pedestal_odd)
    full = max(max(top_even, amp_even), max(top_odd, amp_odd) >> _ODD_SHIFT)
    return pedestal_even, pedestal_odd, amp, full >= _FULL_SCALE


#: sample count of the channels :func:`channel32` handles
VECTOR_SAMPLES = _vector.SAMPLES


@njit(cache=True, nogil=True, inline="always")
def vector_window(window):
    """Whether :func:`channel32` handles pedestal windows of ``window`` samples (even, shorter than the channel)."""
    return window % _PER_WORD == 0 and 0 < window < _vector.SAMPLES


@njit(cache=True, nogil=True, inline="always")
def channel32(words, first, window):
    """:func:`channel` of a channel of exactly 32 samples (16 data words from ``words[first]``) with a
    :func:`vector_window`, in vector code (:mod:`._vector`), plus whether the 16 words carry the right
    data markers. The same numbers bit for bit: the same integer sums and maxima, then the same
    float64 divisions, subtractions and comparisons in the same order."""
    half = window // _PER_WORD
    sums, tops, full, markers_good = _vector.channel_words16(words, first, half)
    pedestal_even = np.uint32(sums & _vector.LANE_MASK) / half
    pedestal_odd = np.uint32(sums >> _vector.LANE_BITS) / half
    amp = np.uint32(tops & _vector.LANE_MASK) - pedestal_even
    amp = max(amp, np.uint32(tops >> _vector.LANE_BITS) - pedestal_odd)
    return pedestal_even, pedestal_odd, amp, full != 0, markers_good != 0
