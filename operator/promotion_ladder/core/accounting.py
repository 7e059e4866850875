"""GPU-hour accounting: what was spent, and what the alternatives would have cost.

Two measures, side by side:
- Protocol GPU-hours (`total`, `byStage`, ...: the paper's measure, unchanged) count each
  terminal cell once: train seconds x the GPUs it ran with (as recorded at launch: its pods x
  GPUs per pod; the spec's trainer nodes x gpus for records without it), the stage budget when
  the cell reported no seconds.
  The counterfactual of a non-final stage is what sending every candidate that entered it
  straight through the final stage would have cost: entered x final cells x final budget x the cell's GPUs.
  With continuation (spec.continuation, core/continuation.py) they count what ran: a cell that
  resumed from its predecessor's stable checkpoint is charged its train seconds less the
  `resumedSeconds` it took over (its increment plus its decay), and `fromScratch` is the same
  cells charged whole, as they would have cost without continuing. The counterfactuals keep
  their definition (candidates straight through the final stage, from scratch); their
  `savedGpuHours` is against what ran.
- Occupied GPU-hours (`occupied`) count what a cluster pays: the seconds each terminal cell
  held its GPUs (the operator: from its Pods being bound to a node to the trainer container's
  end, every attempt of a retried Job summed; `ladder run`: the process's wall time), x the
  same GPUs. That includes start-up, data preparation, compilation, warm-up and evaluation.
  Rules:
    * a cell whose occupancy was not measured (recorded results without `occupiedSeconds`, a
      Pod without the timestamps) counts its protocol seconds: the honest lower bound, since
      a cell held its GPUs at least as long as it trained. `measuredCells` of `cells` says how
      many were measured;
    * a measured occupancy is never counted below the cell's charged train seconds
      (Kubernetes timestamps have one-second resolution).
"""

from __future__ import annotations

import math
from collections import defaultdict

from pydantic import Field

from .api import LadderSpec
from .continuation import estimated_resume_seconds
from .model import WireModel
from .planner import Outcomes, stage_cells
from .result import train_seconds_limit


class Counterfactual(WireModel):
    stage: str
    entered: int
    gpu_hours: float
    saved_gpu_hours: float = Field(description="Counterfactual minus the ladder's executed total.")
    saved_percent: float


class OccupiedGpuHours(WireModel):
    total: float
    by_stage: dict[str, float]
    ratio: float | None = Field(
        None, description="Occupied total / protocol total (absent while the protocol total is 0)."
    )
    measured_cells: int = Field(
        description="Terminal cells whose occupancy was measured; the others count their protocol seconds."
    )
    cells: int = Field(description="Terminal cells counted.")
    lost: float | None = Field(
        None,
        description="Of the total: GPU-hours held by attempts lost to eviction or "
        "preemption (wasted; core/attempts.py). Absent when none.",
    )


class GpuHours(WireModel):
    total: float
    by_stage: dict[str, float]
    by_candidate: dict[str, float]
    by_host_block: dict[str, float]
    counterfactuals: list[Counterfactual]
    occupied: OccupiedGpuHours | None = None
    from_scratch: float | None = Field(
        None,
        description="A ladder that continues: the protocol GPU-hours of the same cells had none continued "
        "(each charged its whole train seconds); total is what ran.",
    )


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


def protocol_seconds(train_seconds: float | None, budget_seconds: float, resumed_seconds: float | None = None) -> float:
    """A terminal cell's seconds under the protocol's measure: what it ran, its charged seconds
    less those it took over from a predecessor's checkpoint (continuation)."""
    charged = charged_seconds(train_seconds, budget_seconds)
    resumed = resumed_seconds if resumed_seconds is not None and math.isfinite(resumed_seconds) else 0.0
    return charged - min(max(resumed, 0.0), charged)


def cell_gpu_hours(
    reported_seconds: float | None, budget_seconds: float, gpus: int, resumed_seconds: float | None = None
) -> float:
    """One terminal cell's GPU-hours (the status's accounting and the metrics' counter agree)."""
    return protocol_seconds(reported_seconds, budget_seconds, resumed_seconds) * gpus / 3600.0


def occupied_seconds(
    occupied: float | None, train_seconds: float | None, budget_seconds: float, resumed_seconds: float | None = None
) -> float:
    """A terminal cell's seconds under the occupied measure (the rules in the module docstring)."""
    protocol = protocol_seconds(train_seconds, budget_seconds, resumed_seconds)
    if occupied is None or not math.isfinite(occupied):
        return protocol
    return max(occupied, protocol if train_seconds is not None else 0.0)


def cell_occupied_gpu_hours(
    occupied: float | None,
    train_seconds: float | None,
    budget_seconds: float,
    gpus: int,
    resumed_seconds: float | None = None,
) -> float:
    return occupied_seconds(occupied, train_seconds, budget_seconds, resumed_seconds) * gpus / 3600.0


def ratio(occupied: float, protocol: float) -> float | None:
    return round(occupied / protocol, 4) if protocol > 0 else None


def format_gpu_hours(v: float | None) -> str:
    """GPU-hours as every output shows them: one decimal from 1 up (the paper's figures), three
    significant digits below (a CPU demo spends hundredths)."""
    if v is None:
        return "-"
    return f"{v:.1f}" if v == 0 or abs(v) >= 0.95 else f"{v:.3g}"


def occupancy_rows(g: GpuHours) -> list[tuple[str, float, float | None, float | None]]:
    """(stage or "total", protocol GPU-hours, occupied GPU-hours, occupied / protocol) for
    renderers: every stage with GPU-hours, then the total."""
    occ = g.occupied
    rows = []
    for name, protocol in g.by_stage.items():
        o = occ.by_stage.get(name) if occ else None
        rows.append((name, protocol, o, ratio(o, protocol) if o is not None else None))
    rows.append(("total", g.total, occ.total if occ else None, occ.ratio if occ else None))
    return rows


def gpu_hours(spec: LadderSpec, outcomes: Outcomes, entering: dict[str, list[str]]) -> GpuHours:
    """`entering` is the planner's stage -> entered candidates, for the stages reached so far."""
    gpus = spec.trainer.cell_gpus  # nodes x gpus
    by_stage: dict[str, float] = {}
    by_cand: dict[str, float] = defaultdict(float)
    by_block: dict[str, float] = defaultdict(float)
    occ_by_stage: dict[str, float] = {}
    cells = measured = 0
    whole = 0.0  # the same cells, none continued
    for i, st in enumerate(spec.stages):
        if st.name not in entering:
            continue
        spent = occ = 0.0
        budget = st.budget_seconds
        for cell in stage_cells(spec, i, entering[st.name]):
            o = outcomes.get(cell.key)
            if o is None:
                continue
            # The GPUs the cell ran with, as recorded: a later edit of trainer.gpus must not
            # rewrite what was spent (older records without it: the spec's).
            cell_gpus = o.gpus if o.gpus is not None else gpus
            h = cell_gpu_hours(o.train_seconds, budget, cell_gpus, o.resumed_seconds)
            spent += h
            whole += cell_gpu_hours(o.train_seconds, budget, cell_gpus)
            by_cand[cell.candidate] += h
            by_block[cell.host_block] += h
            occ += cell_occupied_gpu_hours(o.occupied_seconds, o.train_seconds, budget, cell_gpus, o.resumed_seconds)
            cells += 1
            measured += o.occupied_seconds is not None
        by_stage[st.name] = spent
        occ_by_stage[st.name] = occ
    total = sum(by_stage.values())
    occ_total = sum(occ_by_stage.values())
    final = spec.stages[-1]
    final_cell_hours = len(final.cells()) * final.budget_seconds * gpus / 3600.0
    cfs = []
    for st in spec.stages[:-1]:
        if st.name in entering:
            n = len(entering[st.name])
            cf = n * final_cell_hours
            cfs.append(
                Counterfactual(
                    stage=st.name,
                    entered=n,
                    gpu_hours=_r(cf),
                    saved_gpu_hours=_r(cf - total),
                    saved_percent=round(100.0 * (cf - total) / cf, 2) if cf else 0.0,
                )
            )
    return GpuHours(
        total=_r(total),
        by_stage={k: _r(v) for k, v in by_stage.items()},
        by_candidate={k: _r(v) for k, v in by_cand.items()},
        by_host_block={k: _r(v) for k, v in by_block.items()},
        counterfactuals=cfs,
        occupied=OccupiedGpuHours(
            total=_r(occ_total),
            by_stage={k: _r(v) for k, v in occ_by_stage.items()},
            ratio=ratio(occ_total, total),
            measured_cells=measured,
            cells=cells,
        ),
        from_scratch=_r(whole) if spec.continuation is not None else None,
    )


class ContinuationEstimate(WireModel):
    """What continuing would have changed for recorded cells that trained from scratch."""

    from_scratch: float  # protocol GPU-hours as recorded
    continuing: float  # the same cells, each later cell resuming from its predecessor's stable phase
    continuing_cells: int  # cells that would have had a predecessor to resume from
    cells: int
    every_later_cell: float  # as `continuing`, had every cell of a later stage a predecessor

    @property
    def saved(self) -> float:
        return self.from_scratch - self.continuing

    @property
    def saved_percent(self) -> float:
        return 100.0 * self.saved / self.from_scratch if self.from_scratch else 0.0


def continuation_estimate(spec: LadderSpec, outcomes: Outcomes, entering: dict[str, list[str]]) -> ContinuationEstimate:
    """For a ladder whose cells trained from scratch: each cell of a later stage with a
    predecessor (the same candidate, host block and seed one stage earlier) would have resumed
    from its stable checkpoint, saving (1 - warmdown_frac) of the previous stage's budget
    (core.continuation.estimated_resume_seconds); the rest would have cost what it did."""
    gpus = spec.trainer.cell_gpus
    scratch = continuing = every = 0.0
    n = resumed = 0
    for i, st in enumerate(spec.stages):
        for cell in stage_cells(spec, i, entering.get(st.name, [])):
            o = outcomes.get(cell.key)
            if o is None:
                continue
            cell_gpus = o.gpus if o.gpus is not None else gpus
            take_over = estimated_resume_seconds(spec, cell)
            scratch += cell_gpu_hours(o.train_seconds, st.budget_seconds, cell_gpus)
            continuing += cell_gpu_hours(o.train_seconds, st.budget_seconds, cell_gpus, take_over)
            every += cell_gpu_hours(
                o.train_seconds, st.budget_seconds, cell_gpus, estimated_resume_seconds(spec, cell, any_cell=True)
            )
            n += 1
            resumed += take_over > 0
    return ContinuationEstimate(
        from_scratch=_r(scratch),
        continuing=_r(continuing),
        continuing_cells=resumed,
        cells=n,
        every_later_cell=_r(every),
    )
