"""The import rule of docs/architecture.md, enforced: the core is pure, adapters do not lean on
each other. Reads the source (ast), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "operator" / "promotion_ladder"

# folder (or module) -> what it must not import (absolute top-level names, or package parts)
FORBIDDEN = {
    "core": {
        "kubernetes",
        "kopf",
        "torch",
        "prometheus_client",
        "aiohttp",
        "promotion_ladder.controller",
        "promotion_ladder.local",
        "promotion_ladder.report",
        "promotion_ladder.cli",
        "promotion_ladder.files",
        "promotion_ladder.render",
    },
    "local": {"kubernetes", "kopf", "torch", "promotion_ladder.controller"},
    "report": {"kopf", "torch", "promotion_ladder.controller", "promotion_ladder.local"},
    "controller": {"torch", "promotion_ladder.local", "promotion_ladder.report"},
}


def imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against the package)."""
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                mod = ".".join(base + ((node.module,) if node.module else ()))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def breaks(name: str, rule: set[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in rule)


@pytest.mark.parametrize("folder", FORBIDDEN)
def test_import_rule(folder):
    bad = [
        f"{p.relative_to(PKG)} imports {name}"
        for p in sorted((PKG / folder).rglob("*.py"))
        for name in sorted(imports(p))
        if breaks(name, FORBIDDEN[folder])
    ]
    assert bad == []


def test_the_rule_would_catch_a_violation():
    fake = PKG / "core" / "contract.py"
    assert "promotion_ladder.core.result" in imports(fake)  # relative imports are resolved
    assert breaks("kubernetes.client", FORBIDDEN["core"]) and breaks(
        "promotion_ladder.controller.jobs", FORBIDDEN["local"]
    )
