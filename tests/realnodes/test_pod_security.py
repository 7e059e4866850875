"""A ladder in a namespace that enforces the restricted Pod Security Standard, on real nodes: a
hardened cell template with its corpus on a PersistentVolumeClaim (a hostPath PV) and /dev/shm
in memory is admitted and runs; a ladder without it is held before any Job exists, its status
naming the fields to set, as `ladder validate --pod-security restricted` does beforehand."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
import yaml

from localcluster.waiting import wait_for

from .conftest import RESTRICTED_NS, apply_ladder, kubectl_json, wait_ladder

pytestmark = [pytest.mark.integration, pytest.mark.real_nodes]

IMAGE = "ghcr.io/promotion-ladder/trainer:0.1.0"
HARDENED = {
    "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [
            {"name": "corpus", "persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
        "containers": [
            {
                "name": "trainer",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [
                    {"name": "corpus", "mountPath": "/data", "readOnly": True},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
    },
}


def ladder(name: str, template: dict | None) -> dict:
    trainer = {
        "image": IMAGE,
        "command": ["python", "-m", "ladder_trainer"],
        "gpus": 1,
        "args": ["--eval-tokens", "1024", "--data", "/data/corpus"],
    }
    if template is not None:
        trainer["template"] = template
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": name},
        "spec": {
            "trainer": trainer,
            "hostBlocks": [{"name": "pool-a", "nodeSelector": {"ladder.promotion.dev/host-block": "a100"}}],
            "candidates": [
                {
                    "name": "d1",
                    "config": {"depth": 1, "aspect_ratio": 32, "head_dim": 16, "seq_len": 64, "tokenizer": "byte"},
                }
            ],
            "stages": [{"name": "only", "budget": "3s", "hostBlocks": ["pool-a"], "seeds": [1]}],
        },
    }


@pytest.fixture(scope="module")
def corpus_claim(release, kubectl, tmp_path_factory):
    """A namespace enforcing restricted, and a claim bound to a hostPath PV holding a text corpus
    readable by the trainer's uid."""
    root = Path(tempfile.mkdtemp(prefix="ladder-corpus-"))
    corpus = root / "corpus"
    corpus.mkdir()
    for src in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]:
        shutil.copy(src, corpus / src.name)
    for path in (root, corpus, *corpus.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    kubectl("create", "namespace", RESTRICTED_NS)
    kubectl(
        "label",
        "namespace",
        RESTRICTED_NS,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    out = tmp_path_factory.mktemp("pv")
    docs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "corpus-e2e"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "corpus",
                "hostPath": {"path": str(root), "type": "Directory"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "corpus", "namespace": RESTRICTED_NS},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "corpus",
                "volumeName": "corpus-e2e",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    (out / "pv.yaml").write_text(yaml.safe_dump_all(docs))
    kubectl("apply", "-f", str(out / "pv.yaml"))
    wait_for(
        lambda: kubectl_json(kubectl, "get", "pvc", "corpus", "-n", RESTRICTED_NS)["status"].get("phase") == "Bound",
        timeout=60,
        what="the corpus claim Bound (the PV controller)",
    )
    yield corpus
    shutil.rmtree(root, ignore_errors=True)


def test_hardened_cells_with_a_pvc_corpus_and_memory_shm_run_under_restricted(corpus_claim, kubectl, tmp_path):
    name = apply_ladder(kubectl, ladder("guarded", HARDENED), RESTRICTED_NS, tmp_path)
    obj = wait_ladder(kubectl, name, RESTRICTED_NS, timeout=600)
    assert obj["status"]["phase"] == "Succeeded", obj["status"].get("conditions")
    (cell,) = obj["status"]["stages"][0]["cells"]
    assert cell["state"] == "Succeeded" and cell["corpus"], cell  # the corpus fingerprint the trainer reported
    (pod,) = kubectl_json(kubectl, "get", "pods", "-n", RESTRICTED_NS, "-l", f"ladder.promotion.dev/ladder={name}")[
        "items"
    ]
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    log = kubectl("logs", "-n", RESTRICTED_NS, pod["metadata"]["name"])
    assert "preparing corpus /data/corpus (60 files)" in log, log[-2000:]  # read from the claim
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    assert volumes["corpus"]["persistentVolumeClaim"]["claimName"] == "corpus"


def test_a_ladder_restricted_would_refuse_is_held_naming_the_fields(corpus_claim, kubectl, tmp_path):
    doc = ladder("unguarded", None)
    name = apply_ladder(kubectl, doc, RESTRICTED_NS, tmp_path)

    def held() -> dict | None:
        status = kubectl_json(kubectl, "get", "promotionladder", name, "-n", RESTRICTED_NS).get("status", {})
        return (
            status
            if any(c["type"] == "Admitted" and c["status"] == "False" for c in status.get("conditions", []))
            else None
        )

    status = wait_for(held, timeout=120, what="the unguarded ladder held by admission")
    assert status["phase"] == "Pending"
    admitted = next(c for c in status["conditions"] if c["type"] == "Admitted")
    for field in (
        "containers[trainer].securityContext.allowPrivilegeEscalation",
        "securityContext.runAsNonRoot",
        "securityContext.seccompProfile.type",
        "containers[trainer].securityContext.capabilities.drop",
    ):
        assert field in admitted["message"], admitted["message"]
    assert not kubectl_json(kubectl, "get", "jobs", "-n", RESTRICTED_NS, "-l", f"ladder.promotion.dev/ladder={name}")[
        "items"
    ]
    # The same verdict before applying, without a cluster.
    path = tmp_path / "unguarded.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [sys.executable, "-m", "promotion_ladder.cli", "validate", str(path), "--pod-security", "restricted"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and "allowPrivilegeEscalation must be false" in proc.stderr, proc.stderr
