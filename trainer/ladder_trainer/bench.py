"""Throughput benchmark of the trainer itself: tokens/s, MFU and peak memory per shape.

    python -m ladder_trainer.bench                 # on a GPU: d8 and d12 at seq 2048
    python -m ladder_trainer.bench --tiny          # on CPU: tiny shapes, shows the script works

Each case is a real trainer run (train.run, same loop, compile and warm-up as a cell) stopped
after --steps optimizer steps and evaluated on one window only (a result needs a value; the
evaluation is off the clock either way), so the numbers are the numbers a cell gets. Cases:
bf16 + torch.compile with torch's attention kernel, then with cuDNN's and with flash attention
put first (the `attention` setting), with activation checkpointing, and
eager fp32 for contrast. Each row also says the case's set-up seconds (train.run entered to the
first timed step: CUDA and data, model, compilation) and compile seconds (the untimed warm-up
steps, where torch.compile does its work); the first case pays for a cold compile cache, later
cases of the same shape find Inductor's caches warm. MFU is against the GPU's nominal dense
bf16 peak (hardware.PEAK_BF16_FLOPS), also for the fp32 case, so the rows compare directly. A
case that runs out of memory prints "OOM" and the benchmark goes on.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time

import torch

from .config import Settings, TrainConfig, parse_config
from .hardware import is_oom
from .train import run

CASES = [
    # (label, activation checkpointing, dtype, compile, attention)
    ("bf16 compiled", False, "bf16", "on", "auto"),
    ("bf16 compiled, cuDNN attention", False, "bf16", "on", "cudnn"),
    ("bf16 compiled, flash attention", False, "bf16", "on", "flash"),
    ("bf16 compiled + act. ckpt", True, "bf16", "on", "auto"),
    ("fp32 eager", False, "fp32", "off", "auto"),
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ladder_trainer.bench", description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="8,12", help="comma-separated depths (default 8,12)")
    p.add_argument("--aspect-ratio", type=int, default=64)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2**18, help="tokens per optimizer step (the trainer's CUDA default)")
    p.add_argument("--device-batch", type=int, default=0, help="sequences per micro-batch (0 = trainer default)")
    p.add_argument("--steps", type=int, default=15, help="timed optimizer steps per case")
    p.add_argument("--tokenizer", default="bpe", choices=("bpe", "byte"))
    p.add_argument("--device", default="auto")
    p.add_argument("--cases", default="all", help="comma-separated case numbers (1-based) or 'all'")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny shapes, byte tokens, few steps")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.tiny:
        args.depths, args.aspect_ratio, args.head_dim, args.seq_len = "1,2", 32, 16, 128
        args.batch, args.steps, args.tokenizer = 512, 5, "byte"
        if args.device == "auto":
            args.device = "cpu"

    cases = CASES if args.cases == "all" else [CASES[int(i) - 1] for i in args.cases.split(",")]
    device_name = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and args.device != "cpu"
        else platform.processor() or "cpu"
    )
    print(
        f"# ladder_trainer benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, device {device_name}, "
        f"torch {torch.__version__}, seq {args.seq_len}, batch {args.batch} tokens, {args.steps} timed steps",
        flush=True,
    )
    print(f"# attention kernel torch picks by default here: {_default_attention(args)}", flush=True)
    print("| model | params | case | tokens/s | MFU | peak memory | set-up s | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        for case in cases:
            row, cfg = _run_case(args, depth, case)
            rows.append(row)
            print(_format(row, cfg), flush=True)
            _release()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


def _run_case(args: argparse.Namespace, depth: int, case: tuple) -> tuple[dict, TrainConfig]:
    """One row: a real trainer run of this shape and case, or error=OOM."""
    label, ckpt, dtype, compile_, attention = case
    cfg = parse_config(
        {
            "depth": depth,
            "aspect_ratio": args.aspect_ratio,
            "head_dim": args.head_dim,
            "seq_len": args.seq_len,
            "batch": args.batch,
            "device_batch": args.device_batch,
            "tokenizer": args.tokenizer,
            "activation_checkpointing": ckpt,
            "warmdown_frac": 0.0,
        }
    )
    settings = Settings(
        device=args.device,
        dtype=dtype,
        compile=compile_,
        attention=attention,
        warmup_steps=2,
        eval_tokens=args.seq_len,
        max_steps=args.steps,
        log_interval=1e9,
        threads=0 if args.device != "cpu" else 1,
    )
    row = {"depth": depth, "width": cfg.width, "case": label, "seq_len": args.seq_len}
    try:
        out = run(cfg, seed=0, budget=1e9, settings=settings)
        row.update(
            tokens_per_second=out.tokens_per_second,
            mfu=out.mfu,
            peak_memory_bytes=out.peak_memory_bytes,
            steps=out.steps,
            gpu=out.gpu_name,
            setup_seconds=out.setup_seconds,
            compile_seconds=out.compile_seconds,
        )
    except Exception as exc:
        if not is_oom(exc):
            raise
        row.update(error="OOM")
    return row, cfg


def _format(row: dict, cfg) -> str:
    params = 12 * cfg.depth * cfg.width**2 / 1e6  # block matrices (mlp_ratio 4), for orientation
    params = f"{params:.0f}M" if params >= 10 else f"{params:.2f}M"
    model = f"d{row['depth']} (width {row['width']})"
    if "error" in row:
        return f"| {model} | {params} | {row['case']} | {row['error']} | | | | |"
    mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a (no GPU peak)"
    mem = f"{row['peak_memory_bytes'] / 2**30:.2f} GiB" if row.get("peak_memory_bytes") else "n/a"
    setup = f"{row['setup_seconds']:.1f}" if row.get("setup_seconds") is not None else "n/a"
    comp = f"{row['compile_seconds']:.1f}" if row.get("compile_seconds") is not None else "n/a"
    return (
        f"| {model} | {params} | {row['case']} | {row['tokens_per_second']:,.0f} | {mfu} | {mem} | {setup} | {comp} |"
    )


def _default_attention(args) -> str:
    """The SDPA backend torch's own order picks for the benchmark's bf16 attention shape."""
    if not torch.cuda.is_available() or args.device == "cpu":
        return "n/a (CPU)"
    try:
        q = torch.empty(1, 2, args.seq_len, args.head_dim, device="cuda", dtype=torch.bfloat16)
        choice = torch._fused_sdp_choice(q, q, q, is_causal=True)  # private, hence the guard
        return torch.nn.attention.SDPBackend(choice).name
    except Exception as exc:  # noqa: BLE001 - a private API: any failure only means "unknown"
        return f"unknown ({type(exc).__name__})"


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch._dynamo.reset()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
