"""deploy/prometheus: rules checked and unit-tested by the real promtool, naming only exported metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from exported_metrics import exported_sample_names, metrics_in

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "na64-online.rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; "
                                    "tools/setup installs it as root)")


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@needs_promtool
def test_promtool_checks_rules_and_config():
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout
    result = subprocess.run([PROMTOOL, "check", "config", str(PROMETHEUS / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass_and_can_fail(tmp_path):
    result = subprocess.run([PROMTOOL, "test", "rules", "tests/na64-online.test.yml"], cwd=PROMETHEUS,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # the same tests against rules with one threshold changed fail: they test the rules, not nothing
    (tmp_path / "tests").mkdir()
    text = RULES.read_text().replace("na64_latest_spill_age_seconds > 300", "na64_latest_spill_age_seconds > 900")
    (tmp_path / RULES.name).write_text(text)
    shutil.copy(PROMETHEUS / "tests" / "na64-online.test.yml", tmp_path / "tests")
    result = subprocess.run([PROMTOOL, "test", "rules", "tests/na64-online.test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "NA64NoSpillWhileBeamOn" in result.stdout + result.stderr


def test_every_metric_a_rule_names_is_exported():
    exported = exported_sample_names()
    recorded = {r["record"] for r in rules() if "record" in r}
    seen = set()
    for rule in rules():
        named = metrics_in(rule["expr"])
        seen |= named
        assert named - exported == set(), f"{rule.get('alert') or rule.get('record')} names unexported metrics"
        for used in re.findall(r"\bna64:[a-z0-9_:]+", rule["expr"]):
            assert used in recorded, f"{used} is not a recording rule"
    assert {"na64_spills_by_quality_total", "na64_archive_spills_total", "na64_workers_lost_total",
            "na64_decode_errors_by_source_total", "up"} <= seen
    assert metrics_in('rate(na64_nonexistent_total[5m]) / na64:x:y') == {"na64_nonexistent_total"}


def test_alerts_carry_the_shared_labels_and_a_runbook_link():
    alerts = [r for r in rules() if "alert" in r]
    assert {"NA64ServiceDown", "NA64NoSpillWhileBeamOn", "NA64IngestStalled", "NA64EventsDropped",
            "NA64DecodeErrorRate", "NA64ArchiveNotWritten", "NA64WorkerLost"} <= {a["alert"] for a in alerts}
    for alert in alerts:
        assert alert["labels"]["severity"] in ("info", "warning", "critical")
        assert alert["labels"]["service"] == "na64-online"
        assert alert["labels"]["category"] in ("service", "daq", "physics", "channels")
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}
        assert alert["annotations"]["runbook_url"].endswith("/docs/shifter-guide#" + alert["alert"].lower())
