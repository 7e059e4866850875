"""The operator under Kueue (issue 24's Done-when), on the local control plane with real Kueue.

Real Kueue v0.17 (cluster/build.sh kueue), the real API server, Job controller and scheduler,
`ladder operator -n NS` under a ServiceAccount bound to exactly rbac.OPERATOR_RULES; the GPU
nodes are simulated (a100-0, a100-1, l40s-0, 4 nvidia.com/gpu each) and the trainers are
tests/operator/stub_trainer.py with fixed values and short sleeps, so each test costs seconds of
"training". One Kueue cluster serves every test; the test that restarts Kueue runs last.
What Kueue does with the operator's Jobs: benchmarks/kueue-spike.md.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Self

import pytest
from kubernetes import client

from localcluster.apply import apply_objects
from localcluster.waiting import wait_for
from promotion_ladder.controller.jobs import CANDIDATE_LABEL, HOST_BLOCK_LABEL, LADDER_LABEL, SEED_LABEL, STAGE_LABEL
from promotion_ladder.controller.kueue_manifests import QueueOptions, kueue_objects
from promotion_ladder.core.api import load_ladder

from ..operator.harness import STUB, Cluster, Operator, install_crd, operator_kubeconfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

KUEUE = ("kueue.x-k8s.io", "v1beta2")
GPU = "nvidia.com/gpu"


def ladder(
    name: str, candidates: dict[str, dict], stages: list[dict], *, trainer: dict | None = None, **spec: Any
) -> dict:
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": name},
        "spec": {
            "trainer": {"image": "stub:0", "command": [sys.executable, STUB], "gpus": 1, **(trainer or {})},
            "hostBlocks": [{"name": "a100", "nodeSelector": {"ladder.promotion.dev/host-block": "a100"}}],
            "candidates": [{"name": n, "config": c} for n, c in candidates.items()],
            "stages": stages,
            **spec,
        },
    }


def stage(name: str, budget: str = "60s", seeds: tuple[int, ...] = (1,), top: int | None = None) -> dict:
    s: dict = {"name": name, "budget": budget, "hostBlocks": ["a100"], "seeds": list(seeds)}
    if top:
        s["promote"] = {"top": top}
    return s


def stub(value: float, sleep: float) -> dict:
    # annotation none: the termination message carries the result (no Kubernetes client import per cell)
    return {"value": value, "sleep": sleep, "train_seconds": sleep, "annotation": "none"}


class Sampler:
    """The namespace's cell Pods every 0.3 s: (cell, phase, GPUs, node) per Pod that exists."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core, self.ns = client.CoreV1Api(api), namespace
        self.samples: list[list[tuple[tuple[str, ...], str, int, str | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self.core.list_namespaced_pod(self.ns, label_selector=LADDER_LABEL).items
            except client.ApiException:
                pods = []
            sample = []
            for p in pods:
                labels = p.metadata.labels or {}
                cell = tuple(
                    labels.get(k, "")
                    for k in (LADDER_LABEL, STAGE_LABEL, CANDIDATE_LABEL, HOST_BLOCK_LABEL, SEED_LABEL)
                )
                gpus = sum(int((c.resources.limits or {}).get(GPU, 0)) for c in p.spec.containers if c.resources)
                sample.append((cell, p.status.phase, gpus, p.spec.node_name))
            self.samples.append(sample)
            self._stop.wait(0.3)

    def peak_running_gpus(self) -> int:
        return max((sum(g for _, phase, g, _ in s if phase == "Running") for s in self.samples), default=0)

    def most_running_of_one_cell(self) -> int:
        """The most Pods of one single-node cell running at once in any sample."""
        most = 0
        for s in self.samples:
            counts: dict[tuple[str, ...], int] = {}
            for cell, phase, _, _ in s:
                if phase == "Running":
                    counts[cell] = counts.get(cell, 0) + 1
            most = max([most, *counts.values()])
        return most


@pytest.fixture(scope="module")
def kq(kueue_cluster, tmp_path_factory) -> dict[str, Any]:
    """The Kueue cluster with the CRD and an operator identity bound to exactly OPERATOR_RULES."""
    api = kueue_cluster.api_client()
    install_crd(api)
    tmp = tmp_path_factory.mktemp("kueue-operator")
    return {
        "api": api,
        "kubeconfig": operator_kubeconfig(api, kueue_cluster.kubeconfig, tmp / "kubeconfig"),
        "tmp": tmp,
    }


def queues(api: client.ApiClient, doc: dict, ns: str, **options: Any) -> list[dict]:
    objs = kueue_objects(load_ladder(doc), QueueOptions(namespace=ns, cluster_queue=f"cq-{ns}", **options))
    apply_objects(api, objs)
    cq = f"cq-{ns}"
    custom = client.CustomObjectsApi(api)
    wait_for(
        lambda: any(
            c["type"] == "Active" and c["status"] == "True"
            for c in (custom.get_cluster_custom_object(*KUEUE, "clusterqueues", cq).get("status") or {}).get(
                "conditions", []
            )
        ),
        timeout=30,
        what=f"ClusterQueue {cq} Active",
    )
    return objs


def run_ladder(
    kq: dict, ns: str, doc: dict, timeout: float = 240, during: Callable[[Cluster, Operator], None] | None = None
) -> tuple[dict, Sampler, list[float]]:
    """The ladder under its own operator, sampled; (final ladder, pod samples, ladder_gpus_in_use samples)."""
    kube = Cluster(kq["api"], ns)
    op = Operator(kq["kubeconfig"], ns, kq["tmp"]).start()
    in_use: list[float] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                for line in op.metrics().splitlines():
                    if line.startswith("ladder_gpus_in_use{"):
                        in_use.append(float(line.rsplit(" ", 1)[1]))
            except (OSError, AssertionError):
                pass
            stop.wait(0.3)

    scraper = threading.Thread(target=scrape, daemon=True)
    try:
        with Sampler(kq["api"], ns) as sampler:
            scraper.start()
            kube.create(doc)
            if during is not None:
                during(kube, op)
            final = kube.wait_phase(doc["metadata"]["name"], timeout=timeout)
        return final, sampler, in_use
    finally:
        stop.set()
        scraper.join(10)
        op.stop()


def cells(status: dict) -> list[dict]:
    return [c for st in status["stages"] for c in st["cells"]]


def decisions(status: dict) -> list[tuple]:
    return [(st["name"], tuple(st["decision"]["promoted"])) for st in status["stages"] if st.get("decision")]


@pytest.fixture
def plain_namespace(kq) -> Any:
    """A second fresh namespace, for the same ladder without a queue."""
    core = client.CoreV1Api(kq["api"])
    name = f"plain-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"localcluster.dev/test": "true"}}})
    wait_for(lambda: core.read_namespaced_service_account("default", name), timeout=30, what=f"ServiceAccount {name}")
    yield name
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)


def test_quota_caps_concurrency_with_the_same_decisions(kq, kueue_namespace, plain_namespace):
    """4 GPUs of quota, a stage of 12 one-GPU cells: never more than 4 run; all run; the same
    decisions and protocol GPU-hours as without Kueue; the waits in the status, not occupied."""
    cands = {f"c{i:02d}": stub(1.0 + 0.01 * i, 2) for i in range(12)}
    stages = [stage("s1", top=2), stage("s2", seeds=(1, 2))]
    queued = ladder("quota", cands, stages, queueName="gpus")
    queues(kq["api"], queued, kueue_namespace, gpu_quota={"": "4"})
    final, sampler, in_use = run_ladder(kq, kueue_namespace, queued)
    plain, _, _ = run_ladder(kq, plain_namespace, ladder("quota", cands, stages))
    st, want = final["status"], plain["status"]
    assert st["phase"] == want["phase"] == "Succeeded", st.get("message")
    assert sampler.peak_running_gpus() <= 4, sampler.peak_running_gpus()
    assert in_use and max(in_use) <= 4, max(in_use)  # queued cells hold no GPU
    assert all(c["state"] == "Succeeded" for c in cells(st)) and len(cells(st)) == 12 + 4
    assert decisions(st) == decisions(want)
    assert st["gpuHours"]["total"] == want["gpuHours"]["total"]
    waited = [c["attempts"]["queuedSeconds"] for c in cells(st) if (c.get("attempts") or {}).get("queuedSeconds")]
    assert len(waited) >= 8 and max(waited) >= 2, waited  # 12 cells through 4 GPUs: most waited a wave or more
    for c in cells(st):  # occupancy is bound -> exit, the wait is not in it
        assert c["occupiedSeconds"] < 2 + 8, c
    assert "Queued" not in {c["state"] for c in cells(st)}


def orphan_local_queue(api: client.ApiClient, doc: dict, ns: str) -> None:
    apply_objects(
        api,
        [
            {
                "apiVersion": "/".join(KUEUE),
                "kind": "LocalQueue",
                "metadata": {"name": "orphan", "namespace": ns},
                "spec": {"clusterQueue": "no-such-cluster-queue"},
            }
        ],
    )


def too_small_cluster_queue(api: client.ApiClient, doc: dict, ns: str) -> None:
    """Quota of 4 GPUs for a cell of 8 (the builder refuses it, so lowered by hand)."""
    objs = kueue_objects(load_ladder(doc), QueueOptions(namespace=ns, cluster_queue=f"cq-{ns}", gpu_quota={"": "8"}))
    cq = next(o for o in objs if o["kind"] == "ClusterQueue")
    for f in cq["spec"]["resourceGroups"][0]["flavors"]:
        next(r for r in f["resources"] if r["name"] == GPU)["nominalQuota"] = "4"
    apply_objects(api, objs)


QUEUE_CASES = {
    "no LocalQueue": ("nope", {}, None, "QueueMissing", "nope"),
    "LocalQueue without its ClusterQueue": ("orphan", {}, orphan_local_queue, "QueueMissing", "no-such-cluster-queue"),
    "ClusterQueue below one cell": (
        "small",
        {"gpus": 4, "nodes": 2},
        too_small_cluster_queue,
        "QueueCannotFit",
        "small",
    ),
}


@pytest.mark.parametrize("case", QUEUE_CASES)
def test_a_queue_that_cannot_admit_is_named_within_30_seconds(kq, kueue_namespace, case):
    queue, trainer, arrange, reason, named = QUEUE_CASES[case]
    doc = ladder("missing", {"c0": stub(1.0, 0)}, [stage("s1")], trainer=trainer, queueName=queue)
    if arrange is not None:
        arrange(kq["api"], doc, kueue_namespace)
    kube = Cluster(kq["api"], kueue_namespace)
    op = Operator(kq["kubeconfig"], kueue_namespace, kq["tmp"]).start()
    try:
        kube.create(doc)
        t0 = time.monotonic()

        def said() -> dict | None:
            conds = (kube.ladder("missing").get("status") or {}).get("conditions") or []
            return next((c for c in conds if c["type"] == "QueueAdmissible" and c["status"] == "False"), None)

        cond = wait_for(said, timeout=30, what="QueueAdmissible=False", describe=op.tail)
        took = time.monotonic() - t0
        assert cond["reason"] == reason and named in cond["message"], cond
        wait_for(lambda: kube.events(reason), timeout=10, what=f"a {reason} Event")
        assert [c["state"] for c in cells(kube.ladder("missing")["status"])] == ["Queued"]
        print(f"\n{case}: named after {took:.1f} s")
    finally:
        op.stop()


def test_a_preempted_cell_is_rerun_and_its_lost_attempt_recorded(kq, kueue_namespace):
    ns = kueue_namespace
    doc = ladder("preempt", {"c0": stub(1.0, 12)}, [stage("s1", "120s")], queueName="gpus")
    queues(kq["api"], doc, ns, gpu_quota={"": "1"}, preemption="LowerPriority")
    sched = client.SchedulingV1Api(kq["api"])
    try:
        sched.create_priority_class({"metadata": {"name": "ladder-test-urgent"}, "value": 1000})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    urgent = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "urgent", "labels": {"kueue.x-k8s.io/queue-name": "gpus"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "priorityClassName": "ladder-test-urgent",
                    "nodeSelector": {"ladder.promotion.dev/host-block": "a100"},
                    "containers": [
                        {
                            "name": "main",
                            "image": "x",
                            "command": [sys.executable, "-c", "pass"],
                            "resources": {"limits": {GPU: "1"}},
                        }
                    ],
                }
            },
        },
    }

    def preempt(kube: Cluster, op: Operator) -> None:
        wait_for(
            lambda: any(p.status.phase == "Running" for p in kube.pods("preempt")), timeout=60, what="the cell running"
        )
        time.sleep(2)
        kube.batch.create_namespaced_job(ns, urgent)

    final, sampler, _ = run_ladder(kq, ns, doc, during=preempt)
    st = final["status"]
    (cell,) = cells(st)
    assert st["phase"] == "Succeeded" and cell["state"] == "Succeeded", st.get("message")
    lost = (cell.get("attempts") or {}).get("lost") or []
    assert len(lost) == 1 and lost[0]["heldSeconds"] >= 1, cell
    assert st["gpuHours"]["occupied"]["lost"] == pytest.approx(lost[0]["heldSeconds"] / 3600, abs=1e-5)
    assert cell["occupiedSeconds"] >= 12 + lost[0]["heldSeconds"] - 1  # both attempts held the GPU
    assert st["gpuHours"]["total"] == pytest.approx(12 / 3600, abs=1e-5)  # protocol: one attempt's train seconds
    assert sampler.most_running_of_one_cell() == 1


def test_a_two_node_cell_is_admitted_whole(kq, kueue_namespace):
    """2 pods x 4 GPUs per cell, 8 GPUs of quota, two cells: one cell at a time, both pods together."""
    cands = {"c0": stub(1.0, 3), "c1": stub(1.1, 3)}
    doc = ladder("multi", cands, [stage("s1")], trainer={"gpus": 4, "nodes": 2}, queueName="gpus")
    queues(kq["api"], doc, kueue_namespace, gpu_quota={"": "8"})
    final, sampler, in_use = run_ladder(kq, kueue_namespace, doc)
    assert final["status"]["phase"] == "Succeeded", final["status"].get("message")
    assert sampler.peak_running_gpus() <= 8 and max(in_use) <= 8
    for s in sampler.samples:  # never half-scheduled: no pod of a cell runs while another waits for a node
        running = {cell for cell, phase, _, _ in s if phase == "Running"}
        unbound = {cell for cell, phase, _, node in s if phase == "Pending" and node is None}
        assert not running & unbound, s
    assert any(sum(1 for _, phase, _, _ in s if phase == "Running") == 2 for s in sampler.samples)


def test_a_kueue_restart_loses_nothing(kq, kueue, kueue_namespace):
    """Runs last (it stops Kueue): 6 one-GPU cells, quota 2; Kueue down 10 s mid-stage."""
    cands = {f"c{i}": stub(1.0 + 0.1 * i, 2) for i in range(6)}
    doc = ladder("restart", cands, [stage("s1")], queueName="gpus")
    queues(kq["api"], doc, kueue_namespace, gpu_quota={"": "2"})

    def restart(kube: Cluster, op: Operator) -> None:
        wait_for(
            lambda: sum(p.status.phase == "Succeeded" for p in kube.pods("restart")) >= 2,
            timeout=90,
            what="2 cells done",
        )
        kueue.stop()
        time.sleep(10)
        kueue.start()

    final, sampler, _ = run_ladder(kq, kueue_namespace, doc, during=restart)
    st = final["status"]
    assert st["phase"] == "Succeeded" and [c["state"] for c in cells(st)] == ["Succeeded"] * 6
    assert sampler.most_running_of_one_cell() == 1  # no cell ran twice at once
    assert sampler.peak_running_gpus() <= 2


def test_creates_while_kueue_is_down_back_off_and_name_the_webhook(kq, kueue, kueue_namespace):
    """Runs last (it stops Kueue): its webhook refuses every queued Job (500) while down."""
    doc = ladder("down", {"c0": stub(1.0, 1), "c1": stub(1.1, 1)}, [stage("s1")], queueName="gpus")
    queues(kq["api"], doc, kueue_namespace, gpu_quota={"": "2"})
    kube = Cluster(kq["api"], kueue_namespace)
    op = Operator(kq["kubeconfig"], kueue_namespace, kq["tmp"]).start()
    kueue.stop()
    try:
        kube.create(doc)
        (event,) = wait_for(
            lambda: kube.events("WebhookUnavailable"), timeout=30, what="a WebhookUnavailable Event", describe=op.tail
        )
        assert "mjob.kb.io" in event.message, event.message
        time.sleep(15)
        refused = op.log_path.read_text().count("creating Job ")
        # 2 Jobs, backoff 5 s doubling: about 3 rounds in 15-20 s (the spike saw 3.4 per Job per second)
        assert refused <= 2 * 5, refused
    finally:
        kueue.start()
    try:
        st = kube.wait_phase("down", timeout=180)["status"]
        assert st["phase"] == "Succeeded" and len(kube.events("WebhookUnavailable")) == 1
    finally:
        op.stop()
