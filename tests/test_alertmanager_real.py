"""The alarm engine against a real Alertmanager (Debian's prometheus-alertmanager, the shipped configuration):
fire, acknowledge (a silence), a long spill pause without a resolve, inhibition, clear and resolve."""

from __future__ import annotations

import time
import urllib.parse

import pytest

from na64_online.monitor.alarms import AlarmEngine, AlertmanagerNotifier, load_rules
from na64_online.monitor.metrics import alarm_view
from ops_processes import ALERTMANAGER, http, start_alertmanager, wait_for

pytestmark = pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager not installed (Debian package; "
                                "tools/setup installs it as root)")

RULES = load_rules("""
[[rules]]
name = "high_hadron_fraction"
condition = "hadron_fraction > 0.2"
severity = "warning"
category = "physics"
description = "hadrons"
""")
RESEND = 0.5  # s: alerts are valid for 4 periods (2 s) unless re-sent
LABELS = {"instance": "test-monitor", "job": "na64-online"}


def rec(spill: int, **values) -> dict:
    return {"run": 1, "spill": spill, "events": 100, "decode_errors": 0, "hadron_fraction": 0.05} | values


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    daemon, url = start_alertmanager(tmp_path_factory.mktemp("alertmanager"))
    yield url
    daemon.stop()


def alerts(url: str, name: str) -> list[dict]:
    query = urllib.parse.quote(f'alertname="{name}"')
    return http(f"{url}/api/v2/alerts?filter={query}")


def silences(url: str) -> list[dict]:
    return [s for s in http(f"{url}/api/v2/silences") if s["status"]["state"] == "active"]


def test_fire_pause_acknowledge_inhibit_clear_resolve(alertmanager):
    url = alertmanager
    notifier = AlertmanagerNotifier(url, timeout=2.0, valid_seconds=4 * RESEND, labels=LABELS,
                                    generator_url="http://127.0.0.1:8064/")
    engine = AlarmEngine(RULES, notifier=notifier, resend_seconds=RESEND, silence_seconds=120,
                         runbook_url="http://127.0.0.1:8064/docs/shifter-guide")
    control = AlertmanagerNotifier(url, valid_seconds=4 * RESEND, labels={"instance": "control"})
    try:
        # fire: the alert carries the shared labels, the runbook link and the dashboard as its source
        engine.evaluate(rec(1, hadron_fraction=0.3))
        (alert,) = wait_for(lambda: alerts(url, "high_hadron_fraction"), 10, what="the alert in Alertmanager")
        assert alert["labels"] == {"alertname": "high_hadron_fraction", "severity": "warning", "category": "physics",
                                   "service": "na64-online", **LABELS}
        assert alert["annotations"]["runbook_url"] == "http://127.0.0.1:8064/docs/shifter-guide#high_hadron_fraction"
        assert alert["generatorURL"] == "http://127.0.0.1:8064/" and alert["status"]["state"] == "active"
        control.notify([{"name": "control_alarm", "severity": "info", "state": "raised", "raised_at": time.time()}])
        assert control.flush(5)

        # a long pause in spills (5 s = 10 periods, 2.5 × the alert's validity): the timer keeps it firing,
        # while the control alert, sent once, is resolved by Alertmanager
        time.sleep(5.0)
        (alert,) = alerts(url, "high_hadron_fraction")
        assert alert["status"]["state"] == "active"
        assert alerts(url, "control_alarm") == []

        # acknowledge: a silence on exactly the alert's labels, by the acknowledging person
        engine.acknowledge("high_hadron_fraction", "alice", "beam line retuned")
        (silence,) = wait_for(lambda: silences(url), 10, what="the acknowledgement's silence")
        assert silence["createdBy"] == "alice" and "beam line retuned" in silence["comment"]
        assert {(m["name"], m["value"]) for m in silence["matchers"]} == set(alert["labels"].items())
        wait_for(lambda: alerts(url, "high_hadron_fraction")[0]["status"]["silencedBy"] == [silence["id"]], 10,
                 what="the alert silenced")
        wait_for(lambda: engine.active()[0]["silence_id"] == silence["id"], 10, what="the engine knowing its silence")

        # DAQ stopped (no_data) inhibits the physics alarm; a silence made by hand in Alertmanager shows in the engine
        engine.set_condition("no_data", True, detail="readout_silent")
        wait_for(lambda: alerts(url, "high_hadron_fraction")[0]["status"]["inhibitedBy"], 10, what="inhibition")
        by_hand = http(f"{url}/api/v2/silences", {
            "matchers": [{"name": "alertname", "value": "no_data", "isRegex": False, "isEqual": True}],
            "startsAt": "2020-01-01T00:00:00Z", "endsAt": "2099-01-01T00:00:00Z", "createdBy": "bob",
            "comment": "access in the hall"})["silenceID"]
        no_data = wait_for(lambda: next((a for a in engine.active() if a["name"] == "no_data"
                                         and a["silenced_by"] == "bob"), None), 10, what="bob's silence read back")
        assert no_data["silences"][0]["id"] == by_hand
        view = alarm_view(engine)
        assert {a["name"] for a in view["active"]} == {"no_data", "high_hadron_fraction"}

        # clear: the alert is resolved at once and the acknowledgement's silence ends; bob's stays
        engine.evaluate(rec(2, hadron_fraction=0.0))
        engine.set_condition("no_data", False, detail="spills again")
        wait_for(lambda: alerts(url, "high_hadron_fraction") == [] and alerts(url, "no_data") == [], 10,
                 what="both alerts resolved")
        wait_for(lambda: [s["id"] for s in silences(url)] == [by_hand], 10, what="the acknowledgement's silence ended")
        delivery = engine.delivery()
        assert delivery["configured"] and delivery["sent"] > 10 and delivery["failed"] == 0
        assert delivery["last_success"] > time.time() - 5
    finally:
        engine.close()
        control.close()
