"""Compile the kernels of :data:`._aot.KERNELS` ahead of time into ``na64_online._aot_kernels`` (numba.pycc).

Run at build time (``setup.py``: the wheel and the editable install), never at import:

    python -m na64_online.decoders._aot_build OUTPUT_DIR

It compiles each kernel's own Python function (``dispatcher.py_func``; the
kernels it calls are compiled from their dispatchers as the JIT would) for the
argument types written in :data:`._aot.KERNELS` — the return type is inferred —
for this machine's CPU (``host``, as numba's JIT does), and writes beside the
extension its build record ``_aot_kernels.json``: the sha256 of the kernel
sources, this CPU's flags, the numba version and a random build id that the
extension also returns (``aot_build_id()``), which :mod:`._aot` checks before
using it. Needs numba (with its ``pycc``, deprecated since numba 0.57 and still
shipped by 0.68) and a C compiler.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import sys
import tempfile
import time
import warnings
from pathlib import Path

from . import _aot


def numba_type(kind):
    """The numba type of an argument of :data:`._aot.KERNELS`."""
    from numba import from_dtype, types

    if isinstance(kind, _aot.Arr):
        dtype = kind.np_dtype
        return types.Array(from_dtype(dtype), kind.ndim, "C", readonly=not kind.writes,
                           aligned=dtype.isalignedstruct or not dtype.fields)
    if isinstance(kind, _aot.Tup):
        cls = getattr(_aot.A, kind.cls)
        return types.BaseTuple.from_types([numba_type(k) for k in kind.items], cls)
    return {_aot.INT: types.int64, _aot.FLOAT: types.float64, _aot.BOOL: types.boolean}[kind]


def signature(kernel: _aot.Kernel) -> tuple:
    """The argument types of ``kernel`` as numba types (return type inferred)."""
    return tuple(numba_type(k) for k in kernel.args)


@contextlib.contextmanager
def _exports_release_the_gil():
    """Compile pycc's exports as the JIT compiles a ``nogil=True`` kernel: the Python wrapper lets the GIL go
    for the call (pycc's own flags keep it, so that two threads calling compiled kernels ran one at a time,
    where their JIT twins ran side by side). Every kernel of :data:`._aot.KERNELS` is ``nogil=True``."""
    from numba.pycc import compiler as pycc_compiler

    class ReleaseGilFlags(pycc_compiler.Flags):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.release_gil = True

    flags = pycc_compiler.Flags
    pycc_compiler.Flags = ReleaseGilFlags
    try:
        yield
    finally:
        pycc_compiler.Flags = flags


def build(output_dir: str | os.PathLike, verbose: bool = False) -> Path:
    """Compile every kernel of :data:`._aot.KERNELS` into ``output_dir``; returns the extension's path."""
    from numba.core.errors import NumbaPendingDeprecationWarning

    with warnings.catch_warnings():
        # pycc is pending deprecation (numba 0.57): still shipped, no replacement yet (docs/startup.md)
        warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)
        from numba.pycc import CC

    class OrderedCC(CC):
        # pycc compiles the exports in the order of their names; numba 0.68.1 then fails to type group_sums
        # (its inlined _pairwise's loop variable: "No conversion from int64 to Literal[int](8)") when another
        # export was compiled before it in the same module. In the order of KERNELS (group_sums first) it types.
        @property
        def _export_entries(self):
            order = {name: i for i, name in enumerate(_aot.KERNELS)}
            return sorted(self._exported_functions.values(), key=lambda e: (order.get(e.symbol, len(order)), e.symbol))

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    cc = OrderedCC(_aot.EXTENSION_NAME, source_module=_aot)
    cc.output_dir = str(output_dir)
    cc.target_cpu = "host"
    cc.verbose = verbose
    build_id = secrets.randbits(62)
    for name, kernel in _aot.KERNELS.items():
        dispatcher = getattr(importlib.import_module(kernel.module), kernel.function)
        cc.export(name, signature(kernel))(dispatcher.py_func)
    exec_globals = {"BUILD_ID": build_id}
    exec("def aot_build_id():\n    return BUILD_ID\n", exec_globals)
    cc.export(_aot.BUILD_ID_FUNCTION, "int64()")(exec_globals["aot_build_id"])
    # pycc's C compiler step runs in a temporary directory; keep numba's own build folder out of the checkout
    with tempfile.TemporaryDirectory(prefix="na64-aot-") as tmp, _exports_release_the_gil():
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            cc.compile()
        finally:
            os.chdir(cwd)
    import numba

    extension = output_dir / cc.output_file
    record = {
        "source_hash": _aot.source_hash(),
        "build_id": build_id,
        "cpu_flags": sorted(_aot.cpu_flags()),
        "numba": numba.__version__,
        "python": sys.version.split()[0],
        "kernels": sorted(_aot.KERNELS),
    }
    (output_dir / (_aot.EXTENSION_NAME + ".json")).write_text(json.dumps(record, indent=1) + "\n")
    return extension


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m na64_online.decoders._aot_build OUTPUT_DIR", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    path = build(argv[0])
    print(f"na64-online: compiled {len(_aot.KERNELS)} kernels ahead of time into {path} "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
