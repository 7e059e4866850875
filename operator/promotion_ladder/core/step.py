"""One ladder step, pure: what is recorded and observed now -> what to record, start and announce.

    step(spec, recorded status, observed outcomes, running cells, ...) -> Step
        (new status, cells to start, new decisions, announcements)

Both adapters are translators around it: the operator (controller/reconcile.py) turns Jobs and
Pods into observed outcomes and running cells, and the result into a status write, Events and
Job manifests; `ladder run` (local/runner.py) does the same with local processes and a status
file. Neither replays, merges, ranks or decides on its own.

The steps, in order:
  1. The frozen hash: a recorded status written for other frozen fields stops the ladder
     (FrozenSpecChanged) and keeps the record.
  2. Replay: the recorded status is read back (StatusUnreadable when it cannot be); its
     outcomes and decisions are final and win over anything observed.
  3. Merge: observed outcomes fill only cells without a recorded one.
  4. Decide: the planner decides every stage whose cells are all terminal (core/planner.py,
     core/rules.py); recorded decisions that do not fit the spec stop the ladder
     (RecordedDecisionsMismatch).
  5. Start: cells of the current stage that are neither running nor started, up to the
     ladder's parallelism and the adapter's capacity.
  6. Status and announcements: the typed status with its conditions, and the messages that
     announce what this status records (a decision, the ladder's end, a stop). An adapter
     announces them only once the status that records them is written.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .api import LadderSpec, frozen_hash, frozen_hash_matches
from .attempts import AttemptsSeen, advance_all, with_lost_occupancy
from .cell import Cell, CellKey, CellOutcome
from .planner import PlanError
from .rules import Decision
from .status import (
    FROZEN_SPEC_CHANGED,
    MESSAGE_LIMIT,
    PHASE_REASONS,
    RECORDED_DECISIONS_MISMATCH,
    STATUS_UNREADABLE,
    LadderStatus,
    attempts_from_status,
    build_status,
    conditions,
    decisions_from_status,
    failed_reason,
    outcomes_from_status,
    parse_status,
    stopped_status,
)
from .wording import decision_message


@dataclass(frozen=True)
class Announcement:
    """A message that goes with a status change (a Kubernetes Event; a console line locally)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Step:
    status: dict[str, Any]  # the status document to record (wire form)
    ladder_status: LadderStatus | None = None  # typed; None when stopped on an unreadable record
    to_start: list[Cell] = field(default_factory=list)
    new_decisions: list[Decision] = field(default_factory=list)
    announcements: list[Announcement] = field(default_factory=list)
    stopped: str | None = None  # one of status.STOPPED_REASONS when the ladder stopped

    @property
    def phase(self) -> str:
        return self.status.get("phase") or "Pending"


def stop(recorded: Mapping[str, Any] | None, reason: str, message: str, generation: int | None, now: str) -> Step:
    """The ladder stops (status.STOPPED_REASONS); announced once, not again while it stays stopped
    for the same reason. Public for adapters that stop before a spec exists (InvalidSpec)."""
    old = dict(recorded or {})
    status = stopped_status(old, reason, message, generation, now)
    same = old.get("phase") == "Failed" and failed_reason(old) == reason
    try:
        typed = parse_status(status)
    except ValueError:
        typed = None
    return Step(
        status=status,
        ladder_status=typed,
        stopped=reason,
        announcements=[] if same else [Announcement("Warning", reason, message[:MESSAGE_LIMIT])],
    )


def _to_start(
    spec: LadderSpec,
    to_run: list[Cell],
    running: Collection[CellKey],
    pending_starts: int,
    capacity: int | None,
    started: Callable[[Cell], bool],
) -> list[Cell]:
    busy = len(running) + pending_starts
    limits = [n for n in (spec.parallelism, capacity) if n]
    slots = min(limits) - busy if limits else len(to_run)
    out: list[Cell] = []
    for cell in to_run:
        if len(out) >= slots:
            break
        if cell.key in running or started(cell):
            continue
        out.append(cell)
    return out


def step(
    spec: LadderSpec,
    recorded: Mapping[str, Any] | LadderStatus | None,
    observed: Mapping[CellKey, CellOutcome],
    running: Collection[CellKey],
    *,
    now: str,
    generation: int | None = None,
    capacity: int | None = None,
    pending_starts: int = 0,
    started: Callable[[Cell], bool] = lambda cell: False,
    checkpoint_root: str | None = None,
    queued: Collection[CellKey] = (),
    attempts: Mapping[CellKey, AttemptsSeen] | None = None,
) -> Step:
    """One step of a ladder.

    recorded: the status recorded so far (wire form or typed; None for a new ladder).
    observed: outcomes of cells that ended since (recorded outcomes win over these).
    running: cells executing now (shown Running; they count against the parallelism).
    capacity: the adapter's own limit on cells at once (free GPUs), besides spec.parallelism.
    pending_starts: starts asked for that are not visible yet (they count as running).
    started: cells that already have their Job/process and must not be started again.
    checkpoint_root: the ladder's checkpoint folder, for a ladder that continues (status.checkpoints).
    queued: running cells that a batch queue holds back (shown Queued; they still count against
        the parallelism: their Jobs exist).
    attempts: what the adapter sees of cells' queue waits and lost attempts, folded into the
        recorded ones (core/attempts.py; recorded cells keep theirs).
    """
    old = recorded.wire() if isinstance(recorded, LadderStatus) else dict(recorded or {})
    # 1. frozen hash
    changed = _frozen_spec_changed(spec, old, generation, now)
    if changed is not None:
        return changed
    # 2. replay
    try:
        typed_old = recorded if isinstance(recorded, LadderStatus) else parse_status(old)
    except ValueError as exc:
        return stop(old, STATUS_UNREADABLE, f"the recorded status cannot be read: {exc}", generation, now)
    recorded_outcomes = outcomes_from_status(typed_old)
    decisions = decisions_from_status(typed_old)
    # 3. merge: recorded outcomes are final
    outcomes = {**{k: v for k, v in observed.items() if k not in recorded_outcomes}, **recorded_outcomes}
    live = frozenset(k for k in running if k not in outcomes)
    cell_attempts = advance_all(attempts_from_status(typed_old), attempts or {}, recorded_outcomes.keys())
    outcomes = with_lost_occupancy(outcomes, cell_attempts, recorded_outcomes.keys())
    # 4. decide
    try:
        status, plan = build_status(
            spec,
            outcomes,
            decisions,
            running=live,
            checkpoint_root=checkpoint_root,
            queued=frozenset(k for k in queued if k in live),
            attempts=cell_attempts,
        )
    except PlanError as exc:
        return stop(old, RECORDED_DECISIONS_MISMATCH, str(exc), generation, now)
    # 5. start
    to_start = _to_start(spec, plan.to_run, live, pending_starts, capacity, started) if plan.phase == "Running" else []
    # 6. status and announcements
    conds = conditions(
        status.phase, plan.reason or PHASE_REASONS[status.phase], status.message, old.get("conditions") or [], now
    )
    status = status.model_copy(update={"observed_generation": generation, "conditions": conds})
    return Step(
        status=status.wire(),
        ladder_status=status,
        to_start=to_start,
        new_decisions=list(plan.new_decisions),
        announcements=_announcements(plan.new_decisions, status, old.get("phase")),
    )


def _frozen_spec_changed(spec: LadderSpec, old: dict[str, Any], generation: int | None, now: str) -> Step | None:
    """The stop of a ladder whose frozen fields changed since admission, else None."""
    recorded_hash = old.get("frozenHash")
    if frozen_hash_matches(recorded_hash, spec):
        return None
    assert recorded_hash is not None  # a missing hash always matches (frozen_hash_matches)
    return stop(
        old,
        FROZEN_SPEC_CHANGED,
        "the frozen fields (objective, candidates, stages, verdict, trainer.gpus, continuation) "
        "changed after admission "
        f"(recorded {recorded_hash[:19]}, now {frozen_hash(spec)[:19]}); nothing more is run. "
        "Create a new ladder to screen the new spec.",
        generation,
        now,
    )


def _announcements(
    new_decisions: Sequence[Decision], status: LadderStatus, old_phase: str | None
) -> list[Announcement]:
    """A StageDecided Event per new decision, and the ladder's end when its phase just became one."""
    out = [Announcement("Normal", "StageDecided", decision_message(d)) for d in new_decisions]
    if status.phase != old_phase:
        if status.phase == "Succeeded":
            out.append(Announcement("Normal", "LadderSucceeded", status.message))
        elif status.phase == "Failed":
            out.append(Announcement("Warning", "LadderFailed", status.message))
    return out
