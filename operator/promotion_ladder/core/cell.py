"""The cell: one candidate's run at one stage, on one host block, with one seed; and its
terminal outcome. Every module that names a cell uses these (no raw 4-tuples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from .result import Measured, value_in_range


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
    def of(cls, key: tuple[str, str, str, int]) -> Cell:
        return cls(*key)

    def __str__(self) -> str:
        return f"{self.stage}/{self.candidate}/{self.host_block}/{self.seed}"


OutcomeState = Literal["succeeded", "failed"]


class CellOutcome(Measured):
    """A terminal cell: succeeded with a value, or failed (crashed, diverged, never reported).

    Its measured fields (train seconds, corpus, ...) are its result's (core/result.py
    `Measured`); the rest is how it ended and what it ran with. Built positionally as
    `CellOutcome("succeeded", 1.25, train_seconds=60.0)`; `model_copy(update=...)` changes it."""

    model_config = ConfigDict(extra="forbid")

    state: OutcomeState
    value: float | None = None
    reason: str = ""
    # Seconds the cell held its GPUs (Pod bound to finished, or the local process's wall time;
    # every attempt counted). None: not measured (see core.accounting for how it is counted).
    occupied_seconds: float | None = None
    # What the cell ran with, recorded at launch (the audit record: a later spec edit does not
    # rewrite it; accounting charges `gpus` when recorded). None: not recorded (older statuses).
    gpus: int | None = None
    node: str | None = None
    image: str | None = None

    def __init__(self, state: OutcomeState, value: float | None = None, **fields: Any) -> None:
        BaseModel.__init__(self, state=state, value=value, **fields)  # the fields' own __init__

    @property
    def ok(self) -> bool:
        # In range, not just finite: the rules add and average values, and 1.7e308 + 1.7e308
        # overflows. Intake rejects such results; this keeps the rules total on any input.
        return self.state == "succeeded" and value_in_range(self.value)
