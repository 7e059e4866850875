"""The GPT: pre-norm transformer with RMSNorm, rotary embeddings, QK-norm, ReLU^2 MLP and
scaled_dot_product_attention (flash kernels on GPUs).

Norms carry no weights and linear layers no biases, so every trainable tensor is either an
embedding, the output head or a 2-D block matrix; the optimizer groups rely on that.
Output projections start at zero, so each block starts as the identity: that is what lets
progressive growth insert new blocks mid-run without disturbing the function.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TrainConfig


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, T, 1, D/2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, width: int, n_head: int, head_dim: int):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.qkv = nn.Linear(width, 3 * n_head * head_dim, bias=False)
        self.proj = nn.Linear(n_head * head_dim, width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(dim=2)
        q, k = rms_norm(q).to(v.dtype), rms_norm(k).to(v.dtype)  # autocast may keep norms in fp32
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: int):
        super().__init__()
        self.up = nn.Linear(width, ratio * width, bias=False)
        self.down = nn.Linear(ratio * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.attn = Attention(cfg.width, cfg.n_head, cfg.head_dim)
        self.mlp = MLP(cfg.width, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // 64) * 64  # tensor-core friendly; padded rows are never targets


class GPT(nn.Module):
    # register_buffer's tensors, typed for readers (nn.Module's __getattr__ says Tensor | Module).
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, cfg: TrainConfig, vocab_size: int, depth: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        v = padded_vocab(vocab_size)
        self.embed = nn.Embedding(v, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth or cfg.depth))
        self.head = nn.Linear(cfg.width, v, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.checkpointing = cfg.activation_checkpointing
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        width = self.cfg.width
        bound = math.sqrt(3.0 / width)
        for block in self.blocks:
            init_block(cast(Block, block), bound)
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(width))
        else:
            nn.init.normal_(self.embed.weight, std=1.0)
            nn.init.normal_(self.head.weight, std=0.001)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, vocab) without targets; otherwise the cross-entropy in nats."""
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = rms_norm(self.embed(idx))
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        logits = self.head(rms_norm(x))[..., : self.vocab_size].float()
        if self.cfg.logit_softcap > 0:
            c = self.cfg.logit_softcap
            logits = c * torch.tanh(logits / c)
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)

    @torch.no_grad()
    def grow(self, depth: int) -> None:
        """Append blocks up to `depth`; they start as the identity (zero output projections)."""
        device = self.embed.weight.device
        bound = math.sqrt(3.0 / self.cfg.width)
        while len(self.blocks) < depth:
            block = Block(self.cfg).to(device)
            init_block(block, bound)
            self.blocks.append(block)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x (matmul params) + attention scores (PaLM appendix B)."""
        matmul = sum(p.numel() for n, p in self.named_parameters() if n.startswith("blocks."))
        matmul += self.head.weight.numel()
        attn = 12 * len(self.blocks) * self.cfg.width * seq_len
        return 6 * matmul + attn


def init_block(block: Block, bound: float) -> None:
    nn.init.uniform_(block.attn.qkv.weight, -bound, bound)
    nn.init.uniform_(block.mlp.up.weight, -bound, bound)
    nn.init.zeros_(block.attn.proj.weight)
    nn.init.zeros_(block.mlp.down.weight)
