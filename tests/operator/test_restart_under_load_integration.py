"""Issue 12, defect 1, at a size CI can afford: the operator is killed (SIGKILL) once a ladder's
160 stage-1 Jobs exist, and started again once 90% of them completed meanwhile; the restarted
operator must judge every finished cell from its Pod (none recorded Failed: the stub trainer
never fails), create no Job twice and finish the ladder.

It runs `benchmarks/operator_bench.py --restart` (its own control plane, four simulated nodes
of 8 GPUs), the same scenario the benchmark runs at full size (1,000 x 2 x 2 = 4,440 cells, with
its timings and memory in benchmarks/operator-results.md). Only correctness is asserted here;
speed and memory are the benchmark's.

At this size the code before the fix passed too (0 lost on 4f8c56e: its Kopf indexes were full
before it judged a cell; benchmarks/issue12-old-code.md), so this guards the scenario; the test
that fails on that code for defect 1 is test_robustness_integration's
test_complete_job_whose_pod_the_cache_lacks_is_not_failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_a_restart_under_load_loses_no_result_and_runs_no_cell_twice():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "operator_bench.py"),
            "--restart",
            "--candidates",
            "40",
            "--timeout",
            "600",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
        env=os.environ.copy(),
    )
    assert "{" in proc.stdout, f"no result (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    # 40 x 2 x 2 in s1, the top 4 x 2 x 2 in s2, the top 1 x 2 x 2 in s3.
    assert (result["phase"], result["cells"]) == ("Succeeded", 180), result
    assert result["results_lost"] == 0, result["failed_reasons"]
    assert result["jobs_created"] == result["pods_run"] == result["cells"], "a cell ran twice, or has no Job"
    assert proc.returncode == 0, proc.stderr[-3000:]
