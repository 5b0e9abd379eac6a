"""The shift dashboard in a real headless Chromium, served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from prometheus_client import CollectorRegistry

from na64_online.config import load_config
from na64_online.sim.simulator import SimulationConfig, write_raw_file
from na64_online.decoders.channelmap import ChannelMap
from na64_online.monitor.metrics import register_metrics
from na64_online.service import Replayer
from na64_online.web.app import create_app
from na64_online.web.auth import hash_token
from na64_online.web.config import WebConfig
from na64_online.web.server import WebServer
from na64_online.web.state import AppState

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RED, GREEN = (0xC6, 0x28, 0x28), (0x2E, 0x7D, 0x32)  # BAD and GOOD tiles
LEADER_TOKEN = "shift-leader-token-42"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    raw = tmp / "run.dat"
    write_raw_file(raw, SimulationConfig(spills=3, events_per_spill=1500, hadron_fraction=0.3, seed=5,
                                         dead_channels=((610, 1, 15),)))
    registry = CollectorRegistry()
    replayer = Replayer(load_config(environ={}), ChannelMap.default(), metrics=register_metrics(registry))
    empty = WebServer(create_app(WebConfig(port=0), AppState(monitor=replayer.monitor, registry=registry)),
                      "127.0.0.1", 0).start()
    with httpx.Client(base_url=empty.url, timeout=10, trust_env=False) as client:
        waiting = client.get("/").text  # before any spill
    empty.stop()
    records = [r for r, _ in replayer.replay_file(raw) if r is not None]
    config = WebConfig(port=0, refresh_seconds=600, tokens={"Shift Leader": hash_token(LEADER_TOKEN)})
    server = WebServer(create_app(config, AppState(
        monitor=replayer.monitor, registry=registry)), "127.0.0.1", 0).start()
    yield server, records, waiting, tmp
    server.stop()
    replayer.close()


def test_page_and_its_javascript_are_served(dashboard):
    server, records, waiting, _ = dashboard
    assert "waiting for the first spill" in waiting
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Run 1 · spill 3" in page.text and "high_hadron_fraction" in page.text
        assert '/bokeh/static/js/bokeh.min.js' in page.text  # served locally, no CDN
        assert client.get("/bokeh/static/js/bokeh.min.js").status_code == 200


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (tools/setup installs it)")
@pytest.mark.timeout(120)
def test_headless_chromium_renders_quality_tiles(dashboard):
    """BokehJS really runs: the screenshot shows the red BAD beam tile and green GOOD tiles."""
    from PIL import Image

    server, _, _, tmp = dashboard
    shot = tmp / "dashboard.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,900", "--virtual-time-budget=8000",
         f"--screenshot={shot}", server.url + "/"],
        capture_output=True, timeout=90, check=True,
    )
    image = Image.open(shot).convert("RGB")
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    assert RED in colours and GREEN in colours


def test_acknowledge_from_the_dashboard_form(dashboard):
    """The form a shifter submits: their token, a comment and the page's CSRF token (signed double submit:
    the page's cookie nonce, signed into the form); the alarm shows who acknowledged it."""
    import re

    server, _, _, _ = dashboard
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
        page = client.get("/").text
        assert 'action="/ui/alarms/high_hadron_fraction/ack"' in page
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        assert client.cookies.get("na64_csrf")
        form = {"content-type": "application/x-www-form-urlencoded"}
        ack = "/ui/alarms/high_hadron_fraction/ack"
        no_csrf = client.post(ack, content=f"token={LEADER_TOKEN}&comment=x", headers=form)
        assert no_csrf.status_code == 403 and "Not acknowledged" in no_csrf.text
        forged = client.post(ack, content=f"token={LEADER_TOKEN}&csrf={'0' * 64}", headers=form)
        assert forged.status_code == 403
        with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as other:  # no cookie: a foreign site
            assert other.post(ack, content=f"token={LEADER_TOKEN}&csrf={csrf}", headers=form).status_code == 403
        no_token = client.post(ack, content=f"csrf={csrf}&comment=x", headers=form)
        assert no_token.status_code == 401 and "Not acknowledged" in no_token.text
        assert client.post(ack, content=f"csrf={csrf}&token=guess", headers=form).status_code == 401
        assert client.post("/ui/alarms/nonexistent/ack", content=f"csrf={csrf}&token={LEADER_TOKEN}",
                           headers=form).status_code == 404
        done = client.post(ack, content=f"csrf={csrf}&token={LEADER_TOKEN}&comment=pion+run", headers=form)
        assert done.status_code == 303 and done.headers["location"] == "/"
        page = client.get("/").text
        assert "acknowledged by Shift Leader: pion run" in page
        assert 'action="/ui/alarms/high_hadron_fraction/ack"' not in page
        metrics = client.get("/metrics").text
        assert 'na64_web_refused_requests_total{reason="bad_csrf"} 3.0' in metrics
        assert 'na64_web_refused_requests_total{reason="missing_token"} 1.0' in metrics
        assert 'na64_web_refused_requests_total{reason="bad_token"} 1.0' in metrics


def test_status_header_turns_grey_when_no_data_comes():
    from na64_online.monitor.liveness import Liveness
    from na64_online.monitor.model import HealthReport, SpillQuality, SpillRecord
    from na64_online.monitor.spill_monitor import SpillSnapshot
    from na64_online.web.dashboard import STATE_COLOURS, status_html

    record = SpillRecord(run=1, spill=4, events=0, lost_events=0, decode_errors=0, modules_missing=0, complete=True,
                         beam=None, triggers_accepted=None, hadron_fraction=None, hadron_fraction_srd=None, eot=None,
                         candidates=[])
    snapshot = SpillSnapshot(record=record, health=HealthReport(), published_at=100.0,
                             quality=SpillQuality(run=1, spill=4, overall="BAD",
                                                  subsystems={"beam": "GOOD", "daq": "BAD"}))
    fresh = status_html(snapshot, [], now=110.0)
    assert STATE_COLOURS["BAD"] in fresh and STATE_COLOURS["GOOD"] in fresh and "NO DATA" not in fresh
    silent = Liveness("no_data", "readout_silent", 95.0, 95.0, 0.5, 300.0, 60.0)
    stale = status_html(snapshot, [], now=195.0, liveness=silent)
    assert "NO DATA" in stale and "readout nodes are silent" in stale
    assert STATE_COLOURS["BAD"] not in stale and STATE_COLOURS["GOOD"] not in stale
    assert stale.count(STATE_COLOURS["NO_DATA"]) == 3  # SPILL, BEAM, DAQ tiles all grey


def test_alarm_rows_show_alertmanager_silences_and_the_runbook_link():
    from na64_online.monitor.spill_monitor import SpillSnapshot
    from na64_online.web.dashboard import status_html

    from na64_online.monitor.model import HealthReport, SpillQuality, SpillRecord

    record = SpillRecord(run=1, spill=4, events=0, lost_events=0, decode_errors=0, modules_missing=0, complete=True,
                         beam=None, triggers_accepted=None, hadron_fraction=None, hadron_fraction_srd=None, eot=None,
                         candidates=[])
    snapshot = SpillSnapshot(record=record, quality=SpillQuality(overall="GOOD", subsystems={}),
                             health=HealthReport(), published_at=100.0)
    alarm = {"name": "no_data", "severity": "warning", "state": "raised", "detail": "readout_silent",
             "runbook_url": "http://mon/docs/shifter-guide#no_data", "silence_id": "own",
             "silences": [{"id": "own", "created_by": "alice", "comment": "ack"},
                          {"id": "s2", "created_by": "bob", "comment": "access <hall>", "ends_at": "2099-01-01"}]}
    page = status_html(snapshot, [alarm], now=110.0)
    assert "silenced in Alertmanager by bob: access &lt;hall&gt; (until 2099-01-01)" in page
    assert "by alice" not in page  # the acknowledgement's own silence is the acknowledgement
    assert '<a href="http://mon/docs/shifter-guide#no_data">what to do</a>' in page
