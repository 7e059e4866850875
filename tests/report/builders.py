"""Report inputs for tests: the example ladder finished, with failures, and still running."""

from __future__ import annotations

import json
from pathlib import Path

from promotion_ladder.core.cell import CellOutcome
from promotion_ladder.core.recorded import parse_results
from promotion_ladder.core.status import build_status, simulate
from promotion_ladder.files import read_ladder, read_text
from promotion_ladder.report import ReportInput, from_document

ROOT = Path(__file__).resolve().parents[2]
LADDER = ROOT / "examples" / "protocol-ladder.yaml"
RESULTS = ROOT / "examples" / "protocol-results.jsonl"


def ladder():
    return read_ladder(LADDER)


def recorded():
    return parse_results(read_text(RESULTS), source=str(RESULTS))


def simulate_json(results=None) -> dict:
    """What `ladder simulate --output json` prints: the bare status."""
    status, _ = simulate(ladder().spec, recorded() if results is None else results)
    return json.loads(json.dumps(status.wire()))


def full_object(status_wire: dict) -> dict:
    """What `ladder run` writes and the cluster holds: the whole PromotionLadder with its status."""
    lad = ladder()
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": lad.name, "namespace": "research"},
        "spec": lad.spec.wire(),
        "status": status_wire,
    }


def example_input() -> ReportInput:
    return from_document(
        simulate_json(), "ladder simulate examples/protocol-ladder.yaml --output json", ladder_file=str(LADDER)
    )


# The failure case: a 2m cell diverged, a 10m cell of d12-ar48 never reported (so d12-ar48 is
# incomplete and cut, and d10-ar64 takes its place), and a 12h cell of greedy was OOM-killed.
FAILURES = {
    ("2m", "d16-ar32", "a100", 2): "diverged (loss NaN)",
    ("10m", "d12-ar48", "l40s", 2): "no recorded result",
    ("12h", "greedy", "a100", 1): "OOMKilled",
}


def failing_results():
    out = dict(recorded())
    for key, reason in FAILURES.items():
        out[key] = CellOutcome(state="failed", reason=reason)
    return out


def failing_input() -> ReportInput:
    return from_document(full_object(simulate_json(failing_results())), "failing.status.json")


def running_status():
    """Stages 2m-10m decided; at 60m bridge done, greedy running on a100 and queued (Kueue) on l40s, one
    sentinel cell failed, the rest pending."""
    lad = ladder()
    rec = recorded()
    out = {k: v for k, v in rec.items() if k[0] in ("2m", "5m", "10m")}
    out[("60m", "bridge", "a100", 1)] = rec[("60m", "bridge", "a100", 1)]
    out[("60m", "bridge", "a100", 2)] = rec[("60m", "bridge", "a100", 2)]
    out[("60m", "bridge", "l40s", 1)] = rec[("60m", "bridge", "l40s", 1)]
    out[("60m", "bridge", "l40s", 2)] = rec[("60m", "bridge", "l40s", 2)]
    out[("60m", "sentinel-d8-ar48", "a100", 1)] = CellOutcome(state="failed", reason="preempted twice")
    running = frozenset({("60m", "greedy", "a100", 1), ("60m", "greedy", "l40s", 1)})
    status, _ = build_status(lad.spec, out, running=running, queued={("60m", "greedy", "l40s", 1)})
    return status


def running_input() -> ReportInput:
    return from_document(full_object(running_status().wire()), "running.status.json")


# Peak memory in GiB per candidate (10 for the others); each cell adds its seed in MiB.
PEAK_GIB = {"bridge": 20, "greedy": 21, "sentinel-d8-ar48": 0}


def measured_input() -> ReportInput:
    """The example ladder with each cell's peak memory recorded (PEAK_GIB), except bridge's l40s
    cell at 5m, which reports none (an older trainer)."""
    out = {}
    for key, o in recorded().items():
        stage, cand, hb, seed = key
        peak = None if (stage, cand, hb) == ("5m", "bridge", "l40s") else PEAK_GIB.get(cand, 10) * 2**30 + seed * 2**20
        out[key] = o.model_copy(update={"peak_memory_bytes": peak})
    return from_document(full_object(simulate_json(out)), "measured.status.json")
