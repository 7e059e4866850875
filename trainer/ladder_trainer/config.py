"""The candidate config: the keys a ladder's candidate may set, their types and defaults.

Strict on purpose: a typo in a candidate config would otherwise silently train the default
model in every cell of a ladder. Unknown keys and wrong types raise ConfigError naming the
key (the CLI turns it into exit code 2). Pure Python, no torch, so it can be validated cheaply.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A candidate config or trainer setting that cannot be used; the message names the key."""


@dataclass(frozen=True)
class TrainConfig:
    # Model shape. width = depth * aspect_ratio, rounded up to a multiple of head_dim.
    depth: int = 4
    aspect_ratio: int = 64
    head_dim: int = 64
    mlp_ratio: int = 4
    seq_len: int = 1024
    tokenizer: str = "bpe"  # "bpe" (trained locally on the corpus) or "byte"
    vocab_size: int = 8192  # BPE vocabulary size (ignored for "byte": 256 bytes + end-of-text)
    tie_embeddings: bool = False
    logit_softcap: float = 15.0  # 0 disables
    # Batch. batch = tokens per optimizer step; device_batch = sequences per micro-batch.
    # 0 means "pick for the device": see resolve().
    batch: int = 0
    device_batch: int = 0
    # Optimizer and schedule. LR multipliers follow elapsed training time / budget.
    optimizer: str = "adamw"  # "adamw" or "muon" (Muon for block matrices, AdamW for the rest)
    matrix_lr: float = 0.0  # 0 = optimizer default: adamw 3e-3, muon 0.02
    embedding_lr: float = 0.01
    unembedding_lr: float = 0.003
    weight_decay: float = 0.0  # on block matrices only
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    muon_momentum: float = 0.95
    grad_clip: float = 1.0  # 0 disables
    warmup_frac: float = 0.0
    warmdown_frac: float = 0.4
    final_lr_frac: float = 0.0
    activation_checkpointing: bool = False
    # Progressive depth growth: train with grow_from_depth layers until grow_at_frac of the
    # budget, then insert the remaining layers (initialised as identity) and continue.
    grow_from_depth: int = 0  # 0 disables
    grow_at_frac: float = 0.3

    # ---- derived values -------------------------------------------------------------
    @property
    def width(self) -> int:
        w = self.depth * self.aspect_ratio
        return -(-w // self.head_dim) * self.head_dim

    @property
    def n_head(self) -> int:
        return self.width // self.head_dim

    def resolved_matrix_lr(self) -> float:
        if self.matrix_lr > 0:
            return self.matrix_lr
        return 0.02 if self.optimizer == "muon" else 3e-3

    def resolve(self, device_type: str, world_size: int = 1) -> TrainConfig:
        """Fill the device-dependent defaults (batch sizes) and return a complete config.

        `batch` is the global batch (tokens per optimizer step, all processes together), so a
        candidate trains the same with one process or eight; each of the `world_size`
        processes takes an equal share of the micro-batches.
        """
        batch, device_batch = self.batch, self.device_batch
        # 64Ki tokens per micro-batch fits d12 at seq 2048 on an 80 GB GPU in bf16; on a CPU, short
        # micro-batches keep the budget check (once per micro-batch) fine-grained.
        cap = max(1, (2**16 if device_type == "cuda" else 2048) // self.seq_len)
        if batch == 0:
            batch = (
                max(self.seq_len, 2**18 // self.seq_len * self.seq_len) if device_type == "cuda" else 4 * self.seq_len
            )
            # Auto batch splits evenly over the processes (a no-op for power-of-two counts).
            batch = max(1, batch // (self.seq_len * world_size)) * self.seq_len * world_size
        if device_batch == 0:
            share = max(1, batch // self.seq_len // world_size)  # sequences per process per step
            device_batch = min(share, cap)
            while share % device_batch:  # the largest micro-batch up to the cap that divides the share
                device_batch -= 1
        tokens_per_micro = device_batch * self.seq_len
        if batch % (tokens_per_micro * world_size) != 0:
            if world_size == 1:
                raise ConfigError(
                    f"batch: {batch} tokens per step is not a multiple of device_batch x seq_len "
                    f"= {device_batch} x {self.seq_len} = {tokens_per_micro}; change batch or device_batch"
                )
            raise ConfigError(
                f"batch: {batch} tokens per step is not a multiple of device_batch x seq_len x processes "
                f"= {device_batch} x {self.seq_len} x {world_size} = {tokens_per_micro * world_size} (each of the "
                f"{world_size} processes takes an equal share of the micro-batches); change batch or device_batch"
            )
        return dataclasses.replace(self, batch=batch, device_batch=device_batch)

    @property
    def grad_accum(self) -> int:
        return self.batch // (self.device_batch * self.seq_len)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Settings:
    """Trainer-level settings: the same for every cell of a ladder, not part of a candidate."""

    device: str = "auto"
    # CPU threads for torch. 1 by default: cells often share a small machine, and OpenMP
    # threads competing for busy cores made CPU steps 30x slower in practice.
    threads: int = 1
    data: str | None = None  # text/JSONL/parquet file or directory, or a token-shard directory
    tokenizer_file: str | None = None  # a tokenizers JSON file to use instead of training a BPE
    text_field: str = "text"
    eval_tokens: int = 0  # 0 = device default (train.EVAL_TOKENS_DEFAULT)
    compile: str = "auto"  # auto (on for CUDA) | on | off
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    attention: str = "auto"  # SDPA backend tried first: auto (torch's order) | cudnn | flash | efficient | math
    warmup_steps: int = -1  # untimed steps to trigger compilation; -1 = auto (2 when compiling)
    progress_interval: float = 30.0
    log_interval: float = 10.0
    checkpoint_dir: str | None = None
    init_from: str | None = None  # a --checkpoint-dir of an earlier cell: start from its weights
    max_steps: int = 0  # 0 = until the budget is spent
    # A continuing cell's flat phase ends after this many optimizer steps instead of at (1 -
    # warmdown_frac) of the budget: a test aid that puts the stable checkpoint at a known step.
    stable_steps: int = 0
    fault: str | None = None  # test aid: "KIND:ARG[@RANK]", see hooks.parse_fault
    step_log: str | None = None  # a JSON line per optimizer step (rank 0): step, loss, lr, elapsed, tokens
    # Whether `python -m ladder_trainer` starts its processes through torch.distributed.run: auto
    # (when LADDER_GPUS x LADDER_NODES > 1), always (even for one process), never (one process).
    launch: str = "auto"
    # How several processes share the model: ddp (each holds all of it; gradients all-reduced)
    # or fsdp (FSDP2 fully_shard: parameters, gradients and optimizer state sharded, for models
    # whose training state does not fit one GPU). One process ignores it.
    parallel: str = "ddp"

    def __post_init__(self) -> None:
        if self.eval_tokens < 0:
            raise ConfigError(f"eval tokens must be positive (or 0 for the device default), got {self.eval_tokens}")


_CHOICES = {"tokenizer": ("bpe", "byte"), "optimizer": ("adamw", "muon")}
# Range checks by key; deliberately loose (they catch typos, not bad ideas).
_POSITIVE_INT = ("depth", "aspect_ratio", "head_dim", "mlp_ratio", "seq_len")
_NON_NEGATIVE_INT = ("batch", "device_batch", "grow_from_depth")
_NON_NEGATIVE_FLOAT = (
    "logit_softcap",
    "matrix_lr",
    "embedding_lr",
    "unembedding_lr",
    "weight_decay",
    "grad_clip",
)
_FRACTIONS = (
    "adam_beta1",
    "adam_beta2",
    "muon_momentum",
    "warmup_frac",
    "warmdown_frac",
    "final_lr_frac",
    "grow_at_frac",
)


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def parse_config(raw: str | dict[str, Any]) -> TrainConfig:
    """Validate a candidate config (a JSON object or a dict) into a TrainConfig."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ConfigError(f"the config is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a JSON object, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"config key {key!r} is not known to the trainer; known keys: {', '.join(sorted(known))}")
        values[key] = _check_type(key, value, known[key].type)
    for key, value in values.items():
        _check_range(key, value)
    cfg = TrainConfig(**values)
    if cfg.tokenizer == "byte" and "vocab_size" in values and values["vocab_size"] != 256:
        raise ConfigError("vocab_size: the byte tokenizer has 256 byte tokens; drop vocab_size or use tokenizer 'bpe'")
    if cfg.tokenizer == "bpe" and cfg.vocab_size < 512:
        raise ConfigError(f"vocab_size: {cfg.vocab_size} is too small for BPE; use at least 512 or tokenizer 'byte'")
    if cfg.head_dim % 2:
        raise ConfigError(f"head_dim: {cfg.head_dim} must be even (rotary embeddings rotate pairs)")
    if cfg.warmup_frac + cfg.warmdown_frac > 1:
        raise ConfigError("warmup_frac + warmdown_frac must be at most 1")
    if cfg.grow_from_depth and cfg.grow_from_depth >= cfg.depth:
        raise ConfigError(
            f"grow_from_depth: {cfg.grow_from_depth} must be smaller than depth {cfg.depth} (or 0 to disable)"
        )
    return cfg


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    kind = annotation if isinstance(annotation, str) else annotation.__name__
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if kind == "int":
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(_CHOICES[key])}, got {value!r}")
        return value
    raise AssertionError(f"unhandled type {kind} for {key}")


def _check_range(key: str, value: Any) -> None:
    if key in _POSITIVE_INT and value < 1:
        raise ConfigError(f"config key {key!r} must be at least 1, got {value}")
    if key in _NON_NEGATIVE_INT and value < 0:
        raise ConfigError(f"config key {key!r} must be 0 (auto) or positive, got {value}")
    if key in _NON_NEGATIVE_FLOAT and value < 0:
        raise ConfigError(f"config key {key!r} must not be negative, got {value}")
    if key in _FRACTIONS and not 0 <= value <= 1:
        raise ConfigError(f"config key {key!r} must be between 0 and 1, got {value}")
    if key == "vocab_size" and not 256 <= value <= 2**20:
        raise ConfigError(f"config key 'vocab_size' must be between 256 and 1048576, got {value}")
