"""The one list of measured fields (core/result.py `Measured`): each field a result reports
travels through judge() to the cell's outcome, into the status, back out of it, and through
`ladder simulate`'s recorded results, and the CRD's status schema accepts it. A new field in
`Measured` is covered here without a new test."""

from __future__ import annotations

import json

import pytest

from promotion_ladder.core.cell import Cell
from promotion_ladder.core.contract import judge
from promotion_ladder.core.crd import crd
from promotion_ladder.core.recorded import parse_results
from promotion_ladder.core.result import Measured
from promotion_ladder.core.status import CellStatus, cell_status, recorded_outcome

CELL = Cell("s1", "c1", "a100", 1)
# One value per measured field, none of them a default.
MEASURED = {
    "train_seconds": 12.5,
    "corpus": "0e499a065cba",
    "data_passes": 0.25,
    "peak_memory_bytes": 3 * 2**30,
    "resumed_seconds": 7.5,
    "resume_refused": "checkpoint refused: corpus: ...",
}
WIRE = {Measured.model_fields[k].alias: v for k, v in MEASURED.items()}


def result(status: str = "ok", value: float | None = 1.25) -> str:
    doc = {
        "ladder": "test",
        "stage": CELL.stage,
        "candidate": CELL.candidate,
        "hostBlock": CELL.host_block,
        "seed": CELL.seed,
        "status": status,
        "value": value,
        **WIRE,
    }
    return json.dumps({k: v for k, v in doc.items() if v is not None})


def test_the_example_names_every_measured_field():
    assert set(MEASURED) == set(Measured.model_fields)


# name -> (exit code, result status, value, the cell's state)
ENDS = {"succeeded": (0, "ok", 1.25, "Succeeded"), "diverged": (3, "diverged", None, "Failed")}


@pytest.mark.parametrize("end", ENDS, ids=list(ENDS))
def test_measured_fields_travel_from_the_result_to_the_status_and_back(end):
    code, status, value, state = ENDS[end]
    outcome = judge(result(status, value), code, CELL, "test", "val_bpb")
    assert outcome.measured() == MEASURED
    wire = cell_status(CELL, outcome).wire()
    assert wire["state"] == state and {k: wire[k] for k in WIRE} == WIRE
    back = recorded_outcome(CellStatus.model_validate(wire))
    assert back is not None and back.measured() == MEASURED


def test_recorded_results_carry_the_measured_fields():
    line = json.dumps({"stage": "s1", "candidate": "c1", "hostBlock": "a100", "seed": 1, "value": 1.25, **WIRE})
    assert parse_results(line)[CELL.key].measured() == MEASURED


def test_the_crd_status_schema_has_every_measured_field():
    status = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    cell = status["properties"]["stages"]["items"]["properties"]["cells"]["items"]["properties"]
    assert set(WIRE) <= set(cell)
    assert cell["peakMemoryBytes"] == {"type": "integer", "minimum": 0}
