"""`ladder report`: an audit report of a ladder (what ran, what each stage decided and why, what it cost).

source (status file or cluster) -> build (pure tables) -> plots (matplotlib, lazily) -> html / markdown.
"""

from __future__ import annotations

from pathlib import Path

from .build import Report, build_report, metric_label
from .source import ReportError, ReportInput, from_cluster, from_document, from_file, load_source

FORMATS = ("html", "markdown")


def render(inp: ReportInput, fmt: str = "html") -> str:
    """The whole report as one string in `fmt` (html or markdown), figures embedded."""
    from . import plots

    report = build_report(inp)
    figures = plots.draw(report.figure_keys(), inp.status, metric_label(inp.spec, inp.status))
    if fmt == "markdown":
        from .markdown import to_markdown

        return to_markdown(report, figures)
    if fmt == "html":
        from .html import to_html

        return to_html(report, figures)
    raise ReportError(f"--format: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def format_for(output: str | None, fmt: str | None) -> str:
    if fmt:
        return fmt
    return "markdown" if output and Path(output).suffix.lower() in (".md", ".markdown") else "html"


def run_report(args) -> int:
    """The `ladder report` command (argparse namespace from promotion_ladder.cli)."""
    import sys

    inp = load_source(
        args.source, ladder_file=args.ladder, namespace=args.namespace, kubeconfig=args.kubeconfig, context=args.context
    )
    fmt = format_for(args.output, args.format)
    text = render(inp, fmt)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output or f"{inp.name}-report.{'md' if fmt == 'markdown' else 'html'}")
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{out}: cannot write the report: {exc}") from None
    for w in inp.warnings:
        print(f"ladder report: warning: {w}", file=sys.stderr)
    print(f"{out}: {fmt} report of {inp.name} ({inp.status.phase}), {len(text) // 1024} KiB", file=sys.stderr)
    return 0


__all__ = [
    "FORMATS",
    "Report",
    "ReportError",
    "ReportInput",
    "build_report",
    "format_for",
    "from_cluster",
    "from_document",
    "from_file",
    "load_source",
    "render",
    "run_report",
]
