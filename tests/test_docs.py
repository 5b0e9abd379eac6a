"""docs/: every alarm has a runbook entry; the guides are rendered at /docs with an anchor per heading."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from na64_online.monitor.alarms import SERVICE_ALARMS, default_rules, rules_from_config
from na64_online.web.guides import Guides, slug

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PROMETHEUS_RULES = ROOT / "deploy" / "prometheus" / "na64-online.rules.yml"


def heading_ids(html: str) -> set[str]:
    return set(re.findall(r'<h[1-6] id="([^"]+)"', html))


def every_alarm_name() -> set[str]:
    """Default rules, service alarms, rules in any deploy/*.toml, and the Prometheus alerting rules."""
    names = {r.name for r in default_rules()} | set(SERVICE_ALARMS)
    for path in (ROOT / "deploy").glob("*.toml"):
        data = tomllib.loads(path.read_text())
        if "rules" in data or "rules" in data.get("alarms", {}):
            names |= {r.name for r in rules_from_config(data)}
    groups = yaml.safe_load(PROMETHEUS_RULES.read_text())["groups"]
    names |= {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    return names


def test_every_alarm_has_a_runbook_entry():
    ids = heading_ids(Guides(DOCS).page("shifter-guide"))
    names = every_alarm_name()
    assert len(names) >= 30
    missing = sorted(n for n in names if slug(n) not in ids)
    assert not missing, f"alarms without an entry in docs/shifter-guide.md: {missing}"
    # the Prometheus rules' runbook links land on those entries
    for group in yaml.safe_load(PROMETHEUS_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["annotations"]["runbook_url"].rsplit("#", 1)[1] in ids


def test_the_coverage_check_catches_a_missing_entry(tmp_path):
    text = (DOCS / "shifter-guide.md").read_text().replace("### high_hadron_fraction\n", "### something else\n")
    (tmp_path / "shifter-guide.md").write_text(text)
    assert "high_hadron_fraction" not in heading_ids(Guides(tmp_path).page("shifter-guide"))


def test_guides_render_with_anchors_and_local_links(tmp_path):
    guides = Guides(DOCS)
    assert {"shifter-guide", "operator-guide", "analyst-guide"} <= set(guides.names())
    page = guides.page("operator-guide")
    assert "<title>Operator" in page and 'href="shifter-guide"' in page and 'href="analyst-guide"' in page
    assert "<table>" in guides.page("shifter-guide")
    assert guides.page("no-such-guide") is None and guides.page("../README") is None
    (tmp_path / "x.md").write_text("# X\n\n<script>alert(1)</script>\n")
    assert "<script>" not in Guides(tmp_path).page("x")  # raw HTML is not passed through
    assert 'href="/docs/shifter-guide"' in guides.index()
