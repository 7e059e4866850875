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
  * matching nodes exist but none could hold a cell even when empty (trainer.gpus or a resource
    request above every matching node's allocatable): the same warning, reason NoNodeFits;
    `unfit_blocks` says why, and the cells' waits count as stalls, not as waits for capacity
    (controller/scheduling.py). `ladder validate` gives the same warning where it sees a cluster.

Pure: `sample_jobs` (what to dry-run), `matches` (node selection) and `unfit_blocks`; the verdict
travels to the pure reconcile as an `Admission`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from ..core.api import LadderSpec
from ..core.cell import Cell
from .jobs import build_job


@dataclass(frozen=True)
class Node:
    """What admission needs of a Node: its labels and its allocatable resources (quantities)."""

    name: str
    labels: dict[str, str]
    allocatable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Admission:
    problem: str | None = None  # blocking: the ladder does not start
    warnings: tuple[str, ...] = field(default_factory=tuple)  # not blocking
    unfit: dict[str, str] = field(default_factory=dict)  # host block -> why no node of it can hold a cell


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


def pod_requests(job: dict[str, Any]) -> dict[str, Decimal]:
    """What one Pod of a Job asks of a node: its containers' requests (a limit where no request
    is given, as the API server defaults it), summed."""
    total: dict[str, Decimal] = {}
    spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        asked = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for name, quantity in asked.items():
            try:
                total[name] = total.get(name, Decimal(0)) + parse_quantity(quantity)
            except ValueError:
                continue  # the dry run names an invalid quantity
    return total


def _fits(requests: dict[str, Decimal], node: Node) -> list[str]:
    """The resources this node cannot give even when empty ([] = it fits)."""
    short = []
    for name, want in requests.items():
        if want <= 0:
            continue
        try:
            have = parse_quantity(node.allocatable.get(name, "0"))
        except ValueError:
            have = Decimal(0)
        if want > have:
            short.append(name)
    return short


def unfit_blocks(body: dict[str, Any], spec: LadderSpec, nodes: list[Node]) -> dict[str, str]:
    """Host blocks whose matching nodes exist but none of which could hold one of its cell Pods
    even when empty -> the words for it, naming the largest allocatable of each short resource."""
    out: dict[str, str] = {}
    for block, job in sample_jobs(body, spec):
        selector = spec.host_block(block).node_selector
        mine = [n for n in nodes if matches(n.labels, selector)]
        requests = pod_requests(job)
        if not mine or any(not _fits(requests, n) for n in mine):
            continue
        short = sorted({r for n in mine for r in _fits(requests, n)})
        said = []
        for r in short:
            largest = max(mine, key=lambda n: _quantity(n.allocatable.get(r)))
            said.append(f"{r}: {_plain(requests[r])} requested, at most {largest.allocatable.get(r, '0')} on a node, "
                        f"{largest.name}")
        what = "trainer.gpus exceeds" if short == ["nvidia.com/gpu"] else "a cell Pod's requests exceed"
        out[block] = (f"{what} the allocatable of every node matching host block {block} "
                      f"({'; '.join(said)}): its cells cannot be scheduled until such a node exists")
    return out


def _quantity(q: str | None) -> Decimal:
    try:
        return parse_quantity(q or "0")
    except ValueError:
        return Decimal(0)


def _plain(d: Decimal) -> str:
    return format(d.normalize(), "f")


def admission_conditions(admission: Admission | None, old: list[dict], now: str) -> list[dict[str, Any]]:
    """Admitted=False / Schedulable=False while there is something to say; absent otherwise
    (the three lifecycle conditions stay the only ones a healthy ladder carries)."""
    out = []
    unfit = "; ".join(admission.unfit.values()) if admission else ""
    placement = "; ".join([*(admission.warnings if admission else ()), *([unfit] if unfit else [])])
    why = "NoNodeMatches" if admission and admission.warnings else "NoNodeFits"
    for type_, reason, text in (("Admitted", "JobInvalid", admission.problem if admission else None),
                                ("Schedulable", why, placement)):
        if not text:
            continue
        prev = next((c for c in old if c.get("type") == type_ and c.get("status") == "False"), None)
        out.append({"type": type_, "status": "False", "reason": reason, "message": text[:1024],
                    "lastTransitionTime": (prev or {}).get("lastTransitionTime") or now})
    return out
