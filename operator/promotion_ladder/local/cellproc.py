"""One cell as a local process, by the cell contract shared with the operator and trainer:

    trainer.command + trainer.args + --config <json> --seed <n> --budget <b> --result-file <path>
    env: LADDER_NAME, LADDER_STAGE, LADDER_CANDIDATE, LADDER_HOST_BLOCK, LADDER_SEED (+ trainer.env)

Exit 0 with a valid result document = succeeded; anything else = failed, with the reason kept.
A leading "python"/"python3" in trainer.command runs as this interpreter, so the trainer comes
from the same environment as `ladder` itself. The process runs in the folder `ladder run` was
started from (relative paths in the command work as typed); its result file and log live in
the cell's own folder under the work dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.api import PromotionLadder
from ..core.budget import cell_deadline_seconds
from ..core.planner import Cell
from ..core.result import ResultError, parse_result
from ..core.rules import Outcome
from .caches import compile_cache_env


def cell_command(ladder: PromotionLadder, cell: Cell, result_file: str) -> list[str]:
    spec = ladder.spec
    command = list(spec.trainer.command)
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    config = json.dumps(spec.candidate(cell.candidate).config, sort_keys=True, separators=(",", ":"))
    budget = next(s.budget for s in spec.stages if s.name == cell.stage)
    return command + list(spec.trainer.args) + [
        "--config", config, "--seed", str(cell.seed), "--budget", budget, "--result-file", result_file,
    ]


def cell_env(ladder: PromotionLadder, cell: Cell) -> dict[str, str]:
    return {
        **ladder.spec.trainer.env,
        "LADDER_NAME": ladder.name,
        "LADDER_STAGE": cell.stage,
        "LADDER_CANDIDATE": cell.candidate,
        "LADDER_HOST_BLOCK": cell.host_block,
        "LADDER_SEED": str(cell.seed),
    }


def outcome_from_result(ladder: PromotionLadder, cell: Cell, exit_code: int, result_text: str | None) -> Outcome:
    """Judge a finished cell from its exit code and result document."""
    result = None
    problem = ""
    if result_text is None:
        problem = "no result file"
    else:
        try:
            result = parse_result(result_text)
        except ResultError as exc:
            problem = str(exc)
    seconds = result.train_seconds if result else None
    if result is not None:
        expected = (ladder.name, cell.stage, cell.candidate, cell.host_block, cell.seed)
        got = result.identity()
        if any(g is not None and g != e for g, e in zip(got, expected)):
            return Outcome("failed", train_seconds=seconds, reason=f"result identity {got} does not match the cell {expected}")
        if result.metric != ladder.spec.objective.metric:
            return Outcome("failed", train_seconds=seconds,
                           reason=f"result reports metric {result.metric!r}, the ladder's objective is {ladder.spec.objective.metric!r}")
    if exit_code != 0:
        detail = f"{result.status}: {result.message}" if result else problem
        return Outcome("failed", train_seconds=seconds, reason=f"exit code {exit_code}" + (f" ({detail})" if detail else ""))
    if result is None:
        return Outcome("failed", reason=f"exit code 0 but {problem}")
    if result.status != "ok":
        return Outcome("failed", train_seconds=seconds, reason=f"{result.status}: {result.message}".rstrip(": "))
    return Outcome("succeeded", value=result.value, train_seconds=seconds)


@dataclass
class CellProcess:
    ladder: PromotionLadder
    cell: Cell
    proc: subprocess.Popen
    result_file: Path
    log_file: Path
    deadline: float
    devices: list[str] | None
    started: float = 0.0  # time.monotonic() at spawn: the start of the cell's occupancy

    @classmethod
    def start(cls, ladder: PromotionLadder, cell: Cell, workdir: Path, devices: list[str] | None) -> "CellProcess":
        d = workdir / cell.stage / f"{cell.candidate}.{cell.host_block}.{cell.seed}"
        d.mkdir(parents=True, exist_ok=True)
        result_file = d / "result.json"
        result_file.unlink(missing_ok=True)  # a stale result from an interrupted run must not count
        log_file = d / "log.txt"
        env = {**os.environ, **cell_env(ladder, cell)}
        for key, value in compile_cache_env(workdir).items():
            env.setdefault(key, value)  # the user's own setting wins
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        budget = next(s.budget_seconds for s in ladder.spec.stages if s.name == cell.stage)
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(
                cell_command(ladder, cell, str(result_file.resolve())), env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        started = time.monotonic()
        return cls(ladder, cell, proc, result_file, log_file, started + cell_deadline_seconds(budget), devices, started)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def poll(self) -> Outcome | None:
        """The outcome once the process has ended. Its occupancy is the process's wall time, from
        spawn to the poll that saw it end (so up to one poll interval late)."""
        code = self.proc.poll()
        if code is None:
            if time.monotonic() < self.deadline:
                return None
            self.kill()
            return Outcome("failed", reason=f"deadline exceeded (budget + grace); log: {self.log_file}",
                           occupied_seconds=round(time.monotonic() - self.started, 3))
        occupied = round(time.monotonic() - self.started, 3)
        try:
            text = self.result_file.read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            text = None
        outcome = replace(outcome_from_result(self.ladder, self.cell, code, text), occupied_seconds=occupied)
        if not outcome.ok and "log:" not in outcome.reason:
            outcome = replace(outcome, reason=f"{outcome.reason}; log: {self.log_file}")
        return outcome
