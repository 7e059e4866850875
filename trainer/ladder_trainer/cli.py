"""`python -m ladder_trainer`: the cell contract's entry point.

    python -m ladder_trainer --config '{"depth": 8}' --seed 1 --budget 2m --result-file out.json
    python -m ladder_trainer --config-file config.json --seed 1 --budget 2m   # how a ladder runs it

Candidate config is the JSON object (a ladder's cells get it as a file, the cell contract's
--config-file, so its size never meets the kernel's argument-length limit); everything else a
ladder keeps the same for all its cells is a flag or a LADDER_TRAINER_* variable (flags win). Whatever happens, a result
document is written and the exit code follows promotion_ladder.core.contract: 0 ok, 1 error,
2 bad config, 3 diverged, 4 out of memory.

With LADDER_GPUS / LADDER_NODES asking for more than one process, this process launches the
ranks (launch.py) and publishes only if one of them fails; otherwise rank 0 publishes. Ranks
other than 0 never publish: a failing one tells the launcher why through its error file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from promotion_ladder.core.budget import parse_budget
from promotion_ladder.core.continuation import ON_MISMATCH
from promotion_ladder.core.contract import (
    EXIT_BAD_CONFIG,
    EXIT_CHECKPOINT,
    EXIT_DIVERGED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_OOM,
)
from promotion_ladder.core.result import CellResult, Status

from . import launch
from .config import ConfigError, Settings, TrainConfig, parse_config
from .publish import PodAnnotator, ProgressReporter, identity_from_env, log, publish

# flag -> (env variable, type, default); the same table documents the settings in docs/trainer.md.
SETTINGS = {
    "device": ("LADDER_TRAINER_DEVICE", str, "auto"),
    "threads": ("LADDER_TRAINER_THREADS", int, 1),
    "data": ("LADDER_TRAINER_DATA", str, None),
    "tokenizer_file": ("LADDER_TRAINER_TOKENIZER_FILE", str, None),
    "text_field": ("LADDER_TRAINER_TEXT_FIELD", str, "text"),
    "eval_tokens": ("LADDER_TRAINER_EVAL_TOKENS", int, 0),
    "compile": ("LADDER_TRAINER_COMPILE", str, "auto"),
    "dtype": ("LADDER_TRAINER_DTYPE", str, "auto"),
    "attention": ("LADDER_TRAINER_ATTENTION", str, "auto"),
    "warmup_steps": ("LADDER_TRAINER_WARMUP_STEPS", int, -1),
    "progress_interval": ("LADDER_TRAINER_PROGRESS_INTERVAL", float, 30.0),
    "log_interval": ("LADDER_TRAINER_LOG_INTERVAL", float, 10.0),
    "checkpoint_dir": ("LADDER_TRAINER_CHECKPOINT_DIR", str, None),
    "init_from": ("LADDER_TRAINER_INIT_FROM", str, None),
    "max_steps": ("LADDER_TRAINER_MAX_STEPS", int, 0),
    "stable_steps": ("LADDER_TRAINER_STABLE_STEPS", int, 0),
    "fault": ("LADDER_TRAINER_FAULT", str, None),
    "step_log": ("LADDER_TRAINER_STEP_LOG", str, None),
    "launch": ("LADDER_TRAINER_LAUNCH", str, "auto"),
    "parallel": ("LADDER_TRAINER_PARALLEL", str, "ddp"),
}
CHOICES = {
    "parallel": ("ddp", "fsdp"),
    "launch": launch.LAUNCH_MODES,
    "compile": ("auto", "on", "off"),
    "dtype": ("auto", "bf16", "fp32"),
    "attention": ("auto", "cudnn", "flash", "efficient", "math"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ladder_trainer", description="Train one ladder cell and report val_bpb."
    )
    given = p.add_mutually_exclusive_group()
    given.add_argument("--config", default=None, help="candidate config, a JSON object (see docs/trainer.md)")
    given.add_argument(
        "--config-file", default=None, help="a file holding the candidate config (the cell contract's way)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: LADDER_SEED or 0)")
    p.add_argument("--budget", required=True, help="wall-clock training budget, e.g. 90s, 2m, 12h")
    p.add_argument("--result-file", default=None, help="where to write the CellResult JSON")
    c = p.add_argument_group("continuation (a ladder's spec.continuation; docs/continuation.md)")
    c.add_argument(
        "--stable-checkpoint",
        default=None,
        metavar="DIR",
        help="save the stable-phase checkpoint here when the flat phase ends",
    )
    c.add_argument(
        "--resume-from",
        default=None,
        metavar="DIR",
        help="continue from this stable checkpoint (the previous stage's cell of the same candidate, "
        "host block and seed)",
    )
    c.add_argument(
        "--on-mismatch",
        default="fail",
        choices=ON_MISMATCH,
        help="a missing or foreign checkpoint: fail (exit 5) or train from scratch (default fail)",
    )
    for name, (env, typ, default) in SETTINGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=typ,
            default=None,
            choices=CHOICES.get(name),
            help=f"(env {env}, default {default})",
        )
    return p


def resolve_settings(args: argparse.Namespace, env=None):
    env = os.environ if env is None else env
    values: dict[str, Any] = {}  # one field of Settings each, of SETTINGS' type for it
    for name, (var, typ, default) in SETTINGS.items():
        value = getattr(args, name)
        if value is None and env.get(var):
            try:
                value = typ(env[var])
            except ValueError:
                raise ConfigError(f"{var}={env[var]!r} is not a valid {typ.__name__}") from None
            if name in CHOICES and value not in CHOICES[name]:
                raise ConfigError(f"{var} must be one of {', '.join(CHOICES[name])}, got {value!r}")
        values[name] = default if value is None else value
    return Settings(**values)


class Terminated(BaseException):
    """SIGTERM arrived (Pod deleted, Job stopped, node preempted): report it, then exit 143."""


def _on_sigterm(signum, frame):
    raise Terminated()


EXIT_TERMINATED = 128 + signal.SIGTERM


def read_config(args: argparse.Namespace) -> str:
    """The candidate config's JSON text, from --config or the file --config-file names."""
    if args.config_file is None:
        return args.config or "{}"
    try:
        with open(args.config_file, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config-file {args.config_file}: cannot read it: {exc}") from None


# A failure's message: room for the exception and its traceback's tail, within the
# termination message's 4096 bytes (publish.TERMINATION_LIMIT) beside the rest of the result.
FAILURE_MESSAGE_LIMIT = 2000
EXIT_CODES = {"ok": EXIT_OK, "diverged": EXIT_DIVERGED, "oom": EXIT_OOM}  # any other status: EXIT_ERROR


@dataclass
class Outcome:
    """Where this process's result goes, and the exit code that goes with it: rank 0 publishes
    (result file, termination message, Pod annotation); the others only explain a failure."""

    identity: dict[str, Any]
    result_file: str | None
    rank: int
    annotator: PodAnnotator | None

    def finish(self, result: CellResult, code: int, secondary: bool = False) -> int:
        if code:  # under a launcher: tell its agent why this rank failed (a no-op otherwise)
            launch.write_rank_failure(result.status, code, result.message, secondary)
        if self.rank != 0:
            if code:
                log(f"rank {self.rank}: {result.status}: {result.message}")
            return code
        try:
            publish(result, self.result_file, self.annotator)
        except OSError as exc:
            log(f"could not write the result file {self.result_file}: {exc}")
            code = code or EXIT_ERROR
        print(result.to_json(), flush=True)
        if result.message:
            log(f"{result.status}: {result.message}")
        return code

    def failed(
        self, status: Status, code: int, message: str, secondary: bool = False, world_size: int | None = None
    ) -> int:
        """A cell that ended without a result of its own (bad config, a crash, a signal)."""
        return self.finish(
            CellResult(**self.identity, status=status, message=message, world_size=world_size), code, secondary
        )


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """`started`: the perf_counter() reading set-up is measured from; `python -m ladder_trainer`
    passes the process's start, a caller in a longer-lived process gets the time of this call."""
    started = time.perf_counter() if started is None else started
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    rank = launch.rank_from_env()
    identity = identity_from_env()
    seed = args.seed if args.seed is not None else identity.get("seed", 0)
    identity.setdefault("seed", seed)
    out = Outcome(identity, args.result_file, rank, PodAnnotator.from_env() if rank == 0 else None)
    try:
        text = read_config(args)
        cfg = parse_config(text)
        budget = parse_budget(args.budget)
        settings = resolve_settings(args)
        plan = launch.plan_launch(os.environ, settings.launch)
    except (ConfigError, ValueError) as exc:
        return out.failed("error", EXIT_BAD_CONFIG, f"bad config: {exc}")
    if plan is not None:
        return _launch(plan, argv, out)
    checkpoints = Checkpoints(
        args.stable_checkpoint, args.resume_from, args.on_mismatch, json.loads(text) if text.strip() else {}
    )
    return _train(cfg, seed, budget, settings, out, started, checkpoints)


@dataclass(frozen=True)
class Checkpoints:
    """The continuation flags of the cell contract, and the candidate config as given (its hash
    is what a stable checkpoint carries)."""

    write: str | None
    read: str | None
    on_mismatch: str
    config: dict[str, Any]


def _train(
    cfg: TrainConfig,
    seed: int,
    budget: float,
    settings: Settings,
    out: Outcome,
    started: float,
    checkpoints: Checkpoints | None = None,
) -> int:
    """Train the cell in this process; whatever happens, a result and its exit code."""
    try:
        from . import train
        from .hardware import is_oom
        from .stable import CheckpointRefused, Continuation
    except ImportError as exc:
        return out.failed(
            "error",
            EXIT_ERROR,
            f"the trainer needs torch, numpy and tokenizers (pip install 'promotion-ladder[trainer]'): {exc}",
        )
    c = checkpoints or Checkpoints(None, None, "fail", {})
    continuation = Continuation.of(c.write, c.read, c.on_mismatch, c.config, out.identity, os.environ)

    progress = ProgressReporter(out.annotator, settings.progress_interval)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = train.run(
            cfg, seed, budget, settings, progress, identity=out.identity, started=started, continuation=continuation
        )
    except Terminated:
        # Not a verdict on the candidate: a retry (another Pod) may well finish the cell. Under a
        # launcher it is how the agent stops the other ranks after one failed: an echo, not a cause.
        return out.failed(
            "error",
            EXIT_TERMINATED,
            "terminated by SIGTERM before the cell finished (pod deleted or preempted)",
            secondary=True,
        )
    except ConfigError as exc:
        return out.failed("error", EXIT_BAD_CONFIG, f"bad config: {exc}")
    except CheckpointRefused as exc:  # never trains on the wrong weights: the ladder records why
        return out.failed("error", EXIT_CHECKPOINT, str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure must still produce a result
        if is_oom(exc):
            return out.failed(
                "oom",
                EXIT_OOM,
                f"out of memory: {str(exc).splitlines()[0][:500]}; "
                "lower device_batch or enable activation_checkpointing",
            )
        if launch.is_peer_loss(exc):  # another rank's failure; its own report says why
            return out.failed(
                "error", EXIT_ERROR, f"{type(exc).__name__}: {exc}"[:FAILURE_MESSAGE_LIMIT], secondary=True
            )
        traceback.print_exc()
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        return out.failed("error", EXIT_ERROR, f"{type(exc).__name__}: {exc}\n{tail}"[:FAILURE_MESSAGE_LIMIT])
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()
    return out.finish(result, EXIT_CODES.get(result.status, EXIT_ERROR))


def _launch(plan: launch.LaunchPlan, argv: list[str], out: Outcome) -> int:
    """Be the launcher's agent for this cell's ranks; publish only when they did not succeed."""
    where = ""
    if plan.nnodes > 1:
        where = f" x {plan.nnodes} nodes" + (f" (this is node {plan.node_rank})" if plan.node_rank is not None else "")
    log(f"launching {plan.nproc} process(es){where} through torch.distributed.run")
    try:
        launched = launch.launch(plan, argv)
    except ImportError as exc:
        return out.failed(
            "error", EXIT_ERROR, f"the trainer needs torch (pip install 'promotion-ladder[trainer]'): {exc}"
        )
    if launched.signal is not None:
        return out.failed(
            "error",
            128 + launched.signal,
            f"terminated by signal {launched.signal} before the cell finished (pod deleted or preempted)",
        )
    if launched.error:
        return out.failed("error", EXIT_ERROR, f"the launcher failed before the ranks finished: {launched.error}")
    if launched.failures:
        status, code, message = launch.failure_result(launched.failures, plan.world_size)
        if launch.rank0_published(launched.failures):
            log(f"{status}: {message} (rank 0's result says why)")
            return code
        return out.failed(status, code, message, world_size=plan.world_size)
    return EXIT_OK  # rank 0 has published the result


if __name__ == "__main__":
    sys.exit(main())
