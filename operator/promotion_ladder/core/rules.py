"""Frozen promotion and verdict rules: pure functions from cell values to decisions.

Ranking order (documented contract, used everywhere):
  1. Complete candidates (every cell of the stage succeeded) before incomplete ones.
  2. Complete: by the stage's aggregate (better first; meanRank: lower first), then by the
     mean, then by the candidate's position in spec.candidates.
  3. Incomplete: by number of succeeded cells (more first), then the mean of those cells,
     then spec position. Incomplete candidates are never promoted by `top` or `within`;
     a candidate listed in `keep` is promoted whatever its cells did.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from .api import Check, Promote, Stage, Verdict
from .cell import CellOutcome
from .model import WireModel

EPS = 1e-12
CellId = tuple[str, int]  # (hostBlock, seed)


class RankEntry(WireModel):
    candidate: str
    rank: int
    aggregate: float | None = None
    values: list[float | None] = Field(description="One per cell, in the decision's cell order; null = failed.")
    complete: bool
    promoted_by: Literal["top", "within", "keep"] | None = None


class Rule(WireModel):
    direction: Literal["minimize", "maximize"]
    aggregate: str
    top: int | None = None
    keep: list[str] = Field(default_factory=list)
    within: float | None = None


class Decision(WireModel):
    """A stage's recorded decision: inputs (values per cell), the rule, the ranking, who goes on."""

    stage: str
    rule: Rule
    cells: list[str] = Field(description='Cell order of every values list: "hostBlock/seed".')
    ranking: list[RankEntry]
    promoted: list[str]


def cell_label(host_block: str, seed: int) -> str:
    return f"{host_block}/{seed}"


def _orient(v: float, direction: str) -> float:
    return v if direction == "minimize" else -v


def _complete(e: RankEntry) -> tuple[float, list[float]]:
    """A complete entry's aggregate and values: rank_stage() gives every complete candidate both."""
    values = [v for v in e.values if v is not None]
    assert e.complete and e.aggregate is not None and len(values) == len(e.values), e.candidate
    return e.aggregate, values


def _aggregate(values: list[float], how: str, direction: str) -> float:
    if how == "mean":
        return statistics.fmean(values)
    if how == "median":
        return statistics.median(values)
    if how == "worst":
        return max(values) if direction == "minimize" else min(values)
    raise ValueError(f"unknown aggregate {how!r}")


def _mean_ranks(values: dict[str, list[float]], direction: str) -> dict[str, float]:
    """Average over cells of each candidate's rank in that cell (1 = best; ties share the mean rank)."""
    names = list(values)
    n_cells = len(next(iter(values.values()))) if values else 0
    total = dict.fromkeys(names, 0.0)
    for j in range(n_cells):
        col = sorted(names, key=lambda n: _orient(values[n][j], direction))
        i = 0
        while i < len(col):
            k = i
            while k + 1 < len(col) and abs(values[col[k + 1]][j] - values[col[i]][j]) <= EPS:
                k += 1
            for m in range(i, k + 1):
                total[col[m]] += (i + k) / 2 + 1
            i = k + 1
    return {n: total[n] / n_cells for n in names} if n_cells else {}


def rank_stage(
    stage: Stage,
    entering: list[str],
    outcomes: Mapping[tuple[str, str, int], CellOutcome],
    direction: str,
    aggregate: str = "mean",
) -> list[RankEntry]:
    """Rank the candidates that entered a stage. `outcomes` is keyed by (candidate, hostBlock, seed)."""
    order = {name: i for i, name in enumerate(entering)}
    cells = stage.cells()
    vals: dict[str, list[float | None]] = {}
    for c in entering:
        row = []
        for hb, seed in cells:
            o = outcomes.get((c, hb, seed))
            row.append(o.value if o is not None and o.ok else None)
        vals[c] = row
    complete = {c: [v for v in row if v is not None] for c, row in vals.items() if all(v is not None for v in row)}
    agg: dict[str, float] = (
        _mean_ranks(complete, direction)
        if aggregate == "meanRank"
        else {c: _aggregate(v, aggregate, direction) for c, v in complete.items()}
    )

    def key(c: str) -> tuple[int, float, float, int]:
        ok = [v for v in vals[c] if v is not None]
        mean = _orient(statistics.fmean(ok), direction) if ok else math.inf
        if c in complete:
            a = agg[c] if aggregate == "meanRank" else _orient(agg[c], direction)
            return (0, a, mean, order[c])
        return (1, -len(ok), mean, order[c])

    ranked = sorted(entering, key=key)
    return [
        RankEntry(candidate=c, rank=i + 1, aggregate=agg.get(c), values=vals[c], complete=c in complete)
        for i, c in enumerate(ranked)
    ]


def decide(
    stage: Stage,
    entering: list[str],
    outcomes: Mapping[tuple[str, str, int], CellOutcome],
    direction: str,
) -> Decision:
    """The frozen rule of one stage: rank, then promote top N, those `within` the best, and `keep`."""
    pr: Promote | None = stage.promote
    how = pr.aggregate if pr else "mean"
    ranking = rank_stage(stage, entering, outcomes, direction, how)
    by: dict[str, str] = {}
    if pr is not None:
        complete = [e for e in ranking if e.complete]
        for e in complete[: pr.top]:
            by[e.candidate] = "top"
        if pr.within is not None and complete:
            best, _ = _complete(complete[0])
            for e in complete:
                mine, _ = _complete(e)
                gap = (mine - best) if how == "meanRank" else _orient(mine, direction) - _orient(best, direction)
                if gap <= pr.within + EPS:
                    by.setdefault(e.candidate, "within")
        for k in pr.keep:
            if k in entering:
                by.setdefault(k, "keep")
    ranking = [e.model_copy(update={"promoted_by": by.get(e.candidate)}) for e in ranking]
    return Decision(
        stage=stage.name,
        rule=Rule(
            direction=direction,
            aggregate=how,
            top=pr.top if pr else None,
            keep=list(pr.keep) if pr else [],
            within=pr.within if pr else None,
        ),
        cells=[cell_label(h, s) for h, s in stage.cells()],
        ranking=ranking,
        promoted=[e.candidate for e in ranking if e.promoted_by],
    )


class CheckResult(WireModel):
    name: str
    type: str
    candidate: str
    passed: bool
    measured: float | None = None
    threshold: float | None = None
    detail: str


class VerdictResult(WireModel):
    winner: str | None = None  # None: no candidate completed the final stage (the status omits it)
    reference: str | None = None
    checks: list[CheckResult] = Field(default_factory=list)


def _run_check(check: Check, final: Decision, reference: str, direction: str) -> CheckResult:
    entries = {e.candidate: e for e in final.ranking}
    base = dict(name=check.name, type=check.type, candidate=check.candidate)
    c = entries.get(check.candidate)
    if c is None or not c.complete:
        why = "did not reach the final stage" if c is None else "has failed cells in the final stage"
        return CheckResult(**base, passed=False, detail=f"{check.candidate} {why}")
    _, values = _complete(c)
    if check.type == "rankFirstAllCells":
        firsts = 0
        for j in range(len(final.cells)):
            mine = _orient(values[j], direction)
            others = [
                _orient(v, direction)
                for e in final.ranking
                if e.candidate != c.candidate and (v := e.values[j]) is not None
            ]
            firsts += all(mine < o - EPS for o in others)
        n = len(final.cells)
        return CheckResult(
            **base,
            passed=firsts == n,
            measured=float(firsts),
            threshold=float(n),
            detail=f"first in {firsts} of {n} final cells",
        )
    ref = entries.get(reference)
    if ref is None or not ref.complete:
        return CheckResult(**base, passed=False, detail=f"reference {reference} has no complete final result")
    mc = statistics.fmean(values)
    mr = statistics.fmean(_complete(ref)[1])
    if check.type == "nearEquivalence":
        assert check.margin is not None  # the API requires it for this type
        gap = abs(mc - mr)
        return CheckResult(
            **base,
            passed=gap <= check.margin + EPS,
            measured=gap,
            threshold=check.margin,
            detail=f"|mean {mc:.4f} - reference mean {mr:.4f}| = {gap:.4f} vs margin {check.margin}",
        )
    assert check.max_gap is not None  # the API requires it for meanGap
    gap = _orient(mc, direction) - _orient(mr, direction)
    return CheckResult(
        **base,
        passed=gap <= check.max_gap + EPS,
        measured=gap,
        threshold=check.max_gap,
        detail=f"mean gap to reference {gap:+.4f} vs maxGap {check.max_gap}",
    )


def verdict(final: Decision, spec_verdict: Verdict | None, direction: str) -> VerdictResult:
    """Winner = best of the final ranking (if complete), plus each frozen check with its measured value."""
    winner = final.ranking[0].candidate if final.ranking and final.ranking[0].complete else None
    if spec_verdict is None:
        return VerdictResult(winner=winner)
    return VerdictResult(
        winner=winner,
        reference=spec_verdict.reference,
        checks=[_run_check(ch, final, spec_verdict.reference, direction) for ch in spec_verdict.checks],
    )
