"""Issue 12, defect 3: results are bounded and the core is total.

A result value of 1.7e308 raised OverflowError in the rules (the operator's reconcile failed
forever; `ladder simulate` exited 70), and trainSeconds of 1.7e308 put Infinity into the
status, which the API server refuses. Now: out-of-range results are rejected with their reason
by every adapter (core.result.check_range), and no input to the rules or the accounting raises
or yields a non-finite number.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import CellOutcome
from promotion_ladder.core.recorded import RecordedResultsInvalid, parse_results
from promotion_ladder.core.result import MAX_RESULT_VALUE, CellResult, ResultError, check_range
from promotion_ladder.core.status import build_status, simulate

from .builders import ladder_doc

SPEC = load_ladder(
    ladder_doc(
        verdict={
            "reference": "c0",
            "checks": [
                {"name": "near", "type": "nearEquivalence", "candidate": "c1", "margin": 0.01},
                {"name": "gap", "type": "meanGap", "candidate": "c2", "maxGap": 0.02},
                {"name": "first", "type": "rankFirstAllCells", "candidate": "c0"},
            ],
        }
    )
).spec

EXTREME = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1.7e308, -1.7e308, 5e-324, -0.0, MAX_RESULT_VALUE, math.nextafter(MAX_RESULT_VALUE, math.inf)]),
)
# Train seconds as an outcome can hold them (the measured fields' constraints refuse negative
# ones and NaN): the extremes, infinity included.
SECONDS = EXTREME.filter(lambda x: x >= 0)
OUTCOME = st.one_of(
    st.none(),
    st.builds(
        CellOutcome,
        state=st.sampled_from(["succeeded", "failed"]),
        value=st.one_of(st.none(), EXTREME),
        train_seconds=st.one_of(st.none(), SECONDS),
    ),
)


def all_cells():
    return [(s.name, c.name, h, seed) for s in SPEC.stages for c in SPEC.candidates for h, seed in s.cells()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OUTCOME, min_size=len(all_cells()), max_size=len(all_cells())))
def test_status_is_built_and_finite_for_any_outcomes(drawn):
    outcomes = {k: o for k, o in zip(all_cells(), drawn, strict=True) if o is not None}
    status, _ = build_status(SPEC, outcomes)
    json.dumps(status.wire(), allow_nan=False)  # what the API server accepts: no Infinity, no NaN
    replay, _ = simulate(SPEC, outcomes)
    json.dumps(replay.wire(), allow_nan=False)


RANGE = {
    # name: (value, trainSeconds, accepted) for a 2m budget (deadline 120 + 300 s)
    "ordinary": (1.2, 119.0, True),
    "at the value bound": (-MAX_RESULT_VALUE, 0.0, True),
    "past the value bound": (1.7e308, 1.0, False),
    "negative past the bound": (-2e6, 1.0, False),
    "seconds at the deadline": (1.0, 420.0, True),
    "seconds past the deadline": (1.0, 421.0, False),
    "seconds huge": (1.0, 1.7e308, False),
    "seconds infinite": (1.0, math.inf, False),
}


@pytest.mark.parametrize("name", list(RANGE))
def test_check_range(name):
    value, seconds, accepted = RANGE[name]
    result = CellResult(status="ok", value=value, trainSeconds=seconds)
    if accepted:
        check_range(result, 120.0)
    else:
        with pytest.raises(ResultError) as exc:
            check_range(result, 120.0)
        assert exc.value.reason == "range" and "out of range" in str(exc.value)


@pytest.mark.parametrize(
    "line, field",
    [
        ('{"stage": "s1", "candidate": "c0", "hostBlock": "a100", "seed": 1, "value": 1.7e308}', "value"),
        (
            '{"stage": "s1", "candidate": "c0", "hostBlock": "a100", "seed": 1, "value": 1.0, "trainSeconds": 1.7e308}',
            "trainSeconds",
        ),
        (
            '{"stage": "s1", "candidate": "c0", "hostBlock": "a100", "seed": 1, "value": 1.0, '
            '"trainSeconds": Infinity}',
            "trainSeconds",
        ),
    ],
)
def test_recorded_results_out_of_range_name_the_line_and_field(line, field):
    with pytest.raises(RecordedResultsInvalid) as exc:
        parse_results(line + "\n", source="r.jsonl", spec=SPEC)
    assert exc.value.errors[0].startswith(f"r.jsonl:1: {field}"), exc.value.errors
