"""Staleness of the live service (monitor/liveness.py) on an injected clock: no sleeping."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from na64_online.config import load_config
from na64_online.errors import ConfigError
from na64_online.monitor.alarms import AlarmEngine
from na64_online.monitor.archive import Archive
from na64_online.monitor.liveness import LivenessWatch
from na64_online.monitor.metrics import MonitorSnapshot, ServiceHealth, SnapshotStore, register_metrics

T0 = 1_700_000_000.0
LIMIT = 60.0
RECORD = {"run": 7, "spill": 3, "events": 1000}
QUALITY = {"overall": "GOOD", "subsystems": {"beam": "GOOD", "daq": "GOOD"}}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world():
    """A store, a clock and a watch listening since T0."""
    clock = Clock(T0)
    store = SnapshotStore()
    listening = {"since": T0}
    watch = LivenessWatch(store, LIMIT, listening_since=lambda: listening["since"], clock=clock)
    return store, clock, watch, listening


def spill_at(store: SnapshotStore, t: float) -> None:
    store.publish(monitor=MonitorSnapshot().with_spill(RECORD, QUALITY, now=t))


def messages_at(store: SnapshotStore, message_time: float | None, loop_time: float | None) -> None:
    store.publish(service=ServiceHealth(started=T0, last_message_time=message_time, loop_time=loop_time))


def test_warming_up_then_ok_then_readout_silent(world):
    store, clock, watch, listening = world
    listening["since"] = None
    assert watch.status().status == "warming_up" and not watch.status().ready
    listening["since"] = T0
    clock.t = T0 + LIMIT - 1  # no spill yet, but not for long
    assert watch.status().status == "ok"
    messages_at(store, None, loop_time=clock.t)  # the loop turns, nothing arrives
    clock.t = T0 + LIMIT + 1
    live = watch.status()
    assert live.stale and live.reason == "readout_silent" and live.latest_spill_age_seconds is None
    assert "readout nodes are silent" in live.describe()


def test_silent_after_spills_then_recovered(world):
    store, clock, watch, _ = world
    spill_at(store, T0 + 10)
    messages_at(store, T0 + 10, loop_time=T0 + 80)
    clock.t = T0 + 80
    live = watch.status()
    assert live.stale and live.reason == "readout_silent"
    assert live.latest_spill_age_seconds == pytest.approx(70) and live.latest_message_age_seconds == pytest.approx(70)
    spill_at(store, T0 + 81)
    clock.t = T0 + 82
    assert watch.status().status == "ok"


def test_messages_without_records_is_a_stuck_monitor(world):
    store, clock, watch, _ = world
    spill_at(store, T0 + 10)
    clock.t = T0 + 100
    messages_at(store, T0 + 99, loop_time=T0 + 99.5)  # data arriving, no record for 90 s
    live = watch.status()
    assert live.stale and live.reason == "monitor_stuck" and "monitor is stuck" in live.describe()


def test_a_loop_that_stopped_turning_is_a_stuck_monitor_not_silent_nodes(world):
    store, clock, watch, _ = world
    spill_at(store, T0 + 10)
    messages_at(store, T0 + 10, loop_time=T0 + 10)  # the ingest loop has not published since
    clock.t = T0 + 100
    assert watch.status().reason == "monitor_stuck"


def test_no_data_alarm_raised_once_then_cleared_by_a_spill(world):
    store, clock, watch, _ = world
    engine = AlarmEngine(clock=clock)
    spill_at(store, T0 + 1)
    messages_at(store, T0 + 1, loop_time=T0 + 1)
    clock.t = T0 + 30
    assert not watch.check(engine).stale and engine.active() == []
    for t in (T0 + 70, T0 + 90, T0 + 120):  # raised once; the detail follows the age
        clock.t = t
        messages_at(store, T0 + 1, loop_time=t)
        watch.check(engine)
    active = engine.active()
    assert [a["name"] for a in active] == ["no_data"] and "no spill for 119 s" in active[0]["detail"]
    assert [e["state"] for e in engine.history(name="no_data")] == ["raised"]
    spill_at(store, T0 + 121)
    clock.t = T0 + 122
    assert watch.check(engine).status == "ok"
    assert engine.active() == []
    assert [e["state"] for e in engine.history(name="no_data")] == ["cleared", "raised"]


def test_no_data_alarm_survives_a_restart_and_rule_reloads(world, tmp_path):
    store, clock, watch, _ = world
    with Archive(tmp_path / "qa.sqlite") as archive:
        engine = AlarmEngine(store=archive, clock=clock)
        clock.t = T0 + LIMIT + 5
        watch.check(engine)
        engine.reload(engine.rules)  # the rules file changed: a service alarm is no rule's, it stays
        assert [a["name"] for a in engine.active()] == ["no_data"]
        restarted = AlarmEngine(store=archive, clock=clock)
        assert [a["name"] for a in restarted.active()] == ["no_data"]
        # the restarted service listens anew: not stale yet, but no spill either — the alarm stays
        fresh = LivenessWatch(store, LIMIT, listening_since=lambda: clock.t, clock=clock)
        assert fresh.check(restarted).status == "ok" and [a["name"] for a in restarted.active()] == ["no_data"]
        spill_at(store, clock.t)
        fresh.check(restarted)
        assert restarted.active() == []
        states = [r["state"] for r in archive.alarm_history(name="no_data")]
    assert states == ["cleared", "raised"]


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exposed")


def test_metrics_age_gauge_no_data_reason_and_quality_while_stale(world):
    store, clock, watch, _ = world
    registry = CollectorRegistry()
    register_metrics(registry, store, liveness=watch.status)
    spill_at(store, T0 + 5)
    messages_at(store, T0 + 5, loop_time=T0 + 6)
    clock.t = T0 + 20
    text = generate_latest(registry).decode()
    assert _sample(text, "na64_latest_spill_age_seconds") == pytest.approx(15)
    assert _sample(text, 'na64_quality_state{subsystem="overall"}') == 0.0  # GOOD
    assert _sample(text, 'na64_no_data{reason="readout_silent"}') == 0.0
    clock.t = T0 + 100
    messages_at(store, T0 + 5, loop_time=T0 + 99)
    text = generate_latest(registry).decode()
    assert _sample(text, "na64_latest_spill_age_seconds") == pytest.approx(95)
    assert _sample(text, 'na64_quality_state{subsystem="overall"}') == 1.0  # NO_DATA
    assert _sample(text, 'na64_quality_state{subsystem="beam"}') == 1.0
    assert _sample(text, 'na64_no_data{reason="readout_silent"}') == 1.0
    assert _sample(text, 'na64_no_data{reason="monitor_stuck"}') == 0.0


def test_no_data_after_seconds_is_configurable_and_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[monitor]\nno_data_after_seconds = 5.5\n")
    assert load_config(path, environ={}).monitor.no_data_after_seconds == 5.5
    assert load_config(environ={}).monitor.no_data_after_seconds == 60.0
    path.write_text("[monitor]\nno_data_after_seconds = 0\n")
    with pytest.raises(ConfigError, match="no_data_after_seconds"):
        load_config(path, environ={})
