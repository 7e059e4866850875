"""The planner and accounting: examples plus hypothesis properties."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promotion_ladder.core.accounting import gpu_hours
from promotion_ladder.core.cell import CellOutcome
from promotion_ladder.core.planner import PlanError, plan
from promotion_ladder.core.recorded import parse_results
from promotion_ladder.core.status import (
    build_status,
    decisions_from_status,
    outcomes_from_status,
    parse_status,
    simulate,
)
from promotion_ladder.files import read_ladder

from .builders import build, ladder_doc


def run_all(spec, value_of):
    """Drive the planner to the end, answering every requested cell with value_of(cell)."""
    outcomes, recorded = {}, []
    for _ in range(len(spec.stages) + 1):
        p = plan(spec, outcomes, recorded)
        recorded = p.decisions
        if p.phase != "Running":
            return p, outcomes
        for c in p.to_run:
            v = value_of(c)
            outcomes[c.key] = (
                CellOutcome("failed", reason="x")
                if v is None
                else CellOutcome("succeeded", value=v, train_seconds=30.0)
            )
    raise AssertionError("planner did not finish")


def test_plan_runs_stage_by_stage():
    spec = build().spec
    p = plan(spec, {})
    assert p.phase == "Running" and p.stage_index == 0
    assert len(p.to_run) == 4 * 2  # 4 candidates x (2 host blocks x 1 seed)
    assert {c.stage for c in p.to_run} == {"s1"}
    p, outcomes = run_all(spec, lambda c: int(c.candidate[1:]) + 0.01 * c.seed)
    assert p.phase == "Succeeded" and p.verdict.winner == "c0"
    assert p.decisions[0].promoted == ["c0", "c1"]
    assert len(outcomes) == 8 + 2 * 4


def test_recorded_decisions_are_final():
    spec = build().spec
    p, outcomes = run_all(spec, lambda c: int(c.candidate[1:]))
    # Replaying with different stage-1 values but the recorded decisions keeps the decisions.
    flipped = {k: CellOutcome("succeeded", value=-int(k[1][1:])) for k in outcomes}
    again = plan(spec, flipped, p.decisions)
    assert [d.wire() for d in again.decisions] == [d.wire() for d in p.decisions]
    assert again.new_decisions == []


def test_recorded_decision_for_another_stage_is_rejected():
    spec = build().spec
    p, _ = run_all(spec, lambda c: 1.0)
    other = build(
        ladder_doc(
            stages=[
                {"name": "x1", "budget": "2m", "hostBlocks": ["a100"], "seeds": [1], "promote": {"top": 2}},
                {"name": "s2", "budget": "10m", "hostBlocks": ["a100"], "seeds": [1]},
            ]
        )
    ).spec
    with pytest.raises(PlanError):
        plan(other, {}, p.decisions)


def test_all_failed_stage_fails_the_ladder():
    p, _ = run_all(build().spec, lambda c: None)
    assert p.phase == "Failed" and "nothing to promote" in p.message


def test_status_round_trip_resumes_exactly():
    spec = build().spec
    p, outcomes = run_all(spec, lambda c: int(c.candidate[1:]) + 0.1 * c.seed)
    status, _ = build_status(spec, outcomes, p.decisions)
    again = parse_status(status.wire())
    assert outcomes_from_status(again) == outcomes
    assert [d.wire() for d in decisions_from_status(again)] == [d.wire() for d in p.decisions]


def test_protocol_example_reproduces_published_numbers():
    ladder = read_ladder("examples/protocol-ladder.yaml")
    recorded = parse_results(open("examples/protocol-results.jsonl").read())
    status, p = simulate(ladder.spec, recorded)
    g = status.gpu_hours
    assert status.phase == "Succeeded"
    assert [s.entered for s in status.stages] == [12, 12, 9, 4, 3]
    assert g.by_stage == {"2m": 1.2, "5m": 2.0, "10m": 6.0, "60m": 16.0, "12h": 144.0}
    assert g.total == pytest.approx(169.2)
    cf = {c.stage: c.gpu_hours for c in g.counterfactuals}
    assert cf["10m"] == 432.0 and cf["60m"] == 192.0
    assert next(c for c in g.counterfactuals if c.stage == "10m").saved_percent == pytest.approx(60.83, abs=0.01)
    v = status.verdict
    assert v.winner == "bridge"
    assert {c.name: c.passed for c in v.checks} == {
        "bridge-first-everywhere": True,
        "greedy-near-equivalent": False,
        "sentinel-acceptable": False,
    }
    ten = next(s for s in status.stages if s.name == "10m").decision
    assert ten.ranking[0].candidate != "bridge"  # the eventual winner was not mean-best at 10 minutes
    five = next(s for s in status.stages if s.name == "5m").decision
    best = lambda j: min(five.ranking, key=lambda e: e.values[j]).candidate  # noqa: E731
    assert best(0) != best(1)  # the 5-minute screens disagree by host


# ---- properties -------------------------------------------------------------------------


@st.composite
def ladders(draw):
    n = draw(st.integers(2, 7))
    n_stages = draw(st.integers(1, 4))
    stages, max_in = [], n
    for i in range(n_stages):
        s = {
            "name": f"s{i}",
            "budget": f"{i + 1}m",
            "hostBlocks": draw(st.sampled_from([["a100"], ["a100", "l40s"]])),
            "seeds": draw(st.sampled_from([[1], [1, 2]])),
        }
        if i < n_stages - 1:
            top = draw(st.integers(1, max_in))
            keep = draw(st.lists(st.sampled_from([f"c{j}" for j in range(n)]), max_size=2, unique=True))
            within = draw(st.sampled_from([None, 0.0, 0.05]))
            s["promote"] = {
                "top": top,
                "keep": keep,
                "aggregate": draw(st.sampled_from(["mean", "median", "worst", "meanRank"])),
                **({"within": within} if within is not None else {}),
            }
            if within is None:
                max_in = min(max_in, top + len(keep))
        stages.append(s)
    return build(ladder_doc(candidates=n, stages=stages)).spec


values = st.one_of(st.none(), st.floats(0.5, 2.0, allow_nan=False).map(lambda v: round(v, 2)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=ladders(), data=st.data())
def test_planner_properties(spec, data):
    table = {}

    def value_of(cell):
        if cell.key not in table:
            table[cell.key] = data.draw(values)
        return table[cell.key]

    p, outcomes = run_all(spec, value_of)
    # Determinism: the same inputs give the same plan.
    again = plan(spec, outcomes)
    assert [d.wire() for d in again.decisions] == [d.wire() for d in p.decisions]
    assert again.phase == p.phase
    for i, d in enumerate(p.decisions):
        stage = spec.stages[i]
        entering = p.entering[stage.name]
        assert set(d.promoted) <= set(entering)
        assert [e.candidate for e in d.ranking] == sorted(entering, key=[e.candidate for e in d.ranking].index)
        assert sorted(e.candidate for e in d.ranking) == sorted(entering)
        if stage.promote is not None:
            complete = [e.candidate for e in d.ranking if e.complete]
            kept = [k for k in stage.promote.keep if k in entering]
            # Kept references are always promoted; the top N complete candidates always are.
            assert set(kept) <= set(d.promoted)
            assert set(complete[: stage.promote.top]) <= set(d.promoted)
            if stage.promote.within is None:
                assert len(d.promoted) <= stage.promote.top + len(kept)
            # Nobody incomplete is promoted unless kept.
            assert all(e.complete or e.candidate in kept for e in d.ranking if e.promoted_by)
    # Accounting: the parts add up to the total.
    g = gpu_hours(spec, outcomes, p.entering)
    assert math.isclose(sum(g.by_stage.values()), g.total, abs_tol=1e-4)
    assert math.isclose(sum(g.by_candidate.values()), g.total, abs_tol=1e-4)
    assert math.isclose(sum(g.by_host_block.values()), g.total, abs_tol=1e-4)
    # Each cell counts once: its train seconds, or the stage budget when it reported none (failed).
    budget = {st.name: st.budget_seconds for st in spec.stages}
    expected = sum(o.train_seconds if o.train_seconds is not None else budget[k[0]] for k, o in outcomes.items())
    assert math.isclose(g.total, expected * spec.trainer.gpus / 3600, abs_tol=1e-4)
