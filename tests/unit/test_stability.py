"""Rank stability and promotion robustness (core/stability.py), as data in, data out."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from promotion_ladder.core.api import Promote, Stage
from promotion_ladder.core.cell import CellOutcome
from promotion_ladder.core.recorded import parse_results
from promotion_ladder.core.rules import decide
from promotion_ladder.core.stability import (
    RESAMPLES,
    draws,
    flips,
    host_block_taus,
    kendall_tau_b,
    promotion_shares,
    resample_seed,
    stability,
    stage_pair,
)
from promotion_ladder.core.status import decisions_from_status, parse_status, simulate
from promotion_ladder.files import read_ladder, read_text

from .builders import build, funnel_stages, ladder_doc

ROOT = Path(__file__).resolve().parents[2]
OK = lambda v: CellOutcome("succeeded", value=v)  # noqa: E731
FAIL = CellOutcome("failed", reason="diverged")

# ---- Kendall's tau-b: hand-computed values ---------------------------------------------------
# C concordant, D discordant pairs; n0 = n(n-1)/2; tx, ty pairs tied in x, in y;
# tau-b = (C - D) / sqrt((n0 - tx) (n0 - ty)).
TAUS = {
    "same order": ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),  # C=6 D=0
    "reversed": ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),  # C=0 D=6
    "one swap of four": ([1, 2, 3, 4], [1, 3, 2, 4], 4 / 6),  # C=5 D=1
    "no association": ([1, 2, 3, 4], [2, 4, 1, 3], 0.0),  # C=3 D=3
    "tie in x only": ([1, 1, 2], [1, 2, 3], 2 / math.sqrt(2 * 3)),  # C=2 D=0 tx=1 ty=0: 0.8165
    "a tie in x and another in y": ([1, 1, 2, 3], [1, 2, 2, 3], 4 / math.sqrt(5 * 5)),  # C=4 D=0 tx=1 ty=1: 0.8
    "a pair tied in both": ([1, 1, 2], [5, 5, 6], 2 / math.sqrt(2 * 2)),  # C=2 D=0 tx=ty=1 (the same pair): 1.0
    "ties, discordant": ([1, 2, 2, 3], [3, 1, 2, 1], -4 / math.sqrt(5 * 5)),  # C=0 D=4 tx=1 ty=1: -0.8
    # by x the pairs are (1,10) (2,30) (3,20) (4,40): one discordant pair, (30, 20), of 6.
    "unsorted input": ([3, 1, 4, 2], [20, 10, 40, 30], 4 / 6),
}


@pytest.mark.parametrize("name", list(TAUS), ids=list(TAUS))
def test_kendall_tau_b_by_hand(name):
    x, y, want = TAUS[name]
    assert kendall_tau_b(x, y) == pytest.approx(want, abs=1e-12)
    assert kendall_tau_b(y, x) == pytest.approx(want, abs=1e-12)  # symmetric


def _tau_b_by_pairs(x, y):
    """The O(n^2) definition, to check Knight's algorithm on many tied inputs."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
        tx += sx == 0
        ty += sy == 0
        c += sx * sy > 0
        d += sx * sy < 0
    n0 = len(x) * (len(x) - 1) // 2
    return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


@pytest.mark.parametrize("seed", range(20))
def test_kendall_tau_b_matches_the_definition(seed):
    rnd = random.Random(seed)
    n = rnd.randint(2, 40)
    x = [rnd.choice([0.5, 1.0, 1.5, 2.0, 3.0]) for _ in range(n)]
    y = [rnd.choice([1.0, 2.0, 3.0, 4.0]) for _ in range(n)]
    if len(set(x)) == 1 or len(set(y)) == 1:
        assert kendall_tau_b(x, y) is None
    else:
        assert kendall_tau_b(x, y) == pytest.approx(_tau_b_by_pairs(x, y), abs=1e-12)


@pytest.mark.parametrize(
    "x, y",
    [([], []), ([1.0], [2.0]), ([1, 1, 1], [1, 2, 3]), ([1, 2, 3], [5, 5, 5])],
    ids=["empty", "one", "constant x", "constant y"],
)
def test_kendall_tau_b_undefined(x, y):
    assert kendall_tau_b(x, y) is None


def test_kendall_tau_b_at_a_thousand_is_exact():
    rnd = random.Random(3)
    x = [rnd.randint(0, 50) for _ in range(1000)]
    y = [v + rnd.randint(-20, 20) for v in x]
    assert kendall_tau_b(x, y) == pytest.approx(_tau_b_by_pairs(x, y), abs=1e-12)


# ---- stage pairs and host blocks ---------------------------------------------------------------


def stage(name="s", promote=None, blocks=("a", "b"), seeds=(1,)):
    return Stage(
        name=name,
        budget="1m",
        host_blocks=list(blocks),
        seeds=list(seeds),
        promote=Promote(**promote) if promote is not None else None,
    )


def decided(st: Stage, table: dict[str, list[float | None]], direction="minimize"):
    """{candidate: [value per cell in st.cells() order, None = failed]} -> the stage's Decision."""
    outcomes = {
        (c, hb, s): (FAIL if v is None else OK(v))
        for c, vals in table.items()
        for (hb, s), v in zip(st.cells(), vals, strict=True)
    }
    return decide(st, list(table), outcomes, direction)


def test_stage_pair_orients_each_stage_and_counts_only_complete_candidates():
    # Stage 1 ranks by meanRank (lower is better), stage 2 by the mean of a maximized metric.
    s1 = decided(
        stage("s1", {"top": 3, "aggregate": "meanRank"}),
        {"x": [3.0, 3.0], "y": [2.0, 2.0], "z": [1.0, 1.0], "w": [0.0, None]},
        "maximize",
    )
    s2 = decided(stage("s2"), {"x": [1.0, 1.0], "y": [3.0, 3.0], "z": [2.0, 2.0]}, "maximize")
    # stage 1 order x, y, z (w incomplete, not counted); stage 2 order y, z, x: pairs (x,y) D, (x,z) D, (y,z) C.
    t = stage_pair(s1, s2)
    assert (t.from_, t.to, t.candidates) == ("s1", "s2", 3)
    assert t.kendall_tau == pytest.approx(-1 / 3, abs=1e-4)
    assert t.wire() == {"from": "s1", "to": "s2", "candidates": 3, "kendallTau": -0.3333}


NULL_PAIRS = {
    "one candidate in both": (
        {"x": [1.0, 1.0], "y": [2.0, 2.0]},
        {"x": [1.0, 1.0], "y": [None, 2.0]},
        "fewer than two candidates complete in both s1 and s2",
    ),
    "constant later stage": (
        {"x": [1.0, 1.0], "y": [2.0, 2.0]},
        {"x": [1.5, 1.5], "y": [1.5, 1.5]},
        "every candidate has the same value in stage s2: no ranking to compare",
    ),
}


@pytest.mark.parametrize("name", list(NULL_PAIRS), ids=list(NULL_PAIRS))
def test_stage_pair_undefined_has_a_reason(name):
    first, second, reason = NULL_PAIRS[name]
    t = stage_pair(decided(stage("s1", {"top": 2}), first), decided(stage("s2"), second))
    assert t.kendall_tau is None and t.reason == reason
    assert "kendallTau" not in t.wire()


def test_host_block_taus_compare_per_block_means():
    st = stage("s", {"top": 1}, blocks=("a", "b", "c"), seeds=(1, 2))
    # means per block: a: x 1, y 2, z 3 | b: x 1, y 3, z 2 | c: all 5 (constant)
    d = decided(
        st, {"x": [1, 1, 1, 1, 5, 5], "y": [2, 2, 3, 3, 5, 5], "z": [3, 3, 2, 2, 5, 5], "w": [0, 0, 0, 0, 0, None]}
    )
    got = {(t.a, t.b): (t.candidates, t.kendall_tau, t.reason) for t in host_block_taus(d)}
    assert got == {
        ("a", "b"): (3, pytest.approx(1 / 3, abs=1e-4), None),  # (x,y) C, (x,z) C, (y,z) D
        ("a", "c"): (3, None, "every candidate has the same value in host block c: no ranking to compare"),
        ("b", "c"): (3, None, "every candidate has the same value in host block c: no ranking to compare"),
    }
    assert (
        host_block_taus(decided(stage("one", {"top": 1}, blocks=("a",), seeds=(1, 2)), {"x": [1, 2], "y": [2, 1]}))
        == []
    )


# ---- promotion robustness ---------------------------------------------------------------------

# Stage "s" has two cells, a/1 and b/1. Its 200 resamples (seed crc32("promotion-ladder/stability/s"))
# drew {a, a} 47 times, {a, b} 95 times and {b, b} 58 times (the draw is pinned: the figure is audited).
DRAWN = {(0, 0): 47, (0, 1): 95, (1, 1): 58}
HAND = {
    # x [1, 3], y [2, 2], z [2.5, 2.5], entering x, y, z (w failed b/1), minimize, top 1 by mean:
    # {a,a}: x 1 < y 2 -> x.  {a,b}: x 2 = y 2, equal means, x entered first -> x.  {b,b}: y 2 < x 3 -> y.
    # x: (47 + 95) / 200 = 0.71; y: 58 / 200 = 0.29; z never. w is incomplete in every resample,
    # though it would win every {a,a} (0.5) if its failed cell could be drawn away.
    "top 1, a tie broken by entering order": ({"top": 1}, {"x": 0.71, "y": 0.29, "z": 0.0}),
    # Also within 0.6 of the best: {a,a}: x 1, y 2 (gap 1) -> x.  {a,b}: x 2, y 2 (gap 0), z 2.5 (gap 0.5)
    # -> x, y, z.  {b,b}: y 2, z 2.5 (gap 0.5), x 3 (gap 1) -> y, z.
    # x: 142 / 200 = 0.71; y and z: (95 + 58) / 200 = 0.765.
    "within": ({"top": 1, "within": 0.6}, {"x": 0.71, "y": 0.765, "z": 0.765}),
    # keep z: promoted in every resample whatever its values.
    "keep": ({"top": 1, "keep": ["z"]}, {"x": 0.71, "y": 0.29, "z": 1.0}),
    # worst cell: x's worst is 1 {a,a} or 3 {a,b}, {b,b}; y's 2; z's 2.5 -> x 47 / 200, y 153 / 200.
    "worst": ({"top": 1, "aggregate": "worst"}, {"x": 0.235, "y": 0.765, "z": 0.0}),
}
VALUES = {"x": [1.0, 3.0], "y": [2.0, 2.0], "z": [2.5, 2.5], "w": [0.5, None]}


def test_the_resamples_are_pinned():
    assert resample_seed("s") == 2030724941
    assert Counter(tuple(sorted(d)) for d in draws("s", 2)) == DRAWN
    assert draws("s", 2) == draws("s", 2) and len(draws("s", 2)) == RESAMPLES


@pytest.mark.parametrize("name", list(HAND), ids=list(HAND))
def test_promotion_shares_by_hand(name):
    promote, want = HAND[name]
    d = decided(stage("s", promote), VALUES)
    p = promotion_shares(d, list(VALUES))
    assert (p.stage, p.resamples, p.seed, p.reason) == ("s", 200, 2030724941, None)
    assert p.promoted_share == pytest.approx(want)  # complete candidates only: no w


def test_a_promotion_under_the_bar_is_flagged():
    d = decided(stage("s", {"top": 1}), VALUES)
    s = stability([d], {"s": list(VALUES)})
    assert d.promoted == ["x"]
    assert flips(s, [d]) == [("s", "x", 0.71)]
    assert flips(s, [d], below=0.7) == []


NULL_SHARES = {
    "one cell": (
        stage("s", {"top": 1}, blocks=("a",)),
        {"x": [1.0], "y": [2.0]},
        "the stage has one cell: resampling cannot vary it",
    ),
    "nobody complete": (
        stage("s", {"top": 1}),
        {"x": [1.0, None], "y": [None, 2.0]},
        "no candidate completed every cell of the stage",
    ),
}


@pytest.mark.parametrize("name", list(NULL_SHARES), ids=list(NULL_SHARES))
def test_promotion_shares_undefined(name):
    st, values, reason = NULL_SHARES[name]
    p = promotion_shares(decided(st, values), list(values))
    assert p.promoted_share is None and p.reason == reason
    assert "promotedShare" not in p.wire()


def _shares_by_decide(st: Stage, table: dict, direction: str) -> dict[str, float]:
    """The rule re-applied literally: rules.decide on every resample (a stage of the drawn cells)."""
    cells = st.cells()
    counts = Counter()
    complete = [c for c, v in table.items() if None not in v]
    for idx in draws(st.name, len(cells)):
        drawn = Stage(name=st.name, budget="1m", host_blocks=["r"], seeds=list(range(len(idx))), promote=st.promote)
        outcomes = {}
        for c, vals in table.items():
            for k, j in enumerate(idx):  # a failed candidate stays failed in every resample
                outcomes[(c, "r", k)] = OK(vals[j]) if c in complete else FAIL
        counts.update(decide(drawn, list(table), outcomes, direction).promoted)
    return {c: counts[c] / len(draws(st.name, len(cells))) for c in complete}


@pytest.mark.parametrize("seed", range(24))
def test_promotion_shares_equal_rules_decide_on_every_resample(seed):
    """The fast path (grouped draws, candidates that cannot reach the bar skipped) is rules.decide."""
    rnd = random.Random(seed)
    n, blocks, seeds = rnd.randint(2, 7), rnd.choice([("a",), ("a", "b"), ("a", "b", "c")]), rnd.choice([(1,), (1, 2)])
    if len(blocks) * len(seeds) < 2:
        seeds = (1, 2)
    promote = {"top": rnd.randint(1, n), "aggregate": rnd.choice(["mean", "median", "worst", "meanRank"])}
    if rnd.random() < 0.4:
        promote["within"] = rnd.choice([0.0, 0.1, 0.25, 1.0])
    names = [f"c{i}" for i in range(n)]
    if rnd.random() < 0.3:
        promote["keep"] = [rnd.choice(names)]
    st = stage(f"s{seed}", promote, blocks, seeds)
    grid = [1.0, 1.1, 1.2, 1.3, 1.5]  # few distinct values: many ties
    table = {c: [None if rnd.random() < 0.08 else rnd.choice(grid) for _ in st.cells()] for c in names}
    direction = rnd.choice(["minimize", "maximize"])
    entering = list(table)
    rnd.shuffle(entering)  # the planner's order is the last tie-break, whatever the ranking says
    d = decide(
        st,
        entering,
        {
            (c, hb, s): (FAIL if v is None else OK(v))
            for c, vals in table.items()
            for (hb, s), v in zip(st.cells(), vals, strict=True)
        },
        direction,
    )
    got = promotion_shares(d, entering).promoted_share
    want = _shares_by_decide(st, {c: table[c] for c in entering}, direction)
    if not want:
        assert got is None
    else:
        assert got == pytest.approx(want), (promote, table)


# ---- the whole figure, from a simulated ladder -----------------------------------------------


def protocol_status():
    ladder = read_ladder(ROOT / "examples/protocol-ladder.yaml")
    results = ROOT / "examples/protocol-results.jsonl"
    return simulate(ladder.spec, parse_results(read_text(results), source=str(results)))


def test_protocol_example_figures():
    status, p = protocol_status()
    s = status.stability
    assert [(t.from_, t.to, t.candidates) for t in s.stages] == [
        ("2m", "5m", 12),
        ("5m", "10m", 9),
        ("10m", "60m", 4),
        ("60m", "12h", 3),
    ]
    assert all(t.kendall_tau is not None and -1 <= t.kendall_tau <= 1 for t in s.stages)
    assert [t.stage for t in s.host_blocks] == ["5m", "10m", "60m", "12h"]  # 2m ran on a100 only
    assert [pr.stage for pr in s.promotion] == ["2m", "5m", "10m", "60m"]  # not the final stage
    assert s.promotion[0].promoted_share == dict.fromkeys(s.promotion[0].promoted_share, 1.0)  # top 12 of 12


def test_a_status_file_replays_the_same_figures():
    status, _ = protocol_status()
    back = parse_status(json.loads(json.dumps(status.wire(), allow_nan=False)))
    assert back.stability == status.stability
    entering = {st.name: list(dict.fromkeys(c.candidate for c in st.cells)) for st in back.stages}
    assert stability(decisions_from_status(back), entering) == status.stability


def test_a_failed_first_stage_has_no_pairs_and_no_nan():
    ladder = build(ladder_doc(candidates=3))
    recorded = {("s1", c, hb, 1): FAIL for c in ("c0", "c1", "c2") for hb in ("a100", "l40s")}
    status, _ = simulate(ladder.spec, recorded)
    assert status.phase == "Failed"
    s = status.stability
    assert s.stages == [] and s.promotion[0].reason == "no candidate completed every cell of the stage"
    assert s.host_blocks[0].reason == "fewer than two candidates complete in stage s1"
    json.dumps(status.wire(), allow_nan=False)


def test_status_of_a_1000_candidate_ladder_with_stability_fits_the_object_limit():
    """1,000 candidates x 4 cells at stage 1, 100 x 4 at stage 2, 10 x 8 at the final stage."""
    names = [f"cand-{i:04d}" for i in range(1000)]
    stages = funnel_stages()
    ladder = build(ladder_doc(candidates=names, stages=stages))
    rnd = random.Random(1)
    recorded = {
        (st.name, c, hb, s): CellOutcome("succeeded", rnd.uniform(0.9, 1.5), train_seconds=rnd.uniform(100, 4000))
        for st in ladder.spec.stages
        for c in names
        for hb, s in st.cells()
    }
    status, _ = simulate(ladder.spec, recorded)
    s = status.stability
    assert len(s.stages) == 2 and len(s.host_blocks) == 3 and len(s.promotion[0].promoted_share) == 1000
    doc = json.dumps({"spec": ladder.spec.wire(), "status": status.wire()}, separators=(",", ":"), allow_nan=False)
    print(f"spec + status of a 1,000-candidate ladder: {len(doc) / 1024:.0f} KiB")
    assert len(doc) < 1.5 * 1024 * 1024 - 64 * 1024  # etcd's 1.5 MiB object limit, room left for metadata


# ---- shown to people: `ladder simulate` ---------------------------------------------------------


def test_simulate_prints_tau_lines_and_a_flip_warning(tmp_path, capsys):
    import yaml

    from promotion_ladder.cli import main

    doc = ladder_doc(
        candidates=["x", "y", "z"],
        stages=[
            {"name": "s1", "budget": "2m", "hostBlocks": ["a100", "l40s"], "seeds": [1], "promote": {"top": 1}},
            {"name": "s2", "budget": "10m", "hostBlocks": ["a100", "l40s"], "seeds": [1]},
        ],
    )
    (tmp_path / "ladder.yaml").write_text(yaml.safe_dump(doc))
    values = {"s1": {"x": [1.0, 3.0], "y": [2.0, 2.0], "z": [2.5, 2.5]}, "s2": {"x": [1.0, 1.1]}}
    (tmp_path / "results.jsonl").write_text(
        "".join(
            json.dumps({"stage": st, "candidate": c, "hostBlock": hb, "seed": 1, "value": v}) + "\n"
            for st, table in values.items()
            for c, vals in table.items()
            for hb, v in zip(["a100", "l40s"], vals, strict=True)
        )
    )
    assert main(["simulate", str(tmp_path / "ladder.yaml"), "--results", str(tmp_path / "results.jsonl")]) == 0
    out = capsys.readouterr().out
    # x wins s1 on a tie broken by entering order; its share is the resamples that drew a100 at least once.
    n = Counter(tuple(sorted(d)) for d in draws("s1", 2))
    share = (n[(0, 0)] + n[(0, 1)]) / RESAMPLES
    assert "  s1 -> s2: tau undefined (fewer than two candidates complete in both s1 and s2) over 1 candidate" in out
    # a100 orders x, y, z; l40s y, z, x: (x,y) and (x,z) discordant, (y,z) concordant: (1 - 2) / 3.
    assert "  stage s1, host block a100 vs l40s: tau -0.33 over 3 candidates" in out
    assert (
        f"warning: stage s1: promotion of x would flip in {1 - share:.0%} of resamples "
        f"(promoted in {round(share * 200)} of 200 resamples of the stage's cells)"
    ) in out


def test_ladder_run_prints_the_figures_and_simulate_gives_the_same(tmp_path, capsys):
    """`ladder run` (the fake trainer, real processes) and `ladder simulate` of the same results agree."""
    import yaml

    from promotion_ladder.cli import main
    from promotion_ladder.core.status import outcomes_from_status
    from promotion_ladder.files import read_status

    from .test_runner import fake_ladder

    doc = fake_ladder({"c0": {"base": 1.0}, "c1": {"base": 0.9}, "c2": {"base": 1.5}, "c3": {"base": 0.7}})
    (tmp_path / "ladder.yaml").write_text(yaml.safe_dump(doc))
    assert main(["run", str(tmp_path / "ladder.yaml"), "--output", str(tmp_path / "s.json")]) == 0
    err = capsys.readouterr().err
    assert "rank stability (Kendall tau-b" in err and "  s1 -> s2: tau 1.00 over 2 candidates" in err
    run = read_status(tmp_path / "s.json")
    simulated, _ = simulate(build(doc).spec, outcomes_from_status(run))
    assert simulated.stability == run.stability and run.stability.promotion
