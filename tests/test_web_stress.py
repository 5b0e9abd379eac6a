"""Concurrent HTTP writes and reads while spills flow through a real live service (ZeroMQ on 127.0.0.1,
ingest thread, SQLite archive, uvicorn): no 5xx, no exception in any thread, every spill processed."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from na64_online.config import Config
from na64_online.daq.publisher import PublisherConfig, ReadoutPublisher
from na64_online.sim.simulator import ReadoutSimulator, SimulationConfig
from na64_online.decoders.channelmap import ChannelMap
from na64_online.monitor.archive import ArchiveConfig
from na64_online.service import LiveService
from na64_online.web.auth import hash_token
from na64_online.web.config import WebConfig
from ops_processes import wait_for

RUN, SPILLS, REQUESTS, THREADS = 12, 8, 200, 8
TOKEN = "stress-token-0123456789"


@pytest.mark.timeout(120)
def test_concurrent_http_writes_and_reads_while_spills_flow(tmp_path, monkeypatch):
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    channel_map = ChannelMap.default()
    sim = ReadoutSimulator(SimulationConfig(run=RUN, spills=SPILLS, events_per_spill=300, hadron_fraction=0.3,
                                            seed=8), channel_map)
    spills = list(sim.spills())
    pubs = [ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", ldc, spill_duration_s=0.3, spill_gap_s=0.25,
                                             batch_events=50, wait_subscribers=1)) for ldc in (1, 2)]
    config = Config(web=WebConfig(port=0, tokens={"stress": hash_token(TOKEN)}),
                    archive=ArchiveConfig(tmp_path / "qa.sqlite"))
    # the service's memory budget counts this whole test process as its footprint (~1 GB late in the suite):
    # with the default 1024 MB its buffers got the minimum, a spill's events were dropped, and that spill
    # cleared the alarm the requests acknowledge
    ingest = config.ingest.replace(endpoints=tuple(p.endpoint for p in pubs), workers=0, spill_timeout_s=2.0,
                     chunk_max_age_s=0.1, max_queued_tasks=256, expected_ldcs=(1, 2), max_memory_mb=4096)
    service = LiveService(config, channel_map, ingest).start()
    publishing = [threading.Thread(target=p.publish, args=([s.ldc_events(p.config.ldc) for s in spills],),
                                   daemon=True) for p in pubs]
    statuses: Counter = Counter()
    failures: list[str] = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    requests = [
        ("GET", "/api/spills/latest", None), ("GET", "/api/spills", None), ("GET", "/api/spills/bad", None),
        ("GET", f"/api/spills/{RUN}/1", None), ("GET", "/api/alarms", None), ("GET", "/api/alarms/history", None),
        ("GET", "/api/histograms/run", None), ("GET", "/api/health", None), ("GET", "/metrics", None),
        ("GET", "/", None),
        ("POST", "/api/histograms/run/reset", {"reason": "stress"}),
        ("PUT", "/api/histograms/reference", {"run": RUN, "spill": 1}),
        ("PUT", "/api/histograms/reference", {"run": RUN}),
        ("POST", "/api/alarms/high_hadron_fraction/ack", {"comment": "stress"}),
    ]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=service.web.url, timeout=30, trust_env=False) as client:
            for _ in range(REQUESTS // THREADS):
                method, path, body = rng.choice(requests)
                try:
                    r = client.request(method, path, json=body, headers=auth if method != "GET" else None)
                except Exception as exc:  # noqa: BLE001 - reported below
                    failures.append(f"{method} {path}: {exc!r}")
                    continue
                statuses[r.status_code] += 1
                if r.status_code >= 500 or r.status_code not in (200, 404):
                    failures.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
                time.sleep(rng.uniform(0, 0.03))

    try:
        for t in publishing:
            t.start()
        # load starts once the hadron-fraction alarm is up (its third BAD spill through: the decoding kernels
        # compiled, since while they compile on a cold start a write may wait longer than command_timeout_s
        # and get 503 + Retry-After; and its acknowledgements can land: before it, each is a 404, and a load
        # that ended before the third spill left nothing acknowledged)
        wait_for(lambda: any(a["name"] == "high_hadron_fraction" for a in service.monitor.alarms.active()), 60,
                 what="the hadron-fraction alarm")
        spills_before = service.ingest.stats.records
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(worker, range(THREADS)))
        spills_during = service.ingest.stats.records - spills_before
        for t in publishing:
            t.join(30)
        records = service.ingest.wait_records(SPILLS, 30)
        alive = service.ingest.running
        stats = service.ingest.stats
        acked = [a for a in service.monitor.alarms.active() if a["acknowledgements"]]
    finally:
        service.stop()
        for p in pubs:
            p.close(0)
    print(f"spills before the load {spills_before}, during it {spills_during}; statuses {dict(statuses)}")
    assert spills_during >= 2  # the requests really ran while spills were being finished
    assert not failures, failures[:5]
    assert not thread_errors, thread_errors[:3]
    assert sum(statuses.values()) == REQUESTS and statuses[200] > REQUESTS // 2
    assert alive and stats.internal_errors == 0
    assert [r["spill"] for r in records] == list(range(1, SPILLS + 1))
    assert sum(r["dropped_events"] for r in records) == 0
    assert acked and all(a["user"] == "stress" for a in acked[0]["acknowledgements"])


@pytest.mark.timeout(60)
def test_a_write_while_the_service_thread_is_stopped_is_a_503(tmp_path):
    channel_map = ChannelMap.default()
    config = Config(web=WebConfig(port=0, tokens={"stress": hash_token(TOKEN)}, command_timeout_s=1.0))
    ingest = config.ingest.replace(endpoints=("tcp://127.0.0.1:1",), workers=0)
    service = LiveService(config, channel_map, ingest).start()
    try:
        with httpx.Client(base_url=service.web.url, timeout=10, trust_env=False) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert client.post("/api/histograms/run/reset", headers=auth).status_code == 200  # ran in the ingest
            service.ingest.stop()
            r = client.post("/api/histograms/run/reset", headers=auth)
            assert r.status_code == 503 and r.headers["retry-after"] == "5" and "not processing" in r.text
            assert client.get("/api/health").status_code == 200  # reads go on
    finally:
        service.stop()


def test_a_command_not_taken_in_time_is_abandoned():
    from na64_online.service import ServiceCommands
    from na64_online.web.state import CommandUnavailable

    class StuckIngest:  # running, but its loop never gets to the queue
        running = True
        queued: list = []

        def call_soon(self, fn):
            self.queued.append(fn)

    ran = []
    ingest = StuckIngest()
    commands = ServiceCommands(ingest, timeout_s=0.2)
    with pytest.raises(CommandUnavailable, match="within 0.2 s"):
        commands(lambda: ran.append(1))
    ingest.queued[0]()  # the loop gets there later: the abandoned command does not run
    assert ran == []

    class LiveIngest(StuckIngest):
        def call_soon(self, fn):
            threading.Thread(target=fn).start()

    assert ServiceCommands(LiveIngest(), 5)(lambda: 42) == 42
    with pytest.raises(KeyError):  # the command's own error reaches the caller; the loop goes on
        ServiceCommands(LiveIngest(), 5)(lambda: {}["x"])
