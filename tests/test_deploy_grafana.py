"""deploy/grafana: the provisioned run-coordinator dashboard is valid and queries only exported metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from exported_metrics import exported_sample_names, metrics_in

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "na64-run-coordinator.json"
RULES = ROOT / "deploy" / "prometheus" / "na64-online.rules.yml"


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def test_dashboard_loads_and_uses_the_provisioned_data_source():
    board = json.loads(DASHBOARD.read_text())
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "na64-prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert board["uid"] == "na64-run-coordinator" and board["panels"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
    titles = {p["title"] for p in board["panels"]}
    assert {"EOT per run", "Hadron fraction", "Bad-spill fraction", "Dead channels", "Decode errors per srcID",
            "Service up"} <= titles
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "na64.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_every_panel_query_names_exported_metrics_or_recording_rules():
    exported = exported_sample_names()
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    for title, expr in dashboard_queries():
        assert metrics_in(expr) - exported == set(), f"panel {title!r}: {expr}"
        for used in re.findall(r"\bna64:[a-z0-9_:]+", expr):
            assert used in recorded, f"panel {title!r}: {used} is no recording rule"
        assert metrics_in(expr) or re.search(r"\bna64:", expr), f"panel {title!r} queries nothing"
