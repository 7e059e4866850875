"""The cell contract's judge, through both adapters' entry points: the same (exit code, result)
ends the same way under `ladder run` (a real local process, polled by CellProcess) and under the
operator (intake.cell_outcome on Job/Pod summaries).

Each case names an exit code and the result document the cell leaves behind; the expected
state and a reason class (a phrase its reason must contain) are asserted for both adapters.
"""

from __future__ import annotations

import sys

import pytest

from promotion_ladder.controller.intake import cell_outcome
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import Cell
from promotion_ladder.core.contract import NON_RETRYABLE_EXIT_CODES, judge
from promotion_ladder.local.cellproc import CellProcess

from ..unit.builders import edit, ladder_doc
from .kube import LADDER_UID, JobB, PodB, ladder_body, result_doc

CELL = Cell("s1", "c1", "a100", 1)
OTHER = Cell("s1", "c2", "a100", 1)

# name -> (exit code, result text or None, expected state, reason class)
CASES = {
    "ok": (0, result_doc(CELL, 1.25), "succeeded", ""),
    "no result": (0, None, "failed", "exit code 0 but no result"),
    "malformed": (0, "{not json", "failed", "result is not JSON"),
    "invalid (ok without value)": (0, result_doc(CELL, None), "failed", "status 'ok' needs a finite 'value'"),
    "wrong identity": (0, result_doc(OTHER, 0.1), "failed", "identity does not match the cell"),
    "wrong metric": (
        0,
        result_doc(CELL, 1.0, metric="loss"),
        "failed",
        "reports metric 'loss', the ladder's objective metric is 'val_bpb'",
    ),
    "wrong metric, exit non-zero": (1, result_doc(CELL, 1.0, metric="loss"), "failed", "reports metric 'loss'"),
    "exit non-zero with ok result": (1, result_doc(CELL, 1.25), "failed", "exit code 1 (ok)"),
    "crash without result": (1, None, "failed", "exit code 1"),
    "diverged": (
        3,
        result_doc(CELL, None, status="diverged", message="loss is nan"),
        "failed",
        "exit code 3 (diverged: loss is nan)",
    ),
    "diverged, no result": (3, None, "failed", "exit code 3 (diverged)"),
    "oom": (4, result_doc(CELL, None, status="oom", message="CUDA out of memory"), "failed", "exit code 4 (oom"),
    "oom, no result": (4, None, "failed", "exit code 4 (out of memory)"),
    "bad config": (2, result_doc(CELL, None, status="error", message="unknown key"), "failed", "exit code 2"),
    "status error with exit 0": (
        0,
        result_doc(CELL, None, status="error", message="no data"),
        "failed",
        "error: no data",
    ),
    # The schema is strict (issue 21): a number is a JSON number, the seed an integer, the status
    # one of the enum. Before, "1.25" counted as 1.25, true as 1, and seed true matched seed 1.
    "value as a string": (0, result_doc(CELL, "1.25"), "failed", "value: Input should be a valid number"),
    "value as a boolean": (0, result_doc(CELL, True), "failed", "value: Input should be a valid number"),
    "seed as a boolean": (0, result_doc(CELL, 1.25, seed=True), "failed", "seed: Input should be a valid integer"),
    "seed as a float": (0, result_doc(CELL, 1.25, seed=1.0), "failed", "seed: Input should be a valid integer"),
    "trainSeconds as a string": (
        0,
        result_doc(CELL, 1.25, train_seconds="2.0"),
        "failed",
        "trainSeconds: Input should be a valid number",
    ),
    "peakMemoryBytes as a boolean": (
        0,
        result_doc(CELL, 1.25, peakMemoryBytes=True),
        "failed",
        "peakMemoryBytes: Input should be a valid integer",
    ),
    "status outside the enum": (
        0,
        result_doc(CELL, 1.25, status="done"),
        "failed",
        "status: Input should be 'ok', 'diverged', 'oom' or 'error'",
    ),
}

# The fake trainer: writes $FAKE_RESULT (when set) to --result-file and exits with $FAKE_EXIT.
FAKE = (
    "import os, sys; a = sys.argv; t = os.environ.get('FAKE_RESULT'); "
    "t is not None and open(a[a.index('--result-file') + 1], 'w').write(t); "
    "sys.exit(int(os.environ['FAKE_EXIT']))"
)


def local_outcome(tmp_path, code: int, text: str | None):
    env = {"FAKE_EXIT": str(code)} | ({"FAKE_RESULT": text} if text is not None else {})
    doc = edit(ladder_doc(), "spec.trainer", {"command": [sys.executable, "-c", FAKE], "env": env})
    proc = CellProcess.start(load_ladder(doc), CELL, tmp_path, devices=None)
    proc.proc.wait(timeout=30)
    outcome = proc.poll()
    assert outcome is not None
    return outcome


def operator_outcome(code: int, text: str | None):
    """The Job as Kubernetes leaves it once the Pod has ended: complete on exit 0, failed at once
    on a non-retryable code (podFailurePolicy), failed after its retries on any other code."""
    j = JobB(ladder_body(), CELL)
    pod = PodB(j).exited(code)
    if text is not None:
        pod = pod.result(text)
    if code == 0:
        j = j.complete()
    else:
        j = j.failed("PodFailurePolicy" if code in NON_RETRYABLE_EXIT_CODES else "BackoffLimitExceeded")
    return cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [pod.summary()])


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_both_adapters_judge_alike(name, tmp_path):
    code, text, state, why = CASES[name]
    local = local_outcome(tmp_path, code, text)
    view = operator_outcome(code, text)
    assert view.outcome is not None and not view.running
    got = {"ladder run": (local.state, local.value), "operator": (view.outcome.state, view.outcome.value)}
    value = 1.25 if state == "succeeded" else None
    assert got == {"ladder run": (state, value), "operator": (state, value)}
    assert why in local.reason and why in view.outcome.reason, (local.reason, view.outcome.reason)
    # The core's judge is what both call: same reason up to the local log path.
    assert local.reason.split("; log: ")[0] == judge(text, code, CELL, "test", "val_bpb").reason


def test_wrong_metric_annotation_is_also_reported_as_rejected():
    view = operator_outcome(0, result_doc(CELL, 1.0, metric="loss"))
    assert [r.reason for r in view.rejections] == ["metric"]
    assert view.outcome is not None and "'loss'" in view.outcome.reason and "'val_bpb'" in view.outcome.reason


@pytest.mark.parametrize(
    "text",
    [result_doc(CELL, 1.0, metric="loss"), result_doc(OTHER, 0.1), "{not json"],
    ids=["wrong metric", "wrong identity", "malformed"],
)
def test_bad_annotation_on_a_running_pod_does_not_end_the_cell(text):
    j = JobB(ladder_body(), CELL).active()
    view = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [PodB(j).result(text).summary()])
    assert view.outcome is None and view.running
    assert len(view.rejections) == 1  # reported, but no veto over the cell
