"""`python -m ladder_trainer.prepare`: every input kind round-trips; interrupted runs resume to the
same bytes; memory stays flat as the corpus grows; a cell on prepared shards says what it read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("tokenizers")

from ladder_trainer import prepare  # noqa: E402
from ladder_trainer.data import EOT_TEXT, BPETokenizer, Shards  # noqa: E402

from .conftest import ROOT, TINY  # noqa: E402

SNIPPETS = [
    "def f(x):\n    return x * 2\n",
    "Grüße aus Köln — naïve café ☕\n",
    "# Title\n\nSome *Markdown* text.\r\n",
    "日本語のテキスト、そして emoji 🚀.\n",
    f"quoting the separator {EOT_TEXT} inside a document\n",
    "\ttabs\tand  spaces  \n",
]


def make_docs(n: int = 160) -> list[str]:
    """Distinct documents (the split hashes content, so duplicates would all fall on one side)."""
    return [f"doc {i}\n" + "".join(SNIPPETS[(i + k) % len(SNIPPETS)] for k in range(1 + i % 7)) for i in range(n)]


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return make_docs()


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory, docs) -> Path:
    tok = BPETokenizer.train(iter(docs), 400)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.tok.save(str(path))
    return path


def _encode_docs(tokenizer_json: Path, docs: list[str]) -> tuple[list[list[int]], int]:
    tok = BPETokenizer.load(tokenizer_json)
    tok.tok.encode_special_tokens = True
    return [e.ids for e in tok.tok.encode_batch(docs, add_special_tokens=False)], tok.eot


# ---- writers for each input kind: (tmp dir, docs, tokenizer.json) -> (inputs, extra args) ----


def write_text_files(d: Path, docs, tok):
    (d / "corpus" / "sub").mkdir(parents=True)
    for i, doc in enumerate(docs):
        name = d / "corpus" / ("sub" if i % 3 == 0 else "") / f"doc{i:03d}{'.md' if i % 2 else '.txt'}"
        name.write_bytes(doc.encode("utf-8"))
    return [str(d / "corpus")], []


def write_jsonl(d: Path, docs, tok):
    (d / "a.jsonl").write_text("".join(json.dumps({"id": i, "content": t}) + "\n" for i, t in enumerate(docs[:90])))
    (d / "b.jsonl").write_text("\n".join(json.dumps({"content": t}) for t in docs[90:]))  # no final newline
    return [str(d / "a.jsonl"), str(d / "b.jsonl")], ["--text-field", "content"]


def write_parquet(d: Path, docs, tok):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), d / "c.parquet", row_group_size=25)
    return [str(d / "c.parquet")], []


def write_nanogpt(d: Path, docs, tok):
    ids, eot = _encode_docs(tok, docs)
    flat = [t for doc in ids for t in (*doc, eot)]  # nanoGPT's prepare.py appends eot to each document
    half = len(flat) // 2
    half = flat.index(eot, half) + 1
    np.array(flat[:half], dtype=np.uint16).tofile(d / "train.bin")
    np.array(flat[half:], dtype=np.uint16).tofile(d / "val.bin")
    return [str(d / "train.bin"), str(d / "val.bin")], ["--tokenizer", str(tok)]


def write_llmc(d: Path, docs, tok):
    ids, eot = _encode_docs(tok, docs)
    flat = [t for doc in ids for t in (eot, *doc)]  # llm.c's fineweb.py puts eot before each document
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, len(flat))
    with open(d / "shard_000000.bin", "wb") as fh:
        fh.write(header.tobytes())
        fh.write(np.array(flat, dtype=np.uint16).tobytes())
    return [str(d / "shard_000000.bin")], ["--tokenizer", str(tok)]


KINDS = {
    "text and Markdown files, BPE trained here": (write_text_files, ["--tokenizer", "bpe", "--vocab-size", "300"]),
    "text files, byte tokenizer": (write_text_files, ["--tokenizer", "byte"]),
    "JSONL with --text-field, given tokenizer.json": (write_jsonl, ["--tokenizer", "{tok}"]),
    "Parquet row groups": (write_parquet, ["--tokenizer", "{tok}"]),
    "nanoGPT flat uint16 .bin + tokenizer.json": (write_nanogpt, []),
    "llm.c shard with header + tokenizer.json": (write_llmc, []),
}


def read_back(out: Path) -> tuple[Counter, int, dict]:
    """Documents decoded from every shard, and the bytes token_bytes says they stand for."""
    shards = Shards.open(out)
    meta = shards.meta
    tok = None if meta["tokenizer"] == "byte" else BPETokenizer.load(out / "tokenizer.json")
    decoded: Counter = Counter()
    counted = 0
    for split in (shards.train, shards.val):
        ids = np.asarray(split).astype(np.int64)
        counted += int(shards.token_bytes[ids].sum())
        assert ids[-1] == shards.eot
        for doc in np.split(ids, np.flatnonzero(ids == shards.eot) + 1)[:-1]:
            body = doc[:-1].tolist()
            decoded[
                bytes(body).decode("utf-8") if tok is None else tok.tok.decode(body, skip_special_tokens=False)
            ] += 1
    return decoded, counted, meta


@pytest.mark.parametrize("writer,args", KINDS.values(), ids=KINDS.keys())
def test_each_input_kind_round_trips_and_token_bytes_add_up(tmp_path, docs, tokenizer_json, writer, args):
    inputs, extra = writer(tmp_path, docs, tokenizer_json)
    out = tmp_path / "out"
    argv = [
        *inputs,
        "--output",
        str(out),
        "--workers",
        "1",
        "--shard-mb",
        "0.004",
        "--val-permille",
        "100",
        "--quiet",
        *[a.replace("{tok}", str(tokenizer_json)) for a in args + extra],
    ]
    assert prepare.main(argv) == 0
    decoded, counted, meta = read_back(out)
    assert decoded == Counter(docs)
    assert counted == sum(len(d.encode("utf-8")) for d in docs)
    assert meta["train_docs"] + meta["val_docs"] == len(docs) and meta["val_docs"] > 0
    assert len(meta["shards"]["train"]) > 1  # the small --shard-mb cut the input into several units
    assert meta["dtype"] == "uint16" and len(meta["corpus"]) == 12


def test_the_val_split_is_by_content_and_stable_when_the_corpus_grows(tmp_path, docs):
    small, grown = tmp_path / "small", tmp_path / "grown"
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[:80]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in reversed(docs)))
    common = ["--tokenizer", "byte", "--workers", "1", "--quiet", "--val-permille", "200"]
    assert prepare.main([str(tmp_path / "a.jsonl"), "--output", str(small), *common]) == 0
    assert prepare.main([str(tmp_path / "b.jsonl"), "--output", str(grown), *common]) == 0

    def val_docs(out):
        ids = np.asarray(Shards.open(out).val)
        return {bytes(d[:-1].tolist()).decode() for d in np.split(ids, np.flatnonzero(ids == 256) + 1)[:-1]}

    assert val_docs(small) and val_docs(small) == val_docs(grown) & set(docs[:80])


def test_bad_inputs_are_errors_naming_the_file_or_flag(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    cases = {
        "missing input": ([str(tmp_path / "nope")], "nope: no such file"),
        "missing text field": ([str(tmp_path / "a.jsonl"), "--tokenizer", "byte"], "no 'text' field"),
        "tokens without their tokenizer": ([str(tmp_path / "odd.bin"), "--tokenizer", "byte"], "odd.bin"),
        "tokenizer file that is not one": (
            [str(tmp_path / "a.jsonl"), "--tokenizer", str(tmp_path / "a.jsonl")],
            "not a Hugging Face tokenizer.json",
        ),
        "a vocabulary too small for a BPE": ([str(tmp_path / "a.jsonl"), "--vocab-size", "100"], "--vocab-size: 100"),
        "a split outside 0-1000": ([str(tmp_path / "a.jsonl"), "--val-permille", "2000"], "--val-permille: 2000"),
    }
    for name, (argv, message) in cases.items():
        assert (
            prepare.main([*argv, "--output", str(tmp_path / name.replace(" ", "-")), "--quiet", "--workers", "1"]) == 1
        ), name
        assert message in capsys.readouterr().err, name


def _run_prepare(argv: list[str], env: dict | None = None, wrapper: str | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "trainer"), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]
        ),
        **(env or {}),
    }
    command = [sys.executable, "-m", "ladder_trainer.prepare", *argv]
    if wrapper:
        command = [sys.executable, "-c", wrapper, *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)


def _files(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".prepare" not in p.parts
    }


def test_a_killed_prepare_resumes_to_the_same_bytes_and_a_second_run_changes_nothing(tmp_path, docs, tokenizer_json):
    corpus = tmp_path / "corpus"
    write_text_files(tmp_path, make_docs(400), tokenizer_json)
    args = [str(corpus), "--tokenizer", str(tokenizer_json), "--shard-mb", "0.01", "--workers", "2"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert _run_prepare([*args, "--output", str(whole)]).returncode == 0

    killed = _run_prepare([*args, "--output", str(resumed)], env={prepare.KILL_AFTER_ENV: "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (resumed / "meta.json").exists()
    done_before = len(list((resumed / ".prepare" / "units").glob("*.json")))
    assert done_before >= 3

    again = _run_prepare([*args, "--output", str(resumed)])
    assert again.returncode == 0, again.stderr
    assert f"({done_before} already done)" in again.stderr
    assert _files(resumed) == _files(whole)

    twice = _run_prepare([*args, "--output", str(whole)])
    assert twice.returncode == 0 and "already done)" in twice.stderr
    assert _files(whole) == _files(resumed)


def test_other_settings_on_the_same_output_are_refused(tmp_path, docs):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    out = str(tmp_path / "out")
    assert (
        prepare.main([str(tmp_path / "a.jsonl"), "--output", out, "--tokenizer", "byte", "--workers", "1", "--quiet"])
        == 0
    )
    assert (
        prepare.main(
            [
                str(tmp_path / "a.jsonl"),
                "--output",
                out,
                "--tokenizer",
                "byte",
                "--workers",
                "1",
                "--quiet",
                "--val-permille",
                "10",
            ]
        )
        == 1
    )
    assert (
        prepare.main(
            [
                str(tmp_path / "a.jsonl"),
                "--output",
                out,
                "--tokenizer",
                "byte",
                "--workers",
                "1",
                "--quiet",
                "--val-permille",
                "10",
                "--force",
            ]
        )
        == 0
    )


MEMORY_LIMIT_MB = 160
CORPUS_MB = 240


def test_a_corpus_larger_than_the_memory_limit_prepares_within_it(tmp_path):
    """Peak RSS of prepare and its workers stays under a limit smaller than the corpus."""
    line = json.dumps({"text": "x" * 1000})
    rows = CORPUS_MB * 2**20 // (len(line) + 1)
    with open(tmp_path / "big.jsonl", "w") as fh:
        block = []
        for i in range(rows):  # distinct documents: the val split hashes content
            block.append(json.dumps({"text": f"{i:09d} " + "abcdefghij" * 99}))
            if len(block) == 10000:
                fh.write("\n".join(block) + "\n")
                block = []
        fh.write("\n".join(block) + "\n")
    size_mb = (tmp_path / "big.jsonl").stat().st_size / 2**20
    assert size_mb > MEMORY_LIMIT_MB
    # A wrapper process waits for prepare, so its RUSAGE_CHILDREN covers prepare and its workers
    # only (ru_maxrss: the largest of them, KiB on Linux), not this test process's other children.
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    run = _run_prepare(
        [
            str(tmp_path / "big.jsonl"),
            "--output",
            str(tmp_path / "out"),
            "--tokenizer",
            "byte",
            "--workers",
            "2",
            "--shard-mb",
            "32",
        ],
        wrapper=wrapper,
    )
    assert run.returncode == 0, run.stderr
    peak_mb = int(run.stdout.split("maxrss_kib")[1].split()[0]) / 1024
    print(f"corpus {size_mb:.0f} MB, peak RSS of prepare's largest process {peak_mb:.0f} MB")
    assert peak_mb < MEMORY_LIMIT_MB
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["train_tokens"] + meta["val_tokens"] == rows * (10 + 990 + 1)  # "%09d " + text + eot


@pytest.mark.torch
def test_a_cell_on_prepared_shards_reports_corpus_and_data_passes(tmp_path, docs):
    pytest.importorskip("torch")
    from ladder_trainer.cli import main
    from promotion_ladder.core.result import parse_result

    write_text_files(tmp_path, docs * 1, None)
    out = tmp_path / "shards"
    assert (
        prepare.main(
            [
                str(tmp_path / "corpus"),
                "--output",
                str(out),
                "--tokenizer",
                "byte",
                "--workers",
                "1",
                "--shard-mb",
                "0.004",
                "--quiet",
            ]
        )
        == 0
    )
    meta = json.loads((out / "meta.json").read_text())
    res = tmp_path / "r.json"
    code = main(
        [
            "--config",
            json.dumps(TINY),
            "--budget",
            "60s",
            "--data",
            str(out),
            "--max-steps",
            "3",
            "--eval-tokens",
            "256",
            "--result-file",
            str(res),
        ]
    )
    result = parse_result(res.read_text())
    assert code == 0, result.message
    assert result.corpus == meta["corpus"]
    assert result.data_passes == pytest.approx(result.tokens / meta["train_tokens"], rel=1e-3)


def test_the_fingerprint_names_the_data_not_its_layout(tmp_path, docs):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))

    def fingerprint(name, *extra):
        assert (
            prepare.main(
                [str(tmp_path / "a.jsonl"), "--output", str(tmp_path / name), "--workers", "1", "--quiet", *extra]
            )
            == 0
        )
        return json.loads((tmp_path / name / "meta.json").read_text())["corpus"]

    one_shard = fingerprint("one", "--tokenizer", "byte")
    assert fingerprint("many", "--tokenizer", "byte", "--shard-mb", "0.004") == one_shard
    assert Shards.open(tmp_path / "many").corpus == one_shard  # what a cell reports
    assert fingerprint("other-split", "--tokenizer", "byte", "--val-permille", "200") != one_shard
    bpe = fingerprint("other-tokenizer", "--tokenizer", "bpe", "--vocab-size", "300")
    assert bpe != one_shard
    # The BPE is trained deterministically, so a prepare killed while training it ends the same.
    assert fingerprint("bpe-again", "--tokenizer", "bpe", "--vocab-size", "300") == bpe
    assert (tmp_path / "bpe-again" / "tokenizer.json").read_bytes() == (
        tmp_path / "other-tokenizer" / "tokenizer.json"
    ).read_bytes()


@pytest.mark.torch
def test_a_cell_that_will_repeat_its_data_says_so_at_start(tmp_path, docs, capsys):
    pytest.importorskip("torch")
    from ladder_trainer.config import Settings, parse_config
    from ladder_trainer.train import run

    write_text_files(tmp_path, docs * 1, None)
    out = tmp_path / "shards"
    assert (
        prepare.main(
            [str(tmp_path / "corpus"), "--output", str(out), "--tokenizer", "byte", "--workers", "1", "--quiet"]
        )
        == 0
    )
    capsys.readouterr()
    # The projection uses the first steps' throughput and the whole budget: 600 s of a tiny model
    # over a tiny corpus repeats it on any machine, while 25 steps keep the test short.
    result = run(parse_config(TINY), 0, 600, Settings(data=str(out), eval_tokens=256, max_steps=25))
    err = capsys.readouterr().err
    assert result.status == "ok"
    line = next(ln for ln in err.splitlines() if "repeated data" in ln)
    assert f"of corpus {result.corpus}" in line and "passes over the" in line
    assert err.index("repeated data") < err.index("eval:")  # said while training, not after


PROJECTIONS = {
    # tokens seen, seconds, budget -> warned (1,000 training tokens); a pure check of the
    # projection, so the answer does not depend on how fast this machine trains
    "half a pass": (100, 1.0, 5.0, False),
    "exactly one pass": (100, 1.0, 10.0, False),
    "two passes": (100, 1.0, 20.0, True),
    "nothing measured yet": (0, 0.0, 600.0, False),
}


@pytest.mark.torch
@pytest.mark.parametrize("tokens,seconds,budget,warned", PROJECTIONS.values(), ids=PROJECTIONS.keys())
def test_the_repeat_projection(capsys, tokens, seconds, budget, warned):
    pytest.importorskip("torch")
    from types import SimpleNamespace

    from ladder_trainer.train import _warn_if_repeating

    shards = SimpleNamespace(train=range(1000), meta={"source": "prepared"})
    _warn_if_repeating(shards, "abc123", tokens, seconds, budget)
    assert ("repeated data" in capsys.readouterr().err) is warned


def test_the_progress_bar_prints_a_line_per_update_off_a_terminal():
    import io

    stream = io.StringIO()  # not a TTY: no carriage returns, one line per update
    bar = prepare.ProgressBar(total_bytes=4_000_000, stream=stream, interval=0)
    bar.add(1_000_000, 250_000)
    bar.add(1_000_000, 250_000)
    bar.draw(final=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()
    assert "250.00k tokens | 1.0/4.0 MB (25%)" in lines[0] and "tok/s" in lines[0] and "ETA" in lines[0]
    assert "500.00k tokens | 2.0/4.0 MB (50%)" in lines[1]
    assert lines[2].endswith("ETA done") and "(100%)" in lines[2]
