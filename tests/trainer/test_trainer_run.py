"""Whole cells on CPU: results, budgets, divergence, out-of-memory, checkpoints, growth."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")

from ladder_trainer.config import Settings, parse_config  # noqa: E402
from ladder_trainer.train import run  # noqa: E402
from promotion_ladder.core.contract import EXIT_DIVERGED, EXIT_ERROR, EXIT_OOM  # noqa: E402
from promotion_ladder.core.result import parse_result  # noqa: E402

from .conftest import TINY, run_cli  # noqa: E402


def settings(corpus, **kw) -> Settings:
    return Settings(data=str(corpus), eval_tokens=512, log_interval=60, **kw)


def test_tiny_cell_writes_a_valid_result_with_identity(corpus, tmp_path):
    out = tmp_path / "result.json"
    env = {
        "LADDER_NAME": "demo",
        "LADDER_STAGE": "s1",
        "LADDER_CANDIDATE": "bridge",
        "LADDER_HOST_BLOCK": "cpu",
        "LADDER_SEED": "7",
    }
    t0 = time.monotonic()
    proc = run_cli(
        [
            "--config",
            json.dumps(TINY),
            "--seed",
            "7",
            "--budget",
            "2s",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--eval-tokens",
            "512",
        ],
        env=env,
    )
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    result = parse_result(out.read_text())
    assert result.identity() == ("demo", "s1", "bridge", "cpu", 7)
    assert result.status == "ok" and result.metric == "val_bpb"
    assert 0 < result.value < 12
    assert result.steps > 0 and result.tokens == result.steps * TINY["batch"]
    assert result.tokens_per_second > 0 and result.peak_memory_bytes > 0
    assert result.mfu is None and result.gpu_name is None  # no GPU, no MFU
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == json.loads(out.read_text())
    assert "val_bpb" in proc.stderr  # progress lines go to stderr
    assert wall < 60


@pytest.mark.parametrize("budget", [1.0, 2.5])
def test_budget_is_respected(corpus, budget):
    cfg = parse_config({**TINY, "depth": 2})
    out = run(cfg, seed=0, budget=budget, settings=settings(corpus))
    assert out.status == "ok"
    assert budget <= out.train_seconds < budget + 0.5  # one micro-batch at most past the budget


def test_same_seed_same_result(corpus):
    cfg = parse_config(TINY)
    a = run(cfg, 3, 60, settings(corpus, max_steps=5))
    b = run(cfg, 3, 60, settings(corpus, max_steps=5))
    c = run(cfg, 4, 60, settings(corpus, max_steps=5))
    assert a.value == b.value and a.value != c.value


def test_val_bpb_improves_with_training(corpus):
    cfg = parse_config({**TINY, "matrix_lr": 0.01})
    short = run(cfg, 0, 60, settings(corpus, max_steps=1))
    longer = run(cfg, 0, 60, settings(corpus, max_steps=60))
    assert longer.value < short.value - 0.5


def test_nan_loss_ends_as_diverged(corpus, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(
        ["--config", json.dumps(TINY), "--budget", "30s", "--result-file", str(out), "--data", str(corpus)],
        env={"LADDER_TRAINER_FAULT": "nan_at_step:3"},
    )
    assert proc.returncode == EXIT_DIVERGED, proc.stderr
    result = parse_result(out.read_text())
    assert result.status == "diverged" and result.value is None
    assert "step 3" in result.message and result.steps == 2
    assert result.train_seconds < 30


def test_exploding_learning_rate_ends_as_diverged(corpus):
    cfg = parse_config({**TINY, "matrix_lr": 1e4, "embedding_lr": 1e4, "unembedding_lr": 1e4, "grad_clip": 0})
    out = run(cfg, 0, 30, settings(corpus))
    assert out.status == "diverged", out
    assert out.train_seconds < 30


def test_out_of_memory_exits_4(corpus, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(
        [
            "--config",
            json.dumps(TINY),
            "--budget",
            "30s",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--fault",
            "oom_at_step:2",
        ]
    )
    assert proc.returncode == EXIT_OOM, proc.stderr
    result = parse_result(out.read_text())
    assert result.status == "oom" and "device_batch" in result.message


def test_unexpected_error_exits_1_with_the_reason(corpus, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(
        [
            "--config",
            json.dumps(TINY),
            "--budget",
            "30s",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--fault",
            "error_at_step:1",
        ]
    )
    assert proc.returncode == EXIT_ERROR
    assert "injected error" in parse_result(out.read_text()).message


def test_checkpoint_holds_model_and_config(corpus, tmp_path):
    import torch

    out = run(parse_config(TINY), 0, 60, settings(corpus, max_steps=2, checkpoint_dir=str(tmp_path / "ckpt")))
    saved = torch.load(tmp_path / "ckpt" / "model.pt")
    assert saved["config"]["depth"] == TINY["depth"] and "embed.weight" in saved["model"]
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["val_bpb"] == out.value


@pytest.mark.parametrize(
    "extra",
    [
        {"optimizer": "muon"},
        {"activation_checkpointing": True},
        {"tie_embeddings": True, "logit_softcap": 0},
        {"depth": 3, "grow_from_depth": 1, "grow_at_frac": 0.3},
        {"batch": 128, "device_batch": 1, "warmup_frac": 0.1},
    ],
    ids=["muon", "checkpointing", "tied", "growth", "grad-accum"],
)
def test_variants_train(corpus, extra):
    out = run(parse_config({**TINY, **extra}), 0, 1.5, settings(corpus))
    assert out.status == "ok", out
    assert out.steps > 1


@pytest.mark.parametrize("device", ["gpu", "cuda:0"] if not __import__("torch").cuda.is_available() else ["gpu"])
def test_unusable_device_is_a_bad_setting(corpus, device):
    from ladder_trainer.config import ConfigError

    with pytest.raises(ConfigError, match="--device"):
        run(parse_config(TINY), 0, 1, settings(corpus, device=device))


@pytest.mark.parametrize("choice", ["cudnn", "flash", "efficient", "math"])
def test_attention_setting_puts_its_backend_first(choice):
    import torch
    from torch.nn.attention import SDPBackend

    from ladder_trainer.hardware import attention_backend

    want = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[choice]
    before = torch._C._get_sdp_priority_order()
    with attention_backend(choice):
        order = torch._C._get_sdp_priority_order()
        assert order[0] == int(want)
        assert sorted(order) == sorted(before)  # a preference: every backend stays in the list
    assert torch._C._get_sdp_priority_order() == before


def test_attention_preference_falls_back_where_it_cannot_run(corpus):
    # cuDNN attention does not exist on a CPU; the cell still trains (a restriction would fail).
    cfg = parse_config(TINY)
    auto = run(cfg, 2, 60, settings(corpus, max_steps=3))
    cudnn = run(cfg, 2, 60, settings(corpus, max_steps=3, attention="cudnn"))
    assert cudnn.status == "ok" and cudnn.value == pytest.approx(auto.value, rel=1e-6)


def test_unknown_attention_backend_is_a_bad_setting(corpus):
    from ladder_trainer.config import ConfigError

    with pytest.raises(ConfigError, match="attention: 'xformers'"):
        run(parse_config(TINY), 0, 1, settings(corpus, attention="xformers"))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_untimed_warmup_steps_are_undone(corpus, optimizer):
    cfg = parse_config({**TINY, "optimizer": optimizer})
    plain = run(cfg, 5, 60, settings(corpus, max_steps=4, warmup_steps=0))
    warmed = run(cfg, 5, 60, settings(corpus, max_steps=4, warmup_steps=2))
    assert warmed.value == pytest.approx(plain.value, rel=1e-6)


def test_sigterm_still_reports(corpus, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from .conftest import ROOT

    out = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ladder_trainer",
            "--config",
            json.dumps(TINY),
            "--budget",
            "60s",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
    )
    for line in proc.stderr:
        if "training starts" in line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.stderr.read()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    result = parse_result(out.read_text())
    assert result.status == "error" and "SIGTERM" in result.message


def test_a_later_cell_can_start_from_a_checkpoint(corpus, tmp_path):
    from ladder_trainer.config import ConfigError

    ckpt = tmp_path / "ckpt"
    first = run(parse_config(TINY), 0, 60, settings(corpus, max_steps=30, checkpoint_dir=str(ckpt)))
    resumed = run(parse_config(TINY), 0, 60, settings(corpus, max_steps=1, init_from=str(ckpt)))
    scratch = run(parse_config(TINY), 0, 60, settings(corpus, max_steps=1))
    assert resumed.value < scratch.value and abs(resumed.value - first.value) < 0.5
    with pytest.raises(ConfigError, match="another shape"):
        run(parse_config({**TINY, "depth": 2}), 0, 60, settings(corpus, max_steps=1, init_from=str(ckpt)))


def test_many_passes_over_a_small_corpus_are_pointed_out(corpus, capsys):
    cfg = parse_config({**TINY, "batch": 4096, "device_batch": 128})
    out = run(cfg, 0, 600, settings(corpus, max_steps=100))
    err = capsys.readouterr().err
    passes = float(err.split(" passes over the training split")[0].rsplit("(", 1)[1])
    from ladder_trainer.data import prepare

    train_tokens = len(prepare(cfg.tokenizer, cfg.vocab_size, str(corpus), None, "text").train)
    assert passes == pytest.approx(out.tokens / train_tokens, abs=0.05) and passes > 4
    assert "Give larger budgets a larger corpus" in err


def test_hooks_a_test_installs_see_each_step_and_can_end_the_run(corpus):
    from ladder_trainer.hooks import Hooks

    class NanAtFour(Hooks):
        def __init__(self):
            self.steps = []

        def after_step(self, step, loss):
            self.steps.append(step)
            return loss * float("nan") if step == 4 else loss

    hooks = NanAtFour()
    out = run(parse_config(TINY), 0, 60, settings(corpus, max_steps=10), hooks=hooks)
    assert hooks.steps == [1, 2, 3, 4]
    assert out.status == "diverged" and "step 4" in out.message and out.steps == 3 and out.value is None


def test_an_in_process_run_builds_the_whole_result(corpus):
    out = run(
        parse_config(TINY),
        0,
        60,
        settings(corpus, max_steps=3, warmup_steps=1),
        identity={"candidate": "c1", "seed": 0},
    )
    assert out.candidate == "c1" and out.seed == 0 and out.status == "ok"
    assert out.compile_seconds is not None and out.setup_seconds >= out.compile_seconds
    assert out.peak_memory_bytes > 0 and out.data_passes > 0 and out.corpus and out.world_size == 1


def test_negative_eval_tokens_are_a_bad_setting():
    from ladder_trainer.config import ConfigError

    with pytest.raises(ConfigError, match="eval tokens must be positive"):
        Settings(eval_tokens=-1)
