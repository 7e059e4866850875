"""The report's occupied GPU-hours: per stage and in total beside the protocol's, with the ratio."""

from __future__ import annotations

from promotion_ladder.report import build_report, from_document

from .builders import LADDER, recorded, simulate_json


def occupied_input(extra: float):
    """The example ladder where every 2m cell held its GPU `extra` seconds past its train seconds."""
    results = {
        k: o.model_copy(update={"occupied_seconds": (o.train_seconds or 120) + extra}) if k[0] == "2m" else o
        for k, o in recorded().items()
    }
    return from_document(simulate_json(results), "test", ladder_file=str(LADDER))


def test_occupied_table_per_stage_and_total():
    report = build_report(occupied_input(extra=60.0))  # a 2-minute cell that held its GPU 3 minutes
    table = report.table("cost-occupied")
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["2m"] == ["1.2", "1.8", "1.50x"]
    assert rows["12h"] == ["144.0", "144.0", "1.00x"]
    assert rows["total"] == ["169.2", "169.8", "1.00x"]
    assert "measured for 36 of 124 cells" in table.caption
    summary = {r[0]: r[1] for r in report.table("summary").rows}
    assert summary["GPU-hours executed"] == "169.2"  # the protocol's figure is unchanged
    assert summary["GPU-hours occupied"] == "169.8 (1.00x the executed; measured for 36 of 124 cells)"


def test_nothing_measured_says_so():
    report = build_report(from_document(simulate_json(), "t", ladder_file=str(LADDER)))
    assert [r[1:] for r in report.table("cost-occupied").rows][-1] == ["169.2", "169.2", "1.00x"]
    assert "measured for 0 of 124 cells" in report.table("cost-occupied").caption
