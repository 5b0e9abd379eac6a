"""Alarm rules, life cycle (raised → acknowledged → cleared), history, Alertmanager."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from na64_online.errors import ConfigError
from na64_online.monitor.alarms import (
    DEFAULT_RULES_TOML,
    AlarmConfig,
    AlarmEngine,
    AlarmRule,
    AlertmanagerNotifier,
    default_rules,
    load_rules,
    rule_from_dict,
)
from na64_online.monitor.archive import Archive

HF_RULE = """
[[rules]]
name = "high_hadron_fraction"
quantity = "hadron_fraction"
op = ">"
threshold = 0.2
persist_spills = 3
severity = "warning"
description = "hadrons"
"""


def rec(spill: int, run: int = 1, **values) -> dict:
    base = {"run": run, "spill": spill, "events": 100, "decode_errors": 0, "lost_events": 0, "complete": True,
            "beam": 1000, "hadron_fraction": 0.05, "alarms": []}
    return base | values


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 5.0
        return self.t


# --------------------------------------------------------------------------- rules


def test_load_rules_from_text_file_and_tables(tmp_path):
    (rule,) = load_rules(HF_RULE)
    assert rule == AlarmRule("high_hadron_fraction", "hadron_fraction", ">", 0.2, 3, "warning", "hadrons")
    path = tmp_path / "rules.toml"
    path.write_text(HF_RULE)
    assert load_rules(path) == load_rules(str(path)) == (rule,)
    nested = "[alarms]\nfoo = 1\n" + HF_RULE.replace("[[rules]]", "[[alarms.rules]]")
    assert load_rules(nested) == (rule,)
    assert load_rules({"rules": [{"name": "x", "condition": "quality.overall == BAD"}]})[0].threshold == "BAD"
    assert rule.condition == "hadron_fraction > 0.2"


def test_condition_shorthand():
    r = rule_from_dict({"name": "a", "condition": "channel_findings.dead >= 2", "severity": "CRITICAL"})
    assert (r.quantity, r.op, r.threshold, r.severity) == ("channel_findings.dead", ">=", 2, "critical")
    assert rule_from_dict({"name": "b", "condition": "complete == false"}).threshold is False
    assert rule_from_dict({"name": "c", "condition": "quality.overall != 'GOOD'"}).threshold == "GOOD"
    assert rule_from_dict({"name": "d", "condition": "hadron_fraction<1.5e-3"}).threshold == pytest.approx(1.5e-3)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"name": "a", "quantity": "events", "op": "=>", "threshold": 1}, "unknown operator"),
        ({"name": "a", "quantity": "events", "op": ">"}, "missing field 'threshold'"),
        ({"quantity": "events", "op": ">", "threshold": 1}, "missing field 'name'"),
        ({"name": "a", "quantity": "events", "op": ">", "threshold": 1, "severity": "fatal"}, "severity"),
        ({"name": "a", "quantity": "events", "op": ">", "threshold": 1, "persist_spills": 0}, "persist_spills"),
        ({"name": "a", "quantity": "events", "op": ">", "threshold": 1, "persist_spills": 1.5}, "persist_spills"),
        ({"name": "a", "quantity": "events", "op": ">", "threshold": 1, "persist": 3}, "unknown key"),
        ({"name": "a", "quantity": "events", "op": ">", "threshold": "high"}, "quality state"),
        ({"name": "a", "quantity": "quality.overall", "op": "==", "threshold": "SHINY"}, "compare it with a quality state"),
        ({"name": "a", "quantity": "events", "op": "==", "threshold": True}, "compare it with a number"),
        ({"name": "a", "quantity": "complete", "op": "==", "threshold": 1}, "compare it with true or false"),
        ({"name": "a", "quantity": "events", "op": ">", "threshold": True}, "true/false"),
        ({"name": "a", "quantity": "events", "op": ">", "threshold": [1]}, "threshold"),
        ({"name": "a", "quantity": "x..y", "op": ">", "threshold": 1}, "unknown quantity 'x..y'"),
        ({"name": "a b", "quantity": "events", "op": ">", "threshold": 1}, "name"),
        ({"name": "a", "quantity": "events", "op": ">", "threshold": 1, "missing": "maybe"}, "missing"),
        ({"name": "a", "condition": "events > 1", "op": "<"}, "either"),
        ({"name": "a", "condition": "nonsense"}, "condition"),
    ],
)
def test_bad_rules_are_config_errors(table, message):
    with pytest.raises(ConfigError, match=message):
        load_rules({"rules": [table]})


def test_bad_rule_files(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_rules("[[rules]\nname = 1")
    with pytest.raises(ConfigError, match="no alarm rules"):
        load_rules("x = 1\n")
    with pytest.raises(ConfigError, match="used twice"):
        load_rules(HF_RULE + HF_RULE)
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(HF_RULE.replace('op = ">"', 'op = "~"'))
    with pytest.raises(ConfigError, match=r"bad\.toml.*unknown operator"):
        load_rules(bad)


def test_default_rules():
    rules = {r.name: r for r in default_rules()}
    for name in ("high_hadron_fraction", "decode_errors", "lost_events", "incomplete_spill", "no_beam",
                 "daq_quality_bad", "spill_quality_bad", "dead_channels", "hot_channels"):
        assert name in rules
    assert rules["daq_quality_bad"].severity == "critical"
    assert load_rules(DEFAULT_RULES_TOML) == tuple(rules.values())


def test_rule_comparisons():
    num = AlarmRule("n", "events", ">=", 3)
    assert num.test(3) is True and num.test(2.9) is False and num.test(None) is None
    assert num.test(float("nan")) is None and num.test("3") is None
    state = AlarmRule("s", "quality.overall", ">=", "WARNING")
    assert state.test("BAD") and state.test("warning") and not state.test("GOOD")
    assert state.test("WEIRD") is None
    assert not state.test("NO_DATA") and AlarmRule("n", "quality.overall", ">", "GOOD").test("NO_DATA")
    eq = AlarmRule("e", "quality.overall", "==", "BAD")
    assert eq.test("bad") and not eq.test("GOOD")
    flag = AlarmRule("f", "complete", "==", False)
    assert flag.test(False) and not flag.test(True) and flag.test(None) is None and flag.test(0)


def test_quantities_are_generated_from_the_spill_model():
    """Record fields by name, nested ones dotted, lists counted; quality, findings and issues by named accessors."""
    from na64_online.monitor.alarms import QUANTITIES, SpillContext
    from na64_online.monitor.model import SpillRecord

    scalar = {n for n, f in SpillRecord.model_fields.items() if n not in ("quality", "reference", "alarms")
              and QUANTITIES.get(n) is not None}
    assert {"hadron_fraction", "events", "complete", "dropped_events", "eot_run", "archive_collision"} <= scalar
    assert {"lost_messages.total", "bad_messages.total", "candidates.count", "quality.overall",
            "quality.subsystems.ecal", "channel_findings.dead", "channel_findings.count", "errors.adc_bad_key",
            "notices.module_missing"} <= set(QUANTITIES)
    kinds = {n: QUANTITIES[n].kind for n in ("hadron_fraction", "events", "complete", "quality.overall")}
    assert kinds == {"hadron_fraction": "number", "events": "integer", "complete": "flag", "quality.overall": "state"}
    ctx = SpillContext(
        record={"candidates": [3, 9], "lost_messages": {"total": 4, "by_ldc": {"1": 4}},
                "errors_by_src": {"928": {"adc_bad_key": 2}, "event": {"adc_bad_key": 1, "event_truncated": 5}},
                "channel_findings": [{"kind": "dead"}, {"kind": "hot"}, {"kind": "dead"}]},
        quality={"overall": "BAD", "subsystems": {"ecal": "WARNING"}},
    )
    got = {n: QUANTITIES[n].get(ctx) for n in ("candidates.count", "lost_messages.total", "errors.adc_bad_key",
                                               "errors.event_truncated", "channel_findings.dead",
                                               "channel_findings.noisy", "channel_findings.count",
                                               "quality.subsystems.ecal", "quality.subsystems.hcal", "hadron_fraction")}
    assert got == {"candidates.count": 2, "lost_messages.total": 4, "errors.adc_bad_key": 3,
                   "errors.event_truncated": 5, "channel_findings.dead": 2, "channel_findings.noisy": 0,
                   "channel_findings.count": 3, "quality.subsystems.ecal": "WARNING", "quality.subsystems.hcal": None,
                   "hadron_fraction": None}
    health_only = SpillContext(record={}, health={"findings": [{"kind": "noisy"}]})
    assert QUANTITIES["channel_findings.noisy"].get(health_only) == 1


def test_unknown_quantity_is_refused_with_near_names(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown quantity 'hadron_fracton'; near names: hadron_fraction"):
        load_rules({"rules": [{"name": "a", "condition": "hadron_fracton > 0.1"}]})
    with pytest.raises(ConfigError, match=r"replaced by named quantities; use 'channel_findings\.dead'"):
        load_rules({"rules": [{"name": "a", "condition": "health.findings[kind=dead] > 0"}]})
    with pytest.raises(ConfigError, match=r"unknown quantity 'candidates\.0'.*near names: candidates\.count"):
        load_rules({"rules": [{"name": "a", "condition": "candidates.0 > 0"}]})
    rules = tmp_path / "rules.toml"
    rules.write_text(HF_RULE.replace('quantity = "hadron_fraction"', 'quantity = "quality.subsystem.ecal"'))
    with pytest.raises(ConfigError, match=r"rules\.toml.*near names: quality\.subsystems\.ecal"):
        load_rules(rules)


# --------------------------------------------------------------------------- life cycle


def test_raised_after_n_spills_and_cleared_when_fixed():
    engine = AlarmEngine(load_rules(HF_RULE), clock=Clock())
    assert engine.evaluate(rec(1, hadron_fraction=0.3)) == []
    assert engine.evaluate(rec(2, hadron_fraction=0.3)) == []
    assert engine.take_events() == []
    (alarm,) = engine.evaluate(rec(3, hadron_fraction=0.35))  # third consecutive spill
    assert alarm["name"] == "high_hadron_fraction" and alarm["severity"] == "warning"
    assert alarm["state"] == "raised" and alarm["since_spill"] == 1 and alarm["raised_spill"] == 3
    assert "hadron_fraction = 0.35 (> 0.2) for 3 spills since run 1 spill 1" == alarm["detail"]
    (event,) = engine.take_events()
    assert event["state"] == "raised" and event["spill"] == 3 and event["alarm_id"] == alarm["alarm_id"]
    (alarm,) = engine.evaluate(rec(4, hadron_fraction=0.4))  # still active, no new event
    assert alarm["spills"] == 4 and engine.take_events() == []
    assert engine.evaluate(rec(5, hadron_fraction=0.1)) == []  # fixed: cleared at once
    (event,) = engine.take_events()
    assert event["state"] == "cleared" and event["spill"] == 5 and "no longer holds" in event["detail"]


def test_interrupted_condition_restarts_the_count():
    engine = AlarmEngine(load_rules(HF_RULE))
    for spill, hf in enumerate([0.3, 0.3, 0.1, 0.3, 0.3], start=1):
        assert engine.evaluate(rec(spill, hadron_fraction=hf)) == []
    assert engine.evaluate(rec(6, hadron_fraction=0.3))[0]["since_spill"] == 4


def test_missing_quantity_policies():
    rules = load_rules({"rules": [
        {"name": "f", "condition": "hadron_fraction > 0.2", "missing": "false"},
        {"name": "t", "condition": "hadron_fraction > 0.2", "missing": "true"},
        {"name": "h", "condition": "hadron_fraction > 0.2", "persist_spills": 2, "missing": "hold"},
    ]})
    engine = AlarmEngine(rules)
    assert {a["name"] for a in engine.evaluate(rec(1, hadron_fraction=0.5))} == {"f", "t"}
    active = {a["name"] for a in engine.evaluate(rec(2, hadron_fraction=None))}
    assert active == {"t"}  # f: null is false (cleared); h: held at 1 spill
    assert [(e["name"], e["state"]) for e in engine.take_events()][-1] == ("f", "cleared")
    assert {a["name"] for a in engine.evaluate(rec(3, hadron_fraction=0.5))} == {"t", "h", "f"}


def test_quality_and_extra_context():
    rules = load_rules({"rules": [
        {"name": "bad", "condition": "quality.overall == BAD", "severity": "critical"},
        {"name": "ecal", "condition": "quality.subsystems.ecal >= WARNING", "severity": "info"},
        {"name": "dead", "condition": "channel_findings.dead > 0"},
    ]})
    engine = AlarmEngine(rules)
    quality = {"overall": "BAD", "subsystems": {"ecal": "WARNING"}}
    health = {"findings": [{"kind": "dead", "slot": 3}]}
    active = engine.evaluate(rec(1), quality, extra={"health": health})
    assert [a["name"] for a in active] == ["bad", "dead", "ecal"]  # most severe first
    assert engine.evaluate(rec(2), {"overall": "GOOD", "subsystems": {"ECAL": "GOOD"}}) == []


def test_acknowledge_life_cycle():
    engine = AlarmEngine(load_rules(HF_RULE.replace("persist_spills = 3", "persist_spills = 1")))
    with pytest.raises(KeyError):
        engine.acknowledge("high_hadron_fraction", "alice", "nothing active")
    (alarm,) = engine.evaluate(rec(1, hadron_fraction=0.3))
    with pytest.raises(ValueError):
        engine.acknowledge("high_hadron_fraction", "  ")
    acked = engine.acknowledge("high_hadron_fraction", "alice", "beam tuning, expected")
    assert acked["state"] == "acknowledged" and acked["acknowledged_by"] == "alice"
    assert acked["ack_comment"] == "beam tuning, expected" and acked["alarm_id"] == alarm["alarm_id"]
    (still,) = engine.evaluate(rec(2, hadron_fraction=0.3))
    assert still["state"] == "acknowledged"  # stays acknowledged while the condition holds
    assert engine.evaluate(rec(3, hadron_fraction=0.1)) == []  # cleared: the acknowledgement ends
    (again,) = engine.evaluate(rec(4, hadron_fraction=0.3))
    assert again["state"] == "raised" and again["acknowledged_by"] is None
    assert again["alarm_id"] != alarm["alarm_id"]
    # also by alarm id
    assert engine.acknowledge(again["alarm_id"], "bob")["acknowledged_by"] == "bob"
    states = [e["state"] for e in engine.take_events()]
    assert states == ["raised", "acknowledged", "cleared", "raised", "acknowledged"]
    assert [e["state"] for e in engine.history(name="high_hadron_fraction", limit=2)] == ["acknowledged", "raised"]


def test_life_cycle_history_in_the_archive_and_restart(tmp_path):
    path = tmp_path / "qa.sqlite"
    rules = load_rules(HF_RULE.replace("persist_spills = 3", "persist_spills = 2"))
    with Archive(path) as archive:
        engine = AlarmEngine(rules, archive)
        for spill in (1, 2):
            record = rec(spill, hadron_fraction=0.3)
            record["alarms"] = engine.evaluate(record)
            archive.store_spill(record, None, None, engine.take_events())
        engine.acknowledge("high_hadron_fraction", "alice", "known")  # written at once
        assert archive.active_alarms()[0]["state"] == "acknowledged"
        assert archive.get_spill(1, 2)["record"]["alarms"][0]["name"] == "high_hadron_fraction"

    # restart: the active, acknowledged alarm is taken over
    with Archive(path) as archive:
        engine = AlarmEngine(rules, archive)
        (alarm,) = engine.active()
        assert alarm["state"] == "acknowledged" and alarm["acknowledged_by"] == "alice" and alarm["since_spill"] == 1
        archive.store_spill(rec(3, hadron_fraction=0.3), None, None, engine.take_events())
        assert engine.evaluate(rec(3, hadron_fraction=0.3))[0]["state"] == "acknowledged"
        assert engine.evaluate(rec(4, hadron_fraction=0.0)) == []
        archive.store_spill(rec(4), None, None, engine.take_events())
        history = engine.history(name="high_hadron_fraction")
        assert [(e["state"], e["spill"]) for e in history] == [("cleared", 4), ("acknowledged", None), ("raised", 2)]
        assert engine.history(state="acknowledged")[0]["user"] == "alice"
        assert archive.list_alarms()[0]["state"] == "cleared"


def test_acknowledge_before_the_raise_is_archived_keeps_order(tmp_path):
    with Archive(tmp_path / "qa.sqlite") as archive:
        engine = AlarmEngine(load_rules({"rules": [{"name": "a", "condition": "decode_errors > 0"}]}), archive)
        engine.evaluate(rec(1, decode_errors=5))
        engine.acknowledge("a", "alice")  # raise not archived yet: the ack waits with it
        assert archive.alarm_history() == []
        archive.store_spill(rec(1), None, None, engine.take_events())
        assert [e["state"] for e in archive.alarm_history()] == ["acknowledged", "raised"]
        assert archive.active_alarms()[0]["acked_by"] == "alice"


# --------------------------------------------------------------------------- reload


def test_reload_keeps_state_of_rules_that_remain():
    rules = load_rules({"rules": [
        {"name": "a", "condition": "decode_errors > 0", "persist_spills": 2},
        {"name": "b", "condition": "lost_events > 0"},
    ]})
    engine = AlarmEngine(rules)
    engine.evaluate(rec(1, decode_errors=1, lost_events=1))
    engine.take_events()
    engine.reload(load_rules({"rules": [
        {"name": "a", "condition": "decode_errors > 0", "persist_spills": 2, "severity": "critical"},
        {"name": "c", "condition": "events < 1"},
    ]}))
    (cleared,) = engine.take_events()
    assert cleared["name"] == "b" and cleared["state"] == "cleared" and "removed" in cleared["detail"]
    (a,) = engine.evaluate(rec(2, decode_errors=1))  # the streak of 'a' went on: raised at its 2nd spill
    assert a["name"] == "a" and a["severity"] == "critical" and a["since_spill"] == 1


def test_rules_file_is_reloaded_without_restart(tmp_path, caplog):
    path = tmp_path / "rules.toml"
    path.write_text(HF_RULE)
    engine = AlarmEngine.from_config(AlarmConfig(rules_path=path))
    assert [r.name for r in engine.rules] == ["high_hadron_fraction"]
    engine.evaluate(rec(1, hadron_fraction=0.3))
    path.write_text(HF_RULE.replace("persist_spills = 3", "persist_spills = 2")
                    + '\n[[rules]]\nname = "errors"\ncondition = "decode_errors > 0"\n')
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    (alarm,) = engine.evaluate(rec(2, hadron_fraction=0.3))  # new persistence applied, streak kept
    assert alarm["name"] == "high_hadron_fraction" and {r.name for r in engine.rules} == {"high_hadron_fraction", "errors"}
    # a broken file: logged, previous rules stay
    path.write_text("[[rules]]\nname = 'x'\nop = '>>'\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    with caplog.at_level("ERROR"):
        assert engine.evaluate(rec(3, hadron_fraction=0.3))[0]["name"] == "high_hadron_fraction"
    assert "not reloaded" in caplog.text and engine.rules_error
    assert len(engine.rules) == 2


def test_alarm_config_validation():
    assert AlarmConfig(alertmanager_url=["http://a:9093"]).alertmanager_url == ("http://a:9093",)
    with pytest.raises(ConfigError):
        AlarmConfig(alertmanager_url="am:9093")
    with pytest.raises(ConfigError):
        AlarmConfig(timeout=0)
    with pytest.raises(ConfigError):
        AlarmConfig(queue_size=0)


# --------------------------------------------------------------------------- Alertmanager


class _AM:
    """A tiny Alertmanager stand-in on 127.0.0.1 recording POST /api/v2/alerts bodies."""

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.posts: list[list[dict]] = []
        self.paths: list[str] = []
        self.delay, self.status = delay, status
        self.got = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(owner.delay)
                owner.paths.append(self.path)
                owner.posts.append(json.loads(body))
                self.send_response(owner.status)
                self.end_headers()
                owner.got.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict]:
        return [a for post in self.posts for a in post]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def am():
    server = _AM()
    yield server
    server.close()


def test_alertmanager_receives_raise_ack_and_resolution(am):
    notifier = AlertmanagerNotifier(am.url, timeout=2.0, valid_seconds=240)
    engine = AlarmEngine(load_rules(HF_RULE.replace("persist_spills = 3", "persist_spills = 1")), notifier=notifier,
                         silence_on_ack=False)  # silences: tests/test_alertmanager_real.py, with a real Alertmanager
    try:
        t0 = time.time()
        engine.evaluate(rec(1, hadron_fraction=0.3))
        assert notifier.flush(5)
        (alert,) = am.alerts()
        assert am.paths == ["/api/v2/alerts"]
        assert alert["labels"] == {"alertname": "high_hadron_fraction", "severity": "warning", "service": "na64-online",
                                   "category": "physics"}
        assert alert["annotations"]["summary"] == "hadrons" and "0.3" in alert["annotations"]["description"]
        assert alert["annotations"]["state"] == "raised"
        starts = _parse(alert["startsAt"])
        ends = _parse(alert["endsAt"])
        assert starts >= t0 - 1 and ends > time.time() + 200  # active: valid for a while

        engine.acknowledge("high_hadron_fraction", "alice", "on it")
        assert notifier.flush(5)
        acked = am.alerts()[-1]
        assert acked["annotations"]["acknowledged_by"] == "alice" and acked["annotations"]["state"] == "acknowledged"
        assert acked["labels"] == alert["labels"] and acked["startsAt"] == alert["startsAt"]

        engine.evaluate(rec(2, hadron_fraction=0.0))
        assert notifier.flush(5)
        resolved = am.alerts()[-1]
        assert resolved["annotations"]["state"] == "cleared"
        assert _parse(resolved["endsAt"]) <= time.time() + 1  # resolved now
        assert notifier.failed == 0 and notifier.sent == len(am.posts)
    finally:
        engine.close()


def test_active_alerts_are_resent(am):
    clock = Clock()
    notifier = AlertmanagerNotifier(am.url)
    engine = AlarmEngine(load_rules({"rules": [{"name": "e", "condition": "decode_errors > 0"}]}), notifier=notifier,
                         resend_seconds=12, clock=clock)
    try:
        for spill in range(1, 8):  # 5 s per spill: raised at 1, resent at 4 and 7 (>= 12 s apart)
            engine.evaluate(rec(spill, decode_errors=1))
            assert notifier.flush(5)
        assert len(am.posts) == 3 and all(p[0]["labels"]["alertname"] == "e" for p in am.posts)
    finally:
        engine.close()


def test_unreachable_alertmanager_is_counted_and_never_blocks(caplog):
    _closed = _AM()
    url = _closed.url
    _closed.close()  # nothing listens there any more
    notifier = AlertmanagerNotifier(url, timeout=0.5)
    engine = AlarmEngine(load_rules({"rules": [{"name": "e", "condition": "decode_errors > 0"}]}), notifier=notifier)
    try:
        with caplog.at_level("WARNING"):
            t0 = time.monotonic()
            engine.evaluate(rec(1, decode_errors=1))
            engine.acknowledge("e", "alice")
            assert time.monotonic() - t0 < 0.2
            assert notifier.flush(5)
        assert notifier.failed >= 1 and notifier.sent == 0 and "refused" in notifier.last_error
        notifier.notify(engine.active())
        assert notifier.flush(5) and notifier.failed >= 2
        assert caplog.text.count("Alertmanager notification failed") == 1  # once per outage
    finally:
        engine.close()


def test_http_errors_count_as_failures():
    server = _AM(status=500)
    try:
        notifier = AlertmanagerNotifier(server.url + "/api/v2/alerts", timeout=1)
        notifier.notify([{"name": "x", "severity": "info", "state": "raised", "raised_at": time.time()}])
        assert notifier.flush(5)
        assert notifier.failed == 1 and "500" in notifier.last_error and server.paths == ["/api/v2/alerts"]
        notifier.close()
    finally:
        server.close()


def test_slow_alertmanager_bounded_queue_drops_oldest():
    server = _AM(delay=0.3)
    try:
        notifier = AlertmanagerNotifier(server.url, timeout=2, queue_size=2)
        t0 = time.monotonic()
        for i in range(20):
            notifier.notify([{"name": f"a{i}", "severity": "info", "state": "raised", "raised_at": time.time()}])
        assert time.monotonic() - t0 < 0.2  # never waits for the server
        assert notifier.dropped >= 10
        assert notifier.flush(10)
        names = [a["labels"]["alertname"] for a in server.alerts()]
        assert names[-1] == "a19" and len(names) <= 5  # the newest is delivered; old batches dropped
        notifier.close()
    finally:
        server.close()


def test_notifier_from_config(am):
    engine = AlarmEngine.from_config(AlarmConfig(alertmanager_url=am.url, timeout=1.0, resend_seconds=30))
    try:
        assert engine.notifier is not None and engine.notifier.valid_seconds == 120
        assert engine.notifier.urls == [am.url + "/api/v2/alerts"]
        assert {r.name for r in engine.rules} == {r.name for r in default_rules()}
        quality = {"overall": "BAD", "subsystems": {"daq": "BAD", "beam": "GOOD"}}
        engine.evaluate(rec(1, complete=False, events=0), quality)
        engine.evaluate(rec(2, complete=False, events=0), quality)
        assert engine.notifier.flush(5)
        assert {a["labels"]["alertname"] for a in am.alerts()} >= {"daq_quality_bad", "incomplete_spill", "no_events"}
    finally:
        engine.close()


def _parse(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()



# --------------------------------------------------------------------------- control-room sound


def test_sound_command_plays_once_per_raised_critical_alarm(tmp_path):
    """A real command (a Python one-liner appending to a file) stands in for the control-room speaker."""
    import sys

    log_file = tmp_path / "sounds.log"
    player = [sys.executable, "-c",
              "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:4]) + '\\n')", str(log_file)]
    rules = load_rules(HF_RULE.replace('severity = "warning"', 'severity = "critical"').replace(
        "persist_spills = 3", "persist_spills = 1") + """
[[rules]]
name = "minor"
quantity = "decode_errors"
op = ">"
threshold = 0
severity = "warning"
""")
    config = AlarmConfig(sound_command=player, sound_min_severity="critical")
    engine = AlarmEngine.from_config(config)
    engine.reload(rules)  # the test's rules instead of the defaults
    try:
        engine.evaluate(rec(1, hadron_fraction=0.3, decode_errors=5))  # raised: plays (critical only)
        engine.evaluate(rec(2, hadron_fraction=0.3))  # still active: no second sound
        engine.acknowledge("high_hadron_fraction", "shifter", "known")
        engine.evaluate(rec(3, hadron_fraction=0.05))  # cleared
        engine.notifier.close()
        engine.evaluate(rec(4, hadron_fraction=0.4))  # raised again: plays again
    finally:
        engine.close()
    assert log_file.read_text().splitlines() == ["high_hadron_fraction critical"] * 2


def test_sound_config_validation():
    with pytest.raises(ConfigError):
        AlarmConfig(sound_command=[])
    with pytest.raises(ConfigError):
        AlarmConfig(sound_command=["play"], sound_min_severity="loud")
    assert AlarmConfig(sound_command="beep").sound_command == ("beep",)


# --------------------------------------------------------------------------- acknowledgements kept, threads


def test_a_second_acknowledgement_is_kept_not_replacing_the_first(tmp_path):
    path = tmp_path / "qa.sqlite"
    rules = load_rules(HF_RULE.replace("persist_spills = 3", "persist_spills = 1"))
    with Archive(path) as archive:
        engine = AlarmEngine(rules, archive, clock=Clock())
        record = rec(1, hadron_fraction=0.3)
        record["alarms"] = engine.evaluate(record)
        archive.store_spill(record, None, None, engine.take_events())
        engine.acknowledge("high_hadron_fraction", "night shifter", "beam tuning")
        second = engine.acknowledge("high_hadron_fraction", "other", "still tuning")
        assert second["acknowledged_by"] == "night shifter" and second["ack_comment"] == "beam tuning"
        assert [(a["user"], a["comment"]) for a in second["acknowledgements"]] == [
            ("night shifter", "beam tuning"), ("other", "still tuning")]
        assert second["acknowledgements"][0]["time"] < second["acknowledgements"][1]["time"]
    with Archive(path) as archive:  # restart: both acknowledgements come back from the history
        (alarm,) = AlarmEngine(rules, archive).active()
        assert [a["user"] for a in alarm["acknowledgements"]] == ["night shifter", "other"]
        assert alarm["acknowledged_by"] == "night shifter"


@pytest.mark.timeout(60)
def test_history_is_safe_while_the_spill_thread_adds_events():
    """Without a store the history is an in-memory deque; reading it while spills add events must not raise
    (it raised 'deque mutated during iteration' before it was read under the engine's lock)."""
    engine = AlarmEngine(load_rules(HF_RULE.replace("persist_spills = 3", "persist_spills = 1")))
    errors, stop = [], threading.Event()

    def spills():
        spill = 0
        while not stop.is_set() and spill < 20000:
            spill += 1
            engine.evaluate(rec(spill, hadron_fraction=0.3 if spill % 2 else 0.0))  # raise, clear, raise …

    import sys

    for spill in range(1, 4001):  # a long history to read
        engine.evaluate(rec(-spill, hadron_fraction=0.3 if spill % 2 else 0.0))
    writer = threading.Thread(target=spills)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: the race shows within a few reads
    writer.start()
    try:
        for _ in range(100):
            try:
                engine.history(limit=100000)
            except RuntimeError as exc:
                errors.append(exc)
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        writer.join(30)
    assert not errors and len(engine.history(limit=100000)) > 0


def test_sound_notifier_state_is_locked(tmp_path):
    """Raised alarms notified from two threads at once sound once each, never twice."""
    import sys

    from na64_online.monitor.alarms import SoundNotifier

    notifier = SoundNotifier([sys.executable, "-c", "pass"], "warning")
    alarms = [{"alarm_id": f"id{i}", "name": f"a{i}", "state": "raised", "severity": "critical"} for i in range(50)]
    threads = [threading.Thread(target=notifier.notify, args=(alarms,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    notifier.close()
    assert notifier.played + notifier.skipped + notifier.failed == 50


def test_docs_list_every_quantity():
    """docs/alarms.md ends with the table of every quantity, as the registry generates it."""
    from pathlib import Path

    from na64_online.monitor.alarms.quantities import quantities_markdown

    docs = (Path(__file__).resolve().parents[1] / "docs" / "alarms.md").read_text()
    assert docs.endswith(quantities_markdown()), "regenerate the table: monitor.alarms.quantities.quantities_markdown()"
