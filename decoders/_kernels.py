"""Private numba kernels: arrays and scalars in, arrays out, no Python objects.

Callers are the wrappers in :mod:`.decode`, which validate dtypes, contiguity
and sizes before entering here. The kernels still check every size they read
from the data against the buffer before indexing (numba does no bounds
checks), so no input bytes can make them read or write out of range.

Issue logging: ``issues_*`` arrays of capacity ``len(issues_kind)``; the
running total is ``counters[0]``. A log that overflows keeps counting, and
the wrapper reruns with a larger log, so counts are always exact.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import layout as L
from ..errors import FIRST_NOTICE, Issue

# numba freezes module globals: plain ints, derived once from the layout.
_MAGIC = L.DATE_MAGIC
_MAGIC_SWAPPED = L.DATE_MAGIC_SWAPPED
_MIN_HEADER_BYTES = L.DATE_HEADER_BYTES
_MIN_VERSION = L.DATE_MIN_VERSION
_HDR_WORDS = L.DATE_HEADER_WORDS
_EQ_WORDS = L.EQUIPMENT_HEADER_WORDS
_SL_WORDS = L.SLINK_HEADER_WORDS
_SUPER = L.SUPER_EVENT_BIT
_TYPE_MASK = L.TYPE_MASK

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

_SRC_MSADC = 1
_SRC_SCALERS = 2
_SRC_TRIGGER_TIME = 3
_N_SCALERS = L.N_SCALERS
_PORTS = L.PORTS
_CH_PER_PORT = L.CHANNELS_PER_PORT
_CH_PER_ADC = L.CHANNELS_PER_ADC
_MAX_SRC = L.MAX_SRC_ID


@njit(cache=True, nogil=True)
def _bswap32(x):
    return ((x & 0xFF) << 24) | ((x & 0xFF00) << 8) | ((x >> 8) & 0xFF00) | ((x >> 24) & 0xFF)


@njit(cache=True, nogil=True)
def _check_event(words, p, limit):
    """Validate the DATE event starting at word ``p`` that must end by ``limit``.

    Returns (issue, size in words). issue 0: good. A size of 0 with an issue
    means the size cannot be trusted: the caller must resynchronise.
    """
    remaining = limit - p
    if remaining < 2:
        return _ISSUE_TRUNCATED, 0
    size = np.int64(words[p])
    magic = words[p + 1]
    if magic == _MAGIC_SWAPPED:
        swapped = np.int64(_bswap32(np.uint32(size)))
        if swapped % 4 == 0 and swapped >= _MIN_HEADER_BYTES and swapped // 4 <= remaining:
            return _ISSUE_SWAPPED, swapped // 4
        return _ISSUE_SWAPPED, 0
    if magic != _MAGIC:
        return _ISSUE_MAGIC, 0
    if size % 4 != 0 or size < _MIN_HEADER_BYTES:
        return _ISSUE_HDR_SIZE, 0
    size_words = size // 4
    if size_words > remaining:
        return _ISSUE_TRUNCATED, size_words
    if words[p + 3] < _MIN_VERSION:
        return _ISSUE_OLD, size_words
    header = np.int64(words[p + 2])
    if header < _MIN_HEADER_BYTES or header % 4 != 0 or header > size:
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
    while q + 2 <= limit:
        if words[q + 1] == _MAGIC:
            size = np.int64(words[q])
            if size % 4 == 0 and size >= _MIN_HEADER_BYTES and size // 4 <= limit - q:
                is_super = 1 if (words[q + 13] & _SUPER) != 0 else 0
                if is_super == want_super:
                    return q
        q += 1
    return limit


@njit(cache=True, nogil=True)
def _byte_word(data, b):
    """The little-endian word at byte ``b`` of the uint8 array ``data`` (any alignment)."""
    return (np.int64(data[b]) | (np.int64(data[b + 1]) << 8) | (np.int64(data[b + 2]) << 16)
            | (np.int64(data[b + 3]) << 24))


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
    magic0 = _MAGIC & 0xFF
    q = b
    while q < b_end and q + _MIN_HEADER_BYTES <= byte_limit:
        if data[q + 4] == magic0 and _byte_word(data, q + 4) == _MAGIC:
            size = _byte_word(data, q)
            if size % 4 == 0 and size >= _MIN_HEADER_BYTES and size <= byte_limit - q:
                is_super = 1 if (_byte_word(data, q + 52) & _SUPER) != 0 else 0
                if is_super == want_super:
                    return q
        q += 1
    return byte_limit


@njit(cache=True, nogil=True)
def index_events(
    words, data, byte_limit, start, stop, want_super, allow_shift,
    out_offset, out_size, out_status, out_type, out_run, out_burst, out_event,
    out_trigger, out_time, out_super, out_ldc,
):
    """Walk top-level DATE events from word ``start``; fill at most len(out_offset).

    ``data`` is the same buffer as uint8 (``byte_limit`` bytes of it usable).
    After damage the reader resynchronises to the next plausible event start:
    word by word, or — ``allow_shift`` — at any byte offset. A size that runs
    past ``stop`` is untrusted when an event starts after it (``EVENT_BAD_SIZE``);
    only when none does is the buffer truncated.

    Returns (events indexed, next word, truncated flag, last super flag,
    lost-sync flag: the last event was garbage with no event after it,
    shift: byte offset of the next event when it is not word-aligned, else -1
    — the caller re-aligns the buffer there and calls again).
    Rejected events are indexed too, with their issue in ``out_status``.
    """
    capacity = out_offset.shape[0]
    p = start
    n = 0
    truncated = False
    lost_sync = False
    shift = -1
    sized = False  # the row before (in this call) was skipped by its own size: accepted, or rejected with a trusted size
    while p < stop and n < capacity:
        lost_sync = False
        issue, size_words = _check_event(words, p, stop)
        out_offset[n] = p
        out_status[n] = issue
        out_size[n] = size_words
        out_type[n] = -1
        out_run[n] = -1
        out_burst[n] = -1
        out_event[n] = -1
        out_trigger[n] = 0
        out_time[n] = 0
        out_super[n] = False
        out_ldc[n] = 0
        if issue == 0:
            out_type[n] = words[p + 4] & _TYPE_MASK
            out_run[n] = words[p + 5]
            out_burst[n] = words[p + 7] >> 20
            out_event[n] = words[p + 7] & 0xFFFFF
            out_trigger[n] = ((words[p + 8] >> 1) | (words[p + 9] << 31)) & 0xFFFFFFFF
            out_time[n] = words[p + 16]
            is_super = (words[p + 13] & _SUPER) != 0
            out_super[n] = is_super
            out_ldc[n] = words[p + 14]
            t = out_type[n]
            if t == 1 or t == 2 or (t >= 5 and t <= 8):
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
                prev = out_offset[n - 1]
                # (not knowing the stream yet: only a super event, never a sub-event of the one before)
                inside = want_super if want_super >= 0 else 1
                b = _resync_bytes(data, 4 * prev + _MIN_HEADER_BYTES, 4 * p, byte_limit, inside)
                if b < byte_limit:
                    if b % 4 != 0:
                        shift = b
                    out_size[n - 1] = b // 4 - prev  # the event before ends where this one starts
                    p = b // 4
                    if shift >= 0:
                        break
                    continue
            if allow_shift:
                b = _resync_bytes(data, 4 * p + 1, byte_limit, byte_limit, want_super)
                if b >= byte_limit:
                    nxt = stop
                elif b % 4 == 0:
                    nxt = min(b // 4, stop)
                else:
                    nxt = b // 4  # the shifted event starts inside this word
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
                out_status[n] = _ISSUE_BAD_SIZE
            out_size[n] = nxt - p
            lost_sync = nxt >= stop and shift < 0
            p = nxt
            sized = False
            if shift >= 0:
                n += 1
                break
        n += 1
    return n, p, truncated, want_super, lost_sync, shift


@njit(cache=True, nogil=True)
def _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
         k, src, kind, detail, word_offset):
    i = counters[0]
    if i < issues_kind.shape[0]:
        issues_event[i] = k
        issues_src[i] = src
        issues_kind[i] = kind
        issues_detail[i] = detail
        issues_offset[i] = word_offset * 4
    counters[0] = i + 1
    if kind < _FIRST_NOTICE:
        event_errors[k] += 1


@njit(cache=True, nogil=True)
def _decode_msadc(
    words, a, b, k, src, event_number,
    lookup, gain, ped_samples, threshold,
    nsamples, ped_even, ped_odd, amplitude, energy, saturated, samples, with_samples, scratch,
    issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
):
    """MSADC data format 3 chip data in words [a, b) of event row k.

    A channel's results are written only once the whole channel has checked
    out, so a damaged channel never overwrites an earlier good copy.
    """
    nmax = samples.shape[2]
    q = a
    while q < b:
        h = words[q]
        key = h >> 30
        size = (h >> 12) & 0xFFF
        if key == 0 and size == 1:
            _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                 k, src, _ISSUE_MISSING, (h >> 25) & 0x1F, q)
            q += 1
            continue
        if key != 3:
            _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                 k, src, _ISSUE_ADC_BAD_KEY, h, q)
            return
        if size == 0 or q + size > b:
            _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                 k, src, _ISSUE_ADC_BAD_SIZE, size, q)
            return
        end = q + size
        if (h & 0xFFF) != (event_number & 0xFFF):
            _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                 k, src, _ISSUE_ADC_EVENT, h & 0xFFF, q)
            q = end
            continue
        adc_id = (h >> 25) & 0x3
        port = (h >> 27) & 0x7
        base = (src * _PORTS + port) * _CH_PER_PORT + adc_id * _CH_PER_ADC
        r = q + 1
        while r < end:
            ch = words[r]
            if (ch >> 30) != 1:
                _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                     k, src, _ISSUE_CH_ID, ch, r)
                break
            n = (ch >> 16) & 0x1FF
            nwords = (n + 1) >> 1
            if n == 0 or r + 1 + nwords > end:
                _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                     k, src, _ISSUE_CH_SAMPLES, n, r)
                break
            chan_id = (ch >> 26) & 0xF
            slot = lookup[base + chan_id]
            # unpack the data words into scratch, checking each word's marker
            bad_marker = -1
            for i in range(nwords):
                w = words[r + 1 + i]
                if (w >> 30) != (1 if i == 0 else 2):
                    bad_marker = r + 1 + i
                    break
                scratch[2 * i] = w & 0xFFF
                scratch[2 * i + 1] = (w >> 12) & 0xFFF
            if bad_marker < 0:
                # pedestals: mean of samples 0 .. ped_samples-1, even and odd apart
                sum_even = 0.0
                sum_odd = 0.0
                sat = False
                n_ped = min(ped_samples, n)
                for j in range(0, n_ped, 2):
                    sum_even += scratch[j]
                    sat |= scratch[j] == 4095
                for j in range(1, n_ped, 2):
                    sum_odd += scratch[j]
                    sat |= scratch[j] == 4095
                cnt_even = (n_ped + 1) >> 1
                cnt_odd = n_ped >> 1
                pe = sum_even / cnt_even if cnt_even > 0 else 0.0
                po = sum_odd / cnt_odd if cnt_odd > 0 else 0.0
                # amplitude: largest sample - pedestal(parity) after the pedestal window
                amp = 0.0
                if n > n_ped:
                    amp = -1.0e300
                    for j in range(n_ped, n):
                        sj = scratch[j]
                        sat |= sj == 4095
                        d = sj - (pe if (j & 1) == 0 else po)
                        if d > amp:
                            amp = d
            if bad_marker >= 0:
                _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                     k, src, _ISSUE_MARKER, words[bad_marker] >> 30, bad_marker)
                break
            if slot < 0:
                _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                     k, src, _ISSUE_UNKNOWN_CH, port * _CH_PER_PORT + adc_id * _CH_PER_ADC + chan_id, r)
            else:
                nsamples[k, slot] = n
                ped_even[k, slot] = pe
                ped_odd[k, slot] = po
                amplitude[k, slot] = amp
                energy[k, slot] = gain[slot] * amp if amp > threshold else 0.0
                saturated[k, slot] = sat
                if with_samples:
                    for j in range(min(n, nmax)):
                        samples[k, slot, j] = scratch[j]
            r += 1 + nwords
        q = end


@njit(cache=True, nogil=True)
def _decode_equipments(
    words, a, b, k, event_number, burst,
    src_kind, lookup, gain, ped_samples, threshold,
    nsamples, ped_even, ped_odd, amplitude, energy, saturated, samples, with_samples, scratch,
    trigger_time, scalers,
    issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
):
    """Equipments (equipment header + S-Link block) in words [a, b) of event row k."""
    q = a
    while q < b:
        esize = np.int64(words[q])
        if b - q < _EQ_WORDS:
            _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                 k, -1, _ISSUE_EQ_SIZE, esize, q)
            return
        if esize % 4 != 0 or esize < 4 * _EQ_WORDS or q + esize // 4 > b:
            _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                 k, np.int64(words[q + 2]), _ISSUE_EQ_SIZE, esize, q)
            return
        ew = esize // 4
        src = np.int64(words[q + 2])
        s = q + _EQ_WORDS
        if ew < _EQ_WORDS + _SL_WORDS or (words[s] & 0xFFFF) + _EQ_WORDS != ew:
            kind = _ISSUE_SL_SIZE
        elif ((words[s] >> 16) & 0x3FF) != src:
            kind = _ISSUE_SL_SRC
        elif (words[s + 1] & 0xFFFFF) != event_number:
            kind = _ISSUE_SL_EVENT
        elif ((words[s + 1] >> 20) & 0x7FF) != (burst & 0x7FF):
            kind = _ISSUE_SL_SPILL
        else:
            kind = 0
        if kind != 0:
            _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                 k, src, kind, words[s] if ew > _EQ_WORDS else 0, s)
            q += ew
            continue
        c0 = s + _SL_WORDS
        c1 = q + ew
        what = src_kind[src] if src < _MAX_SRC else 0
        if what == _SRC_MSADC:
            _decode_msadc(
                words, c0, c1, k, src, event_number, lookup, gain, ped_samples, threshold,
                nsamples, ped_even, ped_odd, amplitude, energy, saturated, samples, with_samples, scratch,
                issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
            )
        elif what == _SRC_SCALERS:
            m = c1 - c0
            if m < _N_SCALERS:
                _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                     k, src, _ISSUE_SCALERS_SHORT, m, c0)
            for i in range(min(m, _N_SCALERS)):
                scalers[k, i] = words[c0 + i]
        elif what == _SRC_TRIGGER_TIME:
            if c1 > c0:
                trigger_time[k] = words[c0]
        else:
            _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                 k, src, _ISSUE_UNKNOWN_SRC, 0, q)
        q += ew


@njit(cache=True, nogil=True)
def decode_events(
    words, offsets, sizes, status,
    src_kind, lookup, gain, ped_samples, threshold,
    nsamples, ped_even, ped_odd, amplitude, energy, saturated, samples, with_samples,
    trigger_time, scalers, ldc_mask,
    issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
):
    """Decode every accepted (status 0) indexed event into row k of the outputs."""
    scratch = np.empty(512, dtype=np.uint16)  # one channel's samples (n < 512)
    nslots = nsamples.shape[1]
    for k in range(offsets.shape[0]):
        # outputs arrive uninitialised: every row starts with every channel absent
        for slot in range(nslots):
            nsamples[k, slot] = 0
            ped_even[k, slot] = 0.0
            ped_odd[k, slot] = 0.0
            amplitude[k, slot] = 0.0
            energy[k, slot] = 0.0
            saturated[k, slot] = False
        if status[k] != 0:
            continue
        p = offsets[k]
        end = p + sizes[k]
        header_words = words[p + 2] // 4
        event_number = words[p + 7] & 0xFFFFF
        burst = words[p + 7] >> 20
        if (words[p + 13] & _SUPER) == 0:
            ldc = words[p + 14]
            ldc_mask[k] |= np.uint32(1) << np.uint32(min(ldc, 31))
            _decode_equipments(
                words, p + header_words, end, k, event_number, burst, src_kind, lookup, gain, ped_samples, threshold,
                nsamples, ped_even, ped_odd, amplitude, energy, saturated, samples, with_samples, scratch,
                trigger_time, scalers,
                issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
            )
            continue
        q = p + header_words
        while q < end:
            issue, sub_words = _check_event(words, q, end)
            if issue != 0:
                _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                     k, -1, issue, 0, q)
                if sub_words == 0 or issue == _ISSUE_TRUNCATED:
                    break
                q += sub_words
                continue
            if (
                (words[q + 4] & _TYPE_MASK) != (words[p + 4] & _TYPE_MASK)
                or words[q + 5] != words[p + 5]
                or words[q + 7] != words[p + 7]
            ):
                _log(issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
                     k, -1, _ISSUE_SUB, words[q + 14], q)
                q += sub_words
                continue
            ldc = words[q + 14]
            ldc_mask[k] |= np.uint32(1) << np.uint32(min(ldc, 31))
            _decode_equipments(
                words, q + words[q + 2] // 4, q + sub_words, k, event_number, burst,
                src_kind, lookup, gain, ped_samples, threshold,
                nsamples, ped_even, ped_odd, amplitude, energy, saturated, samples, with_samples, scratch,
                trigger_time, scalers,
                issues_event, issues_src, issues_kind, issues_detail, issues_offset, counters, event_errors,
            )
            q += sub_words
