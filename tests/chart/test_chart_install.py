"""The chart on the local control plane: `helm install` into a real API server, then a ladder
runs to Succeeded with the operator acting under the chart's ServiceAccount and RBAC.

No image can run here, so the chart's operator pod is pinned to no node (it stays Pending) and
the operator runs as a local process with a token of the chart's ServiceAccount: exactly the
identity and permissions the Deployment's pod would have. Trainers are the stub trainer of the
operator tests, running as the `ladder-trainer` identity the chart pre-created.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from kubernetes import client

from localcluster.waiting import wait_for

from ..operator.harness import STUB, Cluster, Operator
from .conftest import CHART, run_helm

pytestmark = pytest.mark.integration

RELEASE = "chart-it"
RELEASE_NS = "ladder-chart"
OPERATOR_SA = f"{RELEASE}-promotion-ladder"
BLOCKS = ("a100", "l40s")


def demo_ladder() -> dict:
    stage = lambda name, budget, **promote: {  # noqa: E731
        "name": name,
        "budget": budget,
        "hostBlocks": list(BLOCKS),
        "seeds": [1],
        **({"promote": promote} if promote else {}),
    }
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": "via-chart"},
        "spec": {
            "trainer": {"image": "stub:0", "command": [sys.executable, STUB], "gpus": 1},
            "hostBlocks": [{"name": h, "nodeSelector": {"ladder.promotion.dev/host-block": h}} for h in BLOCKS],
            "candidates": [{"name": f"c{i}", "config": {"value": v}} for i, v in enumerate((1.2, 1.0, 1.1))],
            "stages": [stage("screen", "2s", top=2), stage("confirm", "3s")],
        },
    }


def token_kubeconfig(api: client.ApiClient, admin_kubeconfig, namespace: str, sa: str, out):
    token = wait_for(
        lambda: (
            client.CoreV1Api(api)
            .create_namespaced_service_account_token(sa, namespace, {"spec": {"expirationSeconds": 3600}})
            .status.token
        ),
        timeout=30,
        what=f"token of {sa}",
    )
    cluster = yaml.safe_load(admin_kubeconfig.read_text())["clusters"][0]["cluster"]
    out.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "chart",
                "clusters": [{"name": "local", "cluster": cluster}],
                "users": [{"name": sa, "user": {"token": token}}],
                "contexts": [{"name": "chart", "context": {"cluster": "local", "user": sa}}],
            }
        )
    )
    return out


@pytest.fixture
def chart_release(helm, local_cluster, namespace):
    kubeconfig = str(local_cluster.kubeconfig)
    proc = run_helm(
        helm,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
        "--kubeconfig",
        kubeconfig,
        "--set-json",
        f"operator.watchNamespaces={json.dumps([namespace])}",
        "--set-json",
        f"trainer.namespaces={json.dumps([namespace])}",
        # no image runs here: keep the chart's operator pod off every node
        "--set-json",
        'nodeSelector={"promotion-ladder.dev/no-such-node": "true"}',
    )
    assert proc.returncode == 0, proc.stderr
    yield
    run_helm(helm, "uninstall", RELEASE, "--namespace", RELEASE_NS, "--kubeconfig", kubeconfig)


def test_ladder_completes_under_the_charts_identity(chart_release, local_cluster, namespace, tmp_path):
    api = local_cluster.api_client()
    apps = client.AppsV1Api(api)
    dep = apps.read_namespaced_deployment(OPERATOR_SA, RELEASE_NS)
    assert dep.spec.template.spec.service_account_name == OPERATOR_SA
    ext = client.ApiextensionsV1Api(api)
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition("promotionladders.ladder.promotion.dev").status.conditions
            or []
        ),
        timeout=30,
        what="CRD from the chart established",
    )

    kubeconfig = token_kubeconfig(api, local_cluster.kubeconfig, RELEASE_NS, OPERATOR_SA, tmp_path / "kubeconfig")
    op = Operator(kubeconfig, namespace, tmp_path).start()
    try:
        kube = Cluster(api, namespace)
        kube.create(demo_ladder())
        done = kube.wait_phase("via-chart", timeout=180)
        assert done["status"]["phase"] == "Succeeded", kube.describe("via-chart") + "\n" + op.tail()
        assert done["status"]["leader"] == "c1"
        pods = kube.pods("via-chart")
        assert pods and {p.spec.service_account_name for p in pods} == {"ladder-trainer"}
        spent = [
            line
            for line in op.metrics().splitlines()
            if line.startswith("ladder_gpu_seconds_total{") and 'ladder="via-chart"' in line
        ]
        assert spent and sum(float(line.rsplit(" ", 1)[1]) for line in spent) > 0
        assert "403" not in op.tail(400) and "Forbidden" not in op.tail(400), op.tail(400)
    finally:
        op.stop()
