"""The per-channel estimators (decoders/estimators.py) against their slow twins in the reference decoder.

Each numba estimator reads a channel's samples packed two per data word, in
place; its twin reads the list of samples. They must agree bit for bit on
every shape of channel: odd and even sample counts, windows longer than the
channel, saturated samples, thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import reference_decoder as ref
from na64_online.decoders import estimators, layout


def pack(samples: list[int], offset: int = 3) -> np.ndarray:
    """The MSADC data words of ``samples`` (padding half 0), after ``offset`` unrelated words."""
    padded = samples + [0] * (len(samples) % 2)
    words = [0xDEADBEEF] * offset
    for i in range(0, len(padded), 2):
        marker = layout.DATA_MARKER_FIRST if i == 0 else layout.DATA_MARKER_NEXT
        words.append(layout.DATA_WORD.pack(sample_even=padded[i], sample_odd=padded[i + 1], marker=marker))
    return np.array(words + [0xFFFFFFFF], dtype=layout.WORD)  # a saturated-looking word after: must not count


@njit(cache=True)
def _all(words, first, n, window, gain, threshold):
    pe, po = estimators.pedestals(words, first, n, window)
    amp = estimators.amplitude(words, first, n, window, pe, po)
    return pe, po, amp, estimators.saturated(words, first, n), estimators.energy(amp, gain, threshold)


channels = st.lists(st.integers(0, layout.ADC_SATURATION), min_size=1, max_size=layout.MAX_SAMPLES)


@settings(max_examples=300, deadline=None)
@given(channels, st.integers(1, 40), st.floats(0.0, 5.0), st.floats(0.0, 4095.0))
def test_estimators_equal_their_reference_twins(samples, window, gain, threshold):
    words = pack(samples)
    pe, po, amp, sat, e = _all(words, 3, len(samples), window, gain, threshold)
    ref_pedestals = ref.pedestals(samples, window)
    ref_amp = ref.amplitude(samples, window, ref_pedestals)
    assert (pe, po) == ref_pedestals
    assert amp == ref_amp  # bit for bit
    assert sat == ref.saturated(samples)
    assert e == ref.energy(ref_amp, gain, threshold)


@njit(cache=True)
def _one_pass(words, first, n, window, gain, threshold):
    pe, po, amp, sat = estimators.channel(words, first, n, window)
    return pe, po, amp, sat, estimators.energy(amp, gain, threshold)


@settings(max_examples=300, deadline=None)
@given(channels, st.integers(1, 40), st.floats(0.0, 5.0), st.floats(0.0, 4095.0))
def test_one_pass_channel_equals_the_reference_twins(samples, window, gain, threshold):
    """``estimators.channel`` (what the decoder calls: one pass for the common shape) equals the
    reference twins bit for bit, for even and odd windows, odd and even sample counts."""
    words = pack(samples)
    got = _one_pass(words, 3, len(samples), window, gain, threshold)
    ref_pedestals = ref.pedestals(samples, window)
    ref_amp = ref.amplitude(samples, window, ref_pedestals)
    assert got == (*ref_pedestals, ref_amp, ref.saturated(samples), ref.energy(ref_amp, gain, threshold))


def test_one_pass_channel_at_the_sums_limits():
    # the largest window of full-scale samples: the odd-lane pedestal sum (kept shifted in uint32) must not wrap
    for n in (511, 510, 509):
        samples = [layout.ADC_SATURATION] * n
        for window in (508, 510):
            got = _one_pass(pack(samples), 3, n, window, 1.0, 0.0)
            assert got[:4] == (4095.0, 4095.0, 0.0, True) if n > window else got[3], (n, window, got)
    samples = [7] * 6 + [4095, 9]
    assert _one_pass(pack(samples), 3, 8, 6, 1.0, 20.0) == (7.0, 7.0, 4088.0, True, 4088.0)
    assert _one_pass(pack(samples[:7]), 3, 7, 6, 1.0, 20.0) == (7.0, 7.0, 4088.0, True, 4088.0)


def test_edge_channels():
    # one sample: no odd pedestal, no amplitude; the padding half is not a sample
    words = pack([4095])
    assert _all(words, 3, 1, 6, 1.0, 20.0) == (4095.0, 0.0, 0.0, True, 0.0)
    # only an even sample after the window: the odd parity must not take part
    samples = [100, 200, 100, 200, 100, 200, 150]
    pe, po, amp, sat, e = _all(pack(samples), 3, 7, 6, 0.5, 20.0)
    assert (pe, po, amp, sat, e) == (100.0, 200.0, 50.0, False, 25.0)
    # a saturated sample in the pedestal window counts; the amplitude may be negative
    samples = [4095, 10, 10, 10, 10, 10, 0, 0]
    pe, po, amp, sat, _ = _all(pack(samples), 3, 8, 6, 1.0, 20.0)
    assert sat and amp == ref.amplitude(samples, 6, ref.pedestals(samples, 6)) == -10.0


@njit(cache=True)
def _vector_channel(words, first, window, gain, threshold):
    pe, po, amp, sat, markers_good = estimators.channel32(words, first, window)
    return pe, po, amp, sat, estimators.energy(amp, gain, threshold), markers_good


full_channels = st.lists(st.one_of(st.integers(0, layout.ADC_SATURATION), st.sampled_from([0, layout.ADC_SATURATION])),
                         min_size=estimators.VECTOR_SAMPLES, max_size=estimators.VECTOR_SAMPLES)


@settings(max_examples=300, deadline=None)
@given(full_channels, st.integers(1, estimators.VECTOR_SAMPLES // 2 - 1), st.floats(0.0, 5.0),
       st.floats(0.0, 4095.0), st.integers(0, 16), st.integers(1, 3))
def test_vector_channel_equals_the_reference_twins(samples, half, gain, threshold, damaged, marker):
    """``estimators.channel32`` (the decoder's vector code for 32-sample channels) equals the reference twins
    bit for bit for every even window it takes, and finds any wrong data marker among the 16 words."""
    window = 2 * half
    assert estimators.vector_window(window) and not estimators.vector_window(window - 1)
    words = pack(samples)
    ref_pedestals = ref.pedestals(samples, window)
    ref_amp = ref.amplitude(samples, window, ref_pedestals)
    expected = (*ref_pedestals, ref_amp, ref.saturated(samples), ref.energy(ref_amp, gain, threshold))
    assert _vector_channel(words, 3, window, gain, threshold) == (*expected, True)
    if damaged < estimators.VECTOR_SAMPLES // 2:  # one word's marker changed: the same numbers, markers bad
        right = layout.DATA_MARKER_FIRST if damaged == 0 else layout.DATA_MARKER_NEXT
        if marker != right:
            words[3 + damaged] = (words[3 + damaged] & ~np.uint32(layout.DATA_MARKER_MASK << layout.DATA_MARKER_SHIFT)) \
                | np.uint32(marker << layout.DATA_MARKER_SHIFT)
            assert _vector_channel(words, 3, window, gain, threshold) == (*expected, False)


@pytest.mark.fuzz
def test_vector_code_checks_its_range_under_boundscheck():
    """The vector loads are an intrinsic numba's bounds checks do not reach: under NUMBA_BOUNDSCHECK=1 (the
    fuzz run) they check their own range, so the fuzz run covers them as it covers the rest of the decoder."""
    import os

    from na64_online.decoders import _vector

    if os.environ.get("NUMBA_BOUNDSCHECK") != "1":
        pytest.skip("only meaningful in the NUMBA_BOUNDSCHECK=1 run")

    @njit
    def channel(words, first):
        return _vector.channel_words16(words, first, 3)

    @njit
    def stale(previous, nsamples, row, start):
        return _vector.stale_slots16(previous, nsamples, row, start)

    words = np.zeros(_vector.WORDS + 4, dtype=layout.WORD)
    assert channel(words, 4) == (0, 0, 0, 0)
    previous, nsamples = np.zeros(20, dtype=np.uint16), np.zeros((3, 20), dtype=np.uint16)
    assert stale(previous, nsamples, 2, 4) == 0
    for call in (lambda: channel(words, 5), lambda: channel(words, -1), lambda: stale(previous, nsamples, 3, 0),
                 lambda: stale(previous, nsamples, 0, 5)):
        with pytest.raises(IndexError):
            call()
