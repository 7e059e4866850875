"""Optimizers and the time-based learning-rate schedule.

Parameter groups: block matrices (matrix_lr, weight decay), the embedding (embedding_lr) and
the output head (unembedding_lr). With optimizer "muon" the block matrices go to Muon
(momentum + Newton-Schulz orthogonalisation) and the rest to AdamW. Every group remembers
its base lr in "initial_lr"; the schedule scales it by a multiplier of training progress.

On CUDA, AdamW is torch's fused implementation. Elsewhere it is PlainAdamW, the same update
(a test checks it against torch.optim.AdamW): constructing any torch.optim optimizer imports
torch._dynamo, which cost 2-9 s of start-up per CPU cell on a busy machine, more than a demo
cell's whole budget.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from .config import TrainConfig

if TYPE_CHECKING:
    from .model import GPT


def lr_multiplier(progress: float, cfg: TrainConfig, warmed: bool = False) -> float:
    """Multiplier at `progress` = elapsed training seconds / budget (linear warmup, flat, linear
    warmdown). `warmed`: the warm-up is behind already (a cell that continues its predecessor's
    stable phase: a longer budget must not send it back into a longer warm-up)."""
    p = min(max(progress, 0.0), 1.0)
    if cfg.warmup_frac > 0 and p < cfg.warmup_frac and not warmed:
        return max(p / cfg.warmup_frac, 0.01)
    if cfg.warmdown_frac > 0 and p > 1 - cfg.warmdown_frac:
        w = (1 - p) / cfg.warmdown_frac
        return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * w
    return 1.0


def build_optimizers(model: GPT, cfg: TrainConfig, device_type: str) -> list:
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.")]
    embed = [model.embed.weight]
    head = [] if cfg.tie_embeddings else [model.head.weight]
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    groups: list[dict[str, Any]] = [dict(params=embed, lr=cfg.embedding_lr, weight_decay=0.0)]
    if head:
        groups.append(dict(params=head, lr=cfg.unembedding_lr, weight_decay=0.0))
    optimizers: list = []
    if cfg.optimizer == "muon":
        optimizers.append(
            Muon(matrices, lr=cfg.resolved_matrix_lr(), momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay)
        )
    else:
        groups.append(dict(params=matrices, lr=cfg.resolved_matrix_lr(), weight_decay=cfg.weight_decay))
    if device_type == "cuda":
        optimizers.insert(0, torch.optim.AdamW(groups, betas=betas, eps=1e-10, fused=True))
    else:
        optimizers.insert(0, PlainAdamW(groups, betas=betas, eps=1e-10))
    for opt in optimizers:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return optimizers


def set_lr(optimizers: list, multiplier: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * multiplier


@torch.no_grad()
def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalise G (the quintic iteration from Keller Jordan's Muon)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = X.size(0) > X.size(1)
    if transposed:
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X.to(G.dtype)


def orthogonalised(g: torch.Tensor) -> torch.Tensor:
    """newton_schulz of a whole matrix, also when g is one rank's rows of it (an FSDP2 DTensor):
    the iteration needs every row, so it runs on the gathered matrix and keeps this rank's rows.
    Under DDP every rank holds the whole averaged gradient and computes the same update."""
    if not hasattr(g, "full_tensor"):
        return newton_schulz(g)
    from torch.distributed.tensor import DTensor, distribute_tensor

    assert isinstance(g, DTensor)  # only a DTensor has full_tensor
    full = newton_schulz(g.full_tensor())
    try:  # every rank computed the same matrix: cut it locally rather than scatter rank 0's
        return distribute_tensor(full, g.device_mesh, g.placements, src_data_rank=None)
    except TypeError:  # torch before 2.6 knows no src_data_rank
        return distribute_tensor(full, g.device_mesh, g.placements)


class LightOptimizer:
    """The part of torch.optim.Optimizer this trainer uses (param_groups, state, add_param_group,
    state_dict/load_state_dict for undoing the warm-up), without importing torch._dynamo."""

    def __init__(self, params, defaults: dict):
        self.defaults = defaults
        self.param_groups: list[dict] = []
        self.state: dict = {}
        params = list(params)
        for group in params if params and isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        self.param_groups.append({**self.defaults, **group, "params": list(group["params"])})

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        index = {p: i for i, p in enumerate(self._params())}
        return {
            "state": {
                index[p]: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
                for p, st in self.state.items()
            },
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        params = self._params()
        self.state = {
            params[i]: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
            for i, st in state_dict["state"].items()
        }
        for g, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            g.update(saved)


class PlainAdamW(LightOptimizer):
    """AdamW (decoupled weight decay, bias correction), as torch.optim.AdamW computes it."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                st["step"] += 1
                if wd:
                    p.mul_(1 - lr * wd)
                st["exp_avg"].lerp_(p.grad, 1 - beta1)
                st["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                bias1, bias2 = 1 - beta1 ** st["step"], 1 - beta2 ** st["step"]
                denom = (st["exp_avg_sq"].sqrt() / math.sqrt(bias2)).add_(eps)
                p.addcdiv_(st["exp_avg"], denom, value=-lr / bias1)


class Muon(LightOptimizer):
    """Momentum with orthogonalised updates for 2-D weights (one process, DDP or FSDP2)."""

    def __init__(
        self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0, nesterov: bool = True
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = orthogonalised(g)
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)
