"""launch.py as data in, data out: when the trainer launches its ranks, the launcher's command
line, and which failed rank a failed cell is reported by. No torch needed."""

from __future__ import annotations

import json

import pytest

from ladder_trainer.config import ConfigError
from ladder_trainer.launch import (
    LaunchPlan,
    RankFailure,
    failure_result,
    is_peer_loss,
    launcher_args,
    plan_launch,
    rank0_published,
    write_rank_failure,
)

MULTI = {
    "LADDER_GPUS": "4",
    "LADDER_NODES": "2",
    "LADDER_RDZV_ENDPOINT": "cell-0.cell:29400",
    "LADDER_RDZV_ID": "cell",
    "JOB_COMPLETION_INDEX": "1",
}

PLANS = {
    "nothing set: one process, no launcher": ({}, "auto", None),
    "one gpu": ({"LADDER_GPUS": "1"}, "auto", None),
    "one gpu, launch always": ({"LADDER_GPUS": "1"}, "always", LaunchPlan(1)),
    "eight gpus": ({"LADDER_GPUS": "8"}, "auto", LaunchPlan(8)),
    "eight gpus, launch never": ({"LADDER_GPUS": "8"}, "never", None),
    "already a rank (torchrun by hand)": ({"LADDER_GPUS": "8", "WORLD_SIZE": "8", "RANK": "3"}, "auto", None),
    "already a rank, launch always": ({"LADDER_GPUS": "1", "LOCAL_RANK": "0"}, "always", None),
    "two nodes": (MULTI, "auto", LaunchPlan(4, 2, "cell-0.cell:29400", "cell", 1)),
    "two nodes, no index": (
        {**MULTI, "JOB_COMPLETION_INDEX": ""},
        "auto",
        LaunchPlan(4, 2, "cell-0.cell:29400", "cell", None),
    ),
}


@pytest.mark.parametrize("env,mode,want", PLANS.values(), ids=PLANS.keys())
def test_plan_launch(env, mode, want):
    assert plan_launch(env, mode) == want


BAD = {
    "zero gpus": ({"LADDER_GPUS": "0"}, "LADDER_GPUS='0': must be a positive integer"),
    "not a number": ({"LADDER_NODES": "two"}, "LADDER_NODES='two'"),
    "nodes without rendezvous": ({"LADDER_NODES": "2"}, "needs LADDER_RDZV_ENDPOINT"),
    "endpoint without port": ({**MULTI, "LADDER_RDZV_ENDPOINT": "cell-0"}, "must be host:port"),
    "bad index": ({**MULTI, "JOB_COMPLETION_INDEX": "x"}, "JOB_COMPLETION_INDEX='x'"),
}


@pytest.mark.parametrize("env,match", BAD.values(), ids=BAD.keys())
def test_bad_launch_variables_name_the_variable(env, match):
    with pytest.raises(ConfigError, match=match):
        plan_launch(env, "auto")


def test_launcher_args_one_node_is_standalone_and_never_restarts():
    args = launcher_args(LaunchPlan(4), ["--budget", "2m"])
    assert args[args.index("--nproc-per-node") + 1] == "4" and args[args.index("--max-restarts") + 1] == "0"
    assert "--standalone" in args and "--rdzv-backend" not in args
    assert args[-4:] == ["--module", "ladder_trainer", "--budget", "2m"]


@pytest.mark.parametrize("index,is_host", [(0, "true"), (1, "false"), (None, None)])
def test_launcher_args_multi_node_uses_c10d_and_node_0_hosts_the_store(index, is_host):
    args = launcher_args(LaunchPlan(8, 2, "cell-0.cell:29400", "ladder-x", index), [])
    assert "--standalone" not in args
    assert args[args.index("--rdzv-backend") + 1] == "c10d"
    assert args[args.index("--rdzv-endpoint") + 1] == "cell-0.cell:29400"
    assert args[args.index("--rdzv-id") + 1] == "ladder-x"
    assert args[args.index("--nnodes") + 1] == "2"
    conf = args[args.index("--rdzv-conf") + 1] if "--rdzv-conf" in args else None
    assert conf == (None if is_host is None else f"is_host={is_host}")


FAILURES = {  # name: (world size, failures, (status, exit code, message))
    "a crash, then its peer's broken collective": (
        2,
        [
            RankFailure(0, 1, "PeerLost: a collective failed", secondary=True, time=10.5),
            RankFailure(1, 1, "", time=10.0),
        ],
        (
            "error",
            1,
            "rank 1 of 2 exited with code 1: no message (it crashed before reporting; see its log); "
            "rank(s) 0 failed after it",
        ),
    ),
    "an error, reported even though the echo came first": (
        4,
        [
            RankFailure(0, 143, "terminated by SIGTERM", secondary=True, time=1.0),
            RankFailure(3, 1, "RuntimeError: boom", time=2.0),
        ],
        ("error", 1, "rank 3 of 4 exited with code 1: RuntimeError: boom; rank(s) 0 failed after it"),
    ),
    "out of memory keeps its exit code (not retried)": (
        4,
        [RankFailure(2, 4, "out of memory: CUDA out of memory", time=5.0)],
        ("oom", 4, "rank 2 of 4 exited with code 4: out of memory: CUDA out of memory"),
    ),
    "diverged keeps its exit code": (
        4,
        [
            RankFailure(1, 3, "training loss nan at step 4", time=5.0),
            RankFailure(0, 3, "training loss nan at step 4", time=5.0),
        ],
        ("diverged", 3, "rank 0 of 4 exited with code 3: training loss nan at step 4; rank(s) 1 failed after it"),
    ),
    "killed by a signal": (
        2,
        [RankFailure(1, -9, "", time=3.0)],
        ("error", 1, "rank 1 of 2 was killed by signal 9: no message (it crashed before reporting; see its log)"),
    ),
    "the earliest of two real failures": (
        2,
        [RankFailure(0, 1, "late", time=9.0), RankFailure(1, 1, "early", time=8.0)],
        ("error", 1, "rank 1 of 2 exited with code 1: early; rank(s) 0 failed after it"),
    ),
}


@pytest.mark.parametrize("world,failures,want", FAILURES.values(), ids=FAILURES.keys())
def test_failure_result_names_the_rank_that_failed_first(world, failures, want):
    assert failure_result(failures, world) == want


def test_rank_failure_file_is_torch_elastics_format(tmp_path):
    path = tmp_path / "error.json"
    write_rank_failure("oom", 4, "out of memory", False, env={"TORCHELASTIC_ERROR_FILE": str(path)})
    doc = json.loads(path.read_text())
    assert doc["message"] == "out of memory" and isinstance(doc["timestamp"], int)
    assert doc["ladderExitCode"] == 4 and doc["ladderSecondary"] is False and doc["ladderTime"] > 0
    write_rank_failure("error", 1, "x", False, env={})  # no launcher: nothing to write, no error


@pytest.mark.parametrize(
    "text,peer",
    [
        ("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:50311", True),
        ("Read error [127.0.0.1]:56535: Connection reset by peer", True),
        ("NCCL communicator was aborted on rank 3", True),
        ("injected error (fault error_at_step:2)", False),
        ("CUDA out of memory", False),
    ],
)
def test_is_peer_loss(text, peer):
    assert is_peer_loss(RuntimeError(text)) is peer


@pytest.mark.parametrize(
    "failures,kept",
    [
        ([RankFailure(1, 3, "nan", time=1.0), RankFailure(0, 3, "nan", time=1.0)], True),  # a verdict all ranks reached
        ([RankFailure(0, 4, "out of memory", time=1.0)], True),  # rank 0's own failure
        ([RankFailure(1, 1, "boom", time=1.0), RankFailure(0, 1, "PeerLost", secondary=True, time=2.0)], False),
        ([RankFailure(1, 4, "out of memory", time=1.0), RankFailure(0, 1, "late", time=2.0)], False),
        ([RankFailure(1, 1, "boom", time=1.0), RankFailure(0, 1, "another error", time=2.0)], False),
    ],
)
def test_rank0_result_is_kept_only_when_it_gives_the_first_failures_reason(failures, kept):
    assert rank0_published(failures) is kept
