"""A user's corpus as work units: which input kinds `prepare` reads and how they are cut up.

A unit is a bounded slice of the input (a group of text files, a byte range of a JSONL file
cut at line ends, one Parquet row group, a token range of a pre-tokenized shard cut at
end-of-text tokens) that one worker turns into one train shard and one val shard. Units are
listed in a deterministic order from the inputs alone, and each carries a key (path, range,
size, mtime) so that a resumed run can tell a finished unit from a changed one.

Pure Python plus numpy; pyarrow is imported only when a Parquet input is present.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text", ".py"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
TOKEN_SUFFIXES = {".bin"}

# llm.c's shard header: 256 int32, [0] magic, [1] version, [2] token count; tokens follow.
LLMC_HEADER_INTS = 256
LLMC_FORMATS: dict[int, dict[int, type[np.unsignedinteger[Any]]]] = {
    20240520: {1: np.uint16},  # GPT-2 shards
    20240801: {7: np.uint32},  # Llama 3 shards
}


class InputError(ValueError):
    """An input that cannot be read as a corpus; the message names the file."""


@dataclass(frozen=True)
class Unit:
    kind: str  # "text" | "jsonl" | "parquet" | "tokens"
    paths: tuple[str, ...]  # one path, or several text files
    start: int = 0  # bytes (jsonl), row group (parquet), token index (tokens)
    end: int = 0
    size: int = 0  # input bytes this unit stands for (progress and ETA)
    offset: int = 0  # tokens: bytes before the first token (llm.c header)
    dtype: str = "uint16"  # tokens: id type in the file
    stamp: tuple = field(default=())  # (size, mtime_ns) of each path: part of the key

    def key(self) -> str:
        return json.dumps([self.kind, self.paths, self.start, self.end, self.offset, self.dtype, self.stamp])


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return (st.st_size, st.st_mtime_ns)


def input_files(inputs: list[str]) -> list[Path]:
    """Files named, and files of known kinds under folders named, in a deterministic order."""
    out: list[Path] = []
    known = TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES | TOKEN_SUFFIXES
    for raw in inputs:
        p = Path(raw)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(
                q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in known and not q.name.startswith(".")
            )
            if not found:
                raise InputError(f"{p}: no text (.txt/.md/.rst/.py), .jsonl, .parquet or .bin files inside")
            out.extend(found)
        else:
            raise InputError(f"{p}: no such file or directory")
    return out


def kind_of(p: Path) -> str:
    s = p.suffix.lower()
    if s in JSONL_SUFFIXES:
        return "jsonl"
    if s in PARQUET_SUFFIXES:
        return "parquet"
    if s in TOKEN_SUFFIXES:
        return "tokens"
    return "text"  # any other file named explicitly is read as UTF-8 text


def token_file_layout(p: Path) -> tuple[int, str, int]:
    """(byte offset of the first token, dtype, token count) of an llm.c or nanoGPT shard."""
    size = p.stat().st_size
    with open(p, "rb") as fh:
        raw = fh.read(LLMC_HEADER_INTS * 4)
    head = np.frombuffer(raw[: len(raw) // 4 * 4], dtype=np.int32)
    if len(head) == LLMC_HEADER_INTS and int(head[0]) in LLMC_FORMATS:
        magic, version, n = int(head[0]), int(head[1]), int(head[2])
        dtype = LLMC_FORMATS[magic].get(version)
        if dtype is None:
            raise InputError(f"{p}: llm.c shard with magic {magic} but unknown version {version}")
        offset = LLMC_HEADER_INTS * 4
        if offset + n * np.dtype(dtype).itemsize != size:
            raise InputError(
                f"{p}: llm.c header says {n} tokens, the file holds {(size - offset) // np.dtype(dtype).itemsize}"
            )
        return offset, np.dtype(dtype).name, n
    if size % 2:
        raise InputError(
            f"{p}: not an llm.c shard (no magic 20240520) and an odd size for nanoGPT's flat uint16 tokens"
        )
    return 0, "uint16", size // 2  # nanoGPT's prepare.py: np.uint16 ids, no header


def plan_units(files: list[Path], unit_bytes: int, eot: int | None, text_field: str) -> list[Unit]:
    """Cut the inputs into units of about `unit_bytes` input bytes each."""
    units: list[Unit] = []
    text_group: list[Path] = []
    group_size = 0

    def flush_text():
        nonlocal text_group, group_size
        if text_group:
            units.append(
                Unit(
                    "text",
                    tuple(str(p) for p in text_group),
                    size=group_size,
                    stamp=tuple(_stamp(p) for p in text_group),
                )
            )
        text_group, group_size = [], 0

    for p in files:
        kind = kind_of(p)
        if kind == "text":
            text_group.append(p)
            group_size += p.stat().st_size
            if group_size >= unit_bytes:
                flush_text()
            continue
        flush_text()
        if kind == "jsonl":
            units.extend(_jsonl_units(p, unit_bytes))
        elif kind == "parquet":
            units.extend(_parquet_units(p, text_field))
        else:
            if eot is None:
                raise InputError(
                    f"{p}: pre-tokenized input needs the tokenizer it was made with (--tokenizer PATH/tokenizer.json)"
                )
            units.extend(_token_units(p, unit_bytes, eot))
    flush_text()
    return units


def _jsonl_units(p: Path, unit_bytes: int) -> list[Unit]:
    size = p.stat().st_size
    bounds = [0]
    with open(p, "rb") as fh:
        pos = unit_bytes
        while pos < size:
            fh.seek(pos - 1)
            fh.readline()  # a unit starts at the beginning of a line
            nxt = fh.tell()
            if nxt >= size:
                break
            if nxt > bounds[-1]:
                bounds.append(nxt)
            pos = max(nxt, pos) + unit_bytes
    bounds.append(size)
    stamp = (_stamp(p),)
    return [Unit("jsonl", (str(p),), a, b, size=b - a, stamp=stamp) for a, b in pairwise(bounds) if b > a]


def _parquet_units(p: Path, text_field: str) -> list[Unit]:
    pq = _pyarrow_parquet(p)
    meta = pq.ParquetFile(p).metadata
    if text_field not in meta.schema.names:
        raise InputError(f"{p}: no column {text_field!r} (columns: {', '.join(meta.schema.names)}); set --text-field")
    stamp = (_stamp(p),)
    total = max(sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)), 1)
    file_size = p.stat().st_size
    return [
        Unit("parquet", (str(p),), i, i + 1, size=file_size * meta.row_group(i).total_byte_size // total, stamp=stamp)
        for i in range(meta.num_row_groups)
    ]


def _token_units(p: Path, unit_bytes: int, eot: int) -> list[Unit]:
    offset, dtype, n = token_file_layout(p)
    item = np.dtype(dtype).itemsize
    tokens = np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=(n,)) if n else np.zeros(0, dtype)
    per_unit = max(unit_bytes // item, 1)
    bounds = [0]
    pos = per_unit
    while pos < n:
        nxt = _next_eot(tokens, pos, eot)  # a unit starts right after an end-of-text token
        if nxt >= n:
            break
        if nxt > bounds[-1]:
            bounds.append(nxt)
        pos = nxt + per_unit
    bounds.append(n)
    stamp = (_stamp(p),)
    return [
        Unit("tokens", (str(p),), a, b, size=(b - a) * item, offset=offset, dtype=dtype, stamp=stamp)
        for a, b in pairwise(bounds)
        if b > a
    ]


def _next_eot(tokens: np.ndarray, pos: int, eot: int, block: int = 1 << 20) -> int:
    """Index just past the first `eot` at or after pos (len(tokens) if there is none)."""
    n = len(tokens)
    while pos < n:
        hits = np.flatnonzero(tokens[pos : pos + block] == eot)
        if len(hits):
            return pos + int(hits[0]) + 1
        pos += block
    return n


def _pyarrow_parquet(p: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{p}: reading Parquet needs pyarrow (pip install 'promotion-ladder[prepare]')") from None
    return pq


# ---- reading a unit ------------------------------------------------------------------------


def iter_texts(unit: Unit, text_field: str, batch_bytes: int) -> Iterator[list[str]]:
    """The unit's documents as text, in batches of about batch_bytes characters."""
    batch: list[str] = []
    size = 0
    for text in _texts(unit, text_field):
        if not text:
            continue
        batch.append(text)
        size += len(text)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _texts(unit: Unit, text_field: str) -> Iterator[str]:
    if unit.kind == "text":
        for path in unit.paths:
            try:
                with open(path, encoding="utf-8", newline="") as fh:  # newline="": keep the bytes as they are
                    yield fh.read()
            except UnicodeDecodeError:
                continue  # not UTF-8 text (binary or another encoding): not part of the corpus
    elif unit.kind == "jsonl":
        path = unit.paths[0]
        with open(path, "rb") as fh:
            fh.seek(unit.start)
            pos = unit.start
            while pos < unit.end:
                line = fh.readline()
                if not line:
                    break
                lineno_hint = pos
                pos += len(line)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{path}: line at byte {lineno_hint} is not JSON: {exc}") from None
                if not isinstance(row, dict) or text_field not in row:
                    raise InputError(
                        f"{path}: line at byte {lineno_hint} has no {text_field!r} field (set --text-field)"
                    )
                value = row[text_field]
                if not isinstance(value, str):
                    raise InputError(f"{path}: line at byte {lineno_hint}: field {text_field!r} is not a string")
                yield value
    elif unit.kind == "parquet":
        pq = _pyarrow_parquet(Path(unit.paths[0]))
        pf = pq.ParquetFile(unit.paths[0])
        for batch in pf.iter_batches(batch_size=1024, row_groups=[unit.start], columns=[text_field]):
            for value in batch.column(0).to_pylist():
                if value is not None:
                    yield str(value)
    else:
        raise AssertionError(f"iter_texts on a {unit.kind} unit")


def iter_token_docs(unit: Unit, eot: int, batch_tokens: int) -> Iterator[list[np.ndarray]]:
    """A pre-tokenized unit's documents (ids between end-of-text tokens), in batches."""
    n = unit.end
    tokens = np.memmap(unit.paths[0], dtype=unit.dtype, mode="r", offset=unit.offset, shape=(n,))
    pos = unit.start
    while pos < unit.end:
        stop = min(pos + batch_tokens, unit.end)
        chunk = np.asarray(tokens[pos:stop])
        cuts = np.flatnonzero(chunk == eot)
        if stop < unit.end:
            if not len(cuts):  # a document longer than the batch: extend to its end
                stop = min(_next_eot(tokens, stop, eot), unit.end)
                chunk = np.asarray(tokens[pos:stop])
                cuts = np.flatnonzero(chunk == eot)
            else:
                stop = pos + int(cuts[-1]) + 1
                chunk = chunk[: int(cuts[-1]) + 1]
        docs = [d for d in np.split(chunk, cuts) if len(d)]
        # np.split leaves each separator at the start of the next piece; drop them.
        docs = [d[1:] if d[0] == eot else d for d in docs]
        yield [d for d in docs if len(d)]
        pos = stop
