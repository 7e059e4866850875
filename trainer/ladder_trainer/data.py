"""Corpora, tokenizers and token shards: everything between files on disk and batches.

A prepared corpus is a directory of token shards (the same layout users may hand in as
pre-tokenized data):

    meta.json          {"format": "ladder-tokens/v1", "vocab_size", "eot", "dtype", "tokenizer", ...}
    train.bin, val.bin flat token ids (dtype uint16 or uint32), documents separated by `eot`
    token_bytes.npy    int32[vocab_size]: UTF-8 bytes each token stands for (0 for `eot`)

`ladder-tokens/v2` (written by `python -m ladder_trainer.prepare`, see prepare.py) is the same
with many shards: meta.json lists them in order under "shards" {"train": [[file, tokens]...],
"val": [...]}. Either is read with memory maps, shard by shard; nothing loads a split into RAM.
The corpus fingerprint (`corpus_fingerprint`) names what a cell trained and evaluated on.

`token_bytes` is what makes val_bpb independent of the tokenizer. The held-out split is by
document (a stable hash of its key), so it does not move when a corpus grows.

Preparation runs once per (corpus, tokenizer) and is cached under $LADDER_CACHE/data; a
file lock makes concurrent cells on one machine wait for the first one instead of racing.
Nothing is downloaded: the default corpus is the Python standard library's own sources.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "ladder-tokens/v1"
FORMAT_V2 = "ladder-tokens/v2"
EOT_TEXT = "<|endoftext|>"
VAL_PERMILLE = 50  # 5% of documents are held out
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text"}
BPE_TRAIN_BYTES = 64 * 2**20  # the BPE learns its merges from at most this much training text


def cache_root() -> Path:
    return Path(os.environ.get("LADDER_CACHE") or Path.home() / ".cache" / "promotion-ladder")


def log(msg: str) -> None:
    print(f"[ladder-trainer] {msg}", file=sys.stderr, flush=True)


# ---- documents -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    key: str  # stable identity (relative path, "file:line"), decides the split
    text: str


def is_val(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 1000 < VAL_PERMILLE


def stdlib_files() -> list[tuple[str, Path]]:
    """The standard library's .py sources in a deterministic order (sorted relative paths)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in sorted(filenames):
            if name.endswith(".py"):
                p = Path(dirpath) / name
                out.append((p.relative_to(root).as_posix(), p))
    out.sort()
    return out


def user_files(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(path.name, path)]
    if not path.is_dir():
        raise FileNotFoundError(f"--data {path}: no such file or directory")
    files = sorted(
        (p.relative_to(path).as_posix(), p)
        for p in path.rglob("*")
        if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.suffix in (".jsonl", ".parquet"))
    )
    if not files:
        raise FileNotFoundError(f"--data {path}: no .txt/.md/.py/.jsonl/.parquet files inside")
    return files


def iter_docs(files: list[tuple[str, Path]], text_field: str = "text") -> Iterator[Doc]:
    for rel, p in files:
        if p.suffix == ".jsonl":
            with open(p, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if line.strip():
                        row = json.loads(line)
                        if text_field not in row:
                            raise ValueError(f"{p}:{i + 1}: no {text_field!r} field (set --text-field)")
                        yield Doc(f"{rel}:{i}", str(row[text_field]))
        elif p.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise RuntimeError(f"{p}: reading parquet needs pyarrow (pip install pyarrow)") from None
            i = 0
            for batch in pq.ParquetFile(p).iter_batches(batch_size=1024, columns=[text_field]):  # streaming
                for text in batch.column(0).to_pylist():
                    yield Doc(f"{rel}:{i}", str(text))
                    i += 1
        else:
            try:
                yield Doc(rel, p.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                continue  # a few stdlib test files are deliberately not UTF-8


def fingerprint(files: list[tuple[str, Path]], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for rel, p in files:
        st = p.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# ---- tokenizers ----------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table, used by the ByteLevel pre-tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class ByteTokenizer:
    """Token i < 256 is byte i; 256 is end-of-text."""

    name = "byte"
    vocab_size = 257
    eot = 256

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint32) for t in texts]

    def token_bytes(self) -> np.ndarray:
        out = np.ones(self.vocab_size, dtype=np.int32)
        out[self.eot] = 0
        return out


class BPETokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenizer) from the `tokenizers` library."""

    def __init__(self, tok):
        self.tok = tok
        self.name = "bpe"
        self.vocab_size = tok.get_vocab_size()
        self.eot = tok.token_to_id(EOT_TEXT)

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint32) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int32)
        special = {t.content for t in self.tok.get_added_tokens_decoder().values()}
        for token, i in self.tok.get_vocab().items():
            # ByteLevel maps each byte to one character, so the string length is the byte count.
            out[i] = 0 if token in special else len(token)
        return out


# ---- prepared shards -----------------------------------------------------------------------


def corpus_fingerprint(meta: dict) -> str:
    """12 hex digits naming the prepared data: tokenizer, token counts, token_bytes, the val split.

    From meta.json's content fields only (never paths or times), so the same preparation on
    two machines, a copy on a volume, or the same corpus cut into shards of another size gives
    the same fingerprint. The training split enters by its token count, the val split by the
    hash of its tokens: hashing terabytes of training tokens at every cell start would cost
    more than it could catch.
    """
    keys = (
        "vocab_size",
        "eot",
        "dtype",
        "train_tokens",
        "val_tokens",
        "tokenizer_sha256",
        "token_bytes_sha256",
        "val_sha256",
    )
    doc = {k: meta.get(k) for k in keys}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


class TokenSplit:
    """One split as an ordered list of token shards, each memory-mapped only when read.

    Maps are opened lazily and kept in a small cache, so a corpus of thousands of shards needs
    neither thousands of file descriptors nor its size in RAM.
    """

    MAX_OPEN = 64

    def __init__(self, files: list[tuple[Path, int]], dtype: np.dtype):
        self.files = [(Path(p), int(n)) for p, n in files if int(n) > 0]
        self.dtype = np.dtype(dtype)
        self.lengths = np.array([n for _, n in self.files], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self._open: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def shard(self, i: int) -> np.ndarray:
        m = self._open.get(i)
        if m is None:
            if len(self._open) >= self.MAX_OPEN:
                self._open.pop(next(iter(self._open)))
            path, n = self.files[i]
            m = np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))
            self._open[i] = m
        return m

    def head(self, n: int) -> np.ndarray:
        """The first n tokens in shard order (a copy of just those)."""
        n = min(n, len(self))
        parts, left, i = [], n, 0
        while left > 0:
            take = min(left, int(self.lengths[i]))
            parts.append(np.asarray(self.shard(i)[:take]))
            left -= take
            i += 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):  # the whole split: for tests and small corpora only
        out = self.head(len(self))
        return out.astype(dtype) if dtype is not None else out


@dataclass
class Shards:
    path: Path
    vocab_size: int
    eot: int
    train: TokenSplit
    val: TokenSplit
    token_bytes: np.ndarray
    meta: dict

    @classmethod
    def open(cls, path: Path) -> Shards:
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{path}: not a token-shard directory (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") not in (FORMAT, FORMAT_V2):
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r} or {FORMAT_V2!r}")
        dtype = np.dtype(meta["dtype"])
        if meta["format"] == FORMAT:
            splits = {
                s: [(path / f"{s}.bin", (path / f"{s}.bin").stat().st_size // dtype.itemsize)] for s in ("train", "val")
            }
        else:
            splits = {s: [(path / name, n) for name, n in meta["shards"][s]] for s in ("train", "val")}
        for files in splits.values():
            for f, n in files:
                if not f.exists() or f.stat().st_size != n * dtype.itemsize:
                    raise ValueError(f"{f}: missing or not {n} tokens as meta.json says; prepare {path} again")
        train, val = TokenSplit(splits["train"], dtype), TokenSplit(splits["val"], dtype)
        token_bytes = np.load(path / "token_bytes.npy").astype(np.int64)
        if len(token_bytes) != meta["vocab_size"]:
            raise ValueError(
                f"{path}: token_bytes.npy has {len(token_bytes)} entries, vocab_size is {meta['vocab_size']}"
            )
        if not len(train) or not len(val):
            raise ValueError(f"{path}: the {'train' if not len(train) else 'val'} split is empty")
        return cls(path, int(meta["vocab_size"]), int(meta["eot"]), train, val, token_bytes, meta)

    @property
    def corpus(self) -> str:
        """The corpus fingerprint; v1 directories (the default corpus) get their hashes here."""
        meta = dict(self.meta)
        if meta.get("val_sha256") is None:
            tok_file = self.path / "tokenizer.json"
            meta["tokenizer_sha256"] = (
                hashlib.sha256(tok_file.read_bytes()).hexdigest() if tok_file.exists() else "byte"
            )
            meta["token_bytes_sha256"] = hashlib.sha256(self.token_bytes.astype(np.int32).tobytes()).hexdigest()
            h = hashlib.sha256()
            for i in range(len(self.val.files)):
                h.update(np.ascontiguousarray(self.val.shard(i)).tobytes())
            meta["val_sha256"] = h.hexdigest()
        return corpus_fingerprint(meta)


@contextlib.contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare(
    tokenizer: str,
    vocab_size: int,
    data: str | None = None,
    tokenizer_file: str | None = None,
    text_field: str = "text",
) -> Shards:
    """Token shards for (corpus, tokenizer), building and caching them on first use."""
    if data and (Path(data) / "meta.json").exists():
        return Shards.open(Path(data))  # already tokenized by the user
    files = user_files(Path(data)) if data else stdlib_files()
    source = str(Path(data).resolve()) if data else f"python-stdlib-{sys.version_info[0]}.{sys.version_info[1]}"
    tok_id = (
        f"file-{hashlib.sha256(Path(tokenizer_file).read_bytes()).hexdigest()[:12]}"
        if tokenizer_file
        else ("byte" if tokenizer == "byte" else f"bpe{vocab_size}")
    )
    corpus_id = fingerprint(files, extra=f"{source}\0{text_field}")
    out = cache_root() / "data" / f"{corpus_id}-{tok_id}"
    if (out / "meta.json").exists():
        return Shards.open(out)
    with _locked(cache_root() / "data" / f".{corpus_id}-{tok_id}.lock"):
        if (out / "meta.json").exists():  # another cell built it while we waited
            return Shards.open(out)
        t0 = time.time()
        log(f"preparing corpus {source} ({len(files)} files) with tokenizer {tok_id} -> {out}")
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
        try:
            _build(tmp, files, tokenizer, vocab_size, tokenizer_file, text_field, source)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"corpus prepared in {time.time() - t0:.1f}s")
    return Shards.open(out)


def _build(out: Path, files, tokenizer: str, vocab_size: int, tokenizer_file, text_field: str, source: str) -> None:
    """Tokenize the corpus into train.bin / val.bin, streaming: documents are read twice at most
    (once for the BPE's bounded sample) and never held all at once."""

    def docs() -> Iterator[Doc]:
        return (d for d in iter_docs(files, text_field) if d.text)

    tok = _tokenizer(out, docs, tokenizer, vocab_size, tokenizer_file)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 2**16 else np.uint32)
    w = _write_splits(out, docs(), tok, dtype)
    if w.docs["train"] - (0 if w.docs["val"] else 1) < 1:  # no training document (once one is held out)
        raise ValueError(f"corpus {source}: needs at least two non-empty documents")
    if not w.docs["val"]:
        _hold_out_last(out, w, dtype)
    token_bytes = tok.token_bytes()
    _check_byte_lengths(out / "val.bin", dtype, token_bytes, w.val_bytes, tokenizer_file or tok.name)
    np.save(out / "token_bytes.npy", token_bytes)
    meta = {
        "format": FORMAT,
        "source": source,
        "tokenizer": tok.name if not tokenizer_file else f"file:{tokenizer_file}",
        "vocab_size": tok.vocab_size,
        "eot": tok.eot,
        "dtype": dtype.name,
        "train_tokens": w.tokens["train"],
        "val_tokens": w.tokens["val"],
        "train_docs": w.docs["train"],
        "val_docs": w.docs["val"],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def _tokenizer(
    out: Path, docs: Callable[[], Iterator[Doc]], tokenizer: str, vocab_size: int, tokenizer_file: str | None
) -> ByteTokenizer | BPETokenizer:
    """The corpus's tokenizer: the user's file, bytes, or a BPE trained on a bounded sample of the
    training documents; a BPE is saved beside the shards."""
    tok: ByteTokenizer | BPETokenizer
    if tokenizer_file:
        tok = BPETokenizer.load(Path(tokenizer_file))
        shutil.copy(tokenizer_file, out / "tokenizer.json")
    elif tokenizer == "byte":
        tok = ByteTokenizer()
    else:
        tok = BPETokenizer.train(_bounded((d.text for d in docs() if not is_val(d.key)), BPE_TRAIN_BYTES), vocab_size)
        tok.tok.save(str(out / "tokenizer.json"))
    if tok.eot is None:
        raise ValueError(f"tokenizer {tokenizer_file}: has no {EOT_TEXT} token")
    return tok


@dataclass
class _Written:
    """What _write_splits wrote: tokens and documents per split, the val split's text bytes, and
    the last training document (its tokens and text bytes), the one a tiny corpus holds out."""

    tokens: dict[str, int]
    docs: dict[str, int]
    val_bytes: int = 0
    last_train: tuple[np.ndarray, int] | None = None


def _write_splits(out: Path, docs: Iterator[Doc], tok: ByteTokenizer | BPETokenizer, dtype: np.dtype) -> _Written:
    """Each document's tokens and an end-of-text into train.bin or val.bin, 256 documents a batch."""
    w = _Written({"train": 0, "val": 0}, {"train": 0, "val": 0})
    files_out = {split: open(out / f"{split}.bin", "wb") for split in ("train", "val")}
    pending: dict[str, list[str]] = {"train": [], "val": []}

    def flush(split: str) -> None:
        for text, ids in zip(pending[split], tok.encode_batch(pending[split]), strict=True):
            arr = np.append(ids, tok.eot).astype(dtype)
            files_out[split].write(arr.tobytes())
            w.tokens[split] += len(arr)
            if split == "train":
                w.last_train = (arr, len(text.encode("utf-8")))
        pending[split] = []

    try:
        for doc in docs:
            split = "val" if is_val(doc.key) else "train"
            pending[split].append(doc.text)
            w.docs[split] += 1
            if split == "val":
                w.val_bytes += len(doc.text.encode("utf-8"))
            if len(pending[split]) == 256:
                flush(split)
        flush("train")
        flush("val")
    finally:
        for fh in files_out.values():
            fh.close()
    return w


def _hold_out_last(out: Path, w: _Written, dtype: np.dtype) -> None:
    """Tiny corpora: hold out the last document rather than nothing (a BPE trained here had it in
    its sample; streaming cannot know in advance, and a corpus this small is a test)."""
    assert w.last_train is not None  # the caller checked there are two training documents
    arr, nbytes = w.last_train
    with open(out / "train.bin", "r+b") as fh:
        fh.truncate((w.tokens["train"] - len(arr)) * dtype.itemsize)
    (out / "val.bin").write_bytes(arr.tobytes())
    w.tokens["train"] -= len(arr)
    w.tokens["val"] = len(arr)
    w.docs["train"] -= 1
    w.docs["val"] = 1
    w.val_bytes = nbytes


def _check_byte_lengths(val_file: Path, dtype: np.dtype, token_bytes: np.ndarray, text_bytes: int, name: str) -> None:
    """val_bpb divides by these byte counts, so a tokenizer whose tokens are not plain byte
    sequences (normalizers, SentencePiece-style spaces) would silently skew the metric."""
    val_tokens = np.memmap(val_file, dtype=dtype, mode="r")
    counted = sum(
        int(token_bytes[np.asarray(val_tokens[i : i + 2**20])].astype(np.int64).sum())
        for i in range(0, len(val_tokens), 2**20)
    )
    del val_tokens
    if counted != text_bytes:
        raise ValueError(
            f"tokenizer {name}: token byte lengths do not add up to the text's UTF-8 bytes; "
            "only byte-level BPE tokenizers (tokenizers' ByteLevel pre-tokenizer, no normalizer) are supported"
        )


def _bounded(docs: Iterator[str], limit: int) -> Iterator[str]:
    total = 0
    for d in docs:
        if total >= limit:
            return
        total += len(d)
        yield d
