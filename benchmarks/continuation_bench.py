"""Fidelity of continuation (spec.continuation): one ladder run twice through `ladder run`, on the
same candidates and seeds, once with every cell from scratch and once with each promoted cell
resuming from its previous stage's stable checkpoint.

    PYTHONPATH=operator:trainer python benchmarks/continuation_bench.py            # CPU: minutes
    python benchmarks/continuation_bench.py --budgets 2m,10m,30m --config '{"depth": 8}' --json out.json

Defaults: on CPU 6 tiny candidates at 8s, 16s, 32s (a few minutes a run on a 2-core machine); on
a GPU 4 candidates of d8 at 10s, 20s, 40s (about 4 minutes a run: scripts/gpu-check.sh's
`continuation` part, one 10-minute call).

Prints, for each run: the final ranking (the winner first, then every candidate by the last stage
it reached and its rank there), the winner and its val_bpb (its final-stage mean), and the
protocol GPU-hours (what ran: a continuing cell counts its increment and its decay); for the
continuing run also the from-scratch figure of the same cells. Then Kendall's tau-b between the
two final rankings (1: the same order) and whether the winners agree.

The budgets are wall-clock, so two runs of one ladder differ by timing noise even without
continuation (a busy machine trains fewer steps in a cell's seconds): read tau beside the
machine's load, which the header prints. One cell at a time, so cells do not share the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer")]

from promotion_ladder.core.api import load_ladder  # noqa: E402
from promotion_ladder.core.stability import kendall_tau_b  # noqa: E402
from promotion_ladder.core.status import LadderStatus  # noqa: E402
from promotion_ladder.local.runner import run_ladder  # noqa: E402

CPU_SHAPE = {"depth": 1, "aspect_ratio": 32, "head_dim": 16, "seq_len": 64, "tokenizer": "byte", "batch": 128}
GPU_SHAPE = {"depth": 8, "aspect_ratio": 64, "head_dim": 128, "seq_len": 2048}
LEARNING_RATES = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.03, 0.06)


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def ladder_doc(
    name: str, candidates: int, budgets: list[str], config: dict, trainer_args: list[str], continuing: bool
) -> dict:
    """Candidates differ in matrix_lr; each stage keeps half (at least 2) for the next."""
    keep = [max(candidates >> (i + 1), 2) for i in range(len(budgets) - 1)]
    stages = [{"name": f"s{i + 1}", "budget": b, "hostBlocks": ["local"], "seeds": [1]} for i, b in enumerate(budgets)]
    for st, top in zip(stages[:-1], keep, strict=True):
        st["promote"] = {"top": top}
    doc = {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": name},
        "spec": {
            "trainer": {
                "image": "local",
                "command": ["python", "-m", "ladder_trainer"],
                "args": trainer_args,
                "gpus": 1,
            },
            "hostBlocks": [{"name": "local", "nodeSelector": {"pool": "local"}}],
            "candidates": [
                {"name": f"lr{i}", "config": {**config, "matrix_lr": lr}}
                for i, lr in enumerate(LEARNING_RATES[:candidates])
            ],
            "stages": stages,
        },
    }
    if continuing:
        doc["spec"]["continuation"] = {"from": "previousStage"}
    return doc


def final_ranking(status: LadderStatus) -> list[str]:
    """Winner first, then each candidate by the last stage it reached and its rank there."""
    order: list[str] = []
    for st in reversed(status.stages):
        if st.decision is None:
            continue
        for entry in sorted(st.decision.ranking, key=lambda e: e.rank):
            if entry.candidate not in order:
                order.append(entry.candidate)
    return order


def rank_tau(a: list[str], b: list[str]) -> float | None:
    """Kendall's tau-b between two rankings, over the candidates in both."""
    common = [c for c in a if c in b]
    return kendall_tau_b([a.index(c) for c in common], [b.index(c) for c in common])


def fmt(tau: float | None) -> str:
    return "undefined" if tau is None else f"{tau:.3f}"


def summary(status: LadderStatus, wall: float) -> dict:
    last = status.stages[-1].decision
    winner = status.verdict.winner if status.verdict else None
    value = next((e.aggregate for e in last.ranking if e.candidate == winner), None) if last else None
    g = status.gpu_hours
    return {
        "phase": status.phase,
        "ranking": final_ranking(status),
        "winner": winner,
        "winner_val_bpb": value,
        "gpu_hours": g.total if g else None,
        "from_scratch_gpu_hours": g.from_scratch if g else None,
        "wall_seconds": round(wall, 1),
    }


def run_once(doc: dict, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(work / "progress.txt", "w") as stream:
        status = run_ladder(load_ladder(doc), work / "status.json", parallel=1, stream=stream, poll_seconds=0.1)
    return summary(status, time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    gpu = has_cuda()
    p = argparse.ArgumentParser(prog="continuation_bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=4 if gpu else 6, help=f"at most {len(LEARNING_RATES)}")
    p.add_argument(
        "--budgets", default="10s,20s,40s" if gpu else "8s,16s,32s", help="the stages' budgets, comma-separated"
    )
    p.add_argument(
        "--config", default=None, help="candidate config JSON (default: d8 on a GPU, a tiny byte model on CPU)"
    )
    p.add_argument("--workdir", default=None, help="where the cells run (default: a fresh temporary folder)")
    p.add_argument("--json", default=None, help="also write the summary here")
    p.add_argument(
        "--noise",
        action="store_true",
        help="run from scratch a second time too: tau between two from-scratch runs is the timing noise's",
    )
    args = p.parse_args(argv)
    if not 2 <= args.candidates <= len(LEARNING_RATES):
        p.error(f"--candidates: give 2 to {len(LEARNING_RATES)}")
    budgets = args.budgets.split(",")
    config = json.loads(args.config) if args.config else (GPU_SHAPE if gpu else CPU_SHAPE)
    # Compilation off on both: its set-up time is not what is measured, and it would double a GPU run's length.
    trainer_args = ["--eval-tokens", "65536" if gpu else "4096", "--compile", "off"] + (
        [] if gpu else ["--device", "cpu"]
    )
    work = Path(args.workdir or tempfile.mkdtemp(prefix="continuation-bench-"))
    print(
        f"# continuation fidelity, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{'GPU' if gpu else 'CPU'} ({platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}), "
        f"{args.candidates} candidates, budgets {', '.join(budgets)}, config {json.dumps(config)}"
    )
    runs = {}
    plan = [("from scratch", False), ("continuing", True)] + ([("from scratch again", False)] if args.noise else [])
    for label, continuing in plan:
        doc = ladder_doc("fidelity", args.candidates, budgets, config, trainer_args, continuing)
        runs[label] = run_once(doc, work / label.replace(" ", "-"))
        print(f"{label}: {json.dumps(runs[label])}", flush=True)
    a, b = runs["from scratch"], runs["continuing"]
    if any(r["phase"] != "Succeeded" for r in runs.values()):
        print(f"a run did not succeed (see {work}/*/progress.txt)", file=sys.stderr)
        return 1
    tau = rank_tau(a["ranking"], b["ranking"])
    print(
        "\n| run | winner | winner's val_bpb | protocol GPU-hours | from scratch GPU-hours | wall s | final ranking |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, r in runs.items():
        scratch = r["from_scratch_gpu_hours"] if r["from_scratch_gpu_hours"] is not None else r["gpu_hours"]
        print(
            f"| {label} | {r['winner']} | {r['winner_val_bpb']:.4f} | {r['gpu_hours']:.5f} | {scratch:.5f} | "
            f"{r['wall_seconds']} | {', '.join(r['ranking'])} |"
        )
    saved = 1 - b["gpu_hours"] / a["gpu_hours"] if a["gpu_hours"] else 0.0
    print(
        f"\nKendall tau-b between the final rankings, from scratch vs continuing: {fmt(tau)} over "
        f"{len(a['ranking'])} candidates; same winner: {'yes' if a['winner'] == b['winner'] else 'NO'}; "
        f"continuing ran {100 * saved:.1f}% fewer protocol GPU-hours"
    )
    noise = None
    if "from scratch again" in runs:
        c = runs["from scratch again"]
        noise = rank_tau(a["ranking"], c["ranking"])
        print(
            f"the noise floor, from scratch vs from scratch again: tau-b {fmt(noise)}; same winner: "
            f"{'yes' if a['winner'] == c['winner'] else 'NO'}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": runs, "kendall_tau_b": tau, "noise_tau_b": noise, "saved_share": saved}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
