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
  * the namespace enforces a Pod Security Standard (label pod-security.kubernetes.io/enforce)
    that the cell pods break: the ladder does not start, and the condition names each field of
    spec.trainer.template to set (core/podsecurity.py). The API server enforces the standard on
    Pods only, so the Jobs' dry run alone would pass and every pod would then be refused.

Pure: `sample_jobs` (what to dry-run), `matches` (node selection) and
`admission_conditions`; the verdict travels to the pure reconcile as an `Admission`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.api import LadderInvalid, LadderSpec, load_ladder
from ..core.cell import Cell
from ..core.podsecurity import violations
from ..core.status import MESSAGE_LIMIT
from .jobs import build_job
from .kubeapi import api_message, api_status
from .workqueue import Key

log = logging.getLogger("promotion_ladder.operator")

POD_SECURITY_LABEL = "pod-security.kubernetes.io/enforce"


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
    return (f"the namespace enforces the Pod Security Standard {level} ({POD_SECURITY_LABEL}), which would refuse "
            f"every cell pod: " + "; ".join(problems))[:MESSAGE_LIMIT]


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


class AdmissionApi(Protocol):
    def dry_run_job(self, namespace: str, job: dict[str, Any]) -> None: ...
    def node_labels(self) -> list[dict[str, str]]: ...
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
        admission = Admission(problem, self._node_warnings(key, spec))
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
                    return f"host block {block}: the API server refuses its cell Jobs: {api_message(exc)}"[:MESSAGE_LIMIT]
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

    def _node_warnings(self, key: Key, spec: LadderSpec) -> tuple[str, ...]:
        try:
            nodes = self._api.node_labels()
        except Exception as exc:  # noqa: BLE001 - a warning only; never blocks
            log.warning("could not list nodes for %s/%s: %s", *key, exc)
            return ()
        blocks = {h.name: h for h in spec.host_blocks}
        return tuple(f"no node matches host block {b} (nodeSelector {blocks[b].node_selector}); its cells "
                     "wait until one does (a cluster autoscaler may add it)" for b in unmatched_blocks(spec, nodes))
