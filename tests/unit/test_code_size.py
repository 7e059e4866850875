"""Readable units (issue 23): no function over FUNCTION_LINES lines and no class over CLASS_LINES
in the operator's and the trainer's packages, measured on the source (ast), docstrings and
comments included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUNCTION_LINES = 80
CLASS_LINES = 250
PACKAGES = ["operator/promotion_ladder", "trainer/ladder_trainer"]


def too_long(path: Path, root: Path = REPO) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = CLASS_LINES if isinstance(node, ast.ClassDef) else FUNCTION_LINES
            if lines > limit:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {lines} lines (limit {limit})")
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_or_class_is_too_long(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no Python files under {package}"
    assert [x for p in files for x in too_long(p)] == []


def test_the_check_would_catch_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES))
    src = tmp_path / "long.py"
    src.write_text(f"def long():\n{body}\n")
    assert too_long(src, tmp_path) == [f"long.py:1 long: {FUNCTION_LINES + 1} lines (limit {FUNCTION_LINES})"]
