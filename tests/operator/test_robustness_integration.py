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


def test_complete_job_whose_pod_the_cache_lacks_is_not_failed(operator, kube):
    """Defects 1 and 2 (relabelling): a Complete Job whose Pod is not in the operator's cache
    was judged `Failed: job completed without a valid result` (after a restart under load the
    cache lagged for thousands of Pods; a hostile pod could relabel a rival's Pod out of it).
    The operator now reads the Job's Pods directly (by the Job's own labels and owner
    reference) before judging: the valid result counts, the relabelled Pod is still the cell's."""
    from localcluster.waiting import wait_for

    cands = {"a": {"value": 1.2, "sleep": 1}, "b": {"value": 1.1, "sleep": 1}}
    kube.create(ladder("gap", cands, [stage("s1", blocks=("a100",), top=1), stage("s2", "3s", blocks=("a100",))]))
    wait_for(lambda: len(kube.jobs("gap")) == 2, timeout=60, what="stage 1 jobs")
    operator.kill()
    wait_for(lambda: all(j.status.succeeded for j in kube.jobs("gap")), timeout=60, what="stage 1 done while down")
    # Take b's Pod out of the operator's view: without the ladder label no watch shows it.
    pod = next(p for p in kube.pods("gap") if p.metadata.labels["ladder.promotion.dev/candidate"] == "b")
    kube.core.patch_namespaced_pod(pod.metadata.name, kube.ns, {"metadata": {"labels": {
        "ladder.promotion.dev/ladder": None, "ladder.promotion.dev/candidate": "a"}}})
    operator.start()
    st = kube.wait_phase("gap", timeout=90)["status"]
    assert st["phase"] == "Succeeded", kube.describe("gap")
    cells = {c["candidate"]: c for c in st["stages"][0]["cells"]}
    assert cells["b"]["state"] == "Succeeded" and cells["b"]["value"] == pytest.approx(1.101), cells["b"]
    assert st["stages"][0]["decision"]["promoted"] == ["b"]
    assert len(kube.jobs("gap")) == 3  # nothing re-run
