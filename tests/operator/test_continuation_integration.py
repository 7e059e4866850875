"""A continuation ladder (spec.continuation) under the operator on the local control plane, with
the real trainer on CPU and its checkpoints on a ReadWriteMany PVC bound to a hostPath PV: s2's
cells resume from s1's stable checkpoints on the volume, each decided stage's prune Job
deletes the eliminated candidates' folders there, the winner's are kept and named in the
status, and the accounting counts what ran beside the from-scratch figure.

The node agent simulates the volume by path translation (docs/localcluster.md): every pod that
mounts the claim sees the PV's one host directory, as pods on one node would."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from localcluster.waiting import wait_for
from promotion_ladder.controller.checkpoints import prune_job_name

from ..corpus import write_tiny_corpus
from .test_operator_integration import stage
from .test_real_trainer_integration import TINY

pytestmark = pytest.mark.integration

CANDIDATES = {"slow": 0.0005, "mid": 0.005, "fast": 0.02}
S1_BUDGET, S2_BUDGET, WARMDOWN = 2.0, 3.0, 0.4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def _checkpoint_claim(core: client.CoreV1Api, ns: str, host_dir: Path) -> str:
    pv = f"checkpoints-{ns}"
    core.create_persistent_volume(
        {
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(host_dir), "type": "Directory"},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "checkpoints"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_persistent_volume_claim("checkpoints", ns).status.phase == "Bound",
        timeout=60,
        what="the checkpoint claim bound to its volume",
    )
    return pv


def _ladder(corpus_dir: Path) -> dict:
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": "cont"},
        "spec": {
            "trainer": {
                "image": "trainer:dev",
                "command": ["python", "-m", "ladder_trainer"],
                "gpus": 1,
                "env": {
                    "LADDER_TRAINER_DATA": str(corpus_dir),
                    "LADDER_TRAINER_DEVICE": "cpu",
                    "LADDER_TRAINER_THREADS": "1",
                    "LADDER_TRAINER_EVAL_TOKENS": "512",
                    "LADDER_TRAINER_COMPILE": "off",
                },
                "template": {
                    "spec": {
                        "volumes": [{"name": "ck", "persistentVolumeClaim": {"claimName": "checkpoints"}}],
                        "containers": [
                            {"name": "trainer", "volumeMounts": [{"name": "ck", "mountPath": "/checkpoints"}]}
                        ],
                    }
                },
            },
            "hostBlocks": [{"name": "a100", "nodeSelector": {"ladder.promotion.dev/host-block": "a100"}}],
            "candidates": [
                {"name": n, "config": {**TINY, "matrix_lr": lr, "warmdown_frac": WARMDOWN}}
                for n, lr in CANDIDATES.items()
            ],
            "stages": [
                stage("s1", f"{S1_BUDGET:g}s", blocks=("a100",), top=2),
                stage("s2", f"{S2_BUDGET:g}s", blocks=("a100",)),
            ],
            "continuation": {"from": "previousStage", "path": "/checkpoints"},
        },
    }


def test_continuation_ladder_with_a_pvc_checkpoint_volume(operator, kube, local_cluster, corpus, tmp_path):
    core = client.CoreV1Api(local_cluster.api_client())
    batch = client.BatchV1Api(local_cluster.api_client())
    host_dir = tmp_path / "checkpoint-volume"
    host_dir.mkdir()
    pv = _checkpoint_claim(core, kube.ns, host_dir)
    try:
        kube.create(_ladder(corpus))
        st = kube.wait_phase("cont", timeout=420)["status"]
        assert st["phase"] == "Succeeded", kube.describe("cont")
        s1, s2 = st["stages"]
        promoted = s1["decision"]["promoted"]
        (eliminated,) = set(CANDIDATES) - set(promoted)
        winner = st["verdict"]["winner"]
        (runner_up,) = set(promoted) - {winner}

        # s2's cells resumed from s1's stable checkpoints on the volume.
        for c in s2["cells"]:
            assert "resumeRefused" not in c, c
            assert (1 - WARMDOWN) * S1_BUDGET <= c["resumedSeconds"] < S1_BUDGET, c

        # Each decided stage's prune Job ran on the volume and deleted what it eliminated.
        for name in (prune_job_name("cont", "s1"), prune_job_name("cont", "s2")):
            wait_for(
                lambda n=name: (batch.read_namespaced_job(n, kube.ns).status.succeeded or 0) >= 1,
                timeout=120,
                what=f"prune Job {name} succeeded",
            )
        assert [(d["stage"], d["candidates"]) for d in st["checkpoints"]["deleted"]] == [
            ("s1", [eliminated]),
            ("s2", [runner_up]),
        ]
        root = host_dir / "cont"
        assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*")) == [
            f"s1/{winner}.a100.1",
            f"s2/{winner}.a100.1",
        ]
        assert (root / "s2" / f"{winner}.a100.1" / "final" / "model.pt").is_file()
        # The status names the winner's folders as the pods see them.
        assert st["checkpoints"]["winner"] == [
            f"/checkpoints/cont/s1/{winner}.a100.1",
            f"/checkpoints/cont/s2/{winner}.a100.1",
            f"/checkpoints/cont/s2/{winner}.a100.1/final",
        ]

        g = st["gpuHours"]
        taken_over = sum(c["resumedSeconds"] for c in s2["cells"]) / 3600
        assert g["fromScratch"] == pytest.approx(g["total"] + taken_over, abs=1e-5)
    finally:  # the namespace (and the claim) goes with the test; the volume is cluster-wide
        core.delete_persistent_volume(pv)
