"""The ladder's status document: the same shape for the custom resource's .status, for
`ladder run`'s status file and for `ladder simulate --output json`.

It is also the durable record the adapters resume from: `outcomes_from_status` and
`decisions_from_status` read back exactly what `build_status` wrote.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from .accounting import GpuHours, gpu_hours
from .api import LadderSpec, frozen_hash
from .planner import Outcomes, Plan, plan, stage_cells
from .rules import Decision, Outcome, VerdictResult, _Out, rank_stage

CellState = Literal["Pending", "Running", "Succeeded", "Failed"]


class CellStatus(_Out):
    candidate: str
    host_block: str
    seed: int
    state: CellState
    value: float | None = None
    train_seconds: float | None = None
    occupied_seconds: float | None = None
    reason: str | None = None


class StageStatus(_Out):
    name: str
    budget: str
    state: Literal["Pending", "Running", "Decided"]
    entered: int | None = None
    cells: list[CellStatus] = Field(default_factory=list)
    decision: Decision | None = None


class Condition(_Out):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None


class LadderStatus(_Out):
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    message: str = ""
    observed_generation: int | None = None
    frozen_hash: str | None = None
    current_stage: str | None = None
    leader: str | None = None
    stages: list[StageStatus] = Field(default_factory=list)
    gpu_hours: GpuHours | None = None
    verdict: VerdictResult | None = None
    conditions: list[Condition] = Field(default_factory=list)


def build_status(
    spec: LadderSpec,
    outcomes: Outcomes,
    recorded: list[Decision] | tuple[Decision, ...] = (),
    running: set[tuple[str, str, str, int]] | frozenset = frozenset(),
) -> tuple[LadderStatus, Plan]:
    """Plan the ladder and describe it. `running` marks non-terminal cells that are executing."""
    p = plan(spec, outcomes, recorded)
    decided = {d.stage: d for d in p.decisions}
    stages = []
    for i, st in enumerate(spec.stages):
        entered = p.entering.get(st.name)
        if entered is None:
            stages.append(StageStatus(name=st.name, budget=st.budget, state="Pending"))
            continue
        cells = []
        for c in stage_cells(spec, i, entered):
            o = outcomes.get(c.key)
            if o is None:
                state = "Running" if c.key in running else "Pending"
                cells.append(CellStatus(candidate=c.candidate, host_block=c.host_block, seed=c.seed, state=state))
            else:
                cells.append(CellStatus(
                    candidate=c.candidate, host_block=c.host_block, seed=c.seed,
                    state="Succeeded" if o.ok else "Failed",
                    value=o.value if o.ok else None, train_seconds=o.train_seconds, reason=o.reason or None,
                    occupied_seconds=o.occupied_seconds,
                ))
        stages.append(StageStatus(
            name=st.name, budget=st.budget, state="Decided" if st.name in decided else "Running",
            entered=len(entered), cells=cells, decision=decided.get(st.name),
        ))
    current = spec.stages[p.stage_index].name if p.stage_index is not None else None
    leader = p.verdict.winner if p.verdict else None
    if p.stage_index is not None:
        st = spec.stages[p.stage_index]
        partial = {(c, hb, s): o for (sn, c, hb, s), o in outcomes.items() if sn == st.name}
        ranking = rank_stage(st, p.entering[st.name], partial, spec.objective.direction)
        if any(v is not None for e in ranking for v in e.values):
            leader = ranking[0].candidate
    status = LadderStatus(
        phase=p.phase, message=p.message or (f"running stage {current}" if current else ""),
        frozen_hash=frozen_hash(spec), current_stage=current, leader=leader, stages=stages,
        gpu_hours=gpu_hours(spec, outcomes, p.entering), verdict=p.verdict,
    )
    return status, p


def outcomes_from_status(status: LadderStatus) -> dict[tuple[str, str, str, int], Outcome]:
    out = {}
    for st in status.stages:
        for c in st.cells:
            if c.state in ("Succeeded", "Failed"):
                out[(st.name, c.candidate, c.host_block, c.seed)] = Outcome(
                    state="succeeded" if c.state == "Succeeded" else "failed",
                    value=c.value, train_seconds=c.train_seconds, reason=c.reason or "",
                    occupied_seconds=c.occupied_seconds,
                )
    return out


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


def simulate(spec: LadderSpec, recorded: Outcomes) -> tuple[LadderStatus, Plan]:
    """Replay a ladder against recorded results; a cell with no recorded result failed."""
    seen: dict[tuple[str, str, str, int], Outcome] = {}
    decided: list[Decision] = []
    while True:
        # Decisions made so far are replayed, not re-decided: each stage is decided once.
        p = plan(spec, seen, decided)
        decided = p.decisions
        if p.phase != "Running":
            return build_status(spec, seen, decided)
        for c in p.to_run:
            seen[c.key] = recorded.get(c.key) or Outcome(state="failed", reason="no recorded result")
