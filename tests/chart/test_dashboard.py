"""Every metric the Grafana dashboard and the alert rules query is one the operator exports.

Exported names come from the operator's own registry (controller/metrics.py), never from a
list typed here: a metric renamed in the operator but not in a query fails. A counter `x` is
queried as `x_total`, a histogram as `x_bucket`/`x_sum`/`x_count`.
"""

from __future__ import annotations

import json
import re

import pytest

from promotion_ladder.controller.metrics import LadderMetrics

from .conftest import CHART, REPO

DASHBOARD = REPO / "dashboards" / "promotion-ladder.json"

# The metric contract (issue 5/6): the names dashboards and alerts outside this repository rely on.
CONTRACT = {
    "ladder_gpu_seconds_total",
    "ladder_gpus_in_use",
    "ladder_counterfactual_gpu_seconds",
    "ladder_cells",
    "ladder_decisions_total",
    "ladder_result_errors_total",
    "ladder_info",
    "ladder_rank_stability_kendall_tau",
    *(
        f"ladder_{h}_seconds_{s}"
        for h in ("reconcile_duration", "decision_latency", "cell_queue")
        for s in ("bucket", "sum", "count")
    ),
}

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "untyped": ("",),
}


def exported_names() -> set[str]:
    """Every series name the operator's registry exports."""
    return {fam.name + suffix for fam in LadderMetrics().registry.collect() for suffix in _SUFFIXES[fam.type]}


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    # Label values are quoted, label names carry no ladder_ prefix: any ladder_* word is a metric.
    return set(re.findall(r"\bladder_[a-z0-9_]+\b", _strip_strings(expr)))


def dashboard_queries() -> dict[str, str]:
    """'panel title [refId]' -> PromQL, plus the template variables' queries."""
    dash = json.loads(DASHBOARD.read_text())
    queries = {}
    for p in dash["panels"]:
        for t in p.get("targets", []):
            queries[f"{p['title']} [{t['refId']}]"] = t["expr"]
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v["type"] == "query":
            queries[f"variable ${v['name']}"] = q
    return queries


def test_dashboard_queries_name_exported_metrics():
    names = exported_names()
    bad = {
        where: sorted(metric_names(expr) - names)
        for where, expr in dashboard_queries().items()
        if metric_names(expr) - names
    }
    assert not bad, f"queries naming metrics the operator does not export: {bad}"


def test_every_query_names_a_metric():
    assert all(metric_names(expr) for expr in dashboard_queries().values())


def test_contract_metrics_are_exported():
    names = exported_names()
    assert names >= CONTRACT, f"contract metrics missing from the operator's registry: {sorted(CONTRACT - names)}"


def test_alert_rules_name_exported_metrics():
    names = exported_names()
    used = metric_names((CHART / "templates" / "prometheusrule.yaml").read_text())
    assert used and used <= names, f"alerts name metrics the operator does not export: {sorted(used - names)}"


# What the dashboard must show (issue 6) -> a metric its panel queries.
REQUIRED_VIEWS = {
    "GPU-hours spent per ladder and stage": "ladder_gpu_seconds_total",
    "Spent vs. counterfactual GPU-hours": "ladder_counterfactual_gpu_seconds",
    "Cells by state": "ladder_cells",
    "Current stage and leader per ladder": "ladder_info",
    "Result errors by reason": "ladder_result_errors_total",
    "Decision latency": "ladder_decision_latency_seconds_bucket",
    "Rank stability: latest stage pair per ladder": "ladder_rank_stability_kendall_tau",
}


@pytest.mark.parametrize("title", REQUIRED_VIEWS)
def test_dashboard_has_required_view(title):
    queries = dashboard_queries()
    exprs = [e for where, e in queries.items() if where.startswith(title + " [")]
    assert exprs, f"no panel titled {title!r}"
    assert any(REQUIRED_VIEWS[title] in metric_names(e) for e in exprs)


def test_dashboard_layout_is_sound():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{p['title']}: wider than the 24-column grid"
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", f"{p['title']}: query not on the $datasource variable"
    assert dash["uid"] == "promotion-ladder"
