"""Start-up: a command imports only what it uses (the web, export, statistics, database and ZeroMQ stacks stay
unloaded)."""

from __future__ import annotations

import json
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
