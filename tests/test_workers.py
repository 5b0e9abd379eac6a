"""The worker port (daq/workers.py) as a peer meets it: real ZeroMQ on 127.0.0.1, real worker processes.

Nothing received is unpickled; malformed messages, damaged results, other
protocols and peers without an allowed CurveZMQ key are refused and counted,
and the ingest thread goes on. If a core thread dies anyway, /api/health says
so (503) and ``serve``/``demo`` exit non-zero.
"""

from __future__ import annotations

import gc
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from na64_online.config import Config, load_config
from na64_online.decoders import layout as L
from na64_online.daq.builder import BuiltChunk, gather
from na64_online.daq.ingest import IngestConfig, IngestService
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
from na64_online.daq.builder import PlanError
from na64_online.daq.workers import (
    ERROR, HELLO, PROTOCOL, READY, RESULT, SETUP, TASK, TASKREF, CurveServer, Task, WorkerPool, _Worker,
    decode_task, is_loopback, make_keys, read_task_payloads, task_references,
)
from na64_online.errors import ConfigError
from na64_online.monitor.spill_monitor import make_processor
from na64_online.service import build_monitor
from na64_online.worker_setup import worker_setup
from conftest import process_memory_readable
from test_live import (EVENTS, RUN, _Spill, comparable, core, publisher, records_of, replay, run_nodes,
                       serve_process, workers_ready)

TIMING = ("processing_seconds", "finished_at")


@pytest.fixture(scope="module")
def spills(channel_map):
    sim = ReadoutSimulator(SimulationConfig(run=RUN, spills=3, events_per_spill=EVENTS, seed=21), channel_map)
    return [_Spill(s.run, s.spill, s.raw(), {l: s.ldc_events(l) for l in (1, 2)}) for s in sim.spills()]


@pytest.fixture(scope="module")
def replayed(spills, channel_map, tmp_path_factory):
    return replay([s.raw for s in spills], channel_map, tmp_path_factory)


@pytest.fixture(scope="module")
def processor(channel_map):
    return make_processor(channel_map, Config().monitor, Config().histograms)


@pytest.fixture()
def keys(tmp_path):
    """server key pair; allowed worker 'w1' (public key in the clients dir); a stranger not allowed."""
    base = tmp_path / "keys"
    make_keys(base, "server")
    make_keys(base / "w1", "w1")
    make_keys(base / "stranger", "stranger")
    clients = base / "clients"
    clients.mkdir()
    shutil.copy(base / "w1" / "w1.key", clients / "w1.key")
    return base


def curve_server(keys: Path) -> CurveServer:
    return CurveServer(str(keys / "server.key_secret"), str(keys / "clients"))


def record(processor, acc) -> dict:
    out = processor.finish(acc).to_dict()
    for key in TIMING:
        out.pop(key)
    return out


def pump(pool: WorkerPool, seconds: float, until=lambda: False) -> list:
    """Run the pool's loop (as the ingest thread does) for up to ``seconds``; returns finished tasks."""
    done = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        if pool.socket.poll(20, zmq.POLLIN):
            done += pool.receive(time.monotonic())
        done += pool.poll(time.monotonic())
    return done


def spill_words(spills) -> np.ndarray:
    return np.frombuffer(bytearray(spills[0].raw), dtype=np.uint32)


# --------------------------------------------------------------------------- CurveZMQ
@pytest.mark.timeout(90)
def test_authenticated_worker_process_decodes_exactly_like_the_service(keys, spills, channel_map, processor):
    """`na64-online worker --key --server-key`, set up with text, result in the wire format; connected where the
    service's own worker processes connect (local_endpoint: a Unix socket in a private directory, same ROUTER
    socket, same CurveZMQ keys), which is removed at close."""
    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result, curve=curve_server(keys))
    local = pool.local_endpoint
    if zmq.has("ipc"):
        where = Path(local[len("ipc://"):]).parent
        assert local.startswith("ipc://") and (where.stat().st_mode & 0o777) == 0o700
    cmd = [sys.executable, "-m", "na64_online.cli", "worker", "--connect", local, "--capacity", "1",
           "--key", str(keys / "w1" / "w1.key_secret"), "--server-key", str(keys / "server.key")]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        pump(pool, 60, until=lambda: pool.n_ready == 1)
        assert pool.n_ready == 1, "the authenticated worker never got ready"
        words = spill_words(spills)
        assert pool.submit(Task(RUN, 1, 0, BuiltChunk.from_words(RUN, 1, 0, words), EVENTS, EVENTS + 2),
                           time.monotonic())
        results = pump(pool, 30, until=lambda: not pool.busy)
    finally:
        pool.close()
        proc.wait(10)
    assert len(results) == 1 and results[0].error is None, results
    assert pool.stats.tasks_done == 1 and pool.stats.refused_peers == 0
    assert record(processor, results[0].result) == record(processor, processor.accumulate(words))
    assert proc.returncode == 0, proc.stderr.read().decode()
    if zmq.has("ipc"):
        assert not where.exists()


def _client(ctx, endpoint, curve=None) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    if curve is not None:
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve
    s.connect(endpoint)
    s.send_multipart([HELLO, PROTOCOL, b""])
    return s


@pytest.mark.timeout(60)
def test_unauthenticated_or_wrong_key_clients_never_reach_the_handler(keys, channel_map, processor):
    from na64_online.daq.workers import load_key

    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result, curve=curve_server(keys))
    handled = []
    real = pool._handle
    pool._handle = lambda frames, now: handled.append(frames[1].bytes) or real(frames, now)
    server_public, _ = load_key(keys / "server.key", secret=False, what="test")
    w1 = load_key(keys / "w1" / "w1.key_secret", secret=True, what="test")
    stranger = load_key(keys / "stranger" / "stranger.key_secret", secret=True, what="test")
    ctx = zmq.Context()
    try:
        refused_before = 0
        for name, curve in (("no CurveZMQ", None), ("unknown key", (*stranger, server_public)),
                            ("wrong server key", (*w1, zmq.curve_keypair()[0]))):
            s = _client(ctx, pool.endpoint, curve)
            pump(pool, 5, until=lambda: pool.stats.refused_peers > refused_before)
            s.close()
            assert pool.stats.refused_peers > refused_before, f"{name}: handshake not refused"
            refused_before = pool.stats.refused_peers
        assert handled == [] and pool.workers == {}
        # control: the allowed key gets through and is sent the set-up
        s = _client(ctx, pool.endpoint, (*w1, server_public))
        pump(pool, 10, until=lambda: bool(handled))
        assert s.poll(5000), "allowed worker got no SETUP"
        assert s.recv_multipart()[0] == SETUP and handled == [HELLO]
        s.close()
    finally:
        pool.close()
        ctx.term()


def test_binding_beyond_loopback_needs_the_keys(tmp_path, keys):
    assert is_loopback("tcp://127.0.0.1:5570") and is_loopback("tcp://localhost:*") and is_loopback("tcp://[::1]:1")
    assert is_loopback("ipc:///tmp/x") and not is_loopback("tcp://*:5570") and not is_loopback("tcp://0.0.0.0:1")
    assert not is_loopback("tcp://monitor.na64:5570") and not is_loopback("tcp://eth0:5570")
    with pytest.raises(ValueError, match="worker_secret_key"):
        IngestConfig(worker_bind="tcp://*:5570")
    with pytest.raises(ConfigError, match="worker_secret_key"):
        load_config(environ={"NA64_INGEST__WORKER_BIND": "tcp://0.0.0.0:5570"})
    with pytest.raises(ConfigError, match="worker_clients_dir"):
        load_config(environ={"NA64_INGEST__WORKER_SECRET_KEY": str(keys / "server.key_secret")})
    cfg = load_config(environ={"NA64_INGEST__WORKER_BIND": "tcp://*:5570",
                               "NA64_INGEST__WORKER_SECRET_KEY": str(keys / "server.key_secret"),
                               "NA64_INGEST__WORKER_CLIENTS_DIR": str(keys / "clients")})
    assert cfg.ingest.worker_curve == curve_server(keys)
    with pytest.raises(ConfigError, match="worker_bind"):
        WorkerPool(None, None, bind="tcp://*:0")
    with pytest.raises(ConfigError, match="ingest.worker_secret_key"):
        WorkerPool(None, None, curve=CurveServer(str(tmp_path / "missing"), str(keys / "clients")))
    with pytest.raises(ConfigError, match="ingest.worker_secret_key.*no secret"):
        WorkerPool(None, None, curve=CurveServer(str(keys / "server.key"), str(keys / "clients")))
    with pytest.raises(ConfigError, match="ingest.worker_clients_dir"):
        WorkerPool(None, None, curve=CurveServer(str(keys / "server.key_secret"), str(tmp_path / "nodir")))
    r = subprocess.run([sys.executable, "-m", "na64_online.cli", "serve", "--connect", "tcp://127.0.0.1:1",
                        "--worker-bind", "tcp://*:*", "--no-web", "--duration", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "worker_secret_key" in r.stderr and "Traceback" not in r.stderr


def test_keys_command_makes_pairs_with_a_private_secret(tmp_path):
    r = subprocess.run([sys.executable, "-m", "na64_online.cli", "keys", str(tmp_path / "k"), "server", "host1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in ("server", "host1"):
        assert (tmp_path / "k" / f"{name}.key").is_file()
        assert (tmp_path / "k" / f"{name}.key_secret").stat().st_mode & 0o077 == 0
    r = subprocess.run([sys.executable, "-m", "na64_online.cli", "worker", "--connect", "tcp://127.0.0.1:1",
                        "--key", str(tmp_path / "k" / "host1.key"), "--server-key", str(tmp_path / "k" / "server.key")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--key" in r.stderr and "no secret" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- malformed messages
@pytest.mark.timeout(60)
def test_malformed_messages_are_refused_and_counted(channel_map, processor):
    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(pool.endpoint)
    bad = [
        [b"\x80\x04garbage"],                      # not a command
        [b"FOO", b"x"],                            # unknown command
        [HELLO],                                   # HELLO without fields
        [READY, b"id", b"-1"],                     # capacity not a number
        [READY, b"id", b"99999999"],               # capacity out of range
        [RESULT],                                  # 1-frame RESULT
        [RESULT, b"short", b"x"],                  # task id not 8 bytes
        [ERROR, b"\0" * 8, b"a", b"b"],            # ERROR with a frame too many
        [TASK, b"\0" * 8, b"m", b"w"],             # a command workers do not send
    ]
    try:
        for msg in bad:
            s.send_multipart(msg)
        s.send_multipart([HELLO, b"na64-worker/1", b""])  # the pickle protocol: refused
        s.send_multipart([HELLO, b"na64-worker/4", b""])  # whole events in one frame: refused too
        pump(pool, 5, until=lambda: pool.stats.refused_messages == len(bad) and pool.stats.refused_peers == 2)
        assert pool.stats.refused_messages == len(bad)
        assert pool.stats.refused_peers == 2 and pool.workers == {}
        assert not s.poll(300), "a refused peer was answered"
        s.send_multipart([HELLO, PROTOCOL, b""])  # the same peer, now well-formed: served
        pump(pool, 5, until=lambda: bool(pool.workers))
        assert s.poll(5000) and s.recv_multipart()[0] == SETUP
    finally:
        s.close()
        pool.close()
        ctx.term()


class Exploit:
    """A pickle that would create ``path`` when loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_worker(endpoint: str, marker: Path, out: dict, stop: threading.Event) -> None:
    """Says HELLO, sends malformed messages, takes a task and answers it with a crafted pickle, then leaves."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.setsockopt(zmq.IDENTITY, b"evil")
    s.connect(endpoint)
    s.send_multipart([HELLO, PROTOCOL, b""])
    out["malformed"] = 0
    try:
        deadline = time.monotonic() + 40
        while not stop.is_set() and time.monotonic() < deadline:
            if not s.poll(50):
                continue
            frames = s.recv_multipart()
            if frames[0] == SETUP:
                for msg in ([RESULT], [b"\x80\x04\x95garbage"], [b"EXEC", b"rm -rf /"], [READY, frames[1], b"-5"]):
                    s.send_multipart(msg)
                    out["malformed"] += 1
                s.send_multipart([HELLO, b"na64-worker/1", b""])
                s.send_multipart([READY, frames[1], b"1024"])  # the most credits: it gets the first task
            elif frames[0] == TASK:
                s.send_multipart([RESULT, frames[1], pickle.dumps(Exploit(str(marker)))])
                out["task"] = frames[2].decode()
                time.sleep(0.5)  # (so that the service reads the answer before it sees the worker gone)
                return
    finally:
        s.close()


@pytest.mark.timeout(90)
def test_crafted_pickle_never_runs_and_the_ingest_goes_on(spills, replayed, channel_map, tmp_path):
    """A worker answering with a pickle whose __reduce__ would create a file: the file never appears, the
    result is refused and counted, the ingest thread processes the next spills as replay does."""
    marker = tmp_path / "pwned"
    p1, p2 = publisher(1, wait_subscribers=1), publisher(2, wait_subscribers=1)
    cfg = IngestConfig(endpoints=(p1.endpoint, p2.endpoint), workers=0, spill_timeout_s=2.0, chunk_max_age_s=0.1,
                       max_queued_tasks=256, task_timeout_s=1.0, chunk_events=10000)
    monitor = build_monitor(Config(), channel_map)
    health = []
    svc = IngestService(cfg, make_processor, (channel_map, Config().monitor, Config().histograms),
                        finish=monitor.handle, new_accumulator=monitor.processor.new_accumulator,
                        worker_setup=worker_setup(Config(), channel_map), on_health=health.append,
                        health_interval_s=0.05).start()
    out: dict = {}
    stop = threading.Event()
    evil = threading.Thread(target=evil_worker, args=(svc.worker_endpoint, marker, out, stop), daemon=True)
    try:
        evil.start()
        assert workers_ready(svc, 2, 30) == 2
        run_nodes([(p1, [s.ev[1] for s in spills]), (p2, [s.ev[2] for s in spills])])
        live = records_of(svc, 3, 40)
        time.sleep(0.2)
        m = svc.metrics()
        assert svc.failure is None and svc._thread.is_alive()
    finally:
        stop.set()
        svc.stop()
        monitor.close()
        p1.close(0)
        p2.close(0)
    assert not marker.exists()
    assert out.get("task", "").startswith(f"{RUN} 1 ")  # the evil worker got spill 1's first chunk
    w = m["workers"]
    assert w["refused_results"] == 1 and w["refused_messages"] == out["malformed"] == 4 and w["refused_peers"] == 1
    first, *rest = live
    assert first["dropped_events"] > 0 and first["events"] + first["dropped_events"] == EVENTS
    assert [core(r) for r in rest] == [core(r) for r in replayed[1:]]  # the next spills decode as replay does
    # and in Prometheus, as counters with _total names
    from prometheus_client import CollectorRegistry, generate_latest

    from na64_online.monitor.metrics import ServiceHealth, SnapshotStore, register_metrics

    store = SnapshotStore()
    registry = CollectorRegistry()
    register_metrics(registry, store)
    store.publish_service(ServiceHealth(**health[-1]))
    text = generate_latest(registry).decode()
    assert "na64_worker_refused_results_total 1.0" in text
    assert "na64_worker_refused_messages_total 4.0" in text and "na64_worker_refused_peers_total 1.0" in text


# --------------------------------------------------------------------------- a core thread dies anyway
@pytest.mark.timeout(60)
def test_dead_ingest_thread_makes_health_fail_with_503(channel_map):
    import httpx

    from na64_online.service import LiveService
    from na64_online.web.config import WebConfig

    config = Config(web=WebConfig(port=0))
    ingest = config.ingest.replace(endpoints=("tcp://127.0.0.1:1",), workers=0)
    service = LiveService(config, channel_map, ingest).start()
    # the warm process's objects are out of the collector's sight while it serves (Bokeh collects per closed page)
    assert gc.get_freeze_count() > 0
    try:
        with httpx.Client(base_url=service.web.url, timeout=10, trust_env=False) as client:
            ok = client.get("/api/health")
            assert ok.status_code == 200 and ok.json()["status"] != "failed" and service.failure is None

            def boom(*_args):
                raise RuntimeError("injected fault")

            service.ingest._on_outputs = boom  # the next timer tick of the ingest loop raises
            deadline = time.monotonic() + 10
            while service.failure is None and time.monotonic() < deadline:
                time.sleep(0.02)
            failed = client.get("/api/health")
    finally:
        service.stop()
    assert gc.get_freeze_count() == 0
    assert failed.status_code == 503
    body = failed.json()
    assert body["status"] == "failed" and "injected fault" in body["reason"] and "ingest" in body["reason"]


@pytest.mark.timeout(120)
def test_demo_exits_non_zero_when_the_ingest_thread_dies(tmp_path):
    """The CLI process (as systemd runs it) with a fault injected after the first spill: exit status 3."""
    script = textwrap.dedent("""
        import sys
        from na64_online import cli
        from na64_online.daq.ingest import IngestService

        emit = IngestService._emit
        def faulty_emit(self, record, closed):
            emit(self, record, closed)
            raise RuntimeError("injected fault after the first spill")
        IngestService._emit = faulty_emit
        sys.exit(cli.main(sys.argv[1:]))
    """)
    cmd = [sys.executable, "-c", script, "demo", "--spills", "5", "--events", "300", "--spill-duration", "0.3",
           "--spill-gap", "0.3", "--workers", "0", "--http", "127.0.0.1:0", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=100, cwd=tmp_path,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 3, r.stderr
    assert len([line for line in r.stdout.splitlines() if line.startswith("{")]) == 1
    assert "error: the service failed: ingest thread died: RuntimeError: injected fault" in r.stderr


@pytest.mark.timeout(120)
def test_serve_with_curve_keys_and_local_worker_processes_equals_replay(keys, spills, replayed, channel_map):
    """`serve` with the worker port under CurveZMQ (keys from the environment): its own worker processes get
    a key made at start-up and decode as replay does. (Bound on 127.0.0.1: tests stay on loopback.)"""
    env = {**os.environ, "NA64_INGEST__WORKER_SECRET_KEY": str(keys / "server.key_secret"),
           "NA64_INGEST__WORKER_CLIENTS_DIR": str(keys / "clients")}
    live, _ = serve_process(spills, "--workers", "1", "--no-web", "--worker-bind", "tcp://127.0.0.1:*", env=env,
                            timeout=90)
    assert [comparable(r) for r in live] == [comparable(r) for r in replayed]
    assert all(r["dropped_events"] == 0 for r in live)


@pytest.mark.timeout(60)
def test_web_thread_ending_is_a_failure_too(channel_map):
    from na64_online.service import LiveService
    from na64_online.web.config import WebConfig

    config = Config(web=WebConfig(port=0))
    service = LiveService(config, channel_map, config.ingest.replace(endpoints=("tcp://127.0.0.1:1",),
                                                       workers=0)).start()
    try:
        assert service.failure is None
        service.web._server.should_exit = True  # uvicorn ends as if it had crashed
        deadline = time.monotonic() + 10
        while service.failure is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.failure == "web server thread ended unexpectedly"
    finally:
        service.stop()
    assert service.failure is None  # stopped on purpose: not a failure


FIELDS = st.one_of(st.sampled_from([PROTOCOL, b"na64-worker/1", b"\0" * 8, b"1", b"0", b"-1", b"1025", b""]),
                   st.binary(max_size=24))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from([HELLO, READY, RESULT, ERROR, TASK, SETUP, b"STOP", b"\x80\x04"]),
       fields=st.integers(0, 4).flatmap(lambda n: st.lists(FIELDS, min_size=n, max_size=n)),
       task_id=st.booleans(), setup_id=st.booleans())
def test_handler_never_raises_on_any_message(handler_pool, command, fields, task_id, setup_id):
    """Whatever a peer sends, the handler itself refuses or handles it — it never relies on the catch-all."""
    pool = handler_pool
    if task_id and fields and command in (RESULT, ERROR) and pool.outstanding:
        fields[0] = next(iter(pool.outstanding)).to_bytes(8, "little")
    if setup_id and command == READY and fields:
        fields[0] = pool.setup_id
    if setup_id and command == HELLO and len(fields) >= 2:
        fields[1] = pool.setup_id
    done = pool._handle([zmq.Frame(f) for f in (b"peer", command, *fields)], time.monotonic())
    for d in done:  # a result is handed on only once it decoded; anything else is a failed task with a reason
        assert (d.result is None) == (d.error is not None)
        assert d.result is None or hasattr(d.result, "merge")


@pytest.fixture(scope="module")
def handler_pool(channel_map, processor):
    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result)
    pool.workers[b"peer"] = _Worker(b"peer", ready=True, credits=0, capacity=1)
    for i in range(1000):  # tasks the peer holds (so that RESULT/ERROR find one)
        task = Task(RUN, 1, i, BuiltChunk.from_words(RUN, 1, i, np.zeros(0, np.uint32)), 0, 0, task_id=i + 1,
                    worker=b"peer")
        pool.outstanding[task.task_id] = task
        pool._hold(task)  # as submit() and dispatch would: the pool's held bytes count it
    yield pool
    pool.close()


@pytest.mark.timeout(60)
def test_workers_spawned_early_are_ended_by_stop_without_start(channel_map):
    """``spawn_workers`` starts the worker processes at once (they warm up while the caller imports the web);
    a service stopped before it started still ends them and closes their socket."""
    cfg = IngestConfig(endpoints=("tcp://127.0.0.1:1",), workers=1)
    svc = IngestService(cfg, make_processor, (channel_map, Config().monitor, Config().histograms),
                        worker_setup=worker_setup(Config(), channel_map))
    svc.spawn_workers()
    procs = list(svc.pool._procs)
    assert len(procs) == 1 and procs[0].poll() is None
    svc.spawn_workers()  # once: the pool and its processes are kept
    assert svc.pool._procs == procs
    svc.stop()
    assert procs[0].poll() is not None and svc.pool is None


# --------------------------------------------------------------------------- zero-copy tasks (protocol 5)
def _bad_tasks(chunk: BuiltChunk) -> list[tuple[str, list]]:
    """TASK frames after the task id that a worker must refuse, each with what is wrong."""
    meta = f"{RUN} 1 0 {chunk.gdc}".encode()
    subs, groups = chunk.subs, chunk.groups
    payload = chunk.payloads[0]

    def with_subs(col, value, row=0):
        s = subs.copy()
        s[row, col] = value
        return [meta, s.tobytes(), groups.tobytes(), payload]

    def with_groups(g):
        return [meta, subs.tobytes(), np.asarray(g, np.int64).tobytes(), payload]

    n = subs.shape[0]
    return [
        ("no payload frame", [meta, subs.tobytes(), groups.tobytes()]),
        ("meta of 3 fields", [f"{RUN} 1 0".encode(), subs.tobytes(), groups.tobytes(), payload]),
        ("meta not numbers", [b"1 1 0 x", subs.tobytes(), groups.tobytes(), payload]),
        ("gdc beyond 32 bits", [f"{RUN} 1 0 {1 << 33}".encode(), subs.tobytes(), groups.tobytes(), payload]),
        ("plan not whole rows", [meta, subs.tobytes()[:-1], groups.tobytes(), payload]),
        ("payload index beyond the frames", with_subs(0, 1)),
        ("negative offset", with_subs(1, -4)),
        ("offset beyond the payload", with_subs(1, payload.shape[0] - 5, row=n - 1)),
        ("sub-event under a header", with_subs(2, 3)),
        ("sub-event running past the payload", with_subs(2, payload.shape[0] + 1, row=n - 1)),
        ("groups not from 0", with_groups(groups + 1)),
        ("groups not to the end", with_groups(groups[:-1])),
        ("groups decreasing", with_groups(groups[::-1])),
        ("empty plan", with_groups([0])),
        ("payload shorter than the plan", [meta, subs.tobytes(), groups.tobytes(), payload[:payload.shape[0] // 2]]),
    ]


@pytest.mark.timeout(90)
def test_worker_refuses_malformed_plans_and_decodes_the_next_task(spills, channel_map, processor):
    """Protocol 5 sends a plan and the payloads as received: a worker checks the plan against its frames before
    touching memory; a plan or frame that does not fit is refused (``ERROR … refused task``), counted by the
    service as a refused, failed task, and the same worker thread then decodes a good task like replay. (A worker
    thread takes its tasks over ``inproc://``, by reference: the same checks apply.)"""
    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result)
    pool.start_threads(1, capacity=1)
    assert pool.thread_endpoint.startswith("inproc://") and pool.endpoint.startswith("tcp://127.0.0.1:")
    try:
        pump(pool, 60, until=lambda: pool.n_ready == 1)
        assert pool.n_ready == 1
        (ident,) = pool.workers
        words = spill_words(spills)
        chunk = BuiltChunk.from_words(RUN, 1, 0, words)
        bad = _bad_tasks(chunk)
        for why, frames in bad:  # sent as the pool sends a task, each registered as one it holds
            task = Task(RUN, 1, 0, chunk, EVENTS, EVENTS + 2, task_id=pool._next_id, worker=ident, attempts=1,
                        sent_at=time.monotonic())
            pool._next_id += 1
            pool.outstanding[task.task_id] = task
            pool._hold(task)
            pool.socket.send_multipart([ident, TASK, task.task_id.to_bytes(8, "little"), *frames])
        failed = pump(pool, 30, until=lambda: not pool.outstanding)
        assert len(failed) == len(bad) and all(d.result is None and "refused task" in d.error for d in failed)
        assert pool.stats.refused_tasks == len(bad) == pool.stats.tasks_failed
        assert pool.stats.refused_messages == 0  # a refusal is an answer, not a malformed message
        assert pool.submit(Task(RUN, 1, 0, chunk, EVENTS, EVENTS + 2), time.monotonic())
        (done,) = pump(pool, 30, until=lambda: not pool.busy)
        assert pool.task_bytes == 0  # answered or refused, every task left the pool and holds nothing
    finally:
        pool.close()
    assert done.error is None
    assert record(processor, done.result) == record(processor, processor.accumulate(words))


def test_a_task_is_decoded_where_received_and_gathered_only_when_its_headers_are_damaged(spills, channel_map,
                                                                                          processor):
    """A worker decodes a task's sub-events in the payloads it received (no gathered copy of the events): the
    result is replay's. A payload whose sub-event header lost its planned size is decoded gathered instead, as
    the gathered words decode (the damage found and counted) — the same result either way."""
    words = spill_words(spills)
    chunk = BuiltChunk.from_words(RUN, 1, 0, words)
    meta = f"{RUN} 1 0 {chunk.gdc}".encode()

    class Recording:
        takes_planned_rows = True

        def __init__(self):
            self.step, self.planned = processor.task_decoder(), []

        def __call__(self, task_words, planned=None):
            self.planned.append(planned is not None)
            return self.step(task_words, planned) if planned is not None else self.step(task_words)

    decoder, scratch, decoded = Recording(), None, []
    for damage in (False, True):
        payloads = [p.copy() for p in chunk.payloads]
        if damage:  # the second event's first sub-event claims one word more than it has
            f, offset, size = chunk.subs[chunk.groups[1]]
            payloads[f][offset + L.H_SIZE] = (size + 1) * L.WORD_BYTES
        frames = [TASK, b"\0" * 8, meta, *chunk.plan_frames(), *(p.tobytes() for p in payloads)]
        result, scratch = decode_task(decoder, frames, scratch)
        expected = processor.accumulate(gather(payloads, chunk.subs, chunk.groups, chunk.gdc))
        assert record(processor, processor.decode_result(result)) == record(processor, expected)
        decoded.append((expected.events, sum(expected.issues.values())))
    assert decoder.planned == [True, False]  # clean: decoded where received; damaged: gathered
    (clean_events, clean_issues), (damaged_events, damaged_issues) = decoded
    assert damaged_events == clean_events and damaged_issues > clean_issues  # the damage is seen and counted


reads = pytest.mark.skipif(not process_memory_readable(), reason="process_vm_readv is refused on this system")


def _task_by_reference(chunk: BuiltChunk) -> tuple[list, list]:
    """A TASKREF of ``chunk`` (its payloads referenced where they are in this process) and its TASK."""
    meta = f"{RUN} 1 0 {chunk.gdc}".encode()
    return ([TASKREF, b"\0" * 8, meta, *chunk.plan_frames(), task_references(chunk.payloads)],
            [TASK, b"\0" * 8, meta, *chunk.plan_frames(), *(p.tobytes() for p in chunk.payloads)])


@reads
def test_a_task_by_reference_reads_what_the_plan_uses_and_decodes_as_the_task(spills, channel_map, processor):
    """A local worker reads a TASKREF's payloads from the service's memory (here: this process's, by
    ``process_vm_readv``): only the ranges its plan uses, into its kept buffer; the task then decodes exactly
    as the same task sent with the payloads does, and as replay."""
    words = spill_words(spills)
    whole = BuiltChunk.from_words(RUN, 1, 0, words)
    unused = np.arange(1000, dtype=np.uint32)  # a payload the plan does not use
    prefixed = np.concatenate([np.full(777, 0xDEADBEEF, np.uint32), words])  # the plan uses all but the prefix
    chunk = BuiltChunk(whole.run, whole.spill, whole.index, (unused, prefixed), (unused, prefixed),
                       whole.subs + np.array([1, 777, 0]), whole.groups, whole.types, whole.keys, whole.gdc, True)
    by_reference, as_bytes = _task_by_reference(chunk)
    frames, buffer = read_task_payloads(os.getpid(), by_reference)
    assert frames[0] == TASK and len(frames) == len(as_bytes)
    used = words[int(whole.subs[:, 1].min()):]  # from the first sub-event on (the first super header is not one)
    assert buffer.nbytes == used.nbytes and np.array_equal(frames[6], used)  # neither the prefix nor payload 0
    assert frames[5].shape == (0,)
    read_result, _ = decode_task(processor.task_decoder(), frames, None)
    sent_result, _ = decode_task(processor.task_decoder(), as_bytes, None)
    expected = record(processor, processor.accumulate(words))
    assert record(processor, processor.decode_result(read_result)) == expected
    assert record(processor, processor.decode_result(sent_result)) == expected
    _, again = read_task_payloads(os.getpid(), by_reference, buffer)
    assert again is buffer  # kept between tasks


def test_a_task_by_reference_is_checked_before_anything_is_read(spills):
    """Wrong frame counts, ragged or absurd references and plans naming other payloads are refused
    (:class:`PlanError`) before anything is read; a reference to memory that is not mapped is an OSError (which
    the worker answers with "cannot read", and the service sends bytes)."""
    chunk = BuiltChunk.from_words(RUN, 1, 0, spill_words(spills))
    frames, _ = _task_by_reference(chunk)
    refs = np.frombuffer(frames[5], "<i8").reshape(-1, 2)
    subs = np.frombuffer(frames[3], "<i8").reshape(-1, 3)

    def with_refs(r):
        return [*frames[:5], np.asarray(r, "<i8").tobytes()]

    def with_subs(s_):
        return [*frames[:3], np.asarray(s_, "<i8").tobytes(), *frames[4:]]

    bad = {
        "frames": frames[:5],
        "ragged references": [*frames[:5], frames[5][:-3]],
        "no references": with_refs(np.zeros((0, 2))),
        "address 0": with_refs([[0, refs[0, 1]]]),
        "too large": with_refs([[refs[0, 0], 1 << 40]]),
        "payload index": with_subs(subs + np.array([1, 0, 0])),
        "negative offset": with_subs(subs - np.array([0, 1 << 20, 0])),
    }
    for why, f in bad.items():
        try:
            read_task_payloads(os.getpid(), f)
        except PlanError:
            continue
        pytest.fail(f"{why}: not refused")
    unmapped = with_refs([[8 << 40, refs[0, 1]]])  # far beyond this process's mappings
    with pytest.raises(OSError):
        read_task_payloads(os.getpid(), unmapped)


@reads
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(L.DATE_HEADER_WORDS, 60), min_size=1, max_size=8), min_size=1, max_size=4),
       st.randoms(use_true_random=False))
def test_a_task_read_by_reference_gathers_as_its_payloads_do(payload_sizes, rng):
    """Any plan over any payloads (a random subset of their sub-events, in any order): the payloads read by
    reference, with the plan moved to them, gather into the very events the payloads themselves give."""
    payloads, subs = [], []
    for p, sizes in enumerate(payload_sizes):
        offsets = np.cumsum(sizes) - np.array(sizes)
        payloads.append(np.arange(sum(sizes), dtype=np.uint32) + (p << 24))
        subs += [(p, int(o), int(n)) for o, n in zip(offsets, sizes) if rng.random() < 0.7]
    if not subs:
        subs = [(0, 0, payload_sizes[0][0])]
    rng.shuffle(subs)
    subs = np.array(subs, dtype=np.int64)
    cuts = sorted(set(rng.randrange(1, len(subs)) for _ in range(3))) if len(subs) > 1 else []
    groups = np.array([0, *cuts, len(subs)], dtype=np.int64)
    chunk = BuiltChunk(RUN, 1, 0, tuple(payloads), tuple(payloads), subs, groups,
                       np.full(len(groups) - 1, L.PHYSICS_EVENT, np.int32), np.arange(1, len(groups)), 7, True)
    by_reference, _ = _task_by_reference(chunk)
    frames, _ = read_task_payloads(os.getpid(), by_reference)
    assert np.array_equal(gather(frames[5:], frames[3], groups, 7), gather(payloads, subs, groups, 7))


@pytest.mark.timeout(60)
def test_a_local_worker_that_cannot_read_the_service_is_sent_the_payloads(spills, channel_map, processor):
    """Only a worker process the pool started gets tasks by reference; one that cannot read the service's
    memory (here a worker thread passed for one: it has no parent to read) answers so, the task goes again as
    bytes with nothing counted failed, and the worker is sent bytes from then on."""
    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result)
    pool.start_threads(1, capacity=1)
    try:
        pump(pool, 60, until=lambda: pool.n_ready == 1)
        (w,) = pool.workers.values()
        assert not w.reads  # a worker thread is not a process the pool started
        pool._started_here = lambda ident: True
        w.ready = False
        pool._send_setup(w.ident)  # READY again: now taken for a local process
        pump(pool, 30, until=lambda: pool.n_ready == 1)
        assert w.reads
        words = spill_words(spills)
        results = []
        for i in range(2):
            assert pool.submit(Task(RUN, 1, i, BuiltChunk.from_words(RUN, 1, i, words), EVENTS, EVENTS + 2),
                               time.monotonic())
            results += pump(pool, 30, until=lambda: not pool.busy)
    finally:
        pool.close()
    assert pool.stats.reads_refused == 1 and pool.stats.tasks_by_reference == 1 and not w.reads
    assert pool.stats.tasks_failed == 0 and pool.stats.tasks_done == 2 and pool.task_bytes == 0
    assert [d.error for d in results] == [None, None]
    assert all(record(processor, d.result) == record(processor, processor.accumulate(words)) for d in results)


STALLED_WORKER = textwrap.dedent("""
    import sys, zmq
    from na64_online.daq.workers import HELLO, PROTOCOL, READY, SETUP, TASK, ERROR, _socket_options
    s = zmq.Context.instance().socket(zmq.DEALER)
    _socket_options(s)  # as run_worker sets its socket
    s.connect(sys.argv[1])
    s.send_multipart([HELLO, PROTOCOL, b""])
    while True:
        frames = s.recv_multipart()
        if frames[0] == SETUP:
            s.send_multipart([READY, frames[1], b"1"])
            print("ready", flush=True)
        elif frames[0] == TASK:
            s.send_multipart([ERROR, frames[1], b"answered"])
""")


@pytest.mark.timeout(60)
def test_a_worker_stalled_for_seconds_keeps_its_connection_and_its_task(spills, channel_map, processor):
    """A worker process stopped for 7 s (a loaded or paging host) while a task is on its way: its connection
    stays (TCP keepalive is answered by the kernel) and the task is answered as soon as it runs again — no
    worker lost, no retry. With ZMTP heartbeats the service closed the connection after ~5 s: the task was
    lost with it and answered only after task_timeout_s (60 s), by the retry."""
    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result, task_timeout_s=60)
    proc = subprocess.Popen([sys.executable, "-c", STALLED_WORKER, pool.endpoint], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        pump(pool, 30, until=lambda: pool.n_ready == 1)
        assert pool.n_ready == 1
        os.kill(proc.pid, signal.SIGSTOP)
        chunk = BuiltChunk.from_words(RUN, 1, 0, spill_words(spills))
        assert pool.submit(Task(RUN, 1, 0, chunk, EVENTS, EVENTS + 2), time.monotonic())
        assert pump(pool, 7) == []
        os.kill(proc.pid, signal.SIGCONT)
        done = pump(pool, 15, until=lambda: not pool.busy)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        pool.close()
        proc.kill()
        proc.wait(10)
    assert [d.error for d in done] == ["answered"]
    assert pool.stats.workers_lost == 0 and pool.stats.tasks_retried == 0 and pool.stats.workers_seen == 1


def test_task_bytes_count_each_referenced_payload_once(channel_map, processor):
    """Tasks hold the message payloads their plans reference: a payload shared by two chunks (a message cut
    between them) is memory held once, so the task budget counts it once."""
    a, b, c, d = (np.zeros(1000, np.uint32) for _ in range(4))  # 4000 bytes each

    def chunk(*payloads):
        subs = np.array([(i, 0, 17) for i in range(len(payloads))], np.int64)
        return BuiltChunk(RUN, 1, 0, payloads, payloads, subs, np.array([0, len(payloads)], np.int64),
                          np.array([7], np.int32), np.array([1], np.int64), 1, final=False)

    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result, max_task_bytes=12000)
    try:  # no worker: the tasks wait
        assert pool.submit(Task(RUN, 1, 0, chunk(a, b), 1, 1), 0.0)
        assert pool.submit(Task(RUN, 1, 1, chunk(b, c), 1, 1), 0.0)  # b held already: 12000 bytes, fits
        assert pool.task_bytes == 12000
        assert not pool.submit(Task(RUN, 1, 2, chunk(d), 1, 1), 0.0)  # 16000: beyond the bound
        assert pool.task_bytes == 12000  # a task not taken holds nothing
        # a running count: tasks that leave the pool (here: no worker took them in time) hold nothing more
        failed = pool.poll(pool.queue_timeout_s + 1.0)
        assert len(failed) == 2 and pool.task_bytes == 0 and not pool.busy
        assert pool.submit(Task(RUN, 1, 3, chunk(d), 1, 1), 0.0) and pool.task_bytes == 4000
    finally:
        pool.close()


def test_tasks_of_a_worker_timed_out_are_retried_once_each(channel_map, processor):
    """Two tasks at one worker get no result in time: the worker is forgotten and each task goes back to the
    queue once (the pass over the timed-out tasks once re-queued the worker's other task a second time: it
    was then decoded twice); when no worker takes them either, each fails once and nothing stays held."""
    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result, task_timeout_s=5.0,
                      queue_timeout_s=10.0)
    try:
        payloads = [np.zeros(1000, np.uint32) for _ in range(2)]
        pool.workers[b"peer"] = worker = _Worker(b"peer", ready=True, credits=0, capacity=2)
        for i, p in enumerate(payloads, start=1):  # as _dispatch leaves them: sent to the peer, held
            chunk = BuiltChunk(RUN, 1, i, (p,), (p,), np.array([(0, 0, 17)], np.int64), np.array([0, 1], np.int64),
                               np.array([7], np.int32), np.array([1], np.int64), 1, final=False)
            task = Task(RUN, 1, i, chunk, 1, 1, task_id=i, worker=b"peer", attempts=1, sent_at=0.0)
            pool.outstanding[i] = task
            pool._hold(task)
            worker.tasks.add(i)
        assert pool.poll(6.0) == []  # both timed out: back in the queue, once each
        assert [t.task_id for t in pool.queue] == [1, 2] and pool.stats.tasks_retried == 2
        assert pool.stats.workers_lost == 1 and pool.task_bytes == 8000
        failed = pool.poll(20.0)  # no worker took them: each fails once
        assert sorted(d.task.task_id for d in failed) == [1, 2] and pool.stats.tasks_failed == 2
        assert pool.task_bytes == 0 and not pool.busy
    finally:
        pool.close()


@pytest.mark.timeout(60)
def test_a_task_lost_with_a_reset_connection_is_retried_at_the_workers_next_hellos(channel_map, processor):
    """A worker's connection reset (it reconnects under the same identity) loses the task queued on it: the
    worker, idle, says HELLO again; a task sent before one HELLO and unanswered at the next never reached it
    and is retried at once — not after task_timeout_s (60 s here) — and the worker is kept. (The fake worker
    drops its first task, as the reset connection does, and answers the rest.)"""
    pool = WorkerPool(worker_setup(Config(), channel_map), processor.decode_result, task_timeout_s=60)
    stop = threading.Event()
    got: list[bytes] = []

    def worker() -> None:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(pool.endpoint)
        s.send_multipart([HELLO, PROTOCOL, b""])
        try:
            while not stop.is_set():
                if not s.poll(300):  # idle: HELLO (a real worker after 1 s)
                    s.send_multipart([HELLO, PROTOCOL, pool.setup_id])
                    continue
                frames = s.recv_multipart()
                if frames[0] == SETUP:
                    s.send_multipart([READY, frames[1], b"1"])
                elif frames[0] == TASK:
                    got.append(frames[1])
                    if len(got) > 1:  # the first one is "lost in transit"
                        s.send_multipart([ERROR, frames[1], b"answered"])
        finally:
            s.close()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        pump(pool, 10, until=lambda: pool.n_ready == 1)
        chunk = BuiltChunk.from_words(RUN, 1, 0, np.zeros(0, np.uint32))
        t0 = time.monotonic()
        assert pool.submit(Task(RUN, 1, 0, chunk, 0, 0), t0)
        done = pump(pool, 15, until=lambda: not pool.busy)
        waited = time.monotonic() - t0
    finally:
        stop.set()
        t.join(5)
        pool.close()
    assert [d.error for d in done] == ["answered"] and len(got) == 2 and got[0] == got[1]
    assert pool.stats.tasks_lost_in_transit == 1 and pool.stats.tasks_retried == 1
    assert pool.stats.workers_lost == 0 and waited < 10  # two HELLOs, not task_timeout_s
