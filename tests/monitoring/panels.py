"""Runs a Grafana dashboard's queries through a real Prometheus, as Grafana would, and says
which panels would be empty or wrong.

For every target of every panel (rows' nested panels included): substitute the dashboard
variables the way Grafana does ($namespace, ${ladder}, [[x]], $__range, $__interval,
$__rate_interval, ...), run the query Grafana would run (instant for `instant` targets, else a
range query over the dashboard's time range), and require that it parses, returns at least
one series with a number in it (not only NaN), and that every series carries the labels the
panel names: `{{label}}` in the legend and the columns a table's transformations use. The
template variables' own `label_values(...)` queries must return the values selected.

check_dashboard() returns the problems as strings that start with the panel's title, so a
test failure names the panel to fix. Pure except for the Prometheus it is handed.
"""

from __future__ import annotations

import math
import re
from contextlib import suppress
from dataclasses import dataclass, field

from localcluster.prometheus import PromQLError

ALL = "$__all"

# Columns a table may name that are not labels: Grafana's own fields of a query result.
_GRAFANA_FIELDS = re.compile(r"^(Time|Value|Value #\w+|Field|Total)$")
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


@dataclass(frozen=True)
class Target:
    panel: str
    ref: str
    expr: str
    instant: bool
    legend: str
    table_columns: frozenset[str] = frozenset()

    @property
    def where(self) -> str:
        return f"{self.panel} [{self.ref}]"


@dataclass
class TimeRange:
    """The dashboard's time range and what Grafana derives from it (seconds)."""

    start: float
    end: float
    scrape_interval: float = 15.0  # the data source's "scrape interval" setting
    max_data_points: int = 1000  # about a panel's width in pixels

    @property
    def step(self) -> float:
        # Grafana: range / max data points, never below the data source's scrape interval.
        return max(self.scrape_interval, math.ceil((self.end - self.start) / self.max_data_points))

    def builtins(self) -> dict[str, str]:
        rng, step = int(round(self.end - self.start)), int(self.step)
        # $__rate_interval: max($__interval + scrape interval, 4 x scrape interval), so a rate()
        # always has two samples.
        rate = int(max(step + self.scrape_interval, 4 * self.scrape_interval))
        return {
            "__range": f"{rng}s",
            "__range_s": str(rng),
            "__range_ms": str(rng * 1000),
            "__interval": f"{step}s",
            "__interval_ms": str(step * 1000),
            "__rate_interval": f"{rate}s",
            "__rate_interval_ms": str(rate * 1000),
        }


@dataclass
class Variables:
    """The dashboard's template variables with the values picked (ALL for "All")."""

    dashboard: dict
    selected: dict[str, list[str] | str] = field(default_factory=dict)

    def value(self, name: str, fmt: str | None = None) -> str | None:
        var = next((v for v in self.dashboard.get("templating", {}).get("list", []) if v["name"] == name), None)
        if var is None:
            return None
        if var["type"] == "datasource":
            return "prometheus"
        picked = self.selected.get(name, ALL)
        if picked == ALL or picked == [ALL]:
            if var.get("allValue") is not None:
                return var["allValue"]
            raise KeyError(f"${name}: 'All' picked but the variable has no allValue; pick values")
        values = [picked] if isinstance(picked, str) else list(picked)
        if fmt == "raw":
            return ",".join(values)
        # Grafana's Prometheus data source: multi-value and include-All variables are
        # regex-escaped and joined as (a|b), since they are meant for =~ matchers.
        if var.get("multi") or var.get("includeAll"):
            escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        return values[0]


def substitute(expr: str, variables: Variables, builtins: dict[str, str]) -> tuple[str, list[str]]:
    """expr with every $var/${var}/${var:fmt}/[[var]] replaced; and the names it did not know."""
    unknown: list[str] = []

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(3) or m.group(5)
        fmt = m.group(2) or m.group(4)
        if name in builtins:
            return builtins[name]
        value = variables.value(name, fmt)
        if value is None:
            unknown.append(name)
            return m.group(0)
        return value

    return _VARIABLE.sub(repl, expr), unknown


def _panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # a collapsed row keeps its panels inside it


def _table_columns(panel: dict) -> set[str]:
    cols: set[str] = set()
    for t in panel.get("transformations", []):
        opts = t.get("options", {})
        if t["id"] == "organize":
            for key in ("indexByName", "renameByName", "excludeByName"):
                cols |= set(opts.get(key, {}))
        elif t["id"] == "groupingToMatrix":
            cols |= {opts[k] for k in ("columnField", "rowField") if opts.get(k)}
        elif t["id"] == "groupBy":
            cols |= set(opts.get("fields", {}))
        elif t["id"] == "filterFieldsByName":
            cols |= set(opts.get("include", {}).get("names", []))
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        if o.get("matcher", {}).get("id") == "byName":
            cols.add(o["matcher"]["options"])
    return {c for c in cols if not _GRAFANA_FIELDS.match(c)}


def targets(dashboard: dict) -> list[Target]:
    out = []
    for p in _panels(dashboard.get("panels", [])):
        columns = frozenset(_table_columns(p)) if p.get("type") == "table" else frozenset()
        for t in p.get("targets", []):
            if t.get("hide") or not t.get("expr"):
                continue
            instant = bool(t.get("instant")) and not t.get("range", False)
            out.append(
                Target(
                    p.get("title", f"panel {p.get('id')}"),
                    t.get("refId", "?"),
                    t["expr"],
                    instant,
                    t.get("legendFormat", "") or "",
                    columns,
                )
            )
    return out


def _has_number(series: dict) -> bool:
    values = series.get("values") or [series.get("value")]
    return any(v is not None and not math.isnan(float(v[1])) for v in values)


def check_target(t: Target, prom, variables: Variables, time_range: TimeRange) -> tuple[list[str], list[dict]]:
    """The problems of one target, and the series it returned."""
    builtins = time_range.builtins()
    expr, unknown = substitute(t.expr, variables, builtins)
    if unknown:
        return [f"{t.where}: unknown variables {sorted(set(unknown))} in {t.expr!r}"], []
    try:
        if t.instant:
            series = prom.query(expr, at=time_range.end)
        else:
            series = prom.query_range(expr, time_range.start, time_range.end, time_range.step)
    except PromQLError as exc:  # the parse/evaluation error, worded by Prometheus
        return [f"{t.where}: Prometheus refused {expr!r}: {exc}"], []
    kind = "instant" if t.instant else "range"
    if not series:
        return [f"{t.where}: {kind} query {expr!r} returned no series"], []
    if not any(_has_number(s) for s in series):
        return [f"{t.where}: {kind} query {expr!r} returned only NaN"], series
    problems = []
    legend = set(_LEGEND_LABEL.findall(t.legend))
    for s in series:
        missing = legend - set(s["metric"])
        if missing:
            problems.append(
                f"{t.where}: legend {t.legend!r} names {sorted(missing)}, "
                f"not labels of the series {s['metric']} of {expr!r}"
            )
            break
    return problems, series


def check_variables(dashboard: dict, prom, variables: Variables, time_range: TimeRange) -> list[str]:
    problems = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] != "query":
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        where = f"variable ${var['name']}"
        expr, unknown = substitute(query or "", variables, time_range.builtins())
        m = _LABEL_VALUES.match(expr)
        if unknown or m is None:
            problems.append(f"{where}: cannot run {query!r} (only label_values(selector, label) is checked)")
            continue
        selector, label = m.groups()
        try:
            values = prom.label_values(label, selector)
        except PromQLError as exc:
            problems.append(f"{where}: Prometheus refused {expr!r}: {exc}")
            continue
        picked = variables.selected.get(var["name"], ALL)
        wanted = [] if picked in (ALL, [ALL]) else ([picked] if isinstance(picked, str) else picked)
        if not values or set(wanted) - set(values):
            problems.append(f"{where}: {expr!r} gave {values}, the selection is {wanted or 'All'}")
    return problems


def _labels_over_range(panel_targets: list[Target], prom, variables: Variables, time_range: TimeRange) -> set[str]:
    labels: set[str] = set()
    for t in panel_targets:
        expr, _ = substitute(t.expr, variables, time_range.builtins())
        with suppress(PromQLError):  # already reported by check_target
            labels |= {
                k
                for s in prom.query_range(expr, time_range.start, time_range.end, time_range.step)
                for k in s["metric"]
            }
    return labels


def check_dashboard(dashboard: dict, prom, variables: Variables, time_range: TimeRange) -> list[str]:
    """Every problem of the dashboard's queries against `prom` (empty: every panel has data)."""
    problems = check_variables(dashboard, prom, variables, time_range)
    by_panel: dict[str, tuple[list[Target], list[dict]]] = {}
    for t in targets(dashboard):
        found, series = check_target(t, prom, variables, time_range)
        problems += found
        panel_targets, seen = by_panel.setdefault(t.panel, ([], []))
        panel_targets.append(t)
        seen.extend(series)
    # A table's columns may come from any of its queries (Grafana merges them).
    for panel, (panel_targets, series) in by_panel.items():
        cols = panel_targets[0].table_columns
        if not (cols and series):
            continue
        missing = cols - set().union(*(s["metric"] for s in series))
        if missing:
            # Prometheus drops empty labels (ladder_info's stage="" once a ladder has finished):
            # a column is real if the query gave it a value at some time of the range.
            missing -= _labels_over_range(panel_targets, prom, variables, time_range)
        if missing:
            labels = set().union(*(s["metric"] for s in series))
            problems.append(
                f"{panel}: table columns {sorted(missing)} are not labels of its "
                f"queries' series (labels: {sorted(labels)})"
            )
    return problems
