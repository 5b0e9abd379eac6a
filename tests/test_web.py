"""The HTTP API on a real uvicorn server on 127.0.0.1, fed by replayed simulated spills."""

from __future__ import annotations

import httpx
import pytest

from na64_online.web.app import create_app
from na64_online.web.auth import hash_token
from na64_online.web.config import WebConfig
from na64_online.web.server import WebServer
from na64_online.web.state import AppState
from web_site import replayed_run


NIGHT, OTHER = "night-token-0123456789", "other-token-9876543210"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    replayer, registry, store, records = replayed_run(tmp_path_factory.mktemp("web"), spills=3, events=1200, seed=2)
    config = WebConfig(port=0, refresh_seconds=1.5,
                       tokens={"night shifter": hash_token(NIGHT), "other": hash_token(OTHER)})
    app = create_app(config, AppState(monitor=replayer.monitor, registry=registry))
    server = WebServer(app, "127.0.0.1", 0).start()
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
        client.app = app
        yield client, records
    server.stop()
    replayer.close()


def test_refresh_seconds_is_the_dashboards_heartbeat(served):
    """[web] refresh_seconds: the feed's heartbeat period, and the page says MONITOR DOWN after three."""
    client, _ = served
    assert client.app.state.dashboard.heartbeat_seconds == 1.5
    page = client.get("/").text
    assert "now - na64.lastMessage > 4500)" in page


def test_latest_spill(served):
    client, records = served
    body = client.get("/api/spills/latest").json()
    assert body["record"]["spill"] == 3 and body["record"]["events"] == records[-1]["events"]
    assert body["quality"]["overall"] == "BAD"


def test_archived_spills_and_bad_list(served):
    client, _ = served
    assert [s["spill"] for s in client.get("/api/spills", params={"run": 1}).json()] == [3, 2, 1]
    assert client.get("/api/spills/1/2").json()["record"]["spill"] == 2
    assert len(client.get("/api/spills/bad").json()) == 3
    assert client.get("/api/spills/1/99").status_code == 404
    assert client.get("/api/spills", params={"quality": "SHINY"}).status_code == 422


def test_metrics_exposition(served):
    client, records = served
    text = client.get("/metrics").text
    assert "na64_spills_total 3.0" in text
    assert 'na64_quality_state{subsystem="beam"}' in text
    assert "na64_hadron_fraction" in text


def test_alarm_acknowledge_lifecycle_keeps_every_acknowledgement(served):
    client, _ = served
    active = client.get("/api/alarms").json()
    assert "high_hadron_fraction" in {a["name"] for a in active}
    assert client.post("/api/alarms/nonexistent/ack", json={}, headers=bearer(NIGHT)).status_code == 404
    acked = client.post("/api/alarms/high_hadron_fraction/ack", json={"comment": "beam tuning"}, headers=bearer(NIGHT))
    assert acked.status_code == 200 and acked.json()["state"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == "night shifter"
    again = client.post("/api/alarms/high_hadron_fraction/ack", json={"comment": "still tuning"}, headers=bearer(OTHER))
    assert again.status_code == 200
    # the second acknowledgement does not replace the first: both are kept, oldest first
    alarm = next(a for a in client.get("/api/alarms").json() if a["name"] == "high_hadron_fraction")
    assert alarm["acknowledged_by"] == "night shifter" and alarm["ack_comment"] == "beam tuning"
    assert [(a["user"], a["comment"]) for a in alarm["acknowledgements"]] == [
        ("night shifter", "beam tuning"), ("other", "still tuning")]
    assert alarm["acknowledgements"][0]["time"] <= alarm["acknowledgements"][1]["time"]
    history = client.get("/api/alarms/history", params={"name": "high_hadron_fraction"}).json()
    assert [(h["state"], h["user"]) for h in history][:3] == [
        ("acknowledged", "other"), ("acknowledged", "night shifter"), ("raised", None)]


def test_histograms_reset_and_reference(served):
    client, _ = served
    spill = client.get("/api/histograms/spill").json()
    assert "e_ecal" in spill["histograms"] and spill["spill"] == 3
    assert client.get("/api/histograms/run").json()["spills"] == 3
    auth = bearer(NIGHT)
    assert client.post("/api/histograms/run/reset", json={"reason": "new target"}, headers=auth).json() == {
        "reset": True, "user": "night shifter"}
    assert client.get("/api/histograms/run").json()["spills"] == 3  # the snapshot changes with the next spill
    put = client.put("/api/histograms/reference", json={"run": 1, "spill": 1}, headers=auth)
    assert put.json() == {"reference": [1, 1], "user": "night shifter"}
    assert client.put("/api/histograms/reference", json={"run": 7, "spill": 1}, headers=auth).status_code == 404
    assert client.put("/api/histograms/reference", json={"run": 1}, headers=auth).json()["reference"] == [1, None]
    assert client.get("/api/health").json()["monitor"]["reference"] == [1, None]


def test_unknown_requests(served):
    client, _ = served
    assert client.get("/api/nothing-here").status_code == 404
    assert client.post("/api/alarms/x/ack", content=b"not json",
                       headers={"content-type": "application/json", **bearer(NIGHT)}).status_code == 422
    assert client.get("/api/health").json()["spills_handled"] == 3


def test_readyz_and_health_outside_a_live_service(served):
    """An archive browser (no ingest) has nothing to go stale: ready, status ok, no liveness."""
    client, _ = served
    assert client.get("/readyz").status_code == 200
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["reason"] is None and health["liveness"] is None


@pytest.mark.timeout(180)
def test_a_frozen_archive_is_503_for_its_readers_and_holds_no_other_request(postgres_url, channel_map):
    """The web's archive on a PostgreSQL host that froze (its processes SIGSTOPped): the read under way waits,
    the next ones get 503 with Retry-After after the archive's timeout, and many of them hold neither /metrics
    nor /api/health (the server's threads are not all spent waiting); all answer again once it moves."""
    import concurrent.futures
    import time

    from prometheus_client import CollectorRegistry

    from conftest import frozen_postgres
    from na64_online.monitor.archive import Archive
    from na64_online.monitor.spill_monitor import SpillMonitor
    from test_archive_writer import record

    with Archive(postgres_url) as writer:
        writer.store_spill(record(1, 1), None, {}, [])
    archive = Archive(postgres_url, readonly=True, timeout=1.0)
    app = create_app(WebConfig(port=0), AppState(monitor=SpillMonitor(channel_map), registry=CollectorRegistry(),
                                                 archive=archive))
    server = WebServer(app, "127.0.0.1", 0).start()
    pool = concurrent.futures.ThreadPoolExecutor(64)
    try:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
            assert client.get("/api/spills").json()[0]["spill"] == 1
            with frozen_postgres(postgres_url):
                first = pool.submit(client.get, "/api/spills")  # waits on the frozen database
                time.sleep(0.5)
                many = [pool.submit(client.get, "/api/spills") for _ in range(60)]
                answers = [f.result(30) for f in many]
                assert {a.status_code for a in answers} == {503}
                assert answers[0].headers["retry-after"] == "5" and "busy" in answers[0].json()["detail"]
                assert client.get("/metrics", timeout=10).status_code == 200
                assert client.get("/api/health", timeout=10).status_code == 200
                assert not first.done()
            assert first.result(30).status_code == 200
            assert client.get("/api/spills").status_code == 200
            assert 'na64_web_refused_requests_total{reason="unavailable"} 60.0' in client.get("/metrics").text
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        server.stop()
        archive.close()


def test_a_long_run_serves_its_newest_trend_rows_and_every_spill_in_its_totals(tmp_path):
    """A run that never changes number keeps the newest ``[monitor] trend_spills`` rows of its trend (the
    service's memory and each spill's snapshot stay bounded); ``/api/histograms/run`` counts every spill, and the
    dashboard's cumulative EOT still starts from the spills no longer in the trend."""
    from na64_online.web.live import DashboardFeed, plain_snapshot
    from na64_online.web.panels import prepare

    replayer, registry, _, records = replayed_run(tmp_path, spills=4, events=400, seed=3,
                                                  environ={"NA64_MONITOR__TREND_SPILLS": "2"})
    server = WebServer(create_app(WebConfig(port=0), AppState(monitor=replayer.monitor, registry=registry)),
                       "127.0.0.1", 0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
            run = client.get("/api/histograms/run").json()
        assert [row["spill"] for row in run["trend"]] == [3, 4]
        assert run["spills"] == 4 and run["eot"] == pytest.approx(sum(r["eot"] for r in records))
        monitor = replayer.monitor
        data = prepare(plain_snapshot(monitor.latest), monitor.channel_map, cuts=monitor.processor.config.cuts)
        eot_cum = data.sources["trend"]["eot_cum"]
        assert list(data.sources["trend"]["spill"]) == [3, 4]
        assert eot_cum[0] == pytest.approx(sum(r["eot"] for r in records[:3]))
        assert eot_cum[-1] == pytest.approx(run["eot"])
        # an archived spill of the run opens with the same trend: its newest spills, the EOT from the first
        state = AppState(monitor=monitor, registry=registry)
        try:
            feed = DashboardFeed(state, None)
            archived, newest, older, absent = (feed._archived(1, 4), feed._archived(1, None), feed._archived(1, 2),
                                               feed._archived(7, None))
        finally:
            state.close()
        assert list(archived.sources["trend"]["spill"]) == [3, 4]
        assert archived.sources["trend"]["eot_cum"][-1] == pytest.approx(run["eot"])
        # no spill named: the run's last; an older one: the same newest trend rows beside its own record
        assert list(newest.sources["trend"]["spill"]) == [3, 4]
        assert newest.key[:2] == (1, 4) and older.key[:2] == (1, 2)
        assert list(older.sources["trend"]["spill"]) == [3, 4]
        assert absent == "no archived spill of run 7"
    finally:
        server.stop()
        replayer.close()
