"""What a test may install into the training loop: `Hooks`, and the --fault test aid built on
them (failures a test injects into a cell, `KIND:ARG[@RANK]`).

The loop (train.py) knows nothing of faults: it passes each step's loss through its hooks
before judging it, and reads this rank's clock skew from them. `hooks_for(fault, rank)` gives
the hooks that fail the way a test asked, or the plain ones, which change nothing.
"""

from __future__ import annotations

import os
import sys

import torch

from .config import ConfigError
from .publish import log


class Hooks:
    """The loop's extension points; this base changes nothing."""

    clock_skew = 0.0  # seconds this rank's training clock runs ahead

    def after_step(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """Step `step`'s summed loss before it is judged: returned as it is, changed, or raise."""
        return loss


FAULTS = ("nan_at_step", "oom_at_step", "error_at_step", "exit_at_step", "clock_skew")


def parse_fault(fault: str | None, rank: int = 0) -> tuple[str | None, float]:
    """The test aid `KIND:ARG[@RANK]` as (kind, arg) for this rank, or (None, -1).

    nan_at_step:N (the step's loss becomes NaN), oom_at_step:N / error_at_step:N (raise),
    exit_at_step:N (the process exits 1 at once, without a result: a crash), clock_skew:S (this
    rank's clock runs S seconds ahead). @RANK limits it to that rank; without it, every rank.
    """
    if not fault:
        return None, -1
    spec, _, only = fault.partition("@")
    kind, _, arg = spec.partition(":")
    value: float | None
    try:
        value = float(arg) if kind == "clock_skew" else int(arg)
    except ValueError:
        value = None
    if kind not in FAULTS or value is None or (only and not only.isdigit()):
        raise ConfigError(f"fault {fault!r}: use KIND:N[@RANK] with KIND one of {', '.join(FAULTS)}")
    if only and int(only) != rank:
        return None, -1
    return kind, value


class Fault(Hooks):
    """One injected failure: at step `at` (or, for clock_skew, a clock `skew` seconds ahead)."""

    def __init__(self, kind: str, arg: float):
        self.kind = kind
        self.at = int(arg) if kind != "clock_skew" else -1
        self.clock_skew = arg if kind == "clock_skew" else 0.0

    def after_step(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        if step != self.at:
            return loss
        if self.kind == "nan_at_step":
            return loss * float("nan")
        if self.kind == "exit_at_step":
            log(f"exiting with code 1 at once (fault exit_at_step:{step})")
            sys.stderr.flush()
            os._exit(1)
        if self.kind == "oom_at_step":
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by fault oom_at_step:{step})")
        raise RuntimeError(f"injected error (fault error_at_step:{step})")


def hooks_for(fault: str | None, rank: int) -> Hooks:
    """The hooks for `--fault` on this rank: a Fault, or the plain hooks."""
    kind, arg = parse_fault(fault, rank)
    return Fault(kind, arg) if kind else Hooks()
