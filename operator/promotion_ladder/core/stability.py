"""How far each recorded decision can be trusted: rank stability and promotion robustness.

Owns `status.stability`. It is computed from the recorded decisions only (a decision holds
every cell's value, the frozen rule and, with the planner's entering order, everything the rule
read), so `ladder simulate`, `ladder run` and the operator give the same figures for the same
cells, and a status file replays them.

- `stages`: Kendall's tau-b between two consecutive decided stages' aggregates (each stage's
  own promote.aggregate; mean for the final stage), over the candidates complete in both.
  Near 1: the later, longer budget ranked them as the earlier one did; near 0: the earlier
  ranking said little about the later one; negative: reversed.
- `hostBlocks`: per decided stage with two or more host blocks, for each pair of blocks, tau-b
  between the candidates' means over each block's cells, over the candidates complete in the
  stage. Low: the ranking depends on the hardware.
- `promotion`: per decided stage that promotes (every stage but the last), a bootstrap of the
  decision. Each resample draws the stage's C cells, (hostBlock, seed), C times with
  replacement; the same draw for every candidate (a cell is a condition all candidates shared).
  The frozen rule (core/rules.py) is re-applied to each resample; a candidate with a failed cell
  stays incomplete in every resample (resampling varies which values count, not which runs
  failed). `promotedShare` is the fraction of resamples that promote each complete candidate.

The resampling is fixed, because the figure is part of the audit and must replay the same:
RESAMPLES = 200 resamples per decision, drawn with `random.Random(seed)`, `seed =
zlib.crc32(b"promotion-ladder/stability/" + stage name)`, resample r being C successive
`randrange(C)` draws. 200 resamples put a share's standard error under 0.035 (at 0.5;
0.028 at 0.8), enough to tell a solid promotion from a coin flip, and keep the cost small.

Undefined figures (fewer than two candidates, a constant ranking, a stage of one cell) carry
no value and a `reason`; nothing here produces NaN or infinity.

Cost (the operator rebuilds the status on every reconcile; benchmarks/stability_bench.py):
tau-b is Knight's O(n log n) algorithm; the resampling groups the resamples by how often each
cell was drawn (at most C(2C-1, C) distinct draws, 35 for 4 cells), skips candidates whose best
possible value cannot reach the promotion bar, and is memoised on the decision's inputs.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from itertools import pairwise
from operator import itemgetter

from pydantic import Field

from .model import WireModel
from .rules import EPS, Decision, _aggregate, _mean_ranks, _orient

RESAMPLES = 200
SEED_PREFIX = b"promotion-ladder/stability/"


class StagePairTau(WireModel):
    """Did the later, longer stage rank the candidates as the earlier one did?"""

    from_: str = Field(alias="from")
    to: str
    candidates: int = Field(description="Candidates complete in both stages.")
    kendall_tau: float | None = Field(
        default=None, description="Tau-b between the two stages' aggregates; absent when undefined."
    )
    reason: str | None = Field(default=None, description="Why kendallTau is undefined.")


class HostBlockTau(WireModel):
    """Did two host blocks rank a stage's candidates alike?"""

    stage: str
    a: str
    b: str
    candidates: int = Field(description="Candidates complete in the stage.")
    kendall_tau: float | None = Field(
        default=None, description="Tau-b between the candidates' means on block a and on block b."
    )
    reason: str | None = None


class PromotionShares(WireModel):
    """How often the stage's frozen rule, re-applied to resampled cells, promotes each candidate."""

    stage: str
    resamples: int
    seed: int = Field(description="random.Random seed of the resamples (crc32 of the stage name).")
    promoted_share: dict[str, float] | None = Field(
        default=None, description="Complete candidate -> fraction of resamples whose re-applied rule promotes it."
    )
    reason: str | None = None


class Stability(WireModel):
    """How far the decisions can be trusted (docs/stability.md); an undefined figure has a reason, no value."""

    stages: list[StagePairTau] = Field(default_factory=list)
    host_blocks: list[HostBlockTau] = Field(default_factory=list)
    promotion: list[PromotionShares] = Field(default_factory=list)


# ---- Kendall's tau-b --------------------------------------------------------------------------


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of paired observations, ties handled; None when undefined (n < 2, or x or y constant).

    Knight (1966): sort by (x, y), count the discordant pairs as inversions of y (a Fenwick tree
    over y's ranks), and the ties from the groups of equal x, equal y and equal (x, y).
    """
    n = len(x)
    if n != len(y):
        raise ValueError(f"kendall_tau_b: {n} x values but {len(y)} y values")
    if n < 2:
        return None
    pairs = sorted(zip(x, y, strict=True))
    n0 = n * (n - 1) // 2
    x_ties = sum(t * (t - 1) // 2 for t in Counter(p[0] for p in pairs).values())
    y_ties = sum(t * (t - 1) // 2 for t in Counter(p[1] for p in pairs).values())
    xy_ties = sum(t * (t - 1) // 2 for t in Counter(pairs).values())
    if x_ties == n0 or y_ties == n0:
        return None
    rank = {v: i + 1 for i, v in enumerate(sorted({p[1] for p in pairs}))}
    tree = [0] * (len(rank) + 1)
    discordant = 0
    for seen, (_, yv) in enumerate(pairs):
        r = rank[yv]
        # seen earlier with y <= this y: a prefix sum; the rest (strictly greater y) are discordant
        # (an equal x sorted them by y, so a tie in x never counts).
        i, at_most = r, 0
        while i:
            at_most += tree[i]
            i -= i & -i
        discordant += seen - at_most
        i = r
        while i < len(tree):
            tree[i] += 1
            i += i & -i
    num = n0 - x_ties - y_ties + xy_ties - 2 * discordant
    tau = num / math.sqrt((n0 - x_ties) * (n0 - y_ties))
    return max(-1.0, min(1.0, tau))


def _tau(x: list[float], y: list[float], what: str, x_name: str, y_name: str) -> tuple[float | None, str | None]:
    """tau-b rounded for the status, or the reason it is undefined."""
    if len(x) < 2:
        return None, f"fewer than two candidates {what}"
    t = kendall_tau_b(x, y)
    if t is not None:
        return round(t, 4), None
    same = x_name if len(set(x)) == 1 else y_name
    return None, f"every candidate has the same value in {same}: no ranking to compare"


# ---- stage pairs and host blocks ----------------------------------------------------------------


def _oriented_aggregates(d: Decision) -> dict[str, float]:
    """Complete candidate -> aggregate, oriented so that lower is better (meanRank already is)."""
    return {
        e.candidate: e.aggregate if d.rule.aggregate == "meanRank" else _orient(e.aggregate, d.rule.direction)
        for e in d.ranking
        if e.complete and e.aggregate is not None
    }


def stage_pair(a: Decision, b: Decision) -> StagePairTau:
    xa, xb = _oriented_aggregates(a), _oriented_aggregates(b)
    both = [c for c in xb if c in xa]
    tau, reason = _tau(
        [xa[c] for c in both],
        [xb[c] for c in both],
        f"complete in both {a.stage} and {b.stage}",
        f"stage {a.stage}",
        f"stage {b.stage}",
    )
    return StagePairTau(from_=a.stage, to=b.stage, candidates=len(both), kendall_tau=tau, reason=reason)


def _block_of(label: str) -> str:
    return label.rsplit("/", 1)[0]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)  # = statistics.fmean (what rules uses), without its overhead


def host_block_taus(d: Decision) -> list[HostBlockTau]:
    blocks = list(dict.fromkeys(_block_of(lbl) for lbl in d.cells))
    if len(blocks) < 2:
        return []
    return list(_host_block_taus(d.stage, tuple(d.cells), _complete_values(d)))


def _complete_values(d: Decision) -> tuple[tuple[float, ...], ...]:
    # A complete entry has a value in every cell (rules.rank_stage).
    return tuple(tuple(v for v in e.values if v is not None) for e in d.ranking if e.complete)


@lru_cache(maxsize=64)
def _host_block_taus(
    stage: str, cells: tuple[str, ...], values: tuple[tuple[float, ...], ...]
) -> tuple[HostBlockTau, ...]:
    blocks = list(dict.fromkeys(_block_of(lbl) for lbl in cells))
    cols = {b: [j for j, lbl in enumerate(cells) if _block_of(lbl) == b] for b in blocks}
    means = {b: [_mean([row[j] for j in js]) for row in values] for b, js in cols.items()}
    out = []
    for i, a in enumerate(blocks):
        for b in blocks[i + 1 :]:
            tau, reason = _tau(means[a], means[b], f"complete in stage {stage}", f"host block {a}", f"host block {b}")
            out.append(HostBlockTau(stage=stage, a=a, b=b, candidates=len(values), kendall_tau=tau, reason=reason))
    return tuple(out)


# ---- promotion robustness (bootstrap over cells) ------------------------------------------------


def resample_seed(stage: str) -> int:
    return zlib.crc32(SEED_PREFIX + stage.encode())


def draws(stage: str, n_cells: int, resamples: int = RESAMPLES) -> list[tuple[int, ...]]:
    """The resamples of a stage of `n_cells` cells: each a tuple of `n_cells` drawn cell indexes."""
    rnd = random.Random(resample_seed(stage))
    return [tuple(rnd.randrange(n_cells) for _ in range(n_cells)) for _ in range(resamples)]


# A stage's promotion rule as a hashable cache key: (direction, aggregate, top, within).
RuleKey = tuple[str, str, int, float | None]


def _promoted_in(
    idx: tuple[int, ...], rows: list[list[float]], ranks: list[list[float]] | None, rule: RuleKey, order: list[int]
) -> list[int]:
    """Rules.decide's top/within promotion of complete candidates on the resampled cells `idx`.

    rows[i] are candidate i's values (complete candidates only, entering order); ranks[i] its
    rank in each original cell for meanRank (a drawn cell repeats its column, so ranks stay).
    """
    direction, how, top, within = rule
    sign = 1.0 if direction == "minimize" else -1.0  # = rules._orient, exactly (a sign flip)
    pick, n, fsum = itemgetter(*idx), len(idx), math.fsum  # n >= 2: itemgetter gives a tuple
    keyed = []
    for i, row in enumerate(rows):
        vals = pick(row)
        mean = fsum(vals) / n  # = statistics.fmean, what rules uses
        if how == "mean":
            agg = sign * mean
        elif how == "meanRank":
            assert ranks is not None  # _shares ranks the cells for meanRank
            agg = fsum(pick(ranks[i])) / n  # ranks are halves: the sum is exact, as in rules
        else:
            agg = sign * _aggregate(list(vals), how, direction)
        keyed.append((agg, sign * mean, order[i], i))
    keyed.sort()
    promoted = [k[3] for k in keyed[:top]]
    if within is not None and keyed:
        best = keyed[0][0]
        promoted += [k[3] for k in keyed[top:] if k[0] - best <= within + EPS]
    return promoted


@lru_cache(maxsize=64)
def _shares(
    stage: str,
    rule: RuleKey,
    keep: tuple[str, ...],
    names: tuple[str, ...],
    values: tuple[tuple[float, ...], ...],
    order: tuple[int, ...],
) -> tuple[float, ...]:
    """Share of resamples promoting each complete candidate (`names`, their `values` per cell)."""
    direction, how, top, within = rule
    n_cells = len(values[0])
    # Only a candidate whose best possible aggregate can reach the promotion bar needs computing:
    # an aggregate of drawn cells lies between the candidate's best and worst cell, so one whose
    # best is worse than the top-th best worst-case is beaten by `top` others in every resample.
    if how == "meanRank":
        per_cell = [
            _mean_ranks({n: [v[j]] for n, v in zip(names, values, strict=True)}, direction) for j in range(n_cells)
        ]
        ranks = [[per_cell[j][n] for j in range(n_cells)] for n in names]
        lo_hi = [(min(r), max(r)) for r in ranks]
    else:
        ranks = None
        lo_hi = [(min(o), max(o)) for o in ([_orient(v, direction) for v in row] for row in values)]
    worst = sorted(hi for _, hi in lo_hi)
    bar = worst[top - 1] if 0 < top <= len(worst) else (math.inf if top > 0 else -math.inf)
    if within is not None:
        bar = max(bar, worst[0] + within + EPS)
    alive = [i for i, (lo, _) in enumerate(lo_hi) if lo <= bar]
    rows = [list(values[i]) for i in alive]
    sub_ranks = [ranks[i] for i in alive] if ranks is not None else None
    sub_order = [order[i] for i in alive]
    counts = [0] * len(names)
    # Resamples that drew each cell equally often promote the same candidates: decide once per multiset.
    for idx, times in Counter(tuple(sorted(d)) for d in draws(stage, n_cells)).items():
        for k in _promoted_in(idx, rows, sub_ranks, rule, sub_order):
            counts[alive[k]] += times
    kept = set(keep)
    return tuple(1.0 if n in kept else round(c / RESAMPLES, 4) for n, c in zip(names, counts, strict=True))


def promotion_shares(d: Decision, entering: Sequence[str] | None = None) -> PromotionShares:
    """Bootstrap of one promoting decision. `entering` is the stage's entering order (spec order
    for the first stage, then the promotion order): the rule's last tie-break."""
    seed, n_cells = resample_seed(d.stage), len(d.cells)
    base = dict(stage=d.stage, resamples=RESAMPLES, seed=seed)
    complete = [e for e in d.ranking if e.complete]
    if n_cells < 2:
        return PromotionShares(**base, reason="the stage has one cell: resampling cannot vary it")
    if not complete:
        return PromotionShares(**base, reason="no candidate completed every cell of the stage")
    pos = {c: i for i, c in enumerate(entering or [])}
    order = tuple(pos.get(e.candidate, len(pos) + k) for k, e in enumerate(d.ranking) if e.complete)
    r = d.rule
    keep = tuple(k for k in r.keep if any(e.candidate == k for e in complete))
    shares = _shares(
        d.stage,
        (r.direction, r.aggregate, r.top or 0, r.within),
        keep,
        tuple(e.candidate for e in complete),
        _complete_values(d),
        order,
    )
    return PromotionShares(**base, promoted_share=dict(zip((e.candidate for e in complete), shares, strict=True)))


# ---- the whole figure -------------------------------------------------------------------------


def stability(decisions: Sequence[Decision], entering: Mapping[str, Sequence[str]] | None = None) -> Stability:
    """The stability figures of a ladder's decisions (in stage order; the last may be the final stage's).

    `entering`: stage -> candidates that entered it, in the planner's order (ties' last resort).
    """
    entering = entering or {}
    final = decisions[-1].stage if decisions and decisions[-1].rule.top is None else None
    return Stability(
        stages=[stage_pair(a, b) for a, b in pairwise(decisions)],
        host_blocks=[t for d in decisions for t in host_block_taus(d)],
        promotion=[promotion_shares(d, entering.get(d.stage)) for d in decisions if d.stage != final],
    )


def flips(s: Stability, decisions: Sequence[Decision], below: float = 0.8) -> list[tuple[str, str, float]]:
    """(stage, candidate, share) of each candidate promoted by rank whose share is under `below`."""
    by_stage = {p.stage: p for p in s.promotion}
    out = []
    for d in decisions:
        p = by_stage.get(d.stage)
        if p is None or p.promoted_share is None:
            continue
        for e in d.ranking:
            share = p.promoted_share.get(e.candidate)
            if e.promoted_by in ("top", "within") and share is not None and share < below:
                out.append((d.stage, e.candidate, share))
    return out
