"""CPU seconds per optimizer step of the trainer's loop, a measure a shared machine barely moves.

    PYTHONPATH=trainer:operator python benchmarks/trainer_cpu_step.py --depth 1 --pairs 3

Runs `train.run` in this process (fp32 eager, one thread, the byte corpus, evaluation of one
window) for 20 and for 220 optimizer steps, and prints the difference in process CPU time (user
+ sys) and in wall time over the 200 extra steps, per pair, as "cpu_ms/wall_ms". Wall time on a
busy machine moves by several times between runs; CPU time much less, so two trees' loops
(PYTHONPATH pointing at each) compare on it (benchmarks/trainer-results.md).
"""

from __future__ import annotations

import argparse
import resource
import time

from ladder_trainer.config import Settings, parse_config
from ladder_trainer.train import run


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(depth: int, steps: int) -> tuple[float, float]:
    cfg = parse_config(
        {
            "depth": depth,
            "aspect_ratio": 32,
            "head_dim": 16,
            "seq_len": 128,
            "batch": 512,
            "tokenizer": "byte",
            "warmdown_frac": 0.0,
        }
    )
    settings = Settings(
        device="cpu",
        dtype="fp32",
        compile="off",
        warmup_steps=0,
        eval_tokens=128,
        max_steps=steps,
        log_interval=1e9,
        threads=1,
    )
    c0, w0 = cpu_seconds(), time.perf_counter()
    out = run(cfg, seed=0, budget=1e9, settings=settings)
    if out.steps != steps:
        raise SystemExit(f"expected {steps} steps, the run made {out.steps}: {out.message}")
    return cpu_seconds() - c0, time.perf_counter() - w0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    timed(args.depth, 5)  # imports and the corpus off the measurement
    rows = []
    for _ in range(args.pairs):
        (c1, w1), (c2, w2) = timed(args.depth, 20), timed(args.depth, 220)
        rows.append(f"{(c2 - c1) / 200 * 1e3:.3f}/{(w2 - w1) / 200 * 1e3:.3f}")
    print(f"d{args.depth} cpu_ms/wall_ms per step: " + " ".join(rows))


if __name__ == "__main__":
    main()
