"""Occupied GPU-hours on the local control plane: the real scheduler binds each Pod (PodScheduled),
the simulated kubelet writes the container's finishedAt, and the operator records the interval
between them per cell, in the status and on /metrics."""

from __future__ import annotations

import pytest

from localcluster.waiting import wait_for

from .harness import Cluster
from .test_operator_integration import ladder, metric_sum, pod_occupancy, stage

pytestmark = pytest.mark.integration

SLEEP = 3  # seconds each stub cell "trains" (its trainSeconds); the Pod holds its node longer


def test_each_cell_counts_its_pod_from_binding_to_exit(operator, kube: Cluster, namespace):
    doc = ladder(
        "held",
        {"c0": {"value": 1.0, "sleep": SLEEP}, "c1": {"value": 1.1, "sleep": SLEEP}},
        [stage("s1", "10s", seeds=(1,))],
    )
    kube.create(doc)
    st = kube.wait_phase("held", timeout=180)["status"]
    assert st["phase"] == "Succeeded", kube.describe("held")

    expected = {}
    for p in kube.pods("held"):
        lab = p.metadata.labels
        occ = pod_occupancy(p)
        assert occ is not None, f"pod {p.metadata.name} lacks PodScheduled or finishedAt: {p.status}"
        expected[(lab["ladder.promotion.dev/candidate"], lab["ladder.promotion.dev/host-block"])] = occ
    cells = st["stages"][0]["cells"]
    assert len(cells) == len(expected) == 4
    for c in cells:
        want = expected[(c["candidate"], c["hostBlock"])]
        assert c["occupiedSeconds"] == want, c
        assert SLEEP - 1 <= c["occupiedSeconds"] < 120, c  # 1 s timestamps; the stub sleeps SLEEP

    occ = st["gpuHours"]["occupied"]
    assert (occ["measuredCells"], occ["cells"]) == (4, 4)
    assert occ["total"] == pytest.approx(sum(expected.values()) / 3600, abs=1e-6)
    protocol = st["gpuHours"]["total"]
    assert protocol == pytest.approx(sum(c["trainSeconds"] for c in cells) / 3600, abs=1e-6)
    assert occ["ratio"] == pytest.approx(occ["total"] / protocol, abs=1e-3) and occ["ratio"] >= 1

    # The counters follow the status write within the same reconcile (its last step): a scrape
    # right after the write may come before it.
    def counted(name: str) -> float:
        return metric_sum(operator.metrics(), name, namespace=namespace, ladder="held") / 3600

    wait_for(
        lambda: counted("ladder_occupied_gpu_seconds_total") == pytest.approx(occ["total"], abs=1e-6),
        timeout=10,
        what="occupied GPU-seconds counted",
        describe=lambda: counted("ladder_occupied_gpu_seconds_total"),
    )
    assert counted("ladder_gpu_seconds_total") == pytest.approx(st["gpuHours"]["total"], abs=1e-6)
