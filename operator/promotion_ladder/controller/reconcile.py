"""One reconcile of one ladder, as a pure function: what the cluster shows -> what to write.

    reconcile(ladder body, known status, its Jobs, their Pods, Jobs being created, now)
        -> Reconciled(status to write, Jobs to create, Events, rejected results)

A translator around the core's ladder step (core/step.py): Kubernetes objects in (Jobs and
Pods -> observed cell outcomes and running cells, via intake.py), the step, Kubernetes objects
out (Job manifests via jobs.py, the status document, Events). Replay of the recorded status,
the merge, the decisions and the status itself are the step's; nothing is decided here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.api import LadderInvalid, LadderSpec, load_ladder
from ..core.cell import CellKey, CellOutcome
from ..core.rules import Decision
from ..core.status import INVALID_SPEC, LadderStatus
from ..core.step import Step, step, stop
from .intake import JobSummary, PodSummary, Rejection, cell_outcome, foreign_pod_rejection
from .jobs import build_job, cell_job_name
from .occupancy import with_occupancy


@dataclass
class Reconciled:
    status: dict[str, Any]  # the full status document to write (wire form)
    create: list[dict[str, Any]] = field(default_factory=list)  # Job manifests
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    rejections: list[Rejection] = field(default_factory=list)
    spec: LadderSpec | None = None
    ladder_status: LadderStatus | None = None
    new_decisions: list[Decision] = field(default_factory=list)


def _observe(name: str, uid: str, spec: LadderSpec, jobs: list[JobSummary], pods: list[PodSummary]
             ) -> tuple[dict[CellKey, CellOutcome], set[CellKey], list[Rejection]]:
    """The cells' outcomes and running cells as the ladder's Jobs and Pods show them."""
    all_job_uids = {j.uid for j in jobs}
    pods_by_job: dict[str, list[PodSummary]] = {}
    rejections: list[Rejection] = []
    for p in pods:
        if p.owner_uid in all_job_uids:
            pods_by_job.setdefault(p.owner_uid, []).append(p)
        else:
            r = foreign_pod_rejection(p)
            if r is not None:
                rejections.append(r)
    observed: dict[CellKey, CellOutcome] = {}
    running: set[CellKey] = set()
    for job in jobs:
        cell = job.cell
        if job.owner_uid != uid or cell is None:
            continue
        view = cell_outcome(name, uid, cell, spec.objective.metric, job, pods_by_job.get(job.uid, []))
        rejections += view.rejections
        if view.outcome is not None:
            observed[cell.key] = with_occupancy(view.outcome, pods_by_job.get(job.uid, []))
        elif view.running:
            running.add(cell.key)
    return observed, running, rejections


def _reconciled(s: Step, **kw: Any) -> Reconciled:
    return Reconciled(status=s.status, events=[(a.type, a.reason, a.message) for a in s.announcements],
                      ladder_status=s.ladder_status if s.stopped is None else None,
                      new_decisions=list(s.new_decisions), **kw)


def reconcile(body: dict[str, Any], known_status: dict[str, Any] | None, jobs: list[JobSummary],
              pods: list[PodSummary], creating: set[str], now: str) -> Reconciled:
    meta = body["metadata"]
    name, uid, generation = meta["name"], meta["uid"], meta.get("generation")
    try:
        ladder = load_ladder(body, source=f"PromotionLadder {name}")
    except LadderInvalid as exc:
        return _reconciled(stop(known_status, INVALID_SPEC, "; ".join(exc.errors), generation, now))
    spec = ladder.spec
    observed, running, rejections = _observe(name, uid, spec, jobs, pods)
    existing = {j.name for j in jobs}
    # A Job that exists (or is being created) is never created again; only the ones being
    # created that the watch has not shown yet count against the parallelism as extra.
    known_names = existing | creating
    s = step(spec, known_status, observed, running, now=now, generation=generation,
             pending_starts=len(creating - existing),
             started=lambda cell: cell_job_name(name, cell) in known_names)
    if s.stopped is not None:
        return _reconciled(s)
    return _reconciled(s, create=[build_job(body, spec, c) for c in s.to_start], rejections=rejections, spec=spec)


def merge_known_status(from_body: dict | None, written: dict | None,
                       body_version: str | None = None, written_version: str | None = None) -> dict:
    """The newest record: our last write and the watched body can arrive in either order.
    Recorded outcomes and decisions only grow, so the one that recorded more wins; on a tie the
    higher resourceVersion (so an edit of the status by someone else is seen), else our write."""
    a, b = from_body or {}, written or {}
    if not b:
        return dict(a)

    def weight(s: dict) -> tuple[int, int]:
        stages = s.get("stages") or []
        return (sum(1 for st in stages if st.get("decision")),
                sum(1 for st in stages for c in st.get("cells") or [] if c.get("state") in ("Succeeded", "Failed")))

    wa, wb = weight(a), weight(b)
    if wa != wb:
        return dict(a) if wa > wb else dict(b)
    try:
        newer_body = int(body_version or 0) > int(written_version or 0)
    except ValueError:
        newer_body = False
    return dict(a) if newer_body else dict(b)
