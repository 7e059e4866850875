"""Issue 12 (under load, restarts and hostile pods: no result lost, no cell forged, no ladder
hung) on the local control plane. Each test names the defect of the issue it covers and fails
on the code before the fix. Small ladders, stub trainers: a few seconds each on 2 cores."""

from __future__ import annotations

import pytest

from .test_operator_integration import ladder, metric_sum, stage

pytestmark = pytest.mark.integration


def test_out_of_range_results_are_rejected_and_the_ladder_goes_on(operator, kube):
    """Defect 3: value 1.7e308 raised OverflowError in the rules and trainSeconds 1.7e308 put
    Infinity into the status (refused by the API server): the ladder hung Running, silently.
    Now each is rejected at intake with its reason, the cell fails, the ladder decides."""
    cands = {"good": {"value": 1.0}, "huge": {"value": 1.7e308}, "slow": {"value": 0.5, "train_seconds": 1.7e308},
             "ok2": {"value": 1.2}}
    kube.create(ladder("bounds", cands, [stage("s1", blocks=("a100",), top=2), stage("s2", "3s", blocks=("a100",))]))
    st = kube.wait_phase("bounds", timeout=120)["status"]
    assert st["phase"] == "Succeeded", kube.describe("bounds")
    cells = {c["candidate"]: c for c in st["stages"][0]["cells"]}
    assert cells["huge"]["state"] == "Failed" and "out of range" in cells["huge"]["reason"], cells["huge"]
    assert cells["slow"]["state"] == "Failed" and "trainSeconds" in cells["slow"]["reason"], cells["slow"]
    assert st["stages"][0]["decision"]["promoted"] == ["good", "ok2"]
    assert metric_sum(operator.metrics(), "ladder_result_errors_total", ladder="bounds", reason="range") >= 2
    assert any("out of range" in e.message for e in kube.events("ResultRejected"))
