"""The frozen hash (issue 12, defects 4 and 5): order counts, trainer.gpus counts, and a hash
recorded before trainer.gpus was frozen still matches its ladder."""

from __future__ import annotations

import pytest

from promotion_ladder.core.api import frozen_hash, frozen_hash_matches, load_ladder

from .builders import edit, ladder_doc

BASE = ladder_doc()

CHANGED = {
    "candidates reordered": edit(BASE, "spec.candidates", BASE["spec"]["candidates"][::-1]),
    "seeds reordered": edit(edit(BASE, "spec.stages.1.seeds", [2, 1]), "spec.stages.0.seeds", [1]),
    "host blocks of a stage reordered": edit(BASE, "spec.stages.0.hostBlocks", ["l40s", "a100"]),
    "trainer.gpus": edit(BASE, "spec.trainer", {"gpus": 2}),
}
SAME = {
    "trainer image": edit(BASE, "spec.trainer", {"image": "other:1"}),
    "spec.hostBlocks reordered": edit(BASE, "spec.hostBlocks", BASE["spec"]["hostBlocks"][::-1]),
    "parallelism": edit(BASE, "spec.parallelism", 3),
}


@pytest.mark.parametrize("name", list(CHANGED))
def test_frozen_changes_change_the_hash(name):
    spec, changed = load_ladder(BASE).spec, load_ladder(CHANGED[name]).spec
    assert not frozen_hash_matches(frozen_hash(spec), changed)


@pytest.mark.parametrize("name", list(SAME))
def test_operational_edits_keep_the_hash(name):
    assert frozen_hash_matches(frozen_hash(load_ladder(BASE).spec), load_ladder(SAME[name]).spec)


def test_a_hash_recorded_before_gpus_was_frozen_still_matches():
    spec = load_ladder(BASE).spec
    legacy = frozen_hash(spec, with_trainer=False)
    assert legacy != frozen_hash(spec) and frozen_hash_matches(legacy, spec)
    assert frozen_hash_matches(None, spec)
