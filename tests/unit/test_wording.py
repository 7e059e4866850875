"""How a decision is said (core/wording.py), data in, words out. Issue 21, defect 5: a candidate
that `keep` promotes without a complete result is named as such wherever the decision is told."""

from __future__ import annotations

import pytest

from promotion_ladder.core.api import Promote, Stage
from promotion_ladder.core.cell import CellOutcome
from promotion_ladder.core.rules import decide
from promotion_ladder.core.wording import decision_message, entry_outcome, keep_sentence


def OK(v):
    return CellOutcome("succeeded", value=v)


FAIL = CellOutcome("failed", reason="diverged")
STAGE = Stage(name="s", budget="1m", host_blocks=["a", "b"], seeds=[1], promote=Promote(top=1, keep=["ref"]))


def decision(ref_cells):
    values = {"x": [OK(1.0), OK(1.1)], "y": [OK(1.2), OK(1.3)], "ref": ref_cells}
    outcomes = {(c, hb, 1): o for c, cells in values.items() for hb, o in zip(("a", "b"), cells, strict=True)}
    return decide(STAGE, ["x", "y", "ref"], outcomes, "minimize")


# name -> (ref's cells, the sentence, ref's outcome in the ranking)
CASES = {
    "every cell of the kept candidate failed": (
        [FAIL, FAIL],
        "kept by keep without a complete result: ref (0 of 2 cells succeeded)",
        "promoted (keep, no complete result: 0 of 2 cells succeeded)",
    ),
    "one of its cells failed": (
        [OK(0.5), FAIL],
        "kept by keep without a complete result: ref (1 of 2 cells succeeded)",
        "promoted (keep, no complete result: 1 of 2 cells succeeded)",
    ),
    "complete, kept though not in the top": ([OK(2.0), OK(2.0)], None, "promoted (keep)"),
}


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_a_kept_candidate_without_a_complete_result_is_said(name):
    cells, sentence, outcome = CASES[name]
    d = decision(cells)
    assert d.promoted == ["x", "ref"]
    assert keep_sentence(d) == sentence
    message = decision_message(d)
    assert message.startswith("stage s: promoted x, ref (top 1 by mean, keep ref over 2 cells")
    assert (sentence in message) if sentence else "without a complete result" not in message
    ref = next(e for e in d.ranking if e.candidate == "ref")
    assert entry_outcome(ref, final=False, winner=None) == outcome
