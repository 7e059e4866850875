"""The node agent's kubelet-style $(VAR) expansion and --nodes parsing (no cluster needed)."""

import pytest

from localcluster.expansion import expand
from localcluster.nodeagent import GPU_RESOURCE, HOST_BLOCK_LABEL, default_nodes, parse_nodes, signal_exit_code

ENV = {"A": "alpha", "B": "$(A)", "EMPTY": ""}

EXPANSION_CASES = {
    "defined variable": ("x-$(A)-y", "x-alpha-y"),
    "undefined variable stays as written": ("$(NOPE)", "$(NOPE)"),
    "escaped reference": ("$$(A)", "$(A)"),
    "double dollar": ("cost: $$5", "cost: $5"),
    "lone dollar kept": ("$A and $", "$A and $"),
    "unterminated reference kept": ("$(A", "$(A"),
    "no recursion into values": ("$(B)", "$(A)"),
    "empty value": ("[$(EMPTY)]", "[]"),
    "several": ("$(A)$(A)", "alphaalpha"),
}


@pytest.mark.parametrize("text,want", EXPANSION_CASES.values(), ids=EXPANSION_CASES.keys())
def test_expand(text, want):
    assert expand(text, ENV) == want


NODE_CASES = {
    "default": ("default", ["a100-0", "a100-1", "l40s-0"]),
    "none": ("none", []),
    "counts": ("a100=1,l40s=2", ["a100-0", "l40s-0", "l40s-1"]),
}


@pytest.mark.parametrize("spec,names", NODE_CASES.values(), ids=NODE_CASES.keys())
def test_parse_nodes(spec, names):
    assert [n.name for n in parse_nodes(spec)] == names


def test_parse_nodes_gpu_count_and_errors():
    [node] = parse_nodes("h100=1:8")
    assert node.capacity[GPU_RESOURCE] == "8" and node.labels[HOST_BLOCK_LABEL] == "h100"
    with pytest.raises(ValueError, match="KIND=COUNT"):
        parse_nodes("a100")
    with pytest.raises(ValueError, match="unknown node kind"):
        parse_nodes("tpu=1")


def test_default_nodes_have_four_gpus_each():
    assert {n.name: n.capacity[GPU_RESOURCE] for n in default_nodes()} == {"a100-0": "4", "a100-1": "4", "l40s-0": "4"}


def test_signal_exit_code_like_kubelet():
    assert [signal_exit_code(c) for c in (0, 3, -9, -15)] == [0, 3, 137, 143]
