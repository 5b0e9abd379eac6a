"""Explicit vector code for the common MSADC channel: 32 samples in 16 data words.

One channel's 16 data words are two 8-lane vectors of 32-bit words. Written
in LLVM IR (a numba intrinsic) because numba's loops over so few words stay
scalar or end in one horizontal reduction per estimate (docs/performance.md,
"Round 4"). Here each data word is repacked as two 16-bit lanes — sample 2i
in the low lane, sample 2i+1 in the high one — so one vector maximum and one
horizontal fold serve both parities, and one 32-bit horizontal sum gives both
pedestal sums (16 twelve-bit samples sum to at most 65 520: no carry between
the lanes). The marker check is a vector compare of the same words.

Pure and allocation-free; the caller has checked that the words and slots
read are inside their arrays. Numba's bounds checks do not reach into an
intrinsic, so with ``NUMBA_BOUNDSCHECK=1`` (the fuzz tests' run) these
functions check their own range the same way, and raise numba's IndexError.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import layout as L

#: data words of the channels this code handles (32 samples), and 32-bit lanes per vector
WORDS = 16
SAMPLES = WORDS * L.SAMPLES_PER_WORD
_LANES = 8
#: bits of a 16-bit lane: sample 2i in bits 0-11 of a repacked word, sample 2i+1 in bits 16-27
LANE_BITS = 16
LANE_MASK = (1 << LANE_BITS) - 1
_TO_HIGH_LANE = LANE_BITS - L.SAMPLE_ODD_SHIFT
_EVEN = L.SAMPLE_MASK
_ODD_AT_HIGH_LANE = L.SAMPLE_MASK << LANE_BITS
_MARKER_BITS = L.DATA_MARKER_MASK << L.DATA_MARKER_SHIFT
_MARKER_FIRST = L.DATA_MARKER_FIRST << L.DATA_MARKER_SHIFT
_MARKER_NEXT = L.DATA_MARKER_NEXT << L.DATA_MARKER_SHIFT

_I1, _I16, _I32 = ir.IntType(1), ir.IntType(16), ir.IntType(32)
_V32 = ir.VectorType(_I32, _LANES)
_V16 = ir.VectorType(_I16, 2 * _LANES)


def _check_bounds(context, builder, array, axis, start, count):
    """With ``NUMBA_BOUNDSCHECK=1`` (as the fuzz tests run), numba's IndexError unless ``start`` …
    ``start + count − 1`` are all indices of ``array`` along ``axis``; no code otherwise."""
    if not context.enable_boundscheck:
        return
    length = builder.extract_value(array.shape, axis)
    for index in (start, builder.add(start, ir.Constant(start.type, count - 1))):
        cgutils.do_boundscheck(context, builder, index, length, axis)


def _splat(vector_type, value):
    return ir.Constant(vector_type, [value] * vector_type.count)


def _umax(builder, a, b):
    return builder.select(builder.icmp_unsigned(">", a, b), a, b)


def _fold_pairs(builder, v):
    """The lane-pair maxima of a <16 x i16> down to one pair: (max of the even lanes, max of the odd lanes)."""
    width = v.type.count
    while width > 2:
        half = width // 2
        low = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, half), list(range(half))))
        high = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, half), list(range(half, width))))
        v = _umax(builder, low, high)
        width = half
    return v


@intrinsic
def channel_words16(typingctx, words, first, half):
    """(pedestal sums, amplitude maxima, full scale, markers good) of the 32-sample channel whose 16 data
    words start at ``words[first]``, the pedestal window being its first ``half`` words (both parities).

    Packed results, even sample in the low 16 bits, odd in the high 16: the sums of the samples of
    words 0 … half−1, the maxima of words half … 15. ``full scale``: 1 if any sample is 4095.
    ``markers good``: 1 if the first word carries the FIRST marker and the others NEXT. 0 < half < 16.
    """
    if not (isinstance(words, types.Array) and words.ndim == 1 and words.dtype == types.uint32):
        return None
    sig = types.UniTuple(types.uint32, 4)(words, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        array, first_value, half_value = args
        words_array = context.make_array(signature.args[0])(context, builder, array)
        data = words_array.data
        _check_bounds(context, builder, words_array, 0, first_value, WORDS)
        loaded = []
        for part in range(WORDS // _LANES):
            at = builder.gep(data, [builder.add(first_value, ir.Constant(first_value.type, part * _LANES))])
            loaded.append(builder.load(builder.bitcast(at, _V32.as_pointer()), align=4, typ=_V32))
        # markers: FIRST on word 0, NEXT on the others
        markers = [builder.and_(w, _splat(_V32, _MARKER_BITS)) for w in loaded]
        first_expected = ir.Constant(_V32, [_MARKER_FIRST] + [_MARKER_NEXT] * (_LANES - 1))
        good = builder.and_(builder.icmp_unsigned("==", markers[0], first_expected),
                            builder.icmp_unsigned("==", markers[1], _splat(_V32, _MARKER_NEXT)))
        markers_good = builder.icmp_unsigned("==", builder.bitcast(good, ir.IntType(_LANES)),
                                             ir.Constant(ir.IntType(_LANES), (1 << _LANES) - 1))
        # repack: even sample in the low 16-bit lane, odd sample in the high one
        packed = [builder.or_(builder.and_(w, _splat(_V32, _EVEN)),
                              builder.and_(builder.shl(w, _splat(_V32, _TO_HIGH_LANE)),
                                           _splat(_V32, _ODD_AT_HIGH_LANE))) for w in loaded]
        # pedestal words: lane index < half
        limit = builder.trunc(half_value, _I32)
        limit = builder.shuffle_vector(builder.insert_element(ir.Constant(_V32, None), limit, ir.Constant(_I32, 0)),
                                       ir.Constant(_V32, None), _splat(_V32, 0))
        in_window = [builder.icmp_unsigned("<", ir.Constant(_V32, list(range(p * _LANES, (p + 1) * _LANES))), limit)
                     for p in range(len(packed))]
        zero = _splat(_V32, 0)
        window_words = [builder.select(m, w, zero) for m, w in zip(in_window, packed)]
        after_words = [builder.select(m, zero, w) for m, w in zip(in_window, packed)]
        module = builder.module
        reduce_add = _declare(module, "llvm.vector.reduce.add.v8i32", _I32, [_V32])
        sums = builder.call(reduce_add, [builder.add(window_words[0], window_words[1])])
        tops16 = _umax(builder, builder.bitcast(after_words[0], _V16), builder.bitcast(after_words[1], _V16))
        tops = builder.bitcast(_fold_pairs(builder, tops16), _I32)
        all16 = _umax(builder, builder.bitcast(packed[0], _V16), builder.bitcast(packed[1], _V16))
        at_full = builder.icmp_unsigned("==", all16, _splat(_V16, L.ADC_SATURATION))
        full = builder.icmp_unsigned("!=", builder.bitcast(at_full, _I16), ir.Constant(_I16, 0))
        return context.make_tuple(builder, signature.return_type,
                                  [sums, tops, builder.zext(full, _I32), builder.zext(markers_good, _I32)])

    return sig, codegen


def _declare(module, name, return_type, argument_types):
    fnty = ir.FunctionType(return_type, argument_types)
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, fnty, name)


#: slots compared at once by :func:`stale_slots16` (16-bit sample counts, 16 lanes)
SLOT_LANES = 16


@intrinsic
def stale_slots16(typingctx, previous, nsamples, row, start):
    """Bit j set iff slot ``start + j`` was read out before (``previous[start + j] != 0``) but is not in
    row ``row`` now (``nsamples[row, start + j] == 0``), for the 16 slots from ``start`` (uint16 sample
    counts; ``nsamples`` C-contiguous; the caller has checked that the 16 slots exist)."""
    if not (isinstance(previous, types.Array) and previous.ndim == 1 and previous.dtype == types.uint16
            and isinstance(nsamples, types.Array) and nsamples.ndim == 2 and nsamples.dtype == types.uint16
            and nsamples.layout == "C"):
        return None
    sig = types.uint32(previous, nsamples, types.intp, types.intp)
    lanes = ir.VectorType(_I16, SLOT_LANES)

    def codegen(context, builder, signature, args):
        before_array, now_array, row_value, start_value = args
        before = context.make_array(signature.args[0])(context, builder, before_array)
        now = context.make_array(signature.args[1])(context, builder, now_array)
        width = builder.extract_value(now.shape, 1)
        _check_bounds(context, builder, before, 0, start_value, SLOT_LANES)
        _check_bounds(context, builder, now, 0, row_value, 1)
        _check_bounds(context, builder, now, 1, start_value, SLOT_LANES)
        at_now = builder.gep(now.data, [builder.add(builder.mul(row_value, width), start_value)])
        at_before = builder.gep(before.data, [start_value])
        was = builder.load(builder.bitcast(at_before, lanes.as_pointer()), align=2, typ=lanes)
        is_now = builder.load(builder.bitcast(at_now, lanes.as_pointer()), align=2, typ=lanes)
        zero = _splat(lanes, 0)
        stale = builder.and_(builder.icmp_unsigned("!=", was, zero), builder.icmp_unsigned("==", is_now, zero))
        return builder.zext(builder.bitcast(stale, ir.IntType(SLOT_LANES)), _I32)

    return sig, codegen
