"""The core's ladder step: data in, data out (the adapters' translations are tested with them)."""

from __future__ import annotations

from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import CellKey, CellOutcome
from promotion_ladder.core.planner import stage_cells
from promotion_ladder.core.step import step

from .builders import edit, ladder_doc

NOW, LATER = "2026-11-29T10:00:00Z", "2026-11-29T11:00:00Z"
SPEC = load_ladder(ladder_doc()).spec
S1 = stage_cells(SPEC, 0, SPEC.candidate_names())  # 4 candidates x 2 host blocks
VALUES = {"c0": 1.0, "c1": 1.1, "c2": 1.2, "c3": 1.3}


def ok(cell, delta=0.0):
    return CellOutcome("succeeded", value=VALUES[cell.candidate] + delta, train_seconds=60.0)


def test_new_ladder_starts_the_first_stage_with_conditions():
    s = step(SPEC, None, {}, (), now=NOW, generation=3)
    assert s.to_start == S1 and s.stopped is None and s.announcements == []
    assert s.status["observedGeneration"] == 3 and s.status["frozenHash"] == SPEC.frozen_hash()
    assert {c["type"]: (c["status"], c["lastTransitionTime"]) for c in s.status["conditions"]} == {
        "Progressing": ("True", NOW),
        "Complete": ("False", NOW),
        "Failed": ("False", NOW),
    }
    again = step(SPEC, s.status, {}, (), now=LATER, generation=3)
    assert again.status == s.status  # lastTransitionTime kept: nothing to write


def test_parallelism_capacity_and_started_cells():
    spec = load_ladder(edit(ladder_doc(), "spec.parallelism", 3)).spec
    cases = {
        # name: (running, pending starts, capacity, started) -> cells to start (indices into S1)
        "parallelism": ((), 0, None, set(), [0, 1, 2]),
        "running count": ({S1[0].key}, 0, None, set(), [1, 2]),
        "pending starts count": ((), 2, None, set(), [0]),
        "adapter capacity below": ((), 0, 2, set(), [0, 1]),
        "started cells are skipped, not counted": ((), 0, None, {S1[0], S1[1]}, [2, 3, 4]),
    }
    for name, (running, pending, capacity, started, want) in cases.items():
        s = step(
            spec,
            None,
            {},
            running,
            now=NOW,
            capacity=capacity,
            pending_starts=pending,
            started=lambda c, st=started: c in st,
        )
        assert s.to_start == [S1[i] for i in want], name


def test_recorded_outcomes_and_decisions_win_over_observed():
    first = step(SPEC, None, {c.key: ok(c) for c in S1}, (), now=NOW)
    assert [a.reason for a in first.announcements] == ["StageDecided"]
    assert first.status["currentStage"] == "s2"
    # Different observations of the same cells later change nothing recorded, announce nothing.
    later = step(SPEC, first.status, {c.key: ok(c, delta=-5.0) for c in S1}, (), now=LATER)
    assert later.status["stages"][0] == first.status["stages"][0]
    assert later.announcements == [] and later.new_decisions == []


def test_stopped_states():
    base = step(SPEC, None, {c.key: ok(c) for c in S1}, (), now=NOW).status
    changed = load_ladder(edit(ladder_doc(), "spec.stages.1.budget", "20m")).spec
    cases = {
        "FrozenSpecChanged": (changed, base),
        "StatusUnreadable": (SPEC, {**base, "phase": "Sideways"}),
        "RecordedDecisionsMismatch": (
            SPEC,
            {
                **base,
                "stages": [
                    {**base["stages"][1], "decision": {**base["stages"][0]["decision"], "stage": "s2"}},
                    base["stages"][0],
                ],
            },
        ),
    }
    for reason, (spec, recorded) in cases.items():
        s = step(spec, recorded, {}, (), now=LATER, generation=2)
        assert s.stopped == reason and s.to_start == [], reason
        assert s.status["phase"] == "Failed" and s.status["observedGeneration"] == 2
        failed = next(c for c in s.status["conditions"] if c["type"] == "Failed")
        assert (failed["status"], failed["reason"]) == ("True", reason)
        assert s.status["stages"] == recorded["stages"]  # the record is kept as it was
        assert [(a.type, a.reason) for a in s.announcements] == [("Warning", reason)]
        assert step(spec, s.status, {}, (), now=LATER, generation=2).announcements == [], reason  # once


def test_observed_running_cell_with_an_outcome_is_not_running():
    key = CellKey(*S1[0].key)
    s = step(SPEC, None, {key: ok(S1[0])}, {key}, now=NOW)
    cells = s.status["stages"][0]["cells"]
    assert cells[0]["state"] == "Succeeded" and S1[0] not in s.to_start
