"""A tiny text corpus for trainer runs in tests: 40 documents cut from two stdlib modules,
so data preparation takes milliseconds and needs nothing from outside."""

import json
import textwrap
from pathlib import Path


def write_tiny_corpus(directory: Path) -> Path:
    src = Path(textwrap.__file__).read_text() + Path(json.__file__).read_text()
    for i in range(40):
        (directory / f"doc{i:02d}.txt").write_text(src[i * 500 : i * 500 + 2000] + "\n")
    return directory
