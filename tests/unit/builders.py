"""Builders for test ladders: a valid ladder by default, changed one field at a time."""

from __future__ import annotations

import copy
from typing import Any

from promotion_ladder.core.api import PromotionLadder, load_ladder


def ladder_doc(
    candidates: int | list[str] = 4,
    stages: list[dict] | None = None,
    host_blocks: tuple[str, ...] = ("a100", "l40s"),
    verdict: dict | None = None,
    **spec: Any,
) -> dict:
    names = [f"c{i}" for i in range(candidates)] if isinstance(candidates, int) else list(candidates)
    if stages is None:
        stages = [
            {"name": "s1", "budget": "2m", "hostBlocks": list(host_blocks), "seeds": [1], "promote": {"top": 2}},
            {"name": "s2", "budget": "10m", "hostBlocks": list(host_blocks), "seeds": [1, 2]},
        ]
    doc = {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": "test"},
        "spec": {
            "hostBlocks": [{"name": h, "nodeSelector": {"ladder.promotion.dev/host-block": h}} for h in host_blocks],
            "candidates": [{"name": n, "config": {"depth": 4}} for n in names],
            "stages": copy.deepcopy(stages),
            **spec,
        },
    }
    if verdict is not None:
        doc["spec"]["verdict"] = verdict
    return doc


def build(doc: dict | None = None, **kw: Any) -> PromotionLadder:
    return load_ladder(doc if doc is not None else ladder_doc(**kw))


def edit(doc: dict, path: str, value: Any) -> dict:
    """Return a copy of doc with the dotted path (list indices as numbers) set; value DELETE removes it."""
    out = copy.deepcopy(doc)
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = out
    for p in parts[:-1]:
        node = node[p]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


DELETE = object()


def funnel_stages() -> list[dict]:
    """The worst realistic funnel for status-size tests: 4 cells per candidate at the first
    stage, the top 100 go on (4 cells each), the top 10 to a final stage of 8 cells each."""
    return [
        {"name": "2m", "budget": "2m", "hostBlocks": ["a100", "l40s"], "seeds": [1, 2], "promote": {"top": 100}},
        {"name": "10m", "budget": "10m", "hostBlocks": ["a100", "l40s"], "seeds": [1, 2], "promote": {"top": 10}},
        {"name": "60m", "budget": "60m", "hostBlocks": ["a100", "l40s"], "seeds": [1, 2, 3, 4]},
    ]
