"""`ladder run`'s stage checkpoints (spec.continuation): where they live, and deleting the ones
a decided stage no longer needs.

They live under the work dir, `<work dir>/checkpoints/<ladder>/` in the layout of
core/continuation.py, kept with the cells' results, so a resumed run finds them. What to
delete is the status's (`status.checkpoints.deleted`, core/continuation.py); this module only
removes the folders, and again on every pass, so a run interrupted between a decision and its
deletion deletes them when it resumes.
"""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

from ..core.api import PromotionLadder
from ..core.continuation import LOCAL_DIR, deleted_patterns, ladder_root
from ..core.status import LadderStatus


def checkpoint_root(ladder: PromotionLadder, workdir: Path) -> str | None:
    """The ladder's checkpoint folder under the work dir; None when it does not continue."""
    if ladder.spec.continuation is None:
        return None
    return ladder_root(str((workdir / LOCAL_DIR).resolve()), ladder.name)


def prune(ladder: PromotionLadder, status: LadderStatus, done: set[str]) -> list[str]:
    """Delete the folders of the candidates each decided stage eliminated (stages in `done` were
    pruned already by this process); one line per stage that deleted something."""
    record = status.checkpoints
    if record is None:
        return []
    lines = []
    for entry in record.deleted:
        if entry.stage in done:
            continue
        done.add(entry.stage)
        gone = [d for pattern in deleted_patterns(ladder.spec, record.root, entry) for d in sorted(glob.glob(pattern))]
        for d in gone:
            shutil.rmtree(d, ignore_errors=True)
        if gone:
            lines.append(
                f"checkpoints: deleted {len(gone)} folder(s) of the {len(entry.candidates)} candidate(s) "
                f"stage {entry.stage} eliminated ({', '.join(entry.candidates)})"
            )
    return lines
