"""Private numba kernel of the channel-health statistics (wrapper: :meth:`.health.ChannelStats.fill`)."""

from __future__ import annotations

import numba

from ..decoders._kernels import add_slot_sums


@numba.njit(cache=True, nogil=True)
def accumulate_slot_sums(nsamples, ped_even, ped_odd, amplitude, saturated, select, threshold, counts, sums):
    """One pass over (event, slot): counts (3, S) int64, sums (6, S) float64 of the selected events —
    the decoder's own per-row statistics (:func:`~na64_online.decoders._kernels.add_slot_sums`), which it
    also adds while decoding (``SpillProcessor.accumulate``)."""
    for i in range(nsamples.shape[0]):
        if select[i]:
            add_slot_sums(i, nsamples, ped_even, ped_odd, amplitude, saturated, threshold, counts, sums)
