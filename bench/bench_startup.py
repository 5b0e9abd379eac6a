"""Start-up of the commands (issue #11 item 3): not a test, run it by hand.

    .venv/bin/python bench/bench_startup.py                  # replay of tests/data/vectors/small.dat, 7 times
    .venv/bin/python bench/bench_startup.py --demo           # and the time to demo's first spill record
    .venv/bin/python bench/bench_startup.py --repeat 7 --baseline-rev b67446b --demo --demo-repeat 3
    .venv/bin/python bench/bench_startup.py --repeat 3 --baseline-rev b67446b --instructions   # + callgrind counts

Interleaved, each a fresh process, best (shortest) of ``--repeat`` wall-clock runs, and the best and the median
CPU time (user + system of the child; load changes it least): the interpreter alone (``python -c pass``),
``import numpy``, ``import numba`` and a script calling one cached numba kernel (numba's floor: what any command
using a JIT kernel pays), ``na64-online replay small.dat`` with the ahead-of-time compiled kernels
(``NA64_KERNELS=aot``: target < 0.5 s wall) from this checkout's wheel installed in a virtual environment of its
own (built for the run: no editable-install finder at start-up, as users and tools/wheel-check run it;
``--editable``: the checkout's editable install instead) and with the JIT ones (``NA64_KERNELS=jit``, cached);
``--baseline-rev REV``: also the replay of the package as of git REV, with its ahead-of-time kernels if it has
them (``bench_ingest.baseline_tree``: built once into the baseline tree that the other benches share), from its
wheel installed likewise (once, kept beside the tree).
``--demo``: ``na64-online demo --spills 1``, seconds from the process start to its first spill's record on
stdout, with the compiled and with the JIT kernels, and with the baseline's package (its workers too),
``--demo-repeat`` times each, interleaved, median shown (target ≤ 10 s after ``tools/setup``, whose one-spill
demo compiles every JIT kernel; a spill lasts ``--spill-duration``, 4.8 s by default, so the start-up has the
rest). ``--instructions``: the instructions of one run of ``import numpy`` and of each replay under valgrind's
callgrind, and their ratio: what the load does not move.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(os.path.dirname(sys.executable), "na64-online")
SMALL = os.path.join(ROOT, "tests", "data", "vectors", "small.dat")


#: the commands' environment: as users run them, with Python's bytecode cache (pip writes it at install; a
#: checkout's __pycache__ is written by the warm-up run) unless --no-bytecode keeps PYTHONDONTWRITEBYTECODE
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _with_kernels(kind: str, cmd: list[str]) -> list[str]:
    """``cmd`` with ``NA64_KERNELS=kind`` (aot: the compiled kernels or an error; jit: numba's)."""
    return ["env", f"NA64_KERNELS={kind}", *cmd]


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # not from the checkout: python -c/-m put the working directory first on sys.path, and the checkout's
    # na64_online/ would shadow a baseline tree on PYTHONPATH
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/", text=True, env=CHILD_ENV)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.strip()[-500:]}")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _one_cached_kernel() -> str:
    """A script calling one trivial ``cache=True`` kernel (cached by its first run): numba's floor."""
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "na64_bench_one_kernel.py")
    with open(path, "w") as f:
        f.write("import numba\nimport numpy as np\n\n\n@numba.njit(cache=True)\ndef first(a):\n"
                "    return a[0]\n\n\nfirst(np.zeros(1))\n")
    return path


def installed_wheel(source: str, where: str, build_aot: str) -> str:
    """The ``na64-online`` program of the wheel of the checkout ``source``, installed (not editable) into a
    virtual environment of its own under ``where``, as a user installs it and as tools/wheel-check does: no
    editable-install finder and ``.pth`` code at interpreter start, the package's bytecode compiled by pip at
    install. Its dependencies are this environment's (a ``.pth`` line naming this environment's
    site-packages: a directory added so has no ``.pth`` files run, so this checkout's editable install is not
    seen). ``build_aot``: ``NA64_BUILD_AOT`` of the wheel's build (``require``: its compiled kernels)."""
    import glob
    import sysconfig

    dist, venv = os.path.join(where, "dist"), os.path.join(where, "venv")
    program, python = os.path.join(venv, "bin", "na64-online"), os.path.join(venv, "bin", "python")
    kept = os.path.exists(program)
    if not kept:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                        dist, source], check=True, cwd="/", env={**os.environ, "NA64_BUILD_AOT": build_aot},
                       stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # written on every run: a kept environment may have been made from another checkout's, since removed
    with open(os.path.join(site, "_bench_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    if kept:
        return program
    (wheel,) = glob.glob(os.path.join(dist, "na64_online-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel], check=True,
                   cwd="/")
    return program


def instructions(cmd: list[str]) -> int:
    """Instructions executed by one run of ``cmd`` (valgrind's callgrind; ``PYTHONHASHSEED=0``: the same
    run each time, up to the environment): a figure the machine's load does not move."""
    import re
    import tempfile

    env = {**CHILD_ENV, "PYTHONHASHSEED": "0"}
    if cmd[0] == "env":  # its settings set here: valgrind counts the process it starts, not what that execs
        cmd = cmd[1:]
        while "=" in cmd[0]:
            key, value = cmd.pop(0).split("=", 1)
            env[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", *cmd],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/", env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not found:
        raise SystemExit(f"valgrind {' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return int(found.group(1))


def demo_first_spill(spill_duration: float, kernels: str = "auto", pythonpath: str | None = None) -> float:
    """Seconds from starting ``na64-online demo --spills 1`` to its first record on stdout (``pythonpath``:
    the package of a baseline tree, its worker processes too; ``kernels``: ``NA64_KERNELS``)."""
    program = [CLI] if pythonpath is None else ["env", f"PYTHONPATH={pythonpath}", sys.executable, "-m",
                                                "na64_online.cli"]
    t0 = time.perf_counter()
    child = subprocess.Popen(_with_kernels(kernels, [*program, "demo", "--spills", "1", "--http", "127.0.0.1:0",
                                                     "--json", "--spill-duration", str(spill_duration)]),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=CHILD_ENV, cwd="/")
    line = child.stdout.readline()
    first = time.perf_counter() - t0
    child.wait(120)
    if not line.startswith("{"):
        raise SystemExit(f"demo printed no record (exit {child.returncode})")
    return first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--file", default=SMALL, type=os.path.abspath,
                   help="raw file to replay (default: tests/data/vectors/small.dat)")
    p.add_argument("--demo", action="store_true", help="also the time to demo's first spill")
    p.add_argument("--spill-duration", type=float, default=4.8)
    p.add_argument("--demo-repeat", type=int, default=1, help="demo runs of each kind, interleaved (median shown)")
    p.add_argument("--baseline-rev", metavar="REV", help="also replay with the package as of git REV (interleaved)")
    p.add_argument("--editable", action="store_true",
                   help="replay with this checkout's editable install (and the baseline from its tree on PYTHONPATH) "
                        "instead of each one's wheel installed in a virtual environment of its own")
    p.add_argument("--instructions", action="store_true",
                   help="also count the instructions of one replay of each tree under valgrind (load-independent; "
                        "about a minute each)")
    p.add_argument("--no-bytecode", action="store_true",
                   help="keep PYTHONDONTWRITEBYTECODE of this environment: every module compiled from source each run")
    args = p.parse_args(argv)
    if args.no_bytecode and "PYTHONDONTWRITEBYTECODE" in os.environ:
        CHILD_ENV["PYTHONDONTWRITEBYTECODE"] = os.environ["PYTHONDONTWRITEBYTECODE"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import numpy": [sys.executable, "-c", "import numpy"],
        "import numba": [sys.executable, "-c", "import numba"],
        # numba's first call of any cached kernel sets up its compiler context (typing and lowering registries,
        # the runtime's functions): a floor every command using a kernel pays once
        "numba 1st kernel": [sys.executable, _one_cached_kernel()],
    }
    import shutil
    import tempfile

    own_wheel = None
    if args.editable:
        commands["replay"] = _with_kernels("aot", [CLI, "replay", args.file])
    else:  # this checkout's wheel, built and installed for this run (its compiled kernels: an error without them)
        own_wheel = tempfile.mkdtemp(prefix="bench-startup-wheel-")
        print("building and installing this checkout's wheel ...", file=sys.stderr, flush=True)
        commands["replay"] = _with_kernels("aot", [installed_wheel(ROOT, own_wheel, "require"), "replay", args.file])
    commands["replay jit"] = _with_kernels("jit", [CLI, "replay", args.file])
    if args.baseline_rev:
        from bench_ingest import baseline_env, baseline_tree

        # the same tree as the other benches' (its own compiled kernels built into it)
        baseline = baseline_env(baseline_tree(args.baseline_rev))
        path, kernels = baseline["PYTHONPATH"], baseline["NA64_KERNELS"]
        where = os.path.dirname(path)
        if args.editable:  # as its console script runs it (python -m would compile cli.py from source each run)
            program = ["env", f"PYTHONPATH={path}", sys.executable, "-c",
                       "import sys; from na64_online.cli import main; sys.exit(main())"]
        else:  # its wheel, installed once and kept beside its tree
            if not os.path.isdir(os.path.join(where, "wheel", "venv")):
                print(f"building and installing {args.baseline_rev}'s wheel (once) ...", file=sys.stderr, flush=True)
            program = [installed_wheel(os.path.join(where, "tree"), os.path.join(where, "wheel"),
                                       "require" if kernels == "aot" else "0")]
        commands[f"replay {args.baseline_rev}"] = _with_kernels(kernels, [*program, "replay", args.file])
    for cmd in commands.values():
        if "replay" in cmd or cmd[-1].endswith(".py"):
            _run(cmd)  # numba's cache compiled (a baseline tree's first run) and in the page cache
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    counted: dict[str, int] = {}
    try:
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                runs[name].append(_run(cmd))
        if args.instructions:
            for name in ("import numpy", "replay", *([f"replay {args.baseline_rev}"] if args.baseline_rev else [])):
                counted[name] = instructions(commands[name])
    finally:
        if own_wheel is not None:
            shutil.rmtree(own_wheel, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; best of {args.repeat}, interleaved; "
          f"replay: {'the editable install' if args.editable else 'the installed wheel'} with the ahead-of-time "
          "compiled kernels, replay jit: the editable install with numba's (cached); Python bytecode "
          f"{'not cached (PYTHONDONTWRITEBYTECODE)' if 'PYTHONDONTWRITEBYTECODE' in CHILD_ENV else 'cached'}")
    print(f"{'command':>16} {'wall s':>8} {'CPU s':>7} {'med CPU':>7}  (best wall, best CPU, median CPU)")
    for name, values in runs.items():
        print(f"{name:>16} {min(w for w, _ in values):8.3f} {min(c for _, c in values):7.3f} "
              f"{statistics.median(c for _, c in values):7.3f}")
    replay_wall = min(runs["replay"])[0]
    jit_wall = min(runs["replay jit"])[0]
    floor = min(runs["numba 1st kernel"])[0]
    print(f"replay {os.path.basename(args.file)}: {replay_wall:.3f} s wall (target < 0.5 s: "
          f"{'holds' if replay_wall < 0.5 else 'NOT met'}); {replay_wall / jit_wall:.2f}x the JIT kernels' replay "
          f"({jit_wall:.3f} s), {replay_wall / floor:.2f}x numba's floor ({floor:.3f} s: one cached kernel); "
          f"{replay_wall - min(runs['import numpy'])[0]:.3f} s beyond importing numpy")
    if args.baseline_rev:  # CPU time: what load changes least
        base = runs[f"replay {args.baseline_rev}"]
        print(f"replay against {args.baseline_rev}: {replay_wall / min(base)[0]:.2f}x its best wall time, "
              f"{min(c for _, c in runs['replay']) / min(c for _, c in base):.2f}x its best CPU time, "
              f"{statistics.median(c for _, c in runs['replay']) / statistics.median(c for _, c in base):.2f}x "
              "its median CPU time")
    if counted:
        print("instructions (callgrind, one run each): " + ", ".join(f"{name} {n / 1e9:.3f}e9"
                                                                     for name, n in counted.items()))
        if args.baseline_rev:
            print(f"replay against {args.baseline_rev}: {counted['replay'] / counted[f'replay {args.baseline_rev}']:.3f}x "
                  "its instructions")
    if args.demo:
        demos = {"aot": ("aot", None), "jit": ("jit", None)}
        if args.baseline_rev:
            demos[f"{args.baseline_rev}, {kernels}"] = (kernels, path)
        firsts: dict[str, list[float]] = {name: [] for name in demos}
        for _ in range(args.demo_repeat):
            for name, (kind, pythonpath) in demos.items():
                firsts[name].append(demo_first_spill(args.spill_duration, kind, pythonpath))
        for name, values in firsts.items():
            first = statistics.median(values)
            print(f"demo ({name} kernels): first spill record after {first:.1f} s (median of {len(values)}: "
                  f"{', '.join(f'{v:.1f}' for v in values)}; spills of {args.spill_duration:g} s; target ≤ 10 s: "
                  f"{'holds' if first <= 10 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
