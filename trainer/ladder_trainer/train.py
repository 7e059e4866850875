"""One cell: train a candidate for a wall-clock budget, then evaluate val_bpb.

The budget clock starts after data preparation, model construction and the untimed warm-up
steps (which trigger torch.compile and are then undone), and stops training at the first
micro-batch boundary past the budget; evaluation runs after it, also off the clock. The LR
schedule follows elapsed training time / budget, so a cell's schedule does not depend on
how fast its host is.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data as data_mod
from .config import ConfigError, Settings, TrainConfig
from .hardware import attention_backend, device_name, peak_flops, peak_memory, pick_device, synchronize
from .model import GPT
from .optim import build_optimizers, lr_multiplier, set_lr
from .publish import ProgressReporter, log
from .sampler import WindowSampler


EVAL_TOKENS_DEFAULT = {"cuda": 2**20, "cpu": 2**14}


@dataclass
class RunOutcome:
    status: str
    message: str = ""
    value: float | None = None
    train_seconds: float | None = None
    steps: int | None = None
    tokens: int | None = None
    tokens_per_second: float | None = None
    mfu: float | None = None
    peak_memory_bytes: int | None = None
    gpu_name: str | None = None
    # Where the time went besides training (perf_counter seconds). `clock_started` is when the
    # first timed step began, so the caller can measure set-up from its own process start.
    clock_started: float | None = None
    setup_seconds: float | None = None  # run() entered -> first timed step
    compile_seconds: float | None = None  # the untimed warm-up steps (compilation, when compiling)
    eval_seconds: float | None = None
    corpus: str | None = None  # fingerprint of the prepared data (data.corpus_fingerprint)
    data_passes: float | None = None  # training tokens consumed / training tokens available
    extra: dict = field(default_factory=dict)


class Batches:
    """Random windows of seq_len + 1 tokens from every training shard, seeded per cell (sampler.py)."""

    def __init__(self, split: data_mod.TokenSplit, seq_len: int, rows: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        try:
            self.sampler = WindowSampler(split, seq_len, rows, seed, rank, world_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.device = device

    def reset(self) -> None:
        self.sampler.reset()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(self.sampler.next())
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t[:, :-1], t[:, 1:]


@torch.no_grad()
def evaluate(model, val: np.ndarray, token_bytes: np.ndarray, n_tokens: int, seq_len: int, rows: int,
             device: torch.device, autocast) -> dict:
    """val_bpb over the first n_tokens targets of the held-out split.

    Targets that stand for no bytes (end-of-text) are left out of both sums, so the metric
    is bits per byte of text whatever the tokenizer.
    """
    n_tokens = min(n_tokens, len(val) - 1)
    head = val.head(n_tokens + 1) if isinstance(val, data_mod.TokenSplit) else val[: n_tokens + 1]
    tokens = torch.from_numpy(np.asarray(head).astype(np.int64))
    tb = torch.from_numpy(np.asarray(token_bytes, dtype=np.int64))
    nats = torch.zeros((), dtype=torch.float64)
    n_bytes = 0
    full = n_tokens // seq_len
    windows = [(i * seq_len, seq_len) for i in range(full)]
    if n_tokens % seq_len:
        windows.append((full * seq_len, n_tokens % seq_len))
    i = 0
    while i < len(windows):
        length = windows[i][1]
        group = [w for w in windows[i : i + rows] if w[1] == length]
        x = torch.stack([tokens[s : s + length] for s, _ in group])
        y = torch.stack([tokens[s + 1 : s + 1 + length] for s, _ in group])
        with autocast:
            loss = model(x.to(device), y.to(device), reduction="none").float().cpu().view(-1)
        yb = tb[y.view(-1)]
        nats += (loss.double() * (yb > 0)).sum()
        n_bytes += int(yb.sum())
        i += len(group)
    bpb = float(nats) / (math.log(2) * n_bytes) if n_bytes else float("nan")
    return {"val_bpb": bpb, "nats": float(nats), "bytes": n_bytes, "tokens": n_tokens}


def _fault(settings: Settings) -> tuple[str | None, int]:
    if not settings.fault:
        return None, -1
    kind, _, step = settings.fault.partition(":")
    if kind not in ("nan_at_step", "oom_at_step", "error_at_step") or not step.isdigit():
        raise ConfigError(f"fault {settings.fault!r}: use nan_at_step:N, oom_at_step:N or error_at_step:N")
    return kind, int(step)


def run(cfg: TrainConfig, seed: int, budget: float, settings: Settings, progress: ProgressReporter | None = None) -> RunOutcome:
    with attention_backend(settings.attention):
        return _run(cfg, seed, budget, settings, progress)


def _run(cfg: TrainConfig, seed: int, budget: float, settings: Settings, progress: ProgressReporter | None) -> RunOutcome:
    t_setup = time.perf_counter()
    try:
        device = pick_device(settings.device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {settings.device!r}: {exc}") from None
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    cfg = cfg.resolve(device.type)
    fault_kind, fault_step = _fault(settings)
    torch.manual_seed(seed)
    np.random.seed(seed)

    try:
        shards = data_mod.prepare(cfg.tokenizer, cfg.vocab_size, settings.data, settings.tokenizer_file, settings.text_field)
    except (OSError, ValueError) as exc:  # a missing or unusable corpus will not get better on a retry
        raise ConfigError(f"data: {exc}") from None
    corpus = shards.corpus
    use_bf16 = settings.dtype == "bf16" or (settings.dtype == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    compile_on = settings.compile == "on" or (settings.compile == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)

    model = GPT(cfg, shards.vocab_size, depth=cfg.grow_from_depth or cfg.depth).to(device)
    if settings.init_from:
        load_checkpoint(Path(settings.init_from), model, shards.vocab_size)
    optimizers = build_optimizers(model, cfg, device.type)
    step_fn = torch.compile(model) if compile_on else model
    batches = Batches(shards.train, cfg.seq_len, cfg.device_batch, seed, device)
    accum = cfg.grad_accum
    log(
        f"model: depth {len(model.blocks)}/{cfg.depth} width {cfg.width} heads {cfg.n_head} "
        f"params {model.num_params() / 1e6:.2f}M vocab {shards.vocab_size} | device {device} "
        f"{'bf16' if use_bf16 else 'fp32'} compile {'on' if compile_on else 'off'} attention {settings.attention} | batch {cfg.batch} tokens "
        f"= {accum} x {cfg.device_batch} x {cfg.seq_len} | budget {budget:g}s | corpus {corpus} "
        f"({shards.path.name}: {len(shards.train)} train / {len(shards.val)} val tokens)"
    )

    def forward_backward(x, y) -> torch.Tensor:
        with autocast:
            loss = step_fn(x, y)
        (loss / accum).backward()
        return loss.detach()

    def optimizer_step() -> None:
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    if cfg.activation_checkpointing:
        importlib.import_module("torch._dynamo")  # torch.utils.checkpoint imports it on first use: not on the clock

    # Untimed warm-up: compile the training graph, then restore the initial state so the
    # run is the same with or without it.
    warmup = settings.warmup_steps if settings.warmup_steps >= 0 else (2 if compile_on else 0)
    compile_seconds = None
    if warmup:
        t0 = time.perf_counter()
        model_state = copy.deepcopy(model.state_dict())
        opt_states = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
        for _ in range(warmup):
            for _ in range(accum):
                forward_backward(*batches.next())
            optimizer_step()
        synchronize(device)
        model.load_state_dict(model_state)
        for opt, st in zip(optimizers, opt_states):
            opt.load_state_dict(st)
        batches.reset()
        compile_seconds = time.perf_counter() - t0
        log(f"warm-up: {warmup} untimed steps in {compile_seconds:.1f}s{compile_cache_note()}")
    log(f"setup took {time.perf_counter() - t_setup:.1f}s; training starts")

    steps = 0
    micro_batches = 0
    first_loss = None
    last_loss = float("nan")
    flops = 0.0
    flops_per_token = model.flops_per_token(cfg.seq_len)
    grown = not cfg.grow_from_depth
    paused = 0.0  # seconds spent off the clock after the start (recompiling after growth)
    synchronize(device)
    t_start = time.perf_counter()
    timing = dict(clock_started=t_start, setup_seconds=t_start - t_setup, compile_seconds=compile_seconds)
    last_log = t_start
    elapsed = lambda: time.perf_counter() - t_start - paused  # noqa: E731
    repeat_checked = False
    stop = False
    while not stop:
        if settings.max_steps and steps >= settings.max_steps:
            break
        if not grown and elapsed() >= cfg.grow_at_frac * budget:
            paused += _grow(model, cfg, optimizers, forward_backward, batches, device)
            flops_per_token = model.flops_per_token(cfg.seq_len)
            grown = True
        set_lr(optimizers, lr_multiplier(elapsed() / budget, cfg))
        loss_sum = None
        for _ in range(accum):
            x, y = batches.next()  # prepared while the device finishes the previous micro-batch
            synchronize(device)  # the budget is checked against finished work, per micro-batch
            if elapsed() >= budget:
                stop = True
                break
            loss = forward_backward(x, y)
            micro_batches += 1
            loss_sum = loss if loss_sum is None else loss_sum + loss
        if stop:
            model.zero_grad(set_to_none=True)  # an unfinished step is dropped
            break
        if fault_kind and steps + 1 == fault_step:
            _inject(fault_kind, steps + 1)
            if fault_kind == "nan_at_step":
                loss_sum = loss_sum * float("nan")
        last_loss = float(loss_sum) / accum
        if first_loss is None:
            first_loss = last_loss
        if not math.isfinite(last_loss) or last_loss > 2 * first_loss + 1:
            synchronize(device)
            train_seconds = elapsed()
            return RunOutcome(
                "diverged",
                f"training loss {last_loss:.4g} at step {steps + 1} (first step {first_loss:.4g}); "
                "lower the learning rates or add warmup",
                train_seconds=train_seconds,
                steps=steps,
                tokens=steps * cfg.batch,
                gpu_name=device_name(device),
                peak_memory_bytes=peak_memory(device),
                corpus=corpus,
                data_passes=data_passes(steps * cfg.batch, shards),
                **timing,
            )
        optimizer_step()
        steps += 1
        flops += flops_per_token * cfg.batch
        now = time.perf_counter()
        if progress is not None:
            progress.update(elapsed=round(elapsed(), 1), step=steps, tokens=steps * cfg.batch, loss=round(last_loss, 4))
        if not repeat_checked and (steps >= 20 or elapsed() >= min(2.0, 0.05 * budget)):
            repeat_checked = True
            _warn_if_repeating(shards, corpus, steps * cfg.batch, elapsed(), budget)
        if steps <= 3 or now - last_log >= settings.log_interval:
            last_log = now
            t = elapsed()
            log(
                f"step {steps} | {t:.1f}/{budget:g}s | loss {last_loss:.4f} | lr x{lr_multiplier(t / budget, cfg):.3f} "
                f"| {micro_batches * cfg.device_batch * cfg.seq_len / max(t, 1e-9):,.0f} tok/s"
            )
    synchronize(device)
    train_seconds = elapsed()
    processed = micro_batches * cfg.device_batch * cfg.seq_len
    if steps == 0:
        return RunOutcome("error", f"no optimizer step finished within the {budget:g}s budget; use a smaller batch",
                          train_seconds=train_seconds, steps=0, tokens=0, gpu_name=device_name(device), **timing)

    if settings.eval_tokens < 0:  # the benchmark measures training only
        return RunOutcome("ok", train_seconds=train_seconds, steps=steps, tokens=steps * cfg.batch,
                       tokens_per_second=processed / train_seconds, mfu=_mfu(flops, train_seconds, device),
                       peak_memory_bytes=peak_memory(device), gpu_name=device_name(device),
                       corpus=corpus, data_passes=data_passes(steps * cfg.batch, shards), **timing)
    t_eval = time.perf_counter()
    model.eval()
    eval_tokens = settings.eval_tokens or EVAL_TOKENS_DEFAULT.get(device.type, EVAL_TOKENS_DEFAULT["cpu"])
    if eval_tokens > len(shards.val) - 1:
        log(f"eval: only {len(shards.val) - 1} held-out tokens, fewer than the {eval_tokens} asked for")
    # Eager on purpose: compiling the evaluation graph would cost more (30-70 s) than running it.
    ev = evaluate(model, shards.val, shards.token_bytes, eval_tokens, cfg.seq_len, cfg.device_batch, device, autocast)
    synchronize(device)
    eval_seconds = time.perf_counter() - t_eval
    passes = data_passes(steps * cfg.batch, shards)
    log(
        f"eval: val_bpb {ev['val_bpb']:.4f} over {ev['tokens']} tokens ({ev['bytes']} bytes) in "
        f"{eval_seconds:.1f}s | {steps} steps ({passes:.1f} passes over the training split), "
        f"{train_seconds:.1f}s, final train loss {last_loss:.4f}"
    )
    if passes > 4:
        log(f"note: the training split was repeated {passes:.0f} times; past a few passes a longer budget can "
            "make val_bpb worse, not better. Give larger budgets a larger corpus (--data)")
    gpu = device_name(device)
    outcome = RunOutcome(
        "ok" if math.isfinite(ev["val_bpb"]) else "diverged",
        "" if math.isfinite(ev["val_bpb"]) else "val_bpb is not finite",
        value=ev["val_bpb"] if math.isfinite(ev["val_bpb"]) else None,
        train_seconds=train_seconds,
        steps=steps,
        tokens=steps * cfg.batch,
        tokens_per_second=processed / train_seconds if train_seconds > 0 else None,
        mfu=_mfu(flops, train_seconds, device),
        peak_memory_bytes=peak_memory(device),
        gpu_name=gpu,
        eval_seconds=eval_seconds,
        corpus=corpus,
        data_passes=passes,
        extra={"eval": ev, "train_loss": last_loss},
        **timing,
    )
    if settings.checkpoint_dir:
        save_checkpoint(Path(settings.checkpoint_dir), model, cfg, shards, seed, outcome)
    return outcome


def compile_cache_note() -> str:
    """Inductor's cache hits and misses so far in this process (' | compile cache: ...'), or ''
    when nothing was compiled. A warm cache (the ladder's shared directory, local/caches.py)
    shows as hits and no misses."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return ""
    fx, aot = counters.get("inductor", {}), counters.get("aot_autograd", {})
    seen = {
        "FX graph": (fx.get("fxgraph_cache_hit", 0), fx.get("fxgraph_cache_miss", 0)),
        "AOTAutograd": (aot.get("autograd_cache_hit", 0), aot.get("autograd_cache_miss", 0)),
    }
    parts = [f"{name} {hit} hit(s), {miss} miss(es)" for name, (hit, miss) in seen.items() if hit or miss]
    if not parts:
        return ""
    where = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or "torch's default directory"
    return f" | compile cache {where}: " + "; ".join(parts)


def data_passes(tokens: int, shards: data_mod.Shards) -> float:
    return float(f"{tokens / len(shards.train):.6g}")


def _warn_if_repeating(shards: data_mod.Shards, corpus: str, tokens: int, seconds: float, budget: float) -> None:
    """Say at the start, from the first steps' throughput, that the budget will repeat the data.

    A cell that repeats its training split past a pass or so measures memorisation as much as
    the candidate, and a longer budget can then make val_bpb worse; the ladder shows it too
    (dataPasses), but the person watching a GPU cell should not wait for the end to learn it.
    """
    if seconds <= 0 or tokens <= 0:
        return
    projected = tokens / seconds * budget / len(shards.train)
    if projected <= 1:
        return
    default = shards.meta.get("source", "").startswith("python-stdlib")
    hint = ("this is the default corpus (the Python standard library): prepare a real one with "
            "`python -m ladder_trainer.prepare` and pass --data" if default else "give this budget a larger corpus")
    log(f"warning: at {tokens / seconds:,.0f} tok/s this {budget:g}s cell will make about {projected:.1f} passes over "
        f"the {len(shards.train):,} training tokens of corpus {corpus}; repeated data: {hint}")


def _mfu(flops: float, seconds: float, device: torch.device) -> float | None:
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    return flops / (seconds * peak) if peak and seconds > 0 else None


def _grow(model: GPT, cfg: TrainConfig, optimizers, forward_backward, batches: Batches, device) -> float:
    """Insert the remaining blocks; returns the seconds spent off the clock (recompilation)."""
    before = len(model.blocks)
    model.grow(cfg.depth)
    new = [p for b in list(model.blocks)[before:] for p in b.parameters()]
    opt = optimizers[-1]  # the block-matrix optimizer: Muon, or AdamW's last group
    group = {k: v for k, v in opt.param_groups[-1].items() if k != "params"}
    opt.add_param_group({**group, "params": new})
    t0 = time.perf_counter()
    forward_backward(*batches.next())  # recompile off the clock; the gradients are dropped
    model.zero_grad(set_to_none=True)
    synchronize(device)
    log(f"grew depth {before} -> {len(model.blocks)}")
    return time.perf_counter() - t0


def _inject(kind: str, step: int) -> None:
    if kind == "oom_at_step":
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by fault oom_at_step:{step})")
    if kind == "error_at_step":
        raise RuntimeError(f"injected error (fault error_at_step:{step})")


def save_checkpoint(out: Path, model: GPT, cfg: TrainConfig, shards, seed: int, outcome: RunOutcome) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "vocab_size": shards.vocab_size}, out / "model.pt")
    (out / "config.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "seed": seed, "vocab_size": shards.vocab_size, "corpus": str(shards.path),
         "val_bpb": outcome.value, "steps": outcome.steps}, indent=2))
    log(f"checkpoint saved to {out}")


def load_checkpoint(path: Path, model: GPT, vocab_size: int) -> None:
    """Start from an earlier cell's weights (same shape and vocabulary; optimizer state is fresh)."""
    file = path / "model.pt" if path.is_dir() else path
    if not file.exists():
        raise ConfigError(f"--init-from {path}: no model.pt there (write one with --checkpoint-dir)")
    saved = torch.load(file, map_location=model.embed.weight.device, weights_only=True)
    if saved.get("vocab_size") != vocab_size:
        raise ConfigError(f"--init-from {path}: vocabulary {saved.get('vocab_size')} != this run's {vocab_size}")
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise ConfigError(f"--init-from {path}: the checkpoint's model has another shape: {str(exc).splitlines()[0]}") from None
    log(f"initialised from {file}")
