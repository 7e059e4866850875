"""The accounting of a ladder that continues: protocol GPU-hours count what ran (each cell's train
seconds less those it took over from its predecessor), beside the same cells from scratch; the
metrics' counter agrees; `ladder simulate` replays a continuation ladder from recorded results;
and for the paper's ladder it prints what continuing would have saved."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from promotion_ladder.cli import main
from promotion_ladder.core.accounting import cell_gpu_hours, cell_occupied_gpu_hours, gpu_hours
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import Cell, CellOutcome
from promotion_ladder.core.planner import plan

from .builders import ladder_doc

ROOT = Path(__file__).resolve().parents[2]
STAGES = [
    {"name": "s1", "budget": "100s", "hostBlocks": ["a100"], "seeds": [1], "promote": {"top": 1}},
    {"name": "s2", "budget": "300s", "hostBlocks": ["a100"], "seeds": [1, 2]},
]
DOC = ladder_doc(
    candidates=2, stages=STAGES, host_blocks=("a100",), trainer={"gpus": 2}, continuation={"from": "previousStage"}
)
SPEC = load_ladder(DOC).spec


def ok(value, train, resumed=None, occupied=None):
    return CellOutcome("succeeded", value, train_seconds=train, resumed_seconds=resumed, occupied_seconds=occupied)


# s1: two cells from scratch; s2: c0 seed 1 resumed at 60 s (s1's stable phase), seed 2 had no
# predecessor (s1 ran seed 1 only) and trained from scratch.
OUTCOMES = {
    Cell("s1", "c0", "a100", 1).key: ok(1.0, 100.0, 0.0, occupied=130.0),
    Cell("s1", "c1", "a100", 1).key: ok(1.2, 100.0, 0.0, occupied=125.0),
    Cell("s2", "c0", "a100", 1).key: ok(0.9, 300.0, 60.0, occupied=250.0),
    Cell("s2", "c0", "a100", 2).key: ok(0.91, 300.0, 0.0, occupied=330.0),
}


def test_protocol_hours_count_what_ran_beside_the_from_scratch_figure():
    g = gpu_hours(SPEC, OUTCOMES, plan(SPEC, OUTCOMES).entering)
    ran = (100 + 100 + (300 - 60) + 300) * 2 / 3600
    assert g.total == pytest.approx(ran, abs=1e-6)
    assert g.from_scratch == pytest.approx((100 + 100 + 300 + 300) * 2 / 3600, abs=1e-6)
    assert g.by_stage["s2"] == pytest.approx((240 + 300) * 2 / 3600, abs=1e-6)
    assert g.by_candidate["c0"] == pytest.approx((100 + 240 + 300) * 2 / 3600, abs=1e-6)
    # The counterfactual keeps its definition (both candidates through s2 from scratch); saved is against what ran.
    (cf,) = g.counterfactuals
    assert cf.gpu_hours == pytest.approx(2 * 2 * 300 * 2 / 3600, abs=1e-6)
    assert cf.saved_gpu_hours == pytest.approx(cf.gpu_hours - g.total, abs=1e-5)


def test_occupancy_is_floored_by_what_ran_not_by_the_whole_budget():
    # The resumed cell held its GPUs 250 s, more than the 240 s it trained itself: 250 s, not 300 s.
    g = gpu_hours(SPEC, OUTCOMES, plan(SPEC, OUTCOMES).entering)
    assert g.occupied.by_stage["s2"] == pytest.approx((250 + 330) * 2 / 3600, abs=1e-6)


CELL_CASES = {
    "from scratch": (300.0, None, 300.0),
    "resumed": (300.0, 60.0, 240.0),
    "resumed past what it reports (clamped)": (50.0, 60.0, 0.0),
    "no seconds reported: the budget, less what it took over": (None, 60.0, 240.0),
}


@pytest.mark.parametrize("name", list(CELL_CASES))
def test_a_cells_hours_and_the_metrics_counter_agree(name):
    train, resumed, seconds = CELL_CASES[name]
    assert cell_gpu_hours(train, 300.0, 2, resumed) == pytest.approx(seconds * 2 / 3600)
    assert cell_occupied_gpu_hours(None, train, 300.0, 2, resumed) == pytest.approx(seconds * 2 / 3600)


def test_a_ladder_that_does_not_continue_has_no_from_scratch_figure():
    plain = load_ladder(ladder_doc(candidates=2, stages=STAGES, host_blocks=("a100",))).spec
    assert gpu_hours(plain, OUTCOMES, plan(plain, OUTCOMES).entering).from_scratch is None


def _write(tmp_path, doc, results):
    ladder = tmp_path / "ladder.yaml"
    ladder.write_text(yaml.safe_dump(doc))
    lines = tmp_path / "results.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in results))
    return str(ladder), str(lines)


def test_simulate_replays_a_continuation_ladder(tmp_path, capsys):
    results = [
        {
            "stage": k.stage,
            "candidate": k.candidate,
            "hostBlock": k.host_block,
            "seed": k.seed,
            "value": o.value,
            "trainSeconds": o.train_seconds,
            "resumedSeconds": o.resumed_seconds,
        }
        for k, o in OUTCOMES.items()
    ]
    ladder, lines = _write(tmp_path, DOC, results)
    assert main(["simulate", ladder, "--results", lines, "--output", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["gpuHours"]["total"] == pytest.approx((100 + 100 + 240 + 300) * 2 / 3600, abs=1e-6)
    assert status["gpuHours"]["fromScratch"] == pytest.approx(800 * 2 / 3600, abs=1e-6)
    s2 = {(c["candidate"], c["seed"]): c for c in status["stages"][1]["cells"]}
    assert s2[("c0", 1)]["resumedSeconds"] == 60.0 and s2[("c0", 2)]["resumedSeconds"] == 0.0
    assert status["checkpoints"]["root"] == "/checkpoints/test"
    assert status["checkpoints"]["deleted"] == [{"stage": "s1", "candidates": ["c1"]}]
    assert main(["simulate", ladder, "--results", lines]) == 0
    table = capsys.readouterr().out
    assert "continuing: 0.411 GPU-hours ran (increments and decays) against 0.444 from scratch" in table
    assert "winner's: /checkpoints/test/s2/c0.a100.2/final" in table


def _paper_saving(status: dict) -> tuple[float, int]:
    """The rule, computed here on its own: each cell of a later stage whose (candidate, host block,
    seed) ran one stage earlier saves (1 - warmdown_frac) of that stage's budget. Who entered a
    stage: whom the replay's previous decision promoted."""
    doc = yaml.safe_load((ROOT / "examples/protocol-ladder.yaml").read_text())
    warmdown = {c["name"]: c["config"].get("warmdown_frac", 0.4) for c in doc["spec"]["candidates"]}
    hours = {"2m": 2 / 60, "5m": 5 / 60, "10m": 10 / 60, "60m": 1, "12h": 12}
    stages = doc["spec"]["stages"]
    saved, cells = 0.0, 0
    for i, (prev, st) in enumerate(pairwise(stages)):
        for c in status["stages"][i]["decision"]["promoted"]:
            for hb in st["hostBlocks"]:
                for seed in st["seeds"]:
                    if hb in prev["hostBlocks"] and seed in prev["seeds"]:
                        saved += (1 - warmdown[c]) * hours[prev["name"]]
                        cells += 1
    return saved, cells


def test_simulate_prints_what_continuing_would_have_saved_the_papers_ladder(capsys):
    args = [
        "simulate",
        str(ROOT / "examples/protocol-ladder.yaml"),
        "--results",
        str(ROOT / "examples/protocol-results.jsonl"),
    ]
    assert main([*args, "--output", "json"]) == 0
    out = capsys.readouterr()
    saved, cells = _paper_saving(json.loads(out.out))
    assert out.err.startswith("continuing (spec.continuation) would have cost")  # beside the JSON, not in it
    assert main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert round(saved, 1) == 10.9 and cells == 58
    assert line.startswith(
        f"continuing (spec.continuation) would have cost {169.2 - saved:.1f} of these 169.2 GPU-hours: "
        f"{cells} of 124 cells resume"
    )
    assert f"saved {saved:.1f} ({100 * saved / 169.2:.1f}%)" in line
