"""scripts/gpu-check.sh, the one command a GPU session runs for the trainer's GPU checks,
exercised on a CPU with GPU_CHECK_SMOKE=1 so it cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def gpu_check(*parts: str, out: Path, smoke: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    env.pop("GPU_CHECK_SMOKE", None)
    if smoke:
        env["GPU_CHECK_SMOKE"] = "1"
    return subprocess.run(
        ["bash", "scripts/gpu-check.sh", *parts], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_smoke_run_writes_every_report(tmp_path):
    proc = gpu_check("env", "bench8", "budgets", out=tmp_path)
    logs = {p.name for p in tmp_path.iterdir()}
    assert {"env.log", "bench8.log", "bench-d8.json", "budgets.log", "budgets.jsonl"} <= logs
    assert "torch" in (tmp_path / "env.log").read_text()
    rows = json.loads((tmp_path / "bench-d8.json").read_text())
    assert rows and all(r["tokens_per_second"] > 0 for r in rows)
    results = [json.loads(line) for line in (tmp_path / "budgets.jsonl").read_text().splitlines() if line.strip()]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert results[0]["trainSeconds"] < results[1]["trainSeconds"]
    # The verdict on val_bpb against budget decides the exit code (on a loaded CPU it may say NO).
    falls = results[1]["value"] < results[0]["value"]
    assert f"val_bpb falls with budget: {'yes' if falls else 'NO'}" in proc.stdout
    assert proc.returncode == (0 if falls else 1), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_unknown_part_is_refused(tmp_path):
    proc = gpu_check("bench99", out=tmp_path)
    assert proc.returncode == 2 and "unknown part 'bench99'" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so(tmp_path):
    proc = gpu_check("tests", out=tmp_path, smoke=False)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr


def test_smoke_overhead_part_prints_each_cells_costs(tmp_path):
    proc = gpu_check("overhead", out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "overhead.json").read_text())
    assert len(summary["rows"]) == 2
    for r in summary["rows"]:
        assert r["setup_s"] > 0 and r["occupied_s"] >= r["train_s"] >= 2
    assert "| cell | set-up s | of which before train.run | compile s |" in proc.stdout
    assert "occupied / budget, warm cells" in proc.stdout


def test_smoke_ddp_part_compares_the_launcher_path_with_one_process(tmp_path):
    proc = gpu_check("ddp", out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "ddp.log").read_text()
    assert "| one process | 1 |" in log and "| torch.distributed.run + DDP | 2 |" in log
    assert "| torch.distributed.run + FSDP2 | 2 |" in log
    assert "scaling, DDP:" in log and "scaling, FSDP2:" in log
    results = [json.loads(line.removeprefix("result: ")) for line in log.splitlines() if line.startswith("result: ")]
    assert [r.get("worldSize") for r in results] == [1, 2, 2]
    assert [r["steps"] for r in results] == [5, 5, 5]
    for r in results[1:]:  # the same training, split in two
        assert r["value"] == pytest.approx(results[0]["value"], rel=1e-4)


def test_smoke_continuation_part_compares_the_two_runs(tmp_path):
    proc = gpu_check("continuation", out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "continuation.json").read_text())
    scratch, continuing = summary["runs"]["from scratch"], summary["runs"]["continuing"]
    assert sorted(scratch["ranking"]) == sorted(continuing["ranking"]) and len(scratch["ranking"]) == 3
    assert scratch["from_scratch_gpu_hours"] is None and continuing["gpu_hours"] < continuing["from_scratch_gpu_hours"]
    assert summary["kendall_tau_b"] is None or -1 <= summary["kendall_tau_b"] <= 1
    assert "Kendall tau-b between the final rankings" in proc.stdout
