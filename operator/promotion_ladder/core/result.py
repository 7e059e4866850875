"""The cell result document: what one run of a cell reports back.

Owned here because every adapter shares it: the trainer writes it (result file, Pod
annotation, termination message), the local runner and the operator read and validate it
(the rest of the cell contract, and how a finished cell is judged: core/contract.py).
The schema is versioned through `apiVersion`/`kind`; a reader rejects anything else.
"""

from __future__ import annotations

import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

RESULT_API_VERSION = "ladder.promotion.dev/v1alpha1"
RESULT_KIND = "CellResult"

Status = Literal["ok", "diverged", "oom", "error"]


class CellResult(BaseModel):
    """One cell's result document (camelCase on the wire, like the custom resource)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    api_version: Literal["ladder.promotion.dev/v1alpha1"] = Field(RESULT_API_VERSION, alias="apiVersion")
    kind: Literal["CellResult"] = RESULT_KIND
    # Identity: present when the runner set the LADDER_* variables.
    ladder: str | None = None
    stage: str | None = None
    candidate: str | None = None
    host_block: str | None = Field(None, alias="hostBlock")
    seed: int | None = None

    status: Status
    message: str = ""
    metric: str = "val_bpb"
    value: float | None = None
    train_seconds: float | None = Field(None, ge=0, alias="trainSeconds")
    # Process start to the first timed step (imports, data, model, compilation, warm-up), and
    # the evaluation after the budget: the time a cell holds its GPUs besides training.
    setup_seconds: float | None = Field(None, ge=0, alias="setupSeconds")
    eval_seconds: float | None = Field(None, ge=0, alias="evalSeconds")
    steps: int | None = Field(None, ge=0)
    tokens: int | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, ge=0, alias="tokensPerSecond")
    mfu: float | None = Field(None, ge=0)
    peak_memory_bytes: int | None = Field(None, ge=0, alias="peakMemoryBytes")
    gpu_name: str | None = Field(None, alias="gpuName")
    # What the cell trained and evaluated on: a fingerprint of the prepared data (tokenizer,
    # token counts, the val split's content) and training tokens consumed / available.
    corpus: str | None = Field(None, max_length=64)
    data_passes: float | None = Field(None, ge=0, alias="dataPasses")
    # Processes that trained the cell together (data-parallel, one per GPU); tokensPerSecond and
    # mfu are over all of them. Absent from trainers that predate multi-process cells: read as 1.
    world_size: int | None = Field(None, ge=1, alias="worldSize")

    @model_validator(mode="after")
    def _ok_needs_finite_value(self) -> "CellResult":
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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ResultError("invalid", f"result does not match the CellResult schema: {problems}") from None
