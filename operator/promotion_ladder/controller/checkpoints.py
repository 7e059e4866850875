"""Deleting eliminated candidates' stage checkpoints on a cluster: one small Job per decided stage.

The checkpoints live on a volume the cells' pod template mounts (spec.continuation.path; a
ReadWriteMany claim), which the operator's own pod does not mount and should not: a ladder's
template may name any claim in its namespace, and the operator would need every one of them,
in every namespace, mounted before it started. So the deleting runs where the cells run, as a
Job on the same volume: the ladder's pod template (its volumes, mounts, pull secrets, security
settings) with the trainer's image running `python -m ladder_trainer.prune`, which deletes the
eliminated candidates' cell folders and nothing else. Kubernetes runs, retries and records it
like any other work; it is owned by the ladder, so deleting the ladder removes it.

What to delete is the status's (`status.checkpoints.deleted`, core/continuation.py), written
before the Job is created (a reconcile writes the status first): a Job never deletes what the
record does not say is gone. The name is deterministic per ladder and stage, so it is created
once; a re-created one only finds nothing left to delete. A Job that fails is a Warning
(`CheckpointPruneFailed`), once.

Pure: manifests and names out.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..core.api import LadderSpec
from ..core.continuation import DeletedCheckpoints, deleted_stages
from ..core.podtemplate import TRAINER_CONTAINER, merge_pod_template
from ..core.status import LadderStatus
from .intake import JobSummary
from .jobs import LABEL_PREFIX, LADDER_LABEL, MANAGED_BY, owner_reference

PRUNE_LABEL = LABEL_PREFIX + "prune"  # the stage whose eliminated candidates the Job deletes
PRUNE_MODULE = "ladder_trainer.prune"
PRUNE_BACKOFF_LIMIT = 3


def prune_job_name(ladder: str, stage: str) -> str:
    digest = hashlib.sha256(f"{ladder}\0{stage}".encode()).hexdigest()[:8]
    return f"{ladder[:30]}-prune-{stage[:16]}".strip("-").lower() + f"-{digest}"


def build_prune_job(
    ladder_body: dict[str, Any], spec: LadderSpec, root: str, entry: DeletedCheckpoints
) -> dict[str, Any]:
    """The Job that deletes the folders of one decided stage's eliminated candidates."""
    meta = ladder_body["metadata"]
    stages = deleted_stages(spec, entry)
    labels = {PRUNE_LABEL: entry.stage, **MANAGED_BY}
    container = {
        "name": TRAINER_CONTAINER,
        "image": spec.trainer.image,
        "command": [
            "python",
            "-m",
            PRUNE_MODULE,
            "--root",
            root,
            "--stages",
            *stages,
            "--candidates",
            *entry.candidates,
        ],
    }
    pod = merge_pod_template(
        {
            "metadata": {"labels": labels},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [container]},
        },
        spec.trainer.template,
    )
    job_meta: dict[str, Any] = {
        "name": prune_job_name(meta["name"], entry.stage),
        "labels": {LADDER_LABEL: meta["name"], **labels},
        "ownerReferences": [owner_reference(ladder_body)],
    }
    if meta.get("namespace"):
        job_meta["namespace"] = meta["namespace"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta,
        "spec": {"backoffLimit": PRUNE_BACKOFF_LIMIT, "template": pod},
    }


def prune_jobs(
    ladder_body: dict[str, Any], spec: LadderSpec, status: LadderStatus | None, known: set[str]
) -> list[dict[str, Any]]:
    """The prune Jobs the status calls for that do not exist (nor are being created) yet."""
    record = status.checkpoints if status is not None else None
    if record is None:
        return []
    name = ladder_body["metadata"]["name"]
    return [
        build_prune_job(ladder_body, spec, record.root, entry)
        for entry in record.deleted
        if prune_job_name(name, entry.stage) not in known
    ]


def prune_job_names(ladder: str, spec: LadderSpec) -> set[str]:
    """Every prune Job name the ladder may have (none when it does not continue)."""
    return {prune_job_name(ladder, st.name) for st in spec.stages} if spec.continuation is not None else set()


def failed_prunes(ladder: str, spec: LadderSpec, jobs: list[JobSummary]) -> list[JobSummary]:
    """Prune Jobs that failed (their retries spent): the folders they were to delete are still
    there. Known by name: a JobSummary keeps only the cell identity labels."""
    names = prune_job_names(ladder, spec)
    return [j for j in jobs if j.name in names and j.failed]
