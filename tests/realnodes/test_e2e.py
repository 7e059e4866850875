"""End to end on real nodes: the chart's operator as a Pod, ladders in real containers, results
through the kubelet, forgery refused for a real projected token, and a two-node cell's
rendezvous over its headless Service's DNS name.

Everything runs as on a cluster: the images are built here from the unchanged Dockerfiles, the
operator is installed with `helm install`, ladders with `kubectl apply -f`, and each pod runs in
a container of a real kubelet (localcluster.realnodes). GPUs are the one thing simulated:
`nvidia.com/gpu` is a patched extended resource and the trainer runs on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from localcluster.prometheus import LocalPrometheus

from ..e2e.checks import CHECKS
from .conftest import LADDER_NS, SYSTEM_NS, apply_ladder, kubectl_json, pod_logs, run_pod, target, wait_ladder

pytestmark = [pytest.mark.integration, pytest.mark.real_nodes]

HERE = Path(__file__).parent
SMALL_LADDER = yaml.safe_load((HERE / "small-ladder.yaml").read_text())
# The trainer's step log goes to the container's output, which `kubectl logs` reads back.
LOSS_RTOL = 1e-5
SPLIT = {
    "depth": 1,
    "aspect_ratio": 32,
    "head_dim": 16,
    "seq_len": 32,
    "tokenizer": "byte",
    "batch": 128,
    "device_batch": 1,
    "warmdown_frac": 0.0,
}


def operator_pod(kubectl: Callable[..., str]) -> dict:
    (pod,) = kubectl_json(kubectl, "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=operator")[
        "items"
    ]
    return pod


# --- the operator as a Pod -------------------------------------------------------------------


def test_operator_runs_as_a_pod_under_the_charts_security_context(release, kubectl):
    pod = operator_pod(kubectl)
    status = pod["status"]["containerStatuses"][0]
    assert status["containerID"].startswith("containerd://")
    assert status["ready"] and status["restartCount"] == 0, status  # both probes pass
    name = pod["metadata"]["name"]
    # The process itself, not the manifest: uid/gid 65532, and the root filesystem refuses writes.
    assert kubectl("exec", "-n", SYSTEM_NS, name, "--", "id", "-u").strip() == "65532"
    assert kubectl("exec", "-n", SYSTEM_NS, name, "--", "id", "-g").strip() == "65532"
    touch = kubectl("exec", "-n", SYSTEM_NS, name, "--", "sh", "-c", "touch /opt/x 2>&1; echo rc=$?")
    assert "Read-only file system" in touch and "rc=1" in touch
    # In-cluster config: the kubelet's projected token and the `kubernetes` Service.
    env = kubectl("exec", "-n", SYSTEM_NS, name, "--", "env")
    assert "KUBERNETES_SERVICE_HOST=10.96.0.1" in env and "KUBECONFIG" not in env


def test_prometheus_scrapes_the_operator_pod(release, kubectl, tmp_path):
    ip = operator_pod(kubectl)["status"]["podIP"]
    prom = LocalPrometheus(tmp_path / "prometheus", [f"{ip}:8080"]).start()
    try:
        prom.wait_scraping(timeout=60)
        assert prom.query("up")[0]["value"][1] == "1"
        names = prom.label_values("__name__", '{job="promotion-ladder-operator"}')
        assert "ladder_reconcile_duration_seconds_count" in names or any(n.startswith("ladder_") for n in names), names
    finally:
        prom.stop()


# --- a ladder in real containers -------------------------------------------------------------


@pytest.fixture(scope="module")
def small_ladder(release, kubectl, tmp_path_factory) -> dict:
    name = apply_ladder(kubectl, SMALL_LADDER, LADDER_NS, tmp_path_factory.mktemp("ladders"))
    return wait_ladder(kubectl, name, LADDER_NS)


@pytest.mark.parametrize("check", CHECKS, ids=list(CHECKS))
def test_small_ladder(small_ladder, kubectl, check):
    """The checks scripts/kind-e2e.sh runs on kind (tests/e2e/checks.py), here on real nodes."""
    CHECKS[check](target(kubectl, small_ladder["metadata"]["name"]))


def test_results_were_published_with_in_cluster_config(small_ladder, kubectl):
    """The trainer had no kubeconfig: its annotation was written with the kubelet's projected
    token through the `kubernetes` Service (the admission policy admits it only for its own pod)."""
    pods = kubectl_json(kubectl, "get", "pods", "-n", LADDER_NS, "-l", "ladder.promotion.dev/ladder=small")["items"]
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert not any(e["name"] == "KUBECONFIG" for e in container.get("env", []))
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts  # the projected token
        assert "ladder.promotion.dev/result" in pod["metadata"].get("annotations", {}), pod["metadata"]["name"]


# --- forgery with a real token ---------------------------------------------------------------

FORGER = r"""
import json
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_incluster_config()
v1, ns = client.CoreV1Api(), "{ns}"
def attempt(pod, patch):
    try:
        v1.patch_namespaced_pod(pod, ns, patch)
        return {{"status": 200}}
    except ApiException as exc:
        return {{"status": exc.status, "message": json.loads(exc.body).get("message", "")}}
out = {{
    "rival annotation": attempt("rival", {{"metadata": {{"annotations": {{"ladder.promotion.dev/result": "{{}}"}}}}}}),
    "rival label": attempt("rival", {{"metadata": {{"labels": {{"ladder.promotion.dev/candidate": "x"}}}}}}),
    "own label": attempt("forger", {{"metadata": {{"labels": {{"ladder.promotion.dev/candidate": "x"}}}}}}),
    "own result": attempt("forger", {{"metadata": {{"annotations": {{"ladder.promotion.dev/result": "{{}}"}}}}}}),
}}
open("/dev/termination-log", "w").write(json.dumps(out))
"""


def test_a_trainer_token_cannot_forge_a_rivals_result(release, kubectl, project_images, tmp_path):
    trainer = project_images["trainer"]
    rival = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rival"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": trainer, "command": ["python", "-c", "pass"]}],
        },
    }
    run_pod(kubectl, LADDER_NS, rival, tmp_path)
    forger = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "forger"},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "ladder-trainer",
            "containers": [{"name": "c", "image": trainer, "command": ["python", "-c", FORGER.format(ns=LADDER_NS)]}],
        },
    }
    pod = run_pod(kubectl, LADDER_NS, forger, tmp_path)
    assert pod["status"]["phase"] == "Succeeded", pod_logs(kubectl, LADDER_NS, "forger")
    out = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert out["rival annotation"]["status"] == 403, out
    assert "may change only its own Pod" in out["rival annotation"]["message"]
    assert out["rival label"]["status"] == 403 and out["own label"]["status"] == 403, out
    assert "labels" in out["own label"]["message"]
    assert out["own result"]["status"] == 200, out  # the same token may publish its own result


# --- multi-node rendezvous -------------------------------------------------------------------


def rendezvous_ladder(name: str, nodes: int) -> dict:
    """One cell of 6 steps on `nodes` pods, one per real node, rank 0's step log on its output."""
    spread = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {"ladder.promotion.dev/ladder": name}},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": name},
        "spec": {
            "trainer": {
                "image": SMALL_LADDER["spec"]["trainer"]["image"],
                "command": ["python", "-m", "ladder_trainer"],
                "args": ["--eval-tokens", "512"],
                "gpus": 1,
                "nodes": nodes,
                "env": {"LADDER_TRAINER_MAX_STEPS": "6", "LADDER_TRAINER_STEP_LOG": "/dev/stderr"},
                "template": {"spec": {"affinity": spread}},
            },
            "hostBlocks": [{"name": "real", "nodeSelector": {"localcluster.dev/real": "true"}}],
            "candidates": [{"name": "split", "config": SPLIT}],
            "stages": [{"name": "only", "budget": "90s", "hostBlocks": ["real"], "seeds": [3]}],
        },
    }


def step_losses(kubectl: Callable[..., str], ladder: str) -> tuple[list[dict], dict]:
    """Rank 0's step log and result: from the index-0 pod (the only pod of a one-node cell)."""
    pods = kubectl_json(kubectl, "get", "pods", "-n", LADDER_NS, "-l", f"ladder.promotion.dev/ladder={ladder}")["items"]
    pods = [p for p in pods if p["status"].get("phase") == "Succeeded"]
    first = next(
        p
        for p in pods
        if p["metadata"].get("annotations", {}).get("batch.kubernetes.io/job-completion-index", "0") == "0"
    )
    lines = pod_logs(kubectl, LADDER_NS, first["metadata"]["name"]).splitlines()
    steps = [json.loads(line) for line in lines if line.startswith('{"step"')]
    result = json.loads(first["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    return steps, result


def test_two_node_cell_rendezvous_over_the_headless_services_dns(release, kubectl, tmp_path):
    two = wait_ladder(kubectl, apply_ladder(kubectl, rendezvous_ladder("rdzv-two", 2), LADDER_NS, tmp_path), LADDER_NS)
    one = wait_ladder(kubectl, apply_ladder(kubectl, rendezvous_ladder("rdzv-one", 1), LADDER_NS, tmp_path), LADDER_NS)
    assert two["status"]["phase"] == "Succeeded", two["status"].get("conditions")
    assert one["status"]["phase"] == "Succeeded", one["status"].get("conditions")
    pods = kubectl_json(kubectl, "get", "pods", "-n", LADDER_NS, "-l", "ladder.promotion.dev/ladder=rdzv-two")["items"]
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, "one pod per kubelet"
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    host = env["LADDER_RDZV_ENDPOINT"].split(":")[0]
    assert host.endswith("-0." + pods[0]["spec"]["subdomain"]), host  # the headless Service's DNS name
    a, r1 = step_losses(kubectl, "rdzv-one")
    b, r2 = step_losses(kubectl, "rdzv-two")
    assert (r1["worldSize"], r2["worldSize"]) == (1, 2)
    assert [s["step"] for s in a] == [s["step"] for s in b] == [1, 2, 3, 4, 5, 6]
    for sa, sb in zip(a, b, strict=True):
        assert sb["loss"] == pytest.approx(sa["loss"], rel=LOSS_RTOL), (sa, sb)
