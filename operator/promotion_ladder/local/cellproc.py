"""One cell as a local process, by the cell contract (core/contract.py: argv, env, judge).

A leading "python"/"python3" in trainer.command runs as this interpreter, so the trainer comes
from the same environment as `ladder` itself. The process runs in the folder `ladder run` was
started from (relative paths in the command work as typed); its result file and log live in
the cell's own folder under the work dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.api import PromotionLadder
from ..core.budget import cell_deadline_seconds
from ..core.cell import Cell, CellOutcome
from ..core.contract import CONFIG_FILE, cell_args, cell_config, cell_env, judge, process_env
from .caches import compile_cache_env


def cell_command(
    ladder: PromotionLadder, cell: Cell, config_file: str, result_file: str, checkpoints: str | None = None
) -> list[str]:
    command = list(ladder.spec.trainer.command)
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    return command + cell_args(ladder.spec, cell, config_file, result_file, checkpoints)


def outcome_from_result(ladder: PromotionLadder, cell: Cell, exit_code: int, result_text: str | None) -> CellOutcome:
    """Judge a finished cell from its exit code and result file (core.contract.judge)."""
    budget = next(s.budget_seconds for s in ladder.spec.stages if s.name == cell.stage)
    return judge(result_text, exit_code, cell, ladder.name, ladder.spec.objective.metric, budget_seconds=budget)


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
    def start(
        cls,
        ladder: PromotionLadder,
        cell: Cell,
        workdir: Path,
        devices: list[str] | None,
        checkpoints: str | None = None,
    ) -> CellProcess:
        """Spawn the cell's process; `checkpoints`: the ladder's checkpoint folder when it continues."""
        d = workdir / cell.stage / f"{cell.candidate}.{cell.host_block}.{cell.seed}"
        d.mkdir(parents=True, exist_ok=True)
        result_file = d / "result.json"
        result_file.unlink(missing_ok=True)  # a stale result from an interrupted run must not count
        config_file = d / CONFIG_FILE
        config_file.write_text(cell_config(ladder.spec, cell), encoding="utf-8")
        log_file = d / "log.txt"
        env = {**os.environ, **ladder.spec.trainer.env, **cell_env(ladder.name, cell, ladder.spec)}
        for key, value in compile_cache_env(workdir).items():
            env.setdefault(key, value)  # the user's own setting wins
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        env.update(process_env(ladder.spec.trainer.gpus))  # N GPUs, or N gloo processes on a CPU
        budget = next(s.budget_seconds for s in ladder.spec.stages if s.name == cell.stage)
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(
                cell_command(ladder, cell, str(config_file.resolve()), str(result_file.resolve()), checkpoints),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        started = time.monotonic()
        return cls(ladder, cell, proc, result_file, log_file, started + cell_deadline_seconds(budget), devices, started)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group has already exited
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def poll(self) -> CellOutcome | None:
        """The outcome once the process has ended. Its occupancy is the process's wall time, from
        spawn to the poll that saw it end (so up to one poll interval late)."""
        code = self.proc.poll()
        if code is None:
            if time.monotonic() < self.deadline:
                return None
            self.kill()
            return CellOutcome(
                "failed",
                reason=f"deadline exceeded (budget + grace); log: {self.log_file}",
                occupied_seconds=round(time.monotonic() - self.started, 3),
            )
        occupied = round(time.monotonic() - self.started, 3)
        try:
            text = self.result_file.read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            text = None
        outcome = outcome_from_result(self.ladder, self.cell, code, text).model_copy(
            update={"occupied_seconds": occupied}
        )
        if not outcome.ok and "log:" not in outcome.reason:
            outcome = outcome.model_copy(update={"reason": f"{outcome.reason}; log: {self.log_file}"})
        # Recorded with what it ran with: a later edit of the ladder file does not rewrite it.
        return outcome.model_copy(update={"gpus": self.ladder.spec.trainer.gpus, "node": socket.gethostname()})
