"""The report as Markdown with the same content as the HTML page; images are data: URIs.

Viewers that strip data: URIs (GitHub's renderer does) still show every table and each
figure's alt text, which states what the figure shows.
"""

from __future__ import annotations

import base64

from .build import Report, Table
from .plots import Figure


def _cell(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> str:
    out = []
    if t.caption:
        out.append(f"**{t.caption}**\n")
    headers = t.headers if any(t.headers) else ["Field", "Value"]
    out.append("| " + " | ".join(_cell(h) for h in headers) + " |")
    out.append("|" + "|".join("---" for _ in headers) + "|")
    for i, row in enumerate(t.rows):
        mark = t.marks[i] if i < len(t.marks) else ""
        cells = [_cell(c) for c in row]
        if mark in ("total", "promoted") and cells:
            cells[0] = f"**{cells[0]}**"
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _figure(f: Figure) -> str:
    alt = f.alt.replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(f.png).decode('ascii')})\n\n*{f.title}*"


def to_markdown(report: Report, figures: dict[str, Figure]) -> str:
    out = [f"# {report.title}", "", f"_{report.subtitle}_", ""]
    for w in report.warnings:
        out += [f"> **Warning:** {w}", ""]
    for s in report.sections:
        out += ["#" * s.level + " " + s.title, ""]
        for p in s.text:
            out += [p, ""]
        for k in s.figures:
            if k in figures:
                out += [_figure(figures[k]), ""]
        for t in s.tables:
            out += [_table(t), ""]
    return "\n".join(out).rstrip() + "\n"
