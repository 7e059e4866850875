"""Continuation (spec.continuation): promoted candidates continue from stage checkpoints.

A continuing cell trains at a flat learning rate, saves a stable-phase checkpoint, then decays
on its own branch only to be evaluated; the same (candidate, host block, seed) of the next
stage resumes from that stable checkpoint, not from the decayed weights (docs/continuation.md).
This module owns what can be said about it as data, for every adapter and the trainer:

- the layout: a ladder's checkpoints live under one directory (`ladder_root`), one folder per
  cell (`cell_dir`): `<root>/<ladder>/<stage>/<candidate>.<hostBlock>.<seed>/` holding
  `stable.pt` (model, optimizer, data position, RNG, elapsed stable time), `stable.json` (its
  manifest, written last: a folder without it holds no checkpoint) and, for the last stage's
  cells, `final/` (the decayed weights: the model a team takes away);
- the plan (`cell_checkpoints`): which folder a cell writes, and which it reads: the same
  triple's in the previous stage, or none when that stage had no such cell (it trains from
  scratch, for the stage's full budget like every other cell of the stage);
- the manifest and the mismatch rules (`Manifest`, `Expected`, `mismatches`): never the wrong
  weights;
- what a decided stage deletes (`deleted_candidates`, `cell_dirs`) and the winner's folders,
  recorded in the status as `status.checkpoints` (`checkpoints_status`).

Pure: strings in, strings out; the trainer, `ladder run` and the operator do the I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import Field

from .api import Continuation, LadderSpec
from .cell import Cell
from .model import WireModel
from .rules import Decision

MANIFEST_FORMAT: Literal["ladder-checkpoint/v1"] = "ladder-checkpoint/v1"
STABLE_FILE = "stable.pt"
MANIFEST_FILE = "stable.json"
FINAL_DIR = "final"
LOCAL_DIR = "checkpoints"  # `ladder run`: under its work dir
# The trainer's own default (trainer/ladder_trainer/config.py); a candidate's config key wins.
# Only estimates use it (`ladder simulate` on a ladder that did not continue): what ran is measured.
DEFAULT_WARMDOWN_FRAC = 0.4
WARMDOWN_KEY = "warmdown_frac"
REFUSAL_LIMIT = 200  # core.result.RESUME_REFUSED_LIMIT: a refusal is kept in the status
ON_MISMATCH: tuple[str, ...] = get_args(Continuation.model_fields["on_mismatch"].annotation)


# -- layout and plan ----------------------------------------------------------------------------
def ladder_root(base: str, ladder: str) -> str:
    """The folder of one ladder's checkpoints under a volume's path (or `ladder run`'s dir)."""
    return f"{base.rstrip('/')}/{ladder}"


def cell_dir(root: str, cell: Cell) -> str:
    return f"{root}/{cell.stage}/{cell.candidate}.{cell.host_block}.{cell.seed}"


def candidate_pattern(root: str, stage: str, candidate: str) -> str:
    """A glob for every cell folder of one candidate in one stage (names are DNS labels: no
    dots, so `<candidate>.*` cannot reach another candidate's folders)."""
    return f"{root}/{stage}/{candidate}.*"


@dataclass(frozen=True)
class CellCheckpoints:
    """A continuing cell's folders: the one it writes, its predecessor's (None: from scratch)
    and that predecessor's stage, and where the last stage's cells put their decayed weights."""

    write: str
    read: str | None
    previous_stage: str | None
    final: str | None


def previous_cell(spec: LadderSpec, cell: Cell) -> Cell | None:
    """The same (candidate, host block, seed) one stage earlier, if that stage ran it."""
    i = next(i for i, st in enumerate(spec.stages) if st.name == cell.stage)
    if i == 0:
        return None
    prev = spec.stages[i - 1]
    if cell.host_block not in prev.host_blocks or cell.seed not in prev.seeds:
        return None
    return Cell(prev.name, cell.candidate, cell.host_block, cell.seed)


def cell_checkpoints(spec: LadderSpec, cell: Cell, root: str) -> CellCheckpoints | None:
    """The cell's checkpoint folders under the ladder's `root`; None when the ladder does not continue."""
    if spec.continuation is None:
        return None
    prev = previous_cell(spec, cell)
    last = spec.stages[-1].name == cell.stage
    return CellCheckpoints(
        write=cell_dir(root, cell),
        read=cell_dir(root, prev) if prev else None,
        previous_stage=prev.stage if prev else None,
        final=f"{cell_dir(root, cell)}/{FINAL_DIR}" if last else None,
    )


def without_predecessor(spec: LadderSpec) -> list[tuple[str, int, int]]:
    """(stage, cells per candidate without a predecessor, cells per candidate) for each later
    stage where some cells have no cell of the same host block and seed one stage earlier:
    those train from scratch (`ladder validate` says so)."""
    out = []
    for st in spec.stages[1:]:
        cells = st.cells()
        alone = sum(previous_cell(spec, Cell(st.name, "", hb, seed)) is None for hb, seed in cells)
        if alone:
            out.append((st.name, alone, len(cells)))
    return out


# -- the manifest and the mismatch rules -----------------------------------------------------------
def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the candidate config as the cell contract writes it (compact, sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class Manifest(WireModel):
    """What a stable checkpoint is, whose it is, and a checksum of its content (camelCase JSON,
    `stable.json`). Identity fields are None for a trainer run by hand, without a ladder."""

    format: Literal["ladder-checkpoint/v1"] = MANIFEST_FORMAT
    frozen_hash: str | None = None
    ladder: str | None = None
    stage: str | None = None
    candidate: str | None = None
    host_block: str | None = None
    seed: int
    config_hash: str
    corpus: str | None = None
    sha256: str = Field(description="Of stable.pt, the checkpoint's content.")
    stable_seconds: float = Field(ge=0, description="Training seconds on the clock when it was saved.")
    steps: int = Field(ge=0)


@dataclass(frozen=True)
class Expected:
    """What a continuing cell requires of its predecessor's checkpoint."""

    frozen_hash: str | None
    stage: str | None  # the previous stage
    candidate: str | None
    host_block: str | None
    seed: int
    config_hash: str
    corpus: str | None


# The fields compared, in the order a refusal names them, and what each protects against.
CHECKED_FIELDS = ("frozen_hash", "stage", "candidate", "host_block", "seed", "config_hash", "corpus")


def mismatches(manifest: Manifest, expected: Expected, content_sha256: str) -> list[str]:
    """Every way the checkpoint is not the one this cell must continue: one line per field,
    in the manifest's (camelCase) names. Empty: it may be used."""
    out = []
    for name in CHECKED_FIELDS:
        have, want = getattr(manifest, name), getattr(expected, name)
        if have != want:
            wire = Manifest.model_fields[name].alias or name
            out.append(f"{wire}: the checkpoint has {have!r}, this cell expects {want!r}")
    if manifest.sha256 != content_sha256:
        out.append(
            f"sha256: {STABLE_FILE} hashes to {content_sha256[:19]}..., its manifest says "
            f"{manifest.sha256[:19]}... (damaged or replaced)"
        )
    return out


def refusal(path: str, problems: Sequence[str]) -> str:
    """The reason a cell gives when it will not continue from `path` (bounded: it is recorded;
    the fields first, so a shortened reason still names them)."""
    return f"checkpoint refused: {'; '.join(problems)} (at {path})"[:REFUSAL_LIMIT]


def missing(path: str, what: str) -> str:
    """The reason when the predecessor's checkpoint is not there (a lost volume, a cell that saved none)."""
    return f"checkpoint missing: {what} at {path} (the previous stage's cell saved none there, or the volume lost it)"[
        :REFUSAL_LIMIT
    ]


# -- what a decided stage deletes, and the winner's folders -------------------------------------
def cell_dirs(spec: LadderSpec, root: str, candidate: str, through: int) -> list[str]:
    """Every cell folder of one candidate in stages 0..through."""
    return [
        cell_dir(root, Cell(st.name, candidate, hb, seed))
        for st in spec.stages[: through + 1]
        for hb, seed in st.cells()
    ]


def deleted_candidates(
    spec: LadderSpec, decisions: Sequence[Decision], entering: Mapping[str, Sequence[str]], winner: str | None
) -> list[tuple[int, list[str]]]:
    """(stage index, candidates whose checkpoints go) per decided stage: the ones it eliminated.
    The last stage eliminates all but the winner, and nothing while there is none (a failed
    ladder keeps its finalists). Nothing with keep: all."""
    if spec.continuation is None or spec.continuation.keep == "all":
        return []
    out = []
    last = len(spec.stages) - 1
    for i, d in enumerate(decisions):
        entered = entering.get(d.stage, [])
        if i == last:
            gone = [c for c in entered if c != winner] if winner is not None else []
        else:
            gone = [c for c in entered if c not in d.promoted]
        if gone:
            out.append((i, gone))
    return out


class DeletedCheckpoints(WireModel):
    stage: str
    candidates: list[str]


class CheckpointsStatus(WireModel):
    root: str = Field(description="This ladder's checkpoints: <root>/<stage>/<candidate>.<hostBlock>.<seed>/.")
    keep: Literal["promoted", "all"]
    deleted: list[DeletedCheckpoints] = Field(
        default_factory=list,
        description="Per decided stage, the candidates it eliminated, whose checkpoints are deleted.",
    )
    winner: list[str] = Field(
        default_factory=list,
        description="The winner's checkpoint folders: every stage's stable checkpoints, then the "
        "last stage's final/ folders (its decayed weights).",
    )


def deleted_stages(spec: LadderSpec, entry: DeletedCheckpoints) -> list[str]:
    """The stages whose folders a decided stage's entry in status.checkpoints.deleted covers:
    its candidates' folders in that stage and every one before it."""
    i = next(i for i, st in enumerate(spec.stages) if st.name == entry.stage)
    return [st.name for st in spec.stages[: i + 1]]


def deleted_patterns(spec: LadderSpec, root: str, entry: DeletedCheckpoints) -> list[str]:
    """Globs for the folders the entry stands for (what `python -m ladder_trainer.prune` deletes)."""
    return [candidate_pattern(root, stage, c) for stage in deleted_stages(spec, entry) for c in entry.candidates]


def checkpoints_status(
    spec: LadderSpec,
    root: str,
    decisions: Sequence[Decision],
    entering: Mapping[str, Sequence[str]],
    winner: str | None,
) -> CheckpointsStatus | None:
    if spec.continuation is None:
        return None
    deleted = [
        DeletedCheckpoints(stage=spec.stages[i].name, candidates=gone)
        for i, gone in deleted_candidates(spec, decisions, entering, winner)
    ]
    kept = []
    if winner is not None:
        final = [
            cell_dir(root, Cell(spec.stages[-1].name, winner, hb, seed)) + f"/{FINAL_DIR}"
            for hb, seed in spec.stages[-1].cells()
        ]
        kept = cell_dirs(spec, root, winner, len(spec.stages) - 1) + final
    return CheckpointsStatus(root=root, keep=spec.continuation.keep, deleted=deleted, winner=kept)


# -- estimates ------------------------------------------------------------------------------------
def warmdown_frac(spec: LadderSpec, candidate: str) -> float:
    """The candidate's warmdown fraction: its config's key, else the trainer's default."""
    value = spec.candidate(candidate).config.get(WARMDOWN_KEY, DEFAULT_WARMDOWN_FRAC)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else DEFAULT_WARMDOWN_FRAC


def estimated_resume_seconds(spec: LadderSpec, cell: Cell, any_cell: bool = False) -> float:
    """What the cell would take over by continuing: its predecessor's stable phase, (1 -
    warmdown_frac) of the previous stage's budget; 0 without a predecessor. `any_cell`: as if
    every cell of a later stage had one (the stage kept the previous one's host blocks and seeds)."""
    i = next(i for i, st in enumerate(spec.stages) if st.name == cell.stage)
    if i == 0 or (not any_cell and previous_cell(spec, cell) is None):
        return 0.0
    return (1.0 - warmdown_frac(spec, cell.candidate)) * spec.stages[i - 1].budget_seconds
