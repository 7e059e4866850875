"""Continuation (spec.continuation, core/continuation.py): the option and its validation, the
frozen hash, which checkpoint each cell writes and reads, the contract's flags, the mismatch
rules (each field), what a decided stage deletes, and the crd's rules. Data in, data out."""

from __future__ import annotations

import hashlib
import json

import pytest

from promotion_ladder.core.api import LadderInvalid, frozen_hash, frozen_hash_matches, load_ladder
from promotion_ladder.core.cell import Cell, CellOutcome
from promotion_ladder.core.continuation import (
    CHECKED_FIELDS,
    Expected,
    Manifest,
    cell_checkpoints,
    checkpoints_status,
    config_hash,
    deleted_candidates,
    deleted_patterns,
    ladder_root,
    mismatches,
    missing,
    refusal,
    without_predecessor,
)
from promotion_ladder.core.contract import (
    ENV_FROZEN_HASH,
    ENV_PREVIOUS_STAGE,
    EXIT_CHECKPOINT,
    NON_RETRYABLE_EXIT_CODES,
    cell_args,
    cell_env,
    judge,
)
from promotion_ladder.core.crd import crd
from promotion_ladder.core.podtemplate import continuation_mount_errors
from promotion_ladder.core.status import simulate
from promotion_ladder.core.step import step

from .builders import DELETE, edit, ladder_doc

CONTINUE = {"from": "previousStage"}
# Three stages; s2 adds seed 2 (no predecessor), s3 keeps s2's cells.
STAGES = [
    {"name": "s1", "budget": "2m", "hostBlocks": ["a100"], "seeds": [1], "promote": {"top": 3}},
    {"name": "s2", "budget": "10m", "hostBlocks": ["a100"], "seeds": [1, 2], "promote": {"top": 2}},
    {"name": "s3", "budget": "60m", "hostBlocks": ["a100"], "seeds": [1, 2]},
]
DOC = ladder_doc(stages=STAGES, host_blocks=("a100",), continuation=CONTINUE)
SPEC = load_ladder(DOC).spec
ROOT = "/checkpoints/test"


# -- the option --------------------------------------------------------------------------------
INVALID = {
    "from missing": ({}, "spec.continuation.from: Field required"),
    "from unknown": ({"from": "bestStage"}, "spec.continuation.from: Input should be 'previousStage'"),
    "onMismatch unknown": ({**CONTINUE, "onMismatch": "ignore"}, "spec.continuation.onMismatch: Input should be"),
    "keep unknown": ({**CONTINUE, "keep": "none"}, "spec.continuation.keep: Input should be 'promoted' or 'all'"),
    "relative path": ({**CONTINUE, "path": "ckpt"}, "spec.continuation.path: 'ckpt': give an absolute path"),
    "path with ..": (
        {**CONTINUE, "path": "/data/../etc"},
        "spec.continuation.path: '/data/../etc': give an absolute path",
    ),
    "unknown key": ({**CONTINUE, "volume": "x"}, "spec.continuation.volume: unknown field"),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_continuation_names_the_field(name):
    value, message = INVALID[name]
    with pytest.raises(LadderInvalid) as exc:
        load_ladder(edit(DOC, "spec.continuation", value))
    assert any(e.startswith(message) for e in exc.value.errors), exc.value.errors


def test_a_ladder_of_one_stage_has_nothing_to_continue():
    doc = ladder_doc(
        stages=[{"name": "only", "budget": "2m", "hostBlocks": ["a100"], "seeds": [1]}],
        host_blocks=("a100",),
        continuation=CONTINUE,
    )
    with pytest.raises(LadderInvalid) as exc:
        load_ladder(doc)
    assert exc.value.errors == ["spec.continuation: a ladder of one stage has nothing to continue; remove it"]


def test_defaults():
    c = SPEC.continuation
    assert (c.from_, c.on_mismatch, c.keep, c.path) == ("previousStage", "fail", "promoted", "/checkpoints")
    assert SPEC.wire()["continuation"] == {
        "from": "previousStage",
        "onMismatch": "fail",
        "keep": "promoted",
        "path": "/checkpoints",
    }


# -- frozen ------------------------------------------------------------------------------------
HASH_CHANGES = {
    "added": (edit(DOC, "spec.continuation", DELETE), DOC),
    "removed": (DOC, edit(DOC, "spec.continuation", DELETE)),
    "onMismatch": (DOC, edit(DOC, "spec.continuation", {**CONTINUE, "onMismatch": "fromScratch"})),
    "keep": (DOC, edit(DOC, "spec.continuation", {**CONTINUE, "keep": "all"})),
    "path": (DOC, edit(DOC, "spec.continuation", {**CONTINUE, "path": "/ckpt"})),
}


@pytest.mark.parametrize("name", list(HASH_CHANGES))
def test_every_change_of_continuation_changes_the_frozen_hash(name):
    before, after = (load_ladder(d).spec for d in HASH_CHANGES[name])
    assert not frozen_hash_matches(frozen_hash(before), after)


def test_a_ladder_without_continuation_keeps_the_hash_it_had():
    # The value recorded by ladders admitted before the field existed (same spec, no continuation).
    plain = load_ladder(edit(DOC, "spec.continuation", DELETE)).spec
    assert "continuation" not in plain.wire()
    frozen = {k: plain.wire().get(k) for k in ("objective", "candidates", "stages", "verdict")} | {
        "trainer": {"gpus": 1}
    }
    text = json.dumps(frozen, sort_keys=True, separators=(",", ":"))
    assert frozen_hash(plain) == "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_switching_continuation_on_after_admission_stops_the_ladder():
    plain = load_ladder(edit(DOC, "spec.continuation", DELETE)).spec
    first = step(plain, None, {}, (), now="2026-12-06T00:00:00Z")
    later = step(SPEC, first.status, {}, (), now="2026-12-06T00:01:00Z")
    assert later.stopped == "FrozenSpecChanged" and "continuation" in later.status["message"]


def test_the_crd_freezes_it():
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["properties"]["continuation"]["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules
    assert "has(self.continuation) == has(oldSelf.continuation)" in [
        r["rule"] for r in spec["x-kubernetes-validations"]
    ]


# -- which checkpoint each cell writes and reads -------------------------------------------------
PLANS = {
    "first stage: writes only": (Cell("s1", "c0", "a100", 1), (f"{ROOT}/s1/c0.a100.1", None, None, None)),
    "middle stage: continues s1's cell": (
        Cell("s2", "c0", "a100", 1),
        (f"{ROOT}/s2/c0.a100.1", f"{ROOT}/s1/c0.a100.1", "s1", None),
    ),
    "a seed s1 did not run: from scratch": (Cell("s2", "c0", "a100", 2), (f"{ROOT}/s2/c0.a100.2", None, None, None)),
    "last stage: final weights too": (
        Cell("s3", "c1", "a100", 2),
        (f"{ROOT}/s3/c1.a100.2", f"{ROOT}/s2/c1.a100.2", "s2", f"{ROOT}/s3/c1.a100.2/final"),
    ),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_cell_checkpoints(name):
    cell, (write, read, previous, final) = PLANS[name]
    plan = cell_checkpoints(SPEC, cell, ROOT)
    assert (plan.write, plan.read, plan.previous_stage, plan.final) == (write, read, previous, final)


def test_no_plan_without_continuation():
    plain = load_ladder(edit(DOC, "spec.continuation", DELETE)).spec
    assert cell_checkpoints(plain, Cell("s2", "c0", "a100", 1), ROOT) is None
    assert cell_args(plain, Cell("s2", "c0", "a100", 1), "c.json", "r.json", ROOT)[-2:] == ["--result-file", "r.json"]
    assert ENV_FROZEN_HASH not in cell_env("test", Cell("s2", "c0", "a100", 1), plain)


def test_cells_without_a_predecessor_are_listed():
    assert without_predecessor(SPEC) == [("s2", 1, 2)]


def test_the_contract_passes_the_paths_and_what_checkpoints_must_carry():
    cell = Cell("s2", "c0", "a100", 1)
    args = cell_args(SPEC, cell, "c.json", "r.json", ROOT)
    tail = args[args.index("--result-file") + 2 :]
    assert tail == [
        "--stable-checkpoint",
        f"{ROOT}/s2/c0.a100.1",
        "--resume-from",
        f"{ROOT}/s1/c0.a100.1",
        "--on-mismatch",
        "fail",
    ]
    env = cell_env("test", cell, SPEC)
    assert env[ENV_FROZEN_HASH] == SPEC.frozen_hash() and env[ENV_PREVIOUS_STAGE] == "s1"
    assert ENV_PREVIOUS_STAGE not in cell_env("test", Cell("s1", "c0", "a100", 1), SPEC)


def test_a_refused_checkpoint_fails_the_cell_and_is_not_retried():
    assert EXIT_CHECKPOINT in NON_RETRYABLE_EXIT_CODES
    outcome = judge(None, EXIT_CHECKPOINT, Cell("s2", "c0", "a100", 1), "test", "val_bpb")
    assert outcome.state == "failed" and "checkpoint refused" in outcome.reason


# -- never the wrong weights ---------------------------------------------------------------------
EXPECTED = Expected(
    frozen_hash="sha256:aaa",
    stage="s1",
    candidate="c0",
    host_block="a100",
    seed=1,
    config_hash=config_hash({"depth": 4}),
    corpus="0e499a065cba",
)
GOOD = Manifest(
    frozen_hash="sha256:aaa",
    ladder="test",
    stage="s1",
    candidate="c0",
    host_block="a100",
    seed=1,
    config_hash=config_hash({"depth": 4}),
    corpus="0e499a065cba",
    sha256="sha256:content",
    stable_seconds=72.0,
    steps=100,
)
# field -> (the manifest's changed value, the field's name in the refusal)
WRONG = {
    "frozen_hash": ("sha256:bbb", "frozenHash"),
    "stage": ("s0", "stage"),
    "candidate": ("c1", "candidate"),
    "host_block": ("l40s", "hostBlock"),
    "seed": (2, "seed"),
    "config_hash": (config_hash({"depth": 8}), "configHash"),
    "corpus": ("ffffffffffff", "corpus"),
    "sha256": ("sha256:other", "sha256"),
}


def test_a_matching_checkpoint_may_be_used():
    assert mismatches(GOOD, EXPECTED, "sha256:content") == []


def test_every_checked_field_has_a_case():
    assert set(WRONG) == {*CHECKED_FIELDS, "sha256"}


@pytest.mark.parametrize("field", list(WRONG))
def test_each_mismatch_is_refused_naming_its_field(field):
    value, wire = WRONG[field]
    problems = mismatches(GOOD.model_copy(update={field: value}), EXPECTED, "sha256:content")
    assert len(problems) == 1 and problems[0].startswith(f"{wire}: "), problems
    reason = refusal("/checkpoints/test/s1/c0.a100.1", problems)
    assert reason.startswith(f"checkpoint refused: {wire}: ") and len(reason) <= 200


def test_a_missing_checkpoint_says_where_and_why():
    reason = missing("/checkpoints/test/s1/c0.a100.1", "no stable.json")
    assert reason.startswith("checkpoint missing: no stable.json at /checkpoints/test/s1/c0.a100.1")


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1}) != config_hash({"a": 1, "b": 3})


# -- what a decided stage deletes, and the winner's ----------------------------------------------
def _decided(spec, values):
    """The ladder replayed on one value per cell (lower is better): decisions and entering."""
    recorded = {
        Cell(st.name, c, hb, s).key: CellOutcome("succeeded", values[c])
        for st in spec.stages
        for c in values
        for hb, s in st.cells()
    }
    status, plan = simulate(spec, recorded, checkpoint_root=ROOT)
    return status, plan


VALUES = {"c0": 1.0, "c1": 1.1, "c2": 1.2, "c3": 1.3}
DELETED = {
    "promoted (default)": ({}, [(0, ["c3"]), (1, ["c2"]), (2, ["c1"])]),
    "keep all": ({"keep": "all"}, []),
}


@pytest.mark.parametrize("name", list(DELETED))
def test_eliminated_candidates_are_deleted_stage_by_stage(name):
    spec = load_ladder(edit(DOC, "spec.continuation", {**CONTINUE, **DELETED[name][0]})).spec
    _, plan = _decided(spec, VALUES)
    assert deleted_candidates(spec, plan.decisions, plan.entering, "c0") == DELETED[name][1]


def test_a_ladder_without_a_winner_keeps_its_finalists():
    _, plan = _decided(SPEC, VALUES)
    assert deleted_candidates(SPEC, plan.decisions, plan.entering, None)[-1] == (1, ["c2"])


def test_the_status_records_deletions_and_the_winners_folders():
    status, _ = _decided(SPEC, VALUES)
    record = status.checkpoints
    assert record.root == ROOT and [(d.stage, d.candidates) for d in record.deleted] == [
        ("s1", ["c3"]),
        ("s2", ["c2"]),
        ("s3", ["c1"]),
    ]
    assert record.winner == [
        f"{ROOT}/s1/c0.a100.1",
        f"{ROOT}/s2/c0.a100.1",
        f"{ROOT}/s2/c0.a100.2",
        f"{ROOT}/s3/c0.a100.1",
        f"{ROOT}/s3/c0.a100.2",
        f"{ROOT}/s3/c0.a100.1/final",
        f"{ROOT}/s3/c0.a100.2/final",
    ]
    assert deleted_patterns(SPEC, ROOT, record.deleted[1]) == [f"{ROOT}/s1/c2.*", f"{ROOT}/s2/c2.*"]
    assert checkpoints_status(load_ladder(edit(DOC, "spec.continuation", DELETE)).spec, ROOT, [], {}, None) is None


def test_ladder_root():
    assert ladder_root("/checkpoints/", "demo") == "/checkpoints/demo"


# -- on a cluster the checkpoints need a writable volume ----------------------------------------
def _template(*mounts):
    return {"spec": {"containers": [{"name": "trainer", "volumeMounts": list(mounts)}]}}


MOUNTS = {
    "mounted at the path": (_template({"name": "ck", "mountPath": "/checkpoints"}), ""),
    "mounted above it": (_template({"name": "ck", "mountPath": "/"}), ""),
    "under a deeper mount": (
        _template({"name": "d", "mountPath": "/data", "readOnly": True}, {"name": "ck", "mountPath": "/checkpoints/"}),
        "",
    ),
    "no template": ({}, "is on no volume of the cells' pods"),
    "another path only": (_template({"name": "d", "mountPath": "/checkpoints-old"}), "is on no volume"),
    "read-only": (_template({"name": "ck", "mountPath": "/checkpoints", "readOnly": True}), "mounted read-only"),
}


@pytest.mark.parametrize("name", list(MOUNTS))
def test_the_checkpoint_path_must_be_on_a_writable_volume(name):
    template, problem = MOUNTS[name]
    errors = continuation_mount_errors("/checkpoints", template)
    assert (
        (errors == [])
        if not problem
        else (len(errors) == 1 and problem in errors[0] and errors[0].startswith("spec.continuation.path: "))
    )
    assert continuation_mount_errors(None, template) == []
