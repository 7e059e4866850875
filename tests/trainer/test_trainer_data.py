"""Corpora and token shards: user text/JSONL, a user tokenizer, pre-tokenized shards, caching."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.torch
np = pytest.importorskip("numpy")
pytest.importorskip("tokenizers")

from ladder_trainer import data  # noqa: E402
from ladder_trainer.config import Settings, parse_config  # noqa: E402

from .conftest import TINY  # noqa: E402


def test_text_corpus_split_is_by_document_and_bytes_add_up(corpus):
    shards = data.prepare("byte", 256, str(corpus))
    n_val_docs = sum(data.is_val(p.name) for p in corpus.iterdir())
    assert shards.meta["val_docs"] == max(n_val_docs, 1)
    assert shards.meta["train_docs"] + shards.meta["val_docs"] == 40
    total = sum(len(p.read_bytes()) for p in corpus.iterdir())
    counted = int(shards.token_bytes[np.asarray(shards.train)].sum() + shards.token_bytes[np.asarray(shards.val)].sum())
    assert counted == total
    assert data.prepare("byte", 256, str(corpus)).path == shards.path  # cached


def test_jsonl_corpus_with_bpe(tmp_path):
    rows = [{"text": f"def f{i}(x):\n    return x + {i}  # ü\n" * 5, "id": i} for i in range(60)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    shards = data.prepare("bpe", 300, str(tmp_path / "c.jsonl"))
    assert shards.vocab_size == 300 and shards.token_bytes[shards.eot] == 0
    assert (shards.path / "tokenizer.json").exists()
    total = sum(len(r["text"].encode()) for r in rows)
    assert (
        int(shards.token_bytes[np.asarray(shards.train)].sum() + shards.token_bytes[np.asarray(shards.val)].sum())
        == total
    )


def test_jsonl_without_the_text_field_is_an_error_naming_it(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="'text'"):
        data.prepare("byte", 256, str(tmp_path / "c.jsonl"))


def test_pre_tokenized_shards_are_used_as_they_are(corpus, tmp_path):
    from ladder_trainer.train import run

    built = data.prepare("byte", 256, str(corpus))
    user = tmp_path / "shards"
    user.mkdir()
    for name in ("meta.json", "train.bin", "val.bin", "token_bytes.npy"):
        (user / name).write_bytes((built.path / name).read_bytes())
    out = run(parse_config(TINY), 0, 60, Settings(data=str(user), eval_tokens=256, max_steps=2))
    assert out.status == "ok"


def test_a_user_tokenizer_file(corpus, tmp_path):
    tok = data.BPETokenizer.train(iter([p.read_text() for p in corpus.iterdir()]), 400)
    tok.tok.save(str(tmp_path / "tok.json"))
    shards = data.prepare("bpe", 8192, str(corpus), tokenizer_file=str(tmp_path / "tok.json"))
    assert shards.vocab_size == 400 and shards.meta["tokenizer"].startswith("file:")


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        data.prepare("byte", 256, str(tmp_path / "nope"))


def test_cli_missing_data_exits_2(tmp_path):
    from ladder_trainer.cli import main
    from promotion_ladder.core.contract import EXIT_BAD_CONFIG
    from promotion_ladder.core.result import parse_result

    out = tmp_path / "r.json"
    code = main(
        ["--config", json.dumps(TINY), "--budget", "5s", "--data", str(tmp_path / "nope"), "--result-file", str(out)]
    )
    assert code == EXIT_BAD_CONFIG
    assert "nope" in parse_result(out.read_text()).message


TINY_CORPORA = {
    # documents by name -> (train docs, val docs) or an error; no name here hashes into val
    "one document is too few": ({"a.txt": "only one"}, "at least two"),
    "the last document is held out when none falls in val": ({"a.txt": "first doc", "b.txt": "second doc"}, (1, 1)),
}


@pytest.mark.parametrize("files,expected", TINY_CORPORA.values(), ids=TINY_CORPORA.keys())
def test_tiny_corpora(tmp_path, files, expected):
    assert not any(data.is_val(name) for name in files)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            data.prepare("byte", 256, str(tmp_path))
        return
    shards = data.prepare("byte", 256, str(tmp_path))
    assert (shards.meta["train_docs"], shards.meta["val_docs"]) == expected
    assert bytes(np.asarray(shards.val)[:-1].tolist()).decode() == "second doc"
    assert bytes(np.asarray(shards.train)[:-1].tolist()).decode() == "first doc"
