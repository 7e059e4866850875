"""Optimizers and the time-based learning-rate schedule.

Parameter groups: block matrices (matrix_lr, weight decay), the embedding (embedding_lr) and
the output head (unembedding_lr). With optimizer "muon" the block matrices go to Muon
(momentum + Newton-Schulz orthogonalisation) and the rest to AdamW. Every group remembers
its base lr in "initial_lr"; the schedule scales it by a multiplier of training progress.
"""

from __future__ import annotations

import torch

from .config import TrainConfig


def lr_multiplier(progress: float, cfg: TrainConfig) -> float:
    """Multiplier at `progress` = elapsed training seconds / budget (linear warmup, flat, linear warmdown)."""
    p = min(max(progress, 0.0), 1.0)
    if cfg.warmup_frac > 0 and p < cfg.warmup_frac:
        return max(p / cfg.warmup_frac, 0.01)
    if cfg.warmdown_frac > 0 and p > 1 - cfg.warmdown_frac:
        w = (1 - p) / cfg.warmdown_frac
        return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * w
    return 1.0


def build_optimizers(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> list[torch.optim.Optimizer]:
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.")]
    embed = [model.embed.weight]
    head = [] if cfg.tie_embeddings else [model.head.weight]
    adam_kwargs = dict(betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-10)
    if device_type == "cuda":
        adam_kwargs["fused"] = True
    groups = [dict(params=embed, lr=cfg.embedding_lr, weight_decay=0.0)]
    if head:
        groups.append(dict(params=head, lr=cfg.unembedding_lr, weight_decay=0.0))
    optimizers: list[torch.optim.Optimizer] = []
    if cfg.optimizer == "muon":
        optimizers.append(Muon(matrices, lr=cfg.resolved_matrix_lr(), momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay))
    else:
        groups.append(dict(params=matrices, lr=cfg.resolved_matrix_lr(), weight_decay=cfg.weight_decay))
    optimizers.insert(0, torch.optim.AdamW(groups, **adam_kwargs))
    for opt in optimizers:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return optimizers


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
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


class Muon(torch.optim.Optimizer):
    """Momentum with orthogonalised updates for 2-D weights (single device)."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0, nesterov: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = newton_schulz(g)
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)
        return None
