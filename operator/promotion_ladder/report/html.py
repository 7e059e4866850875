"""The report as one self-contained HTML page: inline CSS, images as data: URIs, nothing fetched.

The Content-Security-Policy forbids every network load, so the page looks the same offline.
"""

from __future__ import annotations

import base64
from html import escape

from .build import Report, Table
from .plots import Figure

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  color:#222;margin:0;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px;background:#fff;box-shadow:0 0 6px rgba(0,0,0,.06)}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:2px solid #e0e0e0;padding-bottom:4px}
h3{font-size:16px;margin:24px 0 6px}.sub{color:#666;margin:0 0 12px}
nav{font-size:13px;margin:8px 0 16px}nav a{margin-right:12px;color:#1565c0;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
caption{text-align:left;font-weight:600;padding:2px 0 4px}
th,td{border:1px solid #e0e0e0;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums;font-family:"DejaVu Sans Mono",monospace;font-size:12px}
tr.promoted td{background:#e8f5e9}tr.cut td{color:#888}tr.failed td{background:#fdecea}
tr.pass td{background:#e8f5e9}tr.fail td{background:#fdecea}
tr.total td{font-weight:700}tr.current td{background:#fff8e1}
td.failed-value{color:#c62828;font-weight:600}
table.kv th{display:none}table.kv td:first-child{font-weight:600;background:#fafafa}
figure{margin:10px 0 18px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#666;font-size:12px}
.warn{background:#fff3e0;border-left:4px solid #fb8c00;padding:6px 10px;margin:8px 0}
"""


def _is_num(cell: str) -> bool:
    t = cell.rstrip("%")
    try:
        float(t)
        return True
    except ValueError:
        return False


def _table(t: Table) -> str:
    cls = ' class="kv"' if t.key == "summary" else ""
    out = [f'<table id="table-{escape(t.key)}"{cls}>']
    if t.caption:
        out.append(f"<caption>{escape(t.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in t.headers) + "</tr></thead><tbody>")
    for i, row in enumerate(t.rows):
        mark = t.marks[i] if i < len(t.marks) else ""
        tds = []
        for cell in row:
            c = "num" if _is_num(cell) and t.key != "summary" else "failed-value" if cell == "failed" else ""
            tds.append(f'<td class="{c}">{escape(cell)}</td>' if c else f"<td>{escape(cell)}</td>")
        out.append(f'<tr class="{mark}">' if mark else "<tr>")
        out.append("".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (
        f'<figure id="figure-{escape(f.key.replace(":", "-"))}" data-figure="{escape(f.key)}">'
        f'<img src="data:image/png;base64,{data}" alt="{escape(f.alt)}">'
        f"<figcaption>{escape(f.title)}</figcaption></figure>"
    )


def to_html(report: Report, figures: dict[str, Figure]) -> str:
    body = [f"<h1>{escape(report.title)}</h1>", f'<p class="sub">{escape(report.subtitle)}</p>']
    nav = [f'<a href="#{escape(s.key)}">{escape(s.title)}</a>' for s in report.sections if s.level == 2]
    body.append("<nav>" + "".join(nav) + "</nav>")
    for w in report.warnings:
        body.append(f'<p class="warn">Warning: {escape(w)}</p>')
    for s in report.sections:
        h = f"h{s.level}"
        body.append(f'<section id="{escape(s.key)}"><{h}>{escape(s.title)}</{h}>')
        body += [f"<p>{escape(p)}</p>" for p in s.text]
        body += [_figure(figures[k]) for k in s.figures if k in figures]
        body += [_table(t) for t in s.tables]
        body.append("</section>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(report.title)}</title><style>{CSS}</style></head>
<body><main>
{chr(10).join(body)}
</main></body></html>
"""
