"""val_bpb: summed cross-entropy (nats) / (ln 2 x UTF-8 bytes), checked against hand computations."""

from __future__ import annotations

import contextlib
import math

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from ladder_trainer.config import parse_config  # noqa: E402
from ladder_trainer.data import BPETokenizer, ByteTokenizer  # noqa: E402
from ladder_trainer.model import GPT  # noqa: E402
from ladder_trainer.train import evaluate  # noqa: E402

CPU = torch.device("cpu")


def tiny_model(vocab: int, seq_len: int = 8) -> GPT:
    torch.manual_seed(0)
    cfg = parse_config({"depth": 1, "aspect_ratio": 16, "head_dim": 8, "seq_len": seq_len, "tokenizer": "byte"})
    return GPT(cfg, vocab)


def test_uniform_model_gives_log2_vocab_bits_per_token():
    model = tiny_model(257)
    for p in model.parameters():
        p.data.zero_()  # all logits 0: every token costs ln(257) nats
    val = np.array([104, 105, 256, 33, 104, 105, 256, 10, 200, 201, 202, 203, 256, 65], dtype=np.uint16)
    token_bytes = ByteTokenizer().token_bytes()
    n = 11  # targets val[1..11]: two of them are end-of-text (no bytes, left out)
    ev = evaluate(model, val, token_bytes, n, seq_len=4, rows=2, device=CPU, autocast=contextlib.nullcontext())
    assert ev["tokens"] == n and ev["bytes"] == 9
    assert ev["val_bpb"] == pytest.approx(9 * math.log(257) / (math.log(2) * 9))


def test_val_bpb_matches_a_hand_computed_cross_entropy():
    """A random model over 3 windows (the last one shorter), computed token by token."""
    model = tiny_model(300, seq_len=8).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.5)
    rng = np.random.default_rng(1)
    val = rng.integers(0, 300, size=40).astype(np.uint16)
    token_bytes = rng.integers(0, 4, size=300).astype(np.int32)  # some tokens stand for 0 bytes
    n = 19  # windows of 8, 8 and 3 targets
    ev = evaluate(model, val, token_bytes, n, seq_len=8, rows=4, device=CPU, autocast=contextlib.nullcontext())

    nats, n_bytes = 0.0, 0
    x = torch.from_numpy(val.astype(np.int64))
    for start in (0, 8, 16):
        length = min(8, n - start)
        logits = model(x[start : start + length][None])[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(length):
            target = int(val[start + t + 1])
            if token_bytes[target] > 0:
                nats -= float(logp[t, target].detach())
            n_bytes += int(token_bytes[target])
    assert ev["bytes"] == n_bytes
    assert ev["val_bpb"] == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)


def test_eval_token_count_is_fixed_whatever_the_seq_len():
    val = np.arange(100, dtype=np.uint16) % 200
    tb = np.ones(300, dtype=np.int32)
    for seq_len in (4, 7, 16):
        model = tiny_model(300, seq_len=seq_len).eval()
        ev = evaluate(model, val, tb, 50, seq_len=seq_len, rows=3, device=CPU, autocast=contextlib.nullcontext())
        assert (ev["tokens"], ev["bytes"]) == (50, 50)


def test_bpe_token_bytes_add_up_to_the_utf8_length():
    text = ["def f(x):\n    return x * 2  # ünïcødé ✓\n", "class A:\n    pass\n"] * 20
    tok = BPETokenizer.train(iter(text), vocab_size=320)
    tb = tok.token_bytes()
    assert tb[tok.eot] == 0
    for doc in text[:2] + ["naïve 東京 \t\n"]:
        ids = tok.encode_batch([doc])[0]
        assert int(tb[ids].sum()) == len(doc.encode("utf-8"))
