"""Archive: atomic per-spill SQLite storage, crash safety, retention, exports."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import hist
import numpy as np
import pytest

from na64_online.errors import ConfigError
from na64_online.monitor.archive import (
    SCHEMA_VERSION,
    Archive,
    ArchiveConfig,
    ArchiveError,
    decode_histogram,
    encode_histogram,
)


# --------------------------------------------------------------------------- fixtures


def make_record(run: int, spill: int, *, t: float | None = None, complete: bool = True, **extra) -> dict:
    record = {
        "run": run,
        "spill": spill,
        "events": 1000 + spill,
        "lost_events": 0,
        "decode_errors": 0,
        "modules_missing": 0,
        "complete": complete,
        "beam": 50000,
        "triggers_accepted": 1000,
        "hadron_fraction": 0.05,
        "hadron_fraction_srd": 0.06,
        "eot": 47500.0,
        "candidates": [17, 230],
        "alarms": [],
        "errors_by_src": {"928": {"adc_bad_key": 1}},
        "lost_messages": {"total": 0, "by_ldc": {"1": 0}},
        "finished_at": time.time() if t is None else t,
    }
    record.update(extra)
    return record


def make_quality(overall: str = "GOOD", **subsystems) -> dict:
    """Shaped like monitor/quality.py's SpillQuality.to_dict()."""
    subs = {"beam": "GOOD", "ecal": "GOOD", "hcal": "GOOD", "daq": "GOOD"} | subsystems
    checks = [
        {"name": f"{name}.check", "subsystem": name, "state": state, "value": 1.0, "detail": f"{name} is {state.lower()}"}
        for name, state in subs.items()
    ]
    return {"run": None, "spill": None, "overall": overall, "subsystems": subs, "checks": checks}


def make_histograms(seed: int = 0) -> dict[str, hist.Hist]:
    rng = np.random.default_rng(seed)
    e = hist.Hist(hist.axis.Regular(200, 0, 150, name="e", label="E [GeV]"), storage=hist.storage.Int64(),
                  name="e_ecal", label="ECAL energy")
    e.fill(rng.normal(100, 5, 500))
    w = hist.Hist(hist.axis.Variable([0, 1, 2, 5, 10, 20], name="x"), storage=hist.storage.Weight())
    w.fill(rng.uniform(0, 25, 100), weight=rng.uniform(0.5, 2, 100))
    plane = hist.Hist(hist.axis.Integer(0, 3, name="trigger", underflow=False, overflow=False),
                      hist.axis.Regular(20, 0, 150, name="e_ecal"), hist.axis.Regular(20, 0, 150, name="e_hcal"),
                      storage=hist.storage.Int64())
    plane.fill(rng.integers(0, 3, 300), rng.uniform(0, 150, 300), rng.uniform(0, 150, 300))
    cat = hist.Hist(hist.axis.StrCategory(["ECAL", "HCAL"], growth=True, name="det"))
    cat.fill(["ECAL", "HCAL", "SRD", "SRD"])
    prof = hist.Hist(hist.axis.Regular(10, 0, 6e6, name="t"), storage=hist.storage.Mean())
    prof.fill(rng.uniform(0, 6e6, 50), sample=rng.uniform(0, 1, 50))
    return {"e_ecal": e, "weighted": w, "ecal_hcal": plane, "ECAL/categories": cat, "profile": prof}


def assert_same_hist(a, b) -> None:
    assert type(a.storage_type) is type(b.storage_type) and a.storage_type is b.storage_type
    assert len(a.axes) == len(b.axes)
    for x, y in zip(a.axes, b.axes):
        assert type(x) is type(y)
        assert x.name == y.name and x.label == y.label
        assert list(x) == list(y) if isinstance(x, hist.axis.StrCategory) else np.array_equal(x.edges, y.edges)
    np.testing.assert_array_equal(np.asarray(a.view(flow=True)), np.asarray(b.view(flow=True)))


@pytest.fixture
def archive(tmp_path):
    with Archive(tmp_path / "qa.sqlite") as a:
        yield a


# --------------------------------------------------------------------------- basics


def test_file_is_wal_and_versioned(tmp_path):
    path = tmp_path / "qa.sqlite"
    Archive(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(ArchiveError, match="newer"):
        Archive(path)


def test_open_errors(tmp_path):
    with pytest.raises(ArchiveError, match="cannot open"):
        Archive(tmp_path / "absent.sqlite", readonly=True)
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ArchiveError, match="cannot open"):
        Archive(tmp_path / "junk.sqlite")
    spaced = tmp_path / "a dir #1" / "qa?.sqlite"
    Archive(spaced).close()
    Archive(spaced, readonly=True).close()


def test_config_validation():
    assert ArchiveConfig("x.sqlite", retention_spills=10).path == Path("x.sqlite")
    with pytest.raises(ConfigError):
        ArchiveConfig("x", retention_spills=0)
    with pytest.raises(ConfigError):
        ArchiveConfig("x", retention_days=-1)
    with pytest.raises(ConfigError):
        ArchiveConfig("x", synchronous="OFF")


def test_histogram_blob_roundtrip():
    for name, h in make_histograms(3).items():
        blob = encode_histogram(h)
        back = decode_histogram(blob)
        assert_same_hist(h, back)
        assert back.name == h.name
    with pytest.raises(ArchiveError):
        decode_histogram(b"garbage")


def test_store_and_read_back(archive):
    record = make_record(100, 7)
    quality = make_quality("WARNING", ecal="WARNING")
    hists = make_histograms()
    archive.store_spill(record, quality, hists)
    got = archive.get_spill(100, 7)
    assert got["record"] == json.loads(json.dumps(record))
    assert got["quality"] == quality
    assert got["overall"] == "WARNING"
    assert got["histograms"] == sorted(hists)
    assert got["time"] == pytest.approx(record["finished_at"])
    back = archive.get_histograms(100, 7)
    for name, h in hists.items():
        assert_same_hist(h, back[name])
    assert list(archive.get_histograms(100, 7, names=["e_ecal"])) == ["e_ecal"]
    assert archive.get_spill(100, 8) is None


def test_numpy_values_in_record_are_stored(archive):
    record = make_record(1, 1, events=np.int64(5), hadron_fraction=np.float32(0.25), candidates=np.array([3, 4]))
    archive.store_spill(record)
    got = archive.get_spill(1, 1)["record"]
    assert got["events"] == 5 and got["candidates"] == [3, 4]
    assert got["hadron_fraction"] == pytest.approx(0.25)


def test_same_spill_again_replaces_it(archive):
    """The same data processed again (same events, times, losses and errors) replaces the row."""
    archive.store_spill(make_record(1, 1), make_quality(), make_histograms())
    assert not archive.collides(make_record(1, 1))
    archive.store_spill(make_record(1, 1), make_quality("BAD"), {"only": make_histograms()["e_ecal"]})
    got = archive.get_spill(1, 1)
    assert got["overall"] == "BAD" and got["histograms"] == ["only"]
    assert got["fragments"] == 1 and not got["collision"]
    assert archive.stats()["histograms"] == 1 and archive.stats()["spills"] == 1


def test_a_fragment_never_replaces_a_complete_spill(archive):
    """Other data under the same (run, spill): both kept, numbered, flagged; the complete one stands for the key."""
    archive.store_spill(make_record(1, 1, events=5000, first_event_time=100), make_quality(), make_histograms(1))
    fragment = make_record(1, 1, events=2500, complete=False, lost_events=2500, first_event_time=140)
    assert archive.collides(fragment)
    archive.store_spill(fragment, make_quality("BAD"), {"only": make_histograms()["e_ecal"]})
    rows = archive.list_spills(run=1)
    assert [(r["spill"], r["fragment"], r["events"], r["complete"], r["collision"]) for r in rows] == [
        (1, 0, 5000, True, True), (1, 1, 2500, False, True)]
    got = archive.get_spill(1, 1)
    assert got["record"]["events"] == 5000 and got["fragments"] == 2 and got["collision"]
    assert sorted(archive.get_histograms(1, 1)) == sorted(make_histograms(1))
    assert archive.stats()["histograms"] == len(make_histograms(1)) + 1
    # stored in the other order, the complete spill still stands for the key
    archive.store_spill(make_record(2, 1, events=2500, complete=False), make_quality("BAD"))
    archive.store_spill(make_record(2, 1, events=5000), make_quality())
    assert archive.get_spill(2, 1)["record"]["events"] == 5000


def test_version_1_archive_is_migrated_keeping_spills_and_histograms(tmp_path):
    from na64_online.monitor.archive import store as archive_module

    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(archive_module._SCHEMA_V1 + "\nPRAGMA user_version = 1;")
    conn.execute("INSERT INTO spills (run, spill, time, stored_at, record) VALUES (7, 3, 1.0, 1.0, ?)",
                 (json.dumps(make_record(7, 3)),))
    conn.execute("INSERT INTO histograms (spill_id, name, data) VALUES (1, 'e_ecal', ?)",
                 (encode_histogram(make_histograms()["e_ecal"]),))
    conn.commit()
    conn.close()
    with Archive(path) as archive:
        got = archive.get_spill(7, 3)
        assert got["record"]["events"] == 1003 and got["histograms"] == ["e_ecal"] and got["fragment"] == 0
        archive.store_spill(make_record(7, 3, events=1))  # a collision can be stored now
        assert [r["fragment"] for r in archive.list_spills(run=7)] == [0, 1]
        assert archive.check() == "ok"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3  # under Alembic
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_replaying_two_files_with_the_same_spill_numbers_keeps_both_and_alarms(tmp_path):
    """Two different files numbered run 1, spills 1–2, replayed into one archive: nothing replaced."""
    cli = [sys.executable, "-m", "na64_online.cli"]
    db = tmp_path / "qa.sqlite"
    for seed in (1, 2):
        subprocess.run([*cli, "simulate", "--out", str(tmp_path / f"{seed}.dat"), "--spills", "2", "--events", "300",
                        "--seed", str(seed)], check=True, capture_output=True, timeout=300)
    first = subprocess.run([*cli, "replay", str(tmp_path / "1.dat"), "--json", "--archive", str(db)],
                           capture_output=True, text=True, timeout=300)
    again = subprocess.run([*cli, "replay", str(tmp_path / "1.dat"), "--json", "--archive", str(db)],
                           capture_output=True, text=True, timeout=300)
    other = subprocess.run([*cli, "replay", str(tmp_path / "2.dat"), "--json", "--archive", str(db)],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == again.returncode == other.returncode == 0
    for done, collision in ((first, False), (again, False), (other, True)):
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert [r["archive_collision"] for r in records] == [collision, collision]
        assert any(a["name"] == "archive_collision" for r in records for a in r["alarms"]) == collision
    with Archive(db, readonly=True) as archive:
        rows = archive.list_spills(run=1)
        assert [(r["spill"], r["fragment"], r["collision"]) for r in rows] == [
            (1, 0, True), (1, 1, True), (2, 0, True), (2, 1, True)]
        assert {e["name"] for e in archive.alarm_history()} >= {"archive_collision"}


def test_list_spills_and_runs(archive):
    t0 = 1_700_000_000.0
    for spill in range(1, 6):
        overall = "BAD" if spill in (2, 4) else "GOOD"
        archive.store_spill(make_record(10, spill, t=t0 + spill), make_quality(overall))
    archive.store_spill(make_record(11, 1, t=t0 + 100))
    assert [s["spill"] for s in archive.list_spills(run=10)] == [1, 2, 3, 4, 5]
    assert [s["spill"] for s in archive.list_spills(run=10, quality="bad")] == [2, 4]
    assert [s["spill"] for s in archive.list_spills(since=t0 + 2, until=t0 + 4)] == [2, 3]
    assert [(s["run"], s["spill"]) for s in archive.list_spills(limit=2, newest_first=True)] == [(11, 1), (10, 5)]
    row = archive.list_spills(run=11)[0]
    assert row["overall"] is None and row["complete"] is True and row["events"] == 1001
    runs = {r["run"]: r for r in archive.runs()}
    assert runs[10]["spills"] == 5 and runs[10]["quality"] == {"GOOD": 3, "BAD": 2}
    assert runs[11]["quality"] == {"UNKNOWN": 1}


def check_run_totals(archive) -> None:
    """run_totals counts and sums what list_spills gives for the run: a fragment counts as its own row, an EOT
    that is missing, NaN or infinite adds nothing, other runs and older processing versions are left out."""
    eots = {1: 1000.0, 2: float("nan"), 3: float("inf"), 4: None, 5: 2500.5, 6: -float("inf")}
    for spill, eot in eots.items():
        archive.store_spill(make_record(20, spill, eot=eot, first_event_time=spill))
    archive.store_spill(make_record(20, 5, eot=7.25, events=3, complete=False, first_event_time=99))  # a fragment
    archive.store_spill(make_record(21, 9, eot=1e6))
    rows = archive.list_spills(run=20)
    assert len(rows) == 7
    assert archive.run_totals(20) == {"spills": 7, "eot": 1000.0 + 2500.5 + 7.25, "last_spill": 6}
    assert archive.run_totals(21) == {"spills": 1, "eot": 1e6, "last_spill": 9}
    assert archive.run_totals(22) == {"spills": 0, "eot": 0.0, "last_spill": None}
    assert archive.run_totals(20, version="another") == {"spills": 0, "eot": 0.0, "last_spill": None}


def test_run_totals_count_and_sum_what_list_spills_gives(archive):
    check_run_totals(archive)


def test_store_needs_run_and_spill(archive):
    with pytest.raises(ArchiveError):
        archive.store_spill({"events": 3})


def test_a_failed_store_leaves_nothing(archive):
    class Unencodable:
        pass

    archive.store_spill(make_record(1, 1), make_quality(), make_histograms())
    with pytest.raises(Exception):
        archive.store_spill(make_record(1, 2), make_quality(), {"bad": Unencodable()})
    with pytest.raises(Exception):  # fails inside the transaction (unknown alarm state)
        archive.store_spill(make_record(1, 3), make_quality(), make_histograms(),
                            [{"alarm_id": "x", "name": "a", "state": "exploded"}])
    assert [s["spill"] for s in archive.list_spills()] == [1]
    assert archive.stats()["histograms"] == len(make_histograms())
    assert archive.alarm_history() == []
    archive.store_spill(make_record(1, 4), make_quality(), make_histograms())
    assert [s["spill"] for s in archive.list_spills()] == [1, 4]


def test_reader_connection_sees_committed_spills(tmp_path):
    path = tmp_path / "qa.sqlite"
    with Archive(path) as writer:
        writer.store_spill(make_record(1, 1), make_quality())
        reader = Archive(path, readonly=True)
        assert [s["spill"] for s in reader.list_spills()] == [1]
        writer.store_spill(make_record(1, 2), make_quality())
        assert [s["spill"] for s in reader.list_spills()] == [1, 2]
        with pytest.raises(ArchiveError, match="read-only"):
            reader.store_spill(make_record(1, 3))
        reader.close()


# --------------------------------------------------------------------------- crash safety

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_archive import make_record, make_quality, make_histograms
    from na64_online.monitor.archive import Archive

    HANG_AT = {hang_at!r}
    FIRST = {first!r}

    class Slow(Archive):
        def _insert_histograms(self, conn, spill_id, blobs):
            super()._insert_histograms(conn, spill_id, blobs)
            if HANG_AT is not None and self._spill == HANG_AT:
                print("INTX", self._spill, flush=True)   # inside the open transaction
                time.sleep(60)

    archive = Slow({path!r})
    hists = make_histograms()
    spill = FIRST - 1
    while True:
        spill += 1
        archive._spill = spill
        events = [{{"alarm_id": "a%d" % spill, "name": "test_alarm", "severity": "warning",
                   "state": "raised", "detail": "spill %d" % spill}}]
        archive.store_spill(make_record(7, spill), make_quality("BAD" if spill % 3 == 0 else "GOOD"), hists, events)
        print("C", spill, flush=True)
    """
)


def _run_child_until(path: Path, *, hang_at: int | None, commits: int, first: int = 1, timeout: float = 60.0):
    """Start the writer child, read its lines until ``commits`` commits (or INTX), then SIGKILL it."""
    code = CHILD.format(tests=str(Path(__file__).parent), path=str(path), hang_at=hang_at, first=first)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True)
    reader.start()
    committed: list[int] = []
    in_tx = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("writer too slow") from None
            if line is None:
                proc.wait(10)
                raise AssertionError(f"writer died: {proc.stderr.read()}")
            kind, number = line.split()
            if kind == "C":
                committed.append(int(number))
            else:
                in_tx = int(number)
            if in_tx is not None or (hang_at is None and len(committed) >= commits):
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return committed, in_tx


def _check_consistent(path: Path, committed: list[int]) -> list[int]:
    """Every committed spill whole, no partial spill; archives one more; returns the spills then present."""
    with Archive(path) as archive:
        assert archive.check() == "ok"
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        orphans = conn.execute("SELECT count(*) FROM histograms WHERE spill_id NOT IN (SELECT id FROM spills)").fetchone()
        assert orphans[0] == 0
        conn.close()
        spills = [s["spill"] for s in archive.list_spills(run=7)]
        assert set(committed) <= set(spills)
        n_hists = len(make_histograms())
        for spill in spills:
            got = archive.get_spill(7, spill)
            assert got["record"]["spill"] == spill
            assert len(got["histograms"]) == n_hists
            assert len(archive.alarm_history(spill=spill)) == 1
        assert len(archive.alarm_history(limit=100000)) == len(spills)
        # and the next spill goes in normally
        nxt = max(spills, default=0) + 1
        archive.store_spill(make_record(7, nxt), make_quality(), make_histograms(), [
            {"alarm_id": f"a{nxt}", "name": "test_alarm", "severity": "warning", "state": "raised"}])
        assert len(archive.get_histograms(7, nxt)) == n_hists
    return spills + [nxt]


def test_sigkill_inside_a_transaction_loses_only_that_spill(tmp_path):
    path = tmp_path / "qa.sqlite"
    committed, in_tx = _run_child_until(path, hang_at=6, commits=0)
    assert committed == [1, 2, 3, 4, 5] and in_tx == 6
    assert Path(str(path) + "-wal").exists()  # killed with the write-ahead log open
    conn = sqlite3.connect(path)  # nothing of spill 6 is visible: not its row, histograms nor alarm event
    assert [r[0] for r in conn.execute("SELECT spill FROM spills ORDER BY spill")] == [1, 2, 3, 4, 5]
    assert conn.execute("SELECT count(*) FROM histograms").fetchone()[0] == 5 * len(make_histograms())
    assert [r[0] for r in conn.execute("SELECT alarm_id FROM alarm_events")] == ["a1", "a2", "a3", "a4", "a5"]
    conn.close()
    spills = _check_consistent(path, committed)
    assert spills == [1, 2, 3, 4, 5, 6]  # 6: archived again after the crash
    with Archive(path, readonly=True) as archive:
        assert archive.get_spill(7, 6)["record"]["events"] == 1006


def test_sigkill_at_a_random_moment_of_a_busy_writer(tmp_path):
    """Three writers in turn on the same file, each killed while busy writing."""
    path = tmp_path / "qa.sqlite"
    reported: set[int] = set()
    added: set[int] = set()
    for round_, first in enumerate((1, 1001, 2001), start=1):
        done, _ = _run_child_until(path, hang_at=None, commits=20, first=first)
        reported |= set(done)
        spills = set(_check_consistent(path, sorted(reported)))
        added.add(max(spills))  # the spill _check_consistent archived after the crash
        # at most one spill per round more than the writers reported: committed, killed before saying so
        assert len(spills - reported - added) <= round_


# --------------------------------------------------------------------------- retention


def test_retention_by_spill_count(tmp_path):
    with Archive(tmp_path / "qa.sqlite", retention_spills=5) as archive:
        for spill in range(1, 13):
            archive.store_spill(make_record(3, spill), make_quality(), make_histograms())
        assert [s["spill"] for s in archive.list_spills()] == list(range(8, 13))
        assert archive.stats()["histograms"] == 5 * len(make_histograms())


def test_retention_by_age(tmp_path):
    now = time.time()
    with Archive(tmp_path / "qa.sqlite", retention_days=1) as archive:
        archive.store_spill(make_record(3, 1, t=now - 3 * 86400), make_quality(), make_histograms())
        archive.store_spill(make_record(3, 2, t=now - 2 * 86400), make_quality(), make_histograms())
        # storing spill 2 already dropped spill 1 (and 2 itself is too old): nothing older than a day stays
        archive.store_spill(make_record(3, 3, t=now - 3600), make_quality(), make_histograms())
        assert [s["spill"] for s in archive.list_spills()] == [3]
        assert archive.prune(now=now + 2 * 86400) == 1
        assert archive.list_spills() == [] and archive.stats()["histograms"] == 0


def test_alarm_history_retention(tmp_path):
    now = time.time()
    with Archive(tmp_path / "qa.sqlite", alarm_history_days=7) as archive:
        old = {"alarm_id": "old", "name": "a", "severity": "info", "state": "raised", "time": now - 10 * 86400}
        archive.record_alarm_events([old, dict(old, state="cleared", time=now - 9 * 86400)])
        archive.record_alarm_events([{"alarm_id": "new", "name": "a", "severity": "info", "state": "raised"}])
        archive.store_spill(make_record(1, 1))
        assert [e["alarm_id"] for e in archive.alarm_history()] == ["new"]
        assert [a["alarm_id"] for a in archive.list_alarms()] == ["new"]


def test_retention_files_reach_a_steady_size(tmp_path):
    path = tmp_path / "qa.sqlite"
    with Archive(path, retention_spills=20) as archive:
        sizes = []
        for spill in range(1, 121):
            archive.store_spill(make_record(1, spill), make_quality(), make_histograms(spill))
            if spill % 40 == 0:
                sizes.append(archive.stats()["file_bytes"] + archive.stats()["wal_bytes"])
        assert sizes[2] <= sizes[1] * 1.25  # freed pages are reused


# --------------------------------------------------------------------------- bad-spill list


def _fill_bad_run(archive):
    archive.store_spill(make_record(5, 1), make_quality())
    archive.store_spill(
        make_record(5, 2, alarms=[{"name": "daq_quality_bad", "severity": "critical", "detail": "x"}]),
        make_quality("BAD", ecal="BAD", hcal="WARNING"),
    )
    archive.store_spill(make_record(5, 3, complete=False, beam=None, eot=None), make_quality("BAD", daq="BAD"))
    archive.store_spill(make_record(5, 4), make_quality("WARNING", hcal="WARNING"))
    archive.store_spill(make_record(6, 1), make_quality("BAD", beam="BAD"))


def test_bad_spills(archive):
    _fill_bad_run(archive)
    rows = archive.bad_spills(run=5)
    assert [r["spill"] for r in rows] == [2, 3]
    assert rows[0]["failing_subsystems"] == ["ecal"]
    assert rows[0]["reasons"] == ["ecal.check: ecal is bad"]
    assert rows[0]["alarms"] == ["daq_quality_bad"]
    assert rows[1]["reasons"] == ["daq.check: daq is bad", "incomplete spill"]
    assert rows[1]["eot"] is None and rows[1]["complete"] is False
    assert [(r["run"], r["spill"]) for r in archive.bad_spills()] == [(5, 2), (5, 3), (6, 1)]
    with_warnings = archive.bad_spills(run=5, states=("BAD", "WARNING"))
    assert [r["spill"] for r in with_warnings] == [2, 3, 4]
    assert with_warnings[0]["failing_subsystems"] == ["ecal", "hcal"]


def test_export_bad_spills_csv(archive, tmp_path):
    _fill_bad_run(archive)
    out = tmp_path / "bad.csv"
    assert archive.export_bad_spills(out, "csv", run=5) == 2
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == list(Archive.BAD_SPILL_COLUMNS)
    assert [(r["run"], r["spill"], r["overall"]) for r in rows] == [("5", "2", "BAD"), ("5", "3", "BAD")]
    assert rows[0]["failing_subsystems"] == "ecal"
    assert rows[0]["events"] == "1002" and rows[0]["eot"] == "47500.0"
    assert rows[1]["complete"] == "false" and rows[1]["eot"] == "" and rows[1]["reasons"].endswith("incomplete spill")
    assert rows[0]["time"].endswith("Z")
    buf = io.StringIO()
    assert archive.export_bad_spills(buf, "csv") == 3
    assert buf.getvalue().count("\n") == 4


def test_export_bad_spills_json(archive, tmp_path):
    _fill_bad_run(archive)
    out = tmp_path / "bad.json"
    assert archive.export_bad_spills(out, fmt="json") == 3
    doc = json.loads(out.read_text())
    assert doc["count"] == 3 and doc["states"] == ["BAD"] and doc["run"] is None
    first = doc["spills"][0]
    assert first["run"] == 5 and first["spill"] == 2 and first["failing_subsystems"] == ["ecal"]
    assert first["events"] == 1002 and first["eot"] == 47500.0 and first["alarms"] == ["daq_quality_bad"]
    with pytest.raises(ValueError):
        archive.export_bad_spills(out, fmt="xml")


# --------------------------------------------------------------------------- histogram export


def test_export_root_single_spill_read_back_with_uproot(archive, tmp_path):
    import uproot

    hists = make_histograms(1)
    archive.store_spill(make_record(9, 4), make_quality(), hists)
    out = tmp_path / "spill.root"
    written = archive.export_histograms_root(out, run=9, spill=4)
    assert set(written) == {"e_ecal", "weighted", "ecal_hcal", "ECAL/categories", "profile"}
    with uproot.open(out) as f:
        e = f["e_ecal"]
        assert e.classname == "TH1D"
        np.testing.assert_array_equal(e.values(), hists["e_ecal"].values())
        np.testing.assert_allclose(e.axis().edges(), hists["e_ecal"].axes[0].edges, rtol=1e-12)
        w = f["weighted"].to_hist()
        np.testing.assert_allclose(w.values(), hists["weighted"].values())
        np.testing.assert_allclose(w.variances(), hists["weighted"].variances())
        plane = f["ecal_hcal"]
        assert plane.classname == "TH3D"
        np.testing.assert_array_equal(plane.values(), hists["ecal_hcal"].values())
        assert f["profile"].classname == "TProfile"
        np.testing.assert_allclose(f["profile"].values(), hists["profile"].values())
        assert sum(f["ECAL/categories"].values()) == 4
        info = json.loads(str(f["na64_online_info"]))
        assert info["run"] == 9 and info["spills"] == [4]


def test_export_root_run_sum_and_per_spill(archive, tmp_path):
    import uproot

    per_spill = [make_histograms(s) for s in range(3)]
    for spill, hists in enumerate(per_spill, start=1):
        archive.store_spill(make_record(9, spill), make_quality(), hists)
    archive.store_spill(make_record(10, 1), make_quality(), make_histograms(99))
    out = tmp_path / "run.root"
    written = archive.export_histograms_root(out, run=9, per_spill=True)
    assert "e_ecal" in written and "spill_00002/e_ecal" in written
    with uproot.open(out) as f:
        total = sum(h["e_ecal"].values() for h in per_spill)
        np.testing.assert_array_equal(f["e_ecal"].values(), total)
        np.testing.assert_array_equal(f["spill_00002/e_ecal"].values(), per_spill[1]["e_ecal"].values())
        # grown categories are merged over the spills
        assert sum(f["ECAL/categories"].values()) == 12
        assert json.loads(str(f["na64_online_info"]))["spills"] == [1, 2, 3]


def test_export_json_in_the_one_histogram_shape(archive, tmp_path):
    """The JSON export writes histograms as the API does (model_served.HistogramJSON: edges, values without
    flow bins, entries, outside), one spill or the run summed."""
    from na64_online.monitor.histograms import histogram_json
    from na64_online.monitor.model_served import HistogramJSON

    hists = make_histograms(2)
    archive.store_spill(make_record(9, 4), make_quality(), hists)
    archive.store_spill(make_record(9, 5), make_quality(), hists)
    out = tmp_path / "h.json"
    assert archive.export_histograms_json(out, run=9, spill=4) == len(hists)
    doc = json.loads(out.read_text())
    assert doc["run"] == 9 and doc["spill"] == 4
    e = doc["histograms"]["e_ecal"]
    HistogramJSON.model_validate(e)
    assert e == histogram_json(hists["e_ecal"])
    assert len(e["axes"][0]["edges"]) == 201 and e["axes"][0]["edges"][0] == 0
    np.testing.assert_array_equal(e["values"], hists["e_ecal"].values())
    assert e["entries"] == 500 and e["entries"] - e["outside"] == sum(e["values"])
    buf = io.StringIO()
    archive.export_histograms_json(buf, run=9)
    summed = json.loads(buf.getvalue())
    assert summed["summed"] and summed["spills"] == [4, 5]
    assert summed["histograms"]["e_ecal"]["entries"] == 2 * 500


# --------------------------------------------------------------------------- alarm history


def test_alarm_history_search(archive):
    t0 = 1_700_000_000.0
    raise_a = {"alarm_id": "A", "name": "high_hadron_fraction", "severity": "warning", "state": "raised",
               "time": t0, "detail": "hf 0.3", "since_run": 1, "since_spill": 1}
    archive.store_spill(make_record(1, 3), alarm_events=[raise_a])
    archive.record_alarm_events([{"alarm_id": "A", "name": "high_hadron_fraction", "severity": "warning",
                                  "state": "acknowledged", "time": t0 + 5, "user": "shifter", "comment": "known"}])
    archive.store_spill(make_record(1, 4), alarm_events=[
        {"alarm_id": "B", "name": "decode_errors", "severity": "critical", "state": "raised", "time": t0 + 6}])
    assert [a["alarm_id"] for a in archive.active_alarms()] == ["A", "B"]
    archive.store_spill(make_record(1, 5), alarm_events=[
        {"alarm_id": "A", "name": "high_hadron_fraction", "severity": "warning", "state": "cleared", "time": t0 + 10,
         "detail": "fine again"}])
    assert [a["alarm_id"] for a in archive.active_alarms()] == ["B"]

    history = archive.alarm_history(name="high_hadron_fraction")
    assert [e["state"] for e in history] == ["cleared", "acknowledged", "raised"]
    assert history[1]["user"] == "shifter" and history[1]["comment"] == "known" and history[1]["run"] is None
    assert history[2]["run"] == 1 and history[2]["spill"] == 3  # taken from the spill it came with
    assert [e["alarm_id"] for e in archive.alarm_history(state="raised")] == ["B", "A"]
    assert [e["state"] for e in archive.alarm_history(since=t0 + 1, until=t0 + 10)] == ["raised", "acknowledged"]
    assert len(archive.alarm_history(run=1, spill=5)) == 1
    assert len(archive.alarm_history(name="high*")) == 3
    assert archive.alarm_history(name="high_hadron") == [] and archive.alarm_history(name="high?hadron*") == []
    (a,) = archive.list_alarms(name="high_hadron_fraction")
    assert a["state"] == "cleared" and a["acked_by"] == "shifter" and a["raised_spill"] == 3 and a["cleared_spill"] == 5
    assert a["detail"] == "fine again" and a["since_spill"] == 1
    assert [x["alarm_id"] for x in archive.list_alarms(state="raised")] == ["B"]
    assert archive.list_alarms(since=t0 + 11, name="high*") == []


# --------------------------------------------------------------------------- odds and ends


def test_typed_models_and_nan_in_exports(archive, tmp_path):
    """The monitor hands the archive its typed models (monitor/model.py); they are serialised once, NaN as null."""
    from na64_online.monitor.model import SpillQuality, SpillRecord

    record = SpillRecord.model_validate(make_record(2, 1, complete=False, hadron_fraction=float("nan")))
    quality = SpillQuality.model_validate({**make_quality("BAD", daq="BAD"), "run": 2, "spill": 1})

    class HistogramSet:
        hists = {"e_ecal": make_histograms()["e_ecal"]}

    archive.store_spill(record, quality, HistogramSet())
    stored = archive.get_spill(2, 1)
    assert stored["histograms"] == ["e_ecal"]
    assert stored["record"]["hadron_fraction"] is None and stored["quality"]["overall"] == "BAD"
    out = tmp_path / "bad.json"
    archive.export_bad_spills(out, "json")
    doc = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert doc["spills"][0]["hadron_fraction"] is None


def test_readers_in_other_threads_while_the_writer_writes(tmp_path):
    path = tmp_path / "qa.sqlite"
    errors: list[BaseException] = []
    stop = threading.Event()
    with Archive(path) as writer:
        writer.store_spill(make_record(1, 0), make_quality(), make_histograms())

        def read():
            try:
                with Archive(path, readonly=True) as reader:
                    while not stop.is_set():
                        rows = reader.list_spills(run=1)
                        assert rows == sorted(rows, key=lambda r: r["spill"])
                        reader.get_histograms(1, rows[-1]["spill"])
                        writer.alarm_history(limit=5)  # the writer's own connection, other thread
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        for spill in range(1, 30):
            writer.store_spill(make_record(1, spill), make_quality(), make_histograms(spill))
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []


def test_archive_size_per_spill(tmp_path):
    """Regression guard of the stated figure: ~10 KiB per spill for a full QA record, quality
    states with 25 checks and ten 300-bin Int64 histograms of ~8000 entries."""
    rng = np.random.default_rng(5)
    path = tmp_path / "qa.sqlite"
    n = 40
    quality = make_quality()
    quality["checks"] = [dict(quality["checks"][i % 4], name=f"check_{i}") for i in range(25)]
    with Archive(path) as archive:
        for spill in range(1, n + 1):
            hists = {}
            for i in range(10):
                h = hist.Hist(hist.axis.Regular(300, 0, 150, name="e"), storage=hist.storage.Int64(), name=f"h{i}")
                h.fill(rng.normal(60 + 5 * i, 10 + i, 8000))
                hists[f"h{i}"] = h
            record = make_record(1, spill, errors_by_src={str(s): {"adc_bad_key": 0} for s in range(920, 932)},
                                 candidates=sorted(rng.integers(1, 8000, 3).tolist()))
            archive.store_spill(record, quality, hists)
    per_spill = path.stat().st_size / n
    assert per_spill < 16 * 1024, f"{per_spill / 1024:.1f} KiB per spill"
