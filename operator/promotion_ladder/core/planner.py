"""The planner: spec + observed cell outcomes + recorded decisions -> what to run next.

Pure and deterministic. Recorded decisions are final: the planner replays them as they are
and only decides a stage that has no decision yet and whose cells are all terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .api import LadderSpec
from .cell import Cell, CellKey, CellOutcome
from .data_checks import CORPUS_CONFLICT, corpus_conflict
from .rules import Decision, VerdictResult, decide, verdict

Outcomes = Mapping[CellKey, CellOutcome]
Phase = Literal["Running", "Succeeded", "Failed"]


class PlanError(ValueError):
    """Recorded decisions that do not fit the spec (the frozen fields changed)."""


@dataclass(frozen=True)
class Plan:
    phase: Phase
    stage_index: int | None  # the stage being run; None once the ladder has ended
    entering: dict[str, list[str]]  # stage -> candidates that entered it (stages reached so far)
    to_run: list[Cell]  # cells of the current stage that have no terminal outcome yet
    decisions: list[Decision]  # recorded decisions followed by new ones, in stage order
    new_decisions: list[Decision] = field(default_factory=list)
    verdict: VerdictResult | None = None
    message: str = ""
    reason: str = ""  # why it ended, when that is not the phase's usual reason (status.PHASE_REASONS)


def stage_cells(spec: LadderSpec, stage_index: int, entering: Sequence[str]) -> list[Cell]:
    st = spec.stages[stage_index]
    return [Cell(st.name, c, hb, s) for c in entering for hb, s in st.cells()]


def plan(spec: LadderSpec, outcomes: Outcomes, recorded: Sequence[Decision] = ()) -> Plan:
    direction = spec.objective.direction
    entering_by: dict[str, list[str]] = {}
    decisions: list[Decision] = []
    new: list[Decision] = []
    entering = spec.candidate_names()
    if len(recorded) > len(spec.stages):
        raise PlanError(f"{len(recorded)} decisions recorded for a ladder with {len(spec.stages)} stages")
    for i, st in enumerate(spec.stages):
        entering_by[st.name] = entering
        if i < len(recorded):
            d = recorded[i]
            if d.stage != st.name:
                raise PlanError(f"recorded decision {i} is for stage {d.stage!r}, but stage {i} is {st.name!r}")
        else:
            cells = stage_cells(spec, i, entering)
            pending = [c for c in cells if c.key not in outcomes]
            if pending:
                return Plan("Running", i, entering_by, pending, decisions, new)
            by_cell = {(c.candidate, c.host_block, c.seed): outcomes[c.key] for c in cells}
            conflict = corpus_conflict(st.name, by_cell)
            if conflict:  # values measured on different data cannot be ranked against each other
                return Plan("Failed", None, entering_by, [], decisions, new, message=conflict, reason=CORPUS_CONFLICT)
            d = decide(st, entering, by_cell, direction)
            new.append(d)
        decisions.append(d)
        if not d.promoted and i < len(spec.stages) - 1:
            return Plan(
                "Failed",
                None,
                entering_by,
                [],
                decisions,
                new,
                message=f"stage {st.name!r}: no candidate completed every cell, nothing to promote",
            )
        entering = d.promoted
    final = decisions[-1]
    v = verdict(final, spec.verdict, direction)
    if v.winner is None:
        return Plan(
            "Failed",
            None,
            entering_by,
            [],
            decisions,
            new,
            v,
            message=f"final stage {final.stage!r}: no candidate completed every cell",
        )
    return Plan("Succeeded", None, entering_by, [], decisions, new, v, message=f"winner: {v.winner}")
