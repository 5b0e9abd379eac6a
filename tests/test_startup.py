"""Start-up: a command imports only what it uses (the web, export, statistics, database and ZeroMQ stacks stay
unloaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import VECTORS

HEAVY = ("fastapi", "starlette", "bokeh", "uproot", "awkward", "scipy.stats", "dask", "distributed",
         # a replay without an archive needs no database, no sockets, no linear algebra (numba's BLAS probe)
         "sqlalchemy", "zmq", "scipy.linalg", "numpy.f2py")


def test_replay_does_not_import_the_web_export_database_or_socket_stack():
    script = (
        "import contextlib, io, json, sys\n"
        "from na64_online.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    status = main(['replay', {str(VECTORS / 'small.dat')!r}, '--json'])\n"
        f"print(json.dumps({{'status': status, 'records': out.getvalue().count('\\n'),"
        f" 'loaded': sorted(m for m in {HEAVY!r} if m in sys.modules)}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] in (0, None) and report["records"] >= 1
    assert report["loaded"] == []


def test_replay_with_the_compiled_kernels_never_loads_numba(tmp_path):
    """``na64-online replay`` as a process, with the ahead-of-time compiled kernels (``NA64_KERNELS=aot``: an error
    if they are missing or stale): numba is never imported (``-X importtime`` lists every module loaded), and the
    records are the JIT kernels' records."""
    def replay(kernels: str, *options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *options, "-m", "na64_online.cli", "replay", str(VECTORS / "small.dat"),
                               "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env={**os.environ, "NA64_KERNELS": kernels})

    compiled = replay("aot", "-X", "importtime")
    assert compiled.returncode == 0, (f"{compiled.stderr[-1500:]}\n(the compiled kernels are built by tools/setup: "
                                      "rerun it after changing a kernel)")
    loaded = {line.rsplit("|", 1)[-1].strip() for line in compiled.stderr.splitlines()
              if line.startswith("import time:")}
    assert "na64_online.decoders.decode" in loaded  # the listing is complete
    assert not {m for m in loaded if m == "numba" or m.startswith(("numba.", "llvmlite"))}
    jit = replay("jit")
    assert jit.returncode == 0, jit.stderr[-1500:]
    drop = ("processing_seconds", "finished_at")
    records = [[{k: v for k, v in json.loads(line).items() if k not in drop} for line in r.stdout.splitlines()]
               for r in (compiled, jit)]
    assert records[0] == records[1] and records[0]
