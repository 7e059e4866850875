"""Cells that wait instead of running: named within a bound, then a documented policy (pure).

A cell's Pod can wait for ever while nobody but the scheduler or the Job controller says a word:
  * FailedCreate: its Job cannot create the Pod (a PriorityClass that does not exist, a quota, an
    admission webhook). There is no Pod at all; the only trace is the Job controller's FailedCreate
    Event on the Job, which the reconciler reads for a Job without a Pod (waits.py) (`failed_create`);
  * Unschedulable: the scheduler cannot place the Pod (more GPUs or CPU than any node has, a
    PersistentVolumeClaim that does not exist, a taint): PodScheduled=False, reason Unschedulable;
  * CannotStart: the Pod is bound but its container is not created (ImagePullBackOff,
    CreateContainerConfigError, ...: intake.CANNOT_START_REASONS).
Some waits end by themselves, and a cell then simply waits its turn ("capacity"):
  * the scheduler reports only shortages (`Insufficient <resource>`, `Too many pods`; nodes of other
    host blocks, `didn't match Pod's node affinity/selector`, aside) and an empty node of the host
    block would hold the cell (admission.unfit_blocks says which host blocks no node can hold);
  * the Job cannot create the Pod because a ResourceQuota is used up (`exceeded quota`);
  * the Job has made no Pod yet and says nothing (the Job controller is behind: NoPodYet);
  * a suspended Job (a queue such as Kueue holds it) does not wait here at all.

The policy:
  * every cell that has waited WAIT_NOTICE_SECONDS is said in the ladder's condition CellsWaiting
    (True; reason: the cause of the first stalled cell, which it names with the next ones, else
    WaitingForCapacity, saying what the cells wait for), with an Event when the condition turns
    True or its reason changes; a ladder whose cells waited keeps the condition, False, once none does;
  * a cell that waits for capacity waits as long as that takes (a ladder larger than its cluster
    queues); any other wait fails the cell once it has lasted `spec.schedulingTimeout` (default
    DEFAULT_SCHEDULING_TIMEOUT; "0s" never fails), and its Job is deleted so that a Pod placed
    later does not run for nothing.
How long each stage of a cell's start took (`start_times`) feeds the latency histograms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..core import clock
from ..core.cell import Cell, CellOutcome
from ..core.contract import REASON_LIMIT
from ..core.status import MESSAGE_LIMIT
from .intake import CANNOT_START_REASONS, JobSummary, PodSummary

WAIT_NOTICE_SECONDS = 30.0  # a wait this old is named; with a look at least this often, within 60 s
CELLS_WAITING = "CellsWaiting"
NAMED_CELLS = 5  # cells named in the condition's message; the rest are counted

FAILED_CREATE = "FailedCreate"
UNSCHEDULABLE = "Unschedulable"
CANNOT_START = "CannotStart"
NO_POD_YET = "NoPodYet"
CAPACITY = "WaitingForCapacity"  # the condition's reason when every named cell waits for capacity

# "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.
#  preemption: ..." (kube-scheduler's FitError). Only the part before "preemption:" is the fit.
_FIT = re.compile(r"nodes are available: (?P<reasons>.*?)(?:\. preemption:|\.?$)", re.DOTALL)
_SHORTAGE = re.compile(r"^(\d+ )?(Insufficient \S+|Too many pods)$")
_OTHER_NODES = re.compile(r"^(\d+ )?node\(s\) didn't match Pod's node affinity/selector$")


@dataclass(frozen=True)
class Wait:
    cell: Cell
    job: JobSummary
    cause: str  # FAILED_CREATE, UNSCHEDULABLE, CANNOT_START, NO_POD_YET
    message: str
    since: float  # epoch seconds: when this wait began
    capacity: bool  # it ends by itself when capacity frees up: no timeout

    def describe(self) -> str:
        c = self.cell
        return f"{c.stage}/{c.candidate}/{c.host_block}/{c.seed}: {self.cause} since {_iso(self.since)}: {self.message}"


@dataclass(frozen=True)
class StartTimes:
    """Seconds from a cell's Job creation to its first Pod created (the Job controller), to that
    Pod bound to a node (+ the scheduler and free capacity), and from bound to running (the
    kubelet: image pull, volumes, container creation)."""

    pod_created: float | None
    scheduled: float
    running: float


def _iso(t: float) -> str:
    return clock.iso(datetime.fromtimestamp(t, UTC))


def shortage_only(message: str) -> bool:
    """Does the scheduler's message name only resource shortages (see the module docstring)?"""
    m = _FIT.search(message or "")
    if m is None:
        return False
    reasons = [r.strip() for r in m.group("reasons").split(", ") if r.strip()]
    shortages = [r for r in reasons if _SHORTAGE.match(r)]
    return bool(shortages) and all(_SHORTAGE.match(r) or _OTHER_NODES.match(r) for r in reasons)


def cell_wait(
    cell: Cell,
    job: JobSummary,
    pods: Sequence[PodSummary],
    now: float,
    failed_create: str | None = None,
    unfit: str | None = None,
) -> Wait | None:
    """Why a cell's Job has no running Pod, when it waits on something (None: it does not).
    `pods`: the Job's own Pods; `failed_create`: the message of its FailedCreate Event;
    `unfit`: why no empty node of the cell's host block could hold it."""
    if job.finished or job.suspended or job.created_at is None:
        return None
    alive = [p for p in pods if not p.terminal and not p.deleting]
    if any(p.running_at is not None or p.phase == "Running" for p in alive):
        return None
    if not pods:
        if job.active:
            return None  # the Pod exists; the cache has not shown it yet
        if failed_create:
            return Wait(cell, job, FAILED_CREATE, failed_create, job.created_at, "exceeded quota" in failed_create)
        return Wait(cell, job, NO_POD_YET, "its Job has created no Pod yet", job.created_at, True)
    for p in alive:
        if p.unschedulable is not None:
            capacity = unfit is None and shortage_only(p.unschedulable)
            message = p.unschedulable if unfit is None else f"{p.unschedulable} ({unfit})"
            since = p.unschedulable_since or p.created_at or job.created_at
            return Wait(cell, job, UNSCHEDULABLE, f"pod {p.name}: {message}", since, capacity)
        if p.waiting_reason in CANNOT_START_REASONS:
            since = p.bound_at or p.created_at or job.created_at
            return Wait(
                cell,
                job,
                CANNOT_START,
                f"pod {p.name}: {p.waiting_reason}: {p.waiting_message}".rstrip(": "),
                since,
                False,
            )
    return None


def timed_out(wait: Wait, timeout: str, timeout_seconds: float | None, now: float) -> CellOutcome | None:
    """The cell's failure once a wait that is not for capacity has lasted the timeout."""
    if wait.capacity or not timeout_seconds or now - wait.since < timeout_seconds:
        return None
    reason = f"not started within schedulingTimeout {timeout}: {wait.cause}: {wait.message}"
    return CellOutcome("failed", reason=reason[:REASON_LIMIT])


def noticed(waits: Iterable[Wait], now: float) -> list[Wait]:
    """The waits old enough to be named, stalls first, then in cell order."""
    old = [w for w in waits if now - w.since >= WAIT_NOTICE_SECONDS]
    return sorted(old, key=lambda w: w.capacity)


def next_notice(waits: Iterable[Wait], now: float, timeout_seconds: float | None) -> float | None:
    """Seconds until a wait is old enough to be named or to time out: look again then."""
    times = []
    for w in waits:
        age = now - w.since
        if age < WAIT_NOTICE_SECONDS:
            times.append(WAIT_NOTICE_SECONDS - age)
        elif not w.capacity and timeout_seconds and age < timeout_seconds:
            times.append(timeout_seconds - age)
    return min(times) if times else None


def waiting_condition(
    waits: Sequence[Wait], old: Sequence[dict[str, Any]], now: str, timeout: str
) -> tuple[dict[str, Any] | None, tuple[str, str, str] | None]:
    """The CellsWaiting condition (None: the ladder never had one) and the Event that goes with
    it (None: nothing new to say). `waits`: the noticed waits, stalls first.

    Stalled cells are named (the first NAMED_CELLS, the rest counted); cells that wait their turn
    are only said to, by what they wait for: in a ladder larger than its cluster hundreds of
    them come and go, and a message that changed with each would rewrite the status for nothing."""
    prev = next((c for c in old if c.get("type") == CELLS_WAITING), None)
    if not waits:
        if prev is None:
            return None, None
        return _condition(False, "NoneWaiting", "no cell waits", prev, now), None
    stalls = [w for w in waits if not w.capacity]
    turns = sorted({_turn(w) for w in waits if w.capacity})
    queued = f"Cells wait their turn ({'; '.join(turns)}): no timeout applies." if turns else ""
    if stalls:
        reason = stalls[0].cause
        shown = "; ".join(w.describe() for w in stalls[:NAMED_CELLS])
        more = f"; and {len(stalls) - NAMED_CELLS} more" if len(stalls) > NAMED_CELLS else ""
        counted = f"{len(stalls)} cells wait" if len(stalls) > 1 else "1 cell waits"
        policy = f" A cell that waits for anything but its turn fails after schedulingTimeout ({timeout})."
        tail = policy + (f" {queued}" if queued else "")
        message = f"{counted}: {shown}{more}."[: MESSAGE_LIMIT - len(tail)] + tail
    else:
        reason, message = CAPACITY, queued
    cond = _condition(True, reason, message, prev, now)
    said = prev is not None and prev.get("status") == "True" and prev.get("reason") == reason
    event = None if said else ("Warning" if stalls else "Normal", CELLS_WAITING, message)
    return cond, event


_TURNS = {UNSCHEDULABLE: "free room on the nodes", NO_POD_YET: "the Job controller", FAILED_CREATE: "a ResourceQuota"}


def _turn(w: Wait) -> str:
    """What a cell waiting its turn waits for, in words that do not change while it waits."""
    if w.cause == UNSCHEDULABLE:
        m = _FIT.search(w.message)
        matches = [_SHORTAGE.match(r.strip()) for r in (m.group("reasons").split(", ") if m else [])]
        short = sorted({x.group(2) for x in matches if x is not None})
        return _TURNS[UNSCHEDULABLE] + (f": {', '.join(short)}" if short else "")
    return _TURNS.get(w.cause, w.cause)


def _condition(status: bool, reason: str, message: str, prev: dict[str, Any] | None, now: str) -> dict[str, Any]:
    s = "True" if status else "False"
    since = (prev or {}).get("lastTransitionTime") if (prev or {}).get("status") == s else None
    return {
        "type": CELLS_WAITING,
        "status": s,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "lastTransitionTime": since or now,
    }


def start_times(job: JobSummary, pods: Sequence[PodSummary]) -> StartTimes | None:
    """How long the cell's first Pod took to be made, placed and started (None until it runs).
    Counted from the Job's creation, or from its last admission by a batch queue (Kueue resumes
    a suspended Job): the wait in the queue is ladder_cell_queue_seconds, not a start."""
    origin = job.resumed_at if job.resumed_at is not None else job.created_at
    if origin is None:
        return None
    started = sorted(
        (p.created_at or 0.0, p.name, p.created_at, p.bound_at, p.running_at)
        for p in pods
        if p.bound_at is not None and p.running_at is not None
    )
    if not started:
        return None
    _, _, created, bound, running = started[0]  # the cell's first Pod that ran
    return StartTimes(
        pod_created=None if created is None else max(0.0, created - origin),
        scheduled=max(0.0, (bound or 0.0) - origin),
        running=max(0.0, (running or 0.0) - (bound or 0.0)),
    )
