"""Whether a stage's cells are comparable as data: one corpus, and how often each repeated it.

Two facts every cell result carries (`corpus`, the fingerprint of the prepared data it trained
and evaluated on, and `dataPasses`, training tokens consumed / available) decide two things:
- a stage whose cells report different corpus fingerprints is not ranked at all: its values
  measure different data (two host blocks with different images, a volume mounted on some
  nodes only), and no aggregate can make them comparable;
- a cell past one pass over its training data is flagged as repeated data: it is ranked (its
  value is real), but a longer budget can then make val_bpb worse instead of better, which
  undercuts the premise that later stages reveal the better configuration.
Cells that did not report a fingerprint (older trainers, cells that failed before loading
data) take no part in the comparison. Pure functions; the planner and the status call them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from .cell import CellOutcome as Outcome

# A cell's key: (candidate, hostBlock, seed) or (stage, candidate, hostBlock, seed), a CellKey among them.
Key = TypeVar("Key", bound=tuple[str | int, ...])

REPEAT_ABOVE = 1.0  # passes over the training split beyond which a cell repeated data
CORPUS_CONFLICT = "CorpusConflict"  # the stage condition's type, and the Failed reason of the ladder
REPEATED_DATA = "RepeatedData"  # the stage condition's type


@dataclass(frozen=True)
class Repeat:
    cell: str  # "candidate/hostBlock/seed"
    passes: float


def _label(key: tuple[str | int, ...]) -> str:
    return "/".join(str(k) for k in key[-3:])


def corpus_conflict(stage: str, cells: Mapping[Key, Outcome]) -> str | None:
    """A message naming every fingerprint and its cells when the stage's cells disagree, else None.

    `cells` is keyed by (candidate, hostBlock, seed), or by (stage, candidate, hostBlock, seed).
    """
    by_corpus: dict[str, list[str]] = {}
    for key, o in sorted(cells.items()):
        if o.corpus:
            by_corpus.setdefault(o.corpus, []).append(_label(key))
    if len(by_corpus) <= 1:
        return None
    groups = "; ".join(f"corpus {fp}: {', '.join(labels)}" for fp, labels in sorted(by_corpus.items()))
    return (
        f"stage {stage!r}: cells trained on different data, so their values are not comparable and the stage "
        f"is not ranked ({groups}); prepare the corpus once and point every cell at the same copy"
    )


def repeated_data(cells: Mapping[Key, Outcome]) -> list[Repeat]:
    """Cells that made more than one pass over their training data, most passes first."""
    out = [
        Repeat(_label(k), o.data_passes)
        for k, o in cells.items()
        if o.data_passes is not None and o.data_passes > REPEAT_ABOVE
    ]
    return sorted(out, key=lambda r: (-r.passes, r.cell))


def repeated_data_message(stage: str, repeats: list[Repeat], shown: int = 5) -> str:
    listed = ", ".join(f"{r.cell} {r.passes:.1f}" for r in repeats[:shown])
    more = f" and {len(repeats) - shown} more" if len(repeats) > shown else ""
    return (
        f"stage {stage!r}: {len(repeats)} cell(s) repeated their training data, up to {repeats[0].passes:.1f} "
        f"passes ({listed}{more}); past one pass a longer budget can rank by memorisation, so give this "
        "budget a larger corpus"
    )


def estimated_passes(budget_seconds: float, tokens_per_second: float, train_tokens: int) -> float:
    """Passes a cell of this budget would make at this throughput (for `ladder validate`)."""
    return budget_seconds * tokens_per_second / max(train_tokens, 1)
