"""GPU-hour accounting: the protocol's measure (train seconds) and the occupied one (how long
cells held their GPUs), per stage and in total, with the rule for unmeasured cells."""

from __future__ import annotations

from pathlib import Path

import pytest

from promotion_ladder.core.accounting import occupancy_rows, occupied_seconds, protocol_seconds
from promotion_ladder.core.cell import CellOutcome as Outcome
from promotion_ladder.core.recorded import parse_results
from promotion_ladder.core.status import build_status, simulate
from promotion_ladder.files import read_ladder
from promotion_ladder.render import status_table

from .builders import build

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# One stage of 2 minutes, two cells (a100/1, l40s/1) per candidate, 2 GPUs per cell.
SPEC = build(
    candidates=2,
    stages=[{"name": "s1", "budget": "2m", "hostBlocks": ["a100", "l40s"], "seeds": [1]}],
    trainer={"gpus": 2},
).spec


def ok(train=None, occupied=None):
    return Outcome("succeeded", 1.0, train_seconds=train, occupied_seconds=occupied)


def failed(train=None, occupied=None):
    return Outcome("failed", train_seconds=train, occupied_seconds=occupied, reason="x")


CELLS = [("s1", "c0", "a100", 1), ("s1", "c0", "l40s", 1), ("s1", "c1", "a100", 1), ("s1", "c1", "l40s", 1)]

# name: (outcomes of the four cells, protocol seconds, occupied seconds, measured cells)
CASES = {
    "unmeasured cells count their protocol seconds": ([ok(120), ok(120), ok(100), ok(120)], 460, 460, 0),
    "measured cells count what they held": ([ok(120, 180), ok(120, 150), ok(120, 200), ok(120, 170)], 480, 700, 4),
    "mixed: only the measured ones differ": ([ok(120, 300), ok(120), ok(120, 130), ok(120)], 480, 670, 2),
    "a failed cell without seconds: the budget under the protocol, what it held when measured": (
        [failed(None, 8), ok(120, 150), ok(120), ok(120)],
        480,
        398,
        2,
    ),
    "a failed cell without seconds, unmeasured: the budget under both": (
        [failed(), ok(120), ok(120), ok(120)],
        480,
        480,
        0,
    ),
    "a measurement below the train seconds (1 s timestamps) counts the train seconds": (
        [ok(120.4, 120), ok(120), ok(120), ok(120)],
        480.4,
        480.4,
        1,
    ),
    "cells not finished count under neither": ([ok(120, 180), None, None, None], 120, 180, 1),
}


@pytest.mark.parametrize("name", CASES)
def test_protocol_and_occupied_gpu_hours(name):
    cells, protocol, occupied, measured = CASES[name]
    outcomes = {k: o for k, o in zip(CELLS, cells, strict=True) if o is not None}
    status, _ = build_status(SPEC, outcomes)
    g = status.gpu_hours
    gpus = 2
    assert g.total == pytest.approx(protocol * gpus / 3600, abs=1e-6)
    assert g.by_stage == {"s1": g.total}
    assert g.occupied.total == pytest.approx(occupied * gpus / 3600, abs=1e-6)
    assert g.occupied.by_stage == {"s1": g.occupied.total}
    assert (g.occupied.measured_cells, g.occupied.cells) == (measured, len(outcomes))
    assert g.occupied.ratio == pytest.approx(occupied / protocol, abs=1e-4)
    rows = occupancy_rows(g)
    assert [r[0] for r in rows] == ["s1", "total"]
    assert rows[-1] == ("total", g.total, g.occupied.total, g.occupied.ratio)


# name: (occupied, train seconds, budget seconds, protocol, occupied)
CELL_RULES = {
    "reported train seconds": (None, 90.0, 120.0, 90.0, 90.0),
    "no train seconds: the budget": (None, None, 120.0, 120.0, 120.0),
    "measured above train": (150.0, 90.0, 120.0, 90.0, 150.0),
    "measured below train": (89.0, 90.0, 120.0, 90.0, 90.0),
    "measured, no train seconds": (5.0, None, 120.0, 120.0, 5.0),
}


@pytest.mark.parametrize("name", CELL_RULES)
def test_cell_seconds_rules(name):
    occ, train, budget, want_protocol, want_occupied = CELL_RULES[name]
    assert protocol_seconds(train, budget) == want_protocol
    assert occupied_seconds(occ, train, budget) == want_occupied


def test_occupancy_survives_the_status_round_trip():
    from promotion_ladder.core.status import outcomes_from_status, parse_status

    outcomes = {CELLS[0]: ok(120, 181.5), CELLS[1]: failed(3, 9.25)}
    status, _ = build_status(SPEC, outcomes)
    back = outcomes_from_status(parse_status(status.wire()))
    assert back[CELLS[0]].occupied_seconds == 181.5 and back[CELLS[1]].occupied_seconds == 9.25
    assert status.wire()["stages"][0]["cells"][0]["occupiedSeconds"] == 181.5


def test_the_paper_replay_is_unchanged_and_says_nothing_was_measured():
    ladder = read_ladder(EXAMPLES / "protocol-ladder.yaml")
    recorded = parse_results((EXAMPLES / "protocol-results.jsonl").read_text())
    status, _ = simulate(ladder.spec, recorded)
    g = status.gpu_hours
    assert round(g.total, 1) == 169.2
    assert g.occupied.total == g.total and g.occupied.ratio == 1.0
    assert g.occupied.measured_cells == 0 and g.occupied.cells > 0
    table = status_table(status)
    assert "GPU-hours executed: 169.2" in table
    assert f"measured for 0 of {g.occupied.cells} cells" in table


def test_recorded_results_may_carry_occupied_seconds():
    text = (
        '{"stage": "s1", "candidate": "c0", "hostBlock": "a100", "seed": 1, "value": 1.0, '
        '"trainSeconds": 120, "occupiedSeconds": 150}\n'
    )
    assert parse_results(text)[CELLS[0]].occupied_seconds == 150
    with pytest.raises(ValueError, match="occupiedSeconds"):
        parse_results(text.replace("150", "-1"))
