"""`ladder manifests`: the objects the operator would create for one stage's cells, without a
cluster (like `helm template`), so users can review and diff what will run.

Pure, and built by the operator's own builders (`jobs.build_job`, `cellpod.rendezvous_service`),
so what it prints is what the operator creates, except for what only the cluster knows: the
ladder's UID in the owner references (a placeholder unless the file has one) and, for stages
after the first, which candidates were promoted (every candidate's cells are printed).
"""

from __future__ import annotations

from typing import Any

import yaml

from ..core.api import PromotionLadder
from ..core.cell import Cell
from ..core.planner import stage_cells
from ..core.podtemplate import continuation_mount_errors
from .cellpod import rendezvous_service
from .jobs import build_job

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def cell_objects(ladder_body: dict[str, Any], ladder: PromotionLadder, cell: Cell) -> list[dict[str, Any]]:
    """What the operator creates for one cell: its Job, after the Service a multi-node Job needs."""
    job = build_job(ladder_body, ladder.spec, cell)
    service = rendezvous_service(job)
    return [service, job] if service is not None else [job]


def stage_manifests(
    ladder: PromotionLadder, stage: str | None = None, namespace: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """(stage name, objects) for `stage` (default: the first). Raises ValueError for an unknown stage."""
    spec = ladder.spec
    names = [s.name for s in spec.stages]
    name = stage or names[0]
    if name not in names:
        raise ValueError(f"--stage: unknown stage {name!r}; the ladder's stages are {', '.join(names)}")
    mount = continuation_mount_errors(spec.continuation.path if spec.continuation else None, spec.trainer.template)
    if mount:  # the operator refuses such a ladder (InvalidSpec): say so here too
        raise ValueError("; ".join(mount))
    meta = ladder.metadata.model_dump()
    body = {"metadata": {"name": ladder.name, "uid": meta.get("uid") or PLACEHOLDER_UID}}
    if namespace or ladder.metadata.namespace:
        body["metadata"]["namespace"] = namespace or ladder.metadata.namespace
    objects = [
        o
        for cell in stage_cells(spec, names.index(name), spec.candidate_names())
        for o in cell_objects(body, ladder, cell)
    ]
    return name, objects


def render(ladder: PromotionLadder, stage: str | None = None, namespace: str | None = None) -> str:
    """Multi-document YAML with a header that says what is not known without a cluster."""
    name, objects = stage_manifests(ladder, stage, namespace)
    first = name == ladder.spec.stages[0].name
    jobs = sum(o["kind"] == "Job" for o in objects)
    header = [
        f"# ladder manifests: stage {name!r} of PromotionLadder {ladder.name!r}: {jobs} Job(s)"
        + (f", {len(objects) - jobs} Service(s)" if len(objects) > jobs else ""),
        "# What the operator would create for these cells. Not known without a cluster: the ladder's UID",
        f"# in ownerReferences ({PLACEHOLDER_UID} unless the file has one)"
        + ("." if first else ", and which candidates reach this stage (every candidate's cells are shown)."),
        "# The operator also ensures the ServiceAccount, Role and RoleBinding ladder-trainer in the namespace.",
    ]
    body = yaml.safe_dump_all(objects, sort_keys=False, width=120)
    return "\n".join(header) + "\n---\n" + body
