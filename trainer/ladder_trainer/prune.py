"""`python -m ladder_trainer.prune`: delete the stage checkpoints of eliminated candidates.

    python -m ladder_trainer.prune --root /checkpoints/LADDER --stages s1 s2 --candidates c3 c7

The operator's cleanup Job (operator/promotion_ladder/controller/checkpoints.py) runs it on the
checkpoint volume once a stage has decided, since the operator itself does not mount the volume.
It deletes `<root>/<stage>/<candidate>.<hostBlock>.<seed>/` for each stage and candidate given
(core/continuation.py's layout) and nothing else, says what it deleted, and exits 0, also when
nothing is left (a re-run); 1 when a folder could not be deleted; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import glob
import re
import shutil
import sys
from pathlib import Path

from promotion_ladder.core.api import DNS1123_LABEL
from promotion_ladder.core.continuation import candidate_pattern


def _label(value: str) -> str:
    if not re.fullmatch(DNS1123_LABEL, value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a stage or candidate name (a DNS-1123 label)")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ladder_trainer.prune", description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="the ladder's checkpoint folder")
    p.add_argument("--stages", nargs="+", type=_label, required=True)
    p.add_argument("--candidates", nargs="+", type=_label, required=True)
    args = p.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"prune: {root}: no such folder; nothing to delete", file=sys.stderr)
        return 0
    deleted = failed = 0
    for stage in args.stages:
        for candidate in args.candidates:
            for folder in sorted(glob.glob(candidate_pattern(str(root), stage, candidate))):
                try:
                    shutil.rmtree(folder)
                    deleted += 1
                    print(f"prune: deleted {folder}", file=sys.stderr)
                except OSError as exc:
                    failed += 1
                    print(f"prune: could not delete {folder}: {exc}", file=sys.stderr)
    print(f"prune: {deleted} folder(s) deleted, {failed} failed, under {root}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
