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
from ..core.continuation import ladder_root
from ..core.podtemplate import continuation_mount_errors
from ..core.rules import Decision
from ..core.contract import REASON_LIMIT
from ..core.status import INVALID_SPEC, MESSAGE_LIMIT, LadderStatus, conditions
from ..core.step import Step, step, stop
from .admission import Admission, admission_conditions
from .checkpoints import failed_prunes, prune_job_names, prune_jobs
from .intake import JobSummary, PodSummary, Rejection, cell_outcome, foreign_pod_rejection
from .jobs import build_job, cell_job_name
from .stuck import STUCK_GRACE_SECONDS, next_check, stuck
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
    look_up: list[JobSummary] = field(default_factory=list)  # Complete Jobs whose Pods must be read directly
    end: list[PodSummary] = field(default_factory=list)  # Pods running far past their deadline (stuck.py)
    recheck_after: float | None = None  # seconds until a running Pod would be stuck: look again then
    failed_prunes: list[JobSummary] = field(default_factory=list)  # checkpoint prune Jobs that failed (checkpoints.py)


@dataclass
class Observed:
    """What the ladder's Jobs and Pods show, and what the reconciler must do about missing or
    stuck evidence."""

    outcomes: dict[CellKey, CellOutcome] = field(default_factory=dict)
    running: set[CellKey] = field(default_factory=set)
    rejections: list[Rejection] = field(default_factory=list)
    look_up: list[JobSummary] = field(default_factory=list)
    end: list[PodSummary] = field(default_factory=list)
    recheck_after: float | None = None


def _observe(name: str, uid: str, spec: LadderSpec, jobs: list[JobSummary], pods: list[PodSummary],
             now: str, stuck_grace: float) -> Observed:
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
    seen = Observed(rejections=rejections)
    budgets = {st.name: st.budget_seconds for st in spec.stages}
    for job in jobs:
        cell = job.cell
        if job.owner_uid != uid or cell is None:
            continue
        job_pods = pods_by_job.get(job.uid, [])
        view = cell_outcome(name, uid, cell, spec.objective.metric, job, job_pods, budget_seconds=budgets.get(cell.stage))
        seen.rejections += view.rejections
        if view.look_up:
            seen.look_up.append(job)
        if view.outcome is None and view.running:
            mine = [p for p in job_pods if p.owner_uid == job.uid]
            to_end, why = stuck(mine, now, stuck_grace)
            seen.end += to_end
            wait = next_check(mine, now, stuck_grace)
            if wait is not None and not to_end and not why:
                seen.recheck_after = wait if seen.recheck_after is None else min(seen.recheck_after, wait)
            if why:
                view.outcome, view.running = CellOutcome("failed", reason=why[:REASON_LIMIT]), False
        if view.outcome is not None:  # recorded with what it ran with, from its Job and Pod
            seen.outcomes[cell.key] = with_occupancy(
                view.outcome.model_copy(update={"gpus": job.gpus, "image": job.image, "node": view.node}), job_pods)
        elif view.running:
            seen.running.add(cell.key)
    return seen


def _reconciled(s: Step, **kw: Any) -> Reconciled:
    return Reconciled(status=s.status, events=[(a.type, a.reason, a.message) for a in s.announcements],
                      ladder_status=s.ladder_status if s.stopped is None else None,
                      new_decisions=list(s.new_decisions), **kw)


def _not_admitted(body: dict, old: dict, admission: Admission, now: str) -> Reconciled:
    """Pending, nothing created, the reason in the Admitted condition (controller/admission.py)."""
    status = dict(old)
    message = f"not started: {admission.problem}"[:MESSAGE_LIMIT]
    status.update(phase="Pending", message=message, observedGeneration=body["metadata"].get("generation"))
    prior = old.get("conditions") or []
    status["conditions"] = [c.wire() for c in conditions("Pending", "NotAdmitted", message, prior, now)] + \
        admission_conditions(admission, prior, now)
    said = any(c.get("type") == "Admitted" and c.get("message") == (admission.problem or "")[:MESSAGE_LIMIT] for c in prior)
    return Reconciled(status=status, events=[] if said else [("Warning", "JobInvalid", message)])


def reconcile(body: dict[str, Any], known_status: dict[str, Any] | None, jobs: list[JobSummary],
              pods: list[PodSummary], creating: set[str], now: str,
              stuck_grace: float = STUCK_GRACE_SECONDS, admission: Admission | None = None) -> Reconciled:
    meta = body["metadata"]
    name, uid, generation = meta["name"], meta["uid"], meta.get("generation")
    try:
        ladder = load_ladder(body, source=f"PromotionLadder {name}")
    except LadderInvalid as exc:
        return _reconciled(stop(known_status, INVALID_SPEC, "; ".join(exc.errors), generation, now))
    spec = ladder.spec
    mount_errors = continuation_mount_errors(spec.continuation.path if spec.continuation else None,
                                             spec.trainer.template)
    if mount_errors:  # the cells would each write their checkpoints into their own filesystem
        return _reconciled(stop(known_status, INVALID_SPEC, "; ".join(mount_errors), generation, now))
    old = dict(known_status or {})
    if (admission is not None and admission.problem and old.get("phase") in (None, "Pending")
            and not any(j.owner_uid == uid for j in jobs)):
        return _not_admitted(body, old, admission, now)
    seen = _observe(name, uid, spec, jobs, pods, now, stuck_grace)
    existing = {j.name for j in jobs}
    # A Job that exists (or is being created) is never created again; only the ones being
    # created that the watch has not shown yet count against the parallelism as extra.
    known_names = existing | creating
    root = ladder_root(spec.continuation.path, name) if spec.continuation else None
    # Prune Jobs being created hold no GPU: they do not count against the parallelism.
    not_cells = prune_job_names(name, spec)
    s = step(spec, known_status, seen.outcomes, seen.running, now=now, generation=generation,
             pending_starts=len(creating - existing - not_cells),
             started=lambda cell: cell_job_name(name, cell) in known_names, checkpoint_root=root)
    if s.stopped is not None:
        return _reconciled(s)
    create = [build_job(body, spec, c) for c in s.to_start] + prune_jobs(body, spec, s.ladder_status, known_names)
    pruned = failed_prunes(name, spec, [j for j in jobs if j.owner_uid == uid])
    r = _reconciled(s, create=create, rejections=seen.rejections, spec=spec, look_up=seen.look_up, end=seen.end,
                    recheck_after=seen.recheck_after, failed_prunes=pruned)
    # Admission warnings (no node matches a host block) ride along while the ladder runs.
    if admission is not None and admission.warnings and r.status.get("phase") == "Running":
        prior = old.get("conditions") or []
        r.status["conditions"] = list(r.status.get("conditions") or []) + admission_conditions(
            Admission(warnings=admission.warnings), prior, now)
        if not any(c.get("type") == "Schedulable" for c in prior):
            r.events.append(("Warning", "NoNodeMatches", "; ".join(admission.warnings)[:MESSAGE_LIMIT]))
    return r


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
