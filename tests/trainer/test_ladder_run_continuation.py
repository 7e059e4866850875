"""A continuation ladder end to end under `ladder run` with the real trainer on CPU: stage s2's
cells resume from s1's stable checkpoints, the eliminated candidate's checkpoints are deleted
when s1 decides, the winner's are kept and named in the status, and the accounting counts what
ran beside the from-scratch figure. Wall-clock budgets of a few seconds: a minute on a busy
2-core machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")

from promotion_ladder.core.api import load_ladder  # noqa: E402
from promotion_ladder.core.continuation import FINAL_DIR, LOCAL_DIR, MANIFEST_FILE, STABLE_FILE  # noqa: E402
from promotion_ladder.local.runner import run_ladder  # noqa: E402

from .conftest import TINY  # noqa: E402

# Three learning rates far apart, so s1 eliminates one candidate and the ranking is not a tie.
CANDIDATES = {"slow": 0.0005, "mid": 0.005, "fast": 0.02}
S1_BUDGET, S2_BUDGET = 2.0, 3.0
WARMDOWN = 0.4


def _ladder(corpus: Path) -> dict:
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": "cont"},
        "spec": {
            "trainer": {
                "image": "t:0",
                "command": [sys.executable, "-m", "ladder_trainer"],
                "gpus": 1,
                "args": ["--device", "cpu", "--data", str(corpus), "--eval-tokens", "512"],
            },
            "hostBlocks": [{"name": "cpu", "nodeSelector": {"pool": "cpu"}}],
            "candidates": [
                {"name": n, "config": {**TINY, "matrix_lr": lr, "warmdown_frac": WARMDOWN}}
                for n, lr in CANDIDATES.items()
            ],
            "stages": [
                {"name": "s1", "budget": f"{S1_BUDGET:g}s", "hostBlocks": ["cpu"], "seeds": [1], "promote": {"top": 2}},
                {"name": "s2", "budget": f"{S2_BUDGET:g}s", "hostBlocks": ["cpu"], "seeds": [1]},
            ],
            "continuation": {"from": "previousStage"},
        },
    }


def test_a_continuation_ladder_under_ladder_run(corpus, tmp_path):
    progress = tmp_path / "progress.txt"
    with open(progress, "w") as stream:
        status = run_ladder(
            load_ladder(_ladder(corpus)), tmp_path / "s.json", parallel=1, stream=stream, poll_seconds=0.1
        )
    assert status.phase == "Succeeded", progress.read_text()
    root = (tmp_path / "s.cells" / LOCAL_DIR / "cont").resolve()
    s1, s2 = status.stages
    promoted = s1.decision.promoted
    (eliminated,) = set(CANDIDATES) - set(promoted)

    # s1 trained from scratch; each s2 cell took over its predecessor's flat phase.
    assert all(not c.resumed_seconds and not c.resume_refused for c in s1.cells)
    for c in s2.cells:
        assert c.resume_refused is None
        assert (1 - WARMDOWN) * S1_BUDGET <= c.resumed_seconds < S1_BUDGET, c
        # Every cell of s2 has had s2's whole budget of training, taken over and its own.
        assert S2_BUDGET <= c.train_seconds < S2_BUDGET + 1.0, c

    # Each decided stage deleted the checkpoints of the candidates it eliminated (s2's, the final
    # stage: every finalist but the winner), in every stage; the winner's are kept.
    winner = status.verdict.winner
    assert winner in promoted
    (runner_up,) = set(promoted) - {winner}
    assert [(d.stage, d.candidates) for d in status.checkpoints.deleted] == [("s1", [eliminated]), ("s2", [runner_up])]
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*")) == [
        f"s1/{winner}.cpu.1",
        f"s2/{winner}.cpu.1",
    ]
    log = progress.read_text()
    assert "checkpoints: deleted 1 folder(s) of the 1 candidate(s) stage s1 eliminated" in log
    assert "checkpoints: deleted 2 folder(s) of the 1 candidate(s) stage s2 eliminated" in log
    for stage in ("s1", "s2"):
        manifest = json.loads((root / stage / f"{winner}.cpu.1" / MANIFEST_FILE).read_text())
        assert (manifest["stage"], manifest["candidate"], manifest["seed"]) == (stage, winner, 1), manifest
        assert manifest["frozenHash"] == status.frozen_hash
        assert (root / stage / f"{winner}.cpu.1" / STABLE_FILE).is_file()

    # The winner's folders are named and there.
    assert status.checkpoints.winner == [
        str(root / "s1" / f"{winner}.cpu.1"),
        str(root / "s2" / f"{winner}.cpu.1"),
        str(root / "s2" / f"{winner}.cpu.1" / FINAL_DIR),
    ]
    assert all(Path(p).is_dir() for p in status.checkpoints.winner)

    # What ran is less than the same cells from scratch, by the seconds the s2 cells took over.
    g = status.gpu_hours
    taken_over = sum(c.resumed_seconds for c in s2.cells) / 3600
    assert g.from_scratch == pytest.approx(g.total + taken_over, abs=1e-5)
    assert g.total < g.from_scratch
