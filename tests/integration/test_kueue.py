"""Kueue on the local control plane (localcluster.kueue), and `ladder manifests --kueue` applied to it.

Real Kueue v0.17 (cluster/build.sh kueue) against the real API server, Job controller and
scheduler; the GPU nodes are simulated (a100-0, a100-1, l40s-0, 4 nvidia.com/gpu each). How
today's operator behaves under Kueue: benchmarks/kueue-spike.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from localcluster import binaries
from localcluster.apply import apply_objects
from localcluster.pytest_plugin import require_tool
from localcluster.waiting import wait_for
from promotion_ladder.cli import main
from promotion_ladder.controller.jobs import build_job
from promotion_ladder.controller.rbac import trainer_objects
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import Cell

from ..unit.builders import ladder_doc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KUEUE = "kueue.x-k8s.io"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def job(
    name: str,
    *,
    queue: str | None = None,
    gpus: int = 0,
    node_selector: dict | None = None,
    command: tuple[str, ...] = ("true",),
) -> dict:
    container: dict = {"name": "main", "image": "ignored.local/x:0", "command": list(command)}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    pod: dict = {"restartPolicy": "Never", "containers": [container]}
    if node_selector:
        pod["nodeSelector"] = node_selector
    meta: dict = {"name": name, "labels": {QUEUE_LABEL: queue} if queue else {}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {"backoffLimit": 0, "template": {"spec": pod}},
    }


def workload_of(custom: client.CustomObjectsApi, namespace: str, job_name: str) -> dict | None:
    """The Workload Kueue made for a Job (owned by it)."""
    items = custom.list_namespaced_custom_object(KUEUE, "v1beta2", namespace, "workloads")["items"]
    for w in items:
        if any(r["kind"] == "Job" and r["name"] == job_name for r in w["metadata"].get("ownerReferences", [])):
            return w
    return None


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def test_a_queued_job_is_suspended_and_becomes_a_workload(kueue_cluster, kueue_namespace):
    api = kueue_cluster.api_client()
    batch, custom = client.BatchV1Api(api), client.CustomObjectsApi(api)
    stored = batch.create_namespaced_job(kueue_namespace, job("queued", queue="no-such-queue"))
    assert stored.spec.suspend is True  # Kueue's mutating webhook, through the API server
    w = wait_for(lambda: workload_of(custom, kueue_namespace, "queued"), timeout=30, what="the Job's Workload")
    assert w["spec"]["queueName"] == "no-such-queue"
    assert [ps["count"] for ps in w["spec"]["podSets"]] == [1]
    # Without a queue name Kueue leaves a Job alone.
    free = batch.create_namespaced_job(kueue_namespace, job("free"))
    assert not free.spec.suspend
    wait_for(
        lambda: (batch.read_namespaced_job("free", kueue_namespace).status.succeeded or 0) == 1,
        timeout=60,
        what="the Job without a queue name to complete",
    )
    assert workload_of(custom, kueue_namespace, "free") is None


def kueue_manifests(tmp_path: Path, capsys, doc: dict, *args: str) -> list[dict]:
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["manifests", str(path), "--kueue", *args]) == 0
    return [d for d in yaml.safe_load_all(capsys.readouterr().out) if d is not None]


def test_ladder_manifests_are_accepted_and_admit_a_cell_to_its_block(kueue_cluster, kueue_namespace, tmp_path, capsys):
    api = kueue_cluster.api_client()
    custom, batch, core = client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api)
    doc = ladder_doc(
        queueName="cells",
        trainer={
            "image": "x:0",
            "command": [sys.executable, "-c", "pass"],
            "gpus": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        },
    )
    cq = f"cq-{kueue_namespace}"
    objects = kueue_manifests(
        tmp_path,
        capsys,
        doc,
        "--gpu-quota",
        "a100=4",
        "--gpu-quota",
        "l40s=2",
        "--cluster-queue",
        cq,
        "-n",
        kueue_namespace,
    )
    apply_objects(api, objects)

    def active(plural: str, name: str, namespaced: bool) -> bool:
        obj = (
            custom.get_namespaced_custom_object(KUEUE, "v1beta2", kueue_namespace, plural, name)
            if namespaced
            else custom.get_cluster_custom_object(KUEUE, "v1beta2", plural, name)
        )
        return conditions(obj).get("Active", {}).get("status") == "True"

    wait_for(lambda: active("clusterqueues", cq, False), timeout=30, what=f"ClusterQueue {cq} Active")
    wait_for(lambda: active("localqueues", "cells", True), timeout=30, what="LocalQueue cells Active")

    # A cell Job as the operator builds it (no owner: the ladder object does not exist here),
    # with the trainer identity the operator would ensure.
    apply_objects(api, trainer_objects(kueue_namespace))
    ladder = load_ladder(doc)
    cell_job = build_job(
        {"metadata": {"name": ladder.name, "namespace": kueue_namespace, "uid": "u"}},
        ladder.spec,
        Cell("s1", "c0", "l40s", 1),
    )
    del cell_job["metadata"]["ownerReferences"]
    name = cell_job["metadata"]["name"]
    assert batch.create_namespaced_job(kueue_namespace, cell_job).spec.suspend is True

    def admitted() -> dict | None:
        w = workload_of(custom, kueue_namespace, name)
        return w if w and conditions(w).get("Admitted", {}).get("status") == "True" else None

    w = wait_for(
        admitted,
        timeout=60,
        what=f"the Workload of {name} Admitted",
        describe=lambda: json.dumps(workload_of(custom, kueue_namespace, name), default=str)[-1500:],
    )
    (assignment,) = w["status"]["admission"]["podSetAssignments"]
    assert assignment["flavors"] == {"nvidia.com/gpu": "l40s", "cpu": "l40s", "memory": "l40s"}
    assert w["status"]["admission"]["clusterQueue"] == cq
    wait_for(
        lambda: (batch.read_namespaced_job(name, kueue_namespace).status.succeeded or 0) == 1,
        timeout=90,
        what=f"cell Job {name} to complete",
    )
    (pod,) = core.list_namespaced_pod(kueue_namespace, label_selector=f"batch.kubernetes.io/job-name={name}").items
    assert pod.spec.node_name == "l40s-0"


def test_quota_is_enforced_per_block(kueue_cluster, kueue_namespace, tmp_path, capsys):
    """2 GPUs of l40s quota and two 2-GPU Jobs for l40s: one admitted, one waits for quota."""
    api = kueue_cluster.api_client()
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    doc = ladder_doc(queueName="q", trainer={"image": "x:0", "command": ["true"], "gpus": 2})
    cq = f"cq-{kueue_namespace}"
    apply_objects(
        api, kueue_manifests(tmp_path, capsys, doc, "--gpu-quota", "2", "--cluster-queue", cq, "-n", kueue_namespace)
    )
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")
    for name in ("first", "second"):
        batch.create_namespaced_job(
            kueue_namespace,
            job(name, queue="q", gpus=2, command=sleeper, node_selector={"ladder.promotion.dev/host-block": "l40s"}),
        )
        # In order, so that "first" is the one admitted.
        wait_for(lambda n=name: workload_of(custom, kueue_namespace, n), timeout=30, what=f"Workload of {name}")

    def states() -> dict[str, str]:
        out = {}
        for name in ("first", "second"):
            c = conditions(workload_of(custom, kueue_namespace, name) or {})
            out[name] = (
                "Admitted"
                if c.get("Admitted", {}).get("status") == "True"
                else c.get("QuotaReserved", {}).get("reason", "?")
            )
        return out

    wait_for(
        lambda: states() == {"first": "Admitted", "second": "Pending"},
        timeout=60,
        what="first admitted, second pending for quota",
        describe=states,
    )
    assert batch.read_namespaced_job("second", kueue_namespace).spec.suspend is True


def test_restart_keeps_what_was_admitted_and_admits_again(kueue_cluster, kueue, kueue_namespace, tmp_path, capsys):
    api = kueue_cluster.api_client()
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    doc = ladder_doc(queueName="r", trainer={"image": "x:0", "command": ["true"], "gpus": 1})
    apply_objects(
        api,
        kueue_manifests(
            tmp_path, capsys, doc, "--gpu-quota", "4", "--cluster-queue", f"cq-{kueue_namespace}", "-n", kueue_namespace
        ),
    )
    sleeper = (sys.executable, "-c", "import time; time.sleep(120)")
    batch.create_namespaced_job(kueue_namespace, job("before", queue="r", gpus=1, command=sleeper))
    wait_for(
        lambda: not batch.read_namespaced_job("before", kueue_namespace).spec.suspend,
        timeout=60,
        what="Job before admitted (unsuspended)",
    )
    uid = workload_of(custom, kueue_namespace, "before")["metadata"]["uid"]
    kueue.restart()
    w = workload_of(custom, kueue_namespace, "before")
    assert w["metadata"]["uid"] == uid and conditions(w)["Admitted"]["status"] == "True"
    batch.create_namespaced_job(kueue_namespace, job("after", queue="r", gpus=1))
    wait_for(
        lambda: (batch.read_namespaced_job("after", kueue_namespace).status.succeeded or 0) == 1,
        timeout=90,
        what="a Job queued after the restart to be admitted and complete",
    )
    assert not batch.read_namespaced_job("before", kueue_namespace).spec.suspend


def test_up_kueue_and_down(tmp_path):
    """`python -m localcluster up --kueue` runs Kueue detached; `down` stops it."""
    require_tool(binaries.kueue_missing_reason(), "Kueue tests")
    directory = tmp_path / "cluster"
    run = [sys.executable, "-m", "localcluster"]
    up = subprocess.run(
        [*run, "up", "--kueue", "--nodes", "none", "--dir", str(directory)],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert "localcluster: kueue up: webhooks on https://127.0.0.1:" in up.stdout
        kueue = json.loads((directory / "state.json").read_text())["components"]["kueue"]
        assert Path(f"/proc/{kueue['pid']}").exists()
    finally:
        down = subprocess.run(
            [*run, "down", "--dir", str(directory), "--keep"], check=False, capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not Path(f"/proc/{kueue['pid']}").exists(), timeout=15, what="kueue's process to end")
    assert "Starting manager" in (directory / "logs" / "kueue.log").read_text()
