"""The panel checker's pure parts: variables substituted as Grafana would, targets and columns
found (no Prometheus needed; test_dashboard_queries.py runs it against a real one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .panels import ALL, TimeRange, Variables, substitute, targets

DASHBOARD = json.loads((Path(__file__).resolve().parents[2] / "dashboards" / "promotion-ladder.json").read_text())
RANGE = TimeRange(start=1000.0, end=1000.0 + 3600, scrape_interval=15)

SUBSTITUTIONS = {
    "all namespaces": ('x{namespace=~"$namespace"}', {}, 'x{namespace=~".*"}'),
    "one value, braces": ('x{ladder=~"${ladder}"}', {"ladder": ["sweep"]}, 'x{ladder=~"sweep"}'),
    "several values": ('x{ladder=~"$ladder"}', {"ladder": ["a", "b"]}, 'x{ladder=~"(a|b)"}'),
    "regex characters escaped": ('x{ladder=~"$ladder"}', {"ladder": ["v1.2"]}, 'x{ladder=~"v1\\\\.2"}'),
    "raw format": ('x{ladder="${ladder:raw}"}', {"ladder": ["v1.2"]}, 'x{ladder="v1.2"}'),
    "old bracket syntax": ('x{ladder=~"[[ladder]]"}', {"ladder": ["a"]}, 'x{ladder=~"a"}'),
    # 1h range, 15s scrape: step = max(15, 3600/1000 -> 4) = 15s, rate interval max(15+15, 60) = 60s.
    "range": ("increase(x[$__range])", {}, "increase(x[3600s])"),
    "interval": ("rate(x[$__interval])", {}, "rate(x[15s])"),
    "rate interval": ("rate(x[$__rate_interval])", {}, "rate(x[60s])"),
}


@pytest.mark.parametrize("case", SUBSTITUTIONS)
def test_substitute_like_grafana(case):
    expr, selected, want = SUBSTITUTIONS[case]
    got, unknown = substitute(expr, Variables(DASHBOARD, selected), RANGE.builtins())
    assert (got, unknown) == (want, [])


def test_unknown_variable_is_reported():
    _, unknown = substitute('x{team="$team"}', Variables(DASHBOARD, {}), RANGE.builtins())
    assert unknown == ["team"]


def test_long_range_steps_above_the_scrape_interval():
    day = TimeRange(0, 86400, scrape_interval=15)
    assert day.builtins()["__interval"] == "87s" and day.builtins()["__rate_interval"] == "102s"


def test_targets_cover_every_panel_query():
    found = targets(DASHBOARD)
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]
    assert sorted(t.expr for t in found) == sorted(exprs)
    table = next(t for t in found if t.panel == "Current stage and leader per ladder")
    assert table.instant and table.table_columns == {"namespace", "ladder", "phase", "stage", "leader"}
    assert not next(t for t in found if t.panel == "Cells by state").instant


def test_all_needs_an_all_value():
    dash = {"templating": {"list": [{"name": "team", "type": "query", "multi": True, "includeAll": True}]}}
    with pytest.raises(KeyError, match="allValue"):
        Variables(dash, {"team": ALL}).value("team")
