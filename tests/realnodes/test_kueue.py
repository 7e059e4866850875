"""Kueue on real nodes: `localcluster up --kubelet --kueue` as a test (issue 24 on issue 22's nodes).

Kueue v0.17 (a host process, as `localcluster.kueue` runs it) on the real cluster's control
plane, the chart's operator in a pod (its RBAC lists Workloads), the real trainer image in real
containers: a ladder whose two cells share 1 GPU of quota runs them one after the other, shows
the second Queued while the first runs, records its wait, and ends as without Kueue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from localcluster.apply import apply_objects
from localcluster.kueue import LocalKueue
from localcluster.waiting import wait_for
from promotion_ladder.controller.kueue_manifests import QueueOptions, kueue_objects
from promotion_ladder.core.api import load_ladder

from .conftest import HERE, LADDER_NS, apply_ladder, kubectl_json, wait_ladder

pytestmark = [pytest.mark.integration, pytest.mark.real_nodes, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def real_kueue(real_cluster) -> Iterator[LocalKueue]:
    kueue = LocalKueue(real_cluster.control_plane).start()
    try:
        yield kueue
    finally:
        kueue.stop()
        # The real cluster is shared with the real-node tests after this module: without
        # Kueue's webhooks left answering nobody, their Jobs can be created.
        kueue.remove_webhooks()


def queued_ladder(project_images: dict[str, str]) -> dict:
    doc = yaml.safe_load((HERE / "small-ladder.yaml").read_text())
    doc["metadata"] = {"name": "queued", "namespace": LADDER_NS}
    spec = doc["spec"]
    spec["trainer"]["image"] = project_images["trainer"]
    spec["queueName"] = "gpus"
    spec["stages"] = [{"name": "only", "budget": "2s", "hostBlocks": ["pool-a"], "seeds": [1]}]
    return doc


def test_a_quota_gated_ladder_on_real_nodes(
    real_cluster, real_kueue, release, project_images, kubectl: Callable[..., str], tmp_path: Path
):
    doc = queued_ladder(project_images)
    objects = kueue_objects(
        load_ladder(doc), QueueOptions(namespace=LADDER_NS, cluster_queue="cq-real", gpu_quota={"": "1"})
    )
    apply_objects(real_cluster.api_client(), objects)
    kubectl("wait", "--for=condition=Active", "clusterqueue/cq-real", "--timeout=60s")
    name = apply_ladder(kubectl, doc, LADDER_NS, tmp_path)

    def states() -> list[str]:
        st = kubectl_json(kubectl, "get", "promotionladder", name, "-n", LADDER_NS).get("status") or {}
        return sorted(c["state"] for s in st.get("stages") or [] for c in s.get("cells") or [])

    wait_for(
        lambda: states() == ["Queued", "Running"],
        timeout=300,
        interval=1,
        what="one cell running, the other queued for the 1 GPU of quota",
    )
    final = wait_ladder(kubectl, name, LADDER_NS, timeout=600)
    st = final["status"]
    cells = [c for s in st["stages"] for c in s["cells"]]
    assert st["phase"] == "Succeeded" and [c["state"] for c in cells] == ["Succeeded", "Succeeded"], st
    waited = sorted((c.get("attempts") or {}).get("queuedSeconds") or 0.0 for c in cells)
    assert waited[-1] > 0, cells  # the second cell waited for the first
