"""How a stage decision is put into words: one place, so the operator's Events, `ladder run`'s
console lines, `ladder simulate`'s table and the audit report say the same thing the same way.

Pure; takes the recorded `Decision` (rules.py) and returns text.
"""

from __future__ import annotations

from .rules import Decision, RankEntry, Rule
from .status import MESSAGE_LIMIT

_AGGREGATE_WORDS = {"mean": "mean", "median": "median", "worst": "worst", "meanRank": "mean rank"}


def rule_summary(rule: Rule) -> str:
    """The rule in a few words: "top 2 by mean, within 0.01, keep a", or "final ranking by mean"."""
    how = f"top {rule.top} by {rule.aggregate}" if rule.top is not None else f"final ranking by {rule.aggregate}"
    if rule.within is not None:
        how += f", within {rule.within}"
    if rule.keep:
        how += f", keep {', '.join(rule.keep)}"
    return how


def _succeeded(e: RankEntry) -> str:
    return f"{sum(v is not None for v in e.values)} of {len(e.values)} cells succeeded"


def kept_incomplete(d: Decision) -> list[RankEntry]:
    """Candidates promoted only by the rule's `keep`, without a complete set of cells: the rule
    promotes them whatever their cells did, and every account of the decision says so."""
    return [e for e in d.ranking if e.promoted_by == "keep" and not e.complete]


def keep_sentence(d: Decision) -> str | None:
    """ "kept by keep without a complete result: c3 (0 of 4 cells succeeded)", or None."""
    kept = kept_incomplete(d)
    if not kept:
        return None
    return "kept by keep without a complete result: " + ", ".join(f"{e.candidate} ({_succeeded(e)})" for e in kept)


def decision_message(d: Decision) -> str:
    """One line announcing a decision (Event message, console line): who was promoted, by which
    rule, and the best aggregates; a candidate kept without a complete result is named as such."""
    how = rule_summary(d.rule)
    best = ", ".join(f"{e.candidate}={e.aggregate:.4g}" for e in d.ranking[:3] if e.aggregate is not None)
    if d.rule.top is None:  # the last stage promotes nobody: its ranking feeds the verdict
        return f"stage {d.stage}: {how} over {len(d.cells)} cells; best {best or 'n/a'}"[:MESSAGE_LIMIT]
    promoted = ", ".join(d.promoted) if d.promoted else "none"
    kept = keep_sentence(d)
    return (
        f"stage {d.stage}: promoted {promoted} ({how} over {len(d.cells)} cells; best {best or 'n/a'})"
        + (f"; {kept}" if kept else "")
    )[:MESSAGE_LIMIT]


def rule_text(d: Decision) -> str:
    """The rule as a sentence for readers who do not know the protocol (the audit report)."""
    r = d.rule
    how = _AGGREGATE_WORDS.get(r.aggregate, r.aggregate)
    parts = [
        f"rank by {how} over {len(d.cells)} cells ({'lower' if r.direction == 'minimize' else 'higher'} is better)"
    ]
    if r.top is not None:
        parts.append(f"promote the top {r.top} complete candidates")
    if r.within is not None:
        parts.append(f"and every complete candidate within {r.within:g} of the best")
    if r.keep:
        parts.append(f"always keep {', '.join(r.keep)}")
    if r.top is None and not r.keep:
        parts.append("final stage: the verdict decides")
    return "; ".join(parts)


def entry_outcome(e: RankEntry, final: bool, winner: str | None) -> str:
    """What the decision did with one ranked candidate: "promoted (top)", "cut", "winner", ..."""
    if final:
        if e.candidate == winner:
            return "winner"
        return "" if e.complete else "incomplete (failed cells)"
    if e.promoted_by == "keep" and not e.complete:
        return f"promoted (keep, no complete result: {_succeeded(e)})"
    if e.promoted_by:
        return f"promoted ({e.promoted_by})"
    return "cut" if e.complete else "cut: incomplete (failed cells)"
