"""The typed spill result (monitor/model.py): records identical to the golden ones, serialised once."""

from __future__ import annotations

import json
import math

import pytest

import golden_records
from na64_online.monitor.model import ChannelFinding, SpillQuality, SpillRecord, to_json

#: what the typed model adds on purpose to what main wrote: the channel's electronic address in each finding
ADDED_FINDING_KEYS = ("src_id", "port", "channel")
#: the processing version of an archived spill and the versions beside it (issue #12: reprocessing)
ADDED_ARCHIVE_KEYS = {"version", "versions"}
#: alarm quantities renamed on purpose (the path language gave way to named quantities): old -> new, as they
#: appear in the alarms' ``condition`` and ``detail`` texts
RENAMED_QUANTITIES = {f"health.findings[kind={k}]": f"channel_findings.{k}"
                      for k in ("dead", "hot", "noisy", "drifting")}


def _renamed(value):
    """The golden document with the renamed quantities under their new names."""
    if isinstance(value, dict):
        return {k: _renamed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    if isinstance(value, str):
        for old, new in RENAMED_QUANTITIES.items():
            value = value.replace(old, new)
    return value


def _without_additions(value):
    """``value`` with the documented additions removed, so that everything else must be equal."""
    if isinstance(value, dict):
        keys = set(value)
        if {"slot", "kind", "detector"} <= keys:  # a channel finding
            value = {k: v for k, v in value.items() if k not in ADDED_FINDING_KEYS}
        if {"run", "spill"} <= keys and keys & {"stored_at", "record", "overall"}:  # an archived spill (#12)
            value = {k: v for k, v in value.items() if k not in ADDED_ARCHIVE_KEYS}
        return {k: _without_additions(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_additions(v) for v in value]
    return value


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in golden" for k in a.keys() - b.keys()]
        out += [f"{path}.{k}: only now" for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            out += _diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: golden {json.dumps(a)[:200]} now {json.dumps(b)[:200]}"]


@pytest.fixture(scope="module")
def produced():
    return golden_records.produce()


@pytest.mark.parametrize("source", ["vector", "simulated"])
def test_records_identical_to_golden(produced, source):
    """Replay output, archive rows and API answers equal main's (tests/golden_records.py), key for key —
    but for the documented additions (finding addresses) and renames (alarm quantities)."""
    golden = _renamed(json.loads(golden_records.GOLDEN.read_text())[source])
    now = produced[source]
    differences = _diff(golden, _without_additions(now))
    assert not differences, "\n".join(differences[:40])
    assert len(now["replay"]) == len(golden["replay"]) >= 1


def test_findings_carry_the_electronic_address(produced):
    """The simulated dead channel (srcID 610, port 1, channel 15: ECAL module 1, x 3, y 2) by both addresses."""
    findings = [f for f in produced["simulated"]["replay"][-1]["channel_findings"] if f["kind"] == "dead"]
    assert [(f["src_id"], f["port"], f["channel"], f["detector"], f["x"], f["y"]) for f in findings] == [
        (610, 1, 15, "ECAL", 3, 2)], findings
    archived = produced["simulated"]["archive"]["records"][-1]["record"]["channel_findings"]
    assert [(f["src_id"], f["port"], f["channel"]) for f in archived if f["kind"] == "dead"] == [(610, 1, 15)]


def test_non_finite_numbers_are_null_once_serialised():
    record = SpillRecord(run=1, spill=2, events=0, lost_events=0, decode_errors=0, modules_missing=0, complete=False,
                         beam=None, triggers_accepted=None, hadron_fraction=math.nan, hadron_fraction_srd=math.inf,
                         eot=None, candidates=[])
    data = to_json(record)
    assert data["hadron_fraction"] is None and data["hadron_fraction_srd"] is None
    assert json.loads(record.model_dump_json()) == data
    assert "lost_messages" not in data and "quality" not in data and "reference" not in data  # live/monitor keys


def test_models_refuse_unknown_keys_and_bad_states():
    with pytest.raises(ValueError):
        SpillQuality(run=1, spill=1, overall="SHINY", subsystems={})
    with pytest.raises(ValueError):
        ChannelFinding(slot=1, detector="ECAL", module=0, x=0, y=0, kind="sleepy", value=0.0, reference=None,
                       spills=1, since=(1, 1))
    with pytest.raises(ValueError):
        SpillQuality(run=1, spill=1, overall="GOOD", subsystems={}, colour="green")


def test_openapi_declares_a_response_schema_for_every_route(produced):
    """Every route in /api/openapi.json documents its 200 answer with a content schema (response models)."""
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from na64_online.config import load_config
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.service import build_monitor
    from na64_online.web.app import create_app
    from na64_online.web.config import WebConfig
    from na64_online.web.state import AppState

    monitor = build_monitor(load_config(environ={}), ChannelMap.default())
    try:
        app = create_app(WebConfig(port=0), AppState(monitor=monitor, registry=CollectorRegistry()))
        with TestClient(app) as client:
            doc = client.get("/api/openapi.json").json()
    finally:
        monitor.close()
    operations = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    assert len(operations) >= 14, [(p, m) for p, m, _ in operations]
    missing = []
    for path, method, op in operations:
        content = op.get("responses", {}).get("200", {}).get("content", {})
        if not content or not all(media.get("schema") not in (None, {}) for media in content.values()):
            missing.append(f"{method.upper()} {path}")
    assert not missing, f"routes without a 200 response schema: {missing}"
    schemas = doc["components"]["schemas"]
    assert {"SpillSnapshot", "SpillRecord", "SpillQuality", "ChannelFinding", "ActiveAlarm", "AlarmEvent"} <= set(schemas)
    assert {"src_id", "port", "channel", "detector", "x", "y"} <= set(schemas["ChannelFinding"]["properties"])
