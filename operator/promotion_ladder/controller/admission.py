"""Admission of a ladder by the operator: what can never run is said before any Job exists.

The CRD's schema and CEL rules cannot see what only the API server's own Job validation knows
(resource quantities, tolerations, the Pod template as a whole) nor whether any node serves a
host block. So, for a ladder that has not started (and again after each spec edit), the
handlers create one cell Job per host block as a server-side dry run (`dryRun=All`: validated
and admitted, never stored) and list the nodes:

  * a dry run refused: the ladder does not start; condition Admitted=False (reason JobInvalid)
    names the host block and the API server's message, with a Warning Event. Fix the spec
    (placement is editable) and it starts.
  * no node matches a host block's nodeSelector: condition Schedulable=False (reason
    NoNodeMatches) and a Warning, but the ladder runs: a cluster autoscaler may add the node.

Pure: `sample_jobs` (what to dry-run) and `matches` (node selection); the verdict travels to
the pure reconcile as an `Admission`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.api import LadderSpec
from ..core.cell import Cell
from ..core.status import MESSAGE_LIMIT
from .jobs import build_job


@dataclass(frozen=True)
class Admission:
    problem: str | None = None  # blocking: the ladder does not start
    warnings: tuple[str, ...] = field(default_factory=tuple)  # not blocking


def sample_jobs(body: dict[str, Any], spec: LadderSpec) -> list[tuple[str, dict[str, Any]]]:
    """(host block, a Job of one of its cells) for every host block a stage uses: the first
    stage that uses it, the first candidate, the stage's first seed."""
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for st in spec.stages:
        for block in st.host_blocks:
            if block in seen:
                continue
            seen.add(block)
            out.append((block, build_job(body, spec, Cell(st.name, spec.candidates[0].name, block, st.seeds[0]))))
    return out


def matches(node_labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(node_labels.get(k) == v for k, v in selector.items())


def unmatched_blocks(spec: LadderSpec, nodes: list[dict[str, str]]) -> list[str]:
    """Host blocks used by a stage whose nodeSelector no node's labels satisfy."""
    used = {b for st in spec.stages for b in st.host_blocks}
    return [h.name for h in spec.host_blocks if h.name in used and not any(matches(n, h.node_selector) for n in nodes)]


def admission_conditions(admission: Admission | None, old: list[dict], now: str) -> list[dict[str, Any]]:
    """Admitted=False / Schedulable=False while there is something to say; absent otherwise
    (the three lifecycle conditions stay the only ones a healthy ladder carries)."""
    out = []
    for type_, reason, text in (("Admitted", "JobInvalid", admission.problem if admission else None),
                                ("Schedulable", "NoNodeMatches", "; ".join(admission.warnings) if admission else "")):
        if not text:
            continue
        prev = next((c for c in old if c.get("type") == type_ and c.get("status") == "False"), None)
        out.append({"type": type_, "status": "False", "reason": reason, "message": text[:MESSAGE_LIMIT],
                    "lastTransitionTime": (prev or {}).get("lastTransitionTime") or now})
    return out
