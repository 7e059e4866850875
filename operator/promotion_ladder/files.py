"""Reading ladders and status documents from files, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .core.api import KIND, LadderInvalid, PromotionLadder, load_ladder
from .core.status import LadderStatus, parse_status

# libyaml's C loader when PyYAML was built with it: the pure-Python one spent most of
# `ladder simulate`'s time on a 1,000-candidate ladder (benchmarks/simulate-results.md).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class FileError(ValueError):
    """A file that cannot be used; the message names it and says what to do."""


def read_text(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise FileError(f"{p}: is a folder, expected a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileError(f"{p}: cannot read: {exc}") from None


def _load_yaml(text: str) -> list:
    try:
        return [d for d in yaml.load_all(text, Loader=_LOADER) if d is not None]
    except yaml.YAMLError:
        if _LOADER is yaml.SafeLoader:
            raise
    # libyaml places some errors at the end of the stream; the Python loader says where the
    # problem is, so a bad file is read again by it for the message.
    return [d for d in yaml.safe_load_all(text) if d is not None]


def read_ladder(path: str | Path) -> PromotionLadder:
    """Load and validate the one PromotionLadder in a YAML or JSON file."""
    return load_ladder(read_ladder_document(path), source=str(path))


def read_ladder_document(path: str | Path) -> Any:
    """The one PromotionLadder document of a YAML or JSON file, as written (not validated)."""
    text = read_text(path)
    try:
        docs = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FileError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    ladders = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(docs) == 1 and not ladders:
        ladders = docs  # let validation say what is wrong with it
    if not ladders:
        raise FileError(f"{path}: holds no {KIND} document")
    if len(ladders) > 1:
        raise FileError(f"{path}: holds {len(ladders)} {KIND} documents; give one ladder per file")
    return ladders[0]


def read_status(path: str | Path) -> LadderStatus:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and "status" in data and "spec" in data:
        data = data["status"]
    try:
        return parse_status(data)
    except ValueError as exc:
        raise FileError(f"{path}: {exc}") from None


__all__ = ["FileError", "LadderInvalid", "read_ladder", "read_status", "read_text"]
