"""One reconcile of one ladder, as a pure function: what the cluster shows -> what to write.

    reconcile(ladder body, known status, its Jobs, their Pods, Jobs being created, now)
        -> Reconciled(status to write, Jobs to create, Events, rejected results)

The handlers do the I/O around it (handlers.py). All decisions come from the core planner;
this module only gathers outcomes and turns the plan into Kubernetes objects.

The durable record is the status: outcomes recorded in status.stages[].cells and decisions
recorded in status.stages[].decision are final and win over anything observed later, so a
restarted operator (or one whose Jobs were cleaned up) re-decides nothing differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.api import LadderInvalid, LadderSpec, frozen_hash, load_ladder
from ..core.planner import PlanError
from ..core.rules import Decision, Outcome
from ..core.status import LadderStatus, build_status, decisions_from_status, outcomes_from_status, parse_status
from .intake import JobSummary, PodSummary, Rejection, cell_outcome, foreign_pod_rejection
from .jobs import build_job, cell_job_name
from .occupancy import with_occupancy

CellKey = tuple[str, str, str, int]


@dataclass
class Reconciled:
    status: dict[str, Any]  # the full status document to write (wire form)
    create: list[dict[str, Any]] = field(default_factory=list)  # Job manifests
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    rejections: list[Rejection] = field(default_factory=list)
    spec: LadderSpec | None = None
    ladder_status: LadderStatus | None = None
    new_decisions: list[Decision] = field(default_factory=list)


def _condition(type_: str, status: bool, reason: str, message: str, old: list[dict], now: str) -> dict[str, Any]:
    s = "True" if status else "False"
    prev = next((c for c in old if c.get("type") == type_), None)
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == s and prev.get("lastTransitionTime") else now
    return {"type": type_, "status": s, "reason": reason, "message": message[:1024], "lastTransitionTime": since}


def conditions(phase: str, reason: str, message: str, old: list[dict], now: str) -> list[dict[str, Any]]:
    """Progressing / Complete / Failed, each always present (True for exactly one, or none while Pending)."""
    return [
        _condition("Progressing", phase == "Running", reason if phase == "Running" else phase, message if phase == "Running" else "", old, now),
        _condition("Complete", phase == "Succeeded", reason if phase == "Succeeded" else "NotComplete", message if phase == "Succeeded" else "", old, now),
        _condition("Failed", phase == "Failed", reason if phase == "Failed" else "NotFailed", message if phase == "Failed" else "", old, now),
    ]


def _stopped(body: dict, old: dict, reason: str, message: str, now: str) -> Reconciled:
    """Failed, keeping whatever was recorded; nothing is created."""
    status = dict(old)
    status.update(phase="Failed", message=message[:1024], observedGeneration=body["metadata"].get("generation"))
    status["conditions"] = conditions("Failed", reason, message, old.get("conditions") or [], now)
    events = [] if old.get("phase") == "Failed" and _reason(old) == reason else [("Warning", reason, message[:1024])]
    return Reconciled(status=status, events=events)


def _reason(status: dict) -> str | None:
    return next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Failed"), None)


def decision_message(d: Decision) -> str:
    rule = d.rule
    how = f"top {rule.top} by {rule.aggregate}" if rule.top is not None else f"final ranking by {rule.aggregate}"
    if rule.within is not None:
        how += f", within {rule.within}"
    if rule.keep:
        how += f", keep {', '.join(rule.keep)}"
    best = ", ".join(f"{e.candidate}={e.aggregate:.4g}" for e in d.ranking[:3] if e.aggregate is not None)
    if rule.top is None:  # the last stage promotes nobody: its ranking feeds the verdict
        return f"stage {d.stage}: {how} over {len(d.cells)} cells; best {best or 'n/a'}"[:1024]
    promoted = ", ".join(d.promoted) if d.promoted else "none"
    return f"stage {d.stage}: promoted {promoted} ({how} over {len(d.cells)} cells; best {best or 'n/a'})"[:1024]


def reconcile(body: dict[str, Any], known_status: dict[str, Any] | None, jobs: list[JobSummary],
              pods: list[PodSummary], creating: set[str], now: str) -> Reconciled:
    meta = body["metadata"]
    name, uid = meta["name"], meta["uid"]
    old = dict(known_status or {})
    try:
        ladder = load_ladder(body, source=f"PromotionLadder {name}")
    except LadderInvalid as exc:
        return _stopped(body, old, "InvalidSpec", "; ".join(exc.errors), now)
    spec = ladder.spec
    recorded_hash = old.get("frozenHash")
    if recorded_hash and recorded_hash != frozen_hash(spec):
        return _stopped(body, old, "FrozenSpecChanged",
                        "the frozen fields (objective, candidates, stages, verdict) changed after admission "
                        f"(recorded {recorded_hash[:19]}, now {frozen_hash(spec)[:19]}); nothing more is run. "
                        "Create a new ladder to screen the new spec.", now)
    try:
        recorded_status = parse_status(old)
    except ValueError as exc:
        return _stopped(body, old, "StatusUnreadable", f"the recorded status cannot be read: {exc}", now)
    recorded = outcomes_from_status(recorded_status)
    decisions = decisions_from_status(recorded_status)

    owned = [j for j in jobs if j.owner_uid == uid]
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
    observed: dict[CellKey, Outcome] = {}
    running: set[CellKey] = set()
    for job in owned:
        cell = job.cell
        if cell is None or cell.key in recorded:
            continue
        view = cell_outcome(name, uid, cell, spec.objective.metric, job, pods_by_job.get(job.uid, []))
        rejections += view.rejections
        if view.outcome is not None:
            observed[cell.key] = with_occupancy(view.outcome, pods_by_job.get(job.uid, []))
        elif view.running:
            running.add(cell.key)
    outcomes = {**observed, **recorded}  # recorded outcomes are final
    try:
        status, plan = build_status(spec, outcomes, decisions, running=frozenset(running))
    except PlanError as exc:
        return _stopped(body, old, "RecordedDecisionsMismatch", str(exc), now)

    create: list[dict[str, Any]] = []
    if plan.to_run:
        existing = {j.name for j in jobs} | creating
        active = len(running) + len([n for n in creating if n not in {j.name for j in jobs}])
        slots = (spec.parallelism - active) if spec.parallelism else len(plan.to_run)
        for cell in plan.to_run:
            if slots <= 0:
                break
            if cell_job_name(name, cell) in existing or cell.key in running:
                continue
            create.append(build_job(body, spec, cell))
            slots -= 1

    wire = status.wire()
    wire["observedGeneration"] = meta.get("generation")
    wire["frozenHash"] = recorded_hash or wire.get("frozenHash")
    reason = {"Running": "StageRunning", "Succeeded": "VerdictReached", "Failed": "NoCandidateCompleted"}[status.phase]
    wire["conditions"] = conditions(status.phase, reason, status.message, old.get("conditions") or [], now)

    events: list[tuple[str, str, str]] = [("Normal", "StageDecided", decision_message(d)) for d in plan.new_decisions]
    if status.phase != old.get("phase"):
        if status.phase == "Succeeded":
            events.append(("Normal", "LadderSucceeded", status.message))
        elif status.phase == "Failed":
            events.append(("Warning", "LadderFailed", status.message))
    return Reconciled(status=wire, create=create, events=events, rejections=rejections, spec=spec,
                      ladder_status=status, new_decisions=list(plan.new_decisions))


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
