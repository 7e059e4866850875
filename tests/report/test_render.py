"""The rendered report: HTML and Markdown carry the same tables and every figure, embedded."""

from __future__ import annotations

import base64
import re
import struct

import pytest

FIG_RE = re.compile(
    r'<figure id="[^"]+" data-figure="([^"]+)"><img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">'
)
MD_FIG_RE = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def html_figures(html: str) -> dict[str, bytes]:
    return {m.group(1): base64.b64decode(m.group(2)) for m in FIG_RE.finditer(html)}


@pytest.mark.parametrize("name", ["example_report", "failing_report", "running_report"])
def test_every_figure_is_embedded_as_a_real_png(request, name):
    r = request.getfixturevalue(name)
    figs = html_figures(r.html)
    assert sorted(figs) == sorted(r.report.figure_keys())
    for key, data in figs.items():
        w, h = png_size(data)
        assert w >= 400 and h >= 200, f"{key}: {w}x{h} is too small to read"
    md = MD_FIG_RE.findall(r.markdown)
    assert len(md) == len(figs)
    assert {base64.b64decode(d) for _, d in md} == set(figs.values())


@pytest.mark.parametrize("name", ["example_report", "failing_report", "running_report"])
def test_nothing_is_fetched_from_the_network(request, name):
    html = request.getfixturevalue(name).html
    assert "default-src 'none'" in html
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(ref.startswith(("data:", "#")) for ref in refs), [
        r[:40] for r in refs if not r.startswith(("data:", "#"))
    ]


# Numbers that must be on the page, in both formats.
NUMBERS = {
    "example_report": [
        "169.2",
        "432.0",
        "192.0",
        "576.0",
        "60.8%",
        "262.8",
        "11.9%",
        "0.0130",
        "0.0250",
        "<= 0.0100",
        "winner",
        "promoted (keep)",
        "sha256:",
    ],
    "failing_report": ["169.0", "OOMKilled", "diverged (loss NaN)", "cut: incomplete (failed cells)", "failed"],
    "running_report": ["14.2", "Progress", "running", "pending", "preempted twice", "No verdict yet"],
}


@pytest.mark.parametrize("name", NUMBERS)
def test_key_numbers_in_html_and_markdown(request, name):
    r = request.getfixturevalue(name)
    from html import unescape

    text = unescape(re.sub(r"<[^>]+>", " ", FIG_RE.sub("", r.html)))
    for want in NUMBERS[name]:
        assert want in text, f"HTML lacks {want!r}"
        assert want in r.markdown.replace("\\|", "|"), f"Markdown lacks {want!r}"


def test_markdown_has_the_same_sections_and_tables_as_html(example_report):
    r = example_report
    for s in r.report.sections:
        assert f'<section id="{s.key}">' in r.html
        assert "#" * s.level + " " + s.title in r.markdown
    n_tables = sum(len(s.tables) for s in r.report.sections)
    assert r.html.count("<table") == n_tables
    assert len(re.findall(r"^\|---", r.markdown, re.M)) == n_tables
    assert "| total |  |  | 124 | 169.2 |" in r.markdown.replace("**total**", "total")


def test_failed_cells_are_shown_as_failed(failing_report):
    html = failing_report.html
    assert html.count('<td class="failed-value">failed</td>') == 3
    assert '<table id="table-failed-cells">' in html
    assert html.count('<tr class="failed">') >= 3


def test_running_ladder_has_a_progress_plot_and_no_verdict(running_report):
    figs = html_figures(running_report.html)
    assert "progress" in figs and "cell-values:12h" not in figs
    assert '<tr class="current">' in running_report.html
    assert "so far" in running_report.html


def test_ladder_that_failed_at_its_first_stage_renders():
    pytest.importorskip("matplotlib")
    from promotion_ladder.report import from_document, render

    from .builders import full_object, simulate_json

    html = render(from_document(full_object(simulate_json({})), "empty.json"), "html")
    assert sorted(html_figures(html)) == ["cell-values:2m", "gpu-hours", "rank-flow"]
    assert html.count('<td class="failed-value">failed</td>') == 36


def test_peak_memory_is_in_html_and_markdown():
    from promotion_ladder.report import build_report
    from promotion_ladder.report.html import to_html
    from promotion_ladder.report.markdown import to_markdown

    from .builders import measured_input

    report = build_report(measured_input())
    html, markdown = to_html(report, {}), to_markdown(report, {})
    assert '<table id="table-memory-12h">' in html and "Peak memory of one process" in html
    assert "<td>21.00 GiB</td>" in html
    assert "| greedy | 21.00 GiB | 4 of 4 |" in markdown
