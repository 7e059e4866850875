"""Multi-process cells from the outside: whether `python -m ladder_trainer` starts its own
processes, how it asks PyTorch's launcher for them, and how a failed rank becomes the cell's
failure.

The operator (and `ladder run`) put the cell's shape in its environment:

    LADDER_GPUS            processes per node, one per GPU (at least 1; trainer.gpus)
    LADDER_NODES           nodes (pods) of the cell (default 1)
    LADDER_RDZV_ENDPOINT   host:port of the c10d rendezvous (nodes > 1: the index-0 pod's stable name)
    LADDER_RDZV_ID         a name unique to the cell (nodes > 1; e.g. the Job's name)
    JOB_COMPLETION_INDEX   this pod's node index (set by Kubernetes on Indexed Jobs)

With more than one process in all, and not already under a launcher (no WORLD_SIZE or
LOCAL_RANK in the environment: someone ran `torchrun -m ladder_trainer` by hand), this process
becomes torch.distributed.run's agent and starts the ranks as `python -m ladder_trainer` with
the same arguments. It never trains itself. The launcher is PyTorch's own (standalone
rendezvous on one node, c10d across nodes, no restarts: the Job's retry policy decides about
retries), so this module only builds its arguments and reads its failures.

Publishing: rank 0 publishes the cell's result as a single-process cell does. When any rank
fails, the agent exits non-zero and, unless rank 0's own result already gives the first
failure's reason, publishes instead (overwriting what rank 0 may have written) a result that
names the rank whose failure came first. A rank that fails writes its
reason into torch elastic's per-rank error file (TORCHELASTIC_ERROR_FILE), which is how the
agent learns it; ranks that only failed because a peer went away (a collective broke, or the
agent stopped them with SIGTERM) mark it, so the first real failure is reported, not its echo.

Torch-free at import: the parent decides and reports without importing torch twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from promotion_ladder.core.contract import (
    ENV_GPUS,
    ENV_NODES,
    ENV_RDZV_ENDPOINT,
    ENV_RDZV_ID,
    EXIT_BAD_CONFIG,
    EXIT_DIVERGED,
    EXIT_ERROR,
    EXIT_OOM,
    RDZV_PORT,
)
from promotion_ladder.core.result import Status

from .config import ConfigError

LAUNCH_MODES = ("auto", "always", "never")
# Exit codes a rank may end with that are verdicts on the candidate (the cell contract's
# non-retryable codes): the cell ends with the same code, so the operator does not retry them.
_VERDICTS: dict[int, Status] = {EXIT_BAD_CONFIG: "error", EXIT_DIVERGED: "diverged", EXIT_OOM: "oom"}
# Text of errors a rank sees when a peer, not the rank itself, went away (gloo and NCCL wording).
_PEER_LOST = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "remote worker",
    "nccl communicator was aborted",
    "ncclremoteerror",
    "ncclsystemerror",
    "socket timeout",
)


@dataclass(frozen=True)
class LaunchPlan:
    nproc: int  # processes per node
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    node_rank: int | None = None

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def under_launcher(env: Mapping[str, str]) -> bool:
    return "WORLD_SIZE" in env or "LOCAL_RANK" in env


def rank_from_env(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        return int(env.get("RANK", "0"))
    except ValueError:
        return 0


def _count(env: Mapping[str, str], var: str) -> int:
    raw = env.get(var, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{var}={raw!r}: must be a positive integer")
    return int(raw)


def plan_launch(env: Mapping[str, str], mode: str = "auto") -> LaunchPlan | None:
    """The launch this process should do, or None to train here (one process, or a rank)."""
    if mode not in LAUNCH_MODES:
        raise ConfigError(f"launch: {mode!r}; use {', '.join(LAUNCH_MODES)}")
    if under_launcher(env) or mode == "never":
        return None
    nproc, nnodes = _count(env, ENV_GPUS), _count(env, ENV_NODES)
    if nproc * nnodes == 1 and mode != "always":
        return None
    if nnodes == 1:
        return LaunchPlan(nproc)
    endpoint, rdzv_id = env.get(ENV_RDZV_ENDPOINT, ""), env.get(ENV_RDZV_ID, "")
    if not endpoint or not rdzv_id:
        raise ConfigError(
            f"LADDER_NODES={nnodes} needs LADDER_RDZV_ENDPOINT (host:port) and LADDER_RDZV_ID "
            "(the operator sets both for multi-node cells)"
        )
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"LADDER_RDZV_ENDPOINT={endpoint!r}: must be host:port, e.g. cell-0.cell:{RDZV_PORT}")
    index = env.get("JOB_COMPLETION_INDEX", "")
    if index and not index.isdigit():
        raise ConfigError(f"JOB_COMPLETION_INDEX={index!r}: must be a non-negative integer")
    return LaunchPlan(nproc, nnodes, endpoint, rdzv_id, int(index) if index else None)


def launcher_args(plan: LaunchPlan, argv: list[str]) -> list[str]:
    """torch.distributed.run's command line for the plan: each rank runs `-m ladder_trainer ARGV`."""
    args = [
        "--nproc-per-node",
        str(plan.nproc),
        "--nnodes",
        str(plan.nnodes),
        "--max-restarts",
        "0",
        "--monitor-interval",
        "0.5",
    ]
    if plan.nnodes == 1:
        args.append("--standalone")  # c10d on localhost with a free port: cells on one machine do not collide
    else:
        # plan_launch() sets both whenever nnodes > 1.
        assert plan.rdzv_endpoint is not None and plan.rdzv_id is not None
        args += ["--rdzv-backend", "c10d", "--rdzv-endpoint", plan.rdzv_endpoint, "--rdzv-id", plan.rdzv_id]
        if plan.node_rank is not None:
            # The index-0 pod hosts the rendezvous store. Said outright rather than left to
            # torch's guess from host names, which a Service name does not match.
            args += ["--rdzv-conf", f"is_host={'true' if plan.node_rank == 0 else 'false'}"]
    return args + ["--module", "ladder_trainer", *argv]


# ---- failures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankFailure:
    rank: int
    exitcode: int  # negative: killed by that signal
    message: str = ""
    secondary: bool = False  # failed because a peer went away, not by itself
    time: float = 0.0


def is_peer_loss(exc: BaseException) -> bool:
    """An error that says another rank went away (a broken collective), not what broke it."""
    if type(exc).__name__ in ("DistBackendError", "DistNetworkError", "PeerLost"):
        return True
    text = str(exc).lower()
    return any(p in text for p in _PEER_LOST)


def write_rank_failure(
    status: str, code: int, message: str, secondary: bool, env: Mapping[str, str] | None = None
) -> None:
    """Tell the launcher's agent why this rank failed (torch elastic's error-file format)."""
    env = os.environ if env is None else env
    path = env.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    doc = {
        "message": message or status,
        "timestamp": int(time.time()),
        "ladderExitCode": code,
        "ladderSecondary": secondary,
        "ladderTime": time.time(),
    }
    try:
        with open(path, "w") as fh:
            json.dump(doc, fh)
    except OSError:
        pass  # the agent then reports the exit code alone


def root_failure(failures: list[RankFailure]) -> RankFailure:
    """The failure to report: a rank that failed by itself before one that lost a peer, then the
    earliest, then the lowest rank."""
    return min(failures, key=lambda f: (f.secondary, f.time, f.rank))


def failure_result(failures: list[RankFailure], world_size: int) -> tuple[Status, int, str]:
    """(status, exit code, message) of a cell whose ranks failed."""
    root = root_failure(failures)
    code = root.exitcode if root.exitcode in _VERDICTS else EXIT_ERROR
    if root.exitcode < 0:
        how = f"was killed by signal {-root.exitcode}"
    else:
        how = f"exited with code {root.exitcode}"
    reason = root.message or "no message (it crashed before reporting; see its log)"
    others = sorted(f.rank for f in failures if f.rank != root.rank)
    tail = f"; rank(s) {', '.join(map(str, others))} failed after it" if others else ""
    return _VERDICTS.get(code, "error"), code, f"rank {root.rank} of {world_size} {how}: {reason}{tail}"


def rank0_published(failures: list[RankFailure]) -> bool:
    """Whether rank 0's own result already says why the cell failed, so the agent keeps it (with
    its steps, seconds and memory) instead of overwriting it: rank 0 failed by itself, with the
    first failure's exit code (a divergence every rank saw, or rank 0's own error)."""
    root = root_failure(failures)
    return any(
        f.rank == 0 and not f.secondary and f.exitcode == root.exitcode and f.message == root.message for f in failures
    )


def _from_torch(rank: int, failure) -> RankFailure:
    data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
    own = "ladderExitCode" in data  # our error file; otherwise torch's generic text says nothing useful
    message = failure.message if own and isinstance(failure.message, str) else ""
    return RankFailure(
        rank,
        int(failure.exitcode),
        message,
        bool(data.get("ladderSecondary", False)),
        float(data.get("ladderTime", failure.timestamp)),
    )


# ---- the launch ---------------------------------------------------------------------------------


@dataclass
class LaunchOutcome:
    failures: list[RankFailure]
    signal: int | None = None  # the agent itself was told to stop (SIGTERM: Pod deleted)
    error: str = ""  # the launcher could not run the ranks at all (e.g. a rendezvous timeout)


def launch(plan: LaunchPlan, argv: list[str]) -> LaunchOutcome:
    """Run the ranks through torch.distributed.run and wait for them."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(launcher_args(plan, argv))
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        return LaunchOutcome([_from_torch(rank, f) for rank, f in exc.failures.items()])
    except SignalException as exc:
        return LaunchOutcome([], signal=int(exc.sigval))
    except Exception as exc:  # noqa: BLE001 - the launcher's own failure becomes the cell's reason
        return LaunchOutcome([], error=f"{type(exc).__name__}: {exc}"[:1000])
    finally:
        sys.stdout.flush()
    return LaunchOutcome([])
