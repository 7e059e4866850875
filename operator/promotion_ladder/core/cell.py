"""The cell: one candidate's run at one stage, on one host block, with one seed; and its
terminal outcome. Every module that names a cell uses these (no raw 4-tuples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple


class CellKey(NamedTuple):
    """A cell's identity, usable as a dict key (it is a tuple, so it also equals the plain
    (stage, candidate, hostBlock, seed) tuples older callers build)."""

    stage: str
    candidate: str
    host_block: str
    seed: int


@dataclass(frozen=True, order=True)
class Cell:
    """One unit of work: a candidate's run at one stage, on one host block, with one seed."""

    stage: str
    candidate: str
    host_block: str
    seed: int

    @property
    def key(self) -> CellKey:
        return CellKey(self.stage, self.candidate, self.host_block, self.seed)

    @classmethod
    def of(cls, key: tuple[str, str, str, int]) -> "Cell":
        return cls(*key)

    def __str__(self) -> str:
        return f"{self.stage}/{self.candidate}/{self.host_block}/{self.seed}"


@dataclass(frozen=True)
class CellOutcome:
    """A terminal cell: succeeded with a value, or failed (crashed, diverged, never reported)."""

    state: Literal["succeeded", "failed"]
    value: float | None = None
    train_seconds: float | None = None
    reason: str = ""
    # Seconds the cell held its GPUs (Pod bound to finished, or the local process's wall time;
    # every attempt counted). None: not measured (see core.accounting for how it is counted).
    occupied_seconds: float | None = None
    corpus: str | None = None  # fingerprint of the data the cell trained on (core/data_checks.py)
    data_passes: float | None = None  # training tokens consumed / available

    @property
    def ok(self) -> bool:
        return self.state == "succeeded" and self.value is not None and math.isfinite(self.value)
