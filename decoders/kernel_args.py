"""The argument tuples of the decode kernels (:mod:`._kernels`), apart from numba.

The thin wrappers (:mod:`.decode`) build these to call a kernel — the JIT one
or its ahead-of-time compiled twin (:mod:`._aot`) — so this module imports
no numba: a command that finds the compiled kernels never loads it.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

#: rows of the event index being filled (one array per column, same length)
IndexColumns = namedtuple(
    "IndexColumns", "offset size status type run burst event trigger time super_event ldc")
#: the accepted rows to decode: word offset, size in words and status of each
EventRows = namedtuple("EventRows", "offset size status")
#: where the sub-events of planned rows lie (:func:`._kernels.decode_planned_events`): each payload's address
#: (``ctypes.data``) and words, ``(n, 3)`` sub-events (payload, word offset, words) in building order, row k's
#: sub-events ``first[k]`` … ``first[k + 1]``, and each sub-event's word offset in the gathered words
PlannedSubEvents = namedtuple("PlannedSubEvents", "address length subs first position")
#: the columns of a plan's sub-event rows (``subs``), and their indices
PLAN_COLUMNS = ("payload", "offset", "words")
PLAN_PAYLOAD, PLAN_OFFSET, PLAN_WORDS = range(len(PLAN_COLUMNS))
#: the channel map as the decoder needs it: srcID kinds, (srcID, port, channel) -> slot, gains
DecodeSetup = namedtuple("DecodeSetup", "src_kind lookup gain")
#: estimator settings (scalars only: passed down to every channel)
EstimatorParams = namedtuple("EstimatorParams", "pedestal_samples threshold with_samples")
#: per (row, slot) results: ``estimates`` is (len(ESTIMATES), rows, slots) float64, one plane per estimate;
#: ``samples`` is (rows, slots, max samples), or empty without samples; ``previous`` (slots,) scratch.
#: They arrive clean (see :func:`._kernels.decode_events`).
ChannelOutputs = namedtuple("ChannelOutputs", "nsamples estimates saturated samples previous")
ESTIMATES = ("pedestal_even", "pedestal_odd", "amplitude", "energy")
#: per row results
EventOutputs = namedtuple("EventOutputs", "trigger_time scalers ldc_mask")
#: issue records, the running count ``counters[0]``, decode errors per row
IssueLog = namedtuple("IssueLog", "records counters event_errors")
#: per-slot statistics summed over the rows with ``select`` set (empty ``select``: none), see
#: :func:`._kernels.add_slot_sums`: ``counts`` (3, slots) int64, ``sums`` (6, slots) float64, hit ``threshold``
SlotSums = namedtuple("SlotSums", "select threshold counts sums")
#: rows of SlotSums.counts and .sums
SLOT_COUNTS = ("present", "hits", "saturated")
SLOT_SUMS = ("pedestal_even", "pedestal_even_squared", "pedestal_odd", "pedestal_odd_squared", "hit_amplitude",
             "hit_amplitude_squared")
#: a row of the issue log (``IssueLog.records``): row, srcID (-1: none), :class:`~na64_online.errors.Issue`,
#: a detail word, byte offset relative to the decoded words
ISSUE_DTYPE = np.dtype(
    [("event", np.int32), ("src_id", np.int64), ("kind", np.int16), ("detail", np.int64), ("offset", np.int64)]
)
