"""`promtool test rules` cases for each alert of the chart's PrometheusRule.

Each builder takes the alert as `helm template` rendered it (so the windows, `for:` durations
and thresholds are the ones of the values under test) and returns promtool test groups: a
series history that must fire the alert (with the labels and annotations a user would get),
checked also at a moment when the condition holds but `for:` has not yet passed, and
histories that must stay silent. Times are minutes at a 1m evaluation interval.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

NS, LADDER = "team-a", "sweep"
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_MINUTES = {"ms": 1 / 60000, "s": 1 / 60, "m": 1, "h": 60, "d": 1440, "w": 10080, "y": 525600}


def minutes(duration: str | None) -> int:
    """A Prometheus duration ('2h', '15m', '1h30m', '0m') in whole minutes."""
    if not duration:
        return 0
    parts = _DURATION.findall(duration)
    if "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return math.ceil(sum(int(n) * _MINUTES[u] for n, u in parts))


def humanize(v: float) -> str:
    """Prometheus' `humanize` template function (values >= 1, the ones these cases produce)."""
    if v == 0 or math.isnan(v) or math.isinf(v) or abs(v) < 1:
        raise ValueError(f"humanize({v}) not needed by these cases")
    prefix = ""
    for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
        if abs(v) < 1000:
            break
        prefix, v = p, v / 1000
    return f"{v:.4g}{prefix}"


def annotations(rule: dict, labels: dict[str, str], value: float | None = None) -> dict[str, str]:
    """The rule's annotations as Prometheus renders them for an alert with these labels and value."""
    out = {}
    for key, text in rule.get("annotations", {}).items():
        text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), "<no value>"), text)
        if value is not None:
            text = re.sub(r"\{\{\s*\$value\s*\|\s*humanize\s*\}\}", humanize(value), text)
        if "{{" in text:
            raise ValueError(f"{rule['alert']}: annotation {key} uses a template these cases do not render: {text!r}")
        out[key] = text
    return out


def _window(rule: dict, metric: str) -> int:
    m = re.search(re.escape(metric) + r"(?:\{[^}]*\})?\[(\w+)\]", rule["expr"])
    if m is None:
        raise ValueError(f"{rule['alert']}: no {metric}[window] in {rule['expr']!r}")
    return minutes(m.group(1))


def _series(name: str, values: str, **labels: str) -> dict:
    sel = ",".join(f'{k}="{v}"' for k, v in {"namespace": NS, "ladder": LADDER, **labels}.items())
    return {"series": f"{name}{{{sel}}}", "values": values}


def _steps(*segments: tuple[float, int]) -> str:
    """(value, minutes) pieces as a promtool values string: ((0, 11), (4, 5)) = 0 at 0..10m, 4 at 11..15m."""
    return " ".join(f"{v}x{n - 1}" for v, n in segments)


def _group(name: str, series: list[dict], evals: list[tuple[int, list[dict]]], alert: str) -> dict:
    return {
        "name": name,
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": f"{t}m", "alertname": alert, "exp_alerts": exp} for t, exp in evals],
    }


def ladder_stuck(rule: dict) -> list[dict]:
    window, hold, alert = _window(rule, "ladder_cells"), minutes(rule.get("for")), rule["alert"]
    if _window(rule, "ladder_decisions_total") != window:
        raise ValueError(f"{alert}: cells and decisions are looked at over different windows")
    end = 10 + window + hold + 20
    # The last change of a cell at 11m (0 -> 4 Running): the window holds no change from 10m + window on.
    quiet_from = 10 + window
    running = _series("ladder_info", f"1x{end}", phase="Running", stage="s2", leader="c1")
    info_labels = {"namespace": NS, "ladder": LADDER}
    fired = {"exp_labels": {**info_labels, **rule.get("labels", {})}, "exp_annotations": annotations(rule, info_labels)}
    stalled_cells = _series("ladder_cells", _steps((0, 11), (4, end - 10)), stage="s2", state="Running")
    no_decisions = _series("ladder_decisions_total", f"1x{end}", stage="s1")
    evals = [(quiet_from - 2, [])]  # the last change still inside the window
    if hold >= 2:
        evals.append((quiet_from + hold // 2, []))  # the condition holds, `for:` has not passed
    fire_at = quiet_from + hold + 2
    evals.append((fire_at, [fired]))
    # Progress every half window: a cell changes state, or a stage is decided.
    half = max(1, window // 2)
    n = end // half + 1
    cells_moving = _series("ladder_cells", _steps(*((i % 5, half) for i in range(n))), stage="s2", state="Running")
    constant_cells = _series("ladder_cells", f"4x{end}", stage="s2", state="Running")
    deciding = _series("ladder_decisions_total", _steps(*((i, half) for i in range(n))), stage="s1")
    finished = _series("ladder_info", f"1x{end}", phase="Succeeded", stage="s2", leader="c1")
    # Created at 10m, its cells Pending (waiting for GPUs) ever since: still for less than a window.
    young = _series("ladder_info", _steps(("_", 10), (1, end - 9)), phase="Running", stage="s1", leader="")
    young_cells = _series("ladder_cells", _steps(("_", 10), (4, end - 9)), stage="s1", state="Pending")
    return [
        _group(
            "stuck: running, no cell change and no decision for the window",
            [running, stalled_cells, no_decisions],
            evals,
            alert,
        ),
        _group("not stuck: cells change state", [running, cells_moving, no_decisions], [(fire_at, [])], alert),
        _group("not stuck: stages are decided", [running, constant_cells, deciding], [(fire_at, [])], alert),
        _group("not stuck: the ladder has finished", [finished, constant_cells, no_decisions], [(fire_at, [])], alert),
        _group(
            "not stuck: younger than the window",
            [young, young_cells],
            [(10 + hold + 2, []), (10 + window - 2, [])],
            alert,
        ),
    ]


def result_errors(rule: dict) -> list[dict]:
    window, hold, alert = _window(rule, "ladder_result_errors_total"), minutes(rule.get("for")), rule["alert"]
    if hold + 3 > window:
        raise ValueError(f"{alert}: for: {rule.get('for')} is not shorter than the window; it could never fire")
    end = 31 + window + 20
    # 14 results rejected at 31m. The window's first sample is a 0, so increase() does not
    # extrapolate and the value is exactly 14.
    errors = _series("ladder_result_errors_total", _steps((0, 31), (14, end - 30)), reason="identity")
    labels = {"namespace": NS, "ladder": LADDER, "reason": "identity"}
    fired = {"exp_labels": {**labels, **rule.get("labels", {})}, "exp_annotations": annotations(rule, labels, 14)}
    evals = [(30, [])]
    if hold >= 2:
        evals.append((31 + hold // 2, []))
    evals.append((31 + hold + 1, [fired]))
    old = _series("ladder_result_errors_total", _steps((0, 6), (3, end - 5)), reason="malformed")
    return [
        _group("results rejected in the window", [errors], evals, alert),
        _group("rejections older than the window", [old], [(6 + window + 2, [])], alert),
        _group(
            "no rejections",
            [_series("ladder_result_errors_total", f"0x{end}", reason="identity")],
            [(end - 1, [])],
            alert,
        ),
    ]


def gpu_hours_budget(rule: dict) -> list[dict]:
    alert, hold = rule["alert"], minutes(rule.get("for"))
    m = re.search(r"\(\s*(ladder_gpu_\w+)\s*\)\s*(/\s*3600\s*)?>\s*([0-9.eE+]+)\s*$", rule["expr"].strip())
    if m is None:
        raise ValueError(f"{alert}: expected `sum by (...) (metric) [/ 3600] > budget`, got {rule['expr']!r}")
    metric, per_hour, budget = m.group(1), m.group(2), float(m.group(3))
    scale = 3600 if per_hour else 1  # the counter in GPU-seconds, the budget in GPU-hours
    end = 11 + hold + 20
    # Two stages, 0.6 of the budget each: over budget once the second one is counted at 11m.
    part = 0.6 * budget
    s1 = _series(metric, f"{part * scale}x{end}", stage="s1", candidate="c0", host_block="a100")
    s2 = _series(metric, _steps((0, 11), (part * scale, end - 10)), stage="s2", candidate="c0", host_block="a100")
    labels = {"namespace": NS, "ladder": LADDER}
    fired = {"exp_labels": {**labels, **rule.get("labels", {})}, "exp_annotations": annotations(rule, labels, 2 * part)}
    evals = [(10, [])]
    if hold >= 2:
        evals.append((11 + hold // 2, []))
    evals.append((11 + hold + 1, [fired]))
    other = {**_series(metric, f"{part * scale}x{end}", stage="s1", candidate="c0", host_block="a100")}
    other["series"] = other["series"].replace(f'ladder="{LADDER}"', 'ladder="other"')
    return [
        _group("two stages over the budget", [s1, s2], evals, alert),
        # Budgets are per ladder: two ladders under it each do not add up to an alert.
        _group("two ladders each under the budget", [s1, other], [(end - 1, [])], alert),
    ]


# Every alert of the PrometheusRule needs its cases here (a test fails for one that has none).
CASES: dict[str, Callable[[dict], list[dict]]] = {
    "PromotionLadderStuck": ladder_stuck,
    "PromotionLadderResultErrors": result_errors,
    "PromotionLadderOverGPUHourBudget": gpu_hours_budget,
}
