"""Fixtures for the end-to-end tests on real nodes: kubectl and helm on the real cluster, and the
chart installed with the images built here (the `real_cluster` and `project_images` fixtures
come from localcluster.pytest_plugin)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from localcluster import binaries
from localcluster.waiting import wait_for

from ..chart.conftest import CHART, run_helm
from ..e2e.checks import Target, kubectl_runner

SYSTEM_NS = "ladder-system"
RELEASE = "ladder"
LADDER_NS = "ladder-e2e"
RESTRICTED_NS = "restricted-e2e"
HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def kubectl(real_cluster) -> Callable[..., str]:
    return kubectl_runner(str(binaries.bin_dir() / "kubectl"), str(real_cluster.kubeconfig))


def kubectl_json(kubectl: Callable[..., str], *args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


@pytest.fixture(scope="session")
def release(real_cluster, project_images, kubectl) -> Iterator[str]:
    """`helm install` of the chart with the operator image built here; the trainer identity is
    pre-created in the e2e namespace. Yields the operator's full name."""
    repo, tag = project_images["operator"].rsplit(":", 1)
    kubectl("create", "namespace", LADDER_NS)
    # --wait: the operator pod Ready (its readiness probe), as a user's install would wait.
    proc = run_helm(
        str(binaries.helm_path()),
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        SYSTEM_NS,
        "--create-namespace",
        "--kubeconfig",
        str(real_cluster.kubeconfig),
        "--set",
        f"image.repository={repo}",
        "--set",
        f"image.tag={tag}",
        "--set-json",
        f"trainer.namespaces={json.dumps([LADDER_NS])}",
        "--wait",
        "--timeout",
        "5m",
        timeout=330,
    )
    assert proc.returncode == 0, proc.stderr + kubectl("get", "pods", "-A", "-o", "wide")
    yield f"{RELEASE}-promotion-ladder"


def apply_ladder(kubectl: Callable[..., str], doc: dict, namespace: str, tmp_path: Path) -> str:
    """`kubectl apply -f` of a ladder document, as a user would; returns its name."""
    path = tmp_path / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    kubectl("apply", "-n", namespace, "-f", str(path))
    return doc["metadata"]["name"]


def wait_ladder(kubectl: Callable[..., str], name: str, namespace: str, timeout: float = 900) -> dict:
    def ended() -> dict | None:
        obj = kubectl_json(kubectl, "get", "promotionladder", name, "-n", namespace)
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    def describe() -> str:
        return kubectl("get", "jobs,pods", "-n", namespace, "-o", "wide")

    t0 = time.monotonic()
    obj = wait_for(ended, timeout=timeout, interval=3, what=f"ladder {namespace}/{name} to end", describe=describe)
    print(f"ladder {namespace}/{name} ended {obj['status']['phase']} after {time.monotonic() - t0:.0f}s")
    return obj


def target(kubectl: Callable[..., str], ladder: str, namespace: str = LADDER_NS) -> Target:
    return Target(kubectl, namespace, ladder, SYSTEM_NS, RELEASE)


def pod_logs(kubectl: Callable[..., str], namespace: str, pod: str) -> str:
    return kubectl("logs", "-n", namespace, pod)


def run_pod(kubectl: Callable[..., str], namespace: str, pod: dict, tmp_path: Path, timeout: float = 300) -> dict:
    """Creates a pod with kubectl and waits until it ended; its final object."""
    path = tmp_path / f"{pod['metadata']['name']}.json"
    path.write_text(json.dumps(pod))
    kubectl("apply", "-n", namespace, "-f", str(path))
    name = pod["metadata"]["name"]

    def ended() -> dict | None:
        obj = kubectl_json(kubectl, "get", "pod", name, "-n", namespace)
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    return wait_for(
        ended,
        timeout=timeout,
        interval=1,
        what=f"pod {namespace}/{name} to end",
        describe=lambda: kubectl("describe", "pod", name, "-n", namespace)[-3000:],
    )
