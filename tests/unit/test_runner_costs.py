"""`ladder run`: each cell's occupancy is its process's wall time, and every cell of a ladder
gets the same torch.compile cache directory (the real compiled cells: tests/trainer/test_trainer_overhead.py)."""

import json
import re
import sys

from promotion_ladder.core.api import load_ladder
from promotion_ladder.local.caches import COMPILE_CACHE_DIR
from promotion_ladder.local.runner import run_ladder

from .builders import ladder_doc
from .test_runner import FAKE, Quiet

SLEEP = 0.6


def one_stage(**cfg):
    doc = ladder_doc(
        candidates=["c0", "c1"],
        host_blocks=("a", "b"),
        trainer={"command": [sys.executable, FAKE]},
        stages=[{"name": "s1", "budget": "10s", "hostBlocks": ["a", "b"], "seeds": [1]}],
    )
    for i, c in enumerate(doc["spec"]["candidates"]):
        c["config"] = {"base": 1.0 + i, "sleep": SLEEP, "dump_env": True, **cfg}
    return doc


def test_occupancy_is_the_process_wall_time(tmp_path):
    out = Quiet()
    status = run_ladder(load_ladder(one_stage()), tmp_path / "s.json", parallel=2, stream=out, poll_seconds=0.02)
    assert status.phase == "Succeeded"
    cells = status.stages[0].cells
    assert len(cells) == 4
    for c in cells:
        # The fake reports 1.0 train seconds but sleeps SLEEP and starts Python: the wall time
        # is at least the sleep and, on any machine this runs on, far less than a minute.
        assert SLEEP <= c.occupied_seconds < 60, c
    g = status.gpu_hours
    assert g.occupied.measured_cells == g.occupied.cells == 4
    assert g.occupied.total == round(sum(max(c.occupied_seconds, 1.0) for c in cells) / 3600, 6)
    assert "occupied)" in out.text  # the progress line: "... GPU-h (... occupied)"


def test_ladder_run_ends_with_protocol_and_occupied_per_stage(tmp_path, capsys):
    from promotion_ladder.cli import main

    (tmp_path / "ladder.json").write_text(json.dumps(one_stage(sleep=0)))
    assert main(["run", str(tmp_path / "ladder.json"), "--output", str(tmp_path / "s.json"), "--parallel", "2"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"stage +protocol +occupied +occupied/protocol", err) and re.search(r"\n +total +", err)
    assert "measured for 4 of 4 cells" in err


def test_every_cell_gets_the_ladders_compile_cache(tmp_path, monkeypatch):
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.delenv(var, raising=False)
    run_ladder(load_ladder(one_stage(sleep=0)), tmp_path / "s.json", parallel=2, stream=Quiet(), poll_seconds=0.02)
    envs = [json.loads(p.read_text()) for p in sorted((tmp_path / "s.cells").rglob("*.env.json"))]
    assert len(envs) == 4
    want = str((tmp_path / "s.cells" / COMPILE_CACHE_DIR).resolve())
    for env in envs:
        assert env == {
            "TORCHINDUCTOR_CACHE_DIR": want,
            "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
            "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
        }


def test_a_cache_dir_the_user_set_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    run_ladder(load_ladder(one_stage(sleep=0)), tmp_path / "s.json", parallel=2, stream=Quiet(), poll_seconds=0.02)
    envs = [json.loads(p.read_text()) for p in (tmp_path / "s.cells").rglob("*.env.json")]
    assert envs and {e["TORCHINDUCTOR_CACHE_DIR"] for e in envs} == {str(tmp_path / "mine")}
