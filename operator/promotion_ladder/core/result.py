"""The cell result document, what one run of a cell reports back, and `Measured`, the part of
it the ladder records: the one list of measured fields.

Owned here because every adapter shares it: the trainer writes it (result file, Pod
annotation, termination message), the local runner and the operator read and validate it
(the rest of the cell contract, and how a finished cell is judged: core/contract.py).
The schema is versioned through `apiVersion`/`kind`; a reader rejects anything else, and it is
strict: a number must be a JSON number (not a string or a boolean), so `"value": "0.25"` or
`"seed": true` is an invalid document, not 0.25 or seed 1.

`CellResult`, `CellOutcome` (core/cell.py: a finished cell) and `CellStatus` (core/status.py: the
status's record of it) all derive from `Measured`, so a new field the ladder records is declared
once, in `Measured`, and `measured()` carries it from each to the next.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from .budget import cell_deadline_seconds
from .model import WireModel

RESULT_API_VERSION: Literal["ladder.promotion.dev/v1alpha1"] = "ladder.promotion.dev/v1alpha1"
RESULT_KIND: Literal["CellResult"] = "CellResult"

Status = Literal["ok", "diverged", "oom", "error"]

# A metric value outside [-MAX_RESULT_VALUE, MAX_RESULT_VALUE] is not a measurement (val_bpb is
# about 1, losses and accuracies are small numbers): such a result is rejected at intake, and
# the rules treat such a value as no value, so sums and means can never overflow.
MAX_RESULT_VALUE = 1e6
# Why a continuing cell's predecessor checkpoint was refused: kept in the status, so bounded.
RESUME_REFUSED_LIMIT = 200


def value_in_range(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and abs(value) <= MAX_RESULT_VALUE


def train_seconds_limit(budget_seconds: float) -> float:
    """The most train seconds a cell can honestly report: its budget plus the grace the cell's
    deadline allows (a cell is killed past it, so more cannot have been spent)."""
    return float(cell_deadline_seconds(budget_seconds))


class Measured(WireModel):
    """What the ladder keeps of a cell's result besides its value, also when the cell failed:
    the result reports it, the cell's outcome and its status record carry it (camelCase on the
    wire). A new measured field goes here, and nowhere else in the core."""

    train_seconds: float | None = Field(default=None, ge=0)
    # What the cell trained and evaluated on: a fingerprint of the prepared data (tokenizer,
    # token counts, the val split's content) and training tokens consumed / available.
    corpus: str | None = Field(default=None, max_length=64)
    data_passes: float | None = Field(default=None, ge=0)
    # The memory one process of the cell needed at its peak: torch.cuda.max_memory_allocated on
    # a GPU, the peak resident set on a CPU; the largest over a cell's processes.
    peak_memory_bytes: int | None = Field(default=None, ge=0)
    # Continuation (spec.continuation): the training seconds the cell took over from its
    # predecessor's stable-phase checkpoint, which it did not run itself (0: it trained from
    # scratch); and, when it trained from scratch although it was to continue, why.
    resumed_seconds: float | None = Field(default=None, ge=0)
    resume_refused: str | None = Field(default=None, max_length=RESUME_REFUSED_LIMIT)

    def measured(self) -> dict[str, Any]:
        """The measured fields by name, to build another `Measured` from (one copy for all)."""
        return {name: getattr(self, name) for name in Measured.model_fields}


class _Envelope(WireModel):
    """What a result document is, whose it is and what it says; a base only so that these come
    first on the wire, before what the cell measured."""

    api_version: Literal["ladder.promotion.dev/v1alpha1"] = Field(default=RESULT_API_VERSION, alias="apiVersion")
    kind: Literal["CellResult"] = RESULT_KIND
    # Identity: present when the runner set the LADDER_* variables.
    ladder: str | None = None
    stage: str | None = None
    candidate: str | None = None
    host_block: str | None = None
    seed: int | None = None

    status: Status
    message: str = ""
    metric: str = "val_bpb"
    value: float | None = None


class CellResult(Measured, _Envelope):
    """One cell's result document (camelCase on the wire, like the custom resource): the
    envelope, the measured fields the ladder records, and what only the result reports."""

    # strict: no string or boolean stands in for a number, no float for an integer.
    model_config = ConfigDict(strict=True, extra="ignore")

    # Process start to the first timed step (imports, data, model, compilation, warm-up), and
    # the evaluation after the budget: the time a cell holds its GPUs besides training.
    setup_seconds: float | None = Field(default=None, ge=0)
    compile_seconds: float | None = Field(default=None, ge=0)  # of setupSeconds: the untimed warm-up steps
    eval_seconds: float | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=0)
    tokens: int | None = Field(default=None, ge=0)
    tokens_per_second: float | None = Field(default=None, ge=0)
    mfu: float | None = Field(default=None, ge=0)
    gpu_name: str | None = None
    # Processes that trained the cell together (data-parallel, one per GPU); tokensPerSecond and
    # mfu are over all of them. Absent from trainers that predate multi-process cells: read as 1.
    world_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ok_needs_finite_value(self) -> CellResult:
        if self.status == "ok" and (self.value is None or not math.isfinite(self.value)):
            raise ValueError("status 'ok' needs a finite 'value'")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    def identity(self) -> tuple[str | None, str | None, str | None, str | None, int | None]:
        return (self.ladder, self.stage, self.candidate, self.host_block, self.seed)


class ResultError(ValueError):
    """A result document that cannot be accepted; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_range(result: CellResult, budget_seconds: float) -> None:
    """Raise ResultError("range") when the result reports what no cell of this budget can have
    measured: a value that is not finite or beyond +-MAX_RESULT_VALUE, or train seconds that are
    not finite or beyond the cell's deadline (budget + grace). Every adapter calls this before a
    result counts, so one absurd document cannot reach the rules or the accounting."""
    if result.value is not None and not value_in_range(result.value):
        raise ResultError(
            "range", f"result value {result.value!r} is out of range (finite and within +-{MAX_RESULT_VALUE:g})"
        )
    limit = train_seconds_limit(budget_seconds)
    if result.train_seconds is not None and not (math.isfinite(result.train_seconds) and result.train_seconds <= limit):
        raise ResultError(
            "range",
            f"result trainSeconds {result.train_seconds!r} is out of range (at most the cell's deadline, {limit:g} s)",
        )


def parse_result(text: str | bytes) -> CellResult:
    """Parse and validate a result document, raising ResultError(reason=...) when it is bad."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise ResultError("malformed", f"result is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ResultError("malformed", "result must be a JSON object")
    try:
        return CellResult.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ResultError("invalid", f"result does not match the CellResult schema: {problems}") from None
