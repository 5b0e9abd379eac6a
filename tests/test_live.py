"""Live ingest end to end with real ZeroMQ sockets on 127.0.0.1 (issue #3).

Two readout-node publishers (LDC 1 and 2, the simulator's data) and one
service; the service's QA records must equal ``replay`` of the same data.
Every test is bounded in time and stops by itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from na64_online.monitor.spill_monitor import make_processor
from na64_online.config import Config
from na64_online.daq.builder import build_all
from na64_online.daq.ingest import IngestConfig, IngestService
from na64_online.daq.publisher import PublisherConfig, ReadoutPublisher
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
from na64_online.sim.warmup import ldc_sample
from na64_online.decoders.channelmap import ChannelMap
from na64_online.monitor.pipeline import MonitorConfig, SpillProcessor
from na64_online.service import Replayer, build_monitor
from na64_online.worker_setup import worker_setup
from conftest import process_memory_readable

LIVE_ONLY = {"lost_messages", "incomplete_events", "late_events", "dropped_events", "missing_ldcs", "bad_messages"}
TIMING = {"processing_seconds", "finished_at"}
EVENTS = 200
RUN = 11


@pytest.fixture(scope="module")
def channel_map():
    return ChannelMap.default()


@pytest.fixture(scope="module")
def spills(channel_map):
    sim = ReadoutSimulator(SimulationConfig(run=RUN, spills=3, events_per_spill=EVENTS, seed=21), channel_map)
    return [_Spill(s.run, s.spill, s.raw(), {l: s.ldc_events(l) for l in (1, 2)}) for s in sim.spills()]


class _Spill:
    def __init__(self, run, spill, raw, ev):
        self.run, self.spill, self.raw, self.ev = run, spill, raw, ev


def replay(raws, channel_map, tmp_path_factory) -> list[dict]:
    """``replay`` of raw spills written to a file: one record per spill."""
    path = tmp_path_factory.mktemp("live") / "run.dat"
    path.write_bytes(b"".join(raws))
    replayer = Replayer(Config(), channel_map)
    try:
        return [r for r, _ in replayer.replay_file(path) if r is not None]
    finally:
        replayer.close()


@pytest.fixture(scope="module")
def replayed(spills, channel_map, tmp_path_factory):
    """``replay`` of the very data the publishers send."""
    records = replay([s.raw for s in spills], channel_map, tmp_path_factory)
    assert [r["spill"] for r in records] == [1, 2, 3]
    return records


def comparable(record: dict) -> dict:
    """Everything but what only live knows (counters, and the quality checks made of them) and wall-clock times."""
    out = {k: v for k, v in record.items() if k not in LIVE_ONLY | TIMING}
    if isinstance(out.get("quality"), dict):
        q = dict(out["quality"])
        q["checks"] = [c for c in q.get("checks", []) if c.get("name", "").split(".")[-1] not in LIVE_ONLY]
        out["quality"] = q
    return out


def core(record: dict) -> dict:
    """What the decoding gives (spec §12 keys and decoded counts); not quality/alarms that see live counters."""
    return {k: v for k, v in comparable(record).items()
            if k not in ("quality", "alarms", "channel_findings", "eot_run", "reference")}


def process(words_list, channel_map) -> list[dict]:
    """The replay per-spill code on given words (complete spills)."""
    monitor = build_monitor(Config(), channel_map)
    try:
        return [monitor.handle(monitor.processor.accumulate(w), complete=True) for w in words_list]
    finally:
        monitor.close()


def start_service(channel_map, endpoints, **overrides) -> IngestService:
    cfg = IngestConfig(endpoints=tuple(endpoints), workers=0, spill_timeout_s=2.0, chunk_max_age_s=0.1,
                       max_queued_tasks=256)  # publishers send as fast as they can: let no chunk be dropped
    cfg = cfg.replace(**overrides)
    monitor = build_monitor(Config(), channel_map)  # what serve does: SpillMonitor.handle finishes each spill
    return IngestService(cfg, make_processor, (channel_map, Config().monitor, Config().histograms), finish=monitor.handle,
                         new_accumulator=monitor.processor.new_accumulator,
                         worker_setup=worker_setup(Config(), channel_map), warm_up_events=ldc_sample).start()


def publisher(ldc, endpoint="tcp://127.0.0.1:0", **kw) -> ReadoutPublisher:
    kw.setdefault("fast", True)
    kw.setdefault("batch_events", 50)
    return ReadoutPublisher(PublisherConfig(endpoint, ldc, **kw))


def run_nodes(jobs):
    """jobs: [(publisher, [events of spill, …])]; publish concurrently, like two readout nodes."""
    errors = []

    def go(pub, spill_events):
        try:
            if pub.config.wait_subscribers:
                assert pub.wait_for_subscribers(pub.config.wait_subscribers, 20), "no subscriber"
            pub.publish(spill_events)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=job, daemon=True) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]


def workers_ready(svc: IngestService, n: int, timeout_s: float = 60.0) -> int:
    """Wait (at most ``timeout_s``) until ``n`` worker processes said READY; returns how many did."""
    deadline = time.monotonic() + timeout_s
    while svc.pool.n_ready < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return svc.pool.n_ready


def published_records(svc: IngestService, nodes, spills, n: int = 3) -> list[dict]:
    """The two readout nodes ``nodes`` publish ``spills`` at once; the service's first ``n`` records. The
    service and the nodes are stopped after."""
    p1, p2 = nodes
    try:
        run_nodes([(p1, [s.ev[1] for s in spills]), (p2, [s.ev[2] for s in spills])])
        return records_of(svc, n)
    finally:
        svc.stop()
        p1.close(0)
        p2.close(0)


def records_of(svc: IngestService, n: int, timeout_s: float = 30.0) -> list[dict]:
    recs = svc.wait_records(n, timeout_s)
    assert len(recs) >= n, f"only {len(recs)} of {n} records; metrics {svc.metrics()}"
    return [r if isinstance(r, dict) else r.to_dict() for r in recs]


# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_spill_seen_only_in_part_at_start_up_is_not_judged(spills, replayed, channel_map):
    """The service starts while spill 1 is under way: LDC 2's START_OF_BURST went by, so spill 1 is seen in
    part. It is archived as interrupted, not judged (no alarm); the spills after it are judged as replay does."""
    p1, p2 = publisher(1, wait_subscribers=1), publisher(2, wait_subscribers=1)
    svc = start_service(channel_map, [p1.endpoint, p2.endpoint])
    try:
        run_nodes([(p1, [spills[0].ev[1]]), (p2, [spills[0].ev[2][10:]])])  # the nodes keep in step, as the
        run_nodes([(p1, [s.ev[1] for s in spills[1:]]), (p2, [s.ev[2] for s in spills[1:]])])  # beam does
        live = sorted(records_of(svc, 3), key=lambda r: r["spill"])  # spill 1 may close last (by its timeout)
    finally:
        svc.stop()
        p1.close(0)
        p2.close(0)
    # (a slow subscription may also hide LDC 2's spill 2 START_OF_BURST: then spill 2 is seen in part too)
    in_part = [r for r in live if r.get("interrupted")]
    judged = [r for r in live if not r.get("interrupted")]
    assert in_part[0]["spill"] == 1 and [r["spill"] for r in live] == [1, 2, 3] and judged[-1]["spill"] == 3
    assert all(r["alarms"] == [] and r["quality"]["overall"] == "INTERRUPTED" for r in in_part)
    keys = ("spill", "events", "complete", "beam", "hadron_fraction", "lost_events", "decode_errors", "candidates")
    assert [{k: r[k] for k in keys} for r in judged] == [{k: replayed[r["spill"] - 1][k] for k in keys} for r in judged]


@pytest.mark.timeout(60)
def test_two_publishers_one_service_equal_replay(spills, replayed, channel_map):
    p1, p2 = publisher(1, wait_subscribers=1, batch_events=37), publisher(2, wait_subscribers=1, batch_events=23)
    svc = start_service(channel_map, [p1.endpoint, p2.endpoint], chunk_events=64)
    live = published_records(svc, (p1, p2), spills)
    assert [comparable(r) for r in live] == [comparable(r) for r in replayed]
    for r in live:
        assert r["complete"] is True and r["missing_ldcs"] == []
        assert r["lost_messages"] == {"total": 0, "by_ldc": {"1": 0, "2": 0}}
        assert r["incomplete_events"] == r["late_events"] == r["dropped_events"] == 0
        assert r["events"] == EVENTS and r["beam"] is not None
    m = svc.metrics()
    assert m["builder"]["built_events"] == 3 * (EVENTS + 2)
    assert m["builder"]["chunks"] >= 3 * 3  # every spill decoded in several parts, merged
    assert svc.stats.last_latency_s is not None


@pytest.mark.timeout(60)
def test_a_backlog_of_messages_is_read_a_turn_at_a_time(spills, replayed, channel_map):
    """Readout nodes sending faster than the service reads leave a backlog; the service loop takes at most
    ``messages_per_turn`` of it before it merges the workers' results and hands them the next tasks."""
    p1, p2 = publisher(1, wait_subscribers=1, batch_events=7), publisher(2, wait_subscribers=1, batch_events=5)
    svc = start_service(channel_map, [p1.endpoint, p2.endpoint], chunk_events=64, messages_per_turn=3)
    taken, recv = [], svc.subscriber.recv

    def counted_recv(*args, **kwargs):
        received = recv(*args, **kwargs)
        taken.append(len(received))
        return received

    svc.subscriber.recv = counted_recv
    live = published_records(svc, (p1, p2), spills)
    assert [comparable(r) for r in live] == [comparable(r) for r in replayed]
    assert max(taken) == 3, f"a backlog is read 3 messages a turn, not {max(taken)}"
    assert sum(taken) == svc.metrics()["subscriber"]["messages"]


@pytest.mark.timeout(90)
def test_worker_processes_merge_exactly(spills, replayed, channel_map):
    p1, p2 = publisher(1, wait_subscribers=1), publisher(2, wait_subscribers=1)
    svc = start_service(channel_map, [p1.endpoint, p2.endpoint], workers=2, chunk_events=40,
                        chunk_max_age_s=0.05)
    try:
        assert workers_ready(svc, 2) == 2
        run_nodes([(p1, [s.ev[1] for s in spills]), (p2, [s.ev[2] for s in spills])])
        live = records_of(svc, 3, 60)
        m = svc.metrics()
    finally:
        svc.stop()
        p1.close(0)
        p2.close(0)
    assert [comparable(r) for r in live] == [comparable(r) for r in replayed]
    assert m["workers"]["tasks_done"] >= 3 * 5 and m["workers"]["workers_seen"] == 2
    assert m["workers"]["tasks_failed"] == 0
    if process_memory_readable():  # the local worker processes read every task's payloads: none went as bytes
        assert m["workers"]["tasks_by_reference"] == m["workers"]["tasks_submitted"]
        assert m["workers"]["bytes_sent"] == 0 and m["workers"]["reads_refused"] == 0
    else:  # a system that refuses it: each worker said so (once) and was sent the bytes
        assert m["workers"]["reads_refused"] >= 1 and m["workers"]["bytes_sent"] > 0


@pytest.mark.timeout(60)
def test_loss_injection(spills, replayed, channel_map):
    s1 = spills[0]
    p1 = publisher(1, wait_subscribers=1)
    p2 = publisher(2, wait_subscribers=1, lose=frozenset({1, 3}))  # events 50…99 and 150…199 of spill 1
    svc = start_service(channel_map, [p1.endpoint, p2.endpoint])
    try:
        run_nodes([(p1, [s.ev[1] for s in spills[:2]]), (p2, [s.ev[2] for s in spills[:2]])])
        live = records_of(svc, 2)
        m = svc.metrics()
    finally:
        svc.stop()
        p1.close(0)
        p2.close(0)
    r1, r2 = live
    assert r1["lost_messages"] == {"total": 2, "by_ldc": {"1": 0, "2": 2}}
    assert r1["incomplete_events"] == 100
    assert r1["events"] == EVENTS and r1["complete"] is True  # decoded for what they have
    assert m["subscriber"]["lost_messages"] == {2: 2}
    # exactly what replay gives on the same sub-events built into a file
    gone = set(range(50, 100)) | set(range(150, 200))
    ev2 = [e for i, e in enumerate(s1.ev[2]) if i not in gone]
    expected = process([build_all({1: s1.ev[1], 2: ev2}), np.frombuffer(spills[1].raw, "<u4")], channel_map)
    assert core(r1) == core(expected[0])
    assert core(r2) == core(expected[1]) == core(replayed[1])
    assert r2["lost_messages"]["total"] == 0 and r2["incomplete_events"] == 0


@pytest.mark.timeout(60)
def test_corrupt_envelope_and_truncated_payload(spills, replayed, channel_map):
    # messages of 50 events: spill 1 is messages 0…4 of each node, spill 2 messages 5…9
    p1 = publisher(1, wait_subscribers=1, corrupt={2: "magic", 3: "truncate"})
    p2 = publisher(2, wait_subscribers=1, corrupt={5: "frames"})
    svc = start_service(channel_map, [p1.endpoint, p2.endpoint])
    try:
        run_nodes([(p1, [s.ev[1] for s in spills[:2]]), (p2, [s.ev[2] for s in spills[:2]])])
        live = records_of(svc, 2)
        m = svc.metrics()
    finally:
        svc.stop()
        p1.close(0)
        p2.close(0)
    r1, r2 = live
    sub = m["subscriber"]
    assert sub["bad_envelopes"] == 2  # LDC 1 message 2 (magic), LDC 2 message 5 (no payload)
    assert sub["corrupt_messages"] == {1: 1}  # LDC 1 message 3: truncated payload, 49 events kept
    # an unreadable message is a lost message: its sequence number never arrived intact
    assert r1["lost_messages"]["by_ldc"] == {"1": 1, "2": 0}
    assert r2["lost_messages"]["by_ldc"] == {"1": 0, "2": 1}  # LDC 2 message 5 = spill 2's first
    assert r1["incomplete_events"] == 50 + 1
    assert r1["events"] == EVENTS and r1["complete"]
    # spill 2 lost LDC 2's START_OF_BURST and first 49 events' sub-events, nothing else
    assert r2["incomplete_events"] == 49 and r2["complete"] and r2["events"] == EVENTS
    assert svc.stats.records == 2
    # every bad message in the QA record, by LDC and kind (an unreadable envelope has no LDC to trust)
    # (no spill either: reported with the next spill that closes, which depends on timing)
    assert r1["bad_messages"]["by_ldc"]["1"] == {"damaged_payload": 1} and "1" not in r2["bad_messages"]["by_ldc"]
    assert sum(r["bad_messages"]["by_ldc"].get("unknown", {}).get("bad_envelope", 0) for r in live) == 2
    assert r1["bad_messages"]["total"] + r2["bad_messages"]["total"] == 3
    assert sub["bad_messages"] == {"unknown": {"bad_envelope": 2}, "1": {"damaged_payload": 1}}


@pytest.mark.timeout(60)
def test_publisher_restarted_mid_run(spills, replayed, channel_map):
    s1, s2, s3 = spills
    a = publisher(1, wait_subscribers=1)
    b = publisher(2, wait_subscribers=1, fast=False, spill_duration_s=0.3, spill_gap_s=0.6)
    svc = start_service(channel_map, [a.endpoint, b.endpoint], spill_timeout_s=5.0)
    cut = 120  # LDC 1 dies in the middle of spill 2, after START_OF_BURST and events 1…119

    def node1():
        nonlocal a
        assert a.wait_for_subscribers(1, 20)
        a.publish_spill(s1.ev[1])
        a.publish_spill(s2.ev[1][:cut])
        endpoint = a.endpoint
        a.close(2000)  # what was sent gets out (a crash would lose it: then more incomplete events)
        time.sleep(0.3)
        a = publisher(1, endpoint, wait_subscribers=1)  # restarted node: sequence from 0
        assert a.wait_for_subscribers(1, 20)
        time.sleep(0.7)
        a.publish_spill(s3.ev[1])

    try:
        t = threading.Thread(target=node1, daemon=True)
        t.start()
        run_nodes([(b, [s.ev[2] for s in spills])])
        t.join(30)
        live = records_of(svc, 3)
        m = svc.metrics()
    finally:
        svc.stop()
        a.close(0)
        b.close(0)
    r1, r2, r3 = live
    assert m["subscriber"]["restarts"] == {1: 1}
    assert m["subscriber"]["lost_messages"] == {}  # not 2**64
    assert comparable(r1) == comparable(replayed[0]) and core(r3) == core(replayed[2])
    assert r2["complete"] is False and r2["missing_ldcs"] == [1]
    assert r2["incomplete_events"] == EVENTS - (cut - 1)
    assert r2["events"] == EVENTS
    assert r2["beam"] == replayed[1]["beam"]  # scalers come from LDC 2's END_OF_BURST
    assert all(r["lost_messages"]["total"] == 0 for r in live)


@pytest.mark.timeout(60)
def test_monitor_started_late_joins_at_next_start_of_burst(spills, channel_map, tmp_path_factory):
    p1 = publisher(1, fast=False, spill_duration_s=0.8, spill_gap_s=0.4, batch_events=10)
    p2 = publisher(2, fast=False, spill_duration_s=0.8, spill_gap_s=0.4, batch_events=10)
    holder = {}

    def late_start():
        time.sleep(0.35)  # in the middle of spill 1
        holder["svc"] = start_service(channel_map, [p1.endpoint, p2.endpoint])

    t = threading.Thread(target=late_start, daemon=True)
    try:
        t.start()
        run_nodes([(p1, [s.ev[1] for s in spills]), (p2, [s.ev[2] for s in spills])])
        t.join(10)
        svc = holder["svc"]
        live = records_of(svc, 2)
        time.sleep(0.2)
        m = svc.metrics()
    finally:
        if "svc" in holder:
            holder["svc"].stop()
        p1.close(0)
        p2.close(0)
    assert [r["spill"] for r in live] == [2, 3]
    assert [comparable(r) for r in live] == [comparable(r) for r in replay([s.raw for s in spills[1:]], channel_map,
                                                                             tmp_path_factory)]
    assert all(r["lost_messages"]["total"] == 0 and r["incomplete_events"] == 0 for r in live)
    assert m["builder"]["skipped_before_join"] > 0
    assert m["ingest"]["records"] == 2


@pytest.mark.timeout(60)
def test_missing_end_of_burst(spills, replayed, channel_map):
    s1, s2 = spills[:2]
    p1, p2 = publisher(1, wait_subscribers=1), publisher(2, wait_subscribers=1)
    svc = start_service(channel_map, [p1.endpoint, p2.endpoint], spill_timeout_s=1.0)
    try:
        t0 = time.monotonic()
        # LDC 2 never sends END_OF_BURST: spill 1 closes when LDC 2 moves on, spill 2 on the timeout
        run_nodes([(p1, [s1.ev[1], s2.ev[1]]), (p2, [s1.ev[2][:-1], s2.ev[2][:-1]])])
        live = records_of(svc, 2)
        waited = time.monotonic() - t0
    finally:
        svc.stop()
        p1.close(0)
        p2.close(0)
    for r, ref in zip(live, replayed):
        assert r["complete"] is False and r["missing_ldcs"] == [2]
        assert r["beam"] is None and r["eot"] is None  # the scalers are in LDC 2's END_OF_BURST
        assert r["events"] == EVENTS and r["lost_events"] == 0 and r["incomplete_events"] == 0
        assert r["candidates"] == ref["candidates"] and r["hadron_fraction"] == ref["hadron_fraction"]
    assert waited >= 1.0
    assert svc.stats.records_incomplete == 2


class SlowProcessor(SpillProcessor):
    """Decodes like SpillProcessor, slowly: the decoder falls behind."""

    def accumulate(self, words, index=None, **kw):
        time.sleep(0.15)
        return super().accumulate(words, index, **kw)


@pytest.mark.timeout(60)
def test_decoder_behind_drops_whole_events_with_exact_count(spills, replayed, channel_map):
    p1, p2 = publisher(1, wait_subscribers=1, batch_events=10), publisher(2, wait_subscribers=1, batch_events=10)
    cfg = IngestConfig(endpoints=(p1.endpoint, p2.endpoint), workers=0, chunk_events=10, chunk_max_age_s=0.05,
                       worker_capacity=1, max_queued_tasks=1, spill_timeout_s=5.0)
    svc = IngestService(cfg, SlowProcessor, (MonitorConfig(), channel_map)).start()
    try:
        run_nodes([(p1, [spills[0].ev[1]]), (p2, [spills[0].ev[2]])])
        (r,) = records_of(svc, 1)
        m = svc.metrics()
    finally:
        svc.stop()
        p1.close(0)
        p2.close(0)
    ref = replayed[0]
    assert r["dropped_events"] > 0
    assert r["events"] + r["dropped_events"] == EVENTS  # exact: every event decoded or counted dropped
    assert r["lost_events"] == 0  # dropped by the monitor is not lost by the DAQ
    assert m["ingest"]["dropped_events"] == r["dropped_events"]
    assert r["complete"] is True and r["beam"] == ref["beam"]  # END_OF_BURST is never dropped
    assert r["lost_messages"]["total"] == 0 and r["incomplete_events"] == 0


def serve_process(spills, *options: str, env: dict | None = None, timeout: float = 60) -> tuple[list[dict], str]:
    """`serve --json --max-spills N` as a process, fed ``spills`` by two readout nodes (LDC 1 and 2) on
    127.0.0.1; returns its records and its stderr once it has exited 0."""
    p1, p2 = publisher(1, wait_subscribers=1), publisher(2, wait_subscribers=1)
    cmd = [sys.executable, "-m", "na64_online.cli", "serve", "--connect", p1.endpoint, "--connect", p2.endpoint,
           "--json", "--max-spills", str(len(spills)), "--spill-timeout", "3", *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        run_nodes([(p1, [s.ev[1] for s in spills]), (p2, [s.ev[2] for s in spills])])
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        p1.close(0)
        p2.close(0)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()], err


@pytest.mark.timeout(90)
def test_serve_command_prints_replay_records(spills, replayed, channel_map, tmp_path):
    live, err = serve_process(spills, "--workers", "1", "--http", "127.0.0.1:0")
    assert "HTTP on http://127.0.0.1:" in err
    assert [comparable(r) for r in live] == [comparable(r) for r in replayed]
    assert all(r["lost_messages"]["total"] == 0 for r in live)


def test_ingest_config_validation():
    with pytest.raises(ValueError, match="spill_timeout_s"):
        IngestConfig(spill_timeout_s=0)
    with pytest.raises(ValueError, match="max_queued_tasks"):
        IngestConfig(max_queued_tasks=0)
    with pytest.raises(ValueError, match="expected_ldcs"):
        IngestConfig(expected_ldcs=())
    assert IngestConfig().expected_ldcs == (1, 2)


@pytest.mark.timeout(60)
def test_health_snapshots_fit_the_metrics_module(spills, channel_map):
    from na64_online.monitor.metrics import ServiceHealth

    p1, p2 = publisher(1, wait_subscribers=1), publisher(2, wait_subscribers=1)
    health = []
    cfg = IngestConfig(endpoints=(p1.endpoint, p2.endpoint), workers=0, max_queued_tasks=256)
    svc = IngestService(cfg, SpillProcessor, (MonitorConfig(), channel_map), on_health=health.append,
                        health_interval_s=0.05).start()
    try:
        run_nodes([(p1, [spills[0].ev[1]]), (p2, [spills[0].ev[2]])])
        records_of(svc, 1)
        time.sleep(0.2)
    finally:
        svc.stop()
        p1.close(0)
        p2.close(0)
    snap = ServiceHealth(**health[-1])
    assert snap.messages_received == 2 * 5 and snap.events_received == 2 * (EVENTS + 2)
    assert snap.dropped_messages == 0 and snap.sources_connected == 2 and snap.last_message_time is not None
    assert len(health) > 2 and {h["started"] for h in health} == {svc.created_at}  # the start time stays put


@pytest.mark.timeout(90)
def test_worker_process_killed_mid_run(spills, replayed, channel_map):
    kw = dict(wait_subscribers=1, fast=False, spill_duration_s=0.8, spill_gap_s=0.3, batch_events=20)
    p1, p2 = publisher(1, **kw), publisher(2, **kw)
    svc = start_service(channel_map, [p1.endpoint, p2.endpoint], workers=1, task_timeout_s=1.0, queue_timeout_s=60.0, chunk_events=20,
                        chunk_max_age_s=0.05)
    try:
        workers_ready(svc, 1)
        victim = svc.pool._procs[0]  # the service's own child process

        def kill():
            time.sleep(0.4)
            victim.kill()

        threading.Thread(target=kill, daemon=True).start()
        run_nodes([(p1, [s.ev[1] for s in spills[:2]]), (p2, [s.ev[2] for s in spills[:2]])])
        live = records_of(svc, 2, 60)
        m = svc.metrics()
    finally:
        svc.stop()
        p1.close(0)
        p2.close(0)
    assert m["workers"]["local_restarts"] >= 1 and m["workers"]["workers_lost"] >= 1
    assert [comparable(r) for r in live] == [comparable(r) for r in replayed[:2]]  # nothing lost


@pytest.mark.timeout(90)
def test_live_service_serves_metrics_and_records_over_http(spills, replayed, channel_map):
    """LiveService as `serve` runs it: ingest + SpillMonitor + HTTP API; scraped while it runs."""
    import httpx

    from na64_online.service import LiveService
    from na64_online.web.config import WebConfig

    p1, p2 = publisher(1, wait_subscribers=1), publisher(2, wait_subscribers=1)
    config = Config(web=WebConfig(port=0))
    ingest = config.ingest.replace(endpoints=(p1.endpoint, p2.endpoint), workers=0, spill_timeout_s=2.0,
                     chunk_max_age_s=0.1, max_queued_tasks=256)
    service = LiveService(config, channel_map, ingest).start()
    try:
        run_nodes([(p1, [s.ev[1] for s in spills]), (p2, [s.ev[2] for s in spills])])
        records_of(service.ingest, 3)
        with httpx.Client(base_url=service.web.url, timeout=10, trust_env=False) as client:
            latest = client.get("/api/spills/latest").json()["record"]
            metrics = client.get("/metrics").text
            for _ in range(50):  # the ingest publishes its health once a second
                health = client.get("/api/health").json()
                if health["ingest"].get("events_received"):
                    break
                time.sleep(0.1)
    finally:
        service.stop()
        p1.close(0)
        p2.close(0)
    assert comparable(latest) == comparable(replayed[-1])
    assert "na64_spills_total 3.0" in metrics and "na64_ingest_messages_total" in metrics
    assert health["spills_handled"] == 3 and health["ingest"]["events_received"] > 0


def crafted_node(ldc: int, order: list[int], messages: list[list[bytes]], seqs: dict[int, int] | None = None):
    """A readout node sending ``messages[i]`` in the given order of i, with sequence number i (or seqs[i])."""
    from na64_online.daq.envelope import make_message

    pub = publisher(ldc, wait_subscribers=1)

    def send():
        for i in order:
            pub.socket.send_multipart(make_message(ldc, (seqs or {}).get(i, i), messages[i]))
            time.sleep(0.002)
    return pub, send


@pytest.mark.timeout(90)
def test_sequence_faults_counted_per_ldc_in_record_metrics_health_and_alarm(spills, channel_map):
    """Issue 8 §4 over live sockets: a duplicated message and two swapped ones are not losses (they gave
    lost_messages 27), one wild sequence number is one sequence_jump (it gave 1 000 000 lost messages)."""
    import httpx

    from na64_online.service import LiveService
    from na64_online.web.config import WebConfig

    ev1 = spills[0].ev[1] + spills[1].ev[1]  # 2 × 202 sub-events: messages of 10, spill 1 = 0…20, spill 2 = 21…41
    messages = [spills[0].ev[1][i:i + 10] for i in range(0, 202, 10)]
    messages += [spills[1].ev[1][i:i + 10] for i in range(0, 202, 10)]
    assert len(messages) == 42 and sum(len(m) for m in messages) == len(ev1)
    order = list(range(0, 6)) + [5] + list(range(6, 10)) + [11, 10] + list(range(12, 42))  # dup 5, swap 10/11
    node1, send1 = crafted_node(1, order, messages, seqs={25: 10**6})  # message 25's number damaged
    p2 = publisher(2, wait_subscribers=1, batch_events=10)
    config = Config(web=WebConfig(port=0))
    ingest = config.ingest.replace(endpoints=(node1.endpoint, p2.endpoint), workers=0, spill_timeout_s=2.0,
                     chunk_max_age_s=0.1, max_queued_tasks=256)
    service = LiveService(config, channel_map, ingest).start()
    try:
        assert node1.wait_for_subscribers(1, 20)
        t = threading.Thread(target=send1, daemon=True)
        t.start()
        run_nodes([(p2, [s.ev[2] for s in spills[:2]])])
        t.join(30)
        r1, r2 = records_of(service.ingest, 2)
        m = service.ingest.metrics()
        with httpx.Client(base_url=service.web.url, timeout=10, trust_env=False) as client:
            for _ in range(50):  # the ingest publishes its health once a second
                health = client.get("/api/health").json()
                if health["ingest"].get("bad_messages", {}).get("1", {}).get("sequence_jump"):
                    break
                time.sleep(0.1)
            metrics = client.get("/metrics").text
    finally:
        service.stop()
        node1.close(0)
        p2.close(0)
    # nothing was lost: 0 lost messages, everywhere
    assert m["subscriber"]["lost_messages"].get(1, 0) == 0 and m["subscriber"]["restarts"] == {}
    assert r1["lost_messages"]["total"] == r2["lost_messages"]["total"] == 0
    assert m["subscriber"]["duplicate_messages"] == {1: 1} and m["subscriber"]["reordered_messages"] == {1: 1}
    assert m["subscriber"]["sequence_jumps"] == {1: 1}
    # per spill, per LDC, per kind
    assert r1["bad_messages"]["by_ldc"] == {"1": {"duplicate": 1, "reordered": 1}}
    assert r1["bad_messages"]["total"] == 2
    assert r2["bad_messages"]["by_ldc"] == {"1": {"sequence_jump": 1}}
    assert r2["bad_messages"]["sequence_jumps"] == [{"ldc": "1", "size": 10**6 - 25}]
    # the duplicate was skipped; the late message 10 came after LDC 1 had moved past its events: late, built without it
    assert r1["late_events"] == 10 and r1["incomplete_events"] == 10 and r1["events"] == EVENTS
    # the message with the damaged number was used: spill 2 is whole
    assert r2["incomplete_events"] == 0 and r2["late_events"] == 0 and r2["events"] == EVENTS and r2["complete"]
    assert "bad_messages" in {a["name"] for a in r1["alarms"]} and "bad_messages" in {a["name"] for a in r2["alarms"]}
    assert health["ingest"]["bad_messages"] == {"1": {"duplicate": 1, "reordered": 1, "sequence_jump": 1}}
    assert 'na64_bad_messages_total{kind="duplicate",ldc="1"} 1.0' in metrics
    assert 'na64_bad_messages_total{kind="sequence_jump",ldc="1"} 1.0' in metrics
    assert 'na64_bad_messages_total{kind="bad_envelope",ldc="1"} 0.0' in metrics


def test_bad_message_labels_are_bounded(spills, channel_map):
    """/metrics and /api/health label bad messages by expected LDC, "other" or "unknown": a peer cannot
    make labels up."""
    from na64_online.daq.envelope import make_message, pack_envelope
    from na64_online.daq.subscriber import Subscriber

    svc = IngestService(IngestConfig(workers=0), SpillProcessor, (MonitorConfig(), channel_map))
    svc.subscriber = sub = Subscriber()
    try:
        events = spills[0].ev[1][:4]
        for ldc in (1, 7, 9000):
            sub.handle(make_message(ldc, 3, events))
            sub.handle(make_message(ldc, 3, events))  # duplicate
        sub.handle([b"na64.raw", pack_envelope(1, 4, 4, version=9), b""])
        assert svc.bad_messages_by_label() == {"1": {"duplicate": 1}, "other": {"duplicate": 2},
                                               "unknown": {"bad_envelope": 1}}
    finally:
        sub.close()


def test_spills_are_finished_in_the_order_they_closed(channel_map):
    """A later spill whose results all came first waits for the spills closed before it: run-level sums
    (``eot_run``, run histograms) and the archive follow the spills' order, not the workers' timing."""
    from na64_online.daq.builder import ClosedSpill
    from na64_online.daq.workers import Task, TaskDone

    finished = []

    def finish(acc, complete, live):
        finished.append(complete)  # spill 1 closes complete, spill 2 not: tells them apart
        return {"complete": complete}

    svc = IngestService(IngestConfig(workers=0), SpillProcessor, (MonitorConfig(), channel_map), finish=finish)

    def closed(spill: int, complete: bool) -> ClosedSpill:
        return ClosedSpill(run=7, spill=spill, complete=complete, missing_ldcs=(), incomplete_events=0,
                           late_events=0, lost_messages={}, chunks=1, events=0, data_events=0,
                           reason="end_of_burst", opened_at=0.0, closed_at=0.0, last_eob_at=None)

    def result_of(spill: int) -> TaskDone:
        return TaskDone(Task(7, spill, 0, None, 0, 0), result=None)

    svc._on_outputs([closed(1, True), closed(2, False)], time.monotonic())
    svc._on_done([result_of(2)])
    assert finished == [] and list(svc.records) == []
    svc._on_done([result_of(1)])
    assert finished == [True, False]
    assert list(svc.records) == [{"complete": True}, {"complete": False}]
