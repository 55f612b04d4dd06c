"""The alert rules and the Grafana dashboards name only metrics the agent exports."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client.metrics import MetricWrapperBase

from nodefence.agent.detection.policy import AlertKind
from nodefence.agent.observe import metrics
from tests.support.deploy import DEPLOY


def exported_metric_names() -> set[str]:
    """Every series name the agent's collectors expose."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            suffixes = {
                "counter": ("_total", "_created"),
                "gauge": ("",),
                "histogram": ("_bucket", "_count", "_sum", "_created"),
            }[family.type]
            names |= {family.name + s for s in suffixes}
    return names


def test_the_alert_rules_use_only_metrics_the_agent_exports() -> None:
    doc = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-rules.yaml").read_text())
    rules = [r for group in doc["groups"] for r in group["rules"]]
    assert len(rules) >= 8
    exported = exported_metric_names()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
        used = set(re.findall(r"\bnodefence_[a-z_]+", rule["expr"]))
        assert used <= exported, f"{rule['alert']}: {used - exported}"
    kinds = {k for r in rules for k in re.findall(r'kind=~?"([^"]+)"', r["expr"])}
    known = {a.value for a in AlertKind}
    assert {k for ks in kinds for k in ks.split("|")} <= known


def test_every_grafana_dashboard_query_names_only_metrics_the_agent_exports() -> None:
    doc = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    exported = exported_metric_names()
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    used: set[str] = set()
    for panel in panels:
        assert panel["title"] and panel["description"], panel.get("title")
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bnodefence_[a-z_]+", target["expr"]))
            assert names, f"{panel['title']}: {target['expr']} names no nodefence metric"
            assert names <= exported, f"{panel['title']}: {names - exported}"
            used |= names
    # What an operator looks for: node health, operations and their phases, detection and
    # recovery latency, the BMC checks.
    for needed in (
        "nodefence_nodes",
        "nodefence_fence_operations_open",
        "nodefence_fence_operations_total",
        "nodefence_detection_seconds_bucket",
        "nodefence_recovery_seconds_bucket",
        "nodefence_bmc_check_ok",
        "nodefence_node_fenceable",
        "nodefence_bmc_certificate_expiry_days",
    ):
        assert needed in used, needed
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource"]


def test_a_pause_alerts_and_a_planned_power_off_in_maintenance_is_not_unfenceable() -> None:
    doc = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-rules.yaml").read_text())
    rules = {r["alert"]: r for group in doc["groups"] for r in group["rules"]}
    assert "nodefence_fencing_paused" in rules["NodefenceFencingPaused"]["expr"]
    assert "maintenance" not in rules["NodefenceNodeNotFenceable"]["expr"]
    down = rules["NodefenceNodeDownInMaintenance"]
    assert 'kind="maintenance"' in down["expr"] and down["labels"]["severity"] == "info"
