"""Issue 12 (under load, restarts and hostile pods: no result lost, no cell forged, no ladder
hung) on the local control plane. Each test names the defect of the issue it covers and fails
on the code before the fix. Small ladders, stub trainers: a few seconds each on 2 cores."""

from __future__ import annotations

import json

import pytest

from .test_operator_integration import ladder, metric_sum, stage

pytestmark = pytest.mark.integration


def test_out_of_range_results_are_rejected_and_the_ladder_goes_on(operator, kube):
    """Defect 3: value 1.7e308 raised OverflowError in the rules and trainSeconds 1.7e308 put
    Infinity into the status (refused by the API server): the ladder hung Running, silently.
    Now each is rejected at intake with its reason, the cell fails, the ladder decides."""
    cands = {
        "good": {"value": 1.0},
        "huge": {"value": 1.7e308},
        "slow": {"value": 0.5, "train_seconds": 1.7e308},
        "ok2": {"value": 1.2},
    }
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
    reference) before judging, and never fails the cell for the missing Pod. Since issue 21 a
    relabelled Pod is no cell's (its labels disagree with its Job: rejected as forged), so the
    Job has lost its result: it is deleted and the cell runs again, with its true value."""
    from localcluster.waiting import wait_for

    cands = {"a": {"value": 1.2, "sleep": 1}, "b": {"value": 1.1, "sleep": 1}}
    kube.create(ladder("gap", cands, [stage("s1", blocks=("a100",), top=1), stage("s2", "3s", blocks=("a100",))]))
    wait_for(lambda: len(kube.jobs("gap")) == 2, timeout=60, what="stage 1 jobs")
    operator.kill()
    wait_for(lambda: all(j.status.succeeded for j in kube.jobs("gap")), timeout=60, what="stage 1 done while down")
    # Take b's Pod out of the operator's view: without the ladder label no watch shows it.
    pod = next(p for p in kube.pods("gap") if p.metadata.labels["ladder.promotion.dev/candidate"] == "b")
    kube.core.patch_namespaced_pod(
        pod.metadata.name,
        kube.ns,
        {"metadata": {"labels": {"ladder.promotion.dev/ladder": None, "ladder.promotion.dev/candidate": "a"}}},
    )
    operator.start()
    st = kube.wait_phase("gap", timeout=90)["status"]
    assert st["phase"] == "Succeeded", kube.describe("gap")
    cells = {c["candidate"]: c for c in st["stages"][0]["cells"]}
    assert cells["b"]["state"] == "Succeeded" and cells["b"]["value"] == pytest.approx(1.101), cells["b"]
    assert st["stages"][0]["decision"]["promoted"] == ["b"]
    assert len(kube.jobs("gap")) == 3  # b's Job was re-created under its own name, nothing else re-run
    assert any(pod.metadata.name in e.message and "forged" in e.message for e in kube.events("ResultRejected"))
    assert any("relabelled or re-owned" in e.message for e in kube.events("ResultLost"))


def test_a_trainer_token_can_change_only_its_own_pods_result(local_cluster, namespace):
    """Defect 2: the trainer ServiceAccount may patch every Pod of its namespace (RBAC cannot
    name one's own Pod), so a hostile trainer forged a rival's result and relabelled a rival's
    Pod. The chart's ValidatingAdmissionPolicy (rbac.trainer_admission_policy) lets a token
    bound to a Pod change only that Pod, and there only the result/progress annotations."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from localcluster.waiting import wait_for
    from promotion_ladder.core.contract import PROGRESS_ANNOTATION, RESULT_ANNOTATION

    from .harness import apply_trainer_admission_policy, trainer_pods

    core = client.CoreV1Api(local_cluster.api_client())
    apply_trainer_admission_policy(local_cluster.api_client())
    as_attacker, _ = trainer_pods(local_cluster, namespace, ("rival", "attacker"))

    def patch(pod: str, meta: dict, **kw) -> ApiException | None:
        try:
            as_attacker.patch_namespaced_pod(pod, namespace, {"metadata": meta}, **kw)
            return None
        except ApiException as exc:
            return exc

    forged = {"annotations": {RESULT_ANNOTATION: '{"status": "ok", "value": 0.1}'}}
    # The policy takes effect once the API server has loaded it: wait for the first refusal of
    # a dry run (admission runs on dry runs too, and a dry run changes nothing meanwhile).
    wait_for(lambda: patch("rival", forged, dry_run="All"), timeout=30, what="the policy loaded")
    refused = patch("rival", forged)
    assert refused.status == 403 and "only its own Pod" in refused.body, refused.body
    assert (core.read_namespaced_pod("rival", namespace).metadata.annotations or {}).get(RESULT_ANNOTATION) is None
    bad = patch("rival", {"labels": {"ladder.promotion.dev/ladder": None}})
    assert bad is not None and bad.status == 403
    # Its own Pod: the result and progress annotations only.
    assert (
        patch(
            "attacker",
            {"annotations": {RESULT_ANNOTATION: '{"status": "ok", "value": 1.0}', PROGRESS_ANNOTATION: '{"step": 3}'}},
        )
        is None
    )
    relabel = patch("attacker", {"labels": {"ladder.promotion.dev/candidate": "rival"}})
    assert relabel is not None and relabel.status == 403 and "labels" in relabel.body
    other = patch("attacker", {"annotations": {"example.com/note": "x"}})
    assert other is not None and other.status == 403 and "only the annotations" in other.body
    # Anyone else (here the admin) is not limited by the policy.
    core.patch_namespaced_pod("rival", namespace, {"metadata": {"annotations": {"example.com/note": "admin"}}})


def test_an_annotation_that_contradicts_the_termination_message_is_forged(operator, kube):
    """Defect 2: a well-formed annotation disagreeing with the kubelet-written termination
    message was accepted (value 0.1 ranked first, no Event). The termination message, which
    only the cell's own container can write, is the authority: the annotation is rejected as
    forged with an Event and the true value counts."""
    cands = {
        "honest": {"value": 1.0},
        "liar": {"value": 1.5, "annotation": "lie", "lie_value": 0.1},
        "third": {"value": 1.2},
    }
    kube.create(ladder("liar", cands, [stage("s1", blocks=("a100",), top=1), stage("s2", "3s", blocks=("a100",))]))
    st = kube.wait_phase("liar", timeout=120)["status"]
    assert st["phase"] == "Succeeded", kube.describe("liar")
    cells = {c["candidate"]: c for c in st["stages"][0]["cells"]}
    assert cells["liar"]["value"] == pytest.approx(1.501)
    assert st["stages"][0]["decision"]["promoted"] == ["honest"]
    assert metric_sum(operator.metrics(), "ladder_result_errors_total", ladder="liar", reason="forged") == 1
    assert any("forged" in e.message for e in kube.events("ResultRejected"))


def test_a_number_written_as_a_string_or_a_boolean_is_invalid(operator, kube):
    """Issue 21, item 3: a result with `"value": "0.25"` (a string) was recorded as 0.25 and won
    its ladder; `"value": true` was recorded as 1. Now the result schema is strict: both cells
    fail as invalid, naming the field, and the candidate that reported a number wins."""
    cands = {"honest": {"value": 1.0}, "string": {"raw_value": "0.25"}, "boolean": {"raw_value": True}}
    kube.create(ladder("strict", cands, [stage("s1", blocks=("a100",), top=1), stage("s2", "3s", blocks=("a100",))]))
    st = kube.wait_phase("strict", timeout=120)["status"]
    cells = {c["candidate"]: c for c in st["stages"][0]["cells"]}
    recorded = {name: (c["state"], c.get("value")) for name, c in cells.items()}
    promoted = st["stages"][0]["decision"]["promoted"]
    assert recorded == {"honest": ("Succeeded", 1.001), "string": ("Failed", None), "boolean": ("Failed", None)}, (
        f"recorded {recorded}, promoted {promoted}"
    )
    assert promoted == ["honest"]
    for name in ("string", "boolean"):
        assert "value: Input should be a valid number" in cells[name]["reason"], cells[name]
    assert st["phase"] == "Succeeded" and st["verdict"]["winner"] == "honest", kube.describe("strict")
    assert metric_sum(operator.metrics(), "ladder_result_errors_total", ladder="strict", reason="invalid") >= 2


def test_recorded_history_is_immutable(operator, kube):
    """Defect 5: editing trainer.gpus on a Succeeded ladder recomputed its recorded GPU-hours
    and counterfactuals. Now trainer.gpus is frozen (CEL and the frozen hash), and every cell
    records what it ran with (GPUs, node, image) when it finishes."""
    from kubernetes.client.rest import ApiException

    from localcluster.waiting import wait_for
    from promotion_ladder.core.api import load_ladder

    doc = ladder(
        "audit",
        {"a": {"value": 1.0}, "b": {"value": 1.1}},
        [stage("s1", blocks=("a100",), top=1), stage("s2", "3s", blocks=("a100",))],
    )
    kube.create(doc)
    obj = kube.wait_phase("audit", timeout=90)
    st = obj["status"]
    assert st["phase"] == "Succeeded", kube.describe("audit")
    # The symptom first, whatever the API server makes of the gpus edit: once the operator has
    # seen every edit (an allowed one too), the recorded GPU-hours are what they were.
    try:
        kube.patch("audit", {"spec": {"trainer": {"gpus": 2}}})
        refused = None
    except ApiException as exc:
        refused = exc
    generation = kube.patch("audit", {"spec": {"trainer": {"image": "stub:1"}}})["metadata"]["generation"]
    seen = wait_for(
        lambda: (s := kube.ladder("audit")["status"]).get("observedGeneration") == generation and s,
        timeout=60,
        what="the operator seeing the edits",
    )
    assert seen["gpuHours"] == st["gpuHours"], "the recorded GPU-hours changed after the ladder ended"
    assert refused is not None and refused.status == 422 and "trainer.gpus is frozen" in refused.body
    assert load_ladder(obj).spec.frozen_hash() == st["frozenHash"]  # the hash covers trainer.gpus
    edited = json.loads(json.dumps(obj))
    edited["spec"]["trainer"]["gpus"] = 2
    assert load_ladder(edited).spec.frozen_hash() != st["frozenHash"]
    for s in st["stages"]:
        assert s["image"] == "stub:0"
        for c in s["cells"]:
            assert c["gpus"] == 1 and c["node"].startswith("a100-"), c


def test_a_pod_running_past_its_deadline_is_ended_and_the_cell_retried(operator_identity, namespace, tmp_path, kube):
    """Defect 7: a Pod left Running past its deadline (here: the simulated kubelet does not
    enforce activeDeadlineSeconds, as one that lost the exit would not) held its GPU forever and
    the ladder never decided. The operator ends it after deadline + grace; the Job retries."""
    from localcluster.waiting import wait_for

    from .harness import Operator

    op = Operator(operator_identity, namespace, tmp_path, extra_args=("--stuck-grace", "2")).start()
    try:
        cands = {"hangs": {"value": 1.0, "sleep_first_try": 600}, "fine": {"value": 1.1}}
        kube.create(ladder("stuck", cands, [stage("s1", blocks=("a100",), top=1), stage("s2", "3s", blocks=("a100",))]))

        def hanging_pod():
            return next(
                (
                    p
                    for p in kube.pods("stuck")
                    if p.metadata.labels["ladder.promotion.dev/candidate"] == "hangs" and p.status.phase == "Running"
                ),
                None,
            )

        pod = wait_for(hanging_pod, timeout=60, what="the hanging cell running")
        # A deadline may be lowered on a running Pod: 1 s, so it is overdue at once.
        kube.core.patch_namespaced_pod(pod.metadata.name, namespace, {"spec": {"activeDeadlineSeconds": 1}})
        st = kube.wait_phase("stuck", timeout=120)["status"]
        assert st["phase"] == "Succeeded", kube.describe("stuck")
        cell = next(c for c in st["stages"][0]["cells"] if c["candidate"] == "hangs")
        assert cell["state"] == "Succeeded" and cell["value"] == pytest.approx(1.001)  # the retry reported
        assert any(pod.metadata.name in e.message for e in kube.events("CellStuck"))
    finally:
        op.stop()


def test_two_operators_never_act_at_once(operator_identity, namespace, tmp_path, kube):
    """Defect 8: after SIGTERM the old operator went on creating queued Jobs for about 45 s while
    a new one ran. Now only the holder of the Lease reconciles; SIGTERM stops new work at once
    and gives the Lease up, so the standby takes over without waiting for it to expire."""
    from kubernetes import client

    from localcluster.waiting import wait_for
    from promotion_ladder.controller.lease import LEASE_NAME

    from .harness import Operator

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    first = Operator(operator_identity, namespace, tmp_path / "a").start()
    second = Operator(operator_identity, namespace, tmp_path / "b").start()
    coord = client.CoordinationV1Api(kube.api)
    try:
        cands = {f"c{i}": {"value": 1.0 + i / 10, "sleep": 1} for i in range(6)}
        kube.create(
            ladder(
                "pair",
                cands,
                [stage("s1", blocks=("a100",), top=2), stage("s2", "3s", blocks=("a100",))],
                parallelism=2,
            )
        )
        wait_for(lambda: len(kube.jobs("pair")) >= 4, timeout=60, what="two rounds of Jobs")
        # The symptom first: two operators at once both create Jobs (Job names are fixed, so the
        # loser's creates end in 409s, but each is work done by an operator that should not act).
        creates = [
            metric_sum(op.metrics(), "ladder_operator_api_requests_total", operation="create_job")
            for op in (first, second)
        ]
        assert min(creates) == 0, f"both operators created Jobs (create calls: {creates})"
        holder = wait_for(
            lambda: coord.read_namespaced_lease(LEASE_NAME, namespace).spec.holder_identity, timeout=30, what="a leader"
        )
        leader = first if f"-{first.proc.pid}-" in holder else second
        standby = second if leader is first else first
        leader.stop()  # SIGTERM
        assert "no new work from now on" in leader.tail(200)
        new = wait_for(
            lambda: (
                (h := coord.read_namespaced_lease(LEASE_NAME, namespace).spec.holder_identity) and h != holder and h
            ),
            timeout=15,
            what="the standby taking the Lease",
        )
        assert f"-{standby.proc.pid}-" in new
        st = kube.wait_phase("pair", timeout=150)["status"]
        assert st["phase"] == "Succeeded", kube.describe("pair")
        jobs = kube.jobs("pair")
        assert len(jobs) == 6 + 2 == len({j.metadata.name for j in jobs})
        assert len(kube.pods("pair")) == len(jobs)  # no cell ran twice
    finally:
        for op in (first, second):
            op.stop()


def _condition(kube, name: str, type_: str) -> dict | None:
    return next(
        (c for c in (kube.ladder(name).get("status") or {}).get("conditions") or [] if c["type"] == type_), None
    )


# Defect 6 had three ways to stall silently; one test each, so each is seen to fail on the code
# before the fix (one test stopped at its first case).
def test_a_ladder_whose_jobs_the_api_server_refuses_is_stopped_before_its_jobs(operator, kube):
    """Defect 6: an invalid resource quantity was admitted and Job creation refused every 30 s
    with one Warning. Now a dry-run Job per host block keeps such a ladder Pending with
    Admitted=False, and an edit of the placement fixes it."""
    from localcluster.waiting import wait_for

    bad = ladder("quantity", {"a": {"value": 1.0}}, [stage("only", blocks=("a100",))])
    bad["spec"]["trainer"]["resources"] = {"limits": {"cpu": "lots"}}
    kube.create(bad)
    admitted = wait_for(
        lambda: _condition(kube, "quantity", "Admitted"),
        timeout=60,
        what="Admitted condition",
        describe=lambda: kube.describe("quantity"),
    )
    assert admitted["status"] == "False" and admitted["reason"] == "JobInvalid" and "a100" in admitted["message"]
    assert kube.ladder("quantity")["status"]["phase"] == "Pending" and kube.jobs("quantity") == []
    assert kube.events("JobInvalid")
    kube.patch("quantity", {"spec": {"trainer": {"resources": {"limits": {"cpu": "1"}}}}})  # placement is editable
    assert kube.wait_phase("quantity", timeout=90)["status"]["phase"] == "Succeeded", kube.describe("quantity")


def test_a_host_block_no_node_serves_is_a_warning(operator, kube):
    """Defect 6: a nodeSelector no node has left the ladder Running forever, saying nothing. Now it
    is a Schedulable=False warning (an autoscaler may add the node, so the ladder runs on)."""
    from localcluster.waiting import wait_for

    nowhere = ladder("nowhere", {"a": {"value": 1.0}}, [stage("only", blocks=("a100", "h100"))])
    nowhere["spec"]["hostBlocks"].append({"name": "h100", "nodeSelector": {"ladder.promotion.dev/host-block": "h100"}})
    kube.create(nowhere)
    warned = wait_for(
        lambda: _condition(kube, "nowhere", "Schedulable"),
        timeout=60,
        what="Schedulable condition",
        describe=lambda: kube.describe("nowhere"),
    )
    assert warned["status"] == "False" and warned["reason"] == "NoNodeMatches" and "h100" in warned["message"]
    assert kube.ladder("nowhere")["status"]["phase"] == "Running"
    assert kube.events("NoNodeMatches")


def test_an_oversized_candidate_config_is_refused_before_its_jobs(operator, kube):
    """Defect 6: a 1 MB candidate config failed every pod with `Argument list too long` (three
    doomed pods per cell) and the ladder still ended Succeeded. Now it is InvalidSpec, no Job."""
    huge = ladder("huge", {"a": {"value": 1.0, "blob": "x" * 300_000}}, [stage("only", blocks=("a100",))])
    kube.create(huge)
    st = kube.wait_phase("huge", timeout=60)["status"]
    assert st["phase"] == "Failed" and "spec.candidates[0].config" in st["message"], st.get("message")
    assert kube.jobs("huge") == []
