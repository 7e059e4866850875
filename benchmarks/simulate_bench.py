"""Wall time of `ladder simulate` on a 1,000-candidate ladder, start-up included.

    python benchmarks/simulate_bench.py [--candidates 1000] [--runs 7] [--output table|json]

Writes a ladder (1,000 candidates; stage 1: 2 host blocks x 2 seeds, top 100; stage 2: the
same, top 10; stage 3: 2 host blocks x 4 seeds) and the recorded results of every cell it runs
(4,480 lines) to a temporary folder, then times `python -m promotion_ladder.cli simulate` as a
fresh process, as a user would run it. Also times `python -c pass` (the interpreter alone) for
reference. Goal (issue 15): under 0.5 s wall.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.5


def ladder_yaml(n: int) -> str:
    lines = [
        "apiVersion: ladder.promotion.dev/v1alpha1",
        "kind: PromotionLadder",
        "metadata: {name: big}",
        "spec:",
        "  objective: {metric: val_bpb, direction: minimize}",
        "  trainer: {image: 'trainer:1', command: [python, -m, ladder_trainer], gpus: 1}",
        "  hostBlocks:",
        "    - {name: a100, nodeSelector: {pool: a100}}",
        "    - {name: h100, nodeSelector: {pool: h100}}",
        "  candidates:",
    ]
    lines += [
        f"    - {{name: cand-{i:04d}, config: {{depth: {4 + i % 9}, aspect_ratio: 64, "
        f"matrix_lr: {0.001 * (1 + i % 17):.3f}}}}}"
        for i in range(n)
    ]
    lines += [
        "  stages:",
        "    - {name: 2m, budget: 2m, hostBlocks: [a100, h100], seeds: [1, 2], promote: {top: 100}}",
        "    - {name: 10m, budget: 10m, hostBlocks: [a100, h100], seeds: [1, 2], promote: {top: 10, aggregate: worst}}",
        "    - {name: 1h, budget: 1h, hostBlocks: [a100, h100], seeds: [1, 2, 3, 4]}",
        "  verdict:",
        "    reference: cand-0000",
        "    checks: [{name: ref-ok, type: meanGap, candidate: cand-0001, maxGap: 0.05}]",
    ]
    return "\n".join(lines) + "\n"


def results_jsonl(n: int) -> str:
    value = lambda i, seed: round(1.0 + ((i * 7919) % n) / n + 0.001 * seed, 6)  # noqa: E731
    order = sorted(range(n), key=lambda i: value(i, 0))
    out = []
    for stage, budget, seeds, who in (
        ("2m", 120, (1, 2), range(n)),
        ("10m", 600, (1, 2), order[:100]),
        ("1h", 3600, (1, 2, 3, 4), order[:10]),
    ):
        for i in who:
            for hb in ("a100", "h100"):
                for s in seeds:
                    out.append(
                        json.dumps(
                            {
                                "stage": stage,
                                "candidate": f"cand-{i:04d}",
                                "hostBlock": hb,
                                "seed": s,
                                "value": value(i, s),
                                "trainSeconds": budget + 0.5,
                            }
                        )
                    )
    return "\n".join(out) + "\n"


def timed(cmd: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and CPU seconds (user + system) of one run. On a machine shared with other
    work, CPU seconds are the closer estimate of the wall time an idle machine would show."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--output", choices=("table", "json"), default="table", help="simulate's --output")
    p.add_argument(
        "--pythonpath", default=str(ROOT / "operator"), help="where promotion_ladder comes from (to compare trees)"
    )
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="simulate-bench-"))
    (work / "ladder.yaml").write_text(ladder_yaml(args.candidates))
    (work / "results.jsonl").write_text(results_jsonl(args.candidates))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([args.pythonpath, os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: modules load from bytecode after the first run
    cmd = [
        sys.executable,
        "-m",
        "promotion_ladder.cli",
        "simulate",
        str(work / "ladder.yaml"),
        "--results",
        str(work / "results.jsonl"),
        "--output",
        args.output,
    ]
    base, sim, cpu = [], [], []
    for _ in range(args.runs):
        base.append(timed([sys.executable, "-c", "pass"], env)[0])
        t, c, proc = timed(cmd, env)
        if proc.returncode not in (0, 3):
            print(proc.stderr, file=sys.stderr)
            return 1
        sim.append(t)
        cpu.append(c)
    lines = len((work / "results.jsonl").read_text().splitlines())
    print(
        f"# ladder simulate, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}: {args.candidates} candidates, "
        f"{lines} recorded results, --output {args.output}, {args.runs} runs"
    )
    print(f"python -c pass:  median {statistics.median(base):.3f} s, min {min(base):.3f} s")
    print(
        f"ladder simulate: median {statistics.median(sim):.3f} s, min {min(sim):.3f} s, max {max(sim):.3f} s "
        f"(goal < {GOAL} s: {'met' if statistics.median(sim) < GOAL else 'not met'} by the median)"
    )
    print(f"ladder simulate CPU time (user + system): median {statistics.median(cpu):.3f} s, min {min(cpu):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
