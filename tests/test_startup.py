"""Start-up: a command imports only what it uses (the web, export, statistics, database and ZeroMQ stacks stay
unloaded)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import VECTORS

HEAVY = ("fastapi", "starlette", "bokeh", "uproot", "awkward", "scipy.stats", "dask", "distributed",
         # a replay without an archive needs no database, no sockets, no linear algebra (numba's BLAS probe)
         "sqlalchemy", "zmq", "scipy.linalg", "numpy.f2py",
         # nor what serves or sends (metrics are published but not served, no Alertmanager configured, no
         # archive rows or histogram JSON answered), the reprocessing code, or pydantic-settings (no
         # configuration file, no NA64_ setting variable)
         "prometheus_client", "urllib.request", "http.client", "na64_online.reprocess", "na64_online.monitor.metrics",
         "na64_online.monitor.model_served", "na64_online.monitor.snapshots", "pydantic_settings", "dotenv",
         # nor numpy's masked arrays (np.unique without return_* options imports them to ask whether the array is
         # masked: ≈ 10 % of numpy's import), nor subprocess (the alarm sound command's, none configured)
         "numpy.ma", "subprocess",
         # nor the near-name suggestions of configuration and alarm-rule errors, nor the web commands' futures
         "difflib", "concurrent.futures")


def test_replay_with_the_compiled_kernels_never_loads_numba_or_the_heavy_stacks(tmp_path):
    """``na64-online replay`` as a process, with the ahead-of-time compiled kernels (``NA64_KERNELS=aot``: an error
    if they are missing or stale): neither numba nor any of :data:`HEAVY` is imported (``-X importtime`` lists every
    module loaded), and the records are the JIT kernels' records."""
    def replay(kernels: str, *options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *options, "na64_online.cli", "replay", str(VECTORS / "small.dat"),
                               "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env={**{k: v for k, v in os.environ.items() if not k.startswith("NA64_")},
                                   "NA64_KERNELS": kernels})

    compiled = replay("aot", "-X", "importtime", "-m")
    assert compiled.returncode == 0, (f"{compiled.stderr[-1500:]}\n(the compiled kernels are built by tools/setup: "
                                      "rerun it after changing a kernel)")
    loaded = {line.rsplit("|", 1)[-1].strip() for line in compiled.stderr.splitlines()
              if line.startswith("import time:")}
    assert "na64_online.decoders.decode" in loaded  # the listing is complete
    assert not {m for m in loaded if m == "numba" or m.startswith(("numba.", "llvmlite"))}
    assert sorted(m for m in HEAVY if m in loaded) == []
    # the JIT replay's process also imports the web stack as serve does (no archive configured): no database;
    # and the command's start-up pauses the cyclic collector but leaves it on (and freezes what is left at exit)
    web_then_replay = ("import atexit, gc, runpy, sys; import na64_online.web.app, na64_online.web.server, "
                       "na64_online.web.state\n"
                       "print('sqlalchemy loaded' if 'sqlalchemy' in sys.modules else 'no sqlalchemy', "
                       "file=sys.stderr)\nsys.argv[:2] = sys.argv[1:2]\n"
                       "atexit.register(lambda: print(f'collector enabled {gc.isenabled()}, objects frozen '\n"
                       "                              f'{gc.get_freeze_count()} and not {len(gc.get_objects())}',\n"
                       "                              file=sys.stderr))\n"
                       "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")
    jit = replay("jit", "-c", web_then_replay)
    assert jit.returncode == 0, jit.stderr[-1500:]
    assert "no sqlalchemy" in jit.stderr
    # everything frozen at the end (the interpreter's exit then collects nothing): a few objects made since
    frozen, unfrozen = map(int, re.search(r"collector enabled True, objects frozen (\d+) and not (\d+)",
                                          jit.stderr).groups())
    assert frozen > 20_000 and unfrozen < 1_000, (frozen, unfrozen)
    drop = ("processing_seconds", "finished_at")
    records = [[{k: v for k, v in json.loads(line).items() if k not in drop} for line in r.stdout.splitlines()]
               for r in (compiled, jit)]
    assert records[0] == records[1] and records[0]


def test_the_live_service_with_the_compiled_kernels_never_loads_numba(tmp_path):
    """The ingest service's modules, and a readout message scanned as the service scans it, with the compiled
    kernels: numba is not imported (its import alone costs a third of a second, and its JIT compiles)."""
    code = ("import sys\n"
            "import na64_online.daq.ingest, na64_online.daq.workers\n"
            "from na64_online.daq.envelope import scan_payload\n"
            f"scan = scan_payload(open({str(VECTORS / 'small.dat')!r}, 'rb').read())\n"
            "numba = sorted(m for m in sys.modules if m == 'numba' or m.startswith(('numba.', 'llvmlite')))\n"
            "print(scan.n_events, numba)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("NA64_")},
                               "NA64_KERNELS": "aot"})
    assert done.returncode == 0, done.stderr[-1500:]
    events, modules = done.stdout.split(" ", 1)
    assert int(events) > 0 and modules.strip() == "[]"


def test_a_command_named_first_gets_only_its_own_parser_with_the_same_help_and_errors(capsys):
    """``build_parser(argv)`` builds only the command ``argv`` starts with (argparse's per-parser cost is ≈ 1 % of a
    replay's start-up); its help and its argument errors are the full parser's, and ``--help``, ``--version`` or an
    unknown command first still get every command."""
    import pytest

    from na64_online.cli import _COMMANDS, build_parser

    def subparsers(parser):
        return next(a for a in parser._actions if a.dest == "command").choices

    full = subparsers(build_parser())
    assert list(full) == list(_COMMANDS)
    for name in _COMMANDS:
        only = subparsers(build_parser([name, "--help"]))
        assert list(only) == [name]
        assert only[name].format_help() == full[name].format_help()
    for argv in (["--help"], ["--version"], ["-h", "replay"], ["bogus"], []):
        assert list(subparsers(build_parser(argv))) == list(_COMMANDS)
    outputs = []
    for parser in (build_parser(), build_parser(["replay", "--bogus", "x"])):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(["replay", "--bogus", "x"])
        outputs.append((stop.value.code, capsys.readouterr().err))
    assert outputs[0] == outputs[1] == (2, "na64-online: error: unrecognized arguments: --bogus (see --help)\n")
