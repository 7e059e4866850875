"""Rendered reports shared by the report tests: drawing the figures is the slow part, so once each."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from promotion_ladder.report import ReportInput, build_report, metric_label
from promotion_ladder.report.build import Report

from .builders import example_input, failing_input, running_input


@dataclass
class Rendered:
    input: ReportInput
    report: Report
    figures: dict
    html: str
    markdown: str


def _render(inp: ReportInput) -> Rendered:
    pytest.importorskip("matplotlib", reason="the report extra (matplotlib) is not installed")
    from promotion_ladder.report import plots
    from promotion_ladder.report.html import to_html
    from promotion_ladder.report.markdown import to_markdown

    report = build_report(inp)
    figures = plots.draw(report.figure_keys(), inp.status, metric_label(inp.spec, inp.status))
    return Rendered(inp, report, figures, to_html(report, figures), to_markdown(report, figures))


@pytest.fixture(scope="session")
def example_report() -> Rendered:
    return _render(example_input())


@pytest.fixture(scope="session")
def failing_report() -> Rendered:
    return _render(failing_input())


@pytest.fixture(scope="session")
def running_report() -> Rendered:
    return _render(running_input())
