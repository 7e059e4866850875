"""Recorded results (RESULTS.jsonl) for `ladder simulate`: one cell per line.

{"stage": "10m", "candidate": "bridge", "hostBlock": "a100", "seed": 1, "value": 1.21, "trainSeconds": 600}
A null or missing value records a failed cell. The measured fields a CellResult reports
(core/result.py `Measured`: trainSeconds, corpus, dataPasses, peakMemoryBytes) are optional
(without trainSeconds the budget is used); so is occupiedSeconds (how long the cell held its
GPUs; core.accounting).
"""

from __future__ import annotations

import json
import math

from pydantic import ConfigDict, Field, ValidationError, field_validator

from .api import LadderSpec, pydantic_errors
from .cell import CellKey, CellOutcome
from .model import SpecModel
from .result import MAX_RESULT_VALUE, Measured, train_seconds_limit, value_in_range


class RecordedResult(Measured, SpecModel):
    model_config = ConfigDict(extra="forbid")  # a user's file: a misspelt key is an error

    stage: str
    candidate: str
    host_block: str
    seed: int
    value: float | None = None
    occupied_seconds: float | None = Field(None, ge=0)
    reason: str | None = None

    @field_validator("value")
    @classmethod
    def _value_in_range(cls, v: float | None) -> float | None:
        if v is not None and not value_in_range(v):
            raise ValueError(f"{v!r} is out of range (finite and within +-{MAX_RESULT_VALUE:g})")
        return v

    @field_validator("train_seconds")
    @classmethod
    def _seconds_finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"{v!r} is not a finite number of seconds")
        return v


class RecordedResultsInvalid(ValueError):
    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def parse_results(text: str, source: str = "results", spec: LadderSpec | None = None) -> dict[CellKey, CellOutcome]:
    """Parse JSONL into outcomes keyed by (stage, candidate, hostBlock, seed); every bad line is
    reported. With the ladder's spec, train seconds past a cell's deadline are reported too."""
    budgets = {st.name: st.budget_seconds for st in spec.stages} if spec is not None else {}
    errors: list[str] = []
    out: dict[CellKey, CellOutcome] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source}:{n}"
        try:
            r = RecordedResult.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: not JSON ({exc.msg})")
            continue
        except ValidationError as exc:
            errors += [f"{where}: {e}" for e in pydantic_errors(exc)]
            continue
        if (
            r.stage in budgets
            and r.train_seconds is not None
            and r.train_seconds > train_seconds_limit(budgets[r.stage])
        ):
            errors.append(
                f"{where}: trainSeconds: {r.train_seconds!r} is out of range (at most the cell's deadline, "
                f"{train_seconds_limit(budgets[r.stage]):g} s for stage {r.stage!r})"
            )
            continue
        key = CellKey(r.stage, r.candidate, r.host_block, r.seed)
        if key in out:
            errors.append(f"{where}: a second result for cell {r.stage}/{r.candidate}/{r.host_block}/{r.seed}")
            continue
        ok = r.value is not None
        out[key] = CellOutcome(
            "succeeded" if ok else "failed",
            r.value,
            occupied_seconds=r.occupied_seconds,
            reason=r.reason or ("" if ok else "recorded without a value"),
            **r.measured(),
        )
    if errors:
        raise RecordedResultsInvalid(errors)
    return out
