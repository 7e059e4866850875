"""One cell: train a candidate for a wall-clock budget, then evaluate val_bpb.

The budget clock starts after data preparation, model construction and the untimed warm-up
steps (which trigger torch.compile and are then undone), and stops training at the first
micro-batch boundary past the budget; evaluation runs after it, also off the clock. The LR
schedule follows elapsed training time / budget, so a cell's schedule does not depend on
how fast its host is.

With several processes (world.py; launched by launch.py or torchrun) the model is wrapped in
DistributedDataParallel, or sharded by FSDP2 (`parallel` fsdp): the global batch is the same as with one process, each rank runs its
share of the micro-batches on its share of the data, and the budget stop, growth, the lr
schedule and divergence are decided on values all ranks agree on. Evaluation is sharded over
the ranks and summed.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data as data_mod
from .config import ConfigError, Settings, TrainConfig
from .hardware import attention_backend, device_name, peak_flops, peak_memory, synchronize
from .model import GPT
from .optim import build_optimizers, lr_multiplier, set_lr
from .publish import ProgressReporter, log
from .sampler import WindowSampler
from .world import World


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
    world_size: int | None = None
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
             device: torch.device, autocast, world: World | None = None, lockstep: bool = False) -> dict:
    """val_bpb over the first n_tokens targets of the held-out split.

    Targets that stand for no bytes (end-of-text) are left out of both sums, so the metric
    is bits per byte of text whatever the tokenizer. With several ranks each takes every
    world-size-th window and the two sums are added up over the ranks. `lockstep` (FSDP, whose
    every forward is a collective) has every rank run as many forwards as the busiest one.
    """
    world = world or World()
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
    windows = windows[world.rank :: world.size]
    groups = []
    i = 0
    while i < len(windows):
        length = windows[i][1]
        groups.append([w for w in windows[i : i + rows] if w[1] == length])
        i += len(groups[-1])
    rounds = int(world.max(float(len(groups)))[0]) if lockstep else len(groups)
    for r in range(rounds):
        group = groups[min(r, len(groups) - 1)] if groups else [(0, 1)]
        length = group[0][1]
        x = torch.stack([tokens[s : s + length] for s, _ in group])
        y = torch.stack([tokens[s + 1 : s + 1 + length] for s, _ in group])
        with autocast:
            loss = model(x.to(device), y.to(device), reduction="none").float().cpu().view(-1)
        if r >= len(groups):
            continue  # a lockstep pass only: its windows were counted already
        yb = tb[y.view(-1)]
        nats += (loss.double() * (yb > 0)).sum()
        n_bytes += int(yb.sum())
    total_nats, total_bytes = world.sum(float(nats), float(n_bytes))
    n_bytes = int(total_bytes)
    bpb = total_nats / (math.log(2) * n_bytes) if n_bytes else float("nan")
    return {"val_bpb": bpb, "nats": total_nats, "bytes": n_bytes, "tokens": n_tokens}


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
    try:
        value = float(arg) if kind == "clock_skew" else int(arg)
    except ValueError:
        value = None
    if kind not in FAULTS or value is None or (only and not only.isdigit()):
        raise ConfigError(f"fault {fault!r}: use KIND:N[@RANK] with KIND one of {', '.join(FAULTS)}")
    if only and int(only) != rank:
        return None, -1
    return kind, value


def run(cfg: TrainConfig, seed: int, budget: float, settings: Settings, progress: ProgressReporter | None = None,
        world: World | None = None) -> RunOutcome:
    world = world or World.from_env()
    with attention_backend(settings.attention):
        outcome = _run(cfg, seed, budget, settings, progress, world)
    world.stop()  # only after a run every rank finished; a failed rank's process just exits
    return outcome


class Net:
    """The model as the training step calls it.

    One process: the model (compiled or not). Under a launcher with `parallel` ddp: wrapped in
    DistributedDataParallel, then compiled (torch's recommended order, so the DDP optimizer
    splits the graph at bucket boundaries). With fsdp: each block and then the whole model
    sharded in place by FSDP2's fully_shard (parameters become DTensors, so the optimizers
    must be built after this), and each block's forward compiled on its own, as torchtitan
    compiles per block.
    """

    def __init__(self, model: GPT, world: World, device: torch.device, compile_on: bool, parallel: str = "ddp"):
        self.model, self.world, self.device, self.compile_on = model, world, device, compile_on
        self.fsdp = world.group and parallel == "fsdp"
        self.wrap()

    def wrap(self) -> None:
        """(Re)build the wrappers; growth calls it again because DDP registers parameters once."""
        self.ddp = None
        net = self.model
        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world.size,))
            for block in self.model.blocks:
                if self.compile_on and not getattr(block, "compiled", False):
                    # The forward only: FSDP's gather and free hooks stay eager around it, and
                    # the block keeps its name in state dicts (no _orig_mod prefix).
                    block.forward = torch.compile(block.forward)
                    block.compiled = True
                fully_shard(block, mesh=mesh)
            fully_shard(self.model, mesh=mesh)
            self.fn = self.model
            return
        if self.world.group:
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP

            # The rotary tables are constant buffers: no broadcast before every forward (torch
            # renamed the switch in 2.10 or so; the image's 2.7 knows only the old name).
            sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
            self.ddp = net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                 **{sync: False})
        self.fn = torch.compile(net) if self.compile_on else net

    @contextlib.contextmanager
    def no_sync(self, sync: bool):
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but a step's last micro-batch."""
        if sync or not self.world.group:
            yield
        elif self.fsdp:
            self.model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)
        else:
            with self.ddp.no_sync():
                yield

    def full_state_dict(self) -> dict:
        """The whole model's weights on every rank (a collective under FSDP: all ranks call it)."""
        return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in self.model.state_dict().items()}


def _run(cfg: TrainConfig, seed: int, budget: float, settings: Settings, progress: ProgressReporter | None,
         world: World) -> RunOutcome:
    t_setup = time.perf_counter()
    try:
        device = world.device(settings.device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {settings.device!r}: {exc}") from None
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    fault_kind, fault_arg = parse_fault(settings.fault, world.rank)
    cfg = cfg.resolve(device.type, world.size)
    world.start(device)
    say = log if world.main else (lambda msg: None)  # one voice: rank 0 logs progress
    torch.manual_seed(seed)  # the same on every rank: identical initial weights
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
    if settings.parallel == "fsdp" and world.group and cfg.grow_from_depth:
        raise ConfigError("grow_from_depth: growth is not supported with parallel fsdp (use ddp)")
    net = Net(model, world, device, compile_on, settings.parallel)  # before the optimizers: FSDP swaps the parameters
    optimizers = build_optimizers(model, cfg, device.type)
    batches = Batches(shards.train, cfg.seq_len, cfg.device_batch, seed, device, world.rank, world.size)
    accum = cfg.grad_accum // world.size  # this rank's micro-batches per optimizer step
    say(
        f"model: depth {len(model.blocks)}/{cfg.depth} width {cfg.width} heads {cfg.n_head} "
        f"params {model.num_params() / 1e6:.2f}M vocab {shards.vocab_size} | device {device} "
        f"{'bf16' if use_bf16 else 'fp32'} compile {'on' if compile_on else 'off'} attention {settings.attention} | batch {cfg.batch} tokens "
        f"= {accum} x {cfg.device_batch} x {cfg.seq_len}"
        + (f" x {world.size} processes ({'FSDP2' if net.fsdp else 'DDP'})" if world.group else "")
        + f" | budget {budget:g}s | corpus {corpus} ({shards.path.name}: {len(shards.train)} train / {len(shards.val)} val tokens)"
    )

    def forward_backward(x, y, sync: bool = True) -> torch.Tensor:
        with net.no_sync(sync):
            with autocast:
                loss = net.fn(x, y)
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
            for i in range(accum):
                forward_backward(*batches.next(), sync=i == accum - 1)
            optimizer_step()
        synchronize(device)
        model.load_state_dict(model_state)
        for opt, st in zip(optimizers, opt_states):
            opt.load_state_dict(st)
        batches.reset()
        compile_seconds = time.perf_counter() - t0
        say(f"warm-up: {warmup} untimed steps in {compile_seconds:.1f}s{compile_cache_note()}")
    say(f"setup took {time.perf_counter() - t_setup:.1f}s; training starts")

    steps = 0
    micro_batches = 0
    first_loss = None
    last_loss = float("nan")
    flops = 0.0
    flops_per_token = model.flops_per_token(cfg.seq_len)
    grown = not cfg.grow_from_depth
    paused = 0.0  # seconds spent off the clock after the start (recompiling after growth)
    step_log = open_step_log(settings.step_log) if world.main else None
    skew = fault_arg if fault_kind == "clock_skew" else 0.0
    synchronize(device)
    world.max(0.0)  # every rank's clock starts together
    t_start = time.perf_counter()
    timing = dict(clock_started=t_start, setup_seconds=t_start - t_setup, compile_seconds=compile_seconds)
    last_log = t_start
    elapsed = lambda: time.perf_counter() - t_start - paused + skew  # noqa: E731
    repeat_checked = False

    def clock() -> float:
        """Training seconds as the slowest rank sees them: what every stop and schedule decision uses."""
        return world.max(elapsed())[0]

    stop = False
    while not stop:
        if settings.max_steps and steps >= settings.max_steps:
            break
        loss_sum = None
        for i in range(accum):
            x, y = batches.next()  # prepared while the device finishes the previous micro-batch
            synchronize(device)  # the budget is checked against finished work, per micro-batch
            t = clock()
            if t >= budget:
                stop = True
                break
            if i == 0:
                if not grown and t >= cfg.grow_at_frac * budget:
                    paused += _grow(model, cfg, optimizers, net, forward_backward, batches, device, say)
                    flops_per_token = model.flops_per_token(cfg.seq_len)
                    grown = True
                set_lr(optimizers, lr_multiplier(t / budget, cfg))
            loss = forward_backward(x, y, sync=i == accum - 1)
            micro_batches += 1
            loss_sum = loss if loss_sum is None else loss_sum + loss
        if stop:
            model.zero_grad(set_to_none=True)  # an unfinished step is dropped
            break
        if fault_kind and fault_kind != "clock_skew" and steps + 1 == fault_arg:
            _inject(fault_kind, steps + 1)
            if fault_kind == "nan_at_step":
                loss_sum = loss_sum * float("nan")
        # The mean over the global batch, the same on every rank, so all ranks judge divergence alike.
        last_loss = world.sum(float(loss_sum))[0] / (accum * world.size)
        if first_loss is None:
            first_loss = last_loss
        if not math.isfinite(last_loss) or last_loss > 2 * first_loss + 1:
            synchronize(device)
            train_seconds = clock()
            return RunOutcome(
                "diverged",
                f"training loss {last_loss:.4g} at step {steps + 1} (first step {first_loss:.4g}); "
                "lower the learning rates or add warmup",
                train_seconds=train_seconds,
                steps=steps,
                tokens=steps * cfg.batch,
                gpu_name=device_name(device),
                peak_memory_bytes=_peak_memory(world, device),
                corpus=corpus,
                data_passes=data_passes(steps * cfg.batch, shards),
                world_size=world.size,
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
            if world.main:  # from the global batch's throughput, so the same with any number of ranks
                _warn_if_repeating(shards, corpus, steps * cfg.batch, elapsed(), budget)
        if step_log is not None:
            t = elapsed()
            step_log.write(json.dumps({"step": steps, "loss": last_loss, "lr": lr_multiplier(t / budget, cfg),
                                       "elapsed": round(t, 4), "tokens": steps * cfg.batch}) + "\n")
            step_log.flush()
        if steps <= 3 or now - last_log >= settings.log_interval:
            last_log = now
            t = elapsed()
            say(
                f"step {steps} | {t:.1f}/{budget:g}s | loss {last_loss:.4f} | lr x{lr_multiplier(t / budget, cfg):.3f} "
                f"| {micro_batches * world.size * cfg.device_batch * cfg.seq_len / max(t, 1e-9):,.0f} tok/s"
            )
    synchronize(device)
    train_seconds = clock()
    if step_log is not None:
        step_log.close()
    if world.group:  # each rank says where it stopped: the same step everywhere, by construction
        log(f"rank {world.rank}/{world.size}: stopped after {steps} steps ({micro_batches} micro-batches) "
            f"at {train_seconds:.2f}s")
    processed = micro_batches * world.size * cfg.device_batch * cfg.seq_len  # all ranks' tokens
    if steps == 0:
        return RunOutcome("error", f"no optimizer step finished within the {budget:g}s budget; use a smaller batch",
                       train_seconds=train_seconds, steps=0, tokens=0, gpu_name=device_name(device),
                       world_size=world.size, **timing)

    if settings.eval_tokens < 0:  # the benchmark measures training only
        return RunOutcome("ok", train_seconds=train_seconds, steps=steps, tokens=steps * cfg.batch,
                       tokens_per_second=processed / train_seconds, mfu=_mfu(flops, train_seconds, device, world.size),
                       peak_memory_bytes=_peak_memory(world, device), gpu_name=device_name(device),
                       corpus=corpus, data_passes=data_passes(steps * cfg.batch, shards), world_size=world.size,
                       **timing)
    t_eval = time.perf_counter()
    model.eval()
    eval_tokens = settings.eval_tokens or EVAL_TOKENS_DEFAULT.get(device.type, EVAL_TOKENS_DEFAULT["cpu"])
    if eval_tokens > len(shards.val) - 1:
        say(f"eval: only {len(shards.val) - 1} held-out tokens, fewer than the {eval_tokens} asked for")
    # Eager on purpose: compiling the evaluation graph would cost more (30-70 s) than running it.
    # (FSDP compiles the blocks' forwards in place: told to run them eagerly here.)
    eager = torch.compiler.set_stance("force_eager") if net.fsdp and compile_on and hasattr(torch.compiler, "set_stance") \
        else contextlib.nullcontext()
    with eager:
        ev = evaluate(model, shards.val, shards.token_bytes, eval_tokens, cfg.seq_len, cfg.device_batch, device, autocast,
                      world, lockstep=net.fsdp)
    synchronize(device)
    eval_seconds = time.perf_counter() - t_eval
    passes = data_passes(steps * cfg.batch, shards)
    say(
        f"eval: val_bpb {ev['val_bpb']:.4f} over {ev['tokens']} tokens ({ev['bytes']} bytes) in "
        f"{eval_seconds:.1f}s | {steps} steps ({passes:.1f} passes over the training split), "
        f"{train_seconds:.1f}s, final train loss {last_loss:.4f}"
    )
    if passes > 4:
        say(f"note: the training split was repeated {passes:.0f} times; past a few passes a longer budget can "
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
        mfu=_mfu(flops, train_seconds, device, world.size),
        peak_memory_bytes=_peak_memory(world, device),
        gpu_name=gpu,
        eval_seconds=eval_seconds,
        corpus=corpus,
        data_passes=passes,
        world_size=world.size,
        extra={"eval": ev, "train_loss": last_loss},
        **timing,
    )
    if settings.checkpoint_dir:
        weights = net.full_state_dict()
        if world.main:
            save_checkpoint(Path(settings.checkpoint_dir), weights, cfg, shards, seed, outcome)
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


def open_step_log(path: str | None):
    if not path:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w")


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


def _peak_memory(world: World, device: torch.device) -> int | None:
    """The largest peak over the ranks: the memory a cell of this shape needs per GPU."""
    own = peak_memory(device)
    return int(world.max(float(own or 0))[0]) or None


def _mfu(flops: float, seconds: float, device: torch.device, processes: int = 1) -> float | None:
    """All processes' training FLOPs over all their GPUs' peak (the GPUs are alike in a cell)."""
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    return flops / (seconds * peak * processes) if peak and seconds > 0 else None


def _grow(model: GPT, cfg: TrainConfig, optimizers, net: Net, forward_backward, batches: Batches, device, say=log) -> float:
    """Insert the remaining blocks; returns the seconds spent off the clock (recompilation)."""
    before = len(model.blocks)
    model.grow(cfg.depth)
    net.wrap()
    new = [p for b in list(model.blocks)[before:] for p in b.parameters()]
    opt = optimizers[-1]  # the block-matrix optimizer: Muon, or AdamW's last group
    group = {k: v for k, v in opt.param_groups[-1].items() if k != "params"}
    opt.add_param_group({**group, "params": new})
    t0 = time.perf_counter()
    forward_backward(*batches.next())  # recompile off the clock; the gradients are dropped
    model.zero_grad(set_to_none=True)
    synchronize(device)
    say(f"grew depth {before} -> {len(model.blocks)}")
    return time.perf_counter() - t0


def _inject(kind: str, step: int) -> None:
    if kind == "exit_at_step":
        log(f"exiting with code 1 at once (fault exit_at_step:{step})")
        sys.stderr.flush()
        os._exit(1)
    if kind == "oom_at_step":
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by fault oom_at_step:{step})")
    if kind == "error_at_step":
        raise RuntimeError(f"injected error (fault error_at_step:{step})")


def save_checkpoint(out: Path, weights: dict, cfg: TrainConfig, shards, seed: int, outcome: RunOutcome) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": weights, "config": cfg.to_dict(), "vocab_size": shards.vocab_size}, out / "model.pt")
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
