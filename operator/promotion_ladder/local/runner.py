"""`ladder run`: the embedded default. Runs a whole ladder on this machine, no Kubernetes.

A translator around the core's ladder step (core/step.py): finished processes in as observed
outcomes, the step, cells to start out as processes (cellproc.py, by the cell contract), one per
free GPU (one at a time on a machine without GPUs, unless --parallel says otherwise). The status file
is rewritten after every finished cell, so an interrupted run resumes with the same command
and never re-runs a finished cell or re-decides a recorded stage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from ..core import clock
from ..core.api import PromotionLadder
from ..core.cell import CellKey, CellOutcome
from ..core.status import FROZEN_SPEC_CHANGED, LadderStatus, decisions_from_status, outcomes_from_status
from ..core.step import Step, step
from ..files import FileError, read_status
from .cellproc import CellProcess
from .checkpoints import checkpoint_root, prune
from .placement import gpu_groups


def detect_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def write_status(path: Path, ladder: PromotionLadder, status: LadderStatus) -> None:
    doc = {
        "apiVersion": ladder.api_version,
        "kind": ladder.kind,
        "metadata": ladder.metadata.model_dump(exclude_none=True),
        "spec": ladder.spec.wire(),
        "status": status.wire(),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


class Progress:
    """One live line on a terminal; one line per event otherwise (logs, CI)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._last = text
        elif text != self._last:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = text

    def event(self, text: str) -> None:
        if self.tty and self._last:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        if self.tty and self._last:
            self.stream.write(self._last)
            self.stream.flush()


def _summary(status: LadderStatus, running: int) -> str:
    st = next((s for s in status.stages if s.name == status.current_stage), None)
    if st is None:
        return f"{status.phase}"
    done = sum(c.state == "Succeeded" for c in st.cells)
    failed = sum(c.state == "Failed" for c in st.cells)
    gh = status.gpu_hours.total if status.gpu_hours else 0.0
    occ = status.gpu_hours.occupied.total if status.gpu_hours and status.gpu_hours.occupied else gh
    return (
        f"stage {st.name} ({st.budget}): {done + failed}/{len(st.cells)} cells done, {running} running, "
        f"{failed} failed | leader {status.leader or '-'} | {gh:.3f} GPU-h ({occ:.3f} occupied)"
    )


def _new_stage_warnings(status: LadderStatus, warned: set[tuple[str, str]]) -> list[str]:
    """Data conditions (repeated data, corpus conflicts) of stages whose cells have all finished, once each."""
    out = []
    for st in status.stages:
        if not st.cells or any(c.state in ("Pending", "Running") for c in st.cells):
            continue
        for c in st.conditions or []:
            key = (st.name, c.type)
            if key not in warned:
                warned.add(key)
                out.append(f"warning: {c.type}: {c.message}")
    return out


def _recorded(ladder: PromotionLadder, status_path: Path) -> LadderStatus:
    """The status file a run resumes from, refused when it cannot be resumed under this ladder."""
    record = read_status(status_path)
    first = step(ladder.spec, record, {}, (), now=clock.iso())
    if first.stopped == FROZEN_SPEC_CHANGED:
        raise FileError(
            f"{status_path}: written for a ladder whose frozen fields differ (frozen hash {record.frozen_hash}, "
            f"this file's spec has {ladder.spec.frozen_hash()}); the rules are frozen once a ladder starts. "
            "Use --fresh to start over, or --output for a new status file."
        )
    if first.stopped is not None:
        raise FileError(f"{status_path}: {first.status.get('message')}. Use --fresh to start over.")
    return record


def _typed(s: Step) -> LadderStatus:
    """The step's typed status. The core leaves it None only when it stops on a status it cannot
    parse; this runner always hands it a typed LadderStatus (read_status parsed it) or None."""
    assert s.ladder_status is not None, "step() returned no typed status for a typed record"
    return s.ladder_status


def _reap(
    running: dict[CellKey, CellProcess], free_gpu_groups: list[list[str]], progress: Progress
) -> dict[CellKey, CellOutcome]:
    """The cells whose processes have ended, each said on its own line; their GPUs are free again."""
    observed: dict[CellKey, CellOutcome] = {}
    for key, proc in list(running.items()):
        outcome = proc.poll()
        if outcome is None:
            continue
        del running[key]
        if proc.devices:
            free_gpu_groups.append(proc.devices)
        observed[key] = outcome
        what = f"{outcome.value:.4f}" if outcome.ok else f"FAILED ({outcome.reason})"
        if outcome.data_passes is not None and outcome.data_passes > 1:
            what += f" [repeated data: {outcome.data_passes:.1f} passes over corpus {outcome.corpus or '?'}]"
        progress.event(f"  {proc.cell}: {what}")
    return observed


def run_ladder(
    ladder: PromotionLadder,
    status_path: Path,
    parallel: int | None = None,
    workdir: Path | None = None,
    fresh: bool = False,
    stream: TextIO = sys.stderr,
    poll_seconds: float = 0.2,
) -> LadderStatus:
    spec = ladder.spec
    # the status as last recorded (file, then each step)
    record = _recorded(ladder, status_path) if status_path.exists() and not fresh else None
    gpus = detect_gpus()
    gpu_groups_all = gpu_groups(gpus, spec.trainer.gpus, spec.trainer.nodes)
    slots_total = max(len(gpu_groups_all), 1)
    slots = min(parallel, slots_total) if parallel and gpus else (parallel or slots_total)
    workdir = workdir or status_path.with_name(status_path.name.removesuffix(".json") + ".cells")
    progress = Progress(stream)
    device = f"{len(gpus)} GPU(s)" if gpus else "CPU (no GPU found)"
    at_once = min(slots, spec.parallelism) if spec.parallelism else slots
    progress.event(
        f"ladder {ladder.name}: {len(spec.candidates)} candidates, {len(spec.stages)} stages on {device}, "
        f"{at_once} cell(s) at a time; status -> {status_path}"
    )
    if record is not None:
        done, decided = len(outcomes_from_status(record)), len(decisions_from_status(record))
        if done:
            progress.event(f"resuming: {done} finished cells and {decided} decisions from {status_path}")

    observed: dict[CellKey, CellOutcome] = {}  # ended since the last step
    running: dict[CellKey, CellProcess] = {}
    free_gpu_groups = list(gpu_groups_all)
    warned: set[tuple[str, str]] = set()  # (stage, condition type) already printed
    checkpoints = checkpoint_root(ladder, workdir)
    pruned: set[str] = set()  # stages whose eliminated candidates' checkpoints are deleted
    finished_since_write = False
    try:
        while True:
            s = step(
                spec, record, observed, frozenset(running), now=clock.iso(), capacity=slots, checkpoint_root=checkpoints
            )
            record, observed = _typed(s), {}
            for a in s.announcements:
                if a.reason == "StageDecided":  # the ladder's end is the closing line below
                    progress.event(a.message)
            for line in _new_stage_warnings(record, warned) + prune(ladder, record, pruned):
                progress.event(line)
            # Written after every pass that finished a cell or decided a stage, so a resumed run
            # re-runs nothing that finished.
            if finished_since_write or s.new_decisions or s.phase != "Running":
                write_status(status_path, ladder, record)
                finished_since_write = False
            if s.phase != "Running":
                break
            for cell in s.to_start:
                devices = free_gpu_groups.pop(0) if free_gpu_groups else None
                running[cell.key] = CellProcess.start(ladder, cell, workdir, devices, checkpoints)
            progress.line(_summary(record, len(running)))
            time.sleep(poll_seconds)
            observed = _reap(running, free_gpu_groups, progress)
            finished_since_write = finished_since_write or bool(observed)
    except KeyboardInterrupt:
        for proc in running.values():
            proc.kill()
        last = _typed(step(spec, record, observed, (), now=clock.iso(), checkpoint_root=checkpoints))
        write_status(status_path, ladder, last)
        progress.event(f"interrupted; finished cells are saved in {status_path}; run the same command to resume")
        raise
    status = record
    progress.event(
        f"ladder {ladder.name}: {status.phase}. {status.message}. "
        f"{status.gpu_hours.total if status.gpu_hours else 0:.4f} GPU-hours; status in {status_path}"
    )
    return status
