"""Promotion and verdict rules, as data in, data out."""

import pytest

from promotion_ladder.core.api import Check, Promote, Stage, Verdict
from promotion_ladder.core.cell import CellOutcome
from promotion_ladder.core.rules import decide, rank_stage, verdict

OK = lambda v: CellOutcome("succeeded", value=v)  # noqa: E731
FAIL = CellOutcome("failed", reason="diverged")


def stage(promote=None, blocks=("a", "b"), seeds=(1,)):
    return Stage(
        name="s",
        budget="1m",
        host_blocks=list(blocks),
        seeds=list(seeds),
        promote=Promote(**promote) if promote else None,
    )


def outcomes(table):
    """{candidate: [value per cell in (a,1),(b,1) order]} -> outcomes keyed by (candidate, hb, seed)."""
    cells = [("a", 1), ("b", 1)]
    return {
        (c, hb, s): (FAIL if v is None else OK(v))
        for c, vals in table.items()
        for (hb, s), v in zip(cells, vals, strict=True)
    }


CASES = {
    "mean, top 2": dict(
        promote={"top": 2},
        values={"x": [1.0, 1.2], "y": [0.9, 1.0], "z": [1.5, 1.5]},
        ranking=["y", "x", "z"],
        promoted=["y", "x"],
    ),
    "worst picks the robust one": dict(
        promote={"top": 1, "aggregate": "worst"},
        values={"x": [0.5, 1.3], "y": [1.0, 1.1]},
        ranking=["y", "x"],
        promoted=["y"],
    ),
    "median of two is the mean": dict(
        promote={"top": 1, "aggregate": "median"},
        values={"x": [0.5, 1.3], "y": [1.0, 1.1]},
        ranking=["x", "y"],
        promoted=["x"],
    ),
    "meanRank": dict(
        promote={"top": 1, "aggregate": "meanRank"},
        values={"x": [1.0, 2.0], "y": [1.1, 1.9], "z": [0.5, 3.0]},
        ranking=["x", "y", "z"],
        promoted=["x"],
    ),  # ranks x:(2,2) y:(3,1) z:(1,3): all 2.0, mean breaks the tie
    "failed ranks last and is not promoted": dict(
        promote={"top": 2},
        values={"x": [0.1, None], "y": [1.0, 1.0], "z": [2.0, 2.0]},
        ranking=["y", "z", "x"],
        promoted=["y", "z"],
    ),
    "fewer complete than top": dict(
        promote={"top": 3},
        values={"x": [0.1, None], "y": [1.0, 1.0], "z": [None, None]},
        ranking=["y", "x", "z"],
        promoted=["y"],
    ),
    "keep promotes a failed reference": dict(
        promote={"top": 1, "keep": ["x"]},
        values={"x": [None, None], "y": [1.0, 1.0], "z": [2.0, 2.0]},
        ranking=["y", "z", "x"],
        promoted=["y", "x"],
    ),
    "within adds near ties": dict(
        promote={"top": 1, "within": 0.05},
        values={"x": [1.00, 1.00], "y": [1.04, 1.04], "z": [1.2, 1.2]},
        ranking=["x", "y", "z"],
        promoted=["x", "y"],
    ),
    "exact tie broken by spec order": dict(
        promote={"top": 1}, values={"y": [1.0, 1.0], "x": [1.0, 1.0]}, ranking=["y", "x"], promoted=["y"]
    ),
}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_decide(name):
    case = CASES[name]
    d = decide(stage(case["promote"]), list(case["values"]), outcomes(case["values"]), "minimize")
    assert [e.candidate for e in d.ranking] == case["ranking"]
    assert d.promoted == case["promoted"]
    assert d.cells == ["a/1", "b/1"]
    assert d.ranking[0].values == list(case["values"][case["ranking"][0]])


def test_maximize_reverses_order():
    values = {"x": [1.0, 1.0], "y": [2.0, 2.0]}
    d = decide(stage({"top": 1}), list(values), outcomes(values), "maximize")
    assert d.promoted == ["y"]
    d = decide(
        stage({"top": 1, "aggregate": "worst"}), ["x", "y"], outcomes({"x": [3.0, 0.5], "y": [2.0, 1.5]}), "maximize"
    )
    assert d.promoted == ["y"] and d.ranking[0].aggregate == 1.5


def test_promoted_by_is_recorded():
    values = {"x": [1.0, 1.0], "y": [1.01, 1.01], "z": [3.0, 3.0]}
    d = decide(stage({"top": 1, "within": 0.02, "keep": ["z"]}), list(values), outcomes(values), "minimize")
    assert {e.candidate: e.promoted_by for e in d.ranking} == {"x": "top", "y": "within", "z": "keep"}


def final_decision(values):
    return decide(stage(), list(values), outcomes(values), "minimize")


VERDICTS = {
    "near equivalence fails outside margin": (
        {"ref": [1.0, 1.0], "c": [1.02, 1.0]},
        Check(name="n", type="nearEquivalence", candidate="c", margin=0.005),
        False,
        0.01,
    ),
    "near equivalence passes inside margin": (
        {"ref": [1.0, 1.0], "c": [1.004, 1.0]},
        Check(name="n", type="nearEquivalence", candidate="c", margin=0.005),
        True,
        0.002,
    ),
    "mean gap counts the worse direction": (
        {"ref": [1.0, 1.0], "c": [0.9, 0.9]},
        Check(name="g", type="meanGap", candidate="c", max_gap=0.01),
        True,
        -0.1,
    ),
    "mean gap fails when worse": (
        {"ref": [1.0, 1.0], "c": [1.03, 1.01]},
        Check(name="g", type="meanGap", candidate="c", max_gap=0.01),
        False,
        0.02,
    ),
    "rank first in all cells": (
        {"ref": [1.0, 1.0], "c": [1.1, 1.2]},
        Check(name="r", type="rankFirstAllCells", candidate="ref"),
        True,
        2.0,
    ),
    "rank first fails on one cell": (
        {"ref": [1.0, 1.3], "c": [1.1, 1.2]},
        Check(name="r", type="rankFirstAllCells", candidate="ref"),
        False,
        1.0,
    ),
    "failed candidate fails its check": (
        {"ref": [1.0, 1.0], "c": [None, 1.2]},
        Check(name="n", type="nearEquivalence", candidate="c", margin=1.0),
        False,
        None,
    ),
}


@pytest.mark.parametrize("name", list(VERDICTS), ids=list(VERDICTS))
def test_verdict_checks(name):
    values, check, passed, measured = VERDICTS[name]
    v = verdict(final_decision(values), Verdict(reference="ref", checks=[check]), "minimize")
    (r,) = v.checks
    assert r.passed is passed, r.detail
    assert r.measured == (pytest.approx(measured) if measured is not None else None)


def test_verdict_winner_and_missing_candidate():
    v = verdict(
        final_decision({"ref": [1.0, 1.0], "c": [0.5, 0.5]}),
        Verdict(reference="ref", checks=[Check(name="x", type="meanGap", candidate="gone", max_gap=1)]),
        "minimize",
    )
    assert v.winner == "c"
    assert not v.checks[0].passed and "did not reach the final stage" in v.checks[0].detail


def test_rank_stage_partial_results_for_leader():
    r = rank_stage(stage(), ["x", "y"], {("y", "a", 1): OK(1.0)}, "minimize")
    assert [e.candidate for e in r] == ["y", "x"] and not r[0].complete
