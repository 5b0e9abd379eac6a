"""Private numba kernels: arrays and scalars in, arrays out, no Python objects.

Callers are the wrappers in :mod:`.decode`, which validate dtypes, contiguity
and sizes before entering here. The kernels still check every size they read
from the data against the buffer before indexing (numba does no bounds
checks), so no input bytes can make them read or write out of range.

Every shift, mask and word offset comes from :mod:`.layout` (numba freezes the
module-level integers below as compile-time constants); tests/test_layout.py
fails on a bare number in this file. The per-channel numbers (pedestals,
amplitude, saturation, energy) are :mod:`.estimators`; this module only walks
the structure, checks it, unpacks the samples and logs issues.

The decode path is compiled without numba's reference counting (``_nrt=False``:
it allocates nothing; the caller owns every array): with it, each array
argument of each call, and each array read out of a named tuple, costs an
atomic increment and decrement — per channel, a third of the decode time.
The per-channel helpers are inlined by numba (``inline="always"``) for the
same reason.

Arguments come grouped in named tuples (:data:`IndexColumns`,
:data:`DecodeSetup`, :data:`ChannelOutputs`, :data:`EventOutputs`,
:data:`IssueLog`). Issue log: ``log.records`` (``ISSUE_DTYPE`` rows) of fixed
capacity; the running total is ``log.counters[0]``. A log that overflows keeps
counting, and the wrapper reruns with a larger log, so counts are always exact.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from . import _vector, estimators
from ._addresses import words_at
from . import layout as L
from .channelmap import SRC_MSADC as _SRC_MSADC
from .channelmap import SRC_SCALERS as _SRC_SCALERS
from .channelmap import SRC_TRIGGER_TIME as _SRC_TRIGGER_TIME
from ..errors import FIRST_NOTICE, Issue

# the argument tuples, in a module without numba (the wrappers build them for the JIT or the AOT kernels)
from .kernel_args import (  # noqa: F401 - re-exported
    ESTIMATES, SLOT_COUNTS, SLOT_SUMS, ChannelOutputs, DecodeSetup, EstimatorParams, EventOutputs, EventRows,
    PLAN_OFFSET as _PLAN_OFFSET, PLAN_PAYLOAD as _PLAN_PAYLOAD, PLAN_WORDS as _PLAN_WORDS, IndexColumns, IssueLog,
    PlannedSubEvents, SlotSums,
)

# numba freezes module globals: plain ints, derived once from the layout.
_MAGIC = L.DATE_MAGIC
_MAGIC_SWAPPED = L.DATE_MAGIC_SWAPPED
_MIN_HEADER_BYTES = L.DATE_HEADER_BYTES
_MIN_VERSION = L.DATE_MIN_VERSION
_WORD_BYTES = L.WORD_BYTES
_WORD_MASK = L.WORD_MASK
_BYTE_BITS = L.BYTE_BITS
_BYTE_MASK = L.BYTE_MASK
_SUPER = L.SUPER_EVENT_BIT
_TYPE_MASK = L.TYPE_MASK
_KNOWN_TYPES = L.KNOWN_EVENT_TYPES
# DATE header word indices
_H_SIZE = L.H_SIZE
_H_MAGIC = L.H_MAGIC
_H_HEADER_SIZE = L.H_HEADER_SIZE
_H_VERSION = L.H_VERSION
_H_TYPE = L.H_TYPE
_H_RUN = L.H_RUN
_H_BURST_EVENT = L.H_BURST_EVENT
_H_TRIGGER_0 = L.H_TRIGGER_0
_H_TRIGGER_1 = L.H_TRIGGER_1
_H_ATTRIBUTES_2 = L.H_ATTRIBUTES_2
_H_LDC = L.H_LDC
_H_TIME = L.H_TIME
_BURST_SHIFT = L.BURST_SHIFT
_BURST_MASK = L.BURST_MASK
_EVENT_MASK = L.EVENT_IN_BURST_MASK
_TRIGGER_LOW_SHIFT = L.TRIGGER_LOW_SHIFT
_TRIGGER_HIGH_SHIFT = L.TRIGGER_HIGH_SHIFT
# equipment + S-Link
_EQ_WORDS = L.EQUIPMENT_HEADER_WORDS
_EQ_SIZE = L.EQ_SIZE
_EQ_ID = L.EQ_ID
_SL_WORDS = L.SLINK_HEADER_WORDS
_SL_SIZE_MASK = L.SLINK_SIZE_MASK
_SL_SRC_SHIFT = L.SLINK_SRC_SHIFT
_SL_SRC_MASK = L.SLINK_SRC_MASK
_SL_EVENT_MASK = L.SLINK_EVENT_MASK
_SL_SPILL_SHIFT = L.SLINK_SPILL_SHIFT
_SL_SPILL_MASK = L.SLINK_SPILL_MASK
# MSADC
_ADC_KEY = L.ADC_KEY
_ADC_KEY_PLACEHOLDER = L.ADC_KEY_PLACEHOLDER
_ADC_KEY_SHIFT = L.ADC_KEY_SHIFT
_ADC_EVENT_MASK = L.ADC_EVENT_MASK
_ADC_SIZE_SHIFT = L.ADC_SIZE_SHIFT
_ADC_SIZE_MASK = L.ADC_SIZE_MASK
_ADC_ID_SHIFT = L.ADC_ID_SHIFT
_ADC_ID_MASK = L.ADC_ID_MASK
_ADC_PORT_SHIFT = L.ADC_PORT_SHIFT
_ADC_PORT_MASK = L.ADC_PORT_MASK
_ADC_MODULE_SHIFT = L.ADC_MODULE_SHIFT
_ADC_MODULE_MASK = L.ADC_MODULE_MASK
_CHANNEL_ID = L.CHANNEL_ID
_CH_ID_SHIFT = L.CH_ID_SHIFT
_CH_SAMPLES_SHIFT = L.CH_SAMPLES_SHIFT
_CH_SAMPLES_MASK = L.CH_SAMPLES_MASK
_CH_CHAN_SHIFT = L.CH_CHAN_SHIFT
_CH_CHAN_MASK = L.CH_CHAN_MASK
_MARKER_SHIFT = L.DATA_MARKER_SHIFT
_MARKER_FIRST = L.DATA_MARKER_FIRST
_MARKER_NEXT = L.DATA_MARKER_NEXT
_SAMPLE_MASK = L.SAMPLE_MASK
_SAMPLE_ODD_SHIFT = L.SAMPLE_ODD_SHIFT
_SAMPLES_PER_WORD = L.SAMPLES_PER_WORD
_N_SCALERS = L.N_SCALERS
_PORTS = L.PORTS
_CH_PER_PORT = L.CHANNELS_PER_PORT
_CH_PER_ADC = L.CHANNELS_PER_ADC
_MAX_SRC = L.MAX_SRC_ID
_VECTOR_SAMPLES = estimators.VECTOR_SAMPLES
_SLOT_LANES = _vector.SLOT_LANES
_PEDESTAL_EVEN = ESTIMATES.index("pedestal_even")
_PEDESTAL_ODD = ESTIMATES.index("pedestal_odd")
_AMPLITUDE = ESTIMATES.index("amplitude")
_ENERGY = ESTIMATES.index("energy")
_LDC_MASK_TOP = np.iinfo(np.uint32).bits - 1  # LDC ids beyond the mask's bits share its top bit
_PRESENT, _HITS, _SATURATED = range(len(SLOT_COUNTS))
_PE, _PE2, _PO, _PO2, _AMP, _AMP2 = range(len(SLOT_SUMS))

_ISSUE_ADC_BAD_KEY = int(Issue.ADC_BAD_KEY)
_ISSUE_ADC_BAD_SIZE = int(Issue.ADC_BAD_SIZE)
_ISSUE_ADC_EVENT = int(Issue.ADC_EVENT_MISMATCH)
_ISSUE_CH_ID = int(Issue.CHANNEL_BAD_ID)
_ISSUE_CH_SAMPLES = int(Issue.CHANNEL_BAD_SAMPLES)
_ISSUE_MARKER = int(Issue.DATA_BAD_MARKER)
_ISSUE_SL_EVENT = int(Issue.SLINK_EVENT_MISMATCH)
_ISSUE_SL_SIZE = int(Issue.SLINK_SIZE_MISMATCH)
_ISSUE_SL_SRC = int(Issue.SLINK_SRC_MISMATCH)
_ISSUE_SL_SPILL = int(Issue.SLINK_SPILL_MISMATCH)
_ISSUE_EQ_SIZE = int(Issue.EQUIPMENT_BAD_SIZE)
_ISSUE_TRUNCATED = int(Issue.EVENT_TRUNCATED)
_ISSUE_SWAPPED = int(Issue.EVENT_BYTE_SWAPPED)
_ISSUE_OLD = int(Issue.EVENT_OLD_LAYOUT)
_ISSUE_HDR_SIZE = int(Issue.EVENT_BAD_HEADER_SIZE)
_ISSUE_MAGIC = int(Issue.EVENT_BAD_MAGIC)
_ISSUE_BAD_SIZE = int(Issue.EVENT_BAD_SIZE)
_ISSUE_SUB = int(Issue.SUBEVENT_MISMATCH)
_ISSUE_MISSING = int(Issue.MODULE_MISSING)
_ISSUE_UNKNOWN_CH = int(Issue.UNKNOWN_CHANNEL)
_ISSUE_UNKNOWN_SRC = int(Issue.UNKNOWN_SRC_ID)
_ISSUE_SCALERS_SHORT = int(Issue.SCALERS_SHORT)
_FIRST_NOTICE = FIRST_NOTICE


@njit(cache=True, nogil=True)
def _bswap32(x):
    """``x`` with its four bytes in reverse order."""
    out = x & 0
    for _ in range(_WORD_BYTES):
        out = (out << _BYTE_BITS) | (x & _BYTE_MASK)
        x = x >> _BYTE_BITS
    return out


@njit(cache=True, nogil=True)
def _check_event(words, p, limit):
    """Validate the DATE event starting at word ``p`` that must end by ``limit``.

    Returns (issue, size in words). issue 0: good. A size of 0 with an issue
    means the size cannot be trusted: the caller must resynchronise.
    """
    remaining = limit - p
    if remaining <= _H_MAGIC:
        return _ISSUE_TRUNCATED, 0
    size = np.int64(words[p + _H_SIZE])
    magic = words[p + _H_MAGIC]
    if magic == _MAGIC_SWAPPED:
        swapped = np.int64(_bswap32(np.uint32(size)))
        if swapped % _WORD_BYTES == 0 and swapped >= _MIN_HEADER_BYTES and swapped // _WORD_BYTES <= remaining:
            return _ISSUE_SWAPPED, swapped // _WORD_BYTES
        return _ISSUE_SWAPPED, 0
    if magic != _MAGIC:
        return _ISSUE_MAGIC, 0
    if size % _WORD_BYTES != 0 or size < _MIN_HEADER_BYTES:
        return _ISSUE_HDR_SIZE, 0
    size_words = size // _WORD_BYTES
    if size_words > remaining:
        return _ISSUE_TRUNCATED, size_words
    if words[p + _H_VERSION] < _MIN_VERSION:
        return _ISSUE_OLD, size_words
    header = np.int64(words[p + _H_HEADER_SIZE])
    if header < _MIN_HEADER_BYTES or header % _WORD_BYTES != 0 or header > size:
        return _ISSUE_HDR_SIZE, size_words
    return 0, size_words


@njit(cache=True, nogil=True)
def _resync(words, p, limit, want_super):
    """First word index >= p where a plausible DATE event starts (limit if none).

    Plausible: the DATE magic, a size that is a multiple of 4, >= 68 bytes and
    fits before ``limit``, and the super-event bit ``want_super`` of the last
    accepted event, so that a resync in a stream of super events does not land
    on a damaged event's own sub-events (-1, none accepted yet: the first super
    event, else the first plain one).
    """
    if want_super < 0:
        # no accepted event yet to tell: a super event if there is one (never a damaged one's sub-event)
        first = _scan_words(words, p, limit, 1)
        return first if first < limit else _scan_words(words, p, limit, 0)
    return _scan_words(words, p, limit, want_super)


@njit(cache=True, nogil=True)
def _scan_words(words, p, limit, want_super):
    q = p
    while q + _H_MAGIC < limit:
        if words[q + _H_MAGIC] == _MAGIC:
            size = np.int64(words[q + _H_SIZE])
            if size % _WORD_BYTES == 0 and size >= _MIN_HEADER_BYTES and size // _WORD_BYTES <= limit - q:
                is_super = 1 if (words[q + _H_ATTRIBUTES_2] & _SUPER) != 0 else 0
                if is_super == want_super:
                    return q
        q += 1
    return limit


@njit(cache=True, nogil=True)
def _byte_word(data, b):
    """The little-endian word at byte ``b`` of the uint8 array ``data`` (any alignment)."""
    w = np.int64(0)
    for i in range(_WORD_BYTES):
        w |= np.int64(data[b + i]) << (_BYTE_BITS * i)
    return w


@njit(cache=True, nogil=True)
def _resync_bytes(data, b, b_end, byte_limit, want_super):
    """First byte offset in [b, b_end) where a plausible DATE event starts (byte_limit if none).

    The same plausibility as :func:`_resync` (the event must fit before
    ``byte_limit``), tried at every byte offset: the slow path after damage
    that may have shifted the stream by bytes.
    """
    if want_super < 0:
        # no accepted event yet to tell: a super event if there is one (never a damaged one's sub-event)
        first = _scan_bytes(data, b, b_end, byte_limit, 1)
        return first if first < byte_limit else _scan_bytes(data, b, b_end, byte_limit, 0)
    return _scan_bytes(data, b, b_end, byte_limit, want_super)


@njit(cache=True, nogil=True)
def _scan_bytes(data, b, b_end, byte_limit, want_super):
    magic_at = _WORD_BYTES * _H_MAGIC
    attributes_at = _WORD_BYTES * _H_ATTRIBUTES_2
    size_at = _WORD_BYTES * _H_SIZE
    magic0 = _MAGIC & _BYTE_MASK
    q = b
    while q < b_end and q + _MIN_HEADER_BYTES <= byte_limit:
        if data[q + magic_at] == magic0 and _byte_word(data, q + magic_at) == _MAGIC:
            size = _byte_word(data, q + size_at)
            if size % _WORD_BYTES == 0 and size >= _MIN_HEADER_BYTES and size <= byte_limit - q:
                is_super = 1 if (_byte_word(data, q + attributes_at) & _SUPER) != 0 else 0
                if is_super == want_super:
                    return q
        q += 1
    return byte_limit


@njit(cache=True, nogil=True)
def _known_type(t):
    for known in _KNOWN_TYPES:
        if t == known:
            return True
    return False


@njit(cache=True, nogil=True)
def index_events(words, data, byte_limit, start, stop, want_super, allow_shift, out):
    """Walk top-level DATE events from word ``start``; fill at most len(out.offset) rows of ``out``
    (:data:`IndexColumns`).

    ``data`` is the same buffer as uint8 (``byte_limit`` bytes of it usable).
    After damage the reader resynchronises to the next plausible event start:
    word by word, or — ``allow_shift`` — at any byte offset. A size that runs
    past ``stop`` is untrusted when an event starts after it (``EVENT_BAD_SIZE``);
    only when none does is the buffer truncated.

    Returns (events indexed, next word, truncated flag, last super flag,
    lost-sync flag: the last event was garbage with no event after it,
    shift: byte offset of the next event when it is not word-aligned, else -1
    — the caller re-aligns the buffer there and calls again).
    Rejected events are indexed too, with their issue in ``out.status``.
    """
    capacity = out.offset.shape[0]
    p = start
    n = 0
    truncated = False
    lost_sync = False
    shift = -1
    sized = False  # the row before (in this call) was skipped by its own size: accepted, or rejected with a trusted size
    while p < stop and n < capacity:
        lost_sync = False
        issue, size_words = _check_event(words, p, stop)
        out.offset[n] = p
        out.status[n] = issue
        out.size[n] = size_words
        out.type[n] = -1
        out.run[n] = -1
        out.burst[n] = -1
        out.event[n] = -1
        out.trigger[n] = 0
        out.time[n] = 0
        out.super_event[n] = False
        out.ldc[n] = 0
        if issue == 0:
            burst_event = words[p + _H_BURST_EVENT]
            out.type[n] = words[p + _H_TYPE] & _TYPE_MASK
            out.run[n] = words[p + _H_RUN]
            out.burst[n] = (burst_event >> _BURST_SHIFT) & _BURST_MASK
            out.event[n] = burst_event & _EVENT_MASK
            out.trigger[n] = ((words[p + _H_TRIGGER_0] >> _TRIGGER_LOW_SHIFT)
                              | (words[p + _H_TRIGGER_1] << _TRIGGER_HIGH_SHIFT)) & _WORD_MASK
            out.time[n] = words[p + _H_TIME]
            is_super = (words[p + _H_ATTRIBUTES_2] & _SUPER) != 0
            out.super_event[n] = is_super
            out.ldc[n] = words[p + _H_LDC]
            if _known_type(out.type[n]):
                # a known type: its super-event bit tells what the stream is made of (a damaged header may not)
                want_super = 1 if is_super else 0
            p += size_words
            sized = True
        elif size_words > 0 and issue != _ISSUE_TRUNCATED:
            p += size_words
            sized = True
        else:
            # untrusted start: find the next plausible one
            if allow_shift and issue != _ISSUE_TRUNCATED and sized:
                # bytes lost inside the event before: the next one may start inside its claimed size
                prev = out.offset[n - 1]
                # (not knowing the stream yet: only a super event, never a sub-event of the one before)
                inside = want_super if want_super >= 0 else 1
                b = _resync_bytes(data, _WORD_BYTES * prev + _MIN_HEADER_BYTES, _WORD_BYTES * p, byte_limit, inside)
                if b < byte_limit:
                    if b % _WORD_BYTES != 0:
                        shift = b
                    out.size[n - 1] = b // _WORD_BYTES - prev  # the event before ends where this one starts
                    p = b // _WORD_BYTES
                    if shift >= 0:
                        break
                    continue
            if allow_shift:
                b = _resync_bytes(data, _WORD_BYTES * p + 1, byte_limit, byte_limit, want_super)
                if b >= byte_limit:
                    nxt = stop
                elif b % _WORD_BYTES == 0:
                    nxt = min(b // _WORD_BYTES, stop)
                else:
                    nxt = b // _WORD_BYTES  # the shifted event starts inside this word
                    shift = b
            else:
                nxt = _resync(words, p + 1, stop, want_super)
            if issue == _ISSUE_TRUNCATED:
                if nxt >= stop and shift < 0:
                    # nothing starts after it: the buffer really ends inside this event
                    n += 1
                    truncated = True
                    p = stop
                    break
                out.status[n] = _ISSUE_BAD_SIZE
            out.size[n] = nxt - p
            lost_sync = nxt >= stop and shift < 0
            p = nxt
            sized = False
            if shift >= 0:
                n += 1
                break
        n += 1
    return n, p, truncated, want_super, lost_sync, shift


@njit(cache=True, nogil=True)
def _log(log, k, src, kind, detail, word_offset):
    """Record one issue of row ``k`` (``word_offset``: where in ``words``). The rare path: it may read
    the :data:`IssueLog` tuple (each array read from a named tuple costs numba an atomic reference count,
    so the per-channel path below gets its arrays one by one instead)."""
    i = log.counters[0]
    if i < log.records.shape[0]:
        record = log.records[i]
        record.event = k
        record.src_id = src
        record.kind = kind
        record.detail = detail
        record.offset = word_offset * _WORD_BYTES
    log.counters[0] = i + 1
    if kind < _FIRST_NOTICE:
        log.event_errors[k] += 1


@njit(cache=True, nogil=True, inline="always")
def _bad_marker(words, first, nwords):
    """The word index of the first data word in [first, first + nwords) with a wrong marker, or -1.

    Branch-free on good data: every marker equals NEXT iff the AND and the OR
    of the words both carry it, so the loop is a vectorised reduction.
    """
    base = np.uint64(first)
    all_and = _WORD_MASK
    any_or = 0
    for i in range(np.uint64(1), np.uint64(nwords)):  # unsigned: no negative-index check, see .estimators
        w = words[base + i]
        all_and &= w
        any_or |= w
    if (words[first] >> _MARKER_SHIFT) != _MARKER_FIRST:
        return first
    if nwords > 1 and ((all_and >> _MARKER_SHIFT) != _MARKER_NEXT or (any_or >> _MARKER_SHIFT) != _MARKER_NEXT):
        for i in range(1, nwords):  # rare: find the first bad one for the log
            if (words[first + i] >> _MARKER_SHIFT) != _MARKER_NEXT:
                return first + i
    return -1


@njit(cache=True, nogil=True, inline="always")
def _store_channel(k, slot, words, first, n, gain, params, nsamples, estimates, saturated, samples,
                   pedestal_even, pedestal_odd, amp, full_scale):
    """One good channel (n samples from data word ``first``, its estimators) into (row k, slot)."""
    nsamples[k, slot] = n
    estimates[_PEDESTAL_EVEN, k, slot] = pedestal_even
    estimates[_PEDESTAL_ODD, k, slot] = pedestal_odd
    estimates[_AMPLITUDE, k, slot] = amp
    estimates[_ENERGY, k, slot] = estimators.energy(amp, gain[slot], params.threshold)
    saturated[k, slot] = full_scale
    if params.with_samples:
        for j in range(min(n, samples.shape[-1])):
            half = j // _SAMPLES_PER_WORD
            if j % _SAMPLES_PER_WORD == 0:
                samples[k, slot, j] = estimators.even_sample(words, first, half)
            else:
                samples[k, slot, j] = estimators.odd_sample(words, first, half)


@njit(cache=True, nogil=True, _nrt=False)
def _decode_msadc(words, a, b, k, src, event_number, lookup, gain, params, nsamples, estimates, saturated, samples,
                  log):
    """MSADC data format 3 chip data in words [a, b) of event row k.

    A channel's results are written only once the whole channel has checked
    out, so a damaged channel never overwrites an earlier good copy.
    """
    vector = estimators.vector_window(params.pedestal_samples)
    q = a
    while q < b:
        h = words[np.uint64(q)]  # unsigned: no negative-index check (q >= a >= 0)
        key = h >> _ADC_KEY_SHIFT
        size = (h >> _ADC_SIZE_SHIFT) & _ADC_SIZE_MASK
        if key == _ADC_KEY_PLACEHOLDER and size == 1:
            _log(log, k, src, _ISSUE_MISSING, (h >> _ADC_MODULE_SHIFT) & _ADC_MODULE_MASK, q)
            q += 1
            continue
        if key != _ADC_KEY:
            _log(log, k, src, _ISSUE_ADC_BAD_KEY, h, q)
            return
        if size == 0 or q + size > b:
            _log(log, k, src, _ISSUE_ADC_BAD_SIZE, size, q)
            return
        end = q + size
        if (h & _ADC_EVENT_MASK) != (event_number & _ADC_EVENT_MASK):
            _log(log, k, src, _ISSUE_ADC_EVENT, h & _ADC_EVENT_MASK, q)
            q = end
            continue
        adc_id = (h >> _ADC_ID_SHIFT) & _ADC_ID_MASK
        port = (h >> _ADC_PORT_SHIFT) & _ADC_PORT_MASK
        base = (src * _PORTS + port) * _CH_PER_PORT + adc_id * _CH_PER_ADC
        r = q + 1
        while r < end:
            ch = words[np.uint64(r)]  # unsigned, as above
            if (ch >> _CH_ID_SHIFT) != _CHANNEL_ID:
                _log(log, k, src, _ISSUE_CH_ID, ch, r)
                break
            n = (ch >> _CH_SAMPLES_SHIFT) & _CH_SAMPLES_MASK
            nwords = (n + _SAMPLES_PER_WORD - 1) // _SAMPLES_PER_WORD
            if n == 0 or r + 1 + nwords > end:
                _log(log, k, src, _ISSUE_CH_SAMPLES, n, r)
                break
            chan_id = (ch >> _CH_CHAN_SHIFT) & _CH_CHAN_MASK
            if n == _VECTOR_SAMPLES and vector:
                # the common channel: markers and estimators in one piece of vector code
                pedestal_even, pedestal_odd, amp, full_scale, markers_good = estimators.channel32(
                    words, r + 1, params.pedestal_samples)
                bad_marker = -1 if markers_good else _bad_marker(words, r + 1, nwords)
            else:
                bad_marker = _bad_marker(words, r + 1, nwords)
                if bad_marker < 0:
                    pedestal_even, pedestal_odd, amp, full_scale = estimators.channel(
                        words, r + 1, n, params.pedestal_samples)
            if bad_marker >= 0:
                _log(log, k, src, _ISSUE_MARKER, words[bad_marker] >> _MARKER_SHIFT, bad_marker)
                break
            slot = lookup[base + chan_id]
            if slot < 0:
                _log(log, k, src, _ISSUE_UNKNOWN_CH, port * _CH_PER_PORT + adc_id * _CH_PER_ADC + chan_id, r)
            else:
                _store_channel(k, slot, words, r + 1, n, gain, params, nsamples, estimates, saturated, samples,
                               pedestal_even, pedestal_odd, amp, full_scale)
            r += 1 + nwords
        q = end


@njit(cache=True, nogil=True, _nrt=False)
def _decode_equipments(words, a, b, k, event_number, burst, src_kind, lookup, gain, params,
                       nsamples, estimates, saturated, samples, events, log):
    """Equipments (equipment header + S-Link block) in words [a, b) of event row k."""
    q = a
    while q < b:
        esize = np.int64(words[q + _EQ_SIZE])
        if b - q < _EQ_WORDS:
            _log(log, k, -1, _ISSUE_EQ_SIZE, esize, q)
            return
        if esize % _WORD_BYTES != 0 or esize < _WORD_BYTES * _EQ_WORDS or q + esize // _WORD_BYTES > b:
            _log(log, k, np.int64(words[q + _EQ_ID]), _ISSUE_EQ_SIZE, esize, q)
            return
        ew = esize // _WORD_BYTES
        src = np.int64(words[q + _EQ_ID])
        s = q + _EQ_WORDS
        if ew < _EQ_WORDS + _SL_WORDS or (words[s] & _SL_SIZE_MASK) + _EQ_WORDS != ew:
            kind = _ISSUE_SL_SIZE
        elif ((words[s] >> _SL_SRC_SHIFT) & _SL_SRC_MASK) != src:
            kind = _ISSUE_SL_SRC
        elif (words[s + 1] & _SL_EVENT_MASK) != event_number:
            kind = _ISSUE_SL_EVENT
        elif ((words[s + 1] >> _SL_SPILL_SHIFT) & _SL_SPILL_MASK) != (burst & _SL_SPILL_MASK):
            kind = _ISSUE_SL_SPILL
        else:
            kind = 0
        if kind != 0:
            _log(log, k, src, kind, words[s] if ew > _EQ_WORDS else 0, s)
            q += ew
            continue
        c0 = s + _SL_WORDS
        c1 = q + ew
        what = src_kind[src] if src < _MAX_SRC else 0
        if what == _SRC_MSADC:
            _decode_msadc(words, c0, c1, k, src, event_number, lookup, gain, params, nsamples, estimates, saturated,
                          samples, log)
        elif what == _SRC_SCALERS:
            m = c1 - c0
            if m < _N_SCALERS:
                _log(log, k, src, _ISSUE_SCALERS_SHORT, m, c0)
            scalers = events.scalers
            for i in range(min(m, _N_SCALERS)):
                scalers[k, i] = words[c0 + i]
        elif what == _SRC_TRIGGER_TIME:
            if c1 > c0:
                events.trigger_time[k] = words[c0]
        else:
            _log(log, k, src, _ISSUE_UNKNOWN_SRC, 0, q)
        q += ew


@njit(cache=True, nogil=True, inline="always")
def add_slot_sums(i, nsamples, pedestal_even, pedestal_odd, amplitude, saturated, threshold, counts, sums):
    """Add row i's read-out slots to the per-slot statistics: counts of presence, hits (amplitude >
    ``threshold``) and saturation; sums and sums of squares of both pedestals and of hit amplitudes.
    Absent slots are skipped (presence is nearly constant per slot: the branch predicts well)."""
    for j in range(nsamples.shape[1]):
        if nsamples[i, j] == 0:
            continue
        a = pedestal_even[i, j]
        b = pedestal_odd[i, j]
        x = amplitude[i, j]
        h = x > threshold
        xh = x * h  # branch-free: hits are not predictable
        counts[_PRESENT, j] += 1
        counts[_HITS, j] += h
        counts[_SATURATED, j] += saturated[i, j]
        sums[_PE, j] += a
        sums[_PE2, j] += a * a
        sums[_PO, j] += b
        sums[_PO2, j] += b * b
        sums[_AMP, j] += xh
        sums[_AMP2, j] += xh * xh


@njit(cache=True, nogil=True, inline="always")
def _clear_slot(k, slot, estimates, saturated):
    saturated[k, slot] = False
    for e in range(estimates.shape[0]):
        estimates[e, k, slot] = 0.0


@njit(cache=True, nogil=True, inline="always")
def _start_row(k, nsamples, previous):
    """Row k is about to be decoded: remember which slots it held (``previous``), then clear its ``nsamples``."""
    for slot in range(nsamples.shape[1]):
        previous[slot] = nsamples[k, slot]
        nsamples[k, slot] = 0


@njit(cache=True, nogil=True, _nrt=False)
def decode_events(words, rows, setup, params, channels, events, log, slot_sums):
    """Decode every accepted (status 0) row of ``rows`` (:data:`EventRows`) into row k of
    ``channels`` (:data:`ChannelOutputs`) and ``events`` (:data:`EventOutputs`), issues into ``log``
    (:data:`IssueLog`), with the channel map ``setup`` (:data:`DecodeSetup`) and estimator ``params``.

    The channel outputs arrive *clean*: wherever ``nsamples`` is 0 the estimates are 0.0 and
    ``saturated`` False (fresh zeros, or what this kernel left in reused buffers). So a row is
    reset by clearing its ``nsamples`` only, and afterwards the estimates of the slots that were
    read out before (``channels.previous``) but not now; a channel read out now overwrites all
    of its outputs. Zero-suppressed rows are thus never zeroed whole (4.2 kB per event).

    Rows with ``slot_sums.select`` set are added to ``slot_sums`` (:data:`SlotSums`) as soon as they
    are decoded, while they are in the cache (the same sums, in the same order, as
    :func:`add_slot_sums` over the finished outputs row by row).
    """
    # the arrays the per-channel path writes, read out of their tuples once
    src_kind, lookup, gain = setup.src_kind, setup.lookup, setup.gain
    nsamples, estimates, saturated, samples = channels.nsamples, channels.estimates, channels.saturated, channels.samples
    previous = channels.previous
    pedestal_even, pedestal_odd = estimates[_PEDESTAL_EVEN], estimates[_PEDESTAL_ODD]
    amplitude = estimates[_AMPLITUDE]
    select, slot_counts, slot_totals = slot_sums.select, slot_sums.counts, slot_sums.sums
    ldc_mask = events.ldc_mask
    offsets, sizes, status = rows.offset, rows.size, rows.status
    nslots = nsamples.shape[1]
    for k in range(offsets.shape[0]):
        _start_row(k, nsamples, previous)
        if status[k] == 0:
            _decode_row(words, offsets[k], sizes[k], k, src_kind, lookup, gain, params, nsamples, estimates,
                        saturated, samples, events, ldc_mask, log)
        # slots read out before but not now: found 16 at a time by a vector compare, then cleared one by one
        for group in range(nslots // _SLOT_LANES):
            stale = np.int64(_vector.stale_slots16(previous, nsamples, k, group * _SLOT_LANES))
            while stale != 0:
                _clear_slot(k, group * _SLOT_LANES + trailing_zeros(stale), estimates, saturated)
                stale &= stale - 1
        for slot in range(nslots - nslots % _SLOT_LANES, nslots):
            if previous[slot] != 0 and nsamples[k, slot] == 0:
                _clear_slot(k, slot, estimates, saturated)
        if select.shape[0] and select[k]:
            add_slot_sums(k, nsamples, pedestal_even, pedestal_odd, amplitude, saturated, slot_sums.threshold,
                          slot_counts, slot_totals)


@njit(cache=True, nogil=True, _nrt=False)
def decode_planned_events(words, rows, planned, setup, params, channels, events, log, slot_sums):
    """:func:`decode_events` of built super events whose sub-events were not gathered: ``words`` holds each
    row's 17-word super header (what the event builder writes) and the sub-events are read where they
    were received, as ``planned`` (:data:`PlannedSubEvents`) says. Every output, issue offsets included,
    is what :func:`decode_events` gives for the gathered words, provided each planned sub-event's header
    has the DATE magic and gives its planned size (the wrapper's caller checks; else it gathers).

    The row loop is :func:`decode_events`' written out again: with the end of a row (stale slots, slot
    sums) as a shared inline helper instead, decode_events took 5–10 % longer (same process, A/B)."""
    src_kind, lookup, gain = setup.src_kind, setup.lookup, setup.gain
    nsamples, estimates, saturated, samples = channels.nsamples, channels.estimates, channels.saturated, channels.samples
    previous = channels.previous
    pedestal_even, pedestal_odd = estimates[_PEDESTAL_EVEN], estimates[_PEDESTAL_ODD]
    amplitude = estimates[_AMPLITUDE]
    select, slot_counts, slot_totals = slot_sums.select, slot_sums.counts, slot_sums.sums
    ldc_mask = events.ldc_mask
    offsets, status = rows.offset, rows.status
    nslots = nsamples.shape[1]
    for k in range(offsets.shape[0]):
        _start_row(k, nsamples, previous)
        if status[k] == 0:
            _decode_planned_row(words, offsets[k], k, planned, src_kind, lookup, gain, params, nsamples, estimates,
                                saturated, samples, events, ldc_mask, log)
        # slots read out before but not now: found 16 at a time by a vector compare, then cleared one by one
        for group in range(nslots // _SLOT_LANES):
            stale = np.int64(_vector.stale_slots16(previous, nsamples, k, group * _SLOT_LANES))
            while stale != 0:
                _clear_slot(k, group * _SLOT_LANES + trailing_zeros(stale), estimates, saturated)
                stale &= stale - 1
        for slot in range(nslots - nslots % _SLOT_LANES, nslots):
            if previous[slot] != 0 and nsamples[k, slot] == 0:
                _clear_slot(k, slot, estimates, saturated)
        if select.shape[0] and select[k]:
            add_slot_sums(k, nsamples, pedestal_even, pedestal_odd, amplitude, saturated, slot_sums.threshold,
                          slot_counts, slot_totals)


@njit(cache=True, nogil=True, _nrt=False)
def _decode_planned_row(words, p, k, planned, src_kind, lookup, gain, params, nsamples, estimates, saturated,
                        samples, events, ldc_mask, log):
    """Row k as :func:`_decode_row` decodes a super event, its header at word ``p`` of ``words``, its
    sub-events (``planned.first[k]`` … ``first[k + 1]``) each in its payload: the same checks in the same
    order, and issue offsets moved to where the gathered words would hold the sub-event."""
    burst_event = words[p + _H_BURST_EVENT]
    event_number = burst_event & _EVENT_MASK
    burst = (burst_event >> _BURST_SHIFT) & _BURST_MASK
    subs, records, counters = planned.subs, log.records, log.counters
    for j in range(planned.first[k], planned.first[k + 1]):
        payload = subs[j, _PLAN_PAYLOAD]
        q = subs[j, _PLAN_OFFSET]
        sub_end = q + subs[j, _PLAN_WORDS]
        sub = words_at(planned.address[payload], planned.length[payload])
        shift = planned.position[j] - q  # gathered word offset - word offset in the payload
        issue, sub_words = _check_event(sub, q, sub_end)
        if issue != 0:
            _log(log, k, -1, issue, 0, q + shift)
            if sub_words == 0 or issue == _ISSUE_TRUNCATED:
                break
            continue
        if (
            (sub[q + _H_TYPE] & _TYPE_MASK) != (words[p + _H_TYPE] & _TYPE_MASK)
            or sub[q + _H_RUN] != words[p + _H_RUN]
            or sub[q + _H_BURST_EVENT] != burst_event
        ):
            _log(log, k, -1, _ISSUE_SUB, sub[q + _H_LDC], q + shift)
            continue
        ldc_mask[k] |= np.uint32(1) << np.uint32(min(sub[q + _H_LDC], _LDC_MASK_TOP))
        logged = counters[0]
        _decode_equipments(sub, q + sub[q + _H_HEADER_SIZE] // _WORD_BYTES, q + sub_words, k, event_number,
                           burst, src_kind, lookup, gain, params, nsamples, estimates, saturated, samples,
                           events, log)
        for i in range(logged, min(counters[0], records.shape[0])):
            records[i].offset += shift * _WORD_BYTES


@njit(cache=True, nogil=True, _nrt=False)
def _decode_row(words, p, size, k, src_kind, lookup, gain, params, nsamples, estimates, saturated, samples, events,
                ldc_mask, log):
    """The accepted DATE event of ``size`` words at word ``p`` (a super event or a plain one) into row k."""
    end = p + size
    header_words = words[p + _H_HEADER_SIZE] // _WORD_BYTES
    burst_event = words[p + _H_BURST_EVENT]
    event_number = burst_event & _EVENT_MASK
    burst = (burst_event >> _BURST_SHIFT) & _BURST_MASK
    if (words[p + _H_ATTRIBUTES_2] & _SUPER) == 0:
        ldc_mask[k] |= np.uint32(1) << np.uint32(min(words[p + _H_LDC], _LDC_MASK_TOP))
        _decode_equipments(words, p + header_words, end, k, event_number, burst, src_kind, lookup, gain, params,
                           nsamples, estimates, saturated, samples, events, log)
        return
    q = p + header_words
    while q < end:
        issue, sub_words = _check_event(words, q, end)
        if issue != 0:
            _log(log, k, -1, issue, 0, q)
            if sub_words == 0 or issue == _ISSUE_TRUNCATED:
                break
            q += sub_words
            continue
        if (
            (words[q + _H_TYPE] & _TYPE_MASK) != (words[p + _H_TYPE] & _TYPE_MASK)
            or words[q + _H_RUN] != words[p + _H_RUN]
            or words[q + _H_BURST_EVENT] != words[p + _H_BURST_EVENT]
        ):
            _log(log, k, -1, _ISSUE_SUB, words[q + _H_LDC], q)
            q += sub_words
            continue
        ldc_mask[k] |= np.uint32(1) << np.uint32(min(words[q + _H_LDC], _LDC_MASK_TOP))
        _decode_equipments(words, q + words[q + _H_HEADER_SIZE] // _WORD_BYTES, q + sub_words, k, event_number,
                           burst, src_kind, lookup, gain, params, nsamples, estimates, saturated, samples,
                           events, log)
        q += sub_words
