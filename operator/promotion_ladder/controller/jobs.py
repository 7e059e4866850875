"""One Kubernetes Job per cell: deterministic names and a pure builder.

A cell's Job runs the trainer by the cell contract (core/contract.py: argv and LADDER_* env),
plus POD_NAME/POD_NAMESPACE from the downward API. The candidate's config travels as the Pod's
config annotation, which a downward-API volume projects into the file --config-file names (an
annotation, not an argument or a ConfigMap: no argument-length limit, no object to create or
garbage-collect, and the trainer's admission policy forbids it to change the annotation).

Failure handling lives in the Job itself: a podFailurePolicy fails the Job at once on the
trainer's "not worth retrying" exit codes (bad config, diverged, OOM) and does not count
disruptions (preemption, eviction, node drain); anything else retries up to BACKOFF_LIMIT.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..core.api import API_VERSION, KIND, LadderSpec
from ..core.budget import cell_deadline_seconds
from ..core.cell import Cell
from ..core.continuation import ladder_root
from ..core.contract import CONFIG_ANNOTATION, CONFIG_FILE, NON_RETRYABLE_EXIT_CODES, cell_args, cell_config, cell_env
from ..core.podtemplate import CONFIG_PATH, CONFIG_VOLUME, SCRATCH_PATH, SCRATCH_VOLUME, TRAINER_CONTAINER
from .cellpod import shape_job
from .rbac import TRAINER_SERVICE_ACCOUNT

LABEL_PREFIX = "ladder.promotion.dev/"
LADDER_LABEL = LABEL_PREFIX + "ladder"
STAGE_LABEL = LABEL_PREFIX + "stage"
CANDIDATE_LABEL = LABEL_PREFIX + "candidate"
HOST_BLOCK_LABEL = LABEL_PREFIX + "host-block"
SEED_LABEL = LABEL_PREFIX + "seed"
IDENTITY_LABELS = (LADDER_LABEL, STAGE_LABEL, CANDIDATE_LABEL, HOST_BLOCK_LABEL, SEED_LABEL)
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGED_BY = {"app.kubernetes.io/managed-by": "promotion-ladder-operator"}

CONTAINER = TRAINER_CONTAINER
GPU_RESOURCE = "nvidia.com/gpu"
# Relative on purpose: the container's workingDir is the scratch emptyDir, and the local
# simulated kubelet (which mounts nothing) runs the process in a per-pod scratch folder.
RESULT_FILE = "result.json"
CONFIG_FILE_PATH = f"{CONFIG_PATH}/{CONFIG_FILE}"
# The kubelet mounts this file; the trainer writes its result there when it exists (and the
# local simulated kubelet points LADDER_TERMINATION_LOG at its own file instead).
TERMINATION_LOG = "/dev/termination-log"
# Infrastructure failures (node lost, image pull flake, exit 1) are retried this many times.
BACKOFF_LIMIT = 2

# Job names become a label value (batch.kubernetes.io/job-name, 63 at most), and a multi-node
# cell's pods get the hostname <job>-<index> (a DNS label, 63 at most; index < 64): 60.
_MAX_NAME = 60
_HASH_LEN = 8
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def cell_job_name(ladder: str, cell: Cell) -> str:
    """`<ladder>-<stage>-<candidate>-<hostBlock>-<seed>-<hash>`, cut to 60 characters.

    The hash of the full identity is always appended, so two cells never share a name even when
    the readable part is ambiguous ("a-b" + "c" vs "a" + "b-c") or had to be shortened.
    """
    identity = "\0".join([ladder, cell.stage, cell.candidate, cell.host_block, str(cell.seed)])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:_HASH_LEN]
    readable = "-".join([ladder, cell.stage, cell.candidate, cell.host_block, str(cell.seed)]).lower()
    readable = _NOT_DNS.sub("-", readable)
    readable = readable[: _MAX_NAME - _HASH_LEN - 1].strip("-")
    return f"{readable}-{digest}" if readable else digest


def cell_labels(ladder: str, cell: Cell) -> dict[str, str]:
    return {
        LADDER_LABEL: ladder,
        STAGE_LABEL: cell.stage,
        CANDIDATE_LABEL: cell.candidate,
        HOST_BLOCK_LABEL: cell.host_block,
        SEED_LABEL: str(cell.seed),
    }


def cell_from_labels(labels: dict[str, str] | None) -> Cell | None:
    """The cell a Job or Pod belongs to, from its identity labels; None when any is missing or bad."""
    labels = labels or {}
    try:
        return Cell(labels[STAGE_LABEL], labels[CANDIDATE_LABEL], labels[HOST_BLOCK_LABEL], int(labels[SEED_LABEL]))
    except (KeyError, ValueError):
        return None


def owner_reference(ladder_body: dict[str, Any]) -> dict[str, Any]:
    meta = ladder_body["metadata"]
    # No blockOwnerDeletion: it needs update rights on the ladder's finalizers where the
    # OwnerReferencesPermissionEnforcement admission plugin is on, and nothing here needs it.
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"], "controller": True}


def trainer_args(spec: LadderSpec, cell: Cell, ladder: str) -> list[str]:
    """The contract's argv; a ladder that continues keeps its checkpoints on the template's
    volume at spec.continuation.path (core/continuation.py's layout)."""
    root = ladder_root(spec.continuation.path, ladder) if spec.continuation else None
    return cell_args(spec, cell, CONFIG_FILE_PATH, RESULT_FILE, root)


def trainer_env(spec: LadderSpec, ladder: str, cell: Cell) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(spec.trainer.env.items())]
    ours = cell_env(ladder, cell, spec)
    env = [e for e in env if e["name"] not in ours and e["name"] not in ("POD_NAME", "POD_NAMESPACE")]
    env += [{"name": k, "value": v} for k, v in ours.items()]
    env += [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return env


def trainer_resources(spec: LadderSpec) -> dict[str, Any]:
    res = json.loads(json.dumps(spec.trainer.resources or {}))  # deep copy of free-form data
    limits = dict(res.get("limits") or {})
    requests = dict(res.get("requests") or {})
    limits.pop(GPU_RESOURCE, None)
    requests.pop(GPU_RESOURCE, None)
    if spec.trainer.gpus > 0:
        limits[GPU_RESOURCE] = str(spec.trainer.gpus)
    # Quantities are strings on the wire (YAML users write `cpu: 2`; the client wants "2").
    limits = {k: str(v) for k, v in limits.items()}
    requests = {k: str(v) for k, v in requests.items()}
    out = {k: v for k, v in res.items() if k not in ("limits", "requests")}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def config_volume() -> dict[str, Any]:
    return {
        "name": CONFIG_VOLUME,
        "downwardAPI": {
            "items": [{"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]
        },
    }


def pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(NON_RETRYABLE_EXIT_CODES)},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_job(ladder_body: dict[str, Any], spec: LadderSpec, cell: Cell) -> dict[str, Any]:
    """The Job of one cell. Pure: the same ladder and cell always give the same manifest."""
    meta = ladder_body["metadata"]
    ladder, namespace = meta["name"], meta.get("namespace")
    stage = next(s for s in spec.stages if s.name == cell.stage)
    block = spec.host_block(cell.host_block)
    labels = {**cell_labels(ladder, cell), **MANAGED_BY}
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[QUEUE_LABEL] = spec.queue_name
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.trainer.image,
        "command": list(spec.trainer.command),
        "args": trainer_args(spec, cell, ladder),
        "env": trainer_env(spec, ladder, cell),
        "workingDir": SCRATCH_PATH,
        "volumeMounts": [
            {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH},
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_PATH, "readOnly": True},
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    resources = trainer_resources(spec)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        # On the Pod, not the Job: a Job's deadline also counts the time it waits for a GPU, so a
        # busy cluster would fail queued cells that never ran. The Pod's counts from its start.
        "activeDeadlineSeconds": cell_deadline_seconds(stage.budget_seconds),
        "restartPolicy": "Never",
        "serviceAccountName": TRAINER_SERVICE_ACCOUNT,
        "containers": [container],
        "volumes": [{"name": SCRATCH_VOLUME, "emptyDir": {}}, config_volume()],
    }
    if block.node_selector:
        pod_spec["nodeSelector"] = dict(block.node_selector)
    if block.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in block.tolerations]
    job_meta: dict[str, Any] = {
        "name": cell_job_name(ladder, cell),
        "labels": job_labels,
        "ownerReferences": [owner_reference(ladder_body)],
    }
    if namespace:
        job_meta["namespace"] = namespace
    return shape_job(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": job_meta,
            "spec": {
                "backoffLimit": BACKOFF_LIMIT,
                "podFailurePolicy": pod_failure_policy(),
                "template": {
                    "metadata": {"labels": labels, "annotations": {CONFIG_ANNOTATION: cell_config(spec, cell)}},
                    "spec": pod_spec,
                },
            },
        },
        spec,
    )
