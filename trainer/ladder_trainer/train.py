"""One cell: train a candidate for a wall-clock budget, then evaluate val_bpb.

The budget clock starts after data preparation, model construction and the untimed warm-up
steps (which trigger torch.compile and are then undone), and stops training at the first
micro-batch boundary past the budget; evaluation runs after it, also off the clock. The LR
schedule follows elapsed training time / budget, so a cell's schedule does not depend on
how fast its host is.

A run is five parts, in order: `set_up` (device, data, model, optimizers: a `Setup`),
`warm_up`, `train` (the loop; its state is one `LoopState`), `evaluate_cell`, and `outcome`,
the one place the cell's `CellResult` is built.

With several processes (world.py; launched by launch.py or torchrun) the model is wrapped in
DistributedDataParallel, or sharded by FSDP2 (`parallel` fsdp): the global batch is the same as
with one process, each rank runs its share of the micro-batches on its share of the data, and
the budget stop, growth, the lr schedule and divergence are decided on values all ranks agree
on. Evaluation is sharded over the ranks and summed.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch

from promotion_ladder.core.result import CellResult, Status

from . import data as data_mod
from .config import ConfigError, Settings, TrainConfig
from .hardware import attention_backend, device_name, peak_flops, peak_memory, synchronize
from .hooks import Hooks, hooks_for
from .model import GPT
from .optim import build_optimizers, lr_multiplier, set_lr
from .publish import ProgressReporter, log
from .sampler import WindowSampler
from .stable import Continuation, Resumed, check_supported, resume, stable_end
from .stable import save as save_stable
from .world import World

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

EVAL_TOKENS_DEFAULT = {"cuda": 2**20, "cpu": 2**14}


class Batches:
    """Random windows of seq_len + 1 tokens from every training shard, seeded per cell (sampler.py)."""

    def __init__(
        self,
        split: data_mod.TokenSplit,
        seq_len: int,
        rows: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ):
        try:
            self.sampler = WindowSampler(split, seq_len, rows, seed, rank, world_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.device = device

    def reset(self) -> None:
        self.sampler.reset()

    def state(self) -> dict[str, Any]:
        """The data position: the sampler's random stream (plain data, for a checkpoint)."""
        return self.sampler.state()

    def restore(self, state: dict[str, Any]) -> None:
        self.sampler.restore(state)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(self.sampler.next())
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t[:, :-1], t[:, 1:]


@torch.no_grad()
def evaluate(
    model,
    val: np.ndarray | data_mod.TokenSplit,
    token_bytes: np.ndarray,
    n_tokens: int,
    seq_len: int,
    rows: int,
    device: torch.device,
    autocast,
    world: World | None = None,
    lockstep: bool = False,
) -> dict:
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
        self.ddp: DistributedDataParallel | None = None
        self.fn: Callable[..., Any]
        net: torch.nn.Module = self.model
        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world.size,))
            for block in self.model.blocks:
                if self.compile_on and not getattr(block, "compiled", False):
                    # The forward only: FSDP's gather and free hooks stay eager around it, and
                    # the block keeps its name in state dicts (no _orig_mod prefix).
                    block.forward = torch.compile(block.forward)
                    block.compiled = True  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module only
                fully_shard(block, mesh=mesh)
            fully_shard(self.model, mesh=mesh)
            self.fn = self.model
            return
        if self.world.group:
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP

            # The rotary tables are constant buffers: no broadcast before every forward (torch
            # renamed the switch in 2.10 or so; the image's 2.7 knows only the old name).
            sync = (
                "forward_sync_buffers"
                if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else "broadcast_buffers"
            )
            buffers_off: dict[str, Any] = {sync: False}
            self.ddp = net = DDP(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None, **buffers_off
            )
        self.fn = torch.compile(net) if self.compile_on else net

    @contextlib.contextmanager
    def no_sync(self, sync: bool):
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but a step's last micro-batch."""
        if sync or not self.world.group:
            yield
        elif self.fsdp:
            from torch.distributed.fsdp import FSDPModule

            assert isinstance(self.model, FSDPModule)  # wrap() sharded it: fully_shard made it one
            self.model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)
        else:
            assert self.ddp is not None  # wrap() made one: a process group, and not FSDP
            with self.ddp.no_sync():
                yield

    def full_state_dict(self) -> dict:
        """The whole model's weights on every rank (a collective under FSDP: all ranks call it)."""
        return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in self.model.state_dict().items()}


def run(
    cfg: TrainConfig,
    seed: int,
    budget: float,
    settings: Settings,
    progress: ProgressReporter | None = None,
    world: World | None = None,
    *,
    hooks: Hooks | None = None,
    identity: dict[str, Any] | None = None,
    started: float | None = None,
    continuation: Continuation | None = None,
) -> CellResult:
    """Train and evaluate one cell; its result document.

    `identity`: the result's identity fields (camelCase, core.contract.identity_from_env).
    `started`: the perf_counter() reading setupSeconds counts from (default: this call).
    `hooks`: what a test installs into the loop (hooks.py); default: the --fault setting's.
    `continuation`: its stable checkpoints, in a ladder that continues (stable.py).
    """
    entered = time.perf_counter()
    world = world or World.from_env()
    hooks = hooks if hooks is not None else hooks_for(settings.fault, world.rank)
    with attention_backend(settings.attention):
        t = set_up(cfg, seed, budget, settings, world, hooks)
        t.identity, t.entered, t.continuation = dict(identity or {}), entered, continuation
        t.started = entered if started is None else started
        result = _run(t, progress)
    world.stop()  # only after a run every rank finished; a failed rank's process just exits
    return result


def _run(t: Setup, progress: ProgressReporter | None) -> CellResult:
    check_supported(t.continuation, t)
    resumed, t.refused = resume(t)
    compile_seconds = warm_up(t)
    t.say(f"setup took {time.perf_counter() - t.entered:.1f}s; training starts")
    s = LoopState.start(t, compile_seconds, resumed)
    report = StepReport(t, s, progress)
    try:
        diverged = train(t, s, report)
    finally:
        report.close()
    synchronize(t.device)
    s.train_seconds = clock(t, s)
    if not diverged and s.stable_pending(t):  # the budget ended the flat phase (warmdown_frac 0, or one step)
        save_stable(t, s, s.train_seconds, s.data_at_step or t.batches.state())
    if t.world.group:  # each rank says where it stopped: the same step everywhere, by construction
        log(
            f"rank {t.world.rank}/{t.world.size}: stopped after {s.steps} steps ({s.micro_batches} micro-batches) "
            f"at {s.train_seconds:.2f}s"
        )
    if diverged:
        return outcome(t, s, "diverged", diverged)
    if s.steps == (s.resumed.steps if s.resumed else 0):
        return outcome(
            t, s, "error", f"no optimizer step finished within the {t.budget:g}s budget; use a smaller batch"
        )
    return evaluated(t, s)


@dataclass
class Setup:
    """What set-up builds for a cell and the loop uses: its settings, data, model and optimizers."""

    cfg: TrainConfig  # resolved for this device and world size
    settings: Settings
    seed: int
    budget: float
    world: World
    device: torch.device
    shards: data_mod.Shards
    corpus: str  # the data's fingerprint (data.corpus_fingerprint)
    model: GPT
    net: Net
    optimizers: list[torch.optim.Optimizer]
    batches: Batches
    autocast: contextlib.AbstractContextManager[Any]
    compile_on: bool
    hooks: Hooks
    say: Callable[[str], None]  # progress lines, from rank 0 only
    # Of the result document, set by run(): its identity fields, and the perf_counter() readings
    # at run()'s start and where setupSeconds counts from (the process's start, for a cell).
    identity: dict[str, Any] | None = None
    entered: float = 0.0
    started: float = 0.0
    # A cell of a ladder that continues: its checkpoints, and why its predecessor's was refused
    # when it trained from scratch instead.
    continuation: Continuation | None = None
    refused: str | None = None

    @property
    def accum(self) -> int:
        """This rank's micro-batches per optimizer step."""
        return self.cfg.grad_accum // self.world.size

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, sync: bool = True) -> torch.Tensor:
        with self.net.no_sync(sync):
            with self.autocast:
                loss = self.net.fn(x, y)
            (loss / self.accum).backward()
        return loss.detach()

    def optimizer_step(self) -> None:
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        for opt in self.optimizers:
            opt.step()
        self.model.zero_grad(set_to_none=True)


def set_up(cfg: TrainConfig, seed: int, budget: float, settings: Settings, world: World, hooks: Hooks) -> Setup:
    """Device, data, model and optimizers: everything before the first step, off the clock."""
    device = _device(settings, world)
    cfg = cfg.resolve(device.type, world.size)
    world.start(device)
    torch.manual_seed(seed)  # the same on every rank: identical initial weights
    np.random.seed(seed)
    try:
        shards = data_mod.prepare(
            cfg.tokenizer, cfg.vocab_size, settings.data, settings.tokenizer_file, settings.text_field
        )
    except (OSError, ValueError) as exc:  # a missing or unusable corpus will not get better on a retry
        raise ConfigError(f"data: {exc}") from None
    use_bf16 = settings.dtype == "bf16" or (settings.dtype == "auto" and device.type == "cuda")
    autocast: contextlib.AbstractContextManager[Any] = (
        torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )
    compile_on = settings.compile == "on" or (settings.compile == "auto" and device.type == "cuda")
    model = GPT(cfg, shards.vocab_size, depth=cfg.grow_from_depth or cfg.depth).to(device)
    if settings.init_from:
        load_checkpoint(Path(settings.init_from), model, shards.vocab_size)
    if settings.parallel == "fsdp" and world.group and cfg.grow_from_depth:
        raise ConfigError("grow_from_depth: growth is not supported with parallel fsdp (use ddp)")
    net = Net(model, world, device, compile_on, settings.parallel)  # before the optimizers: FSDP swaps the parameters
    t = Setup(
        cfg,
        settings,
        seed,
        budget,
        world,
        device,
        shards,
        shards.corpus,
        model,
        net,
        build_optimizers(model, cfg, device.type),
        Batches(shards.train, cfg.seq_len, cfg.device_batch, seed, device, world.rank, world.size),
        autocast,
        compile_on,
        hooks,
        log if world.main else (lambda msg: None),
    )  # one voice: rank 0's
    t.say(
        f"model: depth {len(model.blocks)}/{cfg.depth} width {cfg.width} heads {cfg.n_head} "
        f"params {model.num_params() / 1e6:.2f}M vocab {shards.vocab_size} | device {device} "
        f"{'bf16' if use_bf16 else 'fp32'} compile {'on' if compile_on else 'off'} attention {settings.attention} "
        f"| batch {cfg.batch} tokens = {t.accum} x {cfg.device_batch} x {cfg.seq_len}"
        + (f" x {world.size} processes ({'FSDP2' if net.fsdp else 'DDP'})" if world.group else "")
        + f" | budget {budget:g}s | corpus {t.corpus} ({shards.path.name}: {len(shards.train)} train / "
        f"{len(shards.val)} val tokens)"
    )
    return t


def _device(settings: Settings, world: World) -> torch.device:
    """This rank's device, with the process-wide switches that go with it."""
    try:
        device = world.device(settings.device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {settings.device!r}: {exc}") from None
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    return device


def warm_up(t: Setup) -> float | None:
    """Untimed steps that compile the training graph, then undone (weights, optimizer state and
    the sampler restored), so the run is the same with or without them. Their seconds, or None."""
    if t.cfg.activation_checkpointing:
        importlib.import_module("torch._dynamo")  # torch.utils.checkpoint imports it on first use: not on the clock
    steps = t.settings.warmup_steps if t.settings.warmup_steps >= 0 else (2 if t.compile_on else 0)
    if not steps:
        return None
    t0 = time.perf_counter()
    model_state = copy.deepcopy(t.model.state_dict())
    opt_states = [copy.deepcopy(opt.state_dict()) for opt in t.optimizers]
    data = t.batches.state()  # the seed's start, or where a resumed cell's predecessor stopped
    for _ in range(steps):
        for i in range(t.accum):
            t.forward_backward(*t.batches.next(), sync=i == t.accum - 1)
        t.optimizer_step()
    synchronize(t.device)
    t.model.load_state_dict(model_state)
    for opt, state in zip(t.optimizers, opt_states, strict=True):
        opt.load_state_dict(state)
    t.batches.restore(data)
    seconds = time.perf_counter() - t0
    t.say(f"warm-up: {steps} untimed steps in {seconds:.1f}s{compile_cache_note()}")
    return seconds


@dataclass
class LoopState:
    """Everything the loop reads and writes besides the model, the optimizers and the sampler:
    what a resumed run restores (stable.py saves it with them)."""

    t_start: float  # perf_counter() at which the clock read 0 (before `began` for a resumed cell)
    flops_per_token: float
    grown: bool  # growth (grow_from_depth) done, or not asked for
    began: float = 0.0  # perf_counter() when this process's clock started
    skew: float = 0.0  # this rank's clock offset (a test's hooks)
    compile_seconds: float | None = None  # the untimed warm-up
    steps: int = 0
    micro_batches: int = 0  # this rank's, finished, including those of a step dropped at the budget
    flops: float = 0.0
    first_loss: float | None = None
    last_loss: float = float("nan")
    paused: float = 0.0  # seconds off the clock after the start (recompiling after growth, saving a checkpoint)
    train_seconds: float = 0.0  # on the clock, once it stopped
    resumed: Resumed | None = None  # where a continuing cell's predecessor stopped (its counters are included above)
    stable_saved: bool = False
    data_at_step: dict[str, Any] | None = None  # the sampler at the current step's start, while a save is pending

    @classmethod
    def start(cls, t: Setup, compile_seconds: float | None, resumed: Resumed | None = None) -> LoopState:
        """Start the clock, on every rank together; a resumed cell's at its predecessor's stable time."""
        synchronize(t.device)
        t.world.max(0.0)
        now = time.perf_counter()
        s = cls(
            now,
            t.model.flops_per_token(t.cfg.seq_len),
            grown=not t.cfg.grow_from_depth,
            began=now,
            skew=t.hooks.clock_skew,
            compile_seconds=compile_seconds,
        )
        if resumed is not None:
            s.t_start = now - resumed.seconds
            s.steps, s.micro_batches, s.flops = resumed.steps, resumed.micro_batches, resumed.flops
            s.first_loss, s.last_loss, s.resumed = resumed.first_loss, resumed.last_loss, resumed
        return s

    def elapsed(self) -> float:
        """This rank's training seconds so far."""
        return time.perf_counter() - self.t_start - self.paused + self.skew

    def stable_pending(self, t: Setup) -> bool:
        """A stable checkpoint is to be saved and has not been."""
        return t.continuation is not None and t.continuation.write is not None and not self.stable_saved

    def lr(self, t: Setup, now: float) -> float:
        """The schedule's multiplier at `now` training seconds (a resumed cell's warm-up is behind it)."""
        return lr_multiplier(now / t.budget, t.cfg, warmed=self.resumed is not None)


def clock(t: Setup, s: LoopState) -> float:
    """Training seconds as the slowest rank sees them: what every stop and schedule decision uses."""
    return t.world.max(s.elapsed())[0]


def train(t: Setup, s: LoopState, report: StepReport) -> str | None:
    """Optimizer steps until the budget (or --max-steps) is spent. Returns why the loss diverged, if it did."""
    while True:
        # the stable checkpoint, at the step boundary where the flat phase ends
        if s.stable_pending(t):
            stable_checkpoint(t, s)
        if t.settings.max_steps and s.steps >= t.settings.max_steps:
            return None
        # forward/backward: the step's micro-batches, the budget checked before each
        loss_sum = accumulate(t, s)
        if loss_sum is None:
            t.model.zero_grad(set_to_none=True)  # the budget ran out: an unfinished step is dropped
            return None
        # divergence, on the global batch's mean loss: the same on every rank, so all judge alike
        loss_sum = t.hooks.after_step(s.steps + 1, loss_sum)
        s.last_loss = t.world.sum(float(loss_sum))[0] / (t.accum * t.world.size)
        if s.first_loss is None:
            s.first_loss = s.last_loss
        if not math.isfinite(s.last_loss) or s.last_loss > 2 * s.first_loss + 1:
            return (
                f"training loss {s.last_loss:.4g} at step {s.steps + 1} (first step {s.first_loss:.4g}); "
                "lower the learning rates or add warmup"
            )
        # update
        t.optimizer_step()
        s.steps += 1
        s.flops += s.flops_per_token * t.cfg.batch
        # logging
        report.step(s)


def stable_checkpoint(t: Setup, s: LoopState) -> None:
    """Save the stable checkpoint once the flat phase has ended (--stable-steps: after that many
    steps, a test aid that makes the point deterministic); else note where the data stands."""
    now = clock(t, s)
    due = s.steps >= t.settings.stable_steps if t.settings.stable_steps else now >= stable_end(t)
    if due:
        save_stable(t, s, now, t.batches.state())
        s.stable_saved = True
    else:
        s.data_at_step = t.batches.state()


def accumulate(t: Setup, s: LoopState) -> torch.Tensor | None:
    """One step's micro-batches, forward and backward, and their summed loss; None when the budget
    ran out before the last of them. Growth and the lr follow the clock at the first micro-batch."""
    loss_sum = None
    for i in range(t.accum):
        x, y = t.batches.next()  # prepared while the device finishes the previous micro-batch
        synchronize(t.device)  # the budget is checked against finished work, per micro-batch
        now = clock(t, s)
        if now >= t.budget:
            return None
        if i == 0:
            if not s.grown and now >= t.cfg.grow_at_frac * t.budget:
                grow(t, s)
            set_lr(t.optimizers, s.lr(t, now))
        loss = t.forward_backward(x, y, sync=i == t.accum - 1)
        s.micro_batches += 1
        loss_sum = loss if loss_sum is None else loss_sum + loss
    return loss_sum


def grow(t: Setup, s: LoopState) -> None:
    """Insert the remaining blocks; recompiling for them is kept off the clock."""
    before = len(t.model.blocks)
    t.model.grow(t.cfg.depth)
    t.net.wrap()
    new = [p for b in list(t.model.blocks)[before:] for p in b.parameters()]
    opt = t.optimizers[-1]  # the block-matrix optimizer: Muon, or AdamW's last group
    group = {k: v for k, v in opt.param_groups[-1].items() if k != "params"}
    opt.add_param_group({**group, "params": new})
    t0 = time.perf_counter()
    t.forward_backward(*t.batches.next())  # recompile off the clock; the gradients are dropped
    t.model.zero_grad(set_to_none=True)
    synchronize(t.device)
    t.say(f"grew depth {before} -> {len(t.model.blocks)}")
    s.paused += time.perf_counter() - t0
    s.flops_per_token = t.model.flops_per_token(t.cfg.seq_len)
    s.grown = True


class StepReport:
    """What the loop says after each step: the Pod's progress annotation, a stderr line every
    --log-interval, the --step-log line (rank 0) and, once, the repeated-data warning."""

    def __init__(self, t: Setup, s: LoopState, progress: ProgressReporter | None):
        self.t, self.progress = t, progress
        self.step_log: TextIO | None = open_step_log(t.settings.step_log) if t.world.main else None
        self.last_log = s.began
        self.repeat_checked = False

    def step(self, s: LoopState) -> None:
        t, now, elapsed = self.t, time.perf_counter(), s.elapsed()
        tokens = s.steps * t.cfg.batch
        if self.progress is not None:
            self.progress.update(elapsed=round(elapsed, 1), step=s.steps, tokens=tokens, loss=round(s.last_loss, 4))
        if not self.repeat_checked and (s.steps >= 20 or elapsed >= min(2.0, 0.05 * t.budget)):
            self.repeat_checked = True
            if t.world.main:  # from the global batch's throughput, so the same with any number of ranks
                _warn_if_repeating(t.shards, t.corpus, tokens, elapsed, t.budget)
        lr = s.lr(t, elapsed)
        if self.step_log is not None:
            self.step_log.write(
                json.dumps(
                    {"step": s.steps, "loss": s.last_loss, "lr": lr, "elapsed": round(elapsed, 4), "tokens": tokens}
                )
                + "\n"
            )
            self.step_log.flush()
        if s.steps <= 3 or now - self.last_log >= t.settings.log_interval:
            self.last_log = now
            processed = s.micro_batches * t.world.size * t.cfg.device_batch * t.cfg.seq_len
            t.say(
                f"step {s.steps} | {elapsed:.1f}/{t.budget:g}s | loss {s.last_loss:.4f} | lr x{lr:.3f} "
                f"| {processed / max(elapsed, 1e-9):,.0f} tok/s"
            )

    def close(self) -> None:
        if self.step_log is not None:
            self.step_log.close()


def evaluate_cell(t: Setup) -> tuple[dict[str, Any], float]:
    """val_bpb after training (off the clock), and its seconds."""
    t0 = time.perf_counter()
    t.model.eval()
    eval_tokens = t.settings.eval_tokens or EVAL_TOKENS_DEFAULT.get(t.device.type, EVAL_TOKENS_DEFAULT["cpu"])
    if eval_tokens > len(t.shards.val) - 1:
        t.say(f"eval: only {len(t.shards.val) - 1} held-out tokens, fewer than the {eval_tokens} asked for")
    # Eager on purpose: compiling the evaluation graph would cost more (30-70 s) than running it.
    # (FSDP compiles the blocks' forwards in place: told to run them eagerly here.)
    fsdp_compiled = t.net.fsdp and t.compile_on and hasattr(torch.compiler, "set_stance")
    eager = torch.compiler.set_stance("force_eager") if fsdp_compiled else contextlib.nullcontext()
    with eager:
        ev = evaluate(
            t.model,
            t.shards.val,
            t.shards.token_bytes,
            eval_tokens,
            t.cfg.seq_len,
            t.cfg.device_batch,
            t.device,
            t.autocast,
            t.world,
            lockstep=bool(t.net.fsdp),
        )
    synchronize(t.device)
    return ev, time.perf_counter() - t0


def evaluated(t: Setup, s: LoopState) -> CellResult:
    """Evaluate the trained cell and say how it went; its result (and its checkpoint, if asked)."""
    ev, eval_seconds = evaluate_cell(t)
    passes = data_passes(s.steps * t.cfg.batch, t.shards)
    t.say(
        f"eval: val_bpb {ev['val_bpb']:.4f} over {ev['tokens']} tokens ({ev['bytes']} bytes) in "
        f"{eval_seconds:.1f}s | {s.steps} steps ({passes:.1f} passes over the training split), "
        f"{s.train_seconds:.1f}s, final train loss {s.last_loss:.4f}"
    )
    if passes > 4:
        t.say(
            f"note: the training split was repeated {passes:.0f} times; past a few passes a longer budget can "
            "make val_bpb worse, not better. Give larger budgets a larger corpus (--data)"
        )
    finite = math.isfinite(ev["val_bpb"])
    result = outcome(
        t,
        s,
        "ok" if finite else "diverged",
        "" if finite else "val_bpb is not finite",
        value=ev["val_bpb"] if finite else None,
        eval_seconds=eval_seconds,
    )
    if t.settings.checkpoint_dir:
        weights = t.net.full_state_dict()  # a collective under FSDP: every rank gathers
        if t.world.main:
            save_checkpoint(Path(t.settings.checkpoint_dir), weights, t.cfg, t.shards, t.seed, result)
    return result


def outcome(
    t: Setup,
    s: LoopState,
    status: Status,
    message: str = "",
    value: float | None = None,
    eval_seconds: float | None = None,
) -> CellResult:
    """The cell's result document from what set-up, the loop and evaluation measured. Throughput
    is reported once a step finished; peak memory is the largest over the ranks (a collective).
    A resumed cell's steps and tokens are the model's (its predecessor's included); its
    throughput and MFU are its own part's, and `resumedSeconds` what it took over."""
    tokens = s.steps * t.cfg.batch
    base = s.resumed or Resumed(0.0, 0, 0, 0.0, None, float("nan"))
    processed = (s.micro_batches - base.micro_batches) * t.world.size * t.cfg.device_batch * t.cfg.seq_len  # all ranks'
    own_seconds = s.train_seconds - base.seconds
    timed = s.steps > base.steps and own_seconds > 0
    return CellResult(
        **(t.identity or {}),
        status=status,
        message=message,
        value=value,
        train_seconds=s.train_seconds,
        setup_seconds=_seconds(s.began - t.started),
        compile_seconds=_seconds(s.compile_seconds),
        eval_seconds=_seconds(eval_seconds),
        steps=s.steps,
        tokens=tokens,
        tokens_per_second=processed / own_seconds if timed else None,
        mfu=_mfu(s.flops - base.flops, own_seconds, t.device, t.world.size) if timed else None,
        peak_memory_bytes=_peak_memory(t.world, t.device),
        gpu_name=device_name(t.device),
        corpus=t.corpus,
        data_passes=data_passes(tokens, t.shards),
        world_size=t.world.size,
        resumed_seconds=round(base.seconds, 6) if t.continuation is not None else None,
        resume_refused=t.refused,
    )


def _seconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(seconds, 0.0), 3)


def compile_cache_note() -> str:
    """Inductor's cache hits and misses so far in this process (' | compile cache: ...'), or ''
    when nothing was compiled. A warm cache (the ladder's shared directory, local/caches.py)
    shows as hits and no misses."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return ""
    fx: Mapping[str, int] = counters.get("inductor", {})
    aot: Mapping[str, int] = counters.get("aot_autograd", {})
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
    hint = (
        "this is the default corpus (the Python standard library): prepare a real one with "
        "`python -m ladder_trainer.prepare` and pass --data"
        if default
        else "give this budget a larger corpus"
    )
    log(
        f"warning: at {tokens / seconds:,.0f} tok/s this {budget:g}s cell will make about {projected:.1f} passes over "
        f"the {len(shards.train):,} training tokens of corpus {corpus}; repeated data: {hint}"
    )


def _peak_memory(world: World, device: torch.device) -> int | None:
    """The largest peak over the ranks: the memory a cell of this shape needs per GPU."""
    own = peak_memory(device)
    return int(world.max(float(own or 0))[0]) or None


def _mfu(flops: float, seconds: float, device: torch.device, processes: int = 1) -> float | None:
    """All processes' training FLOPs over all their GPUs' peak (the GPUs are alike in a cell)."""
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    return flops / (seconds * peak * processes) if peak and seconds > 0 else None


def save_checkpoint(
    out: Path, weights: dict, cfg: TrainConfig, shards: data_mod.Shards, seed: int, result: CellResult
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": weights, "config": cfg.to_dict(), "vocab_size": shards.vocab_size}, out / "model.pt")
    (out / "config.json").write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "seed": seed,
                "vocab_size": shards.vocab_size,
                "corpus": str(shards.path),
                "val_bpb": result.value,
                "steps": result.steps,
            },
            indent=2,
        )
    )
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
        raise ConfigError(
            f"--init-from {path}: the checkpoint's model has another shape: {str(exc).splitlines()[0]}"
        ) from None
    log(f"initialised from {file}")
