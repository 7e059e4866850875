"""Plain-text rendering of a ladder status, for terminals and logs."""

from __future__ import annotations

import math

from .core.accounting import ContinuationEstimate, GpuHours, format_gpu_hours, occupancy_rows
from .core.stability import flips
from .core.status import LadderStatus, decisions_from_status
from .core.wording import entry_outcome, rule_summary


def _fmt(v: float | None, nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


gh = format_gpu_hours


def occupancy_table(g: GpuHours, indent: str = "  ") -> list[str]:
    """Protocol and occupied GPU-hours per stage and in total, with their ratio."""
    rows = occupancy_rows(g)
    width = max(len("stage"), *(len(r[0]) for r in rows))
    lines = [f"{indent}{'stage':<{width}}  {'protocol':>9}  {'occupied':>9}  {'occupied/protocol':>17}"]
    for name, protocol, occupied, r in rows:
        lines.append(
            f"{indent}{name:<{width}}  {gh(protocol):>9}  {gh(occupied):>9}  {('-' if r is None else f'{r:.2f}x'):>17}"
        )
    if g.occupied is not None:
        o = g.occupied
        lines.append(
            f"{indent}occupied: how long cells held their GPUs (start-up, compilation, evaluation included); "
            f"measured for {o.measured_cells} of {o.cells} cells, the others count their protocol hours"
        )
        if o.lost:
            lines.append(
                f"{indent}of it {gh(o.lost)} GPU-hours held by attempts lost to eviction or preemption "
                "(each re-run; wasted, not protocol hours)"
            )
    return lines


def status_table(status: LadderStatus) -> str:
    lines = [f"phase: {status.phase}" + (f"  ({status.message})" if status.message else "")]
    if status.frozen_hash:
        lines.append(f"frozen hash: {status.frozen_hash}")
    winner = status.verdict.winner if status.verdict else None
    for st in status.stages:
        head = f"\nstage {st.name} (budget {st.budget}): {st.state}"
        if st.entered is not None:
            done = sum(c.state in ("Succeeded", "Failed") for c in st.cells)
            failed = sum(c.state == "Failed" for c in st.cells)
            head += f", {st.entered} entered, cells {done}/{len(st.cells)} done, {failed} failed"
            queued = sum(c.state == "Queued" for c in st.cells)
            if queued:
                head += f", {queued} queued (waiting for quota)"
        lines.append(head)
        for cond in st.conditions or []:  # data warnings: repeated data, cells on different corpora
            lines.append(f"  warning: {cond.type}: {cond.message}")
        for c in st.cells:  # continuing cells that could not continue
            if c.resume_refused:
                lines.append(
                    f"  warning: {c.candidate}/{c.host_block}/{c.seed} trained from scratch: {c.resume_refused}"
                )
        d = st.decision
        if d is None:
            continue
        lines.append(f"  rule: {rule_summary(d.rule)} ({d.rule.direction})")
        width = max(len(e.candidate) for e in d.ranking)
        lines.append(f"  {'rank':>4}  {'candidate':<{width}}  {'aggregate':>9}  {'cells (' + ' '.join(d.cells) + ')'}")
        for e in d.ranking:
            mark = entry_outcome(e, final=d.rule.top is None, winner=winner)
            cells = " ".join(_fmt(v) for v in e.values)
            lines.append(f"  {e.rank:>4}  {e.candidate:<{width}}  {_fmt(e.aggregate):>9}  {cells}  {mark}")
    g = status.gpu_hours
    if g is not None:
        lines.append(
            f"\nGPU-hours executed: {gh(g.total)}  (" + ", ".join(f"{k} {gh(v)}" for k, v in g.by_stage.items()) + ")"
        )
        lines += continuation_lines(status)
        for cf in g.counterfactuals:
            lines.append(
                f"  counterfactual after {cf.stage}: {cf.entered} candidates through the final stage = "
                f"{gh(cf.gpu_hours)} GPU-hours (saved {gh(cf.saved_gpu_hours)}, {cf.saved_percent:.1f}%)"
            )
        lines.append("GPU-hours, protocol (train seconds x GPUs) and occupied:")
        lines += occupancy_table(g)
    v = status.verdict
    if v is not None:
        lines.append(f"\nverdict: winner {v.winner}" + (f", reference {v.reference}" if v.reference else ""))
        for check in v.checks:
            mark = "PASS" if check.passed else "FAIL"
            lines.append(f"  [{mark}] {check.name} ({check.type}, {check.candidate}): {check.detail}")
    stab = stability_lines(status)
    if stab:
        lines.append("")
        lines += stab
    return "\n".join(lines)


def continuation_lines(status: LadderStatus) -> list[str]:
    """What continuing saved, and where the winner's checkpoints are (a ladder that continues)."""
    g, record = status.gpu_hours, status.checkpoints
    lines = []
    if g is not None and g.from_scratch is not None:
        saved = g.from_scratch - g.total
        share = f", {100 * saved / g.from_scratch:.1f}%" if g.from_scratch else ""
        lines.append(
            f"  continuing: {gh(g.total)} GPU-hours ran (increments and decays) against {gh(g.from_scratch)} "
            f"from scratch (saved {gh(saved)}{share})"
        )
    if record is not None:
        lines.append(
            f"  checkpoints: {record.root} (keep: {record.keep}; "
            f"{sum(len(d.candidates) for d in record.deleted)} eliminated candidate(s) deleted)"
        )
        lines += [f"    winner's: {d}" for d in record.winner]
    return lines


def estimate_line(e: ContinuationEstimate) -> str:
    """`ladder simulate` of a ladder that trained from scratch: what continuing would have saved."""
    return (
        f"continuing (spec.continuation) would have cost {gh(e.continuing)} of these {gh(e.from_scratch)} GPU-hours: "
        f"{e.continuing_cells} of {e.cells} cells resume from the stable checkpoint of the same candidate, host block "
        f"and seed one stage earlier, each saving (1 - warmdown_frac) x that stage's budget (warmdown_frac: the "
        f"candidate's config, else the trainer's 0.4); saved {gh(e.saved)} ({e.saved_percent:.1f}%). Had every "
        f"later-stage cell one (each stage keeping the previous one's host blocks and seeds): "
        f"{gh(e.every_later_cell)} GPU-hours, saved {gh(e.from_scratch - e.every_later_cell)}"
    )


def _tau(t) -> str:
    tau = f"tau {t.kendall_tau:.2f}" if t.kendall_tau is not None else f"tau undefined ({t.reason})"
    return f"{tau} over {t.candidates} candidate{'' if t.candidates == 1 else 's'}"


def stability_lines(status: LadderStatus, below: float = 0.8) -> list[str]:
    """One line per stage pair and per host-block pair, and a warning per promotion that a resample
    of the stage's cells overturns in more than 1 - `below` of the resamples."""
    s = status.stability
    if s is None or not (s.stages or s.host_blocks or s.promotion):
        return []
    lines = ["rank stability (Kendall tau-b: 1 same order, 0 unrelated, -1 reversed):"]
    lines += [f"  {t.from_} -> {t.to}: {_tau(t)}" for t in s.stages]
    lines += [f"  stage {t.stage}, host block {t.a} vs {t.b}: {_tau(t)}" for t in s.host_blocks]
    resamples = {p.stage: p.resamples for p in s.promotion}
    shares = flips(s, decisions_from_status(status), below=math.inf)  # every promotion by rank
    if shares:
        stage, cand, share = min(shares, key=lambda f: f[2])
        lines.append(
            f"  promotion by rank: the least robust, {cand} at stage {stage}, held in {share:.0%} of "
            f"{resamples[stage]} resamples of the stage's cells"
        )
    for stage, cand, share in (f for f in shares if f[2] < below):
        lines.append(
            f"warning: stage {stage}: promotion of {cand} would flip in {1 - share:.0%} of resamples "
            f"(promoted in {round(share * resamples[stage])} of {resamples[stage]} resamples of the stage's cells)"
        )
    return lines
