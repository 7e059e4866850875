"""Training windows drawn from every shard of a split: by seed, and by rank for multi-process cells.

A window is seq_len + 1 consecutive tokens inside one shard. Its start is uniform over every
valid start of every shard (shards weigh by their length), so a corpus cut into many shards is
sampled as if it were one file. There is one stream of micro-batches per seed
(`default_rng(seed)`), dealt out round-robin: rank r of a world of size w takes micro-batches
r, r + w, r + 2w, ... So ranks read different windows, w ranks together read exactly the
micro-batches one process would (a multi-process cell trains on the same data as a
single-process one, which is what lets a test compare them step by step), and a
single-process cell draws exactly what the trainer drew before shards existed (a single
shard, `default_rng(seed)`), so old results stay reproducible. Each rank draws the others'
starts too and drops them: w times a few random integers per micro-batch.
"""

from __future__ import annotations

from typing import Any

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
            raise ValueError(
                f"seq_len: {seq_len} is longer than every training shard "
                f"(longest {int(split.lengths.max(initial=0))} tokens)"
            )
        self.cum = np.concatenate([[0], np.cumsum(starts)]).astype(np.int64)
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def state(self) -> dict[str, Any]:
        """Where the stream is (the generator's state: plain ints and strings), to resume it."""
        return dict(self.rng.bit_generator.state)

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def next(self) -> np.ndarray:
        """int64[rows, seq_len + 1]: this rank's next micro-batch of the shared stream."""
        for r in range(self.world_size):
            drawn = self.rng.integers(0, int(self.cum[-1]), size=self.rows)
            if r == self.rank:
                g = drawn
        shard = np.searchsorted(self.cum, g, side="right") - 1
        local = g - self.cum[shard]
        n = self.seq_len + 1
        rows = [self.split.shard(int(s))[o : o + n] for s, o in zip(shard, local, strict=True)]
        return np.stack(rows).astype(np.int64)
