"""The CUDA path: bf16 autocast, torch.compile, fused AdamW, attention kernels, real OOM, MFU.

Skipped without a CUDA GPU, so CI (which has none) skips them; scripts/gpu-check.sh runs them
on one. They use no fixture from conftest.py, so they also run with `--noconftest` on a
machine without the Kubernetes client. Each compares the GPU path with a reference that is
checked elsewhere on CPU (fp32 eager, PlainAdamW, the math attention kernel), so a wrong
result on the GPU fails here rather than in a ladder's ranking.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.torch,
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU: scripts/gpu-check.sh runs these on one"
    ),
]

from ladder_trainer.config import Settings, parse_config  # noqa: E402
from ladder_trainer.hardware import attention_backend, peak_flops  # noqa: E402
from ladder_trainer.model import GPT  # noqa: E402
from ladder_trainer.optim import PlainAdamW, build_optimizers  # noqa: E402
from ladder_trainer.train import run  # noqa: E402
from promotion_ladder.core.contract import EXIT_OOM  # noqa: E402
from promotion_ladder.core.result import parse_result  # noqa: E402

from ..corpus import write_tiny_corpus  # noqa: E402
from .conftest import run_cli  # noqa: E402  (a plain function; no fixtures are taken from conftest)

SMALL = {
    "depth": 2,
    "aspect_ratio": 64,
    "head_dim": 64,
    "seq_len": 256,
    "tokenizer": "byte",
    "batch": 16 * 256,
    "device_batch": 8,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LADDER_CACHE", str(tmp_path_factory.getbasetemp() / "ladder-cache"))


def settings(corpus, **kw) -> Settings:
    """The tests' settings; keywords given win over these defaults (eval_tokens among them)."""
    return Settings(**{"data": str(corpus), "eval_tokens": 4096, "log_interval": 60, **kw})


def test_cuda_cell_reports_gpu_mfu_and_memory(corpus, tmp_path):
    out = tmp_path / "result.json"
    proc = run_cli(
        [
            "--config",
            json.dumps(SMALL),
            "--budget",
            "5s",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--eval-tokens",
            "4096",
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "device cuda bf16 compile on" in proc.stderr  # the CUDA defaults
    result = parse_result(out.read_text())
    assert result.status == "ok" and 0 < result.value < 12
    assert 5 <= result.train_seconds < 5.5, "the budget is checked once per micro-batch"
    assert result.gpu_name == torch.cuda.get_device_name()
    assert result.peak_memory_bytes > 0 and result.tokens_per_second > 0
    if peak_flops(result.gpu_name):
        assert 0 < result.mfu < 1
    else:
        assert result.mfu is None


def test_cuda_matches_cpu_in_fp32_and_bf16_compiled_stays_close(corpus):
    cfg = parse_config(SMALL)
    cpu = run(cfg, 1, 600, settings(corpus, device="cpu", max_steps=4, threads=0))
    cuda_fp32 = run(cfg, 1, 600, settings(corpus, device="cuda", dtype="fp32", compile="off", max_steps=4))
    # compile on brings the two untimed warm-up steps, which must leave no trace
    cuda_bf16 = run(cfg, 1, 600, settings(corpus, device="cuda", dtype="bf16", compile="on", max_steps=4))
    assert cuda_fp32.value == pytest.approx(cpu.value, rel=1e-2)  # TF32 matmuls; 2 leaked warm-up steps move it >5%
    assert cuda_bf16.value == pytest.approx(cpu.value, rel=3e-2)


def test_fused_adamw_matches_plain_adamw():
    cfg = parse_config({**SMALL, "weight_decay": 0.1})
    torch.manual_seed(0)
    model = GPT(cfg, vocab_size=257).cuda()
    (fused,) = build_optimizers(model, cfg, "cuda")
    assert fused.defaults["fused"] is True
    clone = {p: p.detach().clone() for p in model.parameters()}
    plain = PlainAdamW(
        [
            {"params": [clone[p] for p in g["params"]], "lr": g["lr"], "weight_decay": g["weight_decay"]}
            for g in fused.param_groups
        ],
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=1e-10,
    )
    for _ in range(4):
        for p, q in clone.items():
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        plain.step()
    for p, q in clone.items():
        torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("choice", ["cudnn", "flash", "efficient"])
def test_attention_kernels_agree_with_math(choice):
    cfg = parse_config({**SMALL, "head_dim": 128, "aspect_ratio": 128})
    torch.manual_seed(0)
    model = GPT(cfg, vocab_size=257).cuda()
    with torch.no_grad():  # output projections start at zero, which would leave qkv without a gradient
        for block in model.blocks:
            block.attn.proj.weight.normal_(0, 0.02)
            block.mlp.down.weight.normal_(0, 0.02)
    x = torch.randint(0, 257, (4, 256), device="cuda")
    y = torch.randint(0, 257, (4, 256), device="cuda")

    def loss_and_grad(backend):
        model.zero_grad(set_to_none=True)
        with attention_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        return loss.item(), model.blocks[0].attn.qkv.weight.grad.float().clone()  # through the kernel's backward

    ref_loss, ref_grad = loss_and_grad("math")
    loss, grad = loss_and_grad(choice)
    assert loss == pytest.approx(ref_loss, rel=1e-2)
    assert torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.99


def test_activation_checkpointing_cuts_peak_memory(corpus):
    shape = {
        "depth": 4,
        "aspect_ratio": 64,
        "head_dim": 64,
        "seq_len": 1024,
        "tokenizer": "byte",
        "batch": 8 * 1024,
        "device_batch": 8,
    }
    common = dict(device="cuda", compile="off", max_steps=2, eval_tokens=512)
    plain = run(parse_config(shape), 0, 600, settings(corpus, **common))
    ckpt = run(parse_config({**shape, "activation_checkpointing": True}), 0, 600, settings(corpus, **common))
    assert plain.status == ckpt.status == "ok"
    assert ckpt.peak_memory_bytes < 0.6 * plain.peak_memory_bytes


def test_muon_and_depth_growth_run_compiled(corpus):
    cfg = parse_config({**SMALL, "depth": 3, "optimizer": "muon", "grow_from_depth": 1, "grow_at_frac": 0.3})
    out = run(cfg, 0, 8, settings(corpus, device="cuda"))
    assert out.status == "ok", out
    assert out.steps > 2 and 0 < out.value < 12


def test_a_real_out_of_memory_exits_4(corpus, tmp_path):
    # Activations alone of one micro-batch here are hundreds of GiB: no GPU holds them.
    huge = {
        "depth": 8,
        "aspect_ratio": 512,
        "head_dim": 128,
        "seq_len": 2048,
        "tokenizer": "byte",
        "batch": 256 * 2048,
        "device_batch": 256,
    }
    out = tmp_path / "result.json"
    proc = run_cli(
        [
            "--config",
            json.dumps(huge),
            "--budget",
            "30s",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--compile",
            "off",
        ],
        timeout=300,
    )
    assert proc.returncode == EXIT_OOM, proc.stderr[-2000:]
    result = parse_result(out.read_text())
    assert result.status == "oom" and "device_batch" in result.message


def test_launcher_and_ddp_on_the_gpus_match_one_process(corpus, tmp_path):
    """The multi-process path on the GPUs here (NCCL, DDP compiled, gradient accumulation
    without sync): world size 1 on a one-GPU machine, launched anyway, else 2 processes."""
    n = min(torch.cuda.device_count(), 2)
    cfg = dict(SMALL, warmdown_frac=0.0)  # the lr follows wall-clock time, which differs between the runs
    runs = {}
    for name, env in (("one", {}), ("ddp", {"LADDER_GPUS": str(n), "LADDER_TRAINER_LAUNCH": "always"})):
        proc = run_cli(
            [
                "--config",
                json.dumps(cfg),
                "--budget",
                "10m",
                "--max-steps",
                "4",
                "--data",
                str(corpus),
                "--eval-tokens",
                "4096",
                "--result-file",
                str(tmp_path / f"{name}.json"),
                "--step-log",
                str(tmp_path / f"{name}.jsonl"),
            ],
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = (
            [json.loads(x)["loss"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()],
            parse_result((tmp_path / f"{name}.json").read_text()),
        )
    (loss_one, one), (loss_ddp, ddp) = runs["one"], runs["ddp"]
    assert ddp.world_size == n and one.world_size == 1 and ddp.steps == one.steps == 4
    assert loss_ddp == pytest.approx(loss_one, rel=2e-2)  # bf16, and DDP splits the compiled graph differently
    assert ddp.value == pytest.approx(one.value, rel=2e-2)
    assert ddp.mfu is None or 0 < ddp.mfu < 1


def test_a_gpu_cell_that_will_repeat_its_corpus_says_so_at_start(corpus, tmp_path):
    """The tiny corpus stands in for the default one: a GPU goes through it many times a second."""
    out = tmp_path / "result.json"
    proc = run_cli(
        [
            "--config",
            json.dumps(SMALL),
            "--budget",
            "30s",
            "--max-steps",
            "40",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--eval-tokens",
            "4096",
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = parse_result(out.read_text())
    warning = next(ln for ln in proc.stderr.splitlines() if "repeated data" in ln)
    assert f"corpus {result.corpus}" in warning and proc.stderr.index("repeated data") < proc.stderr.index("eval:")
    assert result.data_passes == pytest.approx(result.tokens / _train_tokens(proc.stderr), rel=1e-3)


def _train_tokens(stderr: str) -> int:
    # "... | corpus <fp> (<dir>: N train / M val tokens)"
    return int(stderr.split(" train / ")[0].rsplit(": ", 1)[1])
