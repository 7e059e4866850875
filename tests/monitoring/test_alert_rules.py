"""Every alert of the chart's PrometheusRule, evaluated by `promtool test rules`.

The rules are what `helm template` renders, with the chart's defaults (the rule switched on)
and with tests/chart/values-full.yaml; each alert fires on a history that should trigger it,
not before its `for:` has passed, and stays silent on histories that should not
(tests/monitoring/alert_cases.py).
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from ..chart.conftest import FULL_VALUES, one, render
from .alert_cases import CASES

VALUES = {
    "default": ((), {"metrics.prometheusRule.enabled": "true"}),
    "full": ((FULL_VALUES,), {}),
}


def rendered_groups(helm: str, values: str) -> list[dict]:
    files, sets = VALUES[values]
    return one(render(helm, *files, set_values=sets), "PrometheusRule")["spec"]["groups"]


def rendered_alerts(helm: str, values: str) -> dict[str, dict]:
    return {r["alert"]: r for g in rendered_groups(helm, values) for r in g["rules"] if "alert" in r}


@pytest.mark.parametrize("values", VALUES)
def test_every_rendered_alert_has_fire_and_silent_cases(helm, values):
    alerts = rendered_alerts(helm, values)
    assert alerts, "the PrometheusRule renders no alerts"
    missing = sorted(set(alerts) - set(CASES))
    assert not missing, f"alerts without promtool cases in tests/monitoring/alert_cases.py: {missing}"
    for name, rule in alerts.items():
        groups = CASES[name](rule)
        evals = [e for g in groups for e in g["alert_rule_test"]]
        assert any(e["exp_alerts"] for e in evals), f"{name}: no case where it fires"
        assert any(not e["exp_alerts"] for e in evals), f"{name}: no case where it stays silent"
        if rule.get("for") not in (None, "0s", "0m", "0"):
            # The first firing eval must be preceded by a silent one while `for:` runs.
            assert len([e for g in groups[:1] for e in g["alert_rule_test"] if not e["exp_alerts"]]) >= 2, name


@pytest.mark.parametrize("values", VALUES)
def test_rules_pass_promtool_check(promtool, helm, values, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rendered_groups(helm, values)}, sort_keys=False))
    proc = subprocess.run(
        [promtool, "check", "rules", "--lint=all", "--lint-fatal", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_fires_and_stays_silent(promtool, helm, values, alert, tmp_path):
    alerts = rendered_alerts(helm, values)
    if alert not in alerts:
        pytest.fail(f"{alert} has cases but the {values} values render no such alert")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rendered_groups(helm, values)}, sort_keys=False))
    tests = tmp_path / f"{alert}.test.yaml"
    tests.write_text(
        yaml.safe_dump(
            {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": CASES[alert](alerts[alert])},
            sort_keys=False,
        )
    )
    proc = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, f"{tests}:\n{tests.read_text()}\n{proc.stdout}{proc.stderr}"
