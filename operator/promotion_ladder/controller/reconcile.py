"""One reconcile of one ladder, as a pure function: what the cluster shows -> what to write.

    reconcile(ladder body, known status, its Jobs, their Pods, Jobs being created, now)
        -> Reconciled(status to write, Jobs to create, Events, rejected results)

A translator around the core's ladder step (core/step.py): Kubernetes objects in (Jobs and
Pods -> observed cell outcomes and running cells, via intake.py; cells that wait to start, via
scheduling.py), the step, Kubernetes objects out (Job manifests via jobs.py, the status
document, Events). Replay of the recorded status, the merge, the decisions and the status
itself are the step's; nothing is decided here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.api import DEFAULT_SCHEDULING_TIMEOUT, LadderInvalid, LadderSpec, load_ladder
from ..core.attempts import AttemptsSeen
from ..core.cell import CellKey, CellOutcome
from ..core.clock import epoch
from ..core.continuation import ladder_root
from ..core.contract import REASON_LIMIT
from ..core.podtemplate import continuation_mount_errors
from ..core.rules import Decision
from ..core.status import INVALID_SPEC, MESSAGE_LIMIT, LadderStatus, conditions
from ..core.step import Step, step, stop
from .admission import Admission, admission_conditions
from .checkpoints import failed_prunes, prune_job_names, prune_jobs
from .intake import JobSummary, PodSummary, Rejection, cell_outcome, foreign_pod_rejection
from .jobs import build_job, cell_job_name
from .occupancy import with_occupancy
from .queueing import QueueProblem, attempts_seen, lost_by_job, queue_conditions, queue_said
from .scheduling import StartTimes, Wait, cell_wait, next_notice, noticed, start_times, timed_out, waiting_condition
from .stuck import STUCK_GRACE_SECONDS, next_check, stuck

READ_EVENTS_AFTER_SECONDS = 10.0  # a Job without a Pod this long: read its FailedCreate Event


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
    end_jobs: list[JobSummary] = field(default_factory=list)  # Jobs of cells failed for waiting (scheduling.py)
    read_events: list[JobSummary] = field(default_factory=list)  # Jobs without a Pod: read their FailedCreate
    start_times: list[tuple[str, StartTimes]] = field(default_factory=list)  # (Job UID, ...) of cells not recorded


@dataclass(frozen=True)
class Context:
    """What the reconciler knows besides the Jobs and Pods: the FailedCreate messages of Jobs
    without a Pod (by Job UID), the host blocks no node can hold (admission.unfit_blocks), and
    the last views of the ladder's deleted Pods with when each was deleted (queueing.LostPods)."""

    failed_create: Mapping[str, str] = field(default_factory=dict)
    unfit: Mapping[str, str] = field(default_factory=dict)
    deleted: tuple[tuple[PodSummary, float], ...] = ()


@dataclass
class Observed:
    """What the ladder's Jobs and Pods show, and what the reconciler must do about missing,
    stuck or waiting evidence."""

    outcomes: dict[CellKey, CellOutcome] = field(default_factory=dict)
    running: set[CellKey] = field(default_factory=set)
    rejections: list[Rejection] = field(default_factory=list)
    look_up: list[JobSummary] = field(default_factory=list)
    end: list[PodSummary] = field(default_factory=list)
    recheck_after: float | None = None
    waits: list[Wait] = field(default_factory=list)
    end_jobs: list[JobSummary] = field(default_factory=list)
    read_events: list[JobSummary] = field(default_factory=list)
    start_times: list[tuple[str, StartTimes]] = field(default_factory=list)
    queued: set[CellKey] = field(default_factory=set)  # running cells a batch queue holds (queueing.py)
    attempts: dict[CellKey, AttemptsSeen] = field(default_factory=dict)

    def look_again(self, seconds: float | None) -> None:
        if seconds is not None:
            self.recheck_after = seconds if self.recheck_after is None else min(self.recheck_after, seconds)


def _group(jobs: list[JobSummary], pods: list[PodSummary]) -> tuple[dict[str, list[PodSummary]], list[Rejection]]:
    """The Pods that claim each Job (by owner or by the Job controller's label; intake decides
    whether they are the Job's own), and rejections of result-carrying Pods that claim none."""
    by_uid = {j.uid for j in jobs}
    by_job: dict[str, list[PodSummary]] = {}
    foreign: list[Rejection] = []
    for p in pods:
        claimed = {u for u in (p.owner_uid, p.job_uid_label) if u in by_uid}
        for u in claimed:
            by_job.setdefault(u, []).append(p)
        if not claimed and (r := foreign_pod_rejection(p)) is not None:
            foreign.append(r)
    return by_job, foreign


def _observe(
    name: str,
    uid: str,
    spec: LadderSpec,
    jobs: list[JobSummary],
    pods: list[PodSummary],
    now: str,
    stuck_grace: float,
    ctx: Context,
    recorded: set[CellKey],
) -> Observed:
    """The cells' outcomes, running, queued and waiting cells as the ladder's Jobs and Pods show them."""
    pods_by_job, foreign = _group(jobs, pods)
    seen = Observed(rejections=foreign)
    budgets = {st.name: st.budget_seconds for st in spec.stages}
    t = epoch(now) or 0.0
    lost = lost_by_job(jobs, ctx.deleted)
    for job in jobs:
        cell = job.cell
        if job.owner_uid != uid or cell is None:
            continue
        seen.attempts[cell.key] = attempts_seen(job, lost.get(job.uid, ()))
        job_pods = pods_by_job.get(job.uid, [])
        view = cell_outcome(
            name, uid, cell, spec.objective.metric, job, job_pods, budget_seconds=budgets.get(cell.stage)
        )
        seen.rejections += view.rejections
        if view.look_up:
            seen.look_up.append(job)
        if view.outcome is None and view.running:
            to_end, why = stuck(view.pods, now, stuck_grace)
            seen.end += to_end
            if not to_end and not why:
                seen.look_again(next_check(view.pods, now, stuck_grace))
            failed = (
                CellOutcome("failed", reason=why[:REASON_LIMIT]) if why else _wait(seen, spec, job, view.pods, t, ctx)
            )
            if failed is not None:
                view.outcome, view.running = failed, False
        if cell.key not in recorded and (times := start_times(job, view.pods)) is not None:
            seen.start_times.append((job.uid, times))
        if view.outcome is not None:  # recorded with what it ran with, from its Job and Pod
            seen.outcomes[cell.key] = with_occupancy(
                view.outcome.model_copy(update={"gpus": job.gpus, "image": job.image, "node": view.node}), view.pods
            )
        elif view.running:
            seen.running.add(cell.key)
            if job.suspended:
                seen.queued.add(cell.key)
    seen.look_again(next_notice(seen.waits, t, spec.scheduling_timeout_seconds))
    return seen


def _wait(
    seen: Observed, spec: LadderSpec, job: JobSummary, pods: list[PodSummary], now: float, ctx: Context
) -> CellOutcome | None:
    """A cell that has not started: does it wait on something (into `seen.waits`), and has it
    waited too long (its failure; its Job into `seen.end_jobs`)?"""
    cell = job.cell
    if cell is None:
        return None
    if (
        not pods
        and not job.active
        and not job.finished
        and not job.suspended
        and job.uid not in ctx.failed_create
        and job.created_at is not None
    ):
        age = now - job.created_at
        if age >= READ_EVENTS_AFTER_SECONDS:
            seen.read_events.append(job)
        else:  # read its Events before the wait is named, so it is named with its cause
            seen.look_again(READ_EVENTS_AFTER_SECONDS - age)
    w = cell_wait(cell, job, pods, now, ctx.failed_create.get(job.uid), ctx.unfit.get(cell.host_block))
    if w is None:
        return None
    failed = timed_out(w, spec.scheduling_timeout or DEFAULT_SCHEDULING_TIMEOUT, spec.scheduling_timeout_seconds, now)
    if failed is None:
        seen.waits.append(w)
    else:
        seen.end_jobs.append(job)
    return failed


def _recorded_cells(status: Mapping[str, Any] | None) -> set[CellKey]:
    """The cells the status already records as finished (wire form, read without parsing it all)."""
    out: set[CellKey] = set()
    for st in (status or {}).get("stages") or []:
        for c in st.get("cells") or []:
            if c.get("state") in ("Succeeded", "Failed"):
                out.add(CellKey(st.get("name"), c.get("candidate"), c.get("hostBlock"), c.get("seed")))
    return out


def _reconciled(s: Step, **kw: Any) -> Reconciled:
    return Reconciled(
        status=s.status,
        events=[(a.type, a.reason, a.message) for a in s.announcements],
        ladder_status=s.ladder_status if s.stopped is None else None,
        new_decisions=list(s.new_decisions),
        **kw,
    )


def _not_admitted(body: dict, old: dict, admission: Admission, now: str) -> Reconciled:
    """Pending, nothing created, the reason in the Admitted condition (controller/admission.py)."""
    status = dict(old)
    message = f"not started: {admission.problem}"[:MESSAGE_LIMIT]
    status.update(phase="Pending", message=message, observedGeneration=body["metadata"].get("generation"))
    prior = old.get("conditions") or []
    status["conditions"] = [
        c.wire() for c in conditions("Pending", "NotAdmitted", message, prior, now)
    ] + admission_conditions(admission, prior, now)
    said = any(
        c.get("type") == "Admitted" and c.get("message") == (admission.problem or "")[:MESSAGE_LIMIT] for c in prior
    )
    return Reconciled(status=status, events=[] if said else [("Warning", "JobInvalid", message)])


def reconcile(
    body: dict[str, Any],
    known_status: dict[str, Any] | None,
    jobs: list[JobSummary],
    pods: list[PodSummary],
    creating: set[str],
    now: str,
    stuck_grace: float = STUCK_GRACE_SECONDS,
    admission: Admission | None = None,
    failed_create: Mapping[str, str] | None = None,
    deleted: Iterable[tuple[PodSummary, float]] = (),
    queue: QueueProblem | None = None,
) -> Reconciled:
    meta = body["metadata"]
    name, uid, generation = meta["name"], meta["uid"], meta.get("generation")
    spec, errors = _checked_spec(body, name)
    if spec is None:
        return _reconciled(stop(known_status, INVALID_SPEC, "; ".join(errors), generation, now))
    old = dict(known_status or {})
    if (
        admission is not None
        and admission.problem
        and old.get("phase") in (None, "Pending")
        and not any(j.owner_uid == uid for j in jobs)
    ):
        return _not_admitted(body, old, admission, now)
    ctx = Context(
        failed_create=failed_create or {},
        unfit=admission.unfit if admission is not None else {},
        deleted=tuple(deleted),
    )
    seen = _observe(name, uid, spec, jobs, pods, now, stuck_grace, ctx, _recorded_cells(known_status))
    existing = {j.name for j in jobs}
    # A Job that exists (or is being created) is never created again; only the ones being
    # created that the watch has not shown yet count against the parallelism as extra.
    known_names = existing | creating
    root = ladder_root(spec.continuation.path, name) if spec.continuation else None
    # Prune Jobs being created hold no GPU: they do not count against the parallelism.
    not_cells = prune_job_names(name, spec)
    s = step(
        spec,
        known_status,
        seen.outcomes,
        seen.running,
        now=now,
        generation=generation,
        pending_starts=len(creating - existing - not_cells),
        started=lambda cell: cell_job_name(name, cell) in known_names,
        checkpoint_root=root,
        queued=seen.queued,
        attempts=seen.attempts,
    )
    if s.stopped is not None:
        return _reconciled(s)
    create = [build_job(body, spec, c) for c in s.to_start] + prune_jobs(body, spec, s.ladder_status, known_names)
    pruned = failed_prunes(name, spec, [j for j in jobs if j.owner_uid == uid])
    r = _reconciled(
        s,
        create=create,
        rejections=seen.rejections,
        spec=spec,
        look_up=seen.look_up,
        end=seen.end,
        recheck_after=seen.recheck_after,
        failed_prunes=pruned,
        end_jobs=seen.end_jobs,
        read_events=seen.read_events,
        start_times=seen.start_times,
    )
    prior = old.get("conditions") or []
    running = r.status.get("phase") == "Running"
    if admission is not None and running:
        _with_admission_warnings(r, admission, prior, now)
    waits = noticed(seen.waits, epoch(now) or 0.0) if running else []
    _with_waiting(r, waits, prior, now, spec.scheduling_timeout or DEFAULT_SCHEDULING_TIMEOUT)
    if queue is not None and running:
        _with_queue_problem(r, queue, prior, now)
    return r


def _checked_spec(body: dict[str, Any], name: str) -> tuple[LadderSpec | None, list[str]]:
    """The ladder's spec, or None and why it cannot run: it does not validate, or its cells would
    each write their checkpoints into their own filesystem."""
    try:
        spec = load_ladder(body, source=f"PromotionLadder {name}").spec
    except LadderInvalid as exc:
        return None, list(exc.errors)
    mount_errors = continuation_mount_errors(
        spec.continuation.path if spec.continuation else None, spec.trainer.template
    )
    if mount_errors:
        return None, list(mount_errors)
    return spec, []


def _with_admission_warnings(r: Reconciled, admission: Admission, prior: list[dict[str, Any]], now: str) -> None:
    """Admission warnings (no node matches or fits a host block) ride along while the ladder runs:
    their condition and, the first time, a Warning Event."""
    if not (admission.warnings or admission.unfit):
        return
    r.status["conditions"] = list(r.status.get("conditions") or []) + admission_conditions(
        Admission(warnings=admission.warnings, unfit=admission.unfit), prior, now
    )
    if not any(c.get("type") == "Schedulable" for c in prior):
        reason = "NoNodeMatches" if admission.warnings else "NoNodeFits"
        r.events.append(
            ("Warning", reason, "; ".join([*admission.warnings, *admission.unfit.values()])[:MESSAGE_LIMIT])
        )


def _with_waiting(r: Reconciled, waits: list[Wait], prior: list[dict[str, Any]], now: str, timeout: str) -> None:
    """The condition (and Event) of cells waiting to start (scheduling.waiting_condition): set
    while some wait, cleared when none does."""
    cond, event = waiting_condition(waits, prior, now, timeout)
    if cond is not None:
        r.status["conditions"] = list(r.status.get("conditions") or []) + [cond]
    if event is not None:
        r.events.append(event)


def _with_queue_problem(r: Reconciled, problem: QueueProblem, prior: list[dict[str, Any]], now: str) -> None:
    """A queue that cannot admit the cells: a QueueAdmissible=False condition and, once per
    problem, a Warning Event naming the queue (queueing.py)."""
    r.status["conditions"] = list(r.status.get("conditions") or []) + queue_conditions(problem, prior, now)
    if not queue_said(problem, prior):
        r.events.append(("Warning", problem.reason, problem.message[:MESSAGE_LIMIT]))


def merge_known_status(
    from_body: dict | None, written: dict | None, body_version: str | None = None, written_version: str | None = None
) -> dict:
    """The newest record: our last write and the watched body can arrive in either order.
    Recorded outcomes and decisions only grow, so the one that recorded more wins; on a tie the
    higher resourceVersion (so an edit of the status by someone else is seen), else our write."""
    a, b = from_body or {}, written or {}
    if not b:
        return dict(a)

    def weight(s: dict) -> tuple[int, int]:
        stages = s.get("stages") or []
        return (
            sum(1 for st in stages if st.get("decision")),
            sum(1 for st in stages for c in st.get("cells") or [] if c.get("state") in ("Succeeded", "Failed")),
        )

    wa, wb = weight(a), weight(b)
    if wa != wb:
        return dict(a) if wa > wb else dict(b)
    try:
        newer_body = int(body_version or 0) > int(written_version or 0)
    except ValueError:
        newer_body = False
    return dict(a) if newer_body else dict(b)
