"""The cell contract: how a cell is run and how its end is judged, shared by every adapter.

    argv: trainer.command + trainer.args + --config-file <path> --seed <n> --budget <b> --result-file <path>
          (the config file holds the candidate's config, one JSON object: a file, not an argument,
          so no config can hit the kernel's argument-length limit)
    env:  LADDER_NAME, LADDER_STAGE, LADDER_CANDIDATE, LADDER_HOST_BLOCK, LADDER_SEED (+ trainer.env);
          LADDER_GPUS, LADDER_NODES (+ LADDER_RDZV_ENDPOINT, LADDER_RDZV_ID for several nodes, and
          JOB_COMPLETION_INDEX from Kubernetes; only node 0 publishes)
    in:   on Kubernetes the config file is the Pod annotation CONFIG_ANNOTATION, projected by the
          downward API; `ladder run` writes it into the cell's folder
    out:  one CellResult document (core/result.py) in the result file; on Kubernetes also in
          the Pod annotation RESULT_ANNOTATION and the container's termination message
    exit: 0 ok, 1 error, 2 bad config, 3 diverged, 4 out of memory, 5 checkpoint refused
    continuation (spec.continuation; core/continuation.py): argv + --stable-checkpoint <dir>
          [--resume-from <dir> --on-mismatch fail|fromScratch] [--checkpoint-dir <dir>/final],
          env + LADDER_FROZEN_HASH [LADDER_PREVIOUS_STAGE]; the adapters give the ladder's
          checkpoint folder (`ladder run`: under its work dir; the operator: spec.continuation.path)

`ladder run` (local/cellproc.py), the operator (controller/jobs.py, controller/intake.py) and
the trainer (trainer/ladder_trainer) all take the names from here, and a finished cell is judged
by `judge` everywhere, so a given (exit code, result) pair ends the same way under either
adapter. The adapters only gather the evidence (a process's exit code and file; a Pod's phase,
annotation or termination message, and its Job's conditions).

Pure: no Kubernetes, no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import suppress

from .api import LadderSpec
from .cell import Cell, CellOutcome
from .continuation import cell_checkpoints, previous_cell
from .result import CellResult, ResultError, check_range, parse_result

# -- argv and env ----------------------------------------------------------------------------
CONFIG_FILE_FLAG = "--config-file"
CONFIG_FILE = "config.json"
SEED_FLAG = "--seed"
BUDGET_FLAG = "--budget"
RESULT_FILE_FLAG = "--result-file"

ENV_LADDER = "LADDER_NAME"
ENV_STAGE = "LADDER_STAGE"
ENV_CANDIDATE = "LADDER_CANDIDATE"
ENV_HOST_BLOCK = "LADDER_HOST_BLOCK"
ENV_SEED = "LADDER_SEED"
IDENTITY_ENV = (ENV_LADDER, ENV_STAGE, ENV_CANDIDATE, ENV_HOST_BLOCK, ENV_SEED)

# A cell's processes: the trainer starts ENV_GPUS per node on ENV_NODES nodes through
# torch.distributed.run (trainer/ladder_trainer/launch.py); the global rank 0 publishes.
ENV_GPUS = "LADDER_GPUS"  # processes per node, one per GPU: trainer.gpus, at least 1
ENV_NODES = "LADDER_NODES"  # nodes (pods) of the cell, default 1
ENV_RDZV_ENDPOINT = "LADDER_RDZV_ENDPOINT"  # nodes > 1: host:port of the c10d rendezvous (node index 0)
ENV_RDZV_ID = "LADDER_RDZV_ID"  # nodes > 1: a name unique to the cell
RDZV_PORT = 29400
ENV_NODE_RANK = "JOB_COMPLETION_INDEX"  # nodes > 1: this pod's node index (Kubernetes sets it on an Indexed Job)
LAYOUT_ENV = (ENV_GPUS, ENV_NODES, ENV_RDZV_ENDPOINT, ENV_RDZV_ID)

# Continuation: where a cell saves its stable-phase checkpoint and which one it continues, what
# the checkpoints must carry (the ladder's frozen hash, the previous stage) and what a mismatch does.
STABLE_CHECKPOINT_FLAG = "--stable-checkpoint"
RESUME_FROM_FLAG = "--resume-from"
ON_MISMATCH_FLAG = "--on-mismatch"
FINAL_WEIGHTS_FLAG = "--checkpoint-dir"  # the last stage's cells: the decayed weights too
ENV_FROZEN_HASH = "LADDER_FROZEN_HASH"
ENV_PREVIOUS_STAGE = "LADDER_PREVIOUS_STAGE"
CONTINUATION_ENV = (ENV_FROZEN_HASH, ENV_PREVIOUS_STAGE)

# -- where results go on Kubernetes -----------------------------------------------------------
RESULT_ANNOTATION = "ladder.promotion.dev/result"
CONFIG_ANNOTATION = "ladder.promotion.dev/config"  # written by the operator; a trainer may not change it
PROGRESS_ANNOTATION = "ladder.promotion.dev/progress"

# -- exit codes of a cell program (the trainer) ---------------------------------------------
# The operator's podFailurePolicy fails a Job at once on the "not worth retrying" codes and
# retries anything else a bounded number of times.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_CONFIG = 2
EXIT_DIVERGED = 3
EXIT_OOM = 4
EXIT_CHECKPOINT = 5  # the predecessor's checkpoint is missing or not this cell's (onMismatch: fail)
NON_RETRYABLE_EXIT_CODES = (EXIT_BAD_CONFIG, EXIT_DIVERGED, EXIT_OOM, EXIT_CHECKPOINT)
EXIT_REASONS = {
    EXIT_BAD_CONFIG: "bad config",
    EXIT_DIVERGED: "diverged",
    EXIT_OOM: "out of memory",
    EXIT_CHECKPOINT: "checkpoint refused",
}

REASON_LIMIT = 200  # a cell's reason is kept in the status: bounded


def cell_config(spec: LadderSpec, cell: Cell) -> str:
    """The text of the cell's config file: its candidate's config as compact JSON."""
    return json.dumps(spec.candidate(cell.candidate).config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cell_args(
    spec: LadderSpec, cell: Cell, config_file: str, result_file: str, checkpoints: str | None = None
) -> list[str]:
    """What follows trainer.command: trainer.args, then the cell's flags. `checkpoints`: the
    ladder's checkpoint folder (core.continuation.ladder_root), for a ladder that continues."""
    budget = next(s.budget for s in spec.stages if s.name == cell.stage)
    args = [
        *spec.trainer.args,
        CONFIG_FILE_FLAG,
        config_file,
        SEED_FLAG,
        str(cell.seed),
        BUDGET_FLAG,
        budget,
        RESULT_FILE_FLAG,
        result_file,
    ]
    plan = cell_checkpoints(spec, cell, checkpoints) if checkpoints is not None else None
    if plan is not None and spec.continuation is not None:
        args += [STABLE_CHECKPOINT_FLAG, plan.write]
        if plan.read is not None:
            args += [RESUME_FROM_FLAG, plan.read, ON_MISMATCH_FLAG, spec.continuation.on_mismatch]
        if plan.final is not None:
            args += [FINAL_WEIGHTS_FLAG, plan.final]
    return args


def cell_env(ladder: str, cell: Cell, spec: LadderSpec | None = None) -> dict[str, str]:
    """The cell's identity variables (the adapters add trainer.env beneath them); with the
    spec of a ladder that continues, also what its checkpoints must carry."""
    env = {
        ENV_LADDER: ladder,
        ENV_STAGE: cell.stage,
        ENV_CANDIDATE: cell.candidate,
        ENV_HOST_BLOCK: cell.host_block,
        ENV_SEED: str(cell.seed),
    }
    if spec is not None and spec.continuation is not None:
        env[ENV_FROZEN_HASH] = spec.frozen_hash()
        prev = previous_cell(spec, cell)
        if prev is not None:
            env[ENV_PREVIOUS_STAGE] = prev.stage
    return env


def process_env(gpus: int, nodes: int = 1) -> dict[str, str]:
    """How many processes the cell's trainer starts: per node (at least 1) and nodes."""
    return {ENV_GPUS: str(max(gpus, 1)), ENV_NODES: str(max(nodes, 1))}


def identity_from_env(env: Mapping[str, str]) -> dict[str, str | int]:
    """The trainer's side: the identity fields of its result (camelCase), from whatever of the
    LADDER_* variables are set (a trainer run by hand has none)."""
    out: dict[str, str | int] = {}
    for key, var in (
        ("ladder", ENV_LADDER),
        ("stage", ENV_STAGE),
        ("candidate", ENV_CANDIDATE),
        ("hostBlock", ENV_HOST_BLOCK),
    ):
        if env.get(var):
            out[key] = env[var]
    if env.get(ENV_SEED):
        with suppress(ValueError):  # a seed that is not a number is left out
            out["seed"] = int(env[ENV_SEED])
    return out


# -- judging a finished cell ------------------------------------------------------------------
def check_result(
    text: str, ladder: str, cell: Cell, metric: str, strict: bool = False, budget_seconds: float | None = None
) -> CellResult:
    """Parse a result and check it belongs to this cell and reports the ladder's objective, and,
    given the stage's budget, that its numbers are in range (core.result.check_range).

    Raises ResultError with reason "malformed", "invalid", "range", "identity" or "metric".
    `strict`: every identity field must be present (a Pod annotation, which anyone with patch
    rights on the Pod could have written); otherwise only the fields present must match (a
    result file or termination message, which the trainer may shorten).
    """
    result = parse_result(text)
    if budget_seconds is not None:
        check_range(result, budget_seconds)
    want = {
        "ladder": ladder,
        "stage": cell.stage,
        "candidate": cell.candidate,
        "hostBlock": cell.host_block,
        "seed": cell.seed,
    }
    got = dict(zip(("ladder", "stage", "candidate", "hostBlock", "seed"), result.identity(), strict=True))
    wrong = [k for k, v in want.items() if (got[k] is not None or strict) and got[k] != v]
    if wrong:
        raise ResultError(
            "identity",
            "result identity does not match the cell: "
            + ", ".join(f"{k}={got[k]!r} (expected {want[k]!r})" for k in wrong),
        )
    if result.metric != metric:
        raise ResultError(
            "metric", f"result reports metric {result.metric!r}, the ladder's objective metric is {metric!r}"
        )
    return result


def judge(
    result_text: str | None,
    exit_code: int,
    cell: Cell,
    ladder: str,
    metric: str,
    strict: bool = False,
    budget_seconds: float | None = None,
) -> CellOutcome:
    """The outcome of a cell whose program has ended, from its exit code and result document.

    Succeeded only with exit 0 and a valid result of this cell, with status ok, on the ladder's
    objective metric. Anything else failed, with a reason that says which rule it broke; a
    result that is unreadable, belongs to another cell or reports another metric fails the cell
    whatever the exit code (the document is evidence of a broken contract), and so does a result
    out of range for the stage's budget (`budget_seconds`, when given).
    """
    if result_text is None:
        if exit_code == EXIT_OK:
            return CellOutcome("failed", reason="exit code 0 but no result")
        return CellOutcome("failed", reason=f"exit code {exit_code} ({EXIT_REASONS.get(exit_code, 'no result')})")
    try:
        result = check_result(result_text, ladder, cell, metric, strict=strict, budget_seconds=budget_seconds)
    except ResultError as exc:
        prefix = f"exit code {exit_code}: " if exit_code != EXIT_OK else ""
        return CellOutcome("failed", reason=f"{prefix}{exc}"[:REASON_LIMIT])
    measured = result.measured()
    detail = f"{result.status}: {result.message}" if result.message else result.status
    if exit_code != EXIT_OK:
        return CellOutcome("failed", reason=f"exit code {exit_code} ({detail})"[:REASON_LIMIT], **measured)
    if result.status != "ok":
        return CellOutcome("failed", reason=detail[:REASON_LIMIT], **measured)
    return CellOutcome("succeeded", value=result.value, **measured)
