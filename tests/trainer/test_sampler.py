"""Training windows over many shards: by seed and rank, inside one shard, every shard reachable."""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")

from ladder_trainer.data import TokenSplit  # noqa: E402
from ladder_trainer.sampler import WindowSampler  # noqa: E402


def shards(tmp_path, lengths: list[int]) -> TokenSplit:
    """Shard i holds the value i in every position, so a window shows which shard it came from."""
    files = []
    for i, n in enumerate(lengths):
        p = tmp_path / f"train-{i:06d}.bin"
        np.full(n, i, dtype=np.uint16).tofile(p)
        files.append((p, n))
    return TokenSplit(files, np.uint16)


def test_one_shard_draws_what_the_single_file_trainer_drew(tmp_path):
    tokens = np.arange(5000, dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    split = TokenSplit([(tmp_path / "train.bin", 5000)], np.uint16)
    rng = np.random.default_rng(7)
    before = []
    for _ in range(3):  # the trainer's Batches before shards: starts from default_rng(seed) over one array
        starts = rng.integers(0, 5000 - 32 - 1, size=4)
        before.append(np.stack([tokens[s : s + 33] for s in starts]).astype(np.int64))
    sampler = WindowSampler(split, 32, 4, seed=7)
    for expected in before:
        assert np.array_equal(sampler.next(), expected)


def test_windows_stay_inside_one_shard_and_reach_every_shard_by_length(tmp_path):
    split = shards(tmp_path, [1000, 3000, 40, 2000])  # shard 2 is shorter than a window
    sampler = WindowSampler(split, 63, 256, seed=1)
    seen = np.concatenate([sampler.next() for _ in range(40)])
    assert all(len(set(w.tolist())) == 1 for w in seen)  # one shard per window
    counts = np.bincount(seen[:, 0], minlength=4)
    assert counts[2] == 0 and min(counts[0], counts[1], counts[3]) > 0
    share = counts / counts.sum()
    valid = np.array([1000 - 64, 3000 - 64, 0, 2000 - 64]) / (1000 + 3000 + 2000 - 3 * 64)
    assert np.allclose(share, valid, atol=0.03)


def test_ranks_read_different_windows_and_each_rank_is_reproducible(tmp_path):
    split = shards(tmp_path, [10_000])
    np.arange(10_000, dtype=np.uint16).tofile(split.files[0][0])
    draw = lambda rank: WindowSampler(split, 16, 8, seed=3, rank=rank, world_size=4).next()  # noqa: E731
    assert np.array_equal(draw(2), draw(2))
    assert len({draw(r)[:, 0].tobytes() for r in range(4)}) == 4
    with pytest.raises(ValueError, match="rank 4"):
        WindowSampler(split, 16, 8, seed=3, rank=4, world_size=4)


def test_a_window_longer_than_every_shard_is_an_error_naming_seq_len(tmp_path):
    with pytest.raises(ValueError, match="seq_len: 128"):
        WindowSampler(shards(tmp_path, [100, 50]), 128, 4, seed=0)


def test_ranks_together_draw_the_micro_batches_one_process_draws(tmp_path):
    split = shards(tmp_path, [10_000])
    np.arange(10_000, dtype=np.uint16).tofile(split.files[0][0])
    one = WindowSampler(split, 16, 2, seed=5)
    ranks = [WindowSampler(split, 16, 2, seed=5, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):  # micro-batch g of the single stream is micro-batch g // 3 of rank g % 3
        for r in range(3):
            assert np.array_equal(one.next(), ranks[r].next())
