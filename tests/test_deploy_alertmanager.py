"""deploy/alertmanager: checked by the real amtool; routes by severity; "DAQ stopped" inhibits physics alarms."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (Debian package "
                                  "'prometheus-alertmanager'; tools/setup installs it as root)")


@needs_amtool
def test_amtool_checks_the_config_and_its_template():
    result = subprocess.run([AMTOOL, "check-config", str(CONFIG)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout and "SUCCESS" in result.stdout


@needs_amtool
@pytest.mark.parametrize("labels, receiver", [
    (["severity=critical", "alertname=NA64ServiceDown"], "shift-critical"),
    (["severity=warning", "alertname=high_hadron_fraction"], "shift-warning"),
    (["severity=info", "alertname=NA64ServiceRestarted"], "shift-info"),
])
def test_routing_by_severity(labels, receiver):
    result = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={CONFIG}", *labels],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [receiver]


def test_shift_receivers_have_webhook_and_mail_and_daq_stopped_inhibits_physics():
    config = yaml.safe_load(CONFIG.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    for name in ("shift-critical", "shift-warning"):
        assert receivers[name]["webhook_configs"] and receivers[name]["email_configs"]
    daq_stopped = config["inhibit_rules"][0]
    assert 'alertname=~"no_data|NA64ReadoutSilent' in daq_stopped["source_matchers"][0]
    assert daq_stopped["target_matchers"] == ['category=~"physics|channels"']
