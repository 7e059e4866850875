"""`ladder run`'s placement: GPU groups per cell and the refusals, as data in, data out; and
the contract's process variables it hands each cell."""

import pytest

from promotion_ladder.core.contract import process_env
from promotion_ladder.local.placement import PlacementError, gpu_groups

GROUPS = {
    "no gpus": (([], 4, 1), []),
    "one per cell": ((["0", "1", "2"], 1, 1), [["0"], ["1"], ["2"]]),
    "gpus 0 counts as one": ((["0", "1"], 0, 1), [["0"], ["1"]]),
    "two per cell": ((["0", "1", "2", "3"], 2, 1), [["0", "1"], ["2", "3"]]),
    "a remainder stays idle": ((["0", "1", "2"], 2, 1), [["0", "1"]]),
    "all of them": ((["4", "5", "6", "7"], 4, 1), [["4", "5", "6", "7"]]),
}


@pytest.mark.parametrize("args,want", GROUPS.values(), ids=GROUPS.keys())
def test_gpu_groups(args, want):
    assert gpu_groups(*args) == want


REFUSED = {
    "more gpus than the machine": (
        (["0", "1"], 8, 1),
        r"trainer.gpus: 8 GPUs per cell, but this machine has 2 \(ids 0, 1",
    ),
    "multi-node": ((["0"], 1, 2), r"trainer.nodes: 2: `ladder run` runs every cell on this one machine"),
    "multi-node without gpus": (([], 1, 3), r"trainer.nodes: 3"),
}


@pytest.mark.parametrize("args,match", REFUSED.values(), ids=REFUSED.keys())
def test_refusals_name_the_field(args, match):
    with pytest.raises(PlacementError, match=match):
        gpu_groups(*args)


def test_process_env_asks_for_at_least_one_process():
    assert process_env(0) == {"LADDER_GPUS": "1", "LADDER_NODES": "1"}
    assert process_env(8) == {"LADDER_GPUS": "8", "LADDER_NODES": "1"}
