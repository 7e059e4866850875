"""Multi-process cells from the inside: this rank's place in the world, its device, the process
group, and the few collectives the training loop agrees through.

A rank learns its place from the launcher's environment (RANK, LOCAL_RANK, WORLD_SIZE: set by
torch.distributed.run, whether `python -m ladder_trainer` started it or a user ran torchrun).
Without them it is a world of one with no process group, and every collective is the identity,
so the single-process cell runs exactly as before. Under a launcher (even with one process) the
process group is up: NCCL with one GPU per process (cuda:LOCAL_RANK), gloo on CPUs.

Every decision that ends or shapes a step (the budget stop, growth, the learning-rate
multiplier, divergence) is taken on values all ranks agree on (the slowest clock, the summed
loss), so no rank can stop a step earlier than another and leave it waiting in a collective.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ConfigError
from .hardware import pick_device

# A collective that waits this long has lost a peer for good. The agent notices a crashed rank
# on its node within a second, so this bounds a rank that hangs without dying, or one on
# another node; long, because a rank may legitimately wait through another node's setup (a
# BPE trained on a large corpus) in its first collective.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


class PeerLost(RuntimeError):
    """A collective failed: most likely another rank died. Its reason is the other rank's."""


@dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    group: bool = False  # under a launcher: a process group, DDP and collectives (even for size 1)
    _comm: torch.device = field(default_factory=lambda: torch.device("cpu"), repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), group=True)

    def device(self, requested: str) -> torch.device:
        """This rank's device: the requested kind, on GPU number LOCAL_RANK when in a group."""
        dev = pick_device(requested)
        if not self.group or dev.type != "cuda":
            return dev
        if dev.index is not None and self.size > 1:
            raise ConfigError(
                f"device {requested!r} names one GPU, but {self.size} processes share this cell; "
                "use cuda or auto (each process takes cuda:LOCAL_RANK)"
            )
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {self.local_rank}: only {torch.cuda.device_count()} CUDA device(s) "
                "are visible to this process (CUDA_VISIBLE_DEVICES)"
            )
        dev = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(dev)
        return dev

    def start(self, device: torch.device) -> None:
        if not self.group or torch.distributed.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        torch.distributed.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, **kwargs)
        self._comm = device if device.type == "cuda" else torch.device("cpu")

    def stop(self) -> None:
        if self.group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    # ---- collectives (the identity in a world of one) -----------------------------------------

    def _reduce(self, values: list[float], op) -> list[float]:
        if not self.group:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm)
        try:
            torch.distributed.all_reduce(t, op=op)
            return t.tolist()
        except Exception as exc:
            raise PeerLost(
                f"rank {self.rank}: a collective failed, most likely because another rank failed: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from exc

    def max(self, *values: float) -> list[float]:
        return self._reduce(list(values), torch.distributed.ReduceOp.MAX if self.group else None)

    def sum(self, *values: float) -> list[float]:
        return self._reduce(list(values), torch.distributed.ReduceOp.SUM if self.group else None)
