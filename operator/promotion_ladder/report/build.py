"""The report's content as data: sections of text, tables and figure slots, from a status.

Pure (no matplotlib, no I/O): the HTML and Markdown writers render the same `Report`, and
`plots` draws the figures its sections name. Every number a reader checks is formatted here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal

from ..core.accounting import GpuHours, format_gpu_hours, occupancy_rows
from ..core.api import LadderSpec, Stage, Verdict, frozen_hash_matches
from ..core.rules import Decision, RankEntry
from ..core.stability import Stability, flips, stability
from ..core.status import LadderStatus, StageStatus, decisions_from_status
from ..core.wording import entry_outcome, keep_sentence, rule_text
from .source import ReportInput

# Figure keys; per-stage value figures are "cell-values:<stage>".
RANK_FLOW = "rank-flow"
GPU_HOURS = "gpu-hours"
PROGRESS = "progress"
STABILITY = "stability"
FLIP_BELOW = 0.8  # a promotion by rank held in fewer resamples than this is flagged
CELL_VALUES = "cell-values:"


@dataclass
class Table:
    key: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    marks: list[str] = field(default_factory=list)  # per row: "", "promoted", "cut", "failed", "pass", "fail", "total"


@dataclass
class Section:
    key: str
    title: str
    level: int = 2
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


@dataclass
class Report:
    title: str
    subtitle: str
    warnings: list[str]
    sections: list[Section]

    def table(self, key: str) -> Table:
        return next(t for s in self.sections for t in s.tables if t.key == key)

    def figure_keys(self) -> list[str]:
        return [f for s in self.sections for f in s.figures]


def gpu_h(x: float | None) -> str:
    return format_gpu_hours(x)


def memory(n: int | None) -> str:
    """Bytes as a reader compares them: GiB from one GiB up, MiB below."""
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}%"


def val(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def stage_progress(st: StageStatus) -> dict[str, int]:
    counts = {"Succeeded": 0, "Failed": 0, "Running": 0, "Queued": 0, "Pending": 0}
    for c in st.cells:
        counts[c.state] += 1
    return counts


def stability_of(s: LadderStatus) -> Stability:
    """The status's stability figures; for a status written before they existed, computed from its record."""
    if s.stability is not None:
        return s.stability
    entering = {st.name: list(dict.fromkeys(c.candidate for c in st.cells)) for st in s.stages}
    return stability(decisions_from_status(s), entering)


def share(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def tau_text(tau: float | None, reason: str | None) -> str:
    return f"{tau:.2f}" if tau is not None else f"undefined: {reason}"


def is_running(status: LadderStatus) -> bool:
    return status.phase in ("Pending", "Running") or any(s.state == "Running" for s in status.stages)


def _summary(inp: ReportInput) -> Section:
    s = inp.status
    rows = [["Ladder", inp.name], ["Source", inp.origin or "-"], ["Phase", s.phase]]
    if s.message:
        rows.append(["Message", s.message])
    if s.current_stage:
        rows.append(["Current stage", s.current_stage])
    if s.verdict and s.verdict.winner:
        rows.append(["Winner", s.verdict.winner])
    elif s.leader:
        rows.append(["Leader so far", s.leader])
    rows.append(["Frozen hash", s.frozen_hash or "-"])
    g = s.gpu_hours
    if g is not None:
        rows.append(["GPU-hours executed", gpu_h(g.total) + (" (so far)" if is_running(s) else "")])
        if g.occupied is not None:
            rows.append(
                [
                    "GPU-hours occupied",
                    f"{gpu_h(g.occupied.total)} ({_ratio(g.occupied.ratio)} the executed; "
                    f"measured for {g.occupied.measured_cells} of {g.occupied.cells} cells)",
                ]
            )
        # One row per distinct alternative (a stage that cut nobody repeats the one before it).
        distinct = list({c.entered: c for c in reversed(g.counterfactuals)}.values())[::-1]
        if is_running(s) and distinct:
            # Savings against a partial total would flatter the ladder; say what the alternatives cost instead.
            rows.append(
                [
                    "Counterfactuals",
                    ", ".join(f"{gpu_h(c.gpu_hours)} (all {c.entered} from {c.stage} on)" for c in distinct)
                    + "; savings are known when the ladder ends",
                ]
            )
        for c in distinct if not is_running(s) else []:
            rows.append(
                [
                    f"Saved vs {gpu_h(c.gpu_hours)} (all {c.entered} from {c.stage} on)",
                    f"{gpu_h(c.saved_gpu_hours)} GPU-hours ({pct(c.saved_percent)})",
                ]
            )
    rows += _continuation_rows(s)
    failed = sum(c.state == "Failed" for st in s.stages for c in st.cells)
    rows.append(["Failed cells", str(failed)])
    return Section("summary", "Summary", tables=[Table("summary", ["", ""], rows)])


def _continuation_rows(s: LadderStatus) -> list[list[str]]:
    """A ladder that continues (spec.continuation): what ran against the same cells from scratch,
    and where the winner's checkpoints are."""
    rows = []
    g, record = s.gpu_hours, s.checkpoints
    if g is not None and g.from_scratch is not None:
        saved = g.from_scratch - g.total
        share = pct(100 * saved / g.from_scratch) if g.from_scratch else "-"
        rows.append(
            [
                "GPU-hours from scratch",
                f"{gpu_h(g.from_scratch)} (continuing ran {gpu_h(g.total)}: saved {gpu_h(saved)}, {share})",
            ]
        )
    if record is not None and record.winner:
        rows.append(["Winner's checkpoints", ", ".join(record.winner)])
    return rows


def _progress(s: LadderStatus) -> Section | None:
    if not is_running(s):
        return None
    rows, marks = [], []
    for st in s.stages:
        n = stage_progress(st)
        rows.append(
            [
                st.name,
                st.budget,
                st.state,
                str(st.entered if st.entered is not None else "-"),
                str(len(st.cells)),
                str(n["Succeeded"]),
                str(n["Failed"]),
                str(n["Running"]),
                str(n["Queued"]),
                str(n["Pending"]),
            ]
        )
        marks.append("current" if st.name == s.current_stage else "")
    text = [f"The ladder is {s.phase.lower()}" + (f"; current stage {s.current_stage}." if s.current_stage else ".")]
    if s.leader:
        text.append(f"Leader of the current stage so far: {s.leader} (provisional: the stage is not decided).")
    return Section(
        "progress",
        "Progress",
        text=text,
        tables=[
            Table(
                "progress",
                ["Stage", "Budget", "State", "Entered", "Cells", "Succeeded", "Failed", "Running", "Queued", "Pending"],
                rows,
                marks=marks,
            )
        ],
        figures=[PROGRESS] if any(st.name == s.current_stage and st.cells for st in s.stages) else [],
    )


def _spec(inp: ReportInput) -> Section:
    s, spec = inp.status, inp.spec
    sec = Section("spec", "Frozen spec")
    if spec is None:
        sec.text.append(
            f"Frozen hash {s.frozen_hash or '-'}. The status does not carry the spec; "
            "pass --ladder FILE (the ladder it was made from) to show it here."
        )
        return sec
    sec.text.append(_frozen_hash_sentence(s, spec))
    sec.text.append(
        f"Objective: {spec.objective.direction} {spec.objective.metric}. "
        f"Trainer (not frozen): {spec.trainer.image}, {spec.trainer.gpus} GPU(s) per cell."
    )
    rows = [
        [st.name, st.budget, ", ".join(st.host_blocks), ", ".join(map(str, st.seeds)), str(len(st.cells())), _rule(st)]
        for st in spec.stages
    ]
    sec.tables.append(
        Table(
            "spec-stages",
            ["Stage", "Budget", "Host blocks", "Seeds", "Cells per candidate", "Promotion rule"],
            rows,
            caption="Stages",
        )
    )
    sec.tables.append(
        Table(
            "spec-candidates",
            ["Candidate", "Config"],
            [[c.name, json.dumps(c.config, sort_keys=True, separators=(", ", ": "))] for c in spec.candidates],
            caption="Candidates",
        )
    )
    sec.tables.append(
        Table(
            "spec-host-blocks",
            ["Host block", "Node selector"],
            [[hb.name, ", ".join(f"{k}={v}" for k, v in hb.node_selector.items()) or "-"] for hb in spec.host_blocks],
            caption="Host blocks",
        )
    )
    if spec.verdict is not None:
        sec.tables.append(_spec_verdict_table(spec.verdict))
    return sec


def _frozen_hash_sentence(s: LadderStatus, spec: LadderSpec) -> str:
    """The spec's frozen hash, and whether the status was written under it."""
    same = frozen_hash_matches(s.frozen_hash, spec)
    return (
        f"Frozen hash {spec.frozen_hash()}"
        + (
            " (matches the status)."
            if s.frozen_hash and same
            else "."
            if same
            else f" (the status records {s.frozen_hash}: they differ)."
        )
        + " The hash covers the objective, candidates, stages, verdict and trainer.gpus (order included): the rules "
        "were fixed before any result was seen."
    )


def _rule(st: Stage) -> str:
    """A stage's promotion rule as the spec table shows it."""
    p = st.promote
    if p is None:
        return "final: verdict"
    rule = f"top {p.top} by {p.aggregate}"
    if p.within is not None:
        rule += f", within {p.within:g}"
    if p.keep:
        rule += f", keep {', '.join(p.keep)}"
    return rule


def _spec_verdict_table(verdict: Verdict) -> Table:
    rows = []
    for c in verdict.checks:
        thr = {
            "nearEquivalence": f"margin {c.margin:g}" if c.margin is not None else "-",
            "meanGap": f"maxGap {c.max_gap:g}" if c.max_gap is not None else "-",
            "rankFirstAllCells": "first in every final cell",
        }[c.type]
        rows.append([c.name, c.type, c.candidate, thr])
    return Table(
        "spec-verdict",
        ["Check", "Type", "Candidate", "Threshold"],
        rows,
        caption=f"Verdict (reference {verdict.reference})",
    )


def _outcome(e: RankEntry, final: bool, winner: str | None) -> tuple[str, str]:
    """The words (core.wording) and the row's mark (colour class)."""
    if final:
        mark = "promoted" if e.candidate == winner else ("" if e.complete else "failed")
    else:
        mark = "promoted" if e.promoted_by else "cut"
    return entry_outcome(e, final, winner), mark


def _stage_section(st: StageStatus, final: bool, s: LadderStatus) -> Section:
    sec = Section(f"stage-{st.name}", f"Stage {st.name} (budget {st.budget})", level=3)
    n = stage_progress(st)
    if st.state == "Pending":
        sec.text.append("Not reached yet.")
        return sec
    sec.text.append(
        f"{st.entered} candidates entered; {len(st.cells)} cells: {n['Succeeded']} succeeded, {n['Failed']} failed"
        + (f", {n['Running']} running, {n['Pending']} pending" if n["Running"] or n["Pending"] else "")
        + (f", {n['Queued']} queued (waiting for quota)" if n["Queued"] else "")
        + "."
    )
    for c in st.conditions or []:  # data warnings: repeated data, cells on different corpora
        sec.text.append(f"Warning ({c.type}): {c.message}.")
    d = st.decision
    if st.cells:
        sec.figures.append(CELL_VALUES + st.name)
    if d is None:
        sec.text.append("Not decided yet: the decision is made once every cell of the stage has finished.")
        sec.tables.append(_cells_so_far(st))
        return sec
    sec.text.append(f"Rule: {rule_text(d)}.")
    if (kept := keep_sentence(d)) is not None:
        sec.text.append(f"Note: {kept[0].upper()}{kept[1:]}; `keep` promotes a candidate whatever its cells did.")
    winner = s.verdict.winner if s.verdict else None
    shares = next((p for p in stability_of(s).promotion if p.stage == st.name), None) if not final else None
    by = shares.promoted_share if shares is not None else None
    rows, marks = [], []
    for e in d.ranking:
        outcome, mark = _outcome(e, final, winner)
        if e.aggregate is None:
            agg = "-"
        else:
            agg = f"{e.aggregate:.2f}" if d.rule.aggregate == "meanRank" else val(e.aggregate)
        robust = [share(by.get(e.candidate))] if by is not None else []
        rows.append(
            [str(e.rank), e.candidate]
            + [("failed" if v is None else val(v)) for v in e.values]
            + [agg]
            + robust
            + [outcome]
        )
        marks.append(mark)
    agg_name = {"meanRank": "Mean rank"}.get(d.rule.aggregate, d.rule.aggregate.capitalize())
    robust_head = ["Promoted in resamples"] if by is not None else []
    sec.tables.append(
        Table(
            f"decision-{st.name}",
            ["Rank", "Candidate"] + list(d.cells) + [agg_name] + robust_head + ["Outcome"],
            rows,
            caption="Inputs (value per cell), ranking and outcome",
            marks=marks,
        )
    )
    if not final:
        sec.text.append(f"Promoted ({len(d.promoted)}): {', '.join(d.promoted) or 'none'}.")
    if shares is not None and by is not None:
        sec.text.append(
            f"Promoted in resamples: the share of {shares.resamples} resamples of this stage's cells "
            "(drawn with replacement) in which the frozen rule promotes the candidate."
        )
        for _, cand, x in flips(stability_of(s), [d], FLIP_BELOW):
            sec.text.append(f"Fragile: the promotion of {cand} would flip in {1 - x:.0%} of the resamples.")
    elif shares is not None and shares.reason:
        sec.text.append(f"No promotion shares: {shares.reason}.")
    return sec


def _cells_so_far(st: StageStatus) -> Table:
    """An undecided stage's cells: one row per candidate, one column per (host block, seed)."""
    labels = list(dict.fromkeys(f"{c.host_block}/{c.seed}" for c in st.cells))
    by: dict[str, dict[str, str]] = {}
    for c in st.cells:
        by.setdefault(c.candidate, {})[f"{c.host_block}/{c.seed}"] = (
            val(c.value) if c.state == "Succeeded" else c.state.lower()
        )
    rows = [[cand] + [cells.get(lbl, "-") for lbl in labels] for cand, cells in by.items()]
    return Table(f"cells-{st.name}", ["Candidate"] + labels, rows, caption="Cells so far")


def _memory_table(st: StageStatus) -> Table | None:
    """Each candidate's peak memory in the stage (the largest over its cells): what a GPU must hold
    to run it. None when no cell of the stage reported one."""
    by: dict[str, list[int | None]] = {}
    for c in st.cells:
        if c.state in ("Succeeded", "Failed"):
            by.setdefault(c.candidate, []).append(c.peak_memory_bytes)
    if not any(v is not None for peaks in by.values() for v in peaks):
        return None
    rows = [
        [
            cand,
            memory(max((v for v in peaks if v is not None), default=None)),
            f"{sum(v is not None for v in peaks)} of {len(peaks)}",
        ]
        for cand, peaks in by.items()
    ]
    return Table(
        f"memory-{st.name}",
        ["Candidate", "Peak memory", "Cells measured"],
        rows,
        caption="Peak memory of one process, the largest over the candidate's finished cells "
        "(GPU: torch.cuda.max_memory_allocated; CPU: peak resident set)",
    )


def _rank_flow(s: LadderStatus) -> Section:
    if not any(st.decision for st in s.stages):
        return Section("rank-flow", "Rank flow", text=["No stage decided yet."])
    return Section(
        "rank-flow",
        "Rank flow",
        figures=[RANK_FLOW],
        text=[
            "Each line is a candidate: its rank at each decided stage (1 = best). A cross marks the "
            "stage that cut it, a square a promotion by the keep rule, a red ring a stage where it had failed cells, "
            "the star the winner."
        ],
    )


def _stability_summary(st: Stability, decisions: list[Decision]) -> str:
    """This ladder in one sentence: its weakest stage step, its weakest host-block agreement, its weakest promotion."""
    parts = []
    for what, figures, name in (
        ("stage step", st.stages, lambda t: f"{t.from_} \u2192 {t.to}"),
        ("host-block agreement", st.host_blocks, lambda t: f"{t.a} vs {t.b} at {t.stage}"),
    ):
        defined = [(t.kendall_tau, t) for t in figures if t.kendall_tau is not None]
        if defined:
            tau, t = min(defined, key=lambda pair: pair[0])
            parts.append(f"the least stable {what} was {name(t)} (tau {tau:.2f} over {t.candidates} candidates)")
    shares = flips(st, decisions, below=math.inf)
    if shares:
        stage, cand, x = min(shares, key=lambda f: f[2])
        parts.append(
            "every promotion by rank held in every resample"
            if x >= 1.0
            else f"the least robust promotion was {cand} at {stage}, promoted in {x:.0%} of resamples"
        )
    return ("In this ladder " + "; ".join(parts) + ".") if parts else "No figure is defined yet."


def _stability(s: LadderStatus) -> Section:
    sec = Section("stability", "Rank stability")
    st = stability_of(s)
    if not (st.stages or st.host_blocks or st.promotion):
        sec.text.append("No stage decided yet.")
        return sec
    sec.text.append(
        "How far to trust the ranking. Kendall's tau-b compares two orderings of the same candidates: "
        "1 is the same order, 0 no relation, -1 reversed. Between consecutive stages it asks whether the shorter "
        "budget predicted the longer one; between host blocks, whether the ranking depends on the hardware."
    )
    sec.text.append(
        "Promotion shares: each decided stage's (host block, seed) cells are drawn again with replacement, "
        f"{st.promotion[0].resamples if st.promotion else 200} times with a fixed seed "
        "(so the figures replay the same), and the frozen rule is re-applied to each draw. "
        "A promoted candidate at 60% would have been cut in 4 of 10 such reruns: a near coin flip, not a finding."
    )
    sec.text.append(_stability_summary(st, decisions_from_status(s)))
    if st.stages or st.host_blocks:
        sec.figures.append(STABILITY)
    if st.stages:
        sec.tables.append(
            Table(
                "stability-stages",
                ["From", "To", "Candidates", "Kendall tau-b"],
                [[t.from_, t.to, str(t.candidates), tau_text(t.kendall_tau, t.reason)] for t in st.stages],
                caption="Consecutive stages: tau-b between their aggregates, over candidates complete in both",
            )
        )
    if st.host_blocks:
        sec.tables.append(
            Table(
                "stability-host-blocks",
                ["Stage", "Host blocks", "Candidates", "Kendall tau-b"],
                [
                    [t.stage, f"{t.a} vs {t.b}", str(t.candidates), tau_text(t.kendall_tau, t.reason)]
                    for t in st.host_blocks
                ],
                caption="Host blocks: tau-b between the candidates' means on each block",
            )
        )
    decisions = {d.stage: d for d in decisions_from_status(s)}
    rows, marks = [], []
    for p in st.promotion:
        d, promoted_share = decisions.get(p.stage), p.promoted_share
        if promoted_share is None or d is None:
            rows.append([p.stage, "-", f"undefined: {p.reason}", "-", f"{p.resamples} (seed {p.seed})"])
            marks.append("")
            continue
        by_rank = [e.candidate for e in d.ranking if e.promoted_by in ("top", "within")]
        cut = [e.candidate for e in d.ranking if e.complete and not e.promoted_by]
        weakest = min(by_rank, key=lambda c: promoted_share.get(c, 1.0), default=None)
        strongest_cut = max(cut, key=lambda c: promoted_share.get(c, 0.0), default=None)
        low = promoted_share.get(weakest, 1.0) if weakest else None
        rows.append(
            [
                p.stage,
                str(len(by_rank)),
                "-" if low is None else "all at 100%" if low >= 1.0 else f"{weakest} {share(low)}",
                f"{strongest_cut} {share(promoted_share.get(strongest_cut))}" if strongest_cut else "-",
                f"{p.resamples} (seed {p.seed})",
            ]
        )
        marks.append("fail" if low is not None and low < FLIP_BELOW else "")
    if rows:
        sec.tables.append(
            Table(
                "stability-promotion",
                ["Stage", "Promoted by rank", "Least robust promotion", "Most promoted cut candidate", "Resamples"],
                rows,
                marks=marks,
                caption="Promotion shares per decision (each stage's section lists every candidate's)",
            )
        )
    for stage, cand, x in flips(st, list(decisions.values()), FLIP_BELOW):
        sec.text.append(f"Fragile: stage {stage}: the promotion of {cand} would flip in {1 - x:.0%} of resamples.")
    return sec


def _decisions(s: LadderStatus) -> list[Section]:
    out = [
        Section(
            "stages",
            "Stage decisions",
            text=[
                "For each stage: who entered, every cell's value (the decision's inputs), the frozen rule, "
                "and who was promoted. The plots colour cells by host block, so host sensitivity shows."
            ],
        )
    ]
    for i, st in enumerate(s.stages):
        sec = _stage_section(st, i == len(s.stages) - 1, s)
        peaks = _memory_table(st)
        if peaks is not None:
            sec.tables.append(peaks)
        out.append(sec)
    return out


def _verdict(s: LadderStatus) -> Section:
    sec = Section("verdict", "Verdict")
    v = s.verdict
    if v is None:
        sec.text.append("No verdict yet: it is computed after the final stage.")
        return sec
    sec.text.append(
        f"Winner: {v.winner or 'none (no candidate completed the final stage)'}"
        + (f"; reference: {v.reference}." if v.reference else ".")
    )
    rows, marks = [], []
    for c in v.checks:
        if c.type == "rankFirstAllCells" and c.measured is not None:
            measured, threshold = f"first in {c.measured:.0f} cells", f"all {c.threshold:.0f} cells"
        else:
            measured = val(c.measured)
            threshold = ("<= " + val(c.threshold)) if c.threshold is not None else "-"
        rows.append([c.name, c.type, c.candidate, measured, threshold, "PASS" if c.passed else "FAIL", c.detail])
        marks.append("pass" if c.passed else "fail")
    sec.tables.append(
        Table("verdict", ["Check", "Type", "Candidate", "Measured", "Threshold", "Result", "Detail"], rows, marks=marks)
    )
    return sec


def _cost(s: LadderStatus) -> Section:
    sec = Section("cost", "Cost")
    g = s.gpu_hours
    if g is None:
        sec.text.append("No GPU-hour accounting in the status.")
        return sec
    sec.figures.append(GPU_HOURS)
    running = is_running(s)
    sec.text.append(
        f"Executed: {gpu_h(g.total)} GPU-hours"
        + (" so far (the ladder is still running)" if running else "")
        + ". A counterfactual is what sending every candidate that entered a stage straight through the "
        "final stage would have cost; savings are against the executed total."
    )
    sec.tables.append(_executed_table(s, g))
    sec.tables.append(_counterfactuals_table(s, g, running))
    if g.occupied is not None:
        sec.tables.append(_occupied_table(g))
    sec.tables += _breakdown_tables(g)
    return sec


def _executed_table(s: LadderStatus, g: GpuHours) -> Table:
    """GPU-hours executed per stage, and the total."""
    rows = []
    for st in s.stages:
        if st.name in g.by_stage:
            rows.append(
                [
                    st.name,
                    st.budget,
                    str(st.entered if st.entered is not None else "-"),
                    str(sum(c.state in ("Succeeded", "Failed") for c in st.cells)),
                    gpu_h(g.by_stage[st.name]),
                ]
            )
    rows.append(
        [
            "total",
            "",
            "",
            str(sum(c.state in ("Succeeded", "Failed") for st in s.stages for c in st.cells)),
            gpu_h(g.total),
        ]
    )
    return Table(
        "cost-executed",
        ["Stage", "Budget", "Entered", "Cells run", "GPU-hours"],
        rows,
        caption="Executed",
        marks=[""] * (len(rows) - 1) + ["total"],
    )


def _counterfactuals_table(s: LadderStatus, g: GpuHours, running: bool) -> Table:
    """What sending all who entered each stage through the final stage would have cost, and the saving."""
    final = s.stages[-1].name if s.stages else "the final stage"
    cf_rows = [
        [
            f"all {c.entered} that entered {c.stage} through {final}",
            c.stage,
            str(c.entered),
            gpu_h(c.gpu_hours),
            gpu_h(c.saved_gpu_hours),
            pct(c.saved_percent),
        ]
        for c in g.counterfactuals
    ]
    saved = ["Saved GPU-hours", "Saved"] if not running else ["Saved so far (GPU-hours)", "Saved so far"]
    return Table(
        "cost-counterfactuals",
        ["Alternative", "Stage", "Candidates", "GPU-hours"] + saved,
        cf_rows,
        caption="Counterfactuals",
    )


def _breakdown_tables(g: GpuHours) -> list[Table]:
    """GPU-hours by host block and by candidate (most first)."""
    return [
        Table(
            "cost-host-blocks",
            ["Host block", "GPU-hours"],
            [[k, gpu_h(v)] for k, v in g.by_host_block.items()],
            caption="By host block",
        ),
        Table(
            "cost-candidates",
            ["Candidate", "GPU-hours"],
            [[k, gpu_h(v)] for k, v in sorted(g.by_candidate.items(), key=lambda kv: -kv[1])],
            caption="By candidate",
        ),
    ]


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _occupied_table(g: GpuHours) -> Table:
    """Protocol GPU-hours (train seconds) beside occupied ones (how long cells held their GPUs)."""
    rows = [[name, gpu_h(protocol), gpu_h(occupied), _ratio(r)] for name, protocol, occupied, r in occupancy_rows(g)]
    o = g.occupied
    assert o is not None  # _cost makes this table only for a status with occupied hours
    return Table(
        "cost-occupied",
        ["Stage", "Protocol GPU-hours", "Occupied GPU-hours", "Occupied / protocol"],
        rows,
        caption=f"Occupied: how long cells held their GPUs, set-up, compilation and evaluation included "
        f"(measured for {o.measured_cells} of {o.cells} cells; the others count their protocol hours)",
        marks=[""] * (len(rows) - 1) + ["total"],
    )


def _failures(s: LadderStatus) -> Section | None:
    rows = [
        [st.name, c.candidate, c.host_block, str(c.seed), c.reason or "-"]
        for st in s.stages
        for c in st.cells
        if c.state == "Failed"
    ]
    if not rows:
        return None
    return Section(
        "failed-cells",
        "Failed cells",
        text=["A failed cell has no value; its candidate is incomplete in that stage and is not promoted by rank."],
        tables=[
            Table(
                "failed-cells",
                ["Stage", "Candidate", "Host block", "Seed", "Reason"],
                rows,
                marks=["failed"] * len(rows),
            )
        ],
    )


def build_report(inp: ReportInput) -> Report:
    s = inp.status
    sections = [
        _summary(inp),
        _progress(s),
        _rank_flow(s),
        _stability(s),
        _verdict(s),
        _cost(s),
        *_decisions(s),
        _failures(s),
        _spec(inp),
    ]
    subtitle = f"{s.phase}" + (f", winner {s.verdict.winner}" if s.verdict and s.verdict.winner else "")
    data_warnings = [f"{c.type}: {c.message}" for st in s.stages for c in st.conditions or []]
    return Report(
        title=f"Promotion ladder report: {inp.name}",
        subtitle=subtitle,
        warnings=list(inp.warnings) + data_warnings,
        sections=[sec for sec in sections if sec is not None],
    )


def metric_label(spec: LadderSpec | None, status: LadderStatus | None = None) -> str:
    """The value axis: the objective's metric, or, without a spec, the direction the decisions recorded."""
    direction: Literal["minimize", "maximize"] | None
    if spec is not None:
        metric, direction = spec.objective.metric, spec.objective.direction
    else:
        metric = "value"
        direction = next((st.decision.rule.direction for st in (status.stages if status else []) if st.decision), None)
    if direction is None:
        return metric
    return f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)"
