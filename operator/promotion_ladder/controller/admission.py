"""Admission of a ladder by the operator: what can never run is said before any Job exists.

The CRD's schema and CEL rules cannot see what only the API server's own Job validation knows
(resource quantities, tolerations, the Pod template as a whole) nor whether any node serves a
host block. So, for a ladder that has not finished (and again after each spec edit),
`AdmissionChecks` creates one cell Job per host block as a server-side dry run (`dryRun=All`:
validated and admitted, never stored) and lists the nodes:

  * a dry run refused: the ladder does not start; condition Admitted=False (reason JobInvalid)
    names the host block and the API server's message, with a Warning Event. Fix the spec
    (placement is editable) and it starts.
  * no node matches a host block's nodeSelector: condition Schedulable=False (reason
    NoNodeMatches) and a Warning, but the ladder runs: a cluster autoscaler may add the node.
  * matching nodes exist but none could hold a cell even when empty (trainer.gpus or a resource
    request above every matching node's allocatable): the same warning, reason NoNodeFits;
    `unfit_blocks` says why, and the cells' waits count as stalls, not as waits for capacity
    (controller/scheduling.py). `ladder validate` gives the same warning where it sees a cluster.
  * the namespace enforces a Pod Security Standard (label pod-security.kubernetes.io/enforce)
    that the cell pods break: the ladder does not start, and the condition names each field of
    spec.trainer.template to set (core/podsecurity.py). The API server enforces the standard on
    Pods only, so the Jobs' dry run alone would pass and every pod would then be refused.

Pure: `sample_jobs` (what to dry-run), `matches` (node selection), `unfit_blocks` and
`admission_conditions`; the verdict travels to the pure reconcile as an `Admission`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from kubernetes.utils import parse_quantity

from ..core.api import LadderInvalid, LadderSpec, load_ladder
from ..core.cell import Cell
from ..core.podsecurity import violations
from ..core.status import MESSAGE_LIMIT
from .jobs import build_job
from .kubeapi import Node, api_message, api_status
from .workqueue import Key

log = logging.getLogger("promotion_ladder.operator")

POD_SECURITY_LABEL = "pod-security.kubernetes.io/enforce"


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


def pod_security_problems(level: str, body: dict[str, Any], spec: LadderSpec) -> list[str]:
    """Each field of the ladder that makes its cell pods break the standard `level` (once per field)."""
    found: list[str] = []
    for _block, job in sample_jobs(body, spec):
        for line in violations(level, job["spec"]["template"]["spec"]):
            if line not in found:
                found.append(line)
    return found


def pod_security_problem(namespace_labels: dict[str, str], body: dict[str, Any], spec: LadderSpec) -> str | None:
    """The blocking problem when the namespace enforces a standard the cell pods break."""
    level = namespace_labels.get(POD_SECURITY_LABEL, "privileged")
    if level not in ("baseline", "restricted"):
        return None
    problems = pod_security_problems(level, body, spec)
    if not problems:
        return None
    return (
        f"the namespace enforces the Pod Security Standard {level} ({POD_SECURITY_LABEL}), which would refuse "
        f"every cell pod: " + "; ".join(problems)
    )[:MESSAGE_LIMIT]


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
            said.append(
                f"{r}: {_plain(requests[r])} requested, at most {largest.allocatable.get(r, '0')} on a node, "
                f"{largest.name}"
            )
        what = "trainer.gpus exceeds" if short == ["nvidia.com/gpu"] else "a cell Pod's requests exceed"
        out[block] = (
            f"{what} the allocatable of every node matching host block {block} "
            f"({'; '.join(said)}): its cells cannot be scheduled until such a node exists"
        )
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
    for type_, reason, text in (
        ("Admitted", "JobInvalid", admission.problem if admission else None),
        ("Schedulable", why, placement),
    ):
        if not text:
            continue
        prev = next((c for c in old if c.get("type") == type_ and c.get("status") == "False"), None)
        out.append(
            {
                "type": type_,
                "status": "False",
                "reason": reason,
                "message": text[:MESSAGE_LIMIT],
                "lastTransitionTime": (prev or {}).get("lastTransitionTime") or now,
            }
        )
    return out


class AdmissionApi(Protocol):
    def dry_run_job(self, namespace: str, job: dict[str, Any]) -> None: ...
    def nodes(self) -> list[Node]: ...
    def namespace_labels(self, name: str) -> dict[str, str]: ...


class AdmissionChecks:
    """The checks of an unfinished ladder against the API server, once per spec generation."""

    def __init__(self, api: AdmissionApi) -> None:
        self._api = api
        self._done: dict[Key, tuple[tuple[Any, Any], Admission]] = {}  # key -> ((uid, generation), checks)
        self._lock = threading.Lock()

    def forget(self, key: Key) -> None:
        with self._lock:
            self._done.pop(key, None)

    def check(self, key: Key, body: dict[str, Any]) -> Admission | None:
        """The checks of this ladder's spec (cached per uid and generation); None for a finished
        ladder or an invalid spec (the reconcile reports that)."""
        if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return None
        meta = body["metadata"]
        mark = (meta.get("uid"), meta.get("generation"))
        with self._lock:
            cached = self._done.get(key)
        if cached is not None and cached[0] == mark:
            return cached[1]
        try:
            spec = load_ladder(body).spec
        except LadderInvalid:
            return None
        problem = self._dry_run(key, body, spec) or self._pod_security(key, body, spec)
        warnings, unfit = self._node_warnings(key, body, spec)
        admission = Admission(problem, warnings, unfit)
        with self._lock:
            self._done[key] = (mark, admission)
        return admission

    def _dry_run(self, key: Key, body: dict[str, Any], spec: LadderSpec) -> str | None:
        for block, job in sample_jobs(body, spec):
            try:
                self._api.dry_run_job(key[0], job)
            except Exception as exc:  # noqa: BLE001 - only the API server's "invalid" blocks a ladder
                status = api_status(exc)
                if status in (400, 422):
                    return f"host block {block}: the API server refuses its cell Jobs: {api_message(exc)}"[
                        :MESSAGE_LIMIT
                    ]
                if status != 409:  # 403 (a full quota), 5xx: not a verdict on the spec
                    log.warning("dry run of a Job of %s/%s: %s", *key, exc)
        return None

    def _pod_security(self, key: Key, body: dict[str, Any], spec: LadderSpec) -> str | None:
        try:
            labels = self._api.namespace_labels(key[0])
        except Exception as exc:  # noqa: BLE001 - unknown labels are no verdict; the pods say it then
            log.warning("could not read namespace %s's labels: %s", key[0], exc)
            return None
        return pod_security_problem(labels, body, spec)

    def _node_warnings(
        self, key: Key, body: dict[str, Any], spec: LadderSpec
    ) -> tuple[tuple[str, ...], dict[str, str]]:
        """Host blocks no node matches (warnings), and those no matching node could hold (unfit)."""
        try:
            nodes = self._api.nodes()
        except Exception as exc:  # noqa: BLE001 - a warning only; never blocks
            log.warning("could not list nodes for %s/%s: %s", *key, exc)
            return (), {}
        blocks = {h.name: h for h in spec.host_blocks}
        warnings = tuple(
            f"no node matches host block {b} (nodeSelector {blocks[b].node_selector}); its cells "
            "wait until one does (a cluster autoscaler may add it)"
            for b in unmatched_blocks(spec, [n.labels for n in nodes])
        )
        return warnings, unfit_blocks(body, spec, nodes)
