"""The ladder's status document: the same shape for the custom resource's .status, for
`ladder run`'s status file and for `ladder simulate --output json`.

It is also the durable record the adapters resume from: `outcomes_from_status` and
`decisions_from_status` read back exactly what `build_status` wrote. The conditions
(`conditions`) and the stopped states (`stopped_status`) are built here too, so no adapter
patches status dicts of its own (core/step.py puts it together per ladder step).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, ValidationError

from .accounting import GpuHours, gpu_hours
from .api import LadderSpec, frozen_hash
from .attempts import Attempts, lost_gpu_hours
from .cell import Cell, CellKey, CellOutcome
from .continuation import CheckpointsStatus, checkpoints_status, ladder_root
from .data_checks import CORPUS_CONFLICT, REPEATED_DATA, corpus_conflict, repeated_data, repeated_data_message
from .model import WireModel
from .planner import Outcomes, Plan, plan, stage_cells
from .result import Measured
from .rules import Decision, VerdictResult, rank_stage
from .stability import Stability, stability

# Queued: its Job exists and a batch queue (Kueue) holds it back; it holds no GPU.
CellState = Literal["Pending", "Queued", "Running", "Succeeded", "Failed"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
MESSAGE_LIMIT = 1024  # a condition's / Event's message

# The reasons a ladder stops without deciding anything more; each is a Failed condition's reason.
INVALID_SPEC = "InvalidSpec"
FROZEN_SPEC_CHANGED = "FrozenSpecChanged"
STATUS_UNREADABLE = "StatusUnreadable"
RECORDED_DECISIONS_MISMATCH = "RecordedDecisionsMismatch"
STOPPED_REASONS = (INVALID_SPEC, FROZEN_SPEC_CHANGED, STATUS_UNREADABLE, RECORDED_DECISIONS_MISMATCH)
# The condition reason of a ladder that runs or ended by its rules, per phase.
PHASE_REASONS = {"Running": "StageRunning", "Succeeded": "VerdictReached", "Failed": "NoCandidateCompleted"}


# A cell as the status records it: its outcome's measured fields (core/result.py) and the rest.
# (No docstring: it would become the CRD's description.)
class CellStatus(Measured):
    candidate: str
    host_block: str
    seed: int
    state: CellState
    value: float | None = None
    occupied_seconds: float | None = None
    reason: str | None = None
    # What the cell ran with (recorded when it finished, from its Job and Pod): GPUs, the node,
    # and the image when it differs from the stage's `image` (kept once per stage: compact).
    gpus: int | None = None
    node: str | None = None
    image: str | None = None
    # Its time in a batch queue and the attempts it lost (core/attempts.py); absent when none.
    attempts: Attempts | None = None


class StageStatus(WireModel):
    name: str
    budget: str
    state: Literal["Pending", "Running", "Decided"]
    entered: int | None = None
    image: str | None = Field(None, description="The image most of this stage's finished cells ran with.")
    cells: list[CellStatus] = Field(default_factory=list)
    decision: Decision | None = None
    # Warnings about the stage's data (CorpusConflict, RepeatedData; absent when none): stage_conditions.
    conditions: list[Condition] | None = None


class Condition(WireModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None


def stage_conditions(stage: str, cells: Outcomes) -> list[Condition]:
    """The stage's data warnings, from its finished cells (core/data_checks.py)."""
    out = []
    conflict = corpus_conflict(stage, cells)
    if conflict:
        out.append(Condition(type=CORPUS_CONFLICT, status="True", reason="DifferentCorpora", message=conflict))
    repeats = repeated_data(cells)
    if repeats:
        out.append(
            Condition(
                type=REPEATED_DATA,
                status="True",
                reason="DataPassesAboveOne",
                message=repeated_data_message(stage, repeats),
            )
        )
    return out


class LadderStatus(WireModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    message: str = ""
    observed_generation: int | None = None
    frozen_hash: str | None = None
    current_stage: str | None = None
    leader: str | None = None
    stages: list[StageStatus] = Field(default_factory=list)
    gpu_hours: GpuHours | None = None
    verdict: VerdictResult | None = None
    stability: Stability | None = None
    # A ladder that continues (spec.continuation): where its checkpoints are, which were deleted, the winner's.
    checkpoints: CheckpointsStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)


def build_status(
    spec: LadderSpec,
    outcomes: Outcomes,
    recorded: list[Decision] | tuple[Decision, ...] = (),
    running: set[CellKey] | frozenset[CellKey] = frozenset(),
    checkpoint_root: str | None = None,
    queued: Collection[CellKey] = frozenset(),
    attempts: Mapping[CellKey, Attempts] | None = None,
) -> tuple[LadderStatus, Plan]:
    """Plan the ladder and describe it. `running` marks non-terminal cells that are executing,
    `queued` those of them a batch queue holds back; `attempts` is each cell's record of its
    queue time and lost attempts (core/attempts.py).
    `checkpoint_root`: the ladder's checkpoint folder (core.continuation.ladder_root; default:
    spec.continuation.path/<ladder>, as "<ladder>" when the name is unknown here)."""
    attempts = attempts or {}
    p = plan(spec, outcomes, recorded)
    decided = {d.stage: d for d in p.decisions}
    stages = []
    for i, st in enumerate(spec.stages):
        entered = p.entering.get(st.name)
        if entered is None:
            stages.append(StageStatus(name=st.name, budget=st.budget, state="Pending"))
            continue
        cells = []
        images = Counter(
            o.image for c in stage_cells(spec, i, entered) if (o := outcomes.get(c.key)) is not None and o.image
        )
        stage_image = images.most_common(1)[0][0] if images else None
        for c in stage_cells(spec, i, entered):
            cells.append(
                cell_status(
                    c,
                    outcomes.get(c.key),
                    c.key in running,
                    stage_image,
                    queued=c.key in queued,
                    attempts=attempts.get(c.key),
                )
            )
        finished = {c.key: outcomes[c.key] for c in stage_cells(spec, i, entered) if c.key in outcomes}
        stages.append(
            StageStatus(
                name=st.name,
                budget=st.budget,
                state="Decided" if st.name in decided else "Running",
                entered=len(entered),
                image=stage_image,
                cells=cells,
                decision=decided.get(st.name),
                conditions=stage_conditions(st.name, finished) or None,
            )
        )
    current = spec.stages[p.stage_index].name if p.stage_index is not None else None
    leader = p.verdict.winner if p.verdict else None
    if p.stage_index is not None:
        st = spec.stages[p.stage_index]
        partial = {(c, hb, s): o for (sn, c, hb, s), o in outcomes.items() if sn == st.name}
        ranking = rank_stage(st, p.entering[st.name], partial, spec.objective.direction)
        if any(v is not None for e in ranking for v in e.values):
            leader = ranking[0].candidate
    status = LadderStatus(
        phase=p.phase,
        message=p.message or (f"running stage {current}" if current else ""),
        frozen_hash=frozen_hash(spec),
        current_stage=current,
        leader=leader,
        stages=stages,
        gpu_hours=_with_lost(gpu_hours(spec, outcomes, p.entering), outcomes, attempts, spec.trainer.cell_gpus),
        verdict=p.verdict,
        stability=stability(p.decisions, p.entering),
        checkpoints=checkpoints_status(
            spec,
            checkpoint_root or _default_root(spec),
            p.decisions,
            p.entering,
            p.verdict.winner if p.verdict else None,
        ),
    )
    return status, p


def _default_root(spec: LadderSpec) -> str:
    return ladder_root(spec.continuation.path, "<ladder>") if spec.continuation else ""


def _with_lost(g: GpuHours, outcomes: Outcomes, attempts: Mapping[CellKey, Attempts], gpus: int) -> GpuHours:
    """The occupied GPU-hours with the part lost attempts held, when there is one."""
    lost = lost_gpu_hours(outcomes, attempts, gpus)
    if not lost or g.occupied is None:
        return g
    return g.model_copy(update={"occupied": g.occupied.model_copy(update={"lost": lost})})


def _finite(x: float | None) -> float | None:
    """The API server refuses a status holding Infinity or NaN: never write one."""
    return x if x is not None and math.isfinite(x) else None


def cell_status(
    cell: Cell,
    outcome: CellOutcome | None,
    running: bool = False,
    stage_image: str | None = None,
    queued: bool = False,
    attempts: Attempts | None = None,
) -> CellStatus:
    """A cell as the status records it; `recorded_outcome` reads it back. The measured fields
    travel whole (`measured()`); the image is kept per cell only when it differs from the stage's."""
    if outcome is None:
        state: CellState = ("Queued" if queued else "Running") if running else "Pending"
        return CellStatus(
            candidate=cell.candidate, host_block=cell.host_block, seed=cell.seed, state=state, attempts=attempts
        )
    measured: dict[str, Any] = {k: _finite(v) if isinstance(v, float) else v for k, v in outcome.measured().items()}
    return CellStatus(
        candidate=cell.candidate,
        host_block=cell.host_block,
        seed=cell.seed,
        state="Succeeded" if outcome.ok else "Failed",
        value=outcome.value if outcome.ok else None,
        reason=outcome.reason or None,
        gpus=outcome.gpus,
        node=outcome.node,
        image=outcome.image if outcome.image != stage_image else None,
        occupied_seconds=_finite(outcome.occupied_seconds),
        attempts=attempts,
        **measured,
    )


def recorded_outcome(c: CellStatus, stage_image: str | None = None) -> CellOutcome | None:
    """The recorded outcome of a cell (None while it has not ended)."""
    if c.state not in ("Succeeded", "Failed"):
        return None
    return CellOutcome(
        "succeeded" if c.state == "Succeeded" else "failed",
        c.value,
        reason=c.reason or "",
        gpus=c.gpus,
        node=c.node,
        image=c.image or stage_image,
        occupied_seconds=c.occupied_seconds,
        **c.measured(),
    )


def outcomes_from_status(status: LadderStatus) -> dict[CellKey, CellOutcome]:
    out = {}
    for st in status.stages:
        for c in st.cells:
            o = recorded_outcome(c, st.image)
            if o is not None:
                out[CellKey(st.name, c.candidate, c.host_block, c.seed)] = o
    return out


def attempts_from_status(status: LadderStatus) -> dict[CellKey, Attempts]:
    """Every cell's recorded queue time and lost attempts (core/attempts.py)."""
    return {
        CellKey(st.name, c.candidate, c.host_block, c.seed): c.attempts
        for st in status.stages
        for c in st.cells
        if c.attempts is not None
    }


def decisions_from_status(status: LadderStatus) -> list[Decision]:
    """Recorded decisions in stage order (a stage without one ends the list)."""
    out = []
    for st in status.stages:
        if st.decision is None:
            break
        out.append(st.decision)
    return out


def parse_status(data: Any) -> LadderStatus:
    """Read a status document (a dict); raises ValueError naming the field when it is malformed."""
    try:
        return LadderStatus.model_validate(data or {})
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ValueError(f"status.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}") from None


def simulate(spec: LadderSpec, recorded: Outcomes, checkpoint_root: str | None = None) -> tuple[LadderStatus, Plan]:
    """Replay a ladder against recorded results; a cell with no recorded result failed."""
    seen: dict[CellKey, CellOutcome] = {}
    decided: list[Decision] = []
    while True:
        # Decisions made so far are replayed, not re-decided: each stage is decided once.
        p = plan(spec, seen, decided)
        decided = p.decisions
        if p.phase != "Running":
            return build_status(spec, seen, decided, checkpoint_root=checkpoint_root)
        for c in p.to_run:
            seen[c.key] = recorded.get(c.key) or CellOutcome(state="failed", reason="no recorded result")


def _condition(
    type_: str, status: bool, reason: str, message: str, old: Sequence[Mapping[str, Any]], now: str
) -> Condition:
    s = "True" if status else "False"
    prev = next((c for c in old if c.get("type") == type_), None)
    since = (
        prev.get("lastTransitionTime") if prev and prev.get("status") == s and prev.get("lastTransitionTime") else now
    )
    return Condition(type=type_, status=s, reason=reason, message=message[:MESSAGE_LIMIT], last_transition_time=since)


def conditions(phase: str, reason: str, message: str, old: Sequence[Mapping[str, Any]], now: str) -> list[Condition]:
    """Progressing / Complete / Failed, each always present (True for exactly one, or none while
    Pending). `old` is the recorded conditions (wire form): lastTransitionTime is kept while a
    condition's status is unchanged, so an unchanged ladder gives an unchanged status."""
    return [
        _condition(
            "Progressing",
            phase == "Running",
            reason if phase == "Running" else phase,
            message if phase == "Running" else "",
            old,
            now,
        ),
        _condition(
            "Complete",
            phase == "Succeeded",
            reason if phase == "Succeeded" else "NotComplete",
            message if phase == "Succeeded" else "",
            old,
            now,
        ),
        _condition(
            "Failed",
            phase == "Failed",
            reason if phase == "Failed" else "NotFailed",
            message if phase == "Failed" else "",
            old,
            now,
        ),
    ]


def failed_reason(status: Mapping[str, Any]) -> str | None:
    """The reason of a (wire) status's Failed condition."""
    return next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Failed"), None)


def stopped_status(
    recorded: Mapping[str, Any] | None, reason: str, message: str, generation: int | None, now: str
) -> dict[str, Any]:
    """A ladder that stops (one of STOPPED_REASONS): Failed, with whatever was recorded kept as it
    is (it may be unreadable, hence the wire form) and nothing more decided."""
    old = dict(recorded or {})
    status = dict(old)
    status.update(phase="Failed", message=message[:MESSAGE_LIMIT], observedGeneration=generation)
    status["conditions"] = [c.wire() for c in conditions("Failed", reason, message, old.get("conditions") or [], now)]
    return status
