"""The archive on a real PostgreSQL server (a throw-away cluster, conftest.postgres_server), and processing
versions / migration of old SQLite files: writers as processes, readers through the CLI and the web API."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from na64_online.monitor.archive import Archive
from test_archive import CHILD, _run_child_until, check_run_totals, make_histograms, make_quality, make_record
from test_cli import run

WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_archive import make_record, make_quality, make_histograms
    from na64_online.monitor.archive import Archive

    with Archive({url!r}, version="reprocess-1") as archive:
        for spill in range(1, {spills} + 1):
            archive.store_spill(make_record(5, spill, events=1000 + spill), make_quality(), make_histograms(),
                                [{{"alarm_id": "w{name}-%d" % spill, "name": "n", "state": "raised"}}])
    print("done", flush=True)
    """
)


def _counts(url: str) -> tuple[list, int, int]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        per_key = conn.exec_driver_sql(
            "SELECT run, spill, version, count(*) FROM spills GROUP BY run, spill, version ORDER BY spill").fetchall()
        hists = conn.exec_driver_sql("SELECT count(*) FROM histograms").scalar()
        orphans = conn.exec_driver_sql(
            "SELECT count(*) FROM histograms WHERE spill_id NOT IN (SELECT id FROM spills)").scalar()
    engine.dispose()
    return [tuple(r) for r in per_key], hists, orphans


def test_run_totals_on_postgresql(postgres_url):
    """The same counts and sums as on SQLite, where PostgreSQL keeps NaN and the infinities that SQLite does not."""
    with Archive(postgres_url) as archive:
        check_run_totals(archive)


def test_two_concurrent_writers_leave_each_spill_exactly_once(postgres_url):
    """Two processes store the same 30 spills at once into a new database (both migrate it on open)."""
    spills = 30
    procs = [subprocess.Popen([sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent), url=postgres_url,
                                                                   spills=spills, name=name)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in "ab"]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "done", err
    per_key, hists, orphans = _counts(postgres_url)
    assert per_key == [(5, s, "reprocess-1", 1) for s in range(1, spills + 1)]
    assert hists == spills * len(make_histograms()) and orphans == 0
    with Archive(postgres_url, readonly=True) as archive:
        assert archive.get_spill(5, 7)["record"]["events"] == 1007
        assert len(archive.alarm_history(name="n", limit=100)) == 2 * spills  # both writers' transitions


def test_a_spill_is_atomic_when_the_writer_is_sigkilled(postgres_url):
    committed, in_tx = _run_child_until(postgres_url, hang_at=4, commits=0)  # killed inside spill 4's transaction
    assert committed == [1, 2, 3] and in_tx == 4
    per_key, hists, orphans = _counts(postgres_url)
    assert [k[1] for k in per_key] == [1, 2, 3] and all(k[3] == 1 for k in per_key)
    assert hists == 3 * len(make_histograms()) and orphans == 0
    with Archive(postgres_url) as archive:  # the server rolled the dead client's transaction back
        assert [r["alarm_id"] for r in archive.alarm_history(limit=10)] == ["a3", "a2", "a1"]
        archive.store_spill(make_record(7, 4), make_quality(), make_histograms())
        assert [s["spill"] for s in archive.list_spills(run=7)] == [1, 2, 3, 4]


def test_replay_into_postgresql_then_versions_compare_and_web_api(postgres_url, tmp_path):
    """Two processings of one run side by side; the CLI and the web API read them from PostgreSQL."""
    raw = tmp_path / "run.dat"
    run("simulate", "--out", raw, "--run", 3, "--spills", 2, "--events", 300, "--seed", 4)
    run("replay", raw, "--archive", postgres_url)
    env = dict(os.environ, NA64_QUALITY__HADRON_FRACTION_WARNING="0.00005",  # another configuration:
               NA64_QUALITY__HADRON_FRACTION_BAD="0.0001")  # another processing version
    run("replay", raw, "--archive", postgres_url, env=env)
    versions = [json.loads(line) for line in run("archive", postgres_url, "versions").stdout.splitlines()]
    assert len(versions) == 2 and all(v["spills"] == 2 for v in versions)
    a, b = (v["version"] for v in versions)
    assert a.split("+")[0] == b.split("+")[0] and a != b  # same software, other configuration hash
    rows = [json.loads(line) for line in run("archive", postgres_url, "spills", "--version", a).stdout.splitlines()]
    assert [(r["spill"], r["version"]) for r in rows] == [(1, a), (2, a)]
    every = run("archive", postgres_url, "spills", "--version", "*").stdout.splitlines()
    assert len(every) == 4
    latest = [json.loads(line)["version"] for line in run("archive", postgres_url, "spills").stdout.splitlines()]
    assert latest == [b, b]  # by default the processing stored last
    changed = [json.loads(line) for line in
               run("archive", postgres_url, "compare", "--run", 3, "--versions", a, b).stdout.splitlines()]
    assert 2 in [c["spill"] for c in changed]
    assert all(c["changes"] and all(old != new for old, new in c["changes"].values()) for c in changed)
    second = next(c for c in changed if c["spill"] == 2)["changes"]
    assert second["quality.beam"][1] == "BAD" and second["quality.beam"][0] != "BAD"
    assert run("archive", postgres_url, "compare", "--run", 3, "--versions", a, a).stdout == ""
    bad = run("archive", postgres_url, "compare", "--run", 3, "--versions", a, "nope", check=False)
    assert bad.returncode == 1 and "version 'nope'" in bad.stderr

    from na64_online.config import load_config
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.service import build_monitor
    from na64_online.web.app import create_app
    from na64_online.web.config import WebConfig
    from na64_online.web.server import WebServer
    from na64_online.web.state import AppState
    from prometheus_client import CollectorRegistry

    monitor = build_monitor(load_config(environ={}), ChannelMap.default(), archive_path=postgres_url)
    server = WebServer(create_app(WebConfig(port=0), AppState(monitor=monitor, registry=CollectorRegistry())),
                       "127.0.0.1", 0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
            listed = client.get("/api/spills", params={"run": 3}).json()
            assert [s["spill"] for s in listed] == [2, 1]
            assert client.get("/api/spills/3/2").json()["record"]["events"] == 300
            assert 2 in [s["spill"] for s in client.get("/api/spills/bad").json()]  # as the latest processing
    finally:
        server.stop()
        monitor.close()


def test_an_archive_written_by_the_previous_release_is_migrated_and_read(tmp_path):
    """A schema-2 SQLite file (before Alembic) reads through the CLI; its spills become 'unversioned'."""
    from na64_online.monitor.archive import encode_histogram
    from na64_online.monitor.archive import store

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(store._SCHEMA_V1 + ";" + store._SCHEMA_V2 + ";PRAGMA user_version = 2;")
    for spill in (1, 2):
        conn.execute("INSERT INTO spills (run, spill, fragment, collision, time, stored_at, overall, record, quality)"
                     " VALUES (9, ?, 0, 0, 1.0, 1.0, 'GOOD', ?, ?)",
                     (spill, json.dumps(make_record(9, spill)), json.dumps(make_quality())))
        conn.execute("INSERT INTO histograms (spill_id, name, data) VALUES (?, 'e_ecal', ?)",
                     (spill, encode_histogram(make_histograms()["e_ecal"])))
    conn.commit()
    conn.close()
    rows = [json.loads(line) for line in run("archive", path, "spills").stdout.splitlines()]
    assert [(r["run"], r["spill"], r["version"]) for r in rows] == [(9, 1, "unversioned"), (9, 2, "unversioned")]
    with Archive(path, version="0.2.0+0123456789ab") as archive:
        assert archive.get_histograms(9, 2)["e_ecal"] == make_histograms()["e_ecal"]
        archive.store_spill(make_record(9, 1), make_quality("BAD"))  # the current software's version beside it
        assert len(archive.list_spills(run=9, version="*")) == 3
        assert archive.check() == "ok"


def test_a_reader_made_before_its_writer_made_the_tables_reads_once_they_are_there(postgres_url):
    """The web's read-only archive, opened (live) while the database is still empty: it is made, answers
    ArchiveUnavailable with the reason, and reads once a writer has made the tables. Without
    ``wait_for_database`` (the archive commands) the same is an error at once."""
    from na64_online.errors import ArchiveError, ArchiveUnavailable

    with pytest.raises(ArchiveError, match="not an na64-online QA archive"):
        Archive(postgres_url, readonly=True)
    reader = Archive(postgres_url, readonly=True, wait_for_database=True)
    try:
        with pytest.raises(ArchiveUnavailable, match="not open yet.*not an na64-online QA archive"):
            reader.list_spills()
        with Archive(postgres_url) as writer:
            writer.store_spill(make_record(1, 1), make_quality(), make_histograms())
        assert [(r["run"], r["spill"]) for r in reader.list_spills()] == [(1, 1)]
    finally:
        reader.close()
