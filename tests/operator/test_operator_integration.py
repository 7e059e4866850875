"""The operator end to end on the local control plane (real API server, Job controller, scheduler,
garbage collector; simulated GPU nodes that run pods as local processes).

Each test gets its own namespace and its own operator process (watching only that namespace),
running as a ServiceAccount bound to rbac.OPERATOR_RULES. Trainers are the stub
(tests/operator/stub_trainer.py), scripted per candidate through its config; the real trainer
runs in test_real_trainer_ladder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from localcluster.waiting import wait_for
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import CellOutcome
from promotion_ladder.core.contract import RESULT_ANNOTATION
from promotion_ladder.core.result import ResultError, parse_result
from promotion_ladder.core.status import simulate

from .harness import STUB, install_crd, node_host_blocks

pytestmark = pytest.mark.integration

BLOCKS = ("a100", "l40s")


def ladder(name: str, candidates: dict[str, dict], stages: list[dict], command=None, **spec) -> dict:
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": name},
        "spec": {
            "trainer": {"image": "stub:0", "command": command or [sys.executable, STUB], "gpus": 1},
            "hostBlocks": [{"name": h, "nodeSelector": {"ladder.promotion.dev/host-block": h}} for h in BLOCKS],
            "candidates": [{"name": n, "config": c} for n, c in candidates.items()],
            "stages": stages,
            **spec,
        },
    }


def stage(name, budget="2s", blocks=BLOCKS, seeds=(1,), top=None, **promote):
    s = {"name": name, "budget": budget, "hostBlocks": list(blocks), "seeds": list(seeds)}
    if top is not None:
        s["promote"] = {"top": top, **promote}
    return s


def three_stage(name="three", candidates=None, **kw):
    cands = candidates or {"c0": {"value": 1.3}, "c1": {"value": 1.0}, "c2": {"value": 1.2}, "c3": {"value": 1.1}}
    return ladder(name, cands, [stage("s1", top=3), stage("s2", "3s", top=2), stage("s3", "4s", seeds=(1, 2))], **kw)


def accepted_results(kube, name: str) -> dict:
    """What the trainers reported, cell by cell, from the pods (annotation, else termination message)."""
    out = {}
    for p in kube.pods(name):
        if p.status.phase != "Succeeded":
            continue
        text = (p.metadata.annotations or {}).get(RESULT_ANNOTATION)
        term = p.status.container_statuses[0].state.terminated.message if p.status.container_statuses else None
        for t in (text, term):
            try:
                r = parse_result(t)
            except ResultError:
                continue
            lab = p.metadata.labels
            if r.candidate != lab["ladder.promotion.dev/candidate"]:
                continue
            key = (
                lab["ladder.promotion.dev/stage"],
                r.candidate,
                lab["ladder.promotion.dev/host-block"],
                int(lab["ladder.promotion.dev/seed"]),
            )
            out[key] = CellOutcome("succeeded", r.value, occupied_seconds=pod_occupancy(p), **r.measured())
            break
    return out


def pod_occupancy(pod) -> float | None:
    """A pod's GPU occupancy as the operator defines it (bound -> the container's finishedAt)."""
    bound = next(
        (
            c.last_transition_time
            for c in pod.status.conditions or []
            if c.type == "PodScheduled" and c.status == "True"
        ),
        None,
    )
    term = pod.status.container_statuses[0].state.terminated if pod.status.container_statuses else None
    if bound is None or term is None or term.finished_at is None:
        return None
    return (term.finished_at - bound).total_seconds()


def without_operator_fields(status: dict) -> dict:
    """What `ladder simulate` also shows: no conditions, no launch facts (gpus, node, image)."""
    from .test_reconcile import without_launch

    return {k: v for k, v in without_launch(status).items() if k not in ("observedGeneration", "conditions")}


def metric_sum(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_three_stage_ladder_completes(operator, kube, local_cluster, namespace):
    doc = three_stage()
    kube.create(doc)
    obj = kube.wait_phase("three", timeout=180)
    st = obj["status"]
    assert st["phase"] == "Succeeded", kube.describe("three")
    assert [s["decision"]["promoted"] for s in st["stages"][:2]] == [["c1", "c3", "c2"], ["c1", "c3"]]
    assert st["verdict"]["winner"] == "c1"
    cond = {c["type"]: c["status"] for c in st["conditions"]}
    assert cond == {"Progressing": "False", "Complete": "True", "Failed": "False"}
    assert st["observedGeneration"] == obj["metadata"]["generation"]

    # The status is what `ladder simulate` gives on the same results (for the ladder as the API
    # server stored it: JSON round-trips 1.0 to 1 in candidate configs, which changes the hash).
    spec = load_ladder(obj).spec
    sim, _ = simulate(spec, accepted_results(kube, "three"))
    assert without_operator_fields(st) == without_operator_fields(sim.wire())

    # One Job per cell, each pod on a node of its host block, no retries.
    jobs = kube.jobs("three")
    assert len(jobs) == 8 + 6 + 8 == len({j.metadata.name for j in jobs})
    blocks = node_host_blocks(kube.core)
    for p in kube.pods("three"):
        assert blocks[p.spec.node_name] == p.metadata.labels["ladder.promotion.dev/host-block"], p.metadata.name
    assert len(kube.pods("three")) == len(jobs)

    # An Event per stage decision, and the GPU-hours on /metrics.
    decided = kube.events("StageDecided")
    assert sorted(re.match(r"stage (\w+):", e.message).group(1) for e in decided) == ["s1", "s2", "s3"]
    text = operator.metrics()
    assert metric_sum(text, "ladder_gpu_seconds_total", namespace=namespace, ladder="three") / 3600 == pytest.approx(
        st["gpuHours"]["total"], abs=1e-6
    )
    assert metric_sum(text, "ladder_decisions_total", ladder="three") == 3
    assert metric_sum(text, "ladder_info", ladder="three", phase="Succeeded", leader="c1") == 1
    last = [t for t in st["stability"]["stages"] if "kendallTau" in t][-1]  # the gauge holds the latest pair
    assert (
        metric_sum(
            text, "ladder_rank_stability_kendall_tau", ladder="three", from_stage=last["from"], to_stage=last["to"]
        )
        == last["kendallTau"]
    )
    assert metric_sum(text, "ladder_decision_latency_seconds_count") >= 2
    assert operator.health() == {"workLoop": "alive", "leading": True}

    # kubectl shows the printer columns.
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(local_cluster.kubeconfig), "-n", namespace, "get", "promotionladders"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "STAGE", "LEADER", "GPU-HOURS", "AGE"]
    assert row.split()[:2] == ["three", "Succeeded"] and "c1" in row.split()


def test_operator_restarted_mid_stage(operator, kube):
    """SIGKILL the operator while stage 1 runs, and again right after stage 2's Jobs appear."""
    cands = {f"c{i}": {"value": 1.0 + 0.1 * i, "sleep": 2} for i in range(3)}
    doc = ladder(
        "restart", cands, [stage("s1", blocks=("a100",), top=2), stage("s2", "3s", blocks=("a100",), seeds=(1, 2))]
    )
    kube.create(doc)
    wait_for(lambda: len(kube.jobs("restart")) == 3, timeout=60, what="stage 1 jobs")
    operator.kill()
    wait_for(lambda: all(j.status.succeeded for j in kube.jobs("restart")), timeout=60, what="stage 1 done while down")
    operator.start()
    wait_for(
        lambda: len(kube.jobs("restart")) > 3,
        timeout=60,
        what="stage 2 jobs",
        describe=lambda: kube.describe("restart"),
    )
    operator.kill()
    operator.start()
    st = kube.wait_phase("restart", timeout=120)["status"]
    assert st["phase"] == "Succeeded", kube.describe("restart")
    jobs = kube.jobs("restart")
    assert len(jobs) == 3 + 4  # no duplicates
    assert len(kube.pods("restart")) == 7  # and no cell ran twice
    # Each stage decided once. (An Event is best effort: a kill right after the decision was
    # recorded may lose its Event, but never repeats it.)
    announced = [re.match(r"stage (\w+):", e.message).group(1) for e in kube.events("StageDecided")]
    assert len(announced) == len(set(announced)) and set(announced) <= {"s1", "s2"}
    assert [s["decision"]["stage"] for s in st["stages"]] == ["s1", "s2"]
    assert st["stages"][0]["decision"]["promoted"] == ["c0", "c1"]


def test_trainer_exits_non_zero(operator, kube):
    """Diverged (exit 3) fails the cell at once, no retry; an error (exit 1) is retried, then fails."""
    cands = {
        "good": {"value": 1.0},
        "diverges": {"value": 0.5, "exit": 3},
        "crashes": {"value": 0.4, "exit": 1},
        "ok2": {"value": 1.2},
    }
    doc = ladder("faults", cands, [stage("s1", blocks=("a100",), top=2), stage("s2", "3s", blocks=("a100",))])
    kube.create(doc)
    st = kube.wait_phase("faults", timeout=150)["status"]
    assert st["phase"] == "Succeeded", kube.describe("faults")
    cells = {c["candidate"]: c for c in st["stages"][0]["cells"]}
    assert cells["diverges"]["state"] == "Failed" and "diverged" in cells["diverges"]["reason"]
    assert (
        cells["crashes"]["state"] == "Failed" and "error: stub exit 1" in cells["crashes"]["reason"]
    )  # its own last result
    assert st["stages"][0]["decision"]["promoted"] == ["good", "ok2"]
    pods = {}
    for p in kube.pods("faults"):
        pods.setdefault(p.metadata.labels["ladder.promotion.dev/candidate"], []).append(p)
    assert len(pods["diverges"]) == 1  # podFailurePolicy FailJob: not retried
    assert len(pods["crashes"]) == 3  # backoffLimit 2: three tries


def test_pod_deleted_mid_run(operator, kube):
    cands = {"slow": {"value": 1.0, "sleep": 4}, "fast": {"value": 1.1}}
    doc = ladder("deleted", cands, [stage("s1", blocks=("l40s",), top=1), stage("s2", "3s", blocks=("l40s",))])
    kube.create(doc)

    def running_slow_pod():
        for p in kube.pods("deleted"):
            if p.metadata.labels["ladder.promotion.dev/candidate"] == "slow" and p.status.phase == "Running":
                return p

    victim = wait_for(running_slow_pod, timeout=60, what="the slow cell running")
    kube.core.delete_namespaced_pod(victim.metadata.name, kube.ns)
    # A real kubelet kills the container and reports the deleted pod Failed (exit 143) before it
    # goes; the Job controller (podFailurePolicy => podReplacementPolicy Failed) waits for that
    # terminal phase before it creates a replacement. The local simulated kubelet does the same
    # since b4d94c4; before that the pod hung on the Job's tracking finalizer. Keep reporting
    # what the kubelet would when a simulator without that fix is used.
    from kubernetes.client.rest import ApiException

    def read_victim():
        try:
            return kube.core.read_namespaced_pod(victim.metadata.name, kube.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None  # gone: the simulator reported it terminal and it was collected
            raise

    time.sleep(2)  # the process got SIGTERM; give the agent a moment to report
    pod = read_victim()
    if pod is not None and pod.status.phase == "Running":
        kube.core.patch_namespaced_pod_status(
            victim.metadata.name,
            kube.ns,
            {
                "status": {
                    "phase": "Failed",
                    "containerStatuses": [
                        {
                            "name": "trainer",
                            "ready": False,
                            "restartCount": 0,
                            "image": "stub:0",
                            "imageID": "",
                            "state": {"terminated": {"exitCode": 143, "reason": "Error"}},
                        }
                    ],
                }
            },
        )
    st = kube.wait_phase("deleted", timeout=120)["status"]
    assert st["phase"] == "Succeeded", kube.describe("deleted")
    slow = next(c for c in st["stages"][0]["cells"] if c["candidate"] == "slow")
    assert slow["state"] == "Succeeded" and slow["value"] == pytest.approx(1.001)  # re-run by the Job, not lost
    assert st["verdict"]["winner"] == "slow"
    assert len(list(kube.jobs("deleted"))) == 2 + 1


def test_forged_and_malformed_results_are_rejected(operator, kube, namespace):
    cands = {
        "honest": {"value": 1.2},
        "forger": {"value": 1.5, "annotation": "forge", "forge_as": "honest"},
        "garbled": {"value": 1.1, "annotation": "malformed"},
        "slow": {"value": 1.3, "sleep": 6},
    }
    doc = ladder("forged", cands, [stage("s1", blocks=("a100",), top=2), stage("s2", "3s", blocks=("a100",))])
    kube.create(doc)
    # Someone else forges a result on a running pod: it claims the slow cell won.
    slow = wait_for(
        lambda: next(
            (
                p
                for p in kube.pods("forged")
                if p.metadata.labels["ladder.promotion.dev/candidate"] == "slow" and p.status.phase == "Running"
            ),
            None,
        ),
        timeout=60,
        what="slow cell running",
    )
    fake = {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "CellResult",
        "ladder": "forged",
        "stage": "s1",
        "candidate": "slow",
        "hostBlock": "a100",
        "seed": 1,
        "status": "ok",
        "metric": "val_bpb",
        "value": 0.01,
    }
    kube.core.patch_namespaced_pod(
        slow.metadata.name,
        namespace,
        {"metadata": {"annotations": {RESULT_ANNOTATION: json.dumps({**fake, "seed": 99})}}},
    )
    # A pod that no Job of the ladder owns, carrying a result with the ladder's labels.
    kube.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {
                "name": "impostor",
                "labels": {
                    "ladder.promotion.dev/ladder": "forged",
                    "ladder.promotion.dev/stage": "s1",
                    "ladder.promotion.dev/candidate": "slow",
                    "ladder.promotion.dev/host-block": "a100",
                    "ladder.promotion.dev/seed": "1",
                },
                "annotations": {RESULT_ANNOTATION: json.dumps(fake)},
            },
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"none": "none"},
                "containers": [{"name": "x", "image": "x"}],
            },
        },
    )
    st = kube.wait_phase("forged", timeout=150)["status"]
    assert st["phase"] == "Succeeded", kube.describe("forged")
    cells = {c["candidate"]: c for c in st["stages"][0]["cells"]}
    # Forged and malformed annotations were rejected; the termination message carried the true value.
    assert cells["forger"]["value"] == pytest.approx(1.501)
    assert cells["garbled"]["value"] == pytest.approx(1.101)
    assert cells["slow"]["value"] == pytest.approx(1.301)
    assert cells["honest"]["value"] == pytest.approx(1.201)
    assert st["stages"][0]["decision"]["promoted"] == ["garbled", "honest"]
    text = operator.metrics()
    # identity: the forger's own and the outsider's; malformed: garbled at s1 and again at s2.
    for reason, n in (("identity", 2), ("malformed", 2), ("foreign", 1)):
        assert metric_sum(text, "ladder_result_errors_total", ladder="forged", reason=reason) == n, (reason, text)
    warnings = kube.events("ResultRejected")
    assert len(warnings) == 5 and all(e.type == "Warning" for e in warnings)


def test_spec_edit_after_admission(operator, kube):
    doc = ladder(
        "edited",
        {"a": {"value": 1.0, "sleep": 1}, "b": {"value": 1.1, "sleep": 1}},
        [stage("s1", blocks=("a100",), top=1), stage("s2", "3s", blocks=("a100",))],
    )
    kube.create(doc)
    wait_for(
        lambda: (kube.ladder("edited").get("status") or {}).get("frozenHash"), timeout=60, what="frozenHash recorded"
    )
    # The API server refuses edits of frozen fields (CEL self == oldSelf)...
    from kubernetes.client.rest import ApiException

    with pytest.raises(ApiException) as err:
        kube.patch(
            "edited",
            {"spec": {"stages": [stage("s1", "9s", blocks=("a100",), top=1), stage("s2", "3s", blocks=("a100",))]}},
        )
    assert err.value.status == 422 and "frozen" in err.value.body
    # ...and accepts operational edits.
    kube.patch("edited", {"spec": {"parallelism": 4}})
    # A CRD installed without its CEL rules lets a frozen edit through; then the operator's own
    # check must stop the ladder. Install such a CRD for the length of the edit.
    edited_stages = [stage("s1", blocks=("a100",), top=1), stage("s2", "9s", blocks=("a100",))]
    try:
        install_crd(kube.api, transition_rules=False)
        wait_for(
            lambda: kube.patch("edited", {"spec": {"stages": edited_stages}}),
            timeout=30,
            what="frozen edit accepted by a CRD without transition rules",
        )
    finally:
        install_crd(kube.api)
    st = kube.wait_phase("edited", phases=("Failed",), timeout=60)["status"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "FrozenSpecChanged"
    n_jobs = len(kube.jobs("edited"))
    wait_for(
        lambda: all(j.status.succeeded or j.status.failed for j in kube.jobs("edited")), timeout=60, what="jobs done"
    )
    time.sleep(2)  # a reconcile would have created stage 2 by now; nothing may appear
    assert len(kube.jobs("edited")) == n_jobs == 2
    assert kube.ladder("edited")["status"]["phase"] == "Failed"
    assert len(kube.events("FrozenSpecChanged")) == 1


def test_deleting_a_ladder_collects_its_jobs(operator, kube, namespace):
    doc = ladder("gone", {"a": {"value": 1.0, "sleep": 30}}, [stage("only", "30s", blocks=("a100",))])
    kube.create(doc)
    wait_for(lambda: kube.jobs("gone"), timeout=60, what="job created")
    kube.custom.delete_namespaced_custom_object(
        "ladder.promotion.dev", "v1alpha1", namespace, "promotionladders", "gone", propagation_policy="Foreground"
    )
    wait_for(lambda: not kube.jobs("gone"), timeout=60, what="jobs garbage-collected")
