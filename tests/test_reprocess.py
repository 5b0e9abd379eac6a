"""``reprocess`` on a real local Dask cluster, driven as a user drives it: the CLI as a process.

The records must be those of ``replay`` on the same files, field for field,
except what says when and how fast (processing time, time stamps, the random
id of an alarm occurrence).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_cli import COMMAND, run

distributed = pytest.importorskip("distributed", reason="Dask is the [cluster] extra (in [test] too)")

#: fields that say when or how fast, not what: they differ between two replays of the same file too
VOLATILE = ("processing_seconds", "finished_at")
VOLATILE_ALARM = ("alarm_id", "raised_at", "acknowledged_at", "cleared_at")


def comparable(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["alarms"] = [{k: v for k, v in a.items() if k not in VOLATILE_ALARM} for a in record["alarms"]]
    return out


def records(stdout: str) -> list[dict]:
    return [comparable(json.loads(line)) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def raw_files(tmp_path_factory):
    """Three files: clean; damaged (bytes flipped, one inserted: the stream re-aligned; truncated); clean again."""
    folder = tmp_path_factory.mktemp("reprocess")
    clean, damaged, again = folder / "run7.dat", folder / "run7-damaged.dat", folder / "run7-again.dat"
    run("simulate", "--out", clean, "--run", 7, "--spills", 3, "--events", 300, "--seed", 1,
        "--dead-channel", "610/1/15", "--pedestal-drift", "40")
    data = bytearray(clean.read_bytes())
    for at in range(len(data) // 5, len(data) // 3, 7919):
        data[at] ^= 0xFF
    data.insert(len(data) // 2 + 3, 0x5A)  # shifts the rest of the stream by one byte
    damaged.write_bytes(bytes(data[:-37]))  # and ends inside the last event
    again.write_bytes(clean.read_bytes())
    files = [clean, damaged, again]
    replay = run("replay", *files, "--json")
    assert "re-aligned" in replay.stderr and "truncated" in replay.stderr
    return files, replay


@pytest.fixture(scope="module")
def cluster():
    """reprocess's LocalCluster of 2 worker processes (nannies restart a killed worker), loopback only."""
    from na64_online.reprocess import local_cluster

    with local_cluster(2) as local, distributed.Client(local) as client:
        yield local, client


def notes(stderr: str) -> list[str]:
    return sorted(line for line in stderr.splitlines() if line.startswith("na64-online: warning")
                  or line.startswith("na64-online: error"))


def test_reprocess_on_a_local_cluster_gives_replays_records(raw_files, tmp_path):
    """2 workers, several files; a file that is not raw data and a missing one are reported and skipped."""
    files, replay = raw_files
    text = tmp_path / "notes.txt"
    text.write_text("this is not raw data\n" * 50)
    missing = tmp_path / "missing.dat"
    result = run("reprocess", files[0], text, files[1], missing, files[2], "--workers", 2, "--json", check=False)
    assert result.returncode == 1, result.stderr
    expected = records(replay.stdout)
    assert len(expected) >= 8
    assert records(result.stdout) == expected
    errors = [line for line in notes(result.stderr) if line.startswith("na64-online: error")]
    assert notes(result.stderr) == sorted(notes(replay.stderr) + errors)  # re-aligned, truncated: said alike
    assert len(errors) == 2
    assert any(f"{text}: " in e and "not a DATE raw data stream" in e and e.endswith("file skipped") for e in errors)
    assert any(f"{missing}: " in e and "cannot open" in e and e.endswith("file skipped") for e in errors)
    summary = result.stderr.strip().splitlines()[-1]
    assert f"reprocessed 3 files (2 skipped), {len(expected)} spills" in summary
    assert "GB/s" in summary and "events/s" in summary


def test_a_spill_task_maps_its_bytes_unless_the_stream_was_realigned(raw_files):
    """A clean spill is decoded from the file mapped read-only (as replay does), not from a copy; a spill
    of a byte-shifted, re-aligned stream is read into one buffer. Both are the bytes its index points into."""
    import numpy as np

    from na64_online.decoders import layout
    from na64_online.reprocess import index_step, read_spill_words, spill_words

    def plans(path):  # the file's whole index pass, its steps in a row (as the workers run them)
        step = index_step(str(path))
        yield from step.spills
        while not step.summary.done:
            step = index_step(str(path), step)
            yield from step.spills

    files, _ = raw_files
    clean = list(plans(files[0]))
    realigned = [p for p in plans(files[1]) if len(p.pieces) > 1]
    assert clean and realigned
    for plan in (clean[0], realigned[0]):
        with spill_words(plan) as words:
            assert np.array_equal(words, read_spill_words(plan))
            assert words.flags.writeable == (plan is realigned[0])
            first = int(plan.index.offset[plan.index.status == 0][0])
            assert int(words[first + 1]) == layout.DATE_MAGIC  # an event starts where the index says


def test_an_index_step_away_from_its_pass_walks_again_to_where_it_stood(raw_files):
    """A pass's walk stays on the worker that ran its last step; a step run elsewhere (that worker gone, the
    step retried) walks the file again from its start to there: the same spills, the same results, the same
    notes, on a damaged file (re-aligned, truncated) and a clean one, decoding in the steps or planning."""
    import numpy as np

    from na64_online.config import load_config
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online import reprocess
    from na64_online.worker_setup import encode_setup

    setup = encode_setup(load_config(environ={}), ChannelMap.default())
    processor = reprocess._processor(setup)

    def timeless(frames):  # the result without the decoding time it reports
        acc = processor.decode_result([bytes(f) for f in frames])
        acc.decode_seconds = 0.0
        return [np.frombuffer(f, dtype=np.uint8) for f in processor.encode_result(acc)]

    def steps(path, decode, away):
        step, out = None, []
        while step is None or not step.summary.done:
            if away:
                reprocess._WALKS.clear()
                reprocess._RAW_FILES.clear()
            step = reprocess.index_step(str(path), step, setup if decode else None)
            out.append(step)
        return out

    files, _ = raw_files
    for path in (files[1], files[0]):
        for decode in (True, False):
            here, away = steps(path, decode, False), steps(path, decode, True)
            assert [s.summary for s in here] == [s.summary for s in away]
            assert [s.summary for s in here][-1].notes or path == files[0]
            assert sum(len(s.results if decode else s.spills) for s in here) == sum(len(s.summary.spills) for s in here)
            for a, b in zip(here, away):
                assert len(a.results) == len(b.results)
                for x, y in zip(a.results, b.results):
                    assert not any(start % 8 for start in x.starts)  # packed: each frame 8-aligned
                    assert all(np.array_equal(u, v) for u, v in zip(timeless(x.frames()), timeless(y.frames())))
    assert not reprocess._WALKS  # a finished pass leaves no walk behind


def test_the_deployed_dask_worker_settings_are_those_of_reprocess_own_cluster():
    """deploy/dask-reprocess.yaml (for `dask worker` hosts and batch jobs) says what local_cluster sets."""
    import dask

    from na64_online.reprocess import WORKER_DASK_CONFIG

    deployed = dask.config.collect(paths=[str(Path(__file__).parents[1] / "deploy" / "dask-reprocess.yaml")],
                                   env={})
    for key, value in WORKER_DASK_CONFIG.items():
        assert dask.config.get(key, "absent", config=deployed) == value, key
    flat = {f"{a}.{b}" for a, b in [("distributed.nanny.pre-spawn-environ", k)
                                     for k in deployed["distributed"]["nanny"]["pre-spawn-environ"]]}
    assert flat <= set(WORKER_DASK_CONFIG)


def test_reprocess_own_cluster_settings_yield_to_the_users_dask_configuration():
    """local_cluster applies WORKER_DASK_CONFIG only where the user's Dask configuration keeps Dask's default."""
    import dask

    from na64_online.reprocess import WORKER_DASK_CONFIG, cluster_dask_config

    import os
    from unittest import mock

    with mock.patch.dict(os.environ), mock.patch.object(dask.config, "paths", []):  # no YAML of this host's user
        for name in [n for n in os.environ if n.startswith("DASK_") and n != "DASK_CONFIG"]:
            del os.environ[name]
        with dask.config.set({"distributed.admin.tick.interval": "20ms"}):  # Dask's default: reprocess's value
            assert cluster_dask_config() == WORKER_DASK_CONFIG
        with dask.config.set({"distributed.admin.tick.interval": "50ms"}):
            assert cluster_dask_config() == {k: v for k, v in WORKER_DASK_CONFIG.items()
                                             if k != "distributed.admin.tick.interval"}
        # the profiler asked for by a variable, even at Dask's default
        os.environ["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "True"
        assert cluster_dask_config() == {k: v for k, v in WORKER_DASK_CONFIG.items()
                                         if k != "distributed.worker.profile.enabled"}


def test_spill_tasks_are_spread_over_the_workers(raw_files, cluster):
    """One file's spills run on both workers, not where the file was indexed only (Dask runs a task where
    its inputs are); the workers run without Dask's MALLOC_TRIM_THRESHOLD_ and statistical profiler."""
    from na64_online.config import load_config
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.reprocess import ClusterConfig, Reprocessor

    files, replay = raw_files
    local, client = cluster
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
    import dask

    assert set(client.run(dask.config.get, "distributed.worker.profile.enabled").values()) == {False}
    out: list[dict] = []
    with distributed.get_task_stream(client) as stream:
        Reprocessor(load_config(environ={}), ChannelMap.default(), ClusterConfig(scheduler=local.scheduler_address),
                    window=1 << 10).run([files[0]], out.append, lambda *a: None)
    assert [comparable(r) for r in out] == records(replay.stdout)[:3]
    workers = {t["worker"] for t in stream.data if t["key"].startswith("na64-spill-")}
    assert len(workers) == 2, stream.data


def _set_index_window(rows: int) -> int:
    """The most rows a call of the index kernel gives (index_bytes and the walk alike), in this process."""
    from na64_online.decoders import decode

    old, decode.INDEX_WINDOW = decode.INDEX_WINDOW, rows
    return old


def _worker_files_mapped(paths: list[str]) -> int:
    """Bytes of these files resident in this process's mappings (its /proc/self/smaps)."""
    resident, mapping = 0, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's first line: range perms offset dev inode path
                mapping = fields[5] if len(fields) > 5 else None
            elif fields and fields[0] == "Rss:" and mapping in paths:
                resident += int(fields[1]) * 1024
    return resident


@pytest.mark.timeout(120)  # a run that waits forever fails here
def test_index_passes_in_many_steps_with_one_task_in_flight_give_replays_records(raw_files, cluster):
    """Index steps of 50-row kernel calls (each file's pass a chain of tasks, spills decoded while it goes on) and a
    window of one spill task, no spill held ahead (so only the file being merged is indexed, its spills spread
    as spill tasks): several files, damaged ones too, merged in order into replay's records — a later file's
    spills never hold the window while the file being merged waits for its next spills."""
    from na64_online.config import load_config
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.reprocess import ClusterConfig, Reprocessor

    files, replay = raw_files
    local, client = cluster
    client.wait_for_workers(2, timeout=60)
    old = set(client.run(_set_index_window, 50).values())
    out: list[dict] = []
    try:
        with distributed.get_task_stream(client) as stream:
            stats = Reprocessor(load_config(environ={}), ChannelMap.default(),
                                ClusterConfig(scheduler=local.scheduler_address, ahead=0), window=1
                                ).run(files, out.append, lambda *a: None)
    finally:
        client.run(_set_index_window, old.pop())
    assert [comparable(r) for r in out] == records(replay.stdout)
    assert stats.files == 3 and stats.spills == len(out)
    assert 0 < stats.tail_seconds < stats.seconds  # the merge after the last result came: the end of the run
    def ends(prefix):
        return sorted(s["stop"] for t in stream.data if t["key"].startswith(prefix)
                      for s in t["startstops"] if s["action"] == "compute")

    steps, spills = ends("na64-index-"), ends("na64-spill-")
    # each pass a chain of tasks: about a step per spill (none asked past a file's end; the re-aligned part of
    # the damaged file is walked by windows, a step may complete two spills there)
    assert len(steps) >= stats.spills - stats.files
    # spill tasks for the spills of each file's first steps at least (asked before anything is known of the
    # file); a spill of a step that is at most the one after the running one is decoded in its step
    assert stats.files <= len(spills) <= stats.spills
    assert spills[0] < steps[-1]  # spills decoded while files are still being indexed


def test_with_a_file_per_worker_spills_are_decoded_where_their_file_is_indexed(raw_files, cluster):
    """Two files on two workers: each file's index pass runs on one worker, the two passes on the two
    workers, and its steps decode the spills they complete (no spill task, no second mapping of the pages);
    replay's records; the files are not left mapped in the workers."""
    from na64_online.config import load_config
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.reprocess import ClusterConfig, Reprocessor

    files, replay = raw_files
    local, client = cluster
    client.wait_for_workers(2, timeout=60)
    two = [files[1], files[0]]  # the damaged one (re-aligned, truncated) and a clean one
    out: list[dict] = []
    with distributed.get_task_stream(client) as stream:
        Reprocessor(load_config(environ={}), ChannelMap.default(),
                    ClusterConfig(scheduler=local.scheduler_address)).run(two, out.append, lambda *a: None)
    single = run("replay", *two, "--json")
    assert [comparable(r) for r in out] == records(single.stdout)
    where: dict[str, set] = {}
    for t in stream.data:
        if t["key"].startswith("na64-index-"):
            where.setdefault(t["key"].split("-")[-2], set()).add(t["worker"])
    assert sorted(len(w) for w in where.values()) == [1, 1] and len(set.union(*where.values())) == 2, where
    spill_tasks = [t for t in stream.data if t["key"].startswith("na64-spill-")]
    # the first steps of both passes decode (two passes for two threads); a file left alone at the end of the
    # run has its last spills spread as spill tasks
    assert len(spill_tasks) <= len(out) - 2, spill_tasks
    assert set(client.run(_worker_files_mapped, [str(Path(f).resolve()) for f in two]).values()) == {0}


def test_a_worker_killed_mid_run_is_survived(raw_files, cluster):
    files, replay = raw_files
    local, client = cluster
    proc = subprocess.Popen([*COMMAND, "reprocess", *map(str, files), "--scheduler", local.scheduler_address,
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    try:
        lines = [proc.stdout.readline()]  # the first spill merged: the run is under way
        pids = client.run(os.getpid)
        victim = max(pids.values())
        os.kill(victim, signal.SIGKILL)
        lines += proc.stdout.readlines()
        assert proc.wait(120) == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    assert records("".join(lines)) == records(replay.stdout)
    client.wait_for_workers(2, timeout=60)  # the nanny brought a new worker up
    assert victim not in client.run(os.getpid).values()
    # ... with the cluster's settings, as the first one had (it came up with Dask's defaults: profiler on)
    import dask

    from na64_online.reprocess import cluster_dask_config

    for key, value in cluster_dask_config().items():  # what local_cluster applies (the user's own settings kept)
        if key.startswith("distributed.worker.") or key.startswith("distributed.admin."):
            assert set(client.run(dask.config.get, key).values()) == {value}, key
    assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}


def test_without_dask_reprocess_says_how_to_install_it(tmp_path):
    blocked = ("import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
               "from na64_online.cli import main\n"
               f"sys.exit(main(['reprocess', {str(tmp_path / 'x.dat')!r}]))")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == ("na64-online: error: reprocess needs Dask: "
                                     "pip install 'na64-online[cluster]' (dask[distributed])")


def test_bad_scheduler_address_is_a_usage_error(capsys):
    from na64_online.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["reprocess", "x.dat", "--scheduler", "localhost:8786"])
    assert exit_.value.code == 2 and "tcp://HOST:8786" in capsys.readouterr().err


def test_ahead_is_set_in_the_configuration_or_on_the_command_line(tmp_path, capsys):
    """``[cluster] ahead`` (decoded spills of later files held per worker thread), overridden by ``--ahead``;
    a negative count is a usage error."""
    from na64_online.cli import build_parser, cluster_config_from_args
    from na64_online.config import load_config

    config = tmp_path / "cluster.toml"
    config.write_text("[cluster]\nahead = 3\n")
    loaded = load_config(config, environ={})
    assert load_config(environ={}).cluster.ahead == 16 and loaded.cluster.ahead == 3
    parser = build_parser()
    assert cluster_config_from_args(loaded, parser.parse_args(["reprocess", "x.dat"])).ahead == 3
    assert cluster_config_from_args(loaded, parser.parse_args(["reprocess", "x.dat", "--ahead", "0"])).ahead == 0
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["reprocess", "x.dat", "--ahead", "-1"])
    assert exit_.value.code == 2 and "--ahead" in capsys.readouterr().err


def test_tls_certificates_from_the_configuration_encrypt_the_cluster(raw_files, tmp_path):
    """[cluster] tls_* set: the LocalCluster and the client speak tls:// with those certificates; a tcp://
    scheduler is then refused as a configuration error."""
    import shutil as sh

    if sh.which("openssl") is None:
        pytest.skip("openssl (to make a test certificate) is not installed")
    files, replay = raw_files
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    config = tmp_path / "cluster.toml"
    config.write_text(f'[cluster]\nworkers = 1\ntls_ca_file = "{cert}"\ntls_cert_file = "{cert}"\n'
                      f'tls_key_file = "{key}"\n')
    result = run("reprocess", files[0], "--config", config, "--json")
    assert records(result.stdout) == records(replay.stdout)[:3]
    refused = run("reprocess", files[0], "--config", config, "--scheduler", "tcp://127.0.0.1:8786", check=False)
    assert refused.returncode == 1 and "cluster.scheduler" in refused.stderr and "tls://" in refused.stderr


def test_a_pass_is_nearly_done_with_less_than_two_spills_of_its_file_left():
    """The client spreads a lone pass's spills as spill tasks only while two spills or more are left (by the
    bytes per spill so far): the last one is decoded in its step, where the pages already are. With at most
    one and a half spills left, no step is asked beyond the running one (it is likely the file's last)."""
    from na64_online.reprocess import _FileRun

    assert not _FileRun(0, "f", size=1000, position=0, spills=0).nearly_done()  # nothing known yet
    assert not _FileRun(0, "f", size=1000, position=600, spills=3).nearly_done()  # 400 bytes: two spills of 200
    assert _FileRun(0, "f", size=1000, position=700, spills=3).nearly_done()
    assert _FileRun(0, "f", size=1000, position=1000, spills=5).nearly_done()
    assert not _FileRun(0, "f", size=1000, position=600, spills=3).ending()  # 400 bytes: two spills of 200
    assert _FileRun(0, "f", size=1000, position=700, spills=3).ending()  # 300 bytes: 1.3 spills of 233
    assert _FileRun(0, "f", size=1000, position=750, spills=3).ending()
    assert not _FileRun(0, "f", size=1000, position=0, spills=0).ending()
