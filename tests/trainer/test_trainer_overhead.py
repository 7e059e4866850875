"""What a cell costs besides its budget: setupSeconds (process start to the first timed step)
and evalSeconds in the result, and torch.compile's cache shared by the cells of `ladder run`."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")

from promotion_ladder.core.api import load_ladder  # noqa: E402
from promotion_ladder.core.result import parse_result  # noqa: E402
from promotion_ladder.local.caches import COMPILE_CACHE_DIR  # noqa: E402
from promotion_ladder.local.runner import run_ladder  # noqa: E402

from .conftest import TINY, run_cli  # noqa: E402


def test_a_cell_reports_its_setup_and_evaluation_seconds(corpus, tmp_path):
    out = tmp_path / "result.json"
    t0 = time.monotonic()
    proc = run_cli(
        [
            "--config",
            json.dumps(TINY),
            "--budget",
            "1s",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--eval-tokens",
            "2048",
        ]
    )
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    r = parse_result(out.read_text())
    in_run = float(re.search(r"setup took ([\d.]+)s", proc.stderr).group(1))
    # Set-up counts from the process's start, so Python's start-up and `import torch` (seconds,
    # never under a quarter of one) come on top of what train.run logs as its own set-up.
    assert r.setup_seconds >= in_run + 0.25
    assert r.eval_seconds > 0
    assert r.setup_seconds + r.train_seconds + r.eval_seconds <= wall


def _compiled_ladder(corpus) -> dict:
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": "compiled"},
        "spec": {
            "trainer": {
                "image": "t:0",
                "command": [sys.executable, "-m", "ladder_trainer"],
                "gpus": 1,
                "args": ["--device", "cpu", "--compile", "on", "--data", str(corpus), "--eval-tokens", "512"],
            },
            "hostBlocks": [{"name": h, "nodeSelector": {"pool": h}} for h in ("a", "b")],
            "candidates": [{"name": "tiny", "config": TINY}],
            "stages": [{"name": "s1", "budget": "1s", "hostBlocks": ["a", "b"], "seeds": [1]}],
        },
    }


def test_ladder_run_cells_share_the_compile_cache(corpus, tmp_path, monkeypatch):
    """One shape, two cells, one after the other: the first compiles and fills the ladder's
    cache directory, the second loads every graph from it (Inductor on CPU: slow, a minute or
    two on a busy 2-core machine for the first cell)."""
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.delenv(var, raising=False)
    status = run_ladder(
        load_ladder(_compiled_ladder(corpus)),
        tmp_path / "s.json",
        parallel=1,
        stream=open(tmp_path / "progress.txt", "w"),
        poll_seconds=0.1,
    )
    assert status.phase == "Succeeded", (tmp_path / "progress.txt").read_text()
    cache = (tmp_path / "s.cells" / COMPILE_CACHE_DIR).resolve()
    assert any(cache.rglob("*")), "the first cell wrote nothing to the ladder's cache"
    logs = [(tmp_path / "s.cells" / "s1" / f"tiny.{hb}.1" / "log.txt").read_text() for hb in ("a", "b")]
    notes = [re.search(r"compile cache (\S+): FX graph (\d+) hit\(s\), (\d+) miss\(es\)", log) for log in logs]
    assert all(notes), logs
    assert {n.group(1) for n in notes} == {str(cache)}
    (first_hits, first_misses), (hits, misses) = [(int(n.group(2)), int(n.group(3))) for n in notes]
    assert first_misses > 0 and hits > 0 and misses == 0
    results = [
        parse_result((tmp_path / "s.cells" / "s1" / f"tiny.{hb}.1" / "result.json").read_text()) for hb in ("a", "b")
    ]
    assert results[1].setup_seconds < results[0].setup_seconds
