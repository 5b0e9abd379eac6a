"""The kernels' ahead-of-time compiled twins: which kernels, with which argument types, and the choice.

``na64_online._aot_kernels`` is an extension module compiled by ``numba.pycc``
at build time (:mod:`._aot_build`, run by ``setup.py`` for the wheel and the
editable install) from the very kernel functions of :mod:`._kernels`,
:mod:`._reconstruct`, :mod:`..monitor._health_kernels`, :mod:`..monitor._histogram_kernels` and
:mod:`..daq._builder_kernels` — no second
implementation — one exported function per entry of :data:`KERNELS`, for the
argument types written there. Loading it needs no numba: a command whose
kernels all come from it (``replay``) never starts numba's compiler, which
costs well over a second per process even with every kernel cached.

The wrappers call ``kernels.<name>(...)`` (:data:`kernels`). Each name is the
compiled function when the extension

* is present, and was built from the current sources: the sha256 of every file
  in :data:`KERNEL_SOURCES` and of :data:`KERNELS` itself (:func:`source_hash`)
  equals the one it was built with — an edited kernel, or a changed constant of
  the layout, makes the whole module stale;
* was built for this CPU: the build machine's CPU flags (``/proc/cpuinfo``; the
  code is compiled for the build host's CPU like numba's JIT) are all present here,

and the arguments of the call have exactly the compiled types (dtype, number of
dimensions, C order, writable where the kernel writes: checked per call, the
compiled code trusts them). Otherwise the JIT kernel (numba, ``cache=True``)
runs — loaded on first use only. ``NA64_KERNELS=jit`` forces the JIT kernels
(so does ``NUMBA_BOUNDSCHECK=1``, as the fuzz tests run), ``NA64_KERNELS=aot`` makes a
missing, stale or foreign extension an error (:class:`AotUnavailable`) instead
of a silent fallback; ``auto`` (default) picks as above.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import kernel_args as A

log = logging.getLogger(__name__)

#: environment variable choosing the kernels: auto (default), jit, aot
KERNELS_ENV = "NA64_KERNELS"
KERNEL_MODES = ("auto", "jit", "aot")
#: the compiled module (and its build record, ``<name>.json`` beside it)
EXTENSION = "na64_online._aot_kernels"
EXTENSION_NAME = EXTENSION.rsplit(".", 1)[1]

#: every module whose text the compiled code depends on: the kernel modules and every package module
#: they import (numba freezes their constants into the code). tests/test_aot.py checks that no
#: kernel module imports a package module missing here.
KERNEL_SOURCES = (
    "na64_online.decoders._aot",
    "na64_online.decoders._aot_build",  # how they are compiled (the wrappers let the GIL go)
    "na64_online.decoders._kernels",
    "na64_online.decoders._addresses",  # the view of a received buffer by its address
    "na64_online.decoders._reconstruct",
    "na64_online.decoders.estimators",
    "na64_online.decoders._vector",  # the estimators' vector code (numba intrinsics)
    "na64_online.decoders.kernel_args",
    "na64_online.decoders.layout",
    "na64_online.decoders.channelmap",
    "na64_online.errors",
    "na64_online.monitor._health_kernels",
    "na64_online.monitor._histogram_kernels",
    "na64_online.daq._builder_kernels",
)


# ---------------------------------------------------------------- argument types (no numba here)
@dataclass(frozen=True)
class Arr:
    """A C-contiguous array argument: ``dtype`` (a numpy dtype string, or a record's field list), ``ndim``;
    ``writes``: the kernel writes it (then it must be writable; else the compiled code takes it read-only,
    so read-only and writable arrays both fit)."""

    dtype: Any
    ndim: int = 1
    writes: bool = False

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype if isinstance(self.dtype, str) else [tuple(f) for f in self.dtype])


@dataclass(frozen=True)
class Tup:
    """A named-tuple argument: the class (a name in :mod:`.kernel_args`) and its items' types."""

    cls: str
    items: tuple


INT, FLOAT, BOOL = "int64", "float64", "bool"


@dataclass(frozen=True)
class Kernel:
    """A kernel compiled ahead of time: ``module.function`` for the arguments ``args`` (one signature)."""

    module: str
    function: str
    args: tuple


def _out(dtype, ndim=1):
    return Arr(dtype, ndim, writes=True)


_ISSUE_RECORD = tuple((name, np.dtype(t).str) for name, (t, _) in A.ISSUE_DTYPE.fields.items())
_WORDS = Arr("<u4")
_BYTES = Arr("|u1")
_I8, _F8, _B1 = Arr("<i8"), Arr("<f8"), Arr("|b1")

_EVENT_ROWS = Tup("EventRows", (_I8, _I8, Arr("<i2")))
#: the decode kernels' arguments after the rows (and the planned sub-events)
_DECODE_SETUP_AND_OUTPUTS = (
    Tup("DecodeSetup", (Arr("|i1"), Arr("<i4"), _F8)),
    Tup("EstimatorParams", (INT, FLOAT, BOOL)),
    Tup("ChannelOutputs", (_out("<u2", 2), _out("<f8", 3), _out("|b1", 2), _out("<u2", 3), _out("<u2"))),
    Tup("EventOutputs", (_out("<i8"), _out("<i8", 2), _out("<u4"))),
    Tup("IssueLog", (_out(_ISSUE_RECORD), _out("<i8"), _out("<i4"))),
    Tup("SlotSums", (_B1, FLOAT, _out("<i8", 2), _out("<f8", 2))),
)

#: the kernels the wrappers call, one signature each (what the wrappers pass); tests/test_aot.py fails
#: when a kernel the wrappers call (a numba dispatcher that no other kernel calls) is missing here
KERNELS: dict[str, Kernel] = {
    # compiled in this order: group_sums first (see _aot_build.build)
    "group_sums": Kernel("na64_online.decoders._reconstruct", "group_sums", (
        Arr("<f8", 2), _I8, _I8, _B1, _I8, _out("<f8", 2), _out("<i8"), _out("<f8"),
    )),
    "index_events": Kernel("na64_online.decoders._kernels", "index_events", (
        _WORDS, _BYTES, INT, INT, INT, INT, BOOL,
        Tup("IndexColumns", (_out("<i8"), _out("<i8"), _out("<i2"), _out("<i4"), _out("<i8"), _out("<i4"),
                             _out("<i4"), _out("<u4"), _out("<i8"), _out("|b1"), _out("<i8"))),
    )),
    "decode_events": Kernel("na64_online.decoders._kernels", "decode_events", (
        _WORDS, _EVENT_ROWS, *_DECODE_SETUP_AND_OUTPUTS,
    )),
    "decode_planned_events": Kernel("na64_online.decoders._kernels", "decode_planned_events", (
        _WORDS, _EVENT_ROWS, Tup("PlannedSubEvents", (_I8, _I8, Arr("<i8", 2), _I8, _I8)),
        *_DECODE_SETUP_AND_OUTPUTS,
    )),
    "select_events": Kernel("na64_online.decoders._reconstruct", "select_events", (
        Arr("<f8", 2), _I8, _F8, Arr("<f8", 2), INT, _B1, Arr("<u4"), _I8, INT, _F8, _I8, _I8, Arr("<i8", 2), _F8,
        _out("<f8"), _out("<f8"), _out("<f8"), _out("<f8"), _out("<f8", 2), _out("<f8", 2), _out("<f8", 2),
        _out("|b1"), _out("|b1"), _out("|b1"), _out("|b1"), _out("|b1"), _out("<i8", 2),
    )),
    "tally_events": Kernel("na64_online.decoders._reconstruct", "tally_events", (
        Arr("<i2"), Arr("<i4"), _I8, _B1, _B1, _B1, _B1, Arr("<f8", 2), _I8, FLOAT, _out("<i8"), _out("<i8"),
        _out("<i8"),
    )),
    "accumulate_slot_sums": Kernel("na64_online.monitor._health_kernels", "accumulate_slot_sums", (
        Arr("<u2", 2), Arr("<f8", 2), Arr("<f8", 2), Arr("<f8", 2), Arr("|b1", 2), _B1, FLOAT,
        _out("<i8", 2), _out("<f8", 2),
    )),
    "fill_histograms": Kernel("na64_online.monitor._histogram_kernels", "fill_histograms", (
        _B1, _B1, _B1, _B1, _B1, Arr("<u4"), Arr("<i4"), _F8, _F8, _F8, _F8, Arr("<f8", 2), Arr("<f8", 2), _I8,
        INT, INT, Arr("<f8", 2), INT, *(_out("<i8"),) * 8,
    )),
    "trigger_counts": Kernel("na64_online.monitor._histogram_kernels", "trigger_counts", (
        _I8, Arr("<i8", 2), _out("<i8"),
    )),
    # the event builder (daq/builder.py: the live service and its workers)
    "copy_events": Kernel("na64_online.daq._builder_kernels", "copy_events", (
        _out("<u4"), _I8, _WORDS, _I8, _I8,
    )),
    "write_headers": Kernel("na64_online.daq._builder_kernels", "write_headers", (
        _out("<u4"), _I8, _I8, INT,
    )),
    "summarize_scan": Kernel("na64_online.daq._builder_kernels", "summarize_scan", (
        Arr("<i2"), Arr("<i4"), Arr("<i4"), _I8, Arr("<i4"), _out("<i8"), _out("<i8"),
    )),
    "plan_headers": Kernel("na64_online.daq._builder_kernels", "plan_headers", (
        _I8, _I8, Arr("<i8", 2), _I8, INT, _out("<u4"), _out("<i8"), _out("<i8"), _out("<i8"),
    )),
}

#: exported by the extension besides the kernels: the build's id (also in its JSON record)
BUILD_ID_FUNCTION = "aot_build_id"


# ---------------------------------------------------------------- staleness
def _source_path(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


def source_hash(paths: dict[str, Path | None] | None = None) -> str:
    """sha256 over the text of :data:`KERNEL_SOURCES` (by module name; ``paths``: where to read them,
    default: where they are imported from; a module that does not exist counts as absent)."""
    digest = hashlib.sha256()
    for module in KERNEL_SOURCES:
        path = paths[module] if paths is not None else _source_path(module)
        digest.update(module.encode() + b"\0" + (path.read_bytes() if path is not None else b"<absent>") + b"\0")
    return digest.hexdigest()


def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


class AotUnavailable(RuntimeError):
    """``NA64_KERNELS=aot`` and the compiled kernels cannot be used (missing, stale, another CPU)."""


def _mode() -> str:
    """The kernels asked for: ``NA64_KERNELS``; ``auto`` under ``NUMBA_BOUNDSCHECK=1`` means the JIT ones
    (the compiled code has no bounds checks)."""
    mode = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise ValueError(f"{KERNELS_ENV}={mode!r}: expected one of {', '.join(KERNEL_MODES)}")
    if mode == "auto" and os.environ.get("NUMBA_BOUNDSCHECK", "").strip() not in ("", "0"):
        return "jit"
    return mode


def _load_extension() -> tuple[Any | None, str]:
    """(the compiled module, '') if it may be used, else (None, why not)."""
    try:
        spec = importlib.util.find_spec(EXTENSION)
    except ImportError as e:  # pragma: no cover - the package itself is importable
        return None, str(e)
    if spec is None or not spec.origin:
        return None, "not built (tools/setup or the wheel build compiles it)"
    record_path = Path(spec.origin).with_name(EXTENSION_NAME + ".json")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as e:
        return None, f"no readable build record {record_path.name}: {e}"
    if record.get("source_hash") != source_hash():
        return None, "stale: built from other kernel sources (tools/setup rebuilds it)"
    missing = set(record.get("cpu_flags", ())) - cpu_flags()
    if missing:
        return None, f"built for another CPU (missing {', '.join(sorted(missing)[:5])})"
    try:
        module = importlib.import_module(EXTENSION)
    except ImportError as e:
        return None, f"cannot be loaded: {e}"
    if getattr(module, BUILD_ID_FUNCTION)() != record.get("build_id"):
        return None, "its build record belongs to another build"
    absent = [name for name in KERNELS if not hasattr(module, name)]
    if absent:
        return None, f"lacks {', '.join(absent)}"
    return module, ""


# ---------------------------------------------------------------- per-call argument check
def _checker(kind) -> Callable[[Any], bool]:
    if isinstance(kind, Arr):
        dtype, ndim, writes = kind.np_dtype, kind.ndim, kind.writes

        def array(value) -> bool:
            return (type(value) is np.ndarray and value.dtype == dtype and value.ndim == ndim
                    and value.flags.c_contiguous and (not writes or value.flags.writeable))
        return array
    if isinstance(kind, Tup):
        cls = getattr(A, kind.cls)
        items = [_checker(k) for k in kind.items]

        def named(value) -> bool:
            return type(value) is cls and all(check(v) for check, v in zip(items, value))
        return named
    if kind == INT:
        return lambda v: isinstance(v, (int, np.integer)) and -(1 << 63) <= v < (1 << 63)
    if kind == FLOAT:
        return lambda v: isinstance(v, (float, int, np.floating, np.integer))
    if kind == BOOL:
        return lambda v: isinstance(v, (bool, np.bool_))
    raise TypeError(f"unknown argument type {kind!r}")


def arguments_fit(kernel: Kernel) -> Callable[..., bool]:
    """A function telling whether call arguments have exactly the compiled types of ``kernel``."""
    checks = [_checker(k) for k in kernel.args]
    count = len(checks)

    def fit(args) -> bool:
        return len(args) == count and all(check(a) for check, a in zip(checks, args))
    return fit


# ---------------------------------------------------------------- the choice
class _Kernels:
    """``kernels.<name>``: the compiled kernel (with its per-call argument check and the JIT one as the
    fallback) or the JIT kernel, chosen once per process (see the module docstring)."""

    def __init__(self) -> None:
        self._module: Any = None
        self._why_not: str | None = None  # None: not looked yet
        self._mode: str | None = None

    def _extension(self):
        if self._why_not is None:
            self._mode = _mode()
            if self._mode == "jit":
                self._module, self._why_not = None, f"{KERNELS_ENV}=jit or NUMBA_BOUNDSCHECK=1"
            else:
                self._module, self._why_not = _load_extension()
                if self._module is None:
                    if self._mode == "aot":
                        raise AotUnavailable(f"{KERNELS_ENV}=aot, but {EXTENSION} is {self._why_not}")
                    log.info("compiled kernels not used (%s): numba compiles or loads them", self._why_not)
        return self._module

    def status(self) -> str:
        """'aot', or 'jit (why)'."""
        return "aot" if self._extension() is not None else f"jit ({self._why_not})"

    def jit(self, name: str):
        """The JIT kernel of ``name`` (imports numba and the kernel module)."""
        kernel = KERNELS[name]
        return getattr(importlib.import_module(kernel.module), kernel.function)

    def aot(self, name: str):
        """The compiled kernel of ``name`` without any check (None when not used)."""
        module = self._extension()
        return getattr(module, name) if module is not None else None

    def __getattr__(self, name: str):
        if name not in KERNELS:
            raise AttributeError(name)
        compiled = self.aot(name)
        if compiled is None:
            chosen = self.jit(name)
        else:
            fit = arguments_fit(KERNELS[name])
            jit_kernel = None

            def chosen(*args):
                nonlocal jit_kernel
                if fit(args):
                    return compiled(*args)
                if jit_kernel is None:
                    log.info("kernel %s: arguments of other types than compiled: JIT", name)
                    jit_kernel = self.jit(name)
                return jit_kernel(*args)
            chosen.__name__ = chosen.__qualname__ = name
        setattr(self, name, chosen)
        return chosen


kernels = _Kernels()
