"""The shift dashboard in a real headless Chromium (Selenium + Debian's chromedriver), served by a real
uvicorn on 127.0.0.1: pushed spills without reloads, tiles with reasons, acknowledgement with a token,
the event display, the archive, and — against the live service as a process — grey panels when the
readout nodes stop and "MONITOR DOWN" when the service goes.

Screenshots (1920×1080 and 1366×768) are written under the pytest tmp dir; their paths are printed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from browser import MISSING, Browser
from prometheus_client import CollectorRegistry

from na64_online.config import load_config
from na64_online.sim.simulator import SimulationConfig, write_raw_file
from na64_online.decoders.channelmap import ChannelMap
from na64_online.monitor.metrics import register_metrics
from na64_online.service import Replayer
from na64_online.web.auth import hash_token
from na64_online.web.app import create_app
from na64_online.web.config import WebConfig
from na64_online.web.server import WebServer
from na64_online.web.state import AppState

LEADER_TOKEN = "shift-leader-token-42"
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A replayed run (3 of 4 spills so far) served with an archive and the replay's raw data; one browser."""
    tmp = tmp_path_factory.mktemp("dash")
    raw = tmp / "run.dat"
    write_raw_file(raw, SimulationConfig(spills=4, events_per_spill=2000, hadron_fraction=0.3, signal_fraction=0.01,
                                         seed=5, dead_channels=((610, 1, 15),)))
    registry = CollectorRegistry()
    replayer = Replayer(load_config(environ={}), ChannelMap.default(), archive_path=tmp / "qa.sqlite",
                        metrics=register_metrics(registry))
    spills = (record for record, _ in replayer.replay_file(raw) if record is not None)
    for _ in range(3):
        next(spills)
    config = WebConfig(port=0, tokens={"Shift Leader": hash_token(LEADER_TOKEN)})
    server = WebServer(create_app(config, AppState(monitor=replayer.monitor, registry=registry,
                                                   event_lookup=replayer.events)), "127.0.0.1", 0).start()
    browser = Browser(tmp / "profile")
    try:
        browser.open(server.url + "/")
        yield server, browser, spills, tmp
    finally:
        browser.close()
        server.stop()
        replayer.close()


def _spill_shown(browser) -> int | None:
    return browser.model("meta", "m.data.spill[0]")


def _latest_spill(server) -> int:
    """The newest spill the service has published (3 when the page opened; 4 once a test pushed the last)."""
    return httpx.get(server.url + "/api/spills/latest", timeout=10, trust_env=False).json()["record"]["spill"]


def _text(browser, name: str) -> str:
    """A header slot's HTML as the page shows it, or a Bokeh Div's text."""
    return browser.js(f"const el = document.getElementById('na64-{name}'); return el ? el.innerHTML : "
                      f"Bokeh.documents[0].get_model_by_name('{name}').text")


def test_page_loads_from_this_machine_without_console_errors(site):
    server, browser, _, _ = site
    assert _spill_shown(browser) == _latest_spill(server)
    assert browser.console_errors() == []
    assert browser.foreign_requests() == []
    assert any(u.startswith(server.url + "/static/js/bokeh.min.js") for u in browser.requests)  # BokehJS served here
    assert any(u.startswith(server.url.replace("http", "ws") + "/ws") for u in browser.requests)


def test_a_new_spill_is_pushed_without_reload_within_a_second(site):
    server, browser, spills, _ = site
    browser.js("window.na64_marker = 'loaded once'")
    navigations = browser.js("return performance.getEntriesByType('navigation').length")
    record = next(spills)  # spill 4's QA record: the monitor publishes its snapshot
    recorded = time.time()
    browser.wait(lambda: _spill_shown(browser) == 4, 5, "spill 4 on the page")
    update = browser.js("return window.na64.lastUpdate")
    assert record["spill"] == update["spill"] == 4
    assert update["received"] / 1000 - recorded < 1.0  # pushed within 1 s of the QA record
    assert browser.js("return window.na64_marker") == "loaded once"  # the same document, not a reload
    assert browser.js("return performance.getEntriesByType('navigation').length") == navigations
    assert "spill 4" in _text(browser, "conditions")
    assert browser.console_errors() == []


def test_tiles_and_alarms_say_why_in_words(site):
    _, browser, _, _ = site
    tiles = _text(browser, "tiles")
    assert 'data-state="BAD"' in tiles and "hadron-like fraction of beam-trigger events" in tiles
    alarms = browser.wait(lambda: _text(browser, "alarm_list"), 5, "the alarm list")
    assert "ECAL cell (3,2) (610/1/15) dead for" in alarms
    assert 'title="rule: channel_findings.dead &gt; 0' in alarms  # the rule on hover
    assert browser.model("hf_warning", "m.location") == 0.05 and browser.model("hf_bad", "m.location") == 0.15
    assert browser.model("trend", "m.data.hf_colour[0]") == "#c62828"  # points coloured by state (BAD)


def _click(browser, selector: str, text: str | None = None) -> None:
    element = browser.wait(lambda: browser.deep(selector, text), 5, f"{selector} {text or ''}")
    element.click()


def _type(browser, placeholder: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field = browser.wait(lambda: browser.deep(f'input[placeholder="{placeholder}"]'), 5, placeholder)
    field.clear()
    field.send_keys(text + Keys.TAB)


def test_acknowledge_on_the_page_needs_a_token(site):
    server, browser, _, _ = site
    api = httpx.Client(base_url=server.url, timeout=10, trust_env=False)
    alarm = browser.wait(lambda: browser.model("ack_alarm", "m.value"), 5, "an alarm to acknowledge")
    name = next(a["name"] for a in api.get("/api/alarms").json() if a["alarm_id"] == alarm)
    _type(browser, "comment", "beam tuning")
    _click(browser, "button", "acknowledge")
    browser.wait(lambda: "refused" in _text(browser, "ack_result"), 5, "the refusal")
    assert "needs your token" in _text(browser, "ack_result")
    assert next(a for a in api.get("/api/alarms").json() if a["name"] == name)["state"] == "raised"
    _type(browser, "your token", "a-guess")
    _click(browser, "button", "acknowledge")
    browser.wait(lambda: "unknown or revoked" in _text(browser, "ack_result"), 5, "the second refusal")
    _type(browser, "your token", LEADER_TOKEN)
    _type(browser, "comment", "beam tuning")
    _click(browser, "button", "acknowledge")
    browser.wait(lambda: "acknowledged by Shift Leader" in _text(browser, "ack_result"), 5, "the acknowledgement")
    acked = next(a for a in api.get("/api/alarms").json() if a["name"] == name)
    assert acked["state"] == "acknowledged" and acked["acknowledgements"][0]["comment"] == "beam tuning"
    browser.wait(lambda: f'class="acked" data-alarm="{name}"' in _text(browser, "alarm_list"), 3, "the acked look")
    metrics = api.get("/metrics").text
    assert 'na64_web_refused_requests_total{reason="missing_token"} 1.0' in metrics
    assert 'na64_web_refused_requests_total{reason="bad_token"} 1.0' in metrics


def test_clicking_a_candidate_shows_its_waveforms(site):
    _, browser, _, _ = site
    browser.model("tabs", "(m.active = 0, 0)")  # the candidates' table is on the physics tab
    time.sleep(0.2)
    assert browser.model("candidates", "m.data.event.length") > 0
    _click(browser, ".slick-row .slick-cell")
    browser.wait(lambda: (browser.model("waveforms", "m.data.xs.length") or 0) > 0, 15, "the waveforms")
    assert browser.model("tabs", "m.active") == 2
    info = _text(browser, "event_info")
    event = int(browser.model("candidates", "m.data.event[0]"))
    assert f"event {event}</b>" in info and "candidate true" in info.lower()
    assert browser.model("waveforms", "m.data.ys[0].length") > 8  # a hit cell's samples
    assert browser.model("ev_ecal", "Math.max(...m.data.energy)") > 1.0  # cell energies on the ECAL map


def test_an_archived_spill_opens_with_the_same_panels_and_live_comes_back(site):
    server, browser, _, _ = site
    browser.model("tabs", "(m.active = 3, 0)")
    browser.wait(lambda: (browser.model("recent", "m.data.spill.length") or 0) >= 3, 10, "the recent spills")
    reasons = browser.model("recent", "m.data.reasons.join('|')")
    assert "beam.hadron_fraction" in reasons
    browser.model("open_run", "(m.value = '1', 0)")
    browser.model("open_spill", "(m.value = '2', 0)")
    time.sleep(0.2)
    _click(browser, "button", "open")
    browser.wait(lambda: _spill_shown(browser) == 2, 10, "archived spill 2")
    assert "ARCHIVED" in _text(browser, "conditions")
    assert browser.model("spec_e_ecal", "m.data.y.length") > 10  # the archived spectra
    _click(browser, "button", "Live")
    browser.wait(lambda: _spill_shown(browser) == _latest_spill(server), 10, "back to the newest spill")


def test_screenshots_at_control_room_sizes(site):
    """Test artefacts: out/screenshots/ of the repository (NA64_SCREENSHOTS to put them elsewhere)."""
    server, browser, _, tmp = site
    shots = Path(os.environ.get("NA64_SCREENSHOTS", Path(__file__).resolve().parent.parent / "out" / "screenshots"))
    browser.model("tabs", "(m.active = 0, 0)")
    time.sleep(0.5)
    full = browser.screenshot(shots / "dashboard-1920x1080.png", 1920, 1080)
    # overview and physics fill 1920×1080 without scrolling
    assert browser.js("return document.documentElement.scrollHeight <= window.innerHeight + 2")
    assert browser.js("return document.documentElement.scrollWidth <= window.innerWidth + 2")
    small = browser.screenshot(shots / "dashboard-1366x768.png", 1366, 768)
    assert browser.js("return document.documentElement.scrollWidth <= window.innerWidth + 2")
    print(f"\nscreenshots: {full} {small}")
    from PIL import Image

    colours = {c for _, c in Image.open(full).convert("RGB").getcolors(maxcolors=1 << 22)}
    assert (0xC6, 0x28, 0x28) in colours and (0x2E, 0x7D, 0x32) in colours  # a BAD and a GOOD tile
    browser.driver.set_window_size(1920, 1080)


# ------------------------------------------------------------------ against the live service
@pytest.mark.timeout(300)
def test_live_service_push_event_display_then_grey_when_silent_then_monitor_down(tmp_path, channel_map):
    """The live service as a process with two simulated readout nodes: spills pushed, a candidate's event
    display from the raw event its decoder worker returned, grey panels when the nodes stop, MONITOR DOWN."""
    from test_service_lifecycle import Lines, _publish_spills, serve_silent_after_2_s, stop

    from na64_online.sim.simulator import ReadoutSimulator

    sim = ReadoutSimulator(SimulationConfig(spills=2, events_per_spill=800, seed=9, signal_fraction=0.01), channel_map)
    per_ldc, publishers, proc = serve_silent_after_2_s(sim, tmp_path)
    browser = None
    try:
        lines = Lines(proc)
        url = lines.stderr_line("HTTP on http://", 240).rsplit("HTTP on ", 1)[1].strip()
        browser = Browser(tmp_path / "profile")
        browser.open(url + "/")
        browser.js("window.na64_marker = 1")
        for spill in (1, 2):
            _publish_spills(publishers, [[per_ldc[ldc][spill - 1]] for ldc in (1, 2)])
            assert lines.record(30)["spill"] == spill
            recorded = time.time()
            browser.wait(lambda: _spill_shown(browser) == spill, 5, f"spill {spill} pushed")
            assert browser.js("return window.na64.lastUpdate.received") / 1000 - recorded < 1.0
        assert browser.js("return window.na64_marker") == 1  # never reloaded
        # a live candidate's event display: the raw event came back from the decoder worker with its result
        assert browser.model("candidates", "m.data.event.length") > 0
        _click(browser, ".slick-row .slick-cell")
        browser.wait(lambda: (browser.model("waveforms", "m.data.xs.length") or 0) > 0, 15, "live waveforms")
        info = _text(browser, "event_info")
        event = int(browser.model("candidates", "m.data.event[0]"))
        spill = int(browser.model("candidates", "m.data.spill[0]"))
        assert f"spill {spill} event {event}</b>" in info and "candidate true" in info.lower()
        assert browser.model("waveforms", "m.data.ys[0].length") > 8
        assert browser.model("ev_ecal", "Math.max(...m.data.energy)") > 1.0
        nodes = _text(browser, "nodes")
        assert 'data-ldc="1"' in nodes and 'data-ldc="2"' in nodes
        # the readout nodes fall silent: panels grey, "beam off / DAQ silent"
        browser.wait(lambda: browser.model("root", "m.css_classes.includes('na64-stale')"), 15, "grey panels")
        assert "beam off / DAQ silent" in _text(browser, "banner")
        root_filter = browser.js("return getComputedStyle(document.querySelector('.na64-stale')).filter")
        assert "grayscale" in root_filter
        assert not browser.js("return document.body.classList.contains('na64-monitor-down')")
        # the service goes: the page itself notices its websocket closing
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        browser.wait(lambda: browser.js("return document.body.classList.contains('na64-monitor-down')"), 10,
                     "MONITOR DOWN")
        assert "MONITOR DOWN" in browser.js("return document.getElementById('na64-down').textContent")
        assert browser.js("return window.na64_marker") == 1
    finally:
        if browser is not None:
            browser.close()
        stop(proc)
        for p in publishers:
            p.close(0)


@pytest.mark.timeout(180)
def test_a_frozen_archive_holds_neither_the_live_panels_nor_the_feeds_loop(postgres_url, channel_map):
    """The dashboard's feed with the archive's PostgreSQL host frozen (its processes SIGSTOPped) as it reads
    the recent spills: every new spill is still prepared for the pages and the status still refreshed; only
    that list waits — and catches up when the database moves again."""
    import asyncio
    import threading

    from na64_online.decoders.decode import as_words
    from na64_online.monitor.archive import ArchiveConfig
    from na64_online.monitor.spill_monitor import SpillMonitor
    from na64_online.sim.simulator import ReadoutSimulator
    from na64_online.web.live import DashboardFeed
    from conftest import frozen_postgres
    from test_archive_writer import wait_until

    monitor = SpillMonitor(channel_map, archive=ArchiveConfig(url=postgres_url, answer_timeout_s=0.5),
                           archive_thread=True)
    sim = ReadoutSimulator(SimulationConfig(spills=3, events_per_spill=300, seed=5), channel_map)
    accs = [monitor.processor.accumulate(as_words(s.raw())[0]) for s in sim.spills()]
    monitor.handle(accs[0])
    wait_until(lambda: monitor.archive_writes.status()["pending_spills"] == 0, what="spill 1 archived")
    state = AppState(monitor=monitor, registry=CollectorRegistry())  # the web's own connection, opened
    feed = DashboardFeed(state, None, poll_seconds=0.02, status_seconds=0.05)
    status_refreshes = []
    refresh = feed._refresh_status  # noqa: SLF001 - counted, as the pages would see it

    async def counted_refresh():
        status_refreshes.append(time.monotonic())
        await refresh()
    feed._refresh_status = counted_refresh  # noqa: SLF001
    loop = asyncio.new_event_loop()
    task = loop.create_task(feed._run())  # noqa: SLF001 - the feed's loop, as the web app runs it

    def run_feed() -> None:
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:  # the test's end
            pass
    runner = threading.Thread(target=run_feed, daemon=True)
    try:
        with frozen_postgres(postgres_url):
            runner.start()  # its first turn reads the recent spills: that read hangs on the frozen database
            wait_until(lambda: feed.prepare_count == 1, what="spill 1 prepared")
            for spill in (2, 3):  # each prepared while the archive is frozen
                monitor.handle(accs[spill - 1])
                wait_until(lambda: feed.prepared.key[:2] == (1, spill), what=f"spill {spill} prepared")
            frozen_at = time.monotonic()
            wait_until(lambda: sum(t > frozen_at for t in status_refreshes) >= 5, what="the status refreshed")
            assert feed.prepare_count == 3 and feed._recent is None  # noqa: SLF001
        wait_until(lambda: monitor.archive_writes.status()["pending_spills"] == 0, 60, what="the writes after")
        wait_until(lambda: (feed._recent or {}).get("spill", [])[:3] == [3, 2, 1], 60,  # noqa: SLF001
                   what="the recent spills caught up")
    finally:
        loop.call_soon_threadsafe(task.cancel)
        runner.join(10)
        state.close()
        monitor.close()


def test_the_feeds_loop_ends_its_read_of_the_recent_spills_before_it_ends(channel_map):
    """Cancelled (the web server stopping), the feed's loop cancels its read of the recent spills, one that waits
    on a database that does not answer included, and returns only once that read has ended: nothing is left
    pending on the event loop (it was, and Python reported the task destroyed while pending at exit)."""
    import asyncio
    import contextlib
    import threading

    from na64_online.monitor.spill_monitor import SpillMonitor
    from na64_online.web.live import DashboardFeed

    release = threading.Event()
    monitor = SpillMonitor(channel_map)
    state = AppState(monitor=monitor, registry=CollectorRegistry())
    feed = DashboardFeed(state, None, poll_seconds=0.01)
    feed._recent_spills = lambda: release.wait(30)  # noqa: SLF001 - a read that hangs

    async def stop_while_reading() -> bool:
        task = asyncio.get_running_loop().create_task(feed._run())  # noqa: SLF001 - as the web app runs it
        feed._refresh_recent()  # noqa: SLF001 - the archive committed a spill
        await asyncio.sleep(0.1)
        assert not feed._recent_task.done()  # noqa: SLF001 - still reading
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return feed._recent_task.done()  # noqa: SLF001

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(stop_while_reading())
    finally:
        release.set()
        loop.close()
        state.close()
        monitor.close()
