"""GPU-hour accounting: what was spent, and what the alternatives would have cost.

Executed GPU-hours count each terminal cell once: train seconds x the GPUs it ran with (as
recorded at launch; the spec's trainer.gpus for records without it), the stage budget when the
cell reported no seconds. The counterfactual of a non-final stage is what sending every
candidate that entered it straight through the final stage would have cost:
entered x final cells x final budget x gpus.
"""

from __future__ import annotations

import math
from collections import defaultdict

from pydantic import Field

from .api import LadderSpec
from .planner import Outcomes, stage_cells
from .result import train_seconds_limit
from .model import WireModel


class Counterfactual(WireModel):
    stage: str
    entered: int
    gpu_hours: float
    saved_gpu_hours: float = Field(description="Counterfactual minus the ladder's executed total.")
    saved_percent: float


class GpuHours(WireModel):
    total: float
    by_stage: dict[str, float]
    by_candidate: dict[str, float]
    by_host_block: dict[str, float]
    counterfactuals: list[Counterfactual]


def _r(x: float) -> float:
    return round(x, 6)


def charged_seconds(reported: float | None, budget_seconds: float) -> float:
    """What a cell is charged: its reported seconds, or the budget when it reported none. Seconds
    no cell of this budget can have spent (not finite, negative, past the deadline) are charged
    at the deadline, the most it can have run: the accounting stays finite on any input."""
    if reported is None:
        return budget_seconds
    limit = train_seconds_limit(budget_seconds)
    if not math.isfinite(reported) or reported > limit:
        return limit
    return max(reported, 0.0)


def cell_gpu_hours(reported_seconds: float | None, budget_seconds: float, gpus: int) -> float:
    """One terminal cell's GPU-hours (the status's accounting and the metrics' counter agree)."""
    return charged_seconds(reported_seconds, budget_seconds) * gpus / 3600.0


def gpu_hours(spec: LadderSpec, outcomes: Outcomes, entering: dict[str, list[str]]) -> GpuHours:
    """`entering` is the planner's stage -> entered candidates, for the stages reached so far."""
    gpus = spec.trainer.gpus
    by_stage: dict[str, float] = {}
    by_cand: dict[str, float] = defaultdict(float)
    by_block: dict[str, float] = defaultdict(float)
    for i, st in enumerate(spec.stages):
        if st.name not in entering:
            continue
        spent = 0.0
        for cell in stage_cells(spec, i, entering[st.name]):
            o = outcomes.get(cell.key)
            if o is None:
                continue
            # The GPUs the cell ran with, as recorded: a later edit of trainer.gpus must not
            # rewrite what was spent (older records without it: the spec's).
            h = cell_gpu_hours(o.train_seconds, st.budget_seconds, o.gpus if o.gpus is not None else gpus)
            spent += h
            by_cand[cell.candidate] += h
            by_block[cell.host_block] += h
        by_stage[st.name] = spent
    total = sum(by_stage.values())
    final = spec.stages[-1]
    final_cell_hours = len(final.cells()) * final.budget_seconds * gpus / 3600.0
    cfs = []
    for st in spec.stages[:-1]:
        if st.name in entering:
            n = len(entering[st.name])
            cf = n * final_cell_hours
            cfs.append(Counterfactual(
                stage=st.name, entered=n, gpu_hours=_r(cf), saved_gpu_hours=_r(cf - total),
                saved_percent=round(100.0 * (cf - total) / cf, 2) if cf else 0.0,
            ))
    return GpuHours(
        total=_r(total),
        by_stage={k: _r(v) for k, v in by_stage.items()},
        by_candidate={k: _r(v) for k, v in by_cand.items()},
        by_host_block={k: _r(v) for k, v in by_block.items()},
        counterfactuals=cfs,
    )
