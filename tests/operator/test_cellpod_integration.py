"""Cells that carry real training, on the local control plane: a corpus from a volume the pod
template gives (a PVC bound to a hostPath PV) read by the real trainer, and a multi-node cell
(an Indexed Job of 2 pods with a headless rendezvous Service) as far as simulated nodes allow.

And a 2-process gloo cell (gpus: 2) with the real trainer's launcher, in one pod.

Not proven here (the local control plane has no DNS, no kube-proxy and no containers): that
`<job>-0.<service>` resolves inside a pod, and that torchrun's c10d rendezvous over it forms a
group across pods. What is proven: the Job controller runs the Indexed Job with hostnames
`<job>-<index>` under the Service's subdomain and gives every pod JOB_COMPLETION_INDEX, the
Service selects the Job's pods, every pod lands in the cell's host block, the cell's result is
read from the index-0 pod only, and one failed pod fails the cell.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster.waiting import wait_for
from promotion_ladder.core.contract import RESULT_ANNOTATION
from promotion_ladder.core.result import parse_result

from ..corpus import write_tiny_corpus
from .harness import STUB, node_host_blocks
from .test_operator_integration import stage
from .test_real_trainer_integration import TINY

pytestmark = pytest.mark.integration


def test_real_trainer_reads_its_corpus_from_a_template_volume(operator, kube, local_cluster, tmp_path):
    core = client.CoreV1Api(local_cluster.api_client())
    corpus = tmp_path / "corpus-volume"  # the PV's directory
    corpus.mkdir()
    write_tiny_corpus(corpus)
    pv = f"corpus-{kube.ns}"
    core.create_persistent_volume(
        {
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(corpus), "type": "Directory"},
            },
        }
    )
    try:
        core.create_namespaced_persistent_volume_claim(
            kube.ns,
            {
                "metadata": {"name": "corpus"},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        wait_for(
            lambda: core.read_namespaced_persistent_volume_claim("corpus", kube.ns).status.phase == "Bound",
            timeout=60,
            what="the corpus claim bound to its volume",
        )
        doc = {
            "apiVersion": "ladder.promotion.dev/v1alpha1",
            "kind": "PromotionLadder",
            "metadata": {"name": "pvc"},
            "spec": {
                "trainer": {
                    "image": "trainer:dev",
                    "command": ["python", "-m", "ladder_trainer"],
                    "gpus": 1,
                    # the path inside the pod; the volume puts the corpus there
                    "args": ["--data", "/data/corpus"],
                    "env": {
                        "LADDER_TRAINER_DEVICE": "cpu",
                        "LADDER_TRAINER_THREADS": "1",
                        "LADDER_TRAINER_EVAL_TOKENS": "512",
                        "LADDER_TRAINER_COMPILE": "off",
                    },
                    "template": {
                        "metadata": {"labels": {"team": "lm"}},
                        "spec": {
                            "volumes": [
                                {"name": "corpus", "persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}},
                                {"name": "cache", "emptyDir": {"medium": "Memory"}},
                            ],
                            "containers": [
                                {
                                    "name": "trainer",
                                    "volumeMounts": [
                                        {"name": "corpus", "mountPath": "/data/corpus", "readOnly": True},
                                        {"name": "cache", "mountPath": "/cache"},
                                    ],
                                    "env": [{"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/cache/inductor"}],
                                }
                            ],
                        },
                    },
                },
                "hostBlocks": [{"name": "a100", "nodeSelector": {"ladder.promotion.dev/host-block": "a100"}}],
                "candidates": [
                    {"name": "lr-lo", "config": {**TINY, "matrix_lr": 0.01}},
                    {"name": "lr-hi", "config": {**TINY, "matrix_lr": 0.04}},
                ],
                "stages": [stage("only", "2s", blocks=("a100",))],
            },
        }
        kube.create(doc)
        st = kube.wait_phase("pvc", timeout=300)["status"]
        assert st["phase"] == "Succeeded", kube.describe("pvc")
        pods = [p for p in kube.pods("pvc") if p.status.phase == "Succeeded"]
        assert len(pods) == 2
        for p in pods:
            assert p.metadata.labels["team"] == "lm"
            assert parse_result(p.metadata.annotations[RESULT_ANNOTATION]).status == "ok"
            log = local_cluster.pod_log(kube.ns, p.metadata.name)
            # the node agent resolved the claim to the PV's directory and the trainer got that path
            assert f"volume at /data/corpus is {corpus}" in log
            start = next(line for line in log.splitlines() if "localcluster: starting" in line)
            assert f"'--data', '{corpus}'" in start, start
    finally:
        with contextlib.suppress(ApiException):
            core.delete_persistent_volume(pv)


def test_multi_node_cell_on_simulated_nodes(operator, kube, local_cluster):
    doc = {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": "mn"},
        "spec": {
            "trainer": {"image": "stub:0", "command": [sys.executable, STUB], "gpus": 2, "nodes": 2},
            "hostBlocks": [{"name": "a100", "nodeSelector": {"ladder.promotion.dev/host-block": "a100"}}],
            "candidates": [
                {"name": "ok", "config": {"value": 1.0, "sleep": 0.5}},
                {"name": "rank1-fails", "config": {"value": 0.5, "sleep": 0.5, "rank_exit": 1}},
            ],
            "stages": [stage("only", "2s", blocks=("a100",))],
        },
    }
    kube.create(doc)
    st = kube.wait_phase("mn", timeout=180)["status"]
    assert st["phase"] == "Succeeded", kube.describe("mn")
    cells = {c["candidate"]: c for c in st["stages"][0]["cells"]}
    assert cells["ok"]["state"] == "Succeeded" and cells["ok"]["value"] == pytest.approx(1.001)
    assert cells["rank1-fails"]["state"] == "Failed" and "job failed" in cells["rank1-fails"]["reason"], cells
    assert st["gpuHours"]["total"] > 0

    core = client.CoreV1Api(local_cluster.api_client())
    blocks = node_host_blocks(core)
    jobs = {j.metadata.labels["ladder.promotion.dev/candidate"]: j for j in kube.jobs("mn")}
    job = jobs["ok"]
    name = job.metadata.name
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 2)
    svc = core.read_namespaced_service(name, kube.ns)
    assert svc.spec.cluster_ip == "None" and svc.spec.selector == {"batch.kubernetes.io/job-name": name}
    assert svc.metadata.owner_references[0].kind == "PromotionLadder"
    pods = sorted(
        (p for p in kube.pods("mn") if p.metadata.labels.get("batch.kubernetes.io/job-name") == name),
        key=lambda p: int(p.metadata.annotations["batch.kubernetes.io/job-completion-index"]),
    )
    assert [p.status.phase for p in pods] == ["Succeeded", "Succeeded"]
    for index, p in enumerate(pods):
        # what makes <job>-0.<service> a DNS name on a real cluster (not resolvable here: no DNS)
        assert (p.spec.hostname, p.spec.subdomain) == (f"{name}-{index}", name)
        assert blocks[p.spec.node_name] == "a100"
        log = local_cluster.pod_log(kube.ns, p.metadata.name)
        # gpus: 2: /dev/shm is a memory-backed emptyDir, on the host's tmpfs, gone with the pod
        shm = re.search(r"volume at /dev/shm is (\S+)", log).group(1)
        assert shm.startswith("/dev/shm/localcluster/") and not Path(shm).exists()
        layout = json.loads(re.search(r"stub layout (\{.*\})", log).group(1))
        assert layout == {
            "JOB_COMPLETION_INDEX": str(index),
            "LADDER_GPUS": "2",
            "LADDER_NODES": "2",
            "LADDER_RDZV_ENDPOINT": f"{name}-0.{name}:29400",
            "LADDER_RDZV_ID": name,
        }
    # only rank 0 published
    assert RESULT_ANNOTATION in (pods[0].metadata.annotations or {})
    assert RESULT_ANNOTATION not in (pods[1].metadata.annotations or {})
    failed = jobs["rank1-fails"]
    assert any(c.type == "Failed" and c.status == "True" for c in failed.status.conditions or [])


@pytest.mark.skipif(
    importlib.util.find_spec("ladder_trainer.launch") is None,
    reason="needs the trainer's multi-process launcher (ladder_trainer.launch, issue 13)",
)
def test_two_process_gloo_cell_with_the_real_trainer(operator, kube, local_cluster, tmp_path):
    """trainer.gpus: 2 on a simulated node: LADDER_GPUS=2, the trainer starts 2 gloo ranks on
    the CPU through torch.distributed.run, rank 0 publishes one result with worldSize 2."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_tiny_corpus(corpus)
    doc = {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": "gloo"},
        "spec": {
            "trainer": {
                "image": "trainer:dev",
                "command": ["python", "-m", "ladder_trainer"],
                "gpus": 2,
                "args": ["--data", str(corpus)],
                "env": {
                    "LADDER_TRAINER_DEVICE": "cpu",
                    "LADDER_TRAINER_THREADS": "1",
                    "LADDER_TRAINER_EVAL_TOKENS": "512",
                    "LADDER_TRAINER_COMPILE": "off",
                },
            },
            "hostBlocks": [{"name": "a100", "nodeSelector": {"ladder.promotion.dev/host-block": "a100"}}],
            # 128 tokens a step: 2 ranks x 2 micro-batches of one 32-token sequence
            "candidates": [{"name": "ddp", "config": {**TINY, "batch": 128, "device_batch": 1}}],
            "stages": [stage("only", "3s", blocks=("a100",))],
        },
    }
    kube.create(doc)
    st = kube.wait_phase("gloo", timeout=300)["status"]
    assert st["phase"] == "Succeeded", kube.describe("gloo")
    (p,) = [p for p in kube.pods("gloo") if p.status.phase == "Succeeded"]
    result = json.loads(p.metadata.annotations[RESULT_ANNOTATION])
    assert result["status"] == "ok" and result["worldSize"] == 2
    assert {"name": "dshm", "mountPath": "/dev/shm"} in [
        {"name": m.name, "mountPath": m.mount_path} for m in p.spec.containers[0].volume_mounts
    ]
