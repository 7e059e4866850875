"""`ladder run` with a fake cell program (the real trainer runs in tests/trainer and the demo)."""

import json
import sys
from pathlib import Path

import pytest

from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import Cell
from promotion_ladder.files import FileError, read_status
from promotion_ladder.local.cellproc import outcome_from_result
from promotion_ladder.local.runner import run_ladder

from .builders import edit, ladder_doc

FAKE = str(Path(__file__).parent / "fixtures" / "fake_trainer.py")


def fake_ladder(configs, **kw):
    doc = ladder_doc(
        candidates=list(configs), host_blocks=("a", "b"), trainer={"command": [sys.executable, FAKE]}, **kw
    )
    for c, cfg in zip(doc["spec"]["candidates"], configs.values(), strict=True):
        c["config"] = cfg
    return doc


class Quiet:
    def __init__(self):
        self.lines = []

    def write(self, s):
        self.lines.append(s)

    def flush(self):
        pass

    def isatty(self):
        return False

    @property
    def text(self):
        return "".join(self.lines)


def test_runs_a_ladder_and_records_failures(tmp_path):
    doc = fake_ladder(
        {"c0": {"base": 1.0}, "c1": {"base": 0.9}, "c2": {"base": 1.5}, "c3": {"base": 0.5, "fail_stage": "s1"}}
    )
    out = Quiet()
    status = run_ladder(load_ladder(doc), tmp_path / "s.json", parallel=2, stream=out, poll_seconds=0.02)
    assert status.phase == "Succeeded"
    assert status.verdict.winner == "c1"
    s1 = status.stages[0]
    assert s1.decision.promoted == ["c1", "c0"]
    failed = [c for c in s1.cells if c.state == "Failed"]
    assert {c.candidate for c in failed} == {"c3"}
    assert all("diverged: loss is nan" in c.reason for c in failed)
    saved = read_status(tmp_path / "s.json")
    assert saved.wire() == status.wire()
    assert "stage s1: promoted" in out.text and "winner: c1" in out.text


def test_resume_runs_no_finished_cell_again(tmp_path):
    doc = fake_ladder({"c0": {"base": 1.0}, "c1": {"base": 0.9}, "c2": {"base": 1.5}, "c3": {"base": 0.7}})
    ladder = load_ladder(doc)
    first = run_ladder(ladder, tmp_path / "s.json", stream=Quiet(), poll_seconds=0.02)
    logs = sorted((tmp_path / "s.cells").rglob("log.txt"))
    stamps = {p: p.stat().st_mtime_ns for p in logs}
    again = run_ladder(ladder, tmp_path / "s.json", stream=Quiet(), poll_seconds=0.02)
    assert again.wire() == first.wire()
    assert {p: p.stat().st_mtime_ns for p in logs} == stamps


def test_resume_refuses_a_changed_ladder(tmp_path):
    doc = fake_ladder({"c0": {"base": 1.0}, "c1": {"base": 0.9}, "c2": {"base": 1.5}, "c3": {"base": 0.7}})
    run_ladder(load_ladder(doc), tmp_path / "s.json", stream=Quiet(), poll_seconds=0.02)
    changed = load_ladder(edit(doc, "spec.candidates.0.config", {"base": 0.1}))
    with pytest.raises(FileError, match="frozen"):
        run_ladder(changed, tmp_path / "s.json", stream=Quiet())


CELL = Cell("s1", "c0", "a", 1)
OK_DOC = {
    "apiVersion": "ladder.promotion.dev/v1alpha1",
    "kind": "CellResult",
    "status": "ok",
    "metric": "val_bpb",
    "value": 1.25,
    "trainSeconds": 9.5,
    "ladder": "test",
    "stage": "s1",
    "candidate": "c0",
    "hostBlock": "a",
    "seed": 1,
}

OUTCOMES = {
    "ok": (0, OK_DOC, "succeeded", ""),
    "no result file": (0, None, "failed", "exit code 0 but no result"),
    "crash": (1, None, "failed", "exit code 1 (no result)"),
    "diverged": (
        3,
        {**OK_DOC, "status": "diverged", "value": None, "message": "nan"},
        "failed",
        "exit code 3 (diverged: nan)",
    ),
    "forged identity": (0, {**OK_DOC, "candidate": "c9"}, "failed", "does not match the cell"),
    "wrong metric": (0, {**OK_DOC, "metric": "loss"}, "failed", "reports metric 'loss'"),
    "ok without value": (0, {**OK_DOC, "value": None}, "failed", "status 'ok' needs a finite 'value'"),
    "not json": (0, "garbage", "failed", "result is not JSON"),
}


@pytest.mark.parametrize("name", list(OUTCOMES))
def test_outcome_from_result(name):
    code, doc, state, reason = OUTCOMES[name]
    text = doc if isinstance(doc, str) or doc is None else json.dumps(doc)
    o = outcome_from_result(load_ladder(ladder_doc(host_blocks=("a", "b"))), CELL, code, text)
    assert o.state == state
    assert reason in o.reason
    if state == "succeeded":
        assert (o.value, o.train_seconds) == (1.25, 9.5)


# ---- GPUs and processes per cell -------------------------------------------------------------


def _cells_env(tmp_path) -> list[dict]:
    return [json.loads(json.loads(p.read_text())["message"]) for p in sorted(tmp_path.glob("s.cells/**/result.json"))]


@pytest.mark.parametrize(
    "visible,gpus,want",
    [
        ("", 2, [{"LADDER_GPUS": "2", "LADDER_NODES": "1", "CUDA_VISIBLE_DEVICES": ""}] * 2),  # CPU: 2 gloo processes
        (
            "0,1,2,3",
            2,
            [
                {"LADDER_GPUS": "2", "LADDER_NODES": "1", "CUDA_VISIBLE_DEVICES": "0,1"},
                {"LADDER_GPUS": "2", "LADDER_NODES": "1", "CUDA_VISIBLE_DEVICES": "2,3"},
            ],
        ),
        (
            "0,1",
            0,
            [
                {"LADDER_GPUS": "1", "LADDER_NODES": "1", "CUDA_VISIBLE_DEVICES": "0"},
                {"LADDER_GPUS": "1", "LADDER_NODES": "1", "CUDA_VISIBLE_DEVICES": "1"},
            ],
        ),
    ],
    ids=["cpu only", "four gpus two per cell", "gpus 0 means one"],
)
def test_each_cell_gets_its_gpus_and_process_count(tmp_path, monkeypatch, visible, gpus, want):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    for var in ("LADDER_GPUS", "LADDER_NODES"):
        monkeypatch.delenv(var, raising=False)
    stages = [{"name": "s1", "budget": "2m", "hostBlocks": ["a", "b"], "seeds": [1]}]
    doc = fake_ladder({"c0": {"base": 1.0, "echo_env": True}}, stages=stages)
    doc["spec"]["trainer"]["gpus"] = gpus
    status = run_ladder(load_ladder(doc), tmp_path / "s.json", stream=Quiet(), poll_seconds=0.02)
    assert status.phase == "Succeeded"
    got = _cells_env(tmp_path)
    if visible:  # cells ran in parallel: which cell got which group is the scheduler's choice
        got = sorted(got, key=lambda e: e["CUDA_VISIBLE_DEVICES"])
    assert got == want


def test_a_ladder_needing_more_gpus_than_the_machine_has_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    doc = fake_ladder({"c0": {"base": 1.0}, "c1": {"base": 2.0}})
    doc["spec"]["trainer"]["gpus"] = 4
    with pytest.raises(ValueError, match=r"trainer.gpus: 4 GPUs per cell, but this machine has 2 \(ids 0, 1"):
        run_ladder(load_ladder(doc), tmp_path / "s.json", stream=Quiet())
    assert not (tmp_path / "s.json").exists()  # refused before anything ran
