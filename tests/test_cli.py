"""The command line driven the way a user drives it: real processes, real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import VECTORS

SCRIPT = Path(sys.executable).with_name("na64-online")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "na64_online.cli"]
SMALL = VECTORS / "small.dat"
QA_KEYS = ("run", "spill", "events", "lost_events", "decode_errors", "modules_missing", "complete", "beam",
           "triggers_accepted", "hadron_fraction", "hadron_fraction_srd", "eot", "candidates", "alarms")


def run(*args, check=True, env=None):
    result = subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, timeout=120, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


def test_replay_json_has_spec_keys():
    result = run("replay", SMALL, "--json")
    (line,) = result.stdout.splitlines()
    record = json.loads(line)
    assert all(key in record for key in QA_KEYS)
    expected = json.loads((VECTORS / "small.qa.json").read_text())
    assert record.pop("candidates") == expected.pop("candidates")
    assert {k: record[k] for k in expected} == pytest.approx(expected)
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_replay_several_files_and_human_summary(tmp_path):
    copy = tmp_path / "copy.dat"
    shutil.copy(SMALL, copy)
    result = run("replay", SMALL, copy)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("run 4321 spill 1: 30 events" in line for line in lines)


def test_simulate_then_replay_and_dump(tmp_path):
    out = tmp_path / "sim.dat"
    run("simulate", "--out", out, "--spills", 2, "--events", 300, "--seed", 3, "--hadron-fraction", 0.1,
        "--dead-channel", "610/1/15", "--corrupt", "adc_bad_key=0.05")
    records = [json.loads(line) for line in run("replay", out, "--json").stdout.splitlines()]
    assert [r["spill"] for r in records] == [1, 2]
    assert all(r["events"] == 300 and r["complete"] and r["decode_errors"] > 0 for r in records)
    assert all(0.03 < r["hadron_fraction"] < 0.2 for r in records)

    event = json.loads(run("dump", out, "--spill", 2, "--event", 17, "--json").stdout)
    assert (event["run"], event["spill"], event["event"]) == (1, 2, 17)
    assert isinstance(event["trigger_mask"], int)
    for key in ("e_ps", "e_ecal", "e_hcal", "srd", "veto"):
        assert key in event
    channel = event["channels"][0]
    assert set(channel) >= {"detector", "module", "x", "y", "src_id", "port", "channel", "pedestal_even",
                            "pedestal_odd", "amplitude", "energy_gev", "saturated", "samples"}
    dead = [c for c in event["channels"] if (c["src_id"], c["port"], c["channel"]) == (610, 1, 15)]
    assert all(c["energy_gev"] == 0 and c["amplitude"] <= 0 for c in dead)


def test_dump_matches_vector_line():
    event = json.loads(run("dump", SMALL, "--spill", 1, "--event", 23, "--json").stdout)
    line = (VECTORS / "small.events.jsonl").read_text().splitlines()[22]
    expected = json.loads(line)
    assert event["trigger_mask"] == expected["trigger_mask"] and event["candidate"] is True
    mine = {(c["src_id"], c["port"], c["channel"]): c for c in event["channels"]}
    for c in expected["channels"]:
        got = mine[(c["src_id"], c["port"], c["channel"])]
        assert got["samples"] == c["samples"]
        assert got["energy_gev"] == pytest.approx(c["energy_gev"], abs=1e-9)


def test_custom_map_counts_unknown_channels(tmp_path):
    lines = (Path(__file__).parents[1] / "decoders" / "default-channel-map.csv").read_text().splitlines()
    custom = tmp_path / "map.csv"
    srd = ("612,0,0,", "612,0,1,", "612,0,2,")
    custom.write_text("\n".join(line for line in lines if not line.startswith(srd)) + "\n")
    record = json.loads(run("replay", SMALL, "--json", "--map", custom).stdout)
    assert record["decode_errors"] == 0
    assert record["notices_by_src"]["612"]["unknown_channel"] > 0
    assert record["candidates"] == []  # no SRD any more: no electron tag


@pytest.mark.parametrize("args, message", [
    (("replay", "/nonexistent/file.dat"), "cannot open"),
    (("replay", "__FILE__:pyproject.toml"), "not a DATE raw data stream"),
    (("replay", SMALL, "--map", "__FILE__:pyproject.toml"), "first line must be"),
    (("replay", SMALL, "--config", "__FILE__:tests/data/vectors/README.md"), "not valid TOML"),
    (("replay", SMALL, "--bogus-option"), "unrecognized arguments"),
    (("dump", SMALL, "--spill", 1, "--event", 999), "no event 999"),
    (("dump", SMALL, "--spill", "x", "--event", 1), "expected an integer, got 'x'"),
    (("dump", SMALL, "--spill", 10**23, "--event", 1), "is outside 0..4294967295"),
    (("demo", "--workers", -1), "argument --workers: -1 is outside 0.."),
    (("serve", "--connect", "notanendpoint", "--no-web"), "'notanendpoint' is not a ZeroMQ endpoint"),
    (("serve", "--connect", "tcp://127.0.0.1:99999", "--no-web"), "port 99999 is outside 1..65535"),
    (("worker", "--connect", "tcp//x:1"), "is not a ZeroMQ endpoint"),
    (("simulate", "--out", "/tmp/x.dat", "--hadron-fraction", "nan"), "nan is outside 0..1"),
    (("simulate", "--out", "/tmp/x.dat", "--dead-channel", "610/9/1"), "port 0..7"),
    (("simulate", "--out", "/tmp/x.dat", "--corrupt", "nonsense=1"), "unknown corruption kind"),
    (("simulate", "--out", "/tmp/x.dat", "--events", -5), "argument --events: -5 is outside 1.."),
    (("frobnicate",), "invalid choice"),
])
def test_bad_input_one_line_no_traceback(args, message):
    root = Path(__file__).parents[1]
    args = [str(root / a.split(":", 1)[1]) if isinstance(a, str) and a.startswith("__FILE__:") else a for a in args]
    result = run(*args, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_bad_config_from_environment(monkeypatch):
    import os

    env = {**os.environ, "NA64_MONITOR__CHUNK_EVENTS": "zero"}
    result = run("replay", SMALL, check=False, env=env)
    assert result.returncode != 0 and "chunk_events" in result.stderr and "Traceback" not in result.stderr


def test_truncated_file_decodes_whole_events_and_says_so(tmp_path):
    cut = tmp_path / "cut.dat"
    cut.write_bytes(SMALL.read_bytes()[:100_001])
    result = run("replay", cut, "--json")
    record = json.loads(result.stdout)
    assert record["complete"] is False and record["decode_errors"] == 1
    assert 10 < record["events"] < 30 and record["lost_events"] == 0
    assert "truncated" in result.stderr


def test_format_prints_the_layout_tables():
    text = run("format").stdout
    assert "MSADC ADC block header" in text and "| 30–31 | key |" in text


def _run_on_terminal(args, stdout_on_terminal: bool):
    """Run the CLI with stderr (and optionally stdout) on a pty; returns (process, stdout or None, terminal text)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    chunks = []
    try:
        proc = subprocess.Popen([*COMMAND, *args], stdout=slave if stdout_on_terminal else subprocess.PIPE,
                                stderr=slave, text=True)
        os.close(slave)
        while True:  # drain the terminal while the process runs (a pty loses data once its slave closes)
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        stdout, _ = proc.communicate(timeout=120)
    finally:
        os.close(master)
    return proc, stdout, b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal():
    """stderr on a terminal (a pty here) shows a progress bar; stdout keeps only records."""
    proc, stdout, terminal = _run_on_terminal(["replay", str(SMALL), "--json"], stdout_on_terminal=False)
    assert proc.returncode == 0
    assert json.loads(stdout)["events"] == 30
    assert "small.dat" in terminal and "%" in terminal


def test_summary_lines_do_not_share_the_progress_bar_line(tmp_path):
    """Both streams on one terminal: every summary line starts a line of its own, free of the bar."""
    copy = tmp_path / "copy.dat"
    shutil.copy(SMALL, copy)
    proc, _, terminal = _run_on_terminal(["replay", str(SMALL), str(copy)], stdout_on_terminal=True)
    assert proc.returncode == 0
    shown = [line.rsplit("\r", 1)[-1].strip() for line in terminal.replace("\r\n", "\n").split("\n")]
    summaries = [line for line in shown if "spill 1: 30 events" in line]
    assert len(summaries) == 2 and all(line.startswith("run 4321 spill 1") for line in summaries), terminal
    assert not any("%|" in line for line in summaries)


def test_replay_archive_then_analyst_commands(tmp_path):
    """replay --archive fills the archive; analysts get the bad-spill list, alarm history and ROOT files."""
    import csv
    import io

    import uproot

    raw, db = tmp_path / "run.dat", tmp_path / "qa.sqlite"
    run("simulate", "--out", raw, "--spills", 3, "--events", 1500, "--hadron-fraction", 0.3, "--seed", 9)
    records = [json.loads(line) for line in run("replay", raw, "--json", "--archive", db).stdout.splitlines()]
    assert [r["quality"]["overall"] for r in records] == ["BAD"] * 3
    assert "high_hadron_fraction" in {a["name"] for a in records[-1]["alarms"]}

    rows = list(csv.DictReader(io.StringIO(run("archive", db, "bad-spills").stdout)))
    assert [(r["run"], r["spill"], r["overall"]) for r in rows] == [("1", "1", "BAD"), ("1", "2", "BAD"), ("1", "3", "BAD")]
    assert all("beam" in r["failing_subsystems"] for r in rows)
    bad_json = json.loads(run("archive", db, "bad-spills", "--format", "json").stdout)
    assert bad_json["count"] == 3

    history = [json.loads(line) for line in run("archive", db, "alarms", "--name", "high_*").stdout.splitlines()]
    assert [(h["name"], h["state"], h["spill"]) for h in history] == [("high_hadron_fraction", "raised", 3)]

    root_file = tmp_path / "run1.root"
    run("archive", db, "export", "--run", 1, "--out", root_file)
    with uproot.open(root_file) as f:
        e_ecal = f["e_ecal"].to_numpy()[0]
    assert e_ecal.sum() > 0

    missing = run("archive", tmp_path / "nope.sqlite", "spills", check=False)
    assert missing.returncode != 0 and "no archive" in missing.stderr


@pytest.mark.timeout(120)
def test_demo_runs_the_live_service_on_the_simulator():
    """The README's main job: simulated LDCs → live service → records, HTTP API up meanwhile."""
    result = run("demo", "--spills", 2, "--events", 600, "--spill-duration", 0.6, "--spill-gap", 0.3,
                 "--http", "127.0.0.1:0", "--json", "--workers", 0)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["spill"], r["events"], r["complete"]) for r in records] == [(1, 600, True), (2, 600, True)]
    assert all(r["lost_messages"]["total"] == 0 and r["lost_events"] == 0 for r in records)
    assert "dashboard API on http://127.0.0.1:" in result.stderr


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    """An archive holding run 4321, spill 1 (the small test vector)."""
    db = tmp_path_factory.mktemp("archive") / "qa.sqlite"
    run("replay", SMALL, "--archive", db)
    return db


@pytest.mark.parametrize("args, message", [
    (("spills", "--run", 10**23), "argument --run: 100000000000000000000000 is outside 0..4294967295"),
    (("spills", "--quality", "MAYBE"), "argument --quality: invalid choice: 'MAYBE'"),
    (("alarms", "--state", "bogus"), "argument --state: invalid choice: 'bogus'"),
    (("export", "--run", 5, "--out", "__TMP__/x.root"), "run 5 is not in"),
    (("export", "--run", 4321, "--spill", 99, "--out", "__TMP__/x.root"), "spill 99 of run 4321 is not in"),
    (("export", "--run", 4321, "--out", "__TMP__/x.txt"), "must end in .root or .json"),
])
def test_archive_bad_requests_are_errors(small_archive, tmp_path, args, message):
    args = [str(a).replace("__TMP__", str(tmp_path)) for a in args]
    result = run("archive", small_archive, *args, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("na64-online") and message in result.stderr, result.stderr
    assert "error:" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_archive_filters_accept_any_case(small_archive):
    (row,) = [json.loads(line) for line in run("archive", small_archive, "spills", "--quality", "good").stdout.splitlines()] or [None]
    assert row is None or row["overall"] == "GOOD"
    assert run("archive", small_archive, "alarms", "--state", "RAISED").returncode == 0


def test_archive_into_a_closed_pipe_is_quiet(small_archive):
    """``archive … | head``: the reader leaving early ends the command quietly."""
    proc = subprocess.Popen([*COMMAND, "archive", str(small_archive), "spills"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command writes its first line
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and stderr == ""


@pytest.mark.parametrize("content, message", [
    (b"just some text, not a database\n" * 10, "cannot open archive"),
    (None, "is not an na64-online QA archive"),
])
def test_archive_on_a_file_that_is_not_one(tmp_path, content, message):
    import sqlite3

    path = tmp_path / "other.sqlite"
    if content is None:
        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    else:
        path.write_bytes(content)
    result = run("archive", path, "spills", check=False)
    assert result.returncode != 0 and message in result.stderr and "schema version" not in result.stderr


def test_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    result = run("replay", empty, check=False)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr == f"na64-online: error: {empty}: the file is empty (0 bytes)\n"


def test_truncation_at_a_word_boundary_names_no_stray_bytes(tmp_path):
    cut = tmp_path / "cut.dat"
    cut.write_bytes(SMALL.read_bytes()[:100_000])
    result = run("replay", cut)
    assert "na64-online: warning:" in result.stderr and "truncated" in result.stderr
    assert "stray" not in result.stderr and "0 bytes" not in result.stderr
