"""A cell's queue waits and lost attempts, as the status records them (core/attempts.py)."""

from __future__ import annotations

import pytest

from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.attempts import (
    Attempts,
    AttemptsSeen,
    LostPod,
    advance,
    advance_all,
    lost_attempts,
    lost_gpu_hours,
    lost_seconds,
    with_lost_occupancy,
)
from promotion_ladder.core.cell import CellKey, CellOutcome
from promotion_ladder.core.clock import epoch
from promotion_ladder.core.status import attempts_from_status, build_status, parse_status
from promotion_ladder.core.step import step
from promotion_ladder.render import status_table

from .builders import ladder_doc

T0 = epoch("2026-12-07T03:00:00Z")
assert T0 is not None
KEY = CellKey("s1", "c0", "a100", 1)


@pytest.mark.parametrize(
    "recorded, seen, want",
    [
        pytest.param(None, None, None, id="nothing-seen-nothing-recorded"),
        pytest.param(None, AttemptsSeen(), None, id="never-queued"),
        pytest.param(
            None,
            AttemptsSeen(queued=True, created_at=T0),
            Attempts(queued_since="2026-12-07T03:00:00Z"),
            id="first-wait-begins-at-create",
        ),
        pytest.param(
            None,
            AttemptsSeen(queued=True, wait_began=T0 + 5, created_at=T0),
            Attempts(queued_since="2026-12-07T03:00:05Z"),
            id="wait-begins-at-suspension",
        ),
        pytest.param(
            Attempts(queued_since="2026-12-07T03:00:00Z"),
            AttemptsSeen(admitted_at=T0 + 12, created_at=T0),
            Attempts(queued_seconds=12.0),
            id="wait-ends-at-resume",
        ),
        pytest.param(
            None,
            AttemptsSeen(admitted_at=T0 + 7, created_at=T0),
            Attempts(queued_seconds=7.0),
            id="first-wait-never-seen-while-it-lasted",
        ),
        pytest.param(
            Attempts(queued_seconds=7.0),
            AttemptsSeen(queued=True, wait_began=T0 + 30, created_at=T0),
            Attempts(queued_seconds=7.0, queued_since="2026-12-07T03:00:30Z"),
            id="second-wait-begins",
        ),
        pytest.param(
            Attempts(queued_seconds=7.0, queued_since="2026-12-07T03:00:30Z"),
            AttemptsSeen(admitted_at=T0 + 40, created_at=T0),
            Attempts(queued_seconds=17.0),
            id="second-wait-summed",
        ),
        pytest.param(
            Attempts(queued_seconds=7.0),
            AttemptsSeen(admitted_at=T0 + 40, created_at=T0),
            Attempts(queued_seconds=7.0),
            id="running-again-nothing-new",
        ),
        pytest.param(
            None,
            AttemptsSeen(lost=(LostPod(pod="p1", held_seconds=3.5),)),
            Attempts(lost=[LostPod(pod="p1", held_seconds=3.5)]),
            id="a-lost-pod",
        ),
        pytest.param(
            Attempts(lost=[LostPod(pod="p1", held_seconds=3.5)]),
            AttemptsSeen(lost=(LostPod(pod="p1", held_seconds=9.0), LostPod(pod="p2", held_seconds=1.0))),
            Attempts(lost=[LostPod(pod="p1", held_seconds=3.5), LostPod(pod="p2", held_seconds=1.0)]),
            id="a-pod-counted-once",
        ),
    ],
)
def test_advance(recorded, seen, want):
    assert advance(recorded, seen) == want


def test_a_recorded_cell_keeps_its_record():
    rec = {KEY: Attempts(queued_seconds=3.0)}
    seen = {KEY: AttemptsSeen(queued=True, created_at=T0)}
    assert advance_all(rec, seen, final={KEY}) == rec
    assert advance_all(rec, seen, final=set())[KEY].queued_since == "2026-12-07T03:00:00Z"


@pytest.mark.parametrize(
    "lost, attempts, seconds",
    [
        pytest.param([], 0, 0.0, id="none"),
        pytest.param(
            [LostPod(pod="a", held_seconds=2.0), LostPod(pod="b", held_seconds=3.0)], 2, 5.0, id="one-node-twice"
        ),
        pytest.param(
            [LostPod(pod="a", held_seconds=2.0, index=0), LostPod(pod="b", held_seconds=2.5, index=1)],
            1,
            2.5,
            id="two-nodes-once",
        ),
    ],
)
def test_lost_attempts_and_seconds(lost, attempts, seconds):
    assert lost_attempts(lost) == attempts
    assert lost_seconds(lost) == seconds


def test_lost_seconds_are_occupied_and_counted_apart_never_protocol():
    spec = load_ladder(ladder_doc()).spec
    done = CellOutcome("succeeded", 1.0, train_seconds=60.0, occupied_seconds=70.0, gpus=1)
    attempts = {KEY: Attempts(lost=[LostPod(pod="p", held_seconds=36.0)])}
    out = with_lost_occupancy({KEY: done}, attempts, final=set())
    assert out[KEY].occupied_seconds == 106.0
    assert with_lost_occupancy({KEY: done}, attempts, final={KEY})[KEY].occupied_seconds == 70.0
    assert lost_gpu_hours(out, attempts, 1) == pytest.approx(0.01)
    plain, _ = build_status(spec, {KEY: done})
    lost, _ = build_status(spec, out, attempts=attempts)
    assert lost.gpu_hours is not None and plain.gpu_hours is not None
    assert lost.gpu_hours.total == plain.gpu_hours.total  # protocol hours untouched
    assert lost.gpu_hours.occupied is not None and lost.gpu_hours.occupied.lost == pytest.approx(0.01)
    assert lost.gpu_hours.occupied.total == pytest.approx(plain.gpu_hours.occupied.total + 0.01)


def test_queued_cells_are_shown_queued_and_the_record_survives_a_replay():
    spec = load_ladder(ladder_doc()).spec
    now = "2026-12-07T03:01:00Z"
    s1 = step(spec, None, {}, {KEY}, now=now, queued={KEY}, attempts={KEY: AttemptsSeen(queued=True, created_at=T0)})
    status = parse_status(s1.status)
    cell = next(c for c in status.stages[0].cells if (c.candidate, c.host_block, c.seed) == ("c0", "a100", 1))
    assert cell.state == "Queued" and cell.attempts == Attempts(queued_since="2026-12-07T03:00:00Z")
    # admitted 20 s after its create; an operator that restarts reads the wait from the status
    s2 = step(spec, s1.status, {}, {KEY}, now=now, attempts={KEY: AttemptsSeen(admitted_at=T0 + 20, created_at=T0)})
    assert attempts_from_status(parse_status(s2.status))[KEY] == Attempts(queued_seconds=20.0)
    s3 = step(spec, s2.status, {}, {KEY}, now=now)
    assert attempts_from_status(parse_status(s3.status))[KEY] == Attempts(queued_seconds=20.0)
    running = next(c for c in parse_status(s3.status).stages[0].cells if c.candidate == "c0")
    assert running.state == "Running"


def test_the_cli_table_says_queued_cells_and_lost_hours():
    spec = load_ladder(ladder_doc()).spec
    waiting, _ = build_status(spec, {}, running={KEY}, queued={KEY})
    assert "1 queued (waiting for quota)" in status_table(waiting)
    done = CellOutcome("succeeded", 1.0, train_seconds=60.0, occupied_seconds=106.0, gpus=1)
    attempts = {KEY: Attempts(lost=[LostPod(pod="p", held_seconds=36.0)])}
    ended, _ = build_status(spec, {KEY: done}, attempts=attempts)
    assert "held by attempts lost to eviction or preemption" in status_table(ended)
    assert "queued" not in status_table(build_status(spec, {}, running={KEY})[0])
