"""The Grafana dashboard, the Prometheus alert rules and docs/metrics.md, checked without Prometheus.

promtool is not available: the rules are checked for structure here, and every metric name used in
the dashboard and the rules is checked against the declared metrics (and, in
tests/integration/test_metrics.py, against a real scrape of Ray's metrics agent).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from service import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "segserve-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DOCS = ROOT / "docs" / "metrics.md"

# Ray Serve's own metrics the dashboard and the rules use (names as Ray 2.60 exports them). Gauges that
# Ray only sets while requests flow (ray_serve_num_ongoing_*_requests, ray_serve_batch_queue_length)
# vanish from the scrape when idle (Ray drops gauge series not set for ~20 s): not used.
RAY_SERVE_METRICS = frozenset(
    {
        "ray_serve_deployment_replica_healthy",
        "ray_serve_autoscaling_target_replicas",
        "ray_serve_deployment_queued_queries",
        "ray_serve_replica_processing_queries",
        "ray_serve_num_http_error_requests_total",
    }
)
NAME = re.compile(r"\bray_[a-zA-Z0-9_:]+")
LABEL_MATCH = re.compile(r"\s*(=~|!~|!=|=)")
DURATION = re.compile(r"^\d+[smhdwy]$")
GRAFANA_VARIABLES = re.compile(r"\$\{?(\w+)")
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__range", "labels", "value"})


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: ``ray_...`` identifiers not used as label names."""
    return {m.group(0) for m in NAME.finditer(expr) if not LABEL_MATCH.match(expr, m.end())}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def used_metric_names() -> set[str]:
    """Every metric name the dashboard and the alert rules query."""
    names: set[str] = set()
    for expr in dashboard_exprs() + [r["expr"] for r in alert_rules()]:
        names |= metric_names(expr)
    return names


def declared_samples() -> set[str]:
    return {name for spec in metrics.METRICS for name in spec.samples}


def balanced(text: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    in_string = False
    for ch in text:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack and not in_string


def test_metric_names_from_promql() -> None:
    expr = 'sum by (le) (rate(ray_seg_x_bucket{ray_io_cluster="a", model=~"$m"}[5m])) / ray_serve_y'
    assert metric_names(expr) == {"ray_seg_x_bucket", "ray_serve_y"}


def test_every_used_metric_is_declared_or_a_known_ray_serve_metric() -> None:
    used = used_metric_names()
    unknown = used - declared_samples() - RAY_SERVE_METRICS
    assert not unknown, f"not declared in service/metrics.py nor known Ray Serve metrics: {sorted(unknown)}"
    # and the dashboard shows every family of ours (something an operator would otherwise miss)
    families = {spec.exported for spec in metrics.METRICS}
    shown = {f for f in families if any(name.startswith(f) for name in used)}
    assert shown == families, sorted(families - shown)


def test_alert_rules_structure() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    group_names = [g["name"] for g in document["groups"]]
    assert len(group_names) == len(set(group_names))
    alerts = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert isinstance(rule["expr"], str) and balanced(rule["expr"]), rule["alert"]
            assert "$__" not in rule["expr"] and "$" not in rule["expr"], "Grafana variables in a rule"
            assert DURATION.match(rule["for"])
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            for text in rule["annotations"].values():
                assert text.count("{{") == text.count("}}")
            alerts.append(rule["alert"])
    assert len(alerts) == len(set(alerts))
    # the four: error rate, p99 latency, queue growth, replica down
    exprs = " ".join(r["expr"] for r in alert_rules())
    for needle in ('outcome="server_error"', "histogram_quantile(0.99", "queued_queries", "replica_healthy"):
        assert needle in exprs


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "segserve" and board["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "application", "model"} <= variables
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in (
        "throughput",
        "error rate",
        "stage latency p50",
        "p95",
        "p99",
        "batch size",
        "queue",
        "replicas",
    ):
        assert topic in titles, topic
    assert "memory" in titles
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert balanced(expr), (panel["title"], expr)
            assert set(GRAFANA_VARIABLES.findall(expr)) <= variables | GRAFANA_BUILTINS, expr


def test_quantile_panels_aggregate_buckets_by_le() -> None:
    """histogram_quantile over a sum must keep ``le``, or the quantile is meaningless."""
    for expr in dashboard_exprs() + [r["expr"] for r in alert_rules()]:
        for match in re.finditer(r"histogram_quantile\(\s*[\d.]+,\s*sum by \(([^)]*)\)", expr):
            assert "le" in [label.strip() for label in match.group(1).split(",")], expr


@pytest.mark.parametrize("spec", metrics.METRICS, ids=lambda s: s.name)
def test_docs_list_every_metric_with_its_labels(spec: metrics.MetricSpec) -> None:
    text = DOCS.read_text()
    exported = spec.samples[0] if spec.kind == "counter" else spec.exported
    line = next((ln for ln in text.splitlines() if f"`{exported}`" in ln), None)
    assert line is not None, f"docs/metrics.md does not list {exported}"
    for key in spec.tag_keys:
        assert f"`{key}`" in line, f"docs/metrics.md: {exported} without its label {key}"


def test_docs_list_the_ray_serve_metrics_the_assets_use() -> None:
    text = DOCS.read_text()
    missing = [name for name in sorted(RAY_SERVE_METRICS) if name not in text]
    assert not missing
