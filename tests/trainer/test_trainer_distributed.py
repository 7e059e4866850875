"""Multi-process cells on CPU: 2 gloo processes against 1 process, the agreed budget stop, one
published result, and a failed rank failing the cell.

Each multi-process case starts real processes through torch.distributed.run (about 15-25 s on
a busy 2-core machine, most of it importing torch three times), so there are few of them; the
launcher's decisions and the failure reports are tested as data in test_trainer_launch.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from ladder_trainer.data import ByteTokenizer  # noqa: E402
from ladder_trainer.train import evaluate  # noqa: E402
from ladder_trainer.world import World  # noqa: E402
from promotion_ladder.core.contract import EXIT_OOM  # noqa: E402
from promotion_ladder.core.result import parse_result  # noqa: E402

from .conftest import ROOT, TINY, run_cli  # noqa: E402
from .test_trainer_eval import tiny_model  # noqa: E402

# 4 micro-batches of one sequence per step: one process accumulates 4, each of 2 processes 2.
# No warmdown: the lr schedule follows wall-clock time, which differs between the runs.
SPLIT = {**TINY, "batch": 4 * TINY["seq_len"], "device_batch": 1, "warmdown_frac": 0.0}
CPU = torch.device("cpu")
# fp32 on CPU: the ranks' gradients are averaged in another order than one process sums them,
# so step losses agree to float32 rounding, compounded over a few steps.
LOSS_RTOL = 1e-5


def cell_args(tmp_path, name: str, corpus, *extra: str, config: dict = SPLIT) -> list[str]:
    return [
        "--config",
        json.dumps(config),
        "--seed",
        "3",
        "--budget",
        "60s",
        "--data",
        str(corpus),
        "--eval-tokens",
        "512",
        "--result-file",
        str(tmp_path / f"{name}.json"),
        "--step-log",
        str(tmp_path / f"{name}.steps.jsonl"),
        *extra,
    ]


def steps(tmp_path, name: str) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / f"{name}.steps.jsonl").read_text().splitlines()]


def stopped_at(stderr: str) -> dict[int, int]:
    """rank -> the step it stopped after, from each rank's last log line."""
    return {int(r): int(s) for r, s in re.findall(r"rank (\d+)/\d+: stopped after (\d+) steps", stderr)}


def results_printed(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"apiVersion"')]


# ---- evaluation shards (in one process; the data's round-robin is in test_sampler.py) ----------


def test_sharded_evaluation_adds_up_to_the_whole():
    model = tiny_model(257, seq_len=8).eval()
    rng = np.random.default_rng(2)
    val = rng.integers(0, 257, size=200).astype(np.uint16)
    token_bytes = ByteTokenizer().token_bytes()
    args = dict(n_tokens=107, seq_len=8, rows=3, device=CPU, autocast=contextlib.nullcontext())
    whole = evaluate(model, val, token_bytes, **args)
    # Without a process group a World's sums are the identity: each shard reports its own part.
    parts = [evaluate(model, val, token_bytes, world=World(rank=r, size=3), **args) for r in range(3)]
    assert sum(p["bytes"] for p in parts) == whole["bytes"]
    assert sum(p["nats"] for p in parts) == pytest.approx(whole["nats"], rel=1e-12)
    assert all(p["bytes"] > 0 for p in parts)


# ---- real processes --------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer,parallel", [("adamw", "ddp"), ("muon", "ddp"), ("muon", "fsdp")])
def test_two_gloo_processes_under_torchrun_match_one_process_step_by_step(corpus, tmp_path, optimizer, parallel):
    # Muon orthogonalises DDP's averaged gradients on every rank; under FSDP2 it gathers each
    # sharded matrix first. FSDP2 also evaluates in lockstep and gathers the checkpoint.
    config = {**SPLIT, "optimizer": optimizer}
    one = run_cli(
        cell_args(tmp_path, "one", corpus, "--max-steps", "6", "--checkpoint-dir", str(tmp_path / "ck1"), config=config)
    )
    assert one.returncode == 0, one.stderr
    # Started by hand, as a user would: the trainer joins the world torchrun made.
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "0",
            "-m",
            "ladder_trainer",
            *cell_args(
                tmp_path,
                "two",
                corpus,
                "--max-steps",
                "6",
                "--parallel",
                parallel,
                "--checkpoint-dir",
                str(tmp_path / "ck2"),
                config=config,
            ),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert two.returncode == 0, two.stderr[-3000:]

    a, b = steps(tmp_path, "one"), steps(tmp_path, "two")
    assert [s["step"] for s in a] == [s["step"] for s in b] == [1, 2, 3, 4, 5, 6]
    for sa, sb in zip(a, b, strict=True):
        assert sb["loss"] == pytest.approx(sa["loss"], rel=LOSS_RTOL), (sa, sb)
        assert sb["tokens"] == sa["tokens"]  # the same global batch
    assert a[-1]["loss"] < a[0]["loss"]  # it trained, so the comparison says something

    r1, r2 = parse_result((tmp_path / "one.json").read_text()), parse_result((tmp_path / "two.json").read_text())
    assert (r1.world_size, r2.world_size) == (1, 2)
    assert r2.status == "ok" and r2.steps == r1.steps == 6 and r2.tokens == r1.tokens
    assert r2.value == pytest.approx(r1.value, rel=LOSS_RTOL)  # evaluated in two shards, summed
    assert r2.tokens_per_second > 0
    assert len(results_printed(two.stdout)) == 1  # rank 1 publishes nothing
    assert stopped_at(two.stderr) == {0: 6, 1: 6}
    assert f"x 2 processes ({'FSDP2' if parallel == 'fsdp' else 'DDP'})" in two.stderr
    w1, w2 = (torch.load(tmp_path / d / "model.pt", weights_only=True)["model"] for d in ("ck1", "ck2"))
    assert w1.keys() == w2.keys() and all(type(w2[k]) is torch.Tensor for k in w2)  # whole tensors, not shards
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4


def test_the_budget_stops_both_ranks_at_the_same_step(corpus, tmp_path):
    # Rank 1's clock runs 0.7 s ahead: stopping on its own clock it would leave rank 0 waiting
    # in the next step's gradient all-reduce. The agreed clock (the max over ranks) stops both.
    proc = run_cli(
        [
            "--config",
            json.dumps(SPLIT),
            "--budget",
            "2s",
            "--data",
            str(corpus),
            "--eval-tokens",
            "512",
            "--result-file",
            str(tmp_path / "r.json"),
            "--fault",
            "clock_skew:0.7@1",
        ],
        env={"LADDER_GPUS": "2"},
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stops = stopped_at(proc.stderr)
    assert set(stops) == {0, 1} and stops[0] == stops[1] > 0
    result = parse_result((tmp_path / "r.json").read_text())
    assert result.status == "ok" and result.world_size == 2 and result.steps == stops[0]
    assert 2.0 <= result.train_seconds < 3.0  # the agreed clock: the budget, plus one micro-batch at most
    assert len(results_printed(proc.stdout)) == 1


FAILED_RANK = {
    # rank 1 dies at step 3 without a word (a crash): the cell fails naming it, not rank 0's broken collective
    "crash": ("exit_at_step:3@1", 1, "error", r"rank 1 of 2 exited with code 1: no message"),
    # rank 1 runs out of memory: exit 4 (not retried) and its reason carry over to the cell
    "out of memory": ("oom_at_step:2@1", EXIT_OOM, "oom", r"rank 1 of 2 exited with code 4: out of memory"),
}


@pytest.mark.parametrize("fault,code,status,message", FAILED_RANK.values(), ids=FAILED_RANK.keys())
def test_a_failed_rank_fails_the_cell_with_its_reason(corpus, tmp_path, fault, code, status, message):
    proc = run_cli(cell_args(tmp_path, "r", corpus, "--fault", fault), env={"LADDER_GPUS": "2"}, timeout=180)
    assert proc.returncode == code, proc.stderr[-3000:]
    result = parse_result((tmp_path / "r.json").read_text())
    assert result.status == status and re.search(message, result.message), result.message
    assert result.world_size == 2
    assert re.search(message, proc.stderr)
    assert results_printed(proc.stdout)[-1]["message"] == result.message  # the last line is the cell's result


def test_ladder_run_trains_a_two_gpu_cell_as_two_gloo_processes_on_a_cpu(corpus, tmp_path, monkeypatch):
    """`ladder run` on a machine without GPUs: trainer.gpus 2 becomes LADDER_GPUS=2, the real
    trainer launches 2 gloo processes, and the one result the cell reports says so."""
    import io

    from promotion_ladder.core.api import load_ladder
    from promotion_ladder.local.runner import run_ladder

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    doc = {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": "ddp"},
        "spec": {
            "trainer": {
                "command": ["python", "-m", "ladder_trainer"],
                "gpus": 2,
                "args": ["--data", str(corpus), "--eval-tokens", "512", "--max-steps", "3"],
            },
            "hostBlocks": [{"name": "cpu"}],
            "candidates": [{"name": "tiny", "config": SPLIT}],
            "stages": [{"name": "only", "budget": "30s", "hostBlocks": ["cpu"], "seeds": [1]}],
        },
    }
    status = run_ladder(load_ladder(doc), tmp_path / "s.json", stream=io.StringIO(), poll_seconds=0.1)
    cell_dir = tmp_path / "s.cells" / "only" / "tiny.cpu.1"
    assert status.phase == "Succeeded", (cell_dir / "log.txt").read_text()[-3000:]
    result = parse_result((cell_dir / "result.json").read_text())
    assert result.world_size == 2 and result.steps == 3 and result.identity() == ("ddp", "only", "tiny", "cpu", 1)
    assert "launching 2 process(es)" in (cell_dir / "log.txt").read_text()


def test_two_nodes_meet_through_c10d_and_publish_one_result(corpus, tmp_path):
    """Two 'nodes' (agents) on this machine, as the pods of a 2-node Indexed Job would start:
    LADDER_NODES=2, the rendezvous at node 0 (which hosts the store), one process each. What
    this cannot show: c10d ranks nodes by host name, so on one machine which agent gets global
    rank 0 is up to process ids; on a cluster it is the index-0 pod (docs/trainer.md)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for index in (0, 1):
        env = {
            **os.environ,
            "LADDER_NODES": "2",
            "LADDER_GPUS": "1",
            "JOB_COMPLETION_INDEX": str(index),
            "LADDER_RDZV_ENDPOINT": f"127.0.0.1:{port}",
            "LADDER_RDZV_ID": "two-nodes",
        }
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ladder_trainer",
                    *cell_args(tmp_path, f"node{index}", corpus, "--max-steps", "3"),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    written = [
        parse_result((tmp_path / f"node{i}.json").read_text()) for i in (0, 1) if (tmp_path / f"node{i}.json").exists()
    ]
    assert len(written) == 1 and written[0].world_size == 2 and written[0].steps == 3
    assert sum(len(results_printed(out)) for out, _ in outs) == 1
    assert "this is node 0" in outs[0][1] and "this is node 1" in outs[1][1]
