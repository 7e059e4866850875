"""`ladder run`: the embedded default. Runs a whole ladder on this machine, no Kubernetes.

Each cell is a local process launched by the cell contract (see cellproc.py), one per free GPU
(one at a time on a machine without GPUs, unless --parallel says otherwise). The status file
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

from ..core.api import PromotionLadder
from ..core.planner import Cell
from ..core.rules import Decision, Outcome
from ..core.status import LadderStatus, build_status, decisions_from_status, outcomes_from_status
from ..files import FileError, read_status
from ..render import occupancy_table
from .cellproc import CellProcess


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
    doc = {"apiVersion": ladder.api_version, "kind": ladder.kind,
           "metadata": ladder.metadata.model_dump(exclude_none=True),
           "spec": ladder.spec.wire(), "status": status.wire()}
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
    return (f"stage {st.name} ({st.budget}): {done + failed}/{len(st.cells)} cells done, {running} running, "
            f"{failed} failed | leader {status.leader or '-'} | {gh:.3f} GPU-h ({occ:.3f} occupied)")


def _decision_text(d: Decision) -> str:
    if d.rule.top is None:
        return f"stage {d.stage}: final ranking: " + ", ".join(
            f"{e.candidate} {e.aggregate:.4f}" if e.complete else f"{e.candidate} (failed cells)" for e in d.ranking)
    cut = [e.candidate for e in d.ranking if not e.promoted_by]
    text = f"stage {d.stage} decided ({d.rule.aggregate}"
    text += f", top {d.rule.top}" if d.rule.top is not None else ""
    text += f"): promoted {', '.join(d.promoted) or 'nobody'}"
    return text + (f"; cut {', '.join(cut)}" if cut and d.rule.top is not None else "")


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
    outcomes: dict[tuple[str, str, str, int], Outcome] = {}
    recorded: list[Decision] = []
    if status_path.exists() and not fresh:
        prev = read_status(status_path)
        if prev.frozen_hash and prev.frozen_hash != spec.frozen_hash():
            raise FileError(
                f"{status_path}: written for a ladder whose frozen fields differ (frozen hash {prev.frozen_hash}, "
                f"this file's spec has {spec.frozen_hash()}); the rules are frozen once a ladder starts. "
                "Use --fresh to start over, or --output for a new status file."
            )
        outcomes, recorded = outcomes_from_status(prev), decisions_from_status(prev)
    gpus = detect_gpus()
    per_cell = max(spec.trainer.gpus, 1)
    slots_total = max(len(gpus) // per_cell, 1) if gpus else 1
    slots = min(parallel, slots_total) if parallel and gpus else (parallel or slots_total)
    if spec.parallelism:
        slots = min(slots, spec.parallelism)
    workdir = workdir or status_path.with_name(status_path.name.removesuffix(".json") + ".cells")
    progress = Progress(stream)
    device = f"{len(gpus)} GPU(s)" if gpus else "CPU (no GPU found)"
    progress.event(f"ladder {ladder.name}: {len(spec.candidates)} candidates, {len(spec.stages)} stages on {device}, "
                   f"{slots} cell(s) at a time; status -> {status_path}")
    if outcomes:
        progress.event(f"resuming: {len(outcomes)} finished cells and {len(recorded)} decisions from {status_path}")

    running: dict[tuple, CellProcess] = {}
    free_gpu_groups = [gpus[i * per_cell:(i + 1) * per_cell] for i in range(slots_total)] if gpus else []
    announced = len(recorded)
    finished_since_write = False
    try:
        while True:
            status, p = build_status(spec, outcomes, recorded, running=frozenset(running))
            for d in p.decisions[announced:]:
                progress.event(_decision_text(d))
            announced = len(p.decisions)
            recorded = list(p.decisions)
            # Written after every pass that finished a cell or decided a stage, so a resumed run
            # re-runs nothing that finished.
            if finished_since_write or p.new_decisions or p.phase != "Running":
                write_status(status_path, ladder, status)
                finished_since_write = False
            if p.phase != "Running":
                break
            for cell in p.to_run:
                if len(running) >= slots:
                    break
                if cell.key in running:
                    continue
                devices = free_gpu_groups.pop(0) if free_gpu_groups else None
                running[cell.key] = CellProcess.start(ladder, cell, workdir, devices)
            progress.line(_summary(status, len(running)))
            time.sleep(poll_seconds)
            for key, proc in list(running.items()):
                outcome = proc.poll()
                if outcome is None:
                    continue
                del running[key]
                if proc.devices:
                    free_gpu_groups.append(proc.devices)
                outcomes[key] = outcome
                c: Cell = proc.cell
                what = f"{outcome.value:.4f}" if outcome.ok else f"FAILED ({outcome.reason})"
                progress.event(f"  {c.stage}/{c.candidate}/{c.host_block}/{c.seed}: {what}")
                finished_since_write = True
    except KeyboardInterrupt:
        for proc in running.values():
            proc.kill()
        status, _ = build_status(spec, outcomes, recorded)
        write_status(status_path, ladder, status)
        progress.event(f"interrupted; finished cells are saved in {status_path}; run the same command to resume")
        raise
    progress.event(f"ladder {ladder.name}: {status.phase}. {status.message}. "
                   f"{status.gpu_hours.total if status.gpu_hours else 0:.4f} GPU-hours; status in {status_path}")
    if status.gpu_hours is not None:
        for line in occupancy_table(status.gpu_hours):
            progress.event(line)
    return status
