"""Private numba kernels of the event builder (wrappers: :func:`.builder.copy_events`,
:func:`.builder.write_super_headers`) and of the message scan that feeds it (:func:`.envelope.scan_payload`),
apart from :mod:`.builder` so that it imports no numba: the kernels are also compiled ahead of time
(decoders/_aot.py), and a process whose kernels all come from there never starts numba."""

from __future__ import annotations

import numba
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

from ..decoders import layout as L
from ..decoders._addresses import words_at
from ..decoders.kernel_args import PLAN_OFFSET as _OFFSET, PLAN_PAYLOAD as _PAYLOAD, PLAN_WORDS as _WORDS

_HDR = L.DATE_HEADER_WORDS
_HDR_BYTES = L.DATE_HEADER_BYTES
_H_SIZE = L.H_SIZE
_H_HEADER_SIZE = L.H_HEADER_SIZE
_H_ATTR2 = L.H_ATTRIBUTES_2
_H_LDC = L.H_LDC
_H_GDC = L.H_GDC
_SUPER = L.SUPER_EVENT_BIT
_H_MAGIC = L.H_MAGIC
_MAGIC = L.DATE_MAGIC

SOB_KEY, EOB_KEY, NO_SPILL_KEY = L.SOB_KEY, L.EOB_KEY, L.NO_SPILL_KEY
_PHYSICS, _CALIBRATION = L.PHYSICS_EVENT, L.CALIBRATION_EVENT
_SOB, _EOB = L.START_OF_BURST, L.END_OF_BURST


@numba.njit(cache=True, nogil=True)
def summarize_scan(status, etype, event, run, spill, keys, bursts):  # pragma: no cover - compiled
    """A message's walked rows (the header walk's status, type, event number, run and spill columns):
    the whole events before the first rejected row, their sort keys and spills (as int64, into ``keys`` and
    ``bursts``), and whether its spill events all carry one (run, spill).

    Returns (events, the first rejected row's status or 0, the first spill event's row or -1, one spill)."""
    rows = status.shape[0]
    n, bad = rows, 0
    for i in range(rows):
        if status[i] != 0:
            n, bad = i, status[i]
            break
    first, one = -1, True
    for i in range(n):
        t = etype[i]
        if t == _PHYSICS or t == _CALIBRATION:
            k = np.int64(event[i]) + 1
        elif t == _SOB:
            k = np.int64(SOB_KEY)
        elif t == _EOB:
            k = np.int64(EOB_KEY)
        else:
            k = np.int64(NO_SPILL_KEY)
        keys[i] = k
        bursts[i] = spill[i]
        if k != NO_SPILL_KEY:
            if first < 0:
                first = i
            elif run[i] != run[first] or spill[i] != spill[first]:
                one = False
    return n, np.int64(bad), first, one


@intrinsic
def _memcpy_words(typingctx, dst, dst_start, src, src_start, count):  # pragma: no cover - compiled
    """``dst[dst_start:dst_start + count] = src[src_start:src_start + count]`` as one ``memcpy`` (uint32
    arrays that do not overlap; bounds checked by the caller). Numba compiles a slice assignment to a word
    loop with alias checks, half the speed of ``memcpy`` on events of a few kB."""
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        dst_arr, d0, src_arr, s0, n = args
        d = context.make_array(signature.args[0])(context, builder, dst_arr)
        s = context.make_array(signature.args[2])(context, builder, src_arr)
        cgutils.raw_memcpy(builder, builder.gep(d.data, [d0]), builder.gep(s.data, [s0]), n, 4)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def copy_events(dst, dst_pos, src, src_off, sizes):  # pragma: no cover - compiled
    for e in range(sizes.shape[0]):
        _memcpy_words(dst, dst_pos[e], src, src_off[e], sizes[e])


@numba.njit(cache=True, nogil=True, inline="always")
def _super_header(dst, p, size, gdc):  # pragma: no cover - compiled
    # the super event's header is its first sub-event's (written right after it), then marked as built
    for w in range(_HDR):
        dst[p + w] = dst[p + _HDR + w]
    dst[p + _H_SIZE] = np.uint32(size * 4)
    dst[p + _H_HEADER_SIZE] = np.uint32(_HDR_BYTES)
    dst[p + _H_ATTR2] = dst[p + _H_ATTR2] | np.uint32(_SUPER)
    dst[p + _H_LDC] = np.uint32(0)
    dst[p + _H_GDC] = np.uint32(gdc)


@numba.njit(cache=True, nogil=True)
def write_headers(dst, g_pos, g_size, gdc):  # pragma: no cover - compiled
    for g in range(g_pos.shape[0]):
        _super_header(dst, g_pos[g], g_size[g], gdc)


@numba.njit(cache=True, nogil=True)
def plan_headers(address, length, subs, groups, gdc, dst, position, g_pos, g_size):  # pragma: no cover - compiled
    # one pass over a valid plan: where each super event and sub-event lies once gathered, the super headers
    # written from the first sub-events' (read where they were received); counts the sub-events whose header
    # lacks the DATE magic or gives another size than planned
    irregular = 0
    pos = 0
    for g in range(groups.shape[0] - 1):
        q = pos + _HDR
        for j in range(groups[g], groups[g + 1]):
            n = subs[j, _WORDS]
            src = words_at(address[subs[j, _PAYLOAD]], length[subs[j, _PAYLOAD]])
            at = subs[j, _OFFSET]
            if src[at + _H_MAGIC] != _MAGIC or src[at + _H_SIZE] != n * 4:
                irregular += 1
            if j == groups[g]:
                _memcpy_words(dst, q, src, at, _HDR)
            position[j] = q
            q += n
        g_pos[g] = pos
        g_size[g] = q - pos
        _super_header(dst, pos, q - pos, gdc)
        pos = q
    return irregular
