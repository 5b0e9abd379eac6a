"""The ahead-of-time compiled kernels (decoders/_aot.py): the same results as the JIT kernels, every kernel the
wrappers call is in the list, and a stale or foreign build is never used."""

from __future__ import annotations

import ast
import importlib
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from conftest import VECTORS
from na64_online.decoders import _aot
from na64_online.decoders._aot import KERNELS, kernels
from na64_online.decoders.decode import SlotSums, decode_events, index_bytes
from na64_online.decoders.reconstruct import DetectorGeometry, reconstruct, tally_chunk
from na64_online.monitor.health import ChannelStats
from na64_online.monitor.histograms import SpillHistograms
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig

ROOT = Path(__file__).resolve().parents[1]
REBUILD = "the ahead-of-time compiled kernels are {}: run `bash tools/setup` (or pip install -e .) to build them"


def compiled_module():
    module, why_not = _aot._load_extension()
    if module is None:
        pytest.fail(REBUILD.format(why_not))
    return module


@contextmanager
def kernels_from(kind: str, calls: dict[str, int]):
    """Every wrapper's kernel the ``kind`` one ('aot': the compiled function, refusing any argument it was not
    compiled for, never falling back; 'jit': numba's), counting calls per kernel."""
    module = compiled_module() if kind == "aot" else None
    saved = {name: kernels.__dict__.pop(name, None) for name in KERNELS}

    def install(name):
        function = getattr(module, name) if module is not None else kernels.jit(name)
        fit = _aot.arguments_fit(KERNELS[name])

        def call(*args):
            if module is not None:
                assert fit(args), f"{name}: arguments of types the compiled kernel was not built for"
            calls[name] = calls.get(name, 0) + 1
            return function(*args)
        setattr(kernels, name, call)

    for name in KERNELS:
        install(name)
    try:
        yield
    finally:
        for name, value in saved.items():
            kernels.__dict__.pop(name, None)
            if value is not None:
                setattr(kernels, name, value)


def chain(data: bytes, channel_map, with_samples: bool) -> dict[str, np.ndarray]:
    """Index, decode (with per-slot sums), reconstruct, fill the histograms and the channel statistics of ``data``."""
    words, index = index_bytes(data)
    out = {f"index.{name}": getattr(index, name) for name in
           ("offset", "size", "status", "type", "run", "spill", "event", "trigger_mask", "time", "super_event",
            "ldc", "skipped", "source_offset")}
    stats = ChannelStats(channel_map)
    select = np.asarray(index.status == 0)
    decoded = decode_events(words, index, channel_map, with_samples=with_samples, slot_sums=stats.slot_sums(select))
    for name in ("nsamples", "pedestal_even", "pedestal_odd", "amplitude", "energy", "saturated", "trigger_time_us",
                 "scalers", "ldc_mask", "errors", "issues", "samples"):
        value = getattr(decoded, name)
        if value is not None:
            out[f"decoded.{name}"] = np.array(value)
    physics = reconstruct(decoded, DetectorGeometry.from_map(channel_map))
    for name, value in vars(physics).items():
        if isinstance(value, np.ndarray):
            out[f"physics.{name}"] = value.copy()
    detectors = physics.detector_energy.shape[1]
    out["tally_kev"], out["tally_hits"] = np.zeros(detectors, np.int64), np.zeros(detectors, np.int64)
    out["tally"] = np.array(list(vars(tally_chunk(decoded, physics, out["tally_kev"], out["tally_hits"])).values()),
                            dtype=object)
    histograms = SpillHistograms()
    histograms.fill(decoded, physics)  # the histogram fill kernel
    out.update({f"histograms.{name}": np.asarray(h.view(flow=True)).copy() for name, h in histograms._coded.items()})
    out.update({f"hists.{name}": np.asarray(h.view(flow=True)).copy() for name, h in histograms.hists.items()})
    refill = ChannelStats(channel_map)
    refill.fill(decoded, select=select)  # the health kernel itself (not the decoder's sums)
    out.update(slot_counts=stats.counts.copy(), slot_sums=stats.sums.copy(), refill_counts=refill.counts.copy(),
               refill_sums=refill.sums.copy())
    return out


def _mutated(seed: int) -> bytes:
    """small.dat with bytes overwritten, inserted and deleted at random places."""
    rng = np.random.default_rng(seed)
    data = bytearray((VECTORS / "small.dat").read_bytes())
    for _ in range(int(rng.integers(1, 12))):
        at = int(rng.integers(0, len(data)))
        what = int(rng.integers(0, 3))
        if what == 0:
            data[at] = int(rng.integers(0, 256))
        elif what == 1:
            data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8))
        else:
            del data[at:at + int(rng.integers(1, 4))]
    return bytes(data)


def _simulated(zero_suppression: bool) -> bytes:
    sim = ReadoutSimulator(SimulationConfig(events_per_spill=120, seed=11, run_events=False,
                                            zero_suppression=zero_suppression, hadron_fraction=0.3))
    return next(iter(sim.spills())).raw()


def _inputs():
    from test_decode import CASES  # the test vectors of every kind of damage

    yield "small.dat", lambda: (VECTORS / "small.dat").read_bytes()
    for name in sorted(CASES):
        yield f"damage-{name}", lambda name=name: CASES[name]
    for seed in range(8):
        yield f"mutated-{seed}", lambda seed=seed: _mutated(seed)
    yield "simulated-zero-suppressed", lambda: _simulated(True)
    yield "simulated-full-readout", lambda: _simulated(False)
    yield "random-bytes", lambda: np.random.default_rng(3).integers(0, 256, 40_000, dtype=np.uint8).tobytes()


INPUTS = dict(_inputs())


@pytest.mark.parametrize("with_samples", [False, True], ids=["estimates", "samples"])
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_compiled_and_jit_kernels_give_identical_outputs(name, with_samples, channel_map):
    data = INPUTS[name]()
    with kernels_from("aot", {}):
        compiled = chain(data, channel_map, with_samples)
    with kernels_from("jit", {}):
        jit = chain(data, channel_map, with_samples)
    assert compiled.keys() == jit.keys()
    for key in compiled:
        a, b = compiled[key], jit[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        same = a == b if a.dtype.fields else (a == b) | ((a != a) & (b != b))  # NaN where both are NaN
        assert np.all(same), f"{name}: {key} differs"


def _plan(seed: int):
    """Random payloads of whole sub-events and a plan gathering them into super events, as the builder makes."""
    from na64_online.decoders import layout

    rng = np.random.default_rng(seed)
    payloads, subs = [], []
    for p in range(int(rng.integers(1, 4))):
        sizes = rng.integers(layout.DATE_HEADER_WORDS, 60, int(rng.integers(1, 12)))
        payloads.append(rng.integers(0, 1 << 32, int(sizes.sum()), dtype=np.uint32))
        offsets = np.cumsum(sizes) - sizes
        subs += [(p, int(o), int(n)) for o, n in zip(offsets, sizes)]
    subs = np.array([subs[i] for i in rng.permutation(len(subs))], dtype=np.int64)
    cuts = np.unique(rng.integers(1, len(subs), 3)) if len(subs) > 1 else np.zeros(0, np.int64)
    groups = np.concatenate(([0], cuts, [len(subs)])).astype(np.int64)
    return payloads, subs, groups, int(rng.integers(0, 100))


@pytest.mark.parametrize("seed", range(6))
def test_compiled_and_jit_event_builder_kernels_give_identical_outputs(seed):
    from na64_online.daq.builder import gather

    from na64_online.daq.builder import plan_headers

    payloads, subs, groups, gdc = _plan(seed)
    outputs = {}
    for kind in ("aot", "jit"):
        with kernels_from(kind, {}):
            heads = np.zeros(int(subs[:, 2].sum()) + 17 * (len(groups) - 1), np.uint32)
            outputs[kind] = gather(payloads, subs, groups, gdc).copy(), plan_headers(payloads, subs, groups, gdc,
                                                                                     out=heads)[0]
    for compiled, jit in zip(outputs["aot"], outputs["jit"]):
        assert compiled.dtype == jit.dtype and np.array_equal(compiled, jit)


def planned_decode(data: bytes, channel_map) -> dict[str, np.ndarray]:
    """The super events of ``data`` as a worker decodes a task: where their sub-events lie (planned rows)."""
    from na64_online.daq.builder import BuiltChunk, plan_headers
    from na64_online.decoders.decode import index_events

    chunk = BuiltChunk.from_words(1, 1, 0, np.frombuffer(data, np.uint32))
    heads, planned = plan_headers(chunk.payloads, chunk.subs, chunk.groups, chunk.gdc)
    assert planned is not None
    decoded = decode_events(heads, index_events(heads), channel_map, planned=planned)
    return {name: np.array(getattr(decoded, name)) for name in ("nsamples", "energy", "saturated", "scalers",
                                                                 "ldc_mask", "errors", "issues")}


@pytest.mark.parametrize("name", ["small.dat", "simulated-zero-suppressed", "simulated-full-readout"])
def test_compiled_and_jit_planned_decodes_give_identical_outputs(name, channel_map):
    data = INPUTS[name]()
    with kernels_from("aot", {}):
        compiled = planned_decode(data, channel_map)
    with kernels_from("jit", {}):
        jit = planned_decode(data, channel_map)
    assert len(compiled["nsamples"]) and all(np.array_equal(compiled[k], jit[k]) for k in compiled)


def message_scan(data: bytes) -> dict:
    """``data`` scanned as one readout message's payload (the service's receive step)."""
    from na64_online.daq.envelope import scan_payload

    scan = scan_payload(data)
    return {name: getattr(scan, name) for name in ("offsets", "sizes", "types", "keys", "run", "spill", "reason",
                                                    "error_offset", "header_mismatch")}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_compiled_and_jit_message_scans_give_identical_outputs(name):
    data = INPUTS[name]()
    with kernels_from("aot", {}):
        compiled = message_scan(data)
    with kernels_from("jit", {}):
        jit = message_scan(data)
    for key, value in compiled.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == jit[key].dtype and np.array_equal(value, jit[key]), key
        else:
            assert value == jit[key], key


# ---------------------------------------------------------------- the list of kernels
KERNEL_MODULES = sorted({k.module for k in KERNELS.values()})


def _package_modules_with_kernels() -> list[str]:
    """Every package module defining a numba function (a file mentioning njit), by its installed name."""
    names = []
    for top, prefix in (("na64_online", "na64_online"), *((layer, f"na64_online.{layer}")
                                                          for layer in ("daq", "decoders", "monitor", "sim", "web"))):
        for path in (ROOT / top).rglob("*.py"):
            if "njit" in path.read_text():
                parts = path.relative_to(ROOT / top).with_suffix("").parts
                names.append(".".join((prefix, *parts)))
    return sorted(set(names))


#: kernels the wrappers call that are deliberately left to the JIT, with the reason (none now)
JIT_ONLY: dict[str, str] = {}


def _entry_kernels() -> set[str]:
    """Numba dispatchers of the package no other kernel calls and numba does not inline: the ones Python calls."""
    from numba.core.registry import CPUDispatcher

    dispatchers = {}
    for module_name in _package_modules_with_kernels():
        module = importlib.import_module(module_name)
        for attr, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.py_func.__module__ == module_name:
                dispatchers[f"{module_name}.{attr}"] = value
    called = set()
    for caller in dispatchers.values():
        code_names = set(caller.py_func.__code__.co_names)
        for name in code_names:
            target = caller.py_func.__globals__.get(name)
            candidates = [target] + [getattr(target, n, None) for n in code_names] if target is not None else []
            for candidate in candidates:
                for full, dispatcher in dispatchers.items():
                    if candidate is dispatcher and dispatcher is not caller:
                        called.add(full)
    return {full for full, d in dispatchers.items()
            if full not in called and d.targetoptions.get("inline", "never") != "always"}


def test_every_kernel_the_wrappers_call_is_compiled_ahead_of_time():
    listed = {f"{k.module}.{k.function}" for k in KERNELS.values()}
    entries = _entry_kernels()
    assert "na64_online.decoders._kernels.decode_events" in entries  # the scan finds kernels at all
    missing = entries - listed - set(JIT_ONLY)
    assert not missing, f"kernels called from Python but not in decoders/_aot.py KERNELS: {sorted(missing)}"
    assert not (listed - entries), "KERNELS lists functions that are not kernels the wrappers call"
    assert set(JIT_ONLY) <= entries


def test_the_compiled_module_has_every_listed_kernel_for_its_signature():
    module = compiled_module()
    for name in KERNELS:
        assert callable(getattr(module, name)), name


def test_the_compiled_kernels_let_the_gil_go_as_their_jit_twins_do():
    """Every kernel is ``nogil=True``; pycc's exports kept the GIL, so that a decoder thread stalled the service
    loop (``workers = 0``) and two threads' kernels ran one at a time. One compiled call copies 20 000 blocks
    in turn into an 80 MB array while a Python thread watches it: seeing the middle block written and the last
    not yet is only possible while the call runs, which a call holding the GIL does not let any thread see."""
    module = compiled_module()
    n, words = 20_000, 1024
    src = np.arange(1, words + 1, dtype=np.uint32)
    starts, offsets, sizes = np.arange(n, dtype=np.int64) * words, np.zeros(n, np.int64), np.full(n, words, np.int64)
    dst = np.zeros(n * words, dtype=np.uint32)
    assert _aot.arguments_fit(KERNELS["copy_events"])((dst, starts, src, offsets, sizes))
    middle, last = (n // 2) * words, (n - 1) * words
    seen = threading.Event()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if dst[last] == 0 and dst[middle] != 0:  # in this order: the copy is in between
                seen.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for _ in range(5):  # a loaded machine may leave the watcher unscheduled for a whole call
            dst[:] = 0
            module.copy_events(dst, starts, src, offsets, sizes)
            if seen.is_set():
                break
    finally:
        stop.set()
        watcher.join()
    assert np.array_equal(dst.reshape(n, words), np.broadcast_to(src, (n, words)))
    assert seen.is_set(), "no other thread ran while a compiled kernel did: it holds the GIL"


def _find(name: str):
    try:
        return importlib.util.find_spec(name)
    except ImportError:  # a name of a module, not a module
        return None


def test_kernel_sources_cover_every_package_module_the_kernels_import():
    """The staleness hash reads every module a kernel module imports from the package (their constants are
    compiled in): a new import that is not hashed would let a stale build through."""
    hashed = set(_aot.KERNEL_SOURCES)
    for module_name in KERNEL_MODULES + ["na64_online.decoders.estimators"]:
        path = Path(importlib.util.find_spec(module_name).origin)
        package = module_name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                for alias in node.names:  # ``from X import a``: the module X.a if there is one, else X's names
                    name = f"{target}.{alias.name}"
                    spec = _find(name) or _find(target)
                    if spec is not None and spec.origin and not spec.origin.endswith("__init__.py"):
                        assert spec.name in hashed, f"{module_name} imports {spec.name}, not in _aot.KERNEL_SOURCES"


# ---------------------------------------------------------------- the choice
def test_a_stale_build_is_not_used_and_aot_mode_says_why(monkeypatch, tmp_path):
    compiled_module()
    paths = {m: _aot._source_path(m) for m in _aot.KERNEL_SOURCES}
    edited = tmp_path / "_kernels.py"
    edited.write_text(paths["na64_online.decoders._kernels"].read_text() + "\n# an edit\n")
    assert _aot.source_hash({**paths, "na64_online.decoders._kernels": edited}) != _aot.source_hash()
    monkeypatch.setattr(_aot, "source_hash", lambda paths=None: "another")
    module, why_not = _aot._load_extension()
    assert module is None and "stale" in why_not
    monkeypatch.setenv(_aot.KERNELS_ENV, "aot")
    with pytest.raises(_aot.AotUnavailable, match="stale"):
        _aot._Kernels().decode_events
    monkeypatch.setenv(_aot.KERNELS_ENV, "auto")
    fresh = _aot._Kernels()
    assert fresh.status().startswith("jit (stale") and fresh.decode_events is fresh.jit("decode_events")


def test_a_build_for_another_cpu_is_not_used(monkeypatch):
    compiled_module()
    monkeypatch.setattr(_aot, "cpu_flags", lambda: frozenset({"fpu"}))
    module, why_not = _aot._load_extension()
    assert module is None and "another CPU" in why_not


def test_jit_is_forced_by_the_switch_and_by_bounds_checks(monkeypatch):
    compiled_module()
    monkeypatch.setenv(_aot.KERNELS_ENV, "jit")
    assert _aot._Kernels().status().startswith("jit")
    monkeypatch.setenv(_aot.KERNELS_ENV, "auto")
    monkeypatch.setenv("NUMBA_BOUNDSCHECK", "1")
    assert _aot._Kernels().status().startswith("jit")
    monkeypatch.delenv("NUMBA_BOUNDSCHECK")
    assert _aot._Kernels().status() == "aot"
    monkeypatch.setenv(_aot.KERNELS_ENV, "fast")
    with pytest.raises(ValueError, match="NA64_KERNELS"):
        _aot._Kernels().status()


def test_arguments_the_kernel_was_not_compiled_for_take_the_jit_kernel(monkeypatch, caplog):
    """The compiled code trusts its argument types: anything else (here a strided energy plane) goes to numba."""
    compiled_module()
    monkeypatch.setenv(_aot.KERNELS_ENV, "auto")
    chooser = _aot._Kernels()
    rng = np.random.default_rng(0)
    energy = rng.random((5, 12))
    args = lambda e: (e, np.arange(4, dtype=np.int64), np.array([0, 2, 4], dtype=np.int64),  # noqa: E731
                      np.zeros(2, dtype=np.bool_), np.arange(3, dtype=np.int64), np.zeros((5, 2)),
                      np.zeros(5, dtype=np.int64), np.zeros(5))
    fit = _aot.arguments_fit(KERNELS["group_sums"])
    strided = np.asfortranarray(energy)
    assert fit(args(energy)) and not fit(args(strided))
    assert not fit(args(energy.astype(np.float32))) and not fit(args(energy)[:-1])
    with caplog.at_level("INFO", logger="na64_online.decoders._aot"):
        for e in (energy, strided):
            a = args(e)
            chooser.group_sums(*a)
            assert np.array_equal(a[5][:, 0], energy[:, 0] + energy[:, 1])
    assert [r.getMessage() for r in caplog.records] == ["kernel group_sums: arguments of other types than compiled: JIT"]


def test_the_comparison_reaches_every_compiled_kernel(channel_map):
    """small.dat, its scan as a message, one builder plan and small.dat decoded as planned rows — inputs of the
    comparisons above — call every kernel of the list."""
    from na64_online.daq.builder import gather

    calls: dict[str, int] = {}
    with kernels_from("aot", calls):
        chain(INPUTS["small.dat"](), channel_map, False)
        message_scan(INPUTS["small.dat"]())
        gather(*_plan(0))
        planned_decode(INPUTS["small.dat"](), channel_map)
    assert set(calls) == set(KERNELS)
