"""Shared fixtures. The tests folder is importable (reference decoder, spec encoder)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
VECTORS = TESTS / "data" / "vectors"


@pytest.fixture(scope="session")
def channel_map():
    from na64_online.decoders.channelmap import ChannelMap

    return ChannelMap.default()


@pytest.fixture(scope="session")
def ref_map():
    import reference_decoder

    return reference_decoder.load_channel_map(reference_decoder.DEFAULT_MAP_PATH)


# --------------------------------------------------------------------------- a throw-away PostgreSQL server
def _postgres_bindir() -> str | None:
    """Where Debian's postgresql package keeps initdb/pg_ctl (newest major first), else from PATH."""
    import glob
    import os
    import shutil

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.access(os.path.join(bindir, "initdb"), os.X_OK) and os.access(os.path.join(bindir, "pg_ctl"), os.X_OK):
            return bindir
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return os.path.dirname(initdb) if initdb and pg_ctl else None


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster of its own: ``initdb`` in a temporary folder, unix socket only (in that folder,
    no TCP), fsync off; stopped (immediate) and removed at the end. As root the server runs as the
    ``postgres`` user (Debian's package makes it), else ``nobody``. Yields the admin URL."""
    import os
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: tools/setup installs Debian's postgresql")
    root = Path(tempfile.mkdtemp(prefix="na64-pg-"))  # under /tmp: reachable by the server's user
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o755)
        prefix = ["runuser", "-u", user, "--"]
    data, log = root / "data", root / "server.log"
    with socket.socket() as s:  # a free port number (the socket file is named after it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            extra = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}{extra}")

    run(f"{bindir}/initdb", "-D", str(data), "-U", "na64", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(f"{bindir}/pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
        f"-p {port} -k {root} -c listen_addresses='' -c fsync=off -c max_connections=50", "start")
    try:
        yield f"postgresql://na64@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def postgres_database(server: str, name: str, *, create: bool = True) -> str:
    """The URL of database ``name`` on ``server`` (a :func:`postgres_server` URL), dropped if it was there and
    made again, fresh and empty, if ``create`` (else left missing, for a test to create it)."""
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')
    return server.replace("/postgres?", f"/{name}?", 1)


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database on the session's PostgreSQL server, for one test."""
    import re

    return postgres_database(postgres_server, "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50])


@contextmanager
def frozen_postgres(url: str):
    """The PostgreSQL server of ``url`` (a :func:`postgres_server` URL) frozen, as a host that stopped would be:
    its postmaster (``postmaster.pid`` in the data folder) and the postmaster's children SIGSTOPped, and
    SIGCONTinued when the block ends, however it ends."""
    import signal
    import subprocess
    import urllib.parse

    host = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["host"][0]
    postmaster = int((Path(host) / "data" / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    pids = [postmaster, *map(int, children)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def process_memory_readable() -> bool:
    """Whether this system lets a process read memory with ``process_vm_readv`` (what local workers read their
    tasks with; a container's seccomp profile may refuse it: then the service sends them the bytes)."""
    import numpy as np

    from na64_online.daq.workers import _process_memory

    probe, out = np.arange(4, dtype=np.uint32), np.zeros(4, dtype=np.uint32)
    try:
        _process_memory.copy(os.getpid(), np.array([[out.ctypes.data, 16]], np.uint64),
                             np.array([[probe.ctypes.data, 16]], np.uint64))
    except OSError:
        return False
    return bool(np.array_equal(out, probe))
