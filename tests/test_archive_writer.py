"""monitor/archive/writer.py: the live service's archive writes on their own thread, against real databases
held the way they fail in production — an SQLite file locked by another writer, a PostgreSQL server whose
processes are stopped (a frozen database host)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from conftest import frozen_postgres, postgres_database
from ops_processes import wait_for
from na64_online.decoders.decode import as_words
from na64_online.monitor.archive import Archive, ArchiveConfig
from na64_online.monitor.archive.writer import ArchiveWriter
from na64_online.monitor.spill_monitor import SpillMonitor
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig


def wait_until(condition, timeout_s: float = 30.0, what: str = ""):
    """:func:`ops_processes.wait_for`, polled every 20 ms (the writer's states last tenths of a second)."""
    return wait_for(condition, timeout_s, interval=0.02, what=what)


def record(run: int, spill: int, events: int = 100) -> dict:
    return {"run": run, "spill": spill, "events": events, "complete": True, "finished_at": 1_700_000_000.0 + spill}


def alarm_event(alarm_id: str, run: int | None = None, spill: int | None = None) -> dict:
    return {"alarm_id": alarm_id, "name": "dead_channels", "severity": "warning", "state": "raised", "run": run,
            "spill": spill, "detail": "", "description": "", "since_run": run, "since_spill": spill,
            "user": None, "comment": None}


class Locked:
    """An SQLite archive held by another writer (``BEGIN EXCLUSIVE``) until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


@pytest.fixture
def sqlite_archive(tmp_path):
    """A real SQLite archive whose writes give up after 0.2 s on a lock (so that a locked file fails fast)."""
    archive = Archive(tmp_path / "qa.sqlite", timeout=0.2)
    yield archive
    archive.close()


def stored(archive: Archive) -> list[tuple[int, int, int]]:
    """(run, spill, fragment) of the archived rows, in the order they were first written."""
    with sqlite3.connect(archive.path) as conn:
        return conn.execute("SELECT run, spill, fragment FROM spills ORDER BY id").fetchall()


def test_a_locked_database_is_retried_in_order_and_nothing_is_lost(sqlite_archive, tmp_path):
    commits = []
    writer = ArchiveWriter(sqlite_archive, answer_timeout_s=0.3, on_commit=lambda: commits.append(1))
    lock = Locked(tmp_path / "qa.sqlite")
    try:
        writer.store_spill(record(1, 1), None, {}, [alarm_event("a1", 1, 1)])
        writer.store_spill(record(1, 2), None, {}, [])
        writer.record_alarm_events([alarm_event("a2")])
        wait_until(lambda: writer.status()["attempts_failed"] >= 2, what="two failed attempts")
        status = writer.status()
        assert status["pending_spills"] == 2 and status["behind_since"] is not None and writer.behind()
        assert writer.collides(record(1, 1, events=5)) is None  # behind: not asked, not waited for
        assert commits == []
    finally:
        lock.release()
    wait_until(lambda: writer.status()["pending_spills"] == 0 and len(commits) == 2, what="the queue written")
    assert writer.close() == []
    assert stored(sqlite_archive) == [(1, 1, 0), (1, 2, 0)]
    assert {e["alarm_id"] for e in sqlite_archive.alarm_history()} == {"a1", "a2"}
    status = writer.status()
    assert status["behind_since"] is None and status["dropped"] == status["failed"] == 0
    assert status["attempts_failed"] >= 2


def test_the_collision_answer_comes_after_the_writes_queued_before_it(sqlite_archive):
    writer = ArchiveWriter(sqlite_archive, answer_timeout_s=30)
    try:
        writer.store_spill(record(3, 1, events=100), None, {}, [])
        assert writer.collides(record(3, 1, events=101)) is True  # other data under the key just written
        assert writer.collides(record(3, 1, events=100)) is False  # the same data: a replacement
        assert writer.collides(record(3, 2)) is False
    finally:
        writer.close()


def test_a_full_queue_drops_the_new_spill_counts_it_and_keeps_its_alarm_events(sqlite_archive, tmp_path, caplog):
    writer = ArchiveWriter(sqlite_archive, queue_spills=1, answer_timeout_s=0.3)
    lock = Locked(tmp_path / "qa.sqlite")
    try:
        writer.store_spill(record(1, 1), None, {}, [])
        with caplog.at_level(logging.ERROR, logger="na64_online.monitor.archive.writer"):
            writer.store_spill(record(1, 2), None, {}, [alarm_event("a2", 1, 2)])
        assert "run 1 spill 2 is not archived" in caplog.text
        assert writer.status()["dropped"] == 1 and writer.status()["pending_spills"] == 1
    finally:
        lock.release()
    wait_until(lambda: writer.status()["pending_spills"] == 0, what="the queue written")
    writer.close()
    assert stored(sqlite_archive) == [(1, 1, 0)]
    assert [e["alarm_id"] for e in sqlite_archive.alarm_history()] == ["a2"]


def test_a_refused_write_is_counted_and_the_writer_goes_on(sqlite_archive):
    writer = ArchiveWriter(sqlite_archive)
    try:
        writer.store_spill({"spill": 1}, None, {}, [])  # no run: the archive refuses it (ArchiveError)
        writer.store_spill(record(2, 1), None, {}, [])
        wait_until(lambda: writer.status()["pending_spills"] == 0, what="both taken")
        assert writer.status()["failed"] == 1 and writer.status()["attempts_failed"] == 0
    finally:
        writer.close()
    assert stored(sqlite_archive) == [(2, 1, 0)]


def test_close_waits_its_drain_timeout_then_names_the_spills_it_leaves(sqlite_archive, tmp_path, caplog):
    writer = ArchiveWriter(sqlite_archive, drain_timeout_s=0.5)
    lock = Locked(tmp_path / "qa.sqlite")
    try:
        writer.store_spill(record(4, 7), None, {}, [])
        with caplog.at_level(logging.ERROR, logger="na64_online.monitor.archive.writer"):
            assert writer.close() == [(4, 7)]
        assert "not archived at stop" in caplog.text and "run 4 spill 7" in caplog.text
        assert not writer._thread.is_alive()  # noqa: SLF001 - the writer's thread ended with it
        assert writer.status()["dropped"] == 1
        writer.store_spill(record(4, 8), None, {}, [])  # after close: refused quietly, nothing queued
        assert writer.status()["pending_spills"] == 0
    finally:
        lock.release()
    assert stored(sqlite_archive) == []


# ---------------------------------------------------------------------- the spill monitor on a frozen database
def _accumulators(monitor: SpillMonitor, seed: int) -> list:
    sim = ReadoutSimulator(SimulationConfig(spills=2, events_per_spill=300, seed=seed), monitor.channel_map)
    return [monitor.processor.accumulate(as_words(s.raw())[0]) for s in sim.spills()]


@pytest.mark.timeout(180)
def test_a_frozen_database_never_holds_a_spills_finish_and_the_write_decides_the_collision(postgres_url,
                                                                                           channel_map):
    """A spill's finish with the database host frozen (its processes SIGSTOPped) returns; the spills are
    archived, in order, when it moves again; the collision the finish could not ask about is decided by the
    write, into the archived row."""
    monitor = SpillMonitor(channel_map, archive=ArchiveConfig(url=postgres_url, answer_timeout_s=0.5),
                           archive_thread=True)
    try:
        first, _ = _accumulators(monitor, seed=1)
        other_first, other_second = _accumulators(monitor, seed=2)  # the same run and spill numbers, other data
        monitor.handle(first)
        wait_until(lambda: monitor.archive_writes.status()["pending_spills"] == 0, what="spill 1 archived")
        finished: list[dict] = []
        with frozen_postgres(postgres_url):
            finish = threading.Thread(target=lambda: finished.extend(
                [monitor.handle(other_first), monitor.handle(other_second)]), daemon=True)
            finish.start()
            finish.join(60)
            assert not finish.is_alive(), "a spill's finish waited for the frozen database"
            assert monitor.archive_writes.status()["pending_spills"] == 2
            assert monitor.archive_writes.behind()
        assert [(r["run"], r["spill"]) for r in finished] == [(1, 1), (1, 2)]
        assert all("archive_collision" not in r for r in finished)  # unknown when the record went out
        wait_until(lambda: monitor.archive_writes.status()["pending_spills"] == 0, 60, what="the writes after")
    finally:
        monitor.close()
    import json

    import psycopg

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT spill, fragment, collision, record FROM spills ORDER BY id").fetchall()
    assert [row[:3] for row in rows] == [(1, 0, 1), (1, 1, 1), (2, 0, 0)]
    # the record that went out without it has it archived, as the write found it
    assert [json.loads(row[3])["archive_collision"] for row in rows] == [False, True, False]


@pytest.mark.timeout(180)
def test_a_database_that_is_not_there_at_start_is_opened_when_it_is(postgres_server, channel_map, caplog):
    """The live service starts while its PostgreSQL database does not exist yet (a server being set up, a
    restore under way): it monitors, the web answers 503 for the archive, the spills wait; once the database
    is there the writer migrates it and archives them, in order, and the web reads them."""
    import psycopg
    from prometheus_client import CollectorRegistry

    from na64_online.web.app import create_app
    from na64_online.web.config import WebConfig
    from na64_online.web.server import WebServer
    from na64_online.web.state import AppState

    import httpx

    name = f"late_{os.getpid()}"
    url = postgres_database(postgres_server, name, create=False)
    with caplog.at_level(logging.ERROR, logger="na64_online.monitor.spill_monitor"):
        monitor = SpillMonitor(channel_map, archive=ArchiveConfig(url=url, answer_timeout_s=0.5), archive_thread=True,
                               reference=(1, None))  # a configured reference cannot be read: started without it
    assert monitor.reference is None and "the configured reference (1, None) is not in use" in caplog.text
    state = AppState(monitor=monitor, registry=CollectorRegistry())
    server = WebServer(create_app(WebConfig(port=0), state), "127.0.0.1", 0).start()
    try:
        records = [monitor.handle(acc) for acc in _accumulators(monitor, seed=3)]
        assert [(r["run"], r["spill"]) for r in records] == [(1, 1), (1, 2)]
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
            refused = client.get("/api/spills")
            assert refused.status_code == 503 and "not open yet" in refused.json()["detail"]
            wait_until(lambda: monitor.archive_writes.status()["attempts_failed"] >= 1, what="a failed attempt")
            assert monitor.archive_writes.status()["pending_spills"] == 2
            with psycopg.connect(postgres_server, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            wait_until(lambda: monitor.archive_writes.status()["pending_spills"] == 0, 90, what="the spills written")
            assert sorted((r["run"], r["spill"]) for r in client.get("/api/spills").json()) == [(1, 1), (1, 2)]
    finally:
        server.stop()
        state.close()
        monitor.close()


@pytest.mark.timeout(120)
def test_a_stop_with_the_database_frozen_names_the_spills_it_leaves_and_does_not_hang(postgres_url, channel_map,
                                                                                       caplog):
    """SIGTERM while the database host is frozen: the monitor's close waits ``drain_timeout_s`` for the queued
    write, names the spill it leaves, and returns (the connection stuck on the database is left to the
    process's end) — systemd's stop timeout is not spent on it."""
    monitor = SpillMonitor(channel_map, archive=ArchiveConfig(url=postgres_url, answer_timeout_s=0.3,
                                                              drain_timeout_s=0.5), archive_thread=True)
    (first, _), closed = _accumulators(monitor, seed=4), threading.Event()
    with frozen_postgres(postgres_url):
        monitor.handle(first)
        with caplog.at_level(logging.WARNING, logger="na64_online.monitor.archive"):
            closing = threading.Thread(target=lambda: (monitor.close(), closed.set()), daemon=True)
            closing.start()
            closing.join(30)
        assert closed.is_set(), "the stop hung on the frozen database"
        assert "1 spill(s) not archived at stop" in caplog.text and "run 1 spill 1" in caplog.text
        assert "not closed, a thread still waits on the database" in caplog.text


@pytest.mark.timeout(180)
def test_serve_starts_with_its_database_missing_and_archives_once_it_is_there(postgres_server, tmp_path):
    """`na64-online serve --archive postgresql://…` as a process, its database not created yet: it starts,
    says so, and archives the spills of two simulated readout nodes once the database exists."""
    import psycopg

    from ops_processes import free_port
    from test_service_lifecycle import Lines, _serve, _simulator

    name = f"serve_{os.getpid()}"
    url = postgres_database(postgres_server, name, create=False)
    ports = (free_port(), free_port())
    sim = _simulator(ports, spills=30, events=300, duration=0.5, gap=0.5)
    serve = _serve(ports, url, "--no-web")
    try:
        out = Lines(serve)
        first = out.record(90)
        assert serve.poll() is None and first["run"] == 1
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        seen = [first, out.record(60), out.record(60)]

        def archived() -> set:
            with psycopg.connect(url) as conn:
                return set(conn.execute("SELECT run, spill FROM spills").fetchall())
        wait_for(lambda: {(r["run"], r["spill"]) for r in seen} <= archived(), 60, what="the spills archived")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    finally:
        for proc in (serve, sim):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert "is not open yet" in "".join(out.err), "".join(out.err)[-2000:]
