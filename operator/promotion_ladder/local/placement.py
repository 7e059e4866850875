"""Where `ladder run` puts a cell's processes: which GPUs each cell gets.

A cell with trainer.gpus = N gets N GPU ids of its own (CUDA_VISIBLE_DEVICES) and, by the
cell contract (core.contract.process_env), LADDER_GPUS=N, so the trainer starts N processes,
one per GPU. On a machine without GPUs it still gets LADDER_GPUS=N and trains as N gloo
processes on the CPU: slow, but the same code path, which is what tests and demos of
multi-process cells need. A ladder whose cells need
more GPUs than the machine has, or more than one node, is refused before anything runs.
"""

from __future__ import annotations


class PlacementError(ValueError):
    """The ladder's cells cannot run on this machine; the message names the field."""


def gpu_groups(gpus: list[str], gpus_per_cell: int, nodes: int = 1) -> list[list[str]]:
    """Disjoint groups of GPU ids, one per cell that may run at once ([] without GPUs)."""
    if nodes > 1:
        raise PlacementError(
            f"trainer.nodes: {nodes}: `ladder run` runs every cell on this one machine; "
            "multi-node cells need the operator on a cluster (docs/operator.md)"
        )
    if not gpus:
        return []
    per_cell = max(gpus_per_cell, 1)
    if per_cell > len(gpus):
        raise PlacementError(
            f"trainer.gpus: {gpus_per_cell} GPUs per cell, but this machine has {len(gpus)} "
            f"(ids {', '.join(gpus)}, from CUDA_VISIBLE_DEVICES or nvidia-smi); lower trainer.gpus "
            "or run the ladder on a cluster"
        )
    return [gpus[i * per_cell : (i + 1) * per_cell] for i in range(len(gpus) // per_cell)]
