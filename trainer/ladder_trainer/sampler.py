"""Training windows drawn from every shard of a split: by seed, and by rank for multi-process cells.

A window is seq_len + 1 consecutive tokens inside one shard. Its start is uniform over every
valid start of every shard (shards weigh by their length), so a corpus cut into many shards is
sampled as if it were one file. Rank r of a world of size w draws from its own random stream
(seed, r): ranks read different windows, and rank 0 of a single-process cell draws exactly
what the trainer drew before shards existed (a single shard, `default_rng(seed)`), so old
results stay reproducible.
"""

from __future__ import annotations

import numpy as np

from .data import TokenSplit


class WindowSampler:
    def __init__(self, split: TokenSplit, seq_len: int, rows: int, seed: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.split, self.seq_len, self.rows = split, seq_len, rows
        self.seed, self.rank, self.world_size = seed, rank, world_size
        # Valid starts per shard; a shard shorter than a window contributes none.
        starts = np.maximum(split.lengths - seq_len - 1, 0)
        if starts.sum() <= 0:
            raise ValueError(f"seq_len: {seq_len} is longer than every training shard (longest {int(split.lengths.max(initial=0))} tokens)")
        self.cum = np.concatenate([[0], np.cumsum(starts)]).astype(np.int64)
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed if self.rank == 0 else [self.seed, self.rank])

    def next(self) -> np.ndarray:
        """int64[rows, seq_len + 1]."""
        g = self.rng.integers(0, int(self.cum[-1]), size=self.rows)
        shard = np.searchsorted(self.cum, g, side="right") - 1
        local = g - self.cum[shard]
        n = self.seq_len + 1
        return np.stack([self.split.shard(int(s))[o : o + n] for s, o in zip(shard, local)]).astype(np.int64)
