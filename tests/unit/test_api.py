"""Validation of PromotionLadder documents: every bad input names its field path."""

import pytest

from promotion_ladder.core.api import LadderInvalid, frozen_hash, load_ladder
from promotion_ladder.core.budget import cell_deadline_seconds, format_seconds, parse_budget

from .builders import DELETE, build, edit, ladder_doc

BASE = ladder_doc()

INVALID = {
    "duplicate candidate": (edit(BASE, "spec.candidates.1.name", "c0"), "spec.candidates[1].name: duplicate name 'c0'"),
    "duplicate host block": (
        edit(BASE, "spec.hostBlocks", [{"name": "a100"}, {"name": "a100"}, {"name": "l40s"}]),
        "spec.hostBlocks[1].name: duplicate name",
    ),
    "duplicate stage": (edit(BASE, "spec.stages.1.name", "s1"), "spec.stages[1].name: duplicate name 's1'"),
    "unknown host block": (
        edit(BASE, "spec.stages.0.hostBlocks", ["a100", "h100"]),
        "spec.stages[0].hostBlocks[1]: unknown host block 'h100'",
    ),
    "unknown keep": (
        edit(BASE, "spec.stages.0.promote", {"top": 1, "keep": ["nope"]}),
        "spec.stages[0].promote.keep[0]: unknown candidate 'nope'",
    ),
    "empty stages": (edit(BASE, "spec.stages", []), "spec.stages: List should have at least 1 item"),
    "empty candidates": (edit(BASE, "spec.candidates", []), "spec.candidates: List should have at least 1 item"),
    "budget zero": (
        edit(BASE, "spec.stages.0.budget", "0s"),
        "spec.stages[0].budget: budget '0s' must be greater than zero",
    ),
    "budget unparseable": (edit(BASE, "spec.stages.0.budget", "two minutes"), "spec.stages[0].budget:"),
    "budget negative": (edit(BASE, "spec.stages.0.budget", "-5m"), "spec.stages[0].budget:"),
    "top zero": (
        edit(BASE, "spec.stages.0.promote.top", 0),
        "spec.stages[0].promote.top: Input should be greater than or equal to 1",
    ),
    "top too large": (
        edit(BASE, "spec.stages.0.promote.top", 5),
        "spec.stages[0].promote.top: 5 is larger than the 4 candidates",
    ),
    "negative margin": (
        edit(
            BASE,
            "spec.verdict",
            {
                "reference": "c0",
                "checks": [{"name": "x", "type": "nearEquivalence", "candidate": "c1", "margin": -0.1}],
            },
        ),
        "spec.verdict.checks[0].margin: Input should be greater than or equal to 0",
    ),
    "margin missing": (
        edit(
            BASE,
            "spec.verdict",
            {"reference": "c0", "checks": [{"name": "x", "type": "nearEquivalence", "candidate": "c1"}]},
        ),
        "spec.verdict.checks[0].margin: required for type nearEquivalence",
    ),
    "maxGap missing": (
        edit(
            BASE, "spec.verdict", {"reference": "c0", "checks": [{"name": "x", "type": "meanGap", "candidate": "c1"}]}
        ),
        "spec.verdict.checks[0].maxGap: required for type meanGap",
    ),
    "unknown reference": (
        edit(BASE, "spec.verdict", {"reference": "zz"}),
        "spec.verdict.reference: unknown candidate 'zz'",
    ),
    "not a DNS label": (
        edit(BASE, "spec.candidates.0.name", "Big_Model"),
        "spec.candidates[0].name: 'Big_Model' is not a DNS-1123 label",
    ),
    "promote on last stage": (
        edit(BASE, "spec.stages.1.promote", {"top": 1}),
        "spec.stages[1].promote: the last stage cannot promote",
    ),
    "missing promote": (
        edit(BASE, "spec.stages.0.promote", DELETE),
        "spec.stages[0].promote: required on every stage but the last",
    ),
    "unknown field": (edit(BASE, "spec.stages.0.bugdet", "2m"), "spec.stages[0].bugdet: unknown field"),
    "unknown aggregate": (edit(BASE, "spec.stages.0.promote.aggregate", "best"), "spec.stages[0].promote.aggregate:"),
    "shrinking budget": (
        edit(BASE, "spec.stages.1.budget", "1m"),
        "spec.stages[1].budget: '1m' is shorter than the previous stage's '2m'",
    ),
    "duplicate seed": (edit(BASE, "spec.stages.1.seeds", [1, 1]), "spec.stages[1].seeds: a seed is listed twice"),
    "wrong kind": (edit(BASE, "kind", "Ladder"), "kind: must be 'PromotionLadder'"),
    "wrong apiVersion": (edit(BASE, "apiVersion", "v1"), "apiVersion: must be 'ladder.promotion.dev/v1alpha1'"),
    "no metadata name": (edit(BASE, "metadata", {}), "metadata.name: Field required"),
    "negative gpus": (
        edit(BASE, "spec.trainer", {"gpus": -1}),
        "spec.trainer.gpus: Input should be greater than or equal to 0",
    ),
    "top after narrowing": (
        edit(
            BASE,
            "spec.stages",
            [
                {"name": "s1", "budget": "1m", "hostBlocks": ["a100"], "seeds": [1], "promote": {"top": 2}},
                {"name": "s2", "budget": "2m", "hostBlocks": ["a100"], "seeds": [1], "promote": {"top": 3}},
                {"name": "s3", "budget": "3m", "hostBlocks": ["a100"], "seeds": [1]},
            ],
        ),
        "spec.stages[1].promote.top: 3 is larger than the 2 candidates that can enter stage 's2'",
    ),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_invalid_ladders_name_the_field(case):
    doc, expected = INVALID[case]
    with pytest.raises(LadderInvalid) as exc:
        load_ladder(doc)
    assert any(e.startswith(expected) for e in exc.value.errors), exc.value.errors


def test_every_problem_is_reported_at_once():
    doc = edit(BASE, "spec.stages.0.hostBlocks", ["x"])
    doc = edit(doc, "spec.stages.0.promote", {"top": 1, "keep": ["y"]})
    with pytest.raises(LadderInvalid) as exc:
        load_ladder(doc)
    assert len(exc.value.errors) == 2, exc.value.errors


def test_valid_ladder_gets_defaults():
    ladder = build()
    assert ladder.spec.objective.direction == "minimize"
    assert ladder.spec.trainer.gpus == 1
    assert ladder.spec.trainer.command == ["python", "-m", "ladder_trainer"]
    assert ladder.spec.stages[0].promote.aggregate == "mean"
    assert ladder.spec.stages[1].cells() == [("a100", 1), ("a100", 2), ("l40s", 1), ("l40s", 2)]


FROZEN_EDITS = {
    "candidate config": ("spec.candidates.0.config", {"depth": 8}),
    "stage budget": ("spec.stages.1.budget", "20m"),
    "objective": ("spec.objective", {"direction": "maximize"}),
    "verdict added": ("spec.verdict", {"reference": "c0"}),
}
UNFROZEN_EDITS = {
    "trainer image": ("spec.trainer", {"image": "other:1"}),
    "node selector": ("spec.hostBlocks.0.nodeSelector", {"pool": "b"}),
    "parallelism": ("spec.parallelism", 3),
}


@pytest.mark.parametrize("case", list(FROZEN_EDITS))
def test_frozen_hash_changes_with_frozen_fields(case):
    path, value = FROZEN_EDITS[case]
    assert frozen_hash(build(edit(BASE, path, value)).spec) != frozen_hash(build(BASE).spec)


@pytest.mark.parametrize("case", list(UNFROZEN_EDITS))
def test_frozen_hash_ignores_operational_fields(case):
    path, value = UNFROZEN_EDITS[case]
    assert frozen_hash(build(edit(BASE, path, value)).spec) == frozen_hash(build(BASE).spec)


def test_frozen_hash_ignores_integral_float_spelling():
    # The API server stores 1.0 as 1: a ladder file and its stored object must hash the same.
    as_float = edit(edit(BASE, "spec.candidates.0.config", {"lr": 1.0}), "spec.stages.0.promote.within", 0.0)
    as_int = edit(edit(BASE, "spec.candidates.0.config", {"lr": 1}), "spec.stages.0.promote.within", 0)
    assert frozen_hash(build(as_float).spec) == frozen_hash(build(as_int).spec)
    assert frozen_hash(build(as_float).spec) != frozen_hash(
        build(edit(as_float, "spec.candidates.0.config", {"lr": 1.5})).spec
    )


def test_frozen_hash_ignores_spelled_out_defaults():
    explicit = edit(BASE, "spec.objective", {"metric": "val_bpb", "direction": "minimize"})
    assert frozen_hash(build(explicit).spec) == frozen_hash(build(BASE).spec)


BUDGETS = {"90s": 90, "2m": 120, "1h30m": 5400, "12h": 43200, "1.5m": 90, "500ms": 0.5, "1d": 86400}


@pytest.mark.parametrize("text", list(BUDGETS))
def test_parse_budget(text):
    assert parse_budget(text) == pytest.approx(BUDGETS[text])


@pytest.mark.parametrize("text", ["", "0s", "5", "m5", "-1m", "1x", "2 m"])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError):
        parse_budget(text)


def test_format_and_deadline():
    assert format_seconds(90) == "1m30s"
    assert format_seconds(43200) == "12h"
    assert cell_deadline_seconds(5) == 305
    assert cell_deadline_seconds(43200) == 43200 + 4320
