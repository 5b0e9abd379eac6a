"""deploy/*.service: sandboxed so that `systemd-analyze security` rates them OK or better; a watchdog."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = [ROOT / "deploy" / "na64-online.service", ROOT / "deploy" / "na64-online-worker@.service"]
ANALYZE = shutil.which("systemd-analyze")


def unit(path: Path) -> dict[str, list[str]]:
    """Every key of the [Service] section with all its values (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_security_rates_the_unit_ok_or_better(path):
    result = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(path)], capture_output=True,
                            text=True, timeout=60)
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    found = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    exposure, level = float(found.group(1)), found.group(2)
    assert level in ("OK", "SAFE", "PERFECT") and exposure < 2.0, result.stdout


def test_the_service_unit_is_sandboxed_with_a_watchdog():
    service = unit(UNITS[0])
    assert service["Type"] == ["notify"] and int(service["WatchdogSec"][0]) >= 3
    assert service["Restart"] == ["on-failure"]
    assert service["ReadWritePaths"] == ["/var/lib/na64-online /var/log/na64-online"]  # archive and logs only
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("CapabilityBoundingSet", "")):
        assert service[key] == [value], key
    for path in UNITS:
        assert unit(path)["CapabilityBoundingSet"] == [""]
    assert "--log-format json" in service["ExecStart"][0]
