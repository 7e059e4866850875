"""`python -m ladder_trainer.prepare INPUT... --output DIR`: a user's corpus -> token shards.

    python -m ladder_trainer.prepare fineweb/*.parquet --output /data/fineweb-bpe8k --tokenizer bpe
    python -m ladder_trainer.prepare notes/ docs.jsonl --output /data/mine --tokenizer byte
    python -m ladder_trainer.prepare owt/train.bin --tokenizer gpt2/tokenizer.json --output /data/owt

Writes the project's token-shard format (`ladder-tokens/v2`, read by `data.Shards`):

    meta.json                 format, tokenizer, vocab_size, eot, dtype, token counts, the shard
                              lists in order, the val split's content hash and the corpus fingerprint
    train-NNNNNN.bin          flat token ids (uint16 when the vocabulary fits, else uint32),
    val-NNNNNN.bin            each document followed by `eot`; one pair per work unit
    token_bytes.npy           int32[vocab_size]: UTF-8 bytes each token stands for (0 for `eot`)
    tokenizer.json            the BPE (trained here or given), absent for `byte`
    .prepare/                 bookkeeping for resuming: settings.json and one file per finished unit

How it keeps its promises:
- Streaming: a worker holds one batch of documents (--batch-mb) at a time; units only decide
  shard sizes and the grain of resuming, so memory does not grow with the corpus.
- Parallel: one process per core over units (tokenizers' own threads switched off in each),
  or with --workers 1 one process whose tokenizer batches use every core.
- Resumable and repeatable: a unit's shards are written under a temporary name and renamed,
  then its record is written; a rerun skips units whose record and shards are there and whose
  inputs have not changed, and meta.json (written last) has no timestamps, so the same inputs
  give the same bytes whether the run was interrupted or not.
- Val split by document: blake2b(document content) mod 1000 < --val-permille. Content, not
  position: a document keeps its side when the corpus grows or is reshuffled into other files,
  and duplicates never straddle the split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import sources
from .data import EOT_TEXT, FORMAT_V2, BPETokenizer, ByteTokenizer, corpus_fingerprint
from .sources import InputError, Unit

VAL_PERMILLE = 50
KILL_AFTER_ENV = "LADDER_PREPARE_KILL_AFTER"  # test hook: SIGKILL this run after N finished units


class PrepareError(ValueError):
    """Bad arguments or inputs; the message names the flag or file and says what to do."""


# ---- the split and the tokenizer -----------------------------------------------------------


def is_val_content(content: bytes, permille: int) -> bool:
    return int.from_bytes(hashlib.blake2b(content, digest_size=8).digest(), "little") % 1000 < permille


def load_tokenizer(spec: str, out: Path):
    """byte | bpe (needs out/tokenizer.json already trained) | a tokenizer.json path."""
    if spec == "byte":
        return ByteTokenizer()
    path = out / "tokenizer.json" if spec == "bpe" else Path(spec)
    tok = BPETokenizer.load(path)
    if tok.eot is None:
        raise PrepareError(f"--tokenizer {spec}: {path} has no {EOT_TEXT} token; documents need it as their separator")
    return tok


def _encode_fast(tok, texts: list[str], raw: list[bytes], dtype: np.dtype) -> list[np.ndarray]:
    """Token ids in the shard dtype (uint16 halves the memory of a batch for vocabularies that fit)."""
    if isinstance(tok, BPETokenizer):
        enc = getattr(tok.tok, "encode_batch_fast", tok.tok.encode_batch)  # no offsets: ~2x faster
        return [np.asarray(e.ids, dtype=dtype) for e in enc(texts, add_special_tokens=False)]
    return [np.frombuffer(b, dtype=np.uint8).astype(dtype) for b in raw]  # byte tokenizer: ids are the bytes


# ---- one unit (runs in a worker) -----------------------------------------------------------

_W: dict = {}


# _init_worker's arguments before `live`: (out, tok_spec, dtype, permille, text_field, batch_bytes).
WorkerInit = tuple[str, str, str, int, str, int]


def _init_worker(
    out: str,
    tok_spec: str,
    dtype: str,
    permille: int,
    text_field: str,
    batch_bytes: int,
    live: Any,
    single_thread: bool,
    on_batch: Any = None,
) -> None:
    if single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    tok = load_tokenizer(tok_spec, Path(out))
    if isinstance(tok, BPETokenizer) and hasattr(tok.tok, "encode_special_tokens"):
        # A document that quotes "<|endoftext|>" is text: only the separator we add is `eot`.
        tok.tok.encode_special_tokens = True
    _W.update(
        live=live,
        on_batch=on_batch,
        out=Path(out),
        tok=tok,
        dtype=np.dtype(dtype),
        permille=permille,
        text_field=text_field,
        batch_bytes=batch_bytes,
        token_bytes=tok.token_bytes().astype(np.int64),
    )


def unit_record_path(out: Path, idx: int) -> Path:
    return out / ".prepare" / "units" / f"{idx:06d}.json"


def shard_name(split: str, idx: int) -> str:
    return f"{split}-{idx:06d}.bin"


def _process_unit(job: tuple[int, Unit]) -> dict:
    idx, unit = job
    out, tok, dtype = _W["out"], _W["tok"], _W["dtype"]
    eot, tb, permille = tok.eot, _W["token_bytes"], _W["permille"]
    stats = {s: {"tokens": 0, "docs": 0, "bytes": 0} for s in ("train", "val")}
    live, credited = _W["live"], [0, 0]  # progress inside the unit: (input bytes, tokens) shown so far
    files = {s: open(out / (shard_name(s, idx) + ".tmp"), "wb") for s in ("train", "val")}
    try:
        for split_docs in _split_batches(unit, tok, permille):
            for split, (docs, text_bytes) in split_docs.items():
                if not docs:
                    continue
                sep = np.array([eot], dtype=dtype)
                ids = np.concatenate([x for d in docs for x in (d, sep)])
                n_docs = len(docs)
                del docs
                if len(ids) and int(ids.max()) >= tok.vocab_size:
                    raise InputError(
                        f"{unit.paths[0]}: token id {int(ids.max())} is outside the tokenizer's vocabulary "
                        f"({tok.vocab_size})"
                    )
                counted = sum(
                    int(tb[ids[k : k + 2**20]].sum()) for k in range(0, len(ids), 2**20)
                )  # bounded temporaries
                if text_bytes is not None and counted != text_bytes:
                    # val_bpb divides by these byte counts: a tokenizer with a normalizer or
                    # SentencePiece-style spaces would skew the metric without a word.
                    raise InputError(
                        f"tokenizer: token byte lengths add up to {counted}, the text has {text_bytes} UTF-8 bytes "
                        f"({unit.paths[0]}); only byte-level BPE tokenizers (ByteLevel pre-tokenizer, no normalizer) "
                        "are supported"
                    )
                ids.astype(dtype).tofile(files[split])
                st = stats[split]
                st["tokens"] += len(ids)
                st["docs"] += n_docs
                st["bytes"] += counted
                credit = (min(counted, unit.size - credited[0]), len(ids))
                with live.get_lock():
                    live[0] += credit[0]
                    live[1] += credit[1]
                credited = [credited[0] + credit[0], credited[1] + credit[1]]
            if _W["on_batch"] is not None:
                _W["on_batch"]()
        for f in files.values():
            f.close()
        for split in ("train", "val"):
            tmp = out / (shard_name(split, idx) + ".tmp")
            if stats[split]["tokens"]:
                os.replace(tmp, out / shard_name(split, idx))
            else:
                tmp.unlink()
        record = {"key": unit.key(), "size": unit.size, **{s: stats[s] for s in stats}}
        _write_atomic(unit_record_path(out, idx), json.dumps(record, sort_keys=True))
        with live.get_lock():  # the finished unit is counted whole by the parent from now on
            live[0] -= credited[0]
            live[1] -= credited[1]
        return record
    finally:
        for f in files.values():
            f.close()


def _split_batches(unit: Unit, tok, permille: int) -> Iterator[dict]:
    """Batches of {split: (token arrays, their text's UTF-8 bytes or None)}."""
    if unit.kind == "tokens":
        for docs in sources.iter_token_docs(unit, tok.eot, _W["batch_bytes"] // 2):
            out: dict[str, tuple[list[np.ndarray], int | None]] = {"train": ([], None), "val": ([], None)}
            for d in docs:
                if int(d.max()) >= tok.vocab_size:
                    raise InputError(
                        f"{unit.paths[0]}: token id {int(d.max())} is outside the tokenizer's vocabulary "
                        f"({tok.vocab_size})"
                    )
                out["val" if is_val_content(d.tobytes(), permille) else "train"][0].append(d.astype(_W["dtype"]))
            yield out
        return
    for texts in sources.iter_texts(unit, _W["text_field"], _W["batch_bytes"]):
        raw = [t.encode("utf-8") for t in texts]
        val = [is_val_content(b, permille) for b in raw]
        ids = _encode_fast(tok, texts, raw, _W["dtype"])
        del texts
        yield {
            split: (
                [i for i, v in zip(ids, val, strict=True) if v == want],
                sum(len(b) for b, v in zip(raw, val, strict=True) if v == want),
            )
            for split, want in (("train", False), ("val", True))
        }


def _write_atomic(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(text, str):
        tmp.write_text(text)
    else:
        tmp.write_bytes(text)
    os.replace(tmp, path)


# ---- progress ------------------------------------------------------------------------------


class ProgressBar:
    """tokens, bytes, rate, ETA on stderr: one redrawn line on a TTY, else a line per update."""

    def __init__(self, total_bytes: int, stream: TextIO = sys.stderr, interval: float | None = None):
        self.total, self.stream = max(total_bytes, 1), stream
        self.tty = stream.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self.t0 = time.monotonic()
        self.last = -float("inf")
        self.done_bytes = self.done_tokens = 0
        self.live: Any = None  # shared (bytes, tokens) of units in progress, when workers report them

    def add(self, nbytes: int, tokens: int) -> None:
        """A unit finished."""
        self.done_bytes += nbytes
        self.done_tokens += tokens
        self.tick()

    def tick(self) -> None:
        if time.monotonic() - self.last >= self.interval:
            self.draw()

    @property
    def bytes(self) -> int:
        return min(self.done_bytes + (self.live[0] if self.live is not None else 0), self.total)

    @property
    def tokens(self) -> int:
        return self.done_tokens + (self.live[1] if self.live is not None else 0)

    def draw(self, final: bool = False) -> None:
        self.last = now = time.monotonic()
        dt = max(now - self.t0, 1e-9)
        nbytes = self.total if final else self.bytes
        rate_b, rate_t = nbytes / dt, self.tokens / dt
        eta = (self.total - nbytes) / rate_b if rate_b > 0 else float("inf")
        eta_s = "done" if final else ("?" if eta == float("inf") else time.strftime("%H:%M:%S", time.gmtime(eta)))
        line = (
            f"prepare: {_si(self.tokens)} tokens | {nbytes / 1e6:,.1f}/{self.total / 1e6:,.1f} MB "
            f"({100 * nbytes / self.total:.0f}%) | {_si(rate_t)} tok/s {rate_b / 1e6:.2f} MB/s | "
            f"{dt:.0f}s elapsed, ETA {eta_s}"
        )
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _si(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.2f}{suffix}"
    return f"{x:.0f}"


# ---- the run -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ladder_trainer.prepare",
        description="Tokenize a corpus into train/val token shards (see docs/trainer.md).",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="text/Markdown files or folders, .jsonl, .parquet, or pre-tokenized .bin shards (nanoGPT, llm.c)",
    )
    p.add_argument("--output", "-o", required=True, help="the shard directory to write (created; resumed if it exists)")
    p.add_argument(
        "--tokenizer",
        default="bpe",
        help="'byte', 'bpe' (trained here on a sample), or a Hugging Face tokenizer.json path (default bpe)",
    )
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary when training one (default 8192)")
    p.add_argument(
        "--bpe-sample-mb", type=float, default=64, help="text the BPE learns its merges from (default 64 MB)"
    )
    p.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text (default text)")
    p.add_argument("--val-permille", type=int, default=VAL_PERMILLE, help="held-out documents per 1000 (default 50)")
    p.add_argument(
        "--workers", type=int, default=0, help="processes (default: every core; 1 = this process, tokenizer threads on)"
    )
    p.add_argument("--shard-mb", type=float, default=256, help="input per work unit and shard pair (default 256 MB)")
    p.add_argument("--batch-mb", type=float, default=4, help="text a worker tokenizes at a time (default 4 MB)")
    p.add_argument("--force", action="store_true", help="start over if DIR was prepared with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        meta = prepare(args)
    except (PrepareError, InputError, OSError) as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prepare: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    print(
        json.dumps(
            {
                k: meta[k]
                for k in ("corpus", "train_tokens", "val_tokens", "train_docs", "val_docs", "vocab_size", "dtype")
            }
        )
    )
    return 0


def prepare(args: argparse.Namespace, stream: TextIO = sys.stderr) -> dict:
    out = Path(args.output)
    _check_args(args)
    files = sources.input_files(args.inputs)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    # 1. The tokenizer: given, byte, or a BPE trained once on a bounded sample.
    tok, tok_spec, settings = _prepare_tokenizer(args, out, files, stream)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 2**16 else np.uint32)

    # 2. Units, and which of them a previous run already finished.
    units = sources.plan_units(files, settings["shard_bytes"], tok.eot, args.text_field)
    if not units:
        raise PrepareError("no input data: every input is empty")
    records: dict[int, dict] = {}
    for i, u in enumerate(units):
        rec = _finished(out, i, u, dtype)
        if rec is not None:
            records[i] = rec
    todo = [(i, u) for i, u in enumerate(units) if i not in records]
    workers = args.workers or len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, cpusets)
    workers = max(1, min(workers, len(todo) or 1))
    if not args.quiet:
        print(
            f"prepare: {len(files)} input files, {len(units)} units ({len(records)} already done), "
            f"tokenizer {settings['tokenizer']} vocab {tok.vocab_size}, {workers} worker(s) -> {out}",
            file=stream,
            flush=True,
        )

    # 3. Tokenize the units still to do.
    bar = None if args.quiet else ProgressBar(sum(u.size for _, u in todo), stream)
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
    init = (str(out), tok_spec, dtype.name, args.val_permille, args.text_field, int(args.batch_mb * 2**20))
    for done_now, (rec_idx, rec) in enumerate(_run_units(todo, workers, init, bar), start=1):
        records[rec_idx] = rec
        if bar:
            bar.add(rec["size"], rec["train"]["tokens"] + rec["val"]["tokens"])
        if kill_after and done_now >= kill_after:
            _kill_self()
    if bar:
        bar.draw(final=True)

    # 4. Assemble: token_bytes, the val hash, meta.json last.
    meta = _assemble(out, units, records, tok, tok_spec, dtype, args, settings)
    if not args.quiet:
        print(
            f"prepare: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens in "
            f"{len(meta['shards']['train'])} + {len(meta['shards']['val'])} shards, corpus {meta['corpus']}, "
            f"{time.monotonic() - t0:.1f}s",
            file=stream,
            flush=True,
        )
    return meta


def _check_args(args: argparse.Namespace) -> None:
    if args.val_permille < 0 or args.val_permille > 1000:
        raise PrepareError(f"--val-permille: {args.val_permille} is not between 0 and 1000")
    if args.shard_mb <= 0 or args.batch_mb <= 0:
        raise PrepareError("--shard-mb and --batch-mb must be positive")
    if args.tokenizer == "bpe" and not 258 <= args.vocab_size <= 2**20:
        raise PrepareError(
            f"--vocab-size: {args.vocab_size} must be between 258 (256 bytes + end-of-text + one merge) and 1048576"
        )
    if args.workers < 0:
        raise PrepareError(f"--workers: {args.workers} must be 0 (every core) or more")


def _prepare_tokenizer(args: argparse.Namespace, out: Path, files: list, stream: TextIO) -> tuple[Any, str, dict]:
    """The tokenizer, its spec for the workers, and the settings that must match a resumed run's
    (checked against DIR's; a BPE is trained here first when DIR has none yet)."""
    given = None if args.tokenizer in ("byte", "bpe") else Path(args.tokenizer)
    if given is not None and not given.is_file():
        raise PrepareError(f"--tokenizer {args.tokenizer}: not 'byte', 'bpe' or an existing tokenizer.json file")
    settings = {
        "tokenizer": args.tokenizer if given is None else "file",
        "vocab_size_asked": args.vocab_size if args.tokenizer == "bpe" else None,
        "text_field": args.text_field,
        "val_permille": args.val_permille,
        "shard_bytes": int(args.shard_mb * 2**20),
        "tokenizer_sha256": "byte"
        if args.tokenizer == "byte"
        else (hashlib.sha256(given.read_bytes()).hexdigest() if given else None),
    }
    _check_settings(out, settings, args.force)
    tok_spec = _tokenizer_spec(args, out)
    if tok_spec == "bpe" and not (out / "tokenizer.json").exists():
        if _has_tokens(files):
            raise PrepareError(
                "--tokenizer bpe: pre-tokenized inputs need the tokenizer.json they were made with (--tokenizer PATH)"
            )
        _train_bpe(sources.plan_units(files, settings["shard_bytes"], None, args.text_field), args, out, stream)
    tok = load_tokenizer(tok_spec, out)
    if tok_spec == "bpe":
        settings["tokenizer_sha256"] = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
        _check_settings(out, settings, args.force)
    return tok, tok_spec, settings


def _tokenizer_spec(args, out: Path) -> str:
    if args.tokenizer in ("byte", "bpe"):
        return args.tokenizer
    src = Path(args.tokenizer)
    try:
        BPETokenizer.load(src)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises its own exception types
        raise PrepareError(f"--tokenizer {src}: not a Hugging Face tokenizer.json: {exc}") from None
    dst = out / "tokenizer.json"
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        _write_atomic(dst, src.read_bytes())
    return str(dst)


def _has_tokens(files: list[Path]) -> bool:
    return any(sources.kind_of(p) == "tokens" for p in files)


def _check_settings(out: Path, settings: dict, force: bool) -> None:
    """Refuse (or with --force, wipe) an output prepared with other settings; record these."""
    path = out / ".prepare" / "settings.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    diff = [k for k, v in settings.items() if old.get(k) is not None and v is not None and old[k] != v]
    if diff:
        if not force:
            raise PrepareError(
                f"--output {out}: prepared earlier with other settings ("
                + ", ".join(f"{k}: {old[k]!r} then, {settings[k]!r} now" for k in diff)
                + "); use another --output, or --force to start over"
            )
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        old = {}
    merged = {**old, **{k: v for k, v in settings.items() if v is not None}}
    if merged != old:
        _write_atomic(path, json.dumps(merged, sort_keys=True, indent=1))


def _train_bpe(units: list[Unit], args, out: Path, stream: TextIO) -> None:
    limit = int(args.bpe_sample_mb * 2**20)

    def sample() -> Iterator[str]:
        seen = 0
        for u in units:
            for batch in sources.iter_texts(u, args.text_field, 2**20):
                for t in batch:
                    b = t.encode("utf-8")
                    if is_val_content(b, args.val_permille):
                        continue  # the tokenizer never sees held-out text
                    yield t
                    seen += len(b)
                    if seen >= limit:
                        return

    t0 = time.monotonic()
    if not args.quiet:
        print(
            f"prepare: training a BPE of {args.vocab_size} tokens on up to {args.bpe_sample_mb:g} MB of training text",
            file=stream,
            flush=True,
        )
    tok = BPETokenizer.train(sample(), args.vocab_size)
    tmp = out / "tokenizer.json.tmp"
    tok.tok.save(str(tmp))
    os.replace(tmp, out / "tokenizer.json")
    if not args.quiet:
        print(f"prepare: BPE trained in {time.monotonic() - t0:.1f}s", file=stream, flush=True)


def _finished(out: Path, idx: int, unit: Unit, dtype: np.dtype) -> dict | None:
    path = unit_record_path(out, idx)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("key") != unit.key():
        return None  # the input changed since: do it again
    for split in ("train", "val"):
        n = rec[split]["tokens"]
        shard = out / shard_name(split, idx)
        if n and (not shard.exists() or shard.stat().st_size != n * dtype.itemsize):
            return None
    return rec


def _run_units(
    todo: list[tuple[int, Unit]], workers: int, init: WorkerInit, bar: ProgressBar | None
) -> Iterator[tuple[int, dict]]:
    if not todo:
        return
    # spawn, not fork: the parent may have run the tokenizer's thread pool (BPE training).
    ctx = mp.get_context("spawn")
    live = ctx.Array("q", 2)  # (input bytes, tokens) of units in progress, for the progress bar
    if bar is not None:
        bar.live = live
    if workers == 1:
        _init_worker(*init, live, single_thread=False, on_batch=bar.tick if bar else None)
        for job in todo:
            yield job[0], _process_unit(job)
        return
    with ctx.Pool(workers, initializer=_init_worker, initargs=(*init, live, True)) as pool:
        results = pool.imap_unordered(_process_unit_indexed, todo, chunksize=1)
        while True:
            try:
                yield results.next(timeout=bar.interval if bar else None)
            except mp.TimeoutError:  # only with a bar: without one the wait has no timeout
                if bar is not None:
                    bar.tick()
            except StopIteration:
                return


def _process_unit_indexed(job: tuple[int, Unit]) -> tuple[int, dict]:
    return job[0], _process_unit(job)


def _kill_self() -> None:
    """The test hook: die as an OOM kill or a preempted node would, workers included."""
    sys.stderr.flush()
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _assemble(
    out: Path, units: list[Unit], records: dict[int, dict], tok, tok_spec: str, dtype: np.dtype, args, settings: dict
) -> dict:
    shards: dict[str, list] = {"train": [], "val": []}
    totals = {s: {"tokens": 0, "docs": 0, "bytes": 0} for s in ("train", "val")}
    for i in range(len(units)):
        rec = records[i]
        for split in ("train", "val"):
            for k in totals[split]:
                totals[split][k] += rec[split][k]
            if rec[split]["tokens"]:
                shards[split].append([shard_name(split, i), rec[split]["tokens"]])
    # Leftovers of an earlier, larger run over inputs that have since shrunk.
    listed = {name for s in shards.values() for name, _ in s}
    for p in out.glob("*.bin*"):
        if p.name not in listed:
            p.unlink()
    for p in (out / ".prepare" / "units").glob("*.json"):
        if int(p.stem) >= len(units):
            p.unlink()
    if not totals["train"]["tokens"]:
        raise PrepareError("every document landed in the val split; lower --val-permille or add data")
    if not totals["val"]["tokens"]:
        raise PrepareError("no document landed in the val split (too few documents); raise --val-permille or add data")
    token_bytes = tok.token_bytes().astype(np.int32)
    tb_path = out / "token_bytes.npy"
    tmp = out / "token_bytes.tmp.npy"
    np.save(tmp, token_bytes)
    os.replace(tmp, tb_path)
    val_hash = hashlib.sha256()
    for name, _ in shards["val"]:
        with open(out / name, "rb") as fh:
            while chunk := fh.read(1 << 24):
                val_hash.update(chunk)
    meta = {
        "format": FORMAT_V2,
        "tokenizer": settings["tokenizer"] if settings["tokenizer"] != "file" else f"file:{Path(args.tokenizer).name}",
        "tokenizer_sha256": settings["tokenizer_sha256"],
        "vocab_size": int(tok.vocab_size),
        "eot": int(tok.eot),
        "dtype": dtype.name,
        "train_tokens": totals["train"]["tokens"],
        "val_tokens": totals["val"]["tokens"],
        "train_docs": totals["train"]["docs"],
        "val_docs": totals["val"]["docs"],
        "train_text_bytes": totals["train"]["bytes"],
        "val_text_bytes": totals["val"]["bytes"],
        "split": f"blake2b-64(document) mod 1000 < {args.val_permille}",
        "val_sha256": val_hash.hexdigest(),
        "token_bytes_sha256": hashlib.sha256(token_bytes.tobytes()).hexdigest(),
        "shards": shards,
    }
    meta["corpus"] = corpus_fingerprint(meta)
    _write_atomic(out / "meta.json", json.dumps(meta, indent=1))
    return meta


if __name__ == "__main__":
    sys.exit(main())
