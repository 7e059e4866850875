"""Issue 12, defect 6: what can never run is refused before any Job exists."""

from __future__ import annotations

import pytest

from promotion_ladder.core.api import MAX_CONFIG_BYTES, LadderInvalid, load_ladder

from .builders import edit, ladder_doc


@pytest.mark.parametrize("size, ok", [(MAX_CONFIG_BYTES - 64, True), (MAX_CONFIG_BYTES + 1, False), (1_000_000, False)])
def test_candidate_config_size_is_bounded(size, ok):
    doc = edit(ladder_doc(), "spec.candidates.1.config", {"blob": "x" * size})
    if ok:
        load_ladder(doc)
        return
    with pytest.raises(LadderInvalid) as exc:
        load_ladder(doc)
    assert (
        exc.value.errors[0].startswith("spec.candidates[1].config: is ")
        and "bytes a candidate config may have" in exc.value.errors[0]
    )
