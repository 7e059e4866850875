"""Shared fixtures for the trainer tests: a private cache and a tiny run's settings.

Every test runs the trainer on CPU with the byte tokenizer and a model of a few thousand
parameters, so a cell takes seconds; the cache is per session so nothing touches ~/.cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..corpus import write_tiny_corpus

ROOT = Path(__file__).resolve().parents[2]
TINY = {"depth": 1, "aspect_ratio": 32, "head_dim": 16, "seq_len": 32, "tokenizer": "byte", "batch": 64}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ladder-cache")


@pytest.fixture(autouse=True)
def _private_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("LADDER_CACHE", str(cache_dir))
    for var in list(os.environ):
        if var.startswith(("LADDER_", "POD_")) and var != "LADDER_CACHE":
            monkeypatch.delenv(var)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small text corpus (a few stdlib modules) so data preparation takes milliseconds."""
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def run_cli(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m ladder_trainer ...` in a subprocess, with this test's environment."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ladder_trainer", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )
