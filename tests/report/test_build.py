"""The report's tables as data: the numbers a reader checks, for a finished, a failing and a running ladder."""

from __future__ import annotations

import json

import pytest

from promotion_ladder.report import build_report
from promotion_ladder.report.build import CELL_VALUES, GPU_HOURS, PROGRESS, RANK_FLOW, STABILITY

from .builders import example_input, failing_input, running_input


@pytest.fixture(scope="module")
def reports():
    return {
        "example": build_report(example_input()),
        "failing": build_report(failing_input()),
        "running": build_report(running_input()),
    }


def column(table, header):
    i = table.headers.index(header)
    return [r[i] for r in table.rows]


def row(table, first):
    return next(r for r in table.rows if r[0] == first)


# (report, table key, row's first cell, header) -> expected text
CELLS = {
    "executed total": ("example", "cost-executed", "total", "GPU-hours", "169.2"),
    "executed 12h": ("example", "cost-executed", "12h", "GPU-hours", "144.0"),
    "executed 2m": ("example", "cost-executed", "2m", "GPU-hours", "1.2"),
    "counterfactual 10m": (
        "example",
        "cost-counterfactuals",
        "all 9 that entered 10m through 12h",
        "GPU-hours",
        "432.0",
    ),
    "saved vs 432": (
        "example",
        "cost-counterfactuals",
        "all 9 that entered 10m through 12h",
        "Saved GPU-hours",
        "262.8",
    ),
    "saved % vs 432": ("example", "cost-counterfactuals", "all 9 that entered 10m through 12h", "Saved", "60.8%"),
    "counterfactual 60m": (
        "example",
        "cost-counterfactuals",
        "all 4 that entered 60m through 12h",
        "GPU-hours",
        "192.0",
    ),
    "saved % vs 192": ("example", "cost-counterfactuals", "all 4 that entered 60m through 12h", "Saved", "11.9%"),
    "host block a100": ("example", "cost-host-blocks", "a100", "GPU-hours", "85.2"),
    "near-equivalence measured": ("example", "verdict", "greedy-near-equivalent", "Measured", "0.0130"),
    "near-equivalence threshold": ("example", "verdict", "greedy-near-equivalent", "Threshold", "<= 0.0100"),
    "near-equivalence result": ("example", "verdict", "greedy-near-equivalent", "Result", "FAIL"),
    "mean gap measured": ("example", "verdict", "sentinel-acceptable", "Measured", "0.0250"),
    "mean gap threshold": ("example", "verdict", "sentinel-acceptable", "Threshold", "<= 0.0200"),
    "first everywhere": ("example", "verdict", "bridge-first-everywhere", "Result", "PASS"),
    "10m keep": ("example", "decision-10m", "9", "Outcome", "promoted (keep)"),
    "10m top": ("example", "decision-10m", "3", "Candidate", "d12-ar48"),
    "60m mean rank": ("example", "decision-60m", "1", "Mean rank", "1.00"),
    "12h winner": ("example", "decision-12h", "1", "Outcome", "winner"),
    "spec 10m rule": ("example", "spec-stages", "10m", "Promotion rule", "top 3 by mean, keep sentinel-d8-ar48"),
    "failed 10m value": ("failing", "decision-10m", "9", "l40s/2", "failed"),
    "failed 10m outcome": ("failing", "decision-10m", "9", "Outcome", "cut: incomplete (failed cells)"),
    "failed 10m replacement": ("failing", "decision-10m", "3", "Outcome", "promoted (top)"),
    "failed 12h greedy": ("failing", "decision-12h", "3", "a100/1", "failed"),
    "failed cells reason": ("failing", "failed-cells", "12h", "Reason", "OOMKilled"),
    "failed executed total": ("failing", "cost-executed", "total", "GPU-hours", "169.0"),
    "failed verdict": (
        "failing",
        "verdict",
        "greedy-near-equivalent",
        "Detail",
        "greedy has failed cells in the final stage",
    ),
    "tau 10m to 60m": ("example", "stability-stages", "10m", "Kendall tau-b", "0.67"),
    "tau 2m to 5m": ("example", "stability-stages", "2m", "Kendall tau-b", "0.84"),
    "tau host blocks 5m": ("example", "stability-host-blocks", "5m", "Kendall tau-b", "0.94"),
    "share of a top promotion": ("example", "decision-10m", "3", "Promoted in resamples", "100%"),
    "share of a cut": ("example", "decision-10m", "4", "Promoted in resamples", "0%"),
    "shares per stage": ("example", "stability-promotion", "10m", "Least robust promotion", "all at 100%"),
    "no share for an incomplete": ("failing", "decision-10m", "9", "Promoted in resamples", "-"),
    "running stage": ("running", "progress", "60m", "State", "Running"),
    "running counts": ("running", "progress", "60m", "Pending", "9"),
    "running failed": ("running", "progress", "60m", "Failed", "1"),
    "running cell": ("running", "cells-60m", "greedy", "a100/1", "running"),
    "queued cell": ("running", "cells-60m", "greedy", "l40s/1", "queued"),
    "running count": ("running", "progress", "60m", "Running", "1"),
    "queued count": ("running", "progress", "60m", "Queued", "1"),
    "running executed so far": ("running", "cost-executed", "total", "GPU-hours", "14.2"),
}


@pytest.mark.parametrize("case", CELLS, ids=list(CELLS))
def test_table_cell(reports, case):
    name, key, first, header, want = CELLS[case]
    table = reports[name].table(key)
    got = row(table, first)[table.headers.index(header)]
    assert got == want, f"{name} {key}[{first}][{header}]: got {got!r}, want {want!r}"


def test_summary_states_cost_against_each_alternative(reports):
    summary = {r[0]: r[1] for r in reports["example"].table("summary").rows}
    assert summary["GPU-hours executed"] == "169.2"
    assert summary["Saved vs 432.0 (all 9 from 10m on)"] == "262.8 GPU-hours (60.8%)"
    assert summary["Saved vs 192.0 (all 4 from 60m on)"] == "22.8 GPU-hours (11.9%)"
    assert summary["Winner"] == "bridge"
    assert summary["Frozen hash"].startswith("sha256:")


def test_cut_and_promoted_are_marked(reports):
    t = reports["example"].table("decision-10m")
    marks = dict(zip(column(t, "Candidate"), t.marks, strict=True))
    assert [c for c, m in marks.items() if m == "promoted"] == ["greedy", "bridge", "d12-ar48", "sentinel-d8-ar48"]
    assert marks["d10-ar64"] == "cut"


FIGURES = {
    "example": [RANK_FLOW, STABILITY, GPU_HOURS] + [CELL_VALUES + s for s in ("2m", "5m", "10m", "60m", "12h")],
    "failing": [RANK_FLOW, STABILITY, GPU_HOURS] + [CELL_VALUES + s for s in ("2m", "5m", "10m", "60m", "12h")],
    "running": [PROGRESS, RANK_FLOW, STABILITY, GPU_HOURS] + [CELL_VALUES + s for s in ("2m", "5m", "10m", "60m")],
}


@pytest.mark.parametrize("name", FIGURES)
def test_figure_slots(reports, name):
    assert sorted(reports[name].figure_keys()) == sorted(FIGURES[name])


def test_bare_status_without_ladder_says_how_to_show_the_spec():
    from promotion_ladder.report import from_document

    from .builders import simulate_json

    report = build_report(from_document(simulate_json(), "sim.json", name="sim"))
    spec = next(s for s in report.sections if s.key == "spec")
    assert not spec.tables and "--ladder FILE" in spec.text[0]
    assert report.table("cost-executed").rows[-1][-1] == "169.2"


def test_changed_spec_is_flagged():
    from promotion_ladder.report import from_document

    from .builders import full_object, simulate_json

    doc = full_object(simulate_json())
    doc["spec"]["stages"][2]["promote"]["top"] = 4  # moved the goalposts after the fact
    report = build_report(from_document(doc, "edited.json"))
    assert any("frozen hash" in w and "differs" in w for w in report.warnings)


def test_running_summary_does_not_claim_savings(reports):
    summary = {r[0]: r[1] for r in reports["running"].table("summary").rows}
    assert summary["GPU-hours executed"] == "14.2 (so far)"
    assert not any(k.startswith("Saved") for k in summary)
    assert summary["Counterfactuals"].startswith("576.0 (all 12 from 2m on), 432.0 (all 9 from 10m on)")
    assert "Saved so far" in reports["running"].table("cost-counterfactuals").headers


def test_ladder_that_failed_at_its_first_stage():
    """Nothing recorded: every 2m cell failed, nobody is promoted, the ladder Failed; the report still says why."""
    from promotion_ladder.report import from_document

    from .builders import full_object, simulate_json

    report = build_report(from_document(full_object(simulate_json({})), "empty.json"))
    summary = {r[0]: r[1] for r in report.table("summary").rows}
    assert summary["Phase"] == "Failed" and "nothing to promote" in summary["Message"]
    assert summary["Failed cells"] == "36"
    assert set(column(report.table("decision-2m"), "Outcome")) == {"cut: incomplete (failed cells)"}
    assert report.figure_keys() == [RANK_FLOW, GPU_HOURS, CELL_VALUES + "2m"]


def test_fragile_promotion_is_flagged_beside_its_decision():
    """Two host blocks, top 1: x (1.0, 3.0) ties y (2.0, 2.0) on the mean and wins on entering order; a resample
    that draws l40s twice promotes y instead. The shares are counted from the pinned draws of stage s1."""
    from collections import Counter

    from promotion_ladder.core.cell import CellOutcome
    from promotion_ladder.core.stability import draws
    from promotion_ladder.core.status import simulate
    from promotion_ladder.report import from_document

    from ..unit.builders import build, ladder_doc

    ladder = build(
        ladder_doc(
            candidates=["x", "y", "z"],
            stages=[
                {"name": "s1", "budget": "2m", "hostBlocks": ["a100", "l40s"], "seeds": [1], "promote": {"top": 1}},
                {"name": "s2", "budget": "10m", "hostBlocks": ["a100", "l40s"], "seeds": [1]},
            ],
        )
    )
    values = {"s1": {"x": [1.0, 3.0], "y": [2.0, 2.0], "z": [2.5, 2.5]}, "s2": {"x": [1.0, 1.1]}}
    recorded = {
        (st, c, hb, 1): CellOutcome("succeeded", v)
        for st, t in values.items()
        for c, vals in t.items()
        for hb, v in zip(("a100", "l40s"), vals, strict=True)
    }
    status, _ = simulate(ladder.spec, recorded)
    n = Counter(tuple(sorted(d)) for d in draws("s1", 2))
    x = (n[(0, 0)] + n[(0, 1)]) / 200
    report = build_report(from_document(json.loads(json.dumps(status.wire())), "small.json", name="small"))
    t = report.table("decision-s1")
    assert column(t, "Promoted in resamples") == [f"{x:.0%}", f"{1 - x:.0%}", "0%"]
    stage = next(s for s in report.sections if s.key == "stage-s1")
    assert f"Fragile: the promotion of x would flip in {1 - x:.0%} of the resamples." in stage.text
    assert row(report.table("stability-promotion"), "s1")[2] == f"x {x:.0%}"
    assert report.table("stability-promotion").marks == ["fail"]
    assert row(report.table("stability-stages"), "s1")[3] == (
        "undefined: fewer than two candidates complete in both s1 and s2"
    )


def test_a_status_from_before_stability_gets_the_same_figures():
    from promotion_ladder.report import from_document

    from .builders import simulate_json

    doc = simulate_json()
    old = {k: v for k, v in doc.items() if k != "stability"}
    new_report, old_report = (build_report(from_document(d, "sim.json", name="sim")) for d in (doc, old))
    for key in ("stability-stages", "stability-host-blocks", "stability-promotion", "decision-10m"):
        assert old_report.table(key).rows == new_report.table(key).rows


def test_a_candidate_kept_without_a_complete_result_is_said():
    """Issue 21, defect 5: `keep` promoted a candidate all of whose cells had failed and the report
    showed it as any other promotion. The decision table and the stage's text now say so."""
    from promotion_ladder.core.cell import CellOutcome

    from .builders import from_document, full_object, recorded, simulate_json

    results = dict(recorded())
    for hb in ("a100", "l40s"):
        for seed in (1, 2):
            results[("10m", "sentinel-d8-ar48", hb, seed)] = CellOutcome(state="failed", reason="diverged")
    report = build_report(from_document(full_object(simulate_json(results)), "kept.status.json"))
    table = report.table("decision-10m")
    kept = next(r for r in table.rows if r[1] == "sentinel-d8-ar48")
    assert kept[table.headers.index("Outcome")] == "promoted (keep, no complete result: 0 of 4 cells succeeded)"
    text = " ".join(t for s in report.sections for t in s.text)
    assert "Kept by keep without a complete result: sentinel-d8-ar48 (0 of 4 cells succeeded)" in text


def test_each_candidates_peak_memory_per_stage(reports):
    from .builders import measured_input

    report = build_report(measured_input())
    first = report.table("memory-2m")
    assert first.headers == ["Candidate", "Peak memory", "Cells measured"]
    # The largest over the candidate's cells: its seed 3 cell (+3 MiB), in GiB or, below one, MiB.
    assert row(first, "d12-ar48")[1:] == ["10.00 GiB", "3 of 3"]
    assert row(first, "sentinel-d8-ar48")[1:] == ["3 MiB", "3 of 3"]
    assert row(report.table("memory-5m"), "bridge")[1:] == ["20.00 GiB", "1 of 2"]  # l40s reported none
    assert row(report.table("memory-12h"), "greedy")[1:] == ["21.00 GiB", "4 of 4"]
    assert {t.key for s in report.sections for t in s.tables if t.key.startswith("memory-")} == {
        "memory-2m",
        "memory-5m",
        "memory-10m",
        "memory-60m",
        "memory-12h",
    }
    # A status whose cells report no peak memory (the example's) gets no such table.
    assert not any(t.key.startswith("memory-") for s in reports["example"].sections for t in s.tables)


def test_a_continuation_ladder_shows_what_ran_beside_from_scratch_and_the_winners_checkpoints():
    from promotion_ladder.core.api import load_ladder
    from promotion_ladder.core.status import simulate
    from promotion_ladder.report import from_document
    from promotion_ladder.report.build import gpu_h

    from .builders import full_object, recorded

    obj = full_object({})
    obj["spec"]["continuation"] = {"from": "previousStage", "path": "/ck"}
    spec = load_ladder(obj).spec
    # Every cell after the first stage took 60 s over from its predecessor.
    rec = {
        k: o if k[0] == spec.stages[0].name else o.model_copy(update={"resumed_seconds": 60.0})
        for k, o in recorded().items()
    }
    status, _ = simulate(spec, rec, checkpoint_root="/ck/protocol")
    obj["status"] = json.loads(json.dumps(status.wire()))
    summary = {r[0]: r[1] for r in build_report(from_document(obj, "cont.json")).table("summary").rows}
    g = status.gpu_hours
    assert g.from_scratch > g.total
    saved = g.from_scratch - g.total
    assert summary["GPU-hours from scratch"] == (
        f"{gpu_h(g.from_scratch)} (continuing ran {gpu_h(g.total)}: saved "
        f"{gpu_h(saved)}, {100 * saved / g.from_scratch:.1f}%)"
    )
    winner = status.verdict.winner
    assert summary["Winner's checkpoints"].split(", ") == status.checkpoints.winner
    assert all(f"/{winner}." in p for p in status.checkpoints.winner)
