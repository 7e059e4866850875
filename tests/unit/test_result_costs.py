"""The result's cost fields: setupSeconds and evalSeconds (besides trainSeconds)."""

from __future__ import annotations

import json

import pytest

from promotion_ladder.core.result import ResultError, parse_result

BASE = {
    "apiVersion": "ladder.promotion.dev/v1alpha1",
    "kind": "CellResult",
    "status": "ok",
    "value": 1.5,
    "trainSeconds": 120.0,
}

# name: (extra fields, error expected in the message or None)
CASES = {
    "both present": ({"setupSeconds": 14.5, "evalSeconds": 0.8}, None),
    "absent (an older trainer)": ({}, None),
    "negative set-up": ({"setupSeconds": -1}, "setupSeconds"),
    "negative evaluation": ({"evalSeconds": -0.1}, "evalSeconds"),
    "not a number": ({"setupSeconds": "soon"}, "setupSeconds"),
}


@pytest.mark.parametrize("name", CASES)
def test_cost_fields(name):
    extra, error = CASES[name]
    text = json.dumps({**BASE, **extra})
    if error:
        with pytest.raises(ResultError, match=error):
            parse_result(text)
        return
    r = parse_result(text)
    assert (r.setup_seconds, r.eval_seconds) == (extra.get("setupSeconds"), extra.get("evalSeconds"))
    assert json.loads(r.to_json()) == {**BASE, "message": "", "metric": "val_bpb", **extra}
