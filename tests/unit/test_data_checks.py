"""Cells on different corpora are not ranked; cells past one pass are flagged as repeated data."""

from __future__ import annotations

import pytest

from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import CellOutcome as Outcome
from promotion_ladder.core.data_checks import corpus_conflict, estimated_passes, repeated_data
from promotion_ladder.core.planner import plan
from promotion_ladder.core.status import build_status, outcomes_from_status
from promotion_ladder.local.runner import run_ladder
from promotion_ladder.report.build import build_report
from promotion_ladder.report.source import ReportInput

from .builders import ladder_doc
from .test_runner import Quiet, fake_ladder


def ok(value=1.0, corpus=None, passes=None) -> Outcome:
    return Outcome("succeeded", value=value, corpus=corpus, data_passes=passes)


CONFLICT_CASES = {
    "all the same corpus": ({("a", "x", 1): ok(corpus="f1"), ("b", "x", 1): ok(corpus="f1")}, None),
    "nobody reported one": ({("a", "x", 1): ok(), ("b", "x", 1): ok()}, None),
    "one silent cell does not conflict": ({("a", "x", 1): ok(corpus="f1"), ("b", "x", 1): ok()}, None),
    "two fingerprints": (
        {("a", "x", 1): ok(corpus="f1"), ("b", "x", 1): ok(corpus="f2"), ("b", "y", 1): ok(corpus="f2")},
        ["corpus f1: a/x/1", "corpus f2: b/x/1, b/y/1", "not ranked"],
    ),
}


@pytest.mark.parametrize("cells,expected", CONFLICT_CASES.values(), ids=CONFLICT_CASES.keys())
def test_corpus_conflict(cells, expected):
    got = corpus_conflict("s1", cells)
    if expected is None:
        assert got is None
    else:
        assert got is not None and all(part in got for part in expected), got


REPEAT_CASES = {
    "under one pass": ({("a", "x", 1): ok(passes=0.4)}, []),
    "exactly one pass is not a repeat": ({("a", "x", 1): ok(passes=1.0)}, []),
    "unknown passes": ({("a", "x", 1): ok()}, []),
    "most passes first": (
        {("a", "x", 1): ok(passes=2.0), ("b", "x", 1): ok(passes=17.5), ("c", "x", 1): ok(passes=0.5)},
        [("b/x/1", 17.5), ("a/x/1", 2.0)],
    ),
}


@pytest.mark.parametrize("cells,expected", REPEAT_CASES.values(), ids=REPEAT_CASES.keys())
def test_repeated_data(cells, expected):
    assert [(r.cell, r.passes) for r in repeated_data(cells)] == expected


def test_estimated_passes():
    assert estimated_passes(10, 4.5e6, 2_700_000) == pytest.approx(16.67, abs=0.01)


def _one_stage_spec():
    doc = ladder_doc(
        candidates=2,
        host_blocks=("a", "b"),
        stages=[
            {"name": "s1", "budget": "1m", "hostBlocks": ["a", "b"], "seeds": [1], "promote": {"top": 1}},
            {"name": "s2", "budget": "2m", "hostBlocks": ["a", "b"], "seeds": [1]},
        ],
    )
    return load_ladder(doc).spec


def test_a_stage_on_two_corpora_fails_with_the_cells_and_fingerprints():
    spec = _one_stage_spec()
    outcomes = {
        ("s1", c, hb, 1): ok(1.0 + i, corpus="aaa" if hb == "a" else "bbb")
        for i, c in enumerate(["c0", "c1"])
        for hb in ("a", "b")
    }
    p = plan(spec, outcomes)
    assert p.phase == "Failed" and not p.decisions
    assert "corpus aaa: c0/a/1, c1/a/1" in p.message and "corpus bbb: c0/b/1, c1/b/1" in p.message
    status, _ = build_status(spec, outcomes)
    assert status.phase == "Failed"
    cond = {c.type: c for c in status.stages[0].conditions}
    assert cond["CorpusConflict"].status == "True" and "bbb" in cond["CorpusConflict"].message
    assert status.stages[0].decision is None


def test_same_corpus_is_ranked_and_repeats_are_a_stage_condition_that_survives_the_status():
    spec = _one_stage_spec()
    outcomes = {
        ("s1", c, hb, 1): ok(1.0 + i, corpus="aaa", passes=3.0 if c == "c1" else 0.5)
        for i, c in enumerate(["c0", "c1"])
        for hb in ("a", "b")
    }
    status, p = build_status(spec, outcomes)
    assert p.phase == "Running" and status.stages[0].decision.promoted == ["c0"]
    cond = {c.type: c for c in status.stages[0].conditions}
    assert set(cond) == {"RepeatedData"} and "up to 3.0 passes" in cond["RepeatedData"].message
    back = outcomes_from_status(status)
    assert back[("s1", "c1", "a", 1)].corpus == "aaa" and back[("s1", "c1", "a", 1)].data_passes == 3.0


def test_ladder_run_shows_repeated_data_in_its_output_status_and_report(tmp_path):
    doc = fake_ladder(
        {
            "c0": {"base": 1.0, "corpus": "abc", "passes": 2.5},
            "c1": {"base": 0.9, "corpus": "abc", "passes": 0.5},
            "c2": {"base": 1.5, "corpus": "abc"},
            "c3": {"base": 0.5, "corpus": "abc"},
        }
    )
    out = Quiet()
    status = run_ladder(load_ladder(doc), tmp_path / "s.json", parallel=2, stream=out, poll_seconds=0.02)
    assert status.phase == "Succeeded"
    assert "1.0010 [repeated data: 2.5 passes over corpus abc]" in out.text
    assert "warning: RepeatedData: stage 's1'" in out.text
    assert any(c.type == "RepeatedData" for c in status.stages[0].conditions)
    assert status.stages[1].conditions is None and "conditions" not in status.wire()["stages"][1]
    report = build_report(ReportInput(name="test", status=status, spec=load_ladder(doc).spec))
    assert any(w.startswith("RepeatedData: stage 's1'") and "2.5" in w for w in report.warnings)
    stage_text = next(s for s in report.sections if s.key == "stage-s1").text
    assert any("Warning (RepeatedData)" in t for t in stage_text)


def test_ladder_run_fails_a_stage_whose_host_blocks_have_different_data(tmp_path):
    per_block = {"a": "img1fp", "b": "img2fp"}
    doc = fake_ladder({f"c{i}": {"base": 1.0 + i, "corpus": per_block} for i in range(4)})
    out = Quiet()
    status = run_ladder(load_ladder(doc), tmp_path / "s.json", parallel=2, stream=out, poll_seconds=0.02)
    assert status.phase == "Failed" and "corpus img1fp" in status.message and "corpus img2fp" in status.message
    assert "warning: CorpusConflict" in out.text


VALIDATE_CASES = {
    "repeats at every stage": (
        ["--tokens-per-second", "4.5e6", "--train-tokens", "2700000"],
        0,
        ["stage s1 (budget 1m): at 4,500,000 tokens/s a cell makes about 100.0 passes", "stage s2 (budget 2m)"],
    ),
    "a corpus large enough": (
        ["--tokens-per-second", "1000", "--train-tokens", "10000000"],
        0,
        ["every stage stays within one pass"],
    ),
    "a prepared corpus dir": (
        ["--tokens-per-second", "1e5", "--data", "{data}"],
        0,
        ["passes over the 1,000,000 training tokens"],
    ),
    "throughput without a corpus size": (["--tokens-per-second", "1000"], 1, ["--train-tokens N or --data DIR"]),
}


@pytest.mark.parametrize("extra,code,expected", VALIDATE_CASES.values(), ids=VALIDATE_CASES.keys())
def test_validate_warns_about_repeated_data_before_anything_runs(tmp_path, capsys, extra, code, expected):
    import json as _json

    import yaml

    from promotion_ladder.cli import main

    doc = ladder_doc(
        candidates=2,
        host_blocks=("a", "b"),
        stages=[
            {"name": "s1", "budget": "1m", "hostBlocks": ["a", "b"], "seeds": [1], "promote": {"top": 1}},
            {"name": "s2", "budget": "2m", "hostBlocks": ["a", "b"], "seeds": [1]},
        ],
    )
    (tmp_path / "l.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(_json.dumps({"train_tokens": 1_000_000}))
    args = [a.replace("{data}", str(tmp_path / "data")) for a in extra]
    assert main(["validate", str(tmp_path / "l.yaml"), *args]) == code
    captured = capsys.readouterr()
    for part in expected:
        assert part in captured.out + captured.err


def test_simulate_shows_recorded_repeats_and_refuses_recorded_conflicts(tmp_path, capsys):
    import json as _json

    import yaml

    from promotion_ladder.cli import main

    doc = ladder_doc(
        candidates=2,
        host_blocks=("a", "b"),
        stages=[
            {"name": "s1", "budget": "1m", "hostBlocks": ["a", "b"], "seeds": [1], "promote": {"top": 1}},
            {"name": "s2", "budget": "2m", "hostBlocks": ["a", "b"], "seeds": [1]},
        ],
    )
    (tmp_path / "l.yaml").write_text(yaml.safe_dump(doc))

    def results(corpus_b: str) -> str:
        rows = [
            {
                "stage": st,
                "candidate": c,
                "hostBlock": hb,
                "seed": 1,
                "value": 1.0 + i,
                "corpus": "fa" if hb == "a" else corpus_b,
                "dataPasses": 3.5,
            }
            for st in ("s1", "s2")
            for i, c in enumerate(["c0", "c1"])
            for hb in ("a", "b")
        ]
        return "\n".join(_json.dumps(r) for r in rows)

    (tmp_path / "same.jsonl").write_text(results("fa"))
    assert main(["simulate", str(tmp_path / "l.yaml"), "--results", str(tmp_path / "same.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "warning: RepeatedData: stage 's1'" in out and "up to 3.5 passes" in out
    (tmp_path / "mixed.jsonl").write_text(results("fb"))
    main(["simulate", str(tmp_path / "l.yaml"), "--results", str(tmp_path / "mixed.jsonl")])
    out = capsys.readouterr().out
    assert "phase: Failed" in out and "warning: CorpusConflict" in out and "corpus fb: c0/b/1, c1/b/1" in out


def test_the_ladder_step_fails_a_conflicting_stage_with_reason_corpus_conflict():
    from promotion_ladder.core.step import step

    spec = _one_stage_spec()
    observed = {
        ("s1", c, hb, 1): ok(1.0 + i, corpus="aaa" if hb == "a" else "bbb")
        for i, c in enumerate(["c0", "c1"])
        for hb in ("a", "b")
    }
    s = step(spec, None, observed, (), now="2026-11-30T00:00:00Z")
    failed = next(c for c in s.status["conditions"] if c["type"] == "Failed")
    assert (s.status["phase"], failed["status"], failed["reason"]) == ("Failed", "True", "CorpusConflict")
    assert [a.reason for a in s.announcements] == ["LadderFailed"] and "corpus bbb" in s.announcements[0].message
    assert s.to_start == [] and s.new_decisions == []
