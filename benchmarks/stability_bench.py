"""Time of the stability figures (core/stability.py) for a 1,000-candidate ladder.

    PYTHONPATH=operator python benchmarks/stability_bench.py [--candidates N]

The ladder: N candidates x 4 cells (2 host blocks x 2 seeds) at 2m, top N/10 to 10m (4 cells),
top N/100 (at least 2) to 60m (8 cells). Prints the time of `stability()` on a cold memo (what the
first reconcile after a restart pays), on a warm one (every later reconcile), of the whole
`simulate`, and the status size with and without the stability figures.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from promotion_ladder.core import stability as stab
from promotion_ladder.core.api import LadderSpec
from promotion_ladder.core.cell import CellOutcome
from promotion_ladder.core.status import simulate


def ladder(n: int) -> LadderSpec:
    blocks = ["a100", "l40s"]
    return LadderSpec.model_validate(
        {
            "objective": {"metric": "val_bpb", "direction": "minimize"},
            "trainer": {"image": "trainer:bench"},
            "hostBlocks": [{"name": b} for b in blocks],
            "candidates": [{"name": f"cand-{i:04d}"} for i in range(n)],
            "stages": [
                {
                    "name": "2m",
                    "budget": "2m",
                    "hostBlocks": blocks,
                    "seeds": [1, 2],
                    "promote": {"top": max(n // 10, 2)},
                },
                {
                    "name": "10m",
                    "budget": "10m",
                    "hostBlocks": blocks,
                    "seeds": [1, 2],
                    "promote": {"top": max(n // 100, 2)},
                },
                {"name": "60m", "budget": "60m", "hostBlocks": blocks, "seeds": [1, 2, 3, 4]},
            ],
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = args.candidates
    spec = ladder(n)
    rnd = random.Random(1)
    skill = {c.name: rnd.gauss(1.2, 0.05) for c in spec.candidates}
    recorded = {
        (st.name, c, hb, s): CellOutcome("succeeded", skill[c] + rnd.gauss(0, 0.02), train_seconds=60.0)
        for st in spec.stages
        for c in skill
        for hb, s in st.cells()
    }
    t = time.perf_counter()
    status, p = simulate(spec, recorded)
    t_sim = time.perf_counter() - t
    cold, warm = [], []
    for _ in range(args.repeat):
        stab._shares.cache_clear()
        stab._host_block_taus.cache_clear()
        t = time.perf_counter()
        stab.stability(p.decisions, p.entering)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        stab.stability(p.decisions, p.entering)
        warm.append(time.perf_counter() - t)
    size = len(json.dumps(status.wire(), separators=(",", ":")))
    bare = len(json.dumps(status.model_copy(update={"stability": None}).wire(), separators=(",", ":")))
    stages = ", ".join(f"{d.stage} ({len(d.ranking)} x {len(d.cells)} cells)" for d in p.decisions)
    print(f"{n} candidates, stages {stages}")
    print(
        f"stability(): cold memo {min(cold) * 1000:.1f} ms, warm memo {min(warm) * 1000:.1f} ms (best of {len(cold)})"
    )
    print(f"simulate() with stability (cold memo, first call in the process): {t_sim * 1000:.0f} ms")
    print(f"status: {size / 1024:.0f} KiB ({(size - bare) / 1024:.0f} KiB of it stability)")


if __name__ == "__main__":
    main()
