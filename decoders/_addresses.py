"""A numba intrinsic: the words a received buffer holds, seen from a kernel by its address.

A decoder worker's task is a plan over the payloads the service received (one buffer per message, up to
a few dozen per task). Rather than gather the events into one array first (a copy of every byte), the
decode kernel reads each sub-event where it lies, through :func:`words_at`: a read-only uint32 array of
``n`` words at ``address`` — an array's ``ctypes.data``, passed in an int64 array with the lengths. The
array owns nothing; the caller keeps the buffers alive for the call and has checked every offset and
size against ``n`` (:func:`~na64_online.daq.builder.validate_plan`). Indexing it is then as checked as
any array argument (``NUMBA_BOUNDSCHECK=1`` checks it too).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from . import layout as L

#: what :func:`words_at` returns: the type read-only word arguments have in the compiled kernels
WORDS_VIEW = types.Array(types.uint32, 1, "C", readonly=True)


@intrinsic
def words_at(typingctx, address, n):  # pragma: no cover - compiled
    """The ``n`` uint32 words at memory ``address``, as a read-only C array (no copy, no owner)."""
    if not (isinstance(address, types.Integer) and isinstance(n, types.Integer)):
        return None
    sig = WORDS_VIEW(types.int64, types.intp)

    def codegen(context, builder, signature, args):
        address_value, n_value = args
        view = context.make_array(WORDS_VIEW)(context, builder)
        word = ir.IntType(L.WORD_BYTES * L.BYTE_BITS)
        data = builder.inttoptr(address_value, word.as_pointer())
        itemsize = context.get_constant(types.intp, L.WORD_BYTES)
        populate_array(view, data=data, shape=cgutils.pack_array(builder, [n_value]),
                       strides=cgutils.pack_array(builder, [itemsize]), itemsize=itemsize, meminfo=None)
        return view._getvalue()

    return sig, codegen
