"""The trainer as a Pod on the local control plane (real apiserver, RBAC, simulated kubelet):
the result and progress annotations land on its own Pod, and the termination message too;
also for a two-process cell (LADDER_GPUS=2: two gloo processes in the one Pod)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.torch, pytest.mark.timeout(300)]
pytest.importorskip("torch")

from kubernetes import client  # noqa: E402

from localcluster.waiting import wait_for  # noqa: E402
from promotion_ladder.core.contract import PROGRESS_ANNOTATION, RESULT_ANNOTATION  # noqa: E402
from promotion_ladder.core.result import parse_result  # noqa: E402

from .conftest import TINY  # noqa: E402


def trainer_pod(corpus, cache_dir, processes: int = 1) -> dict:
    env = {
        "LADDER_NAME": "it",
        "LADDER_STAGE": "screen",
        "LADDER_CANDIDATE": "tiny",
        "LADDER_HOST_BLOCK": "a100",
        "LADDER_SEED": "3",
        "LADDER_CACHE": str(cache_dir),
        "LADDER_TRAINER_PROGRESS_INTERVAL": "0",
        "LADDER_GPUS": str(processes),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cell"},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "cell",
            "containers": [
                {
                    "name": "trainer",
                    "image": "ghcr.io/promotion-ladder/trainer:0.1.0",
                    "command": ["python", "-m", "ladder_trainer"],
                    "args": [
                        "--config",
                        json.dumps(TINY),
                        "--seed",
                        "3",
                        "--budget",
                        "2s",
                        "--eval-tokens",
                        "256",
                        "--data",
                        str(corpus),
                    ],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        *({"name": k, "value": v} for k, v in env.items()),
                    ],
                }
            ],
        },
    }


@pytest.mark.parametrize("processes", [1, 2])
def test_trainer_pod_annotates_itself(local_cluster, namespace, corpus, cache_dir, processes):
    api = local_cluster.api_client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "cell"}})
    rbac.create_namespaced_role(
        namespace,
        {"metadata": {"name": "cell"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]},
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "cell"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cell"},
            "subjects": [{"kind": "ServiceAccount", "name": "cell", "namespace": namespace}],
        },
    )
    core.create_namespaced_pod(namespace, trainer_pod(corpus, cache_dir, processes))

    def finished():
        pod = core.read_namespaced_pod("cell", namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = wait_for(
        finished, timeout=240, what="trainer pod finished", describe=lambda: local_cluster.pod_log(namespace, "cell")
    )
    log_text = local_cluster.pod_log(namespace, "cell")
    assert pod.status.phase == "Succeeded", log_text
    annotations = pod.metadata.annotations or {}
    result = parse_result(annotations[RESULT_ANNOTATION])
    assert result.status == "ok" and result.identity() == ("it", "screen", "tiny", "a100", 3)
    assert result.world_size == processes
    assert set(json.loads(annotations[PROGRESS_ANNOTATION])) == {"elapsed", "step", "tokens", "loss"}
    assert parse_result(pod.status.container_statuses[0].state.terminated.message) == result
    assert "could not annotate" not in log_text
