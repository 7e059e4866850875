"""Result intake: which observed Jobs and Pods give a cell its outcome, and which are rejected.

Pure. The handlers turn raw Job/Pod bodies into small summaries (`job_summary`, `pod_summary`,
kept in the operator's in-memory index) and ask `cell_outcome` what a cell's state is.

How a finished cell is judged is the cell contract's (core.contract.judge, the same for
`ladder run`); this module only gathers the Kubernetes evidence for it:
  * which Pod: one controlled by a Job this ladder controls (owner-reference UIDs, not labels),
    whose identity labels name the cell; Succeeded Pods first;
  * which channel: the Pod annotation (core.contract.RESULT_ANNOTATION) first, the container's
    termination message (written by the kubelet, so it cannot be forged through the API) as
    the fallback when the annotation is missing or rejected;
  * when it is final: a Pod that Succeeded, a Pod that failed with a non-retryable exit code,
    or a Job that has finished (its retries are spent). A Pod that is still running, or that
    failed in a way the Job retries, decides nothing, whatever its annotation says.
A rejected annotation yields a `Rejection` (reason = metric label, message = Event text), also
for a Pod that has not ended.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..core.cell import Cell
from ..core.contract import NON_RETRYABLE_EXIT_CODES, RESULT_ANNOTATION, check_result, judge
from ..core.result import ResultError
from ..core.cell import CellOutcome
from .jobs import CONTAINER, IDENTITY_LABELS, LADDER_LABEL, cell_from_labels
from .occupancy import pod_times


@dataclass(frozen=True)
class JobSummary:
    namespace: str
    name: str
    uid: str
    labels: tuple[tuple[str, str], ...]
    owner_uid: str | None  # the controller owner's UID
    complete: bool = False
    failed: bool = False
    failed_reason: str = ""
    failed_message: str = ""
    active: int = 0

    @property
    def ladder(self) -> str | None:
        return dict(self.labels).get(LADDER_LABEL)

    @property
    def cell(self) -> Cell | None:
        return cell_from_labels(dict(self.labels))

    @property
    def finished(self) -> bool:
        return self.complete or self.failed


@dataclass(frozen=True)
class PodSummary:
    namespace: str
    name: str
    uid: str
    labels: tuple[tuple[str, str], ...]
    owner_uid: str | None  # the controlling Job's UID
    phase: str = "Pending"
    node: str | None = None
    deleting: bool = False
    result: str | None = None  # the result annotation's raw text
    exit_code: int | None = None
    terminated_reason: str = ""
    termination_message: str | None = None
    bound_at: float | None = None  # occupancy.pod_times: bound to a node ...
    released_at: float | None = None  # ... to the trainer container's end (epoch seconds)

    @property
    def ladder(self) -> str | None:
        return dict(self.labels).get(LADDER_LABEL)

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class Rejection:
    pod: str  # namespace/name
    key: str  # dedupe key: pod UID + a hash of the rejected text
    reason: str  # ladder_result_errors_total's reason label
    message: str


@dataclass
class CellView:
    """What the cluster says about one cell right now."""

    outcome: CellOutcome | None = None  # terminal: succeeded/failed
    running: bool = False  # a Job exists and is not finished
    rejections: list[Rejection] = field(default_factory=list)


def _controller_uid(meta: dict[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _labels(meta: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    labels = meta.get("labels") or {}
    return tuple(sorted((k, v) for k, v in labels.items() if k in IDENTITY_LABELS))


def job_summary(body: dict[str, Any]) -> JobSummary:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    complete = failed = False
    reason = message = ""
    for c in status.get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") == "Complete":
            complete = True
        elif c.get("type") == "Failed":
            failed, reason, message = True, c.get("reason") or "", c.get("message") or ""
    return JobSummary(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
        labels=_labels(meta), owner_uid=_controller_uid(meta), complete=complete, failed=failed,
        failed_reason=reason, failed_message=message, active=int(status.get("active") or 0),
    )


def pod_summary(body: dict[str, Any]) -> PodSummary:
    meta, status, spec = body.get("metadata") or {}, body.get("status") or {}, body.get("spec") or {}
    exit_code, reason, message = None, "", None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != CONTAINER:
            continue
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            exit_code, reason, message = term.get("exitCode"), term.get("reason") or "", term.get("message")
    return PodSummary(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
        labels=_labels(meta), owner_uid=_controller_uid(meta), phase=status.get("phase") or "Pending",
        node=spec.get("nodeName"), deleting=bool(meta.get("deletionTimestamp")),
        result=(meta.get("annotations") or {}).get(RESULT_ANNOTATION),
        exit_code=exit_code, terminated_reason=reason, termination_message=message or None,
        **pod_times(body, CONTAINER),
    )


def _key(pod: PodSummary, text: str) -> str:
    return pod.uid + ":" + hashlib.sha256(text.encode()).hexdigest()[:16]


def foreign_pod_rejection(pod: PodSummary) -> Rejection | None:
    """A Pod with our labels and a result that no Job of the ladder controls: never counted."""
    if pod.result is None:
        return None
    return Rejection(f"{pod.namespace}/{pod.name}", _key(pod, pod.result), "foreign",
                     f"pod {pod.name} carries a result but is not controlled by a Job of this ladder; ignored")


def _evidence(pod: PodSummary, ladder: str, cell: Cell, metric: str,
              view: CellView) -> tuple[str | None, bool]:
    """The result text this Pod offers and whether it came from the strict channel (annotation).

    The first channel whose document passes the contract's checks wins; when none does, the
    termination message (the kubelet's, unforgeable) is preferred as the evidence to judge. A
    rejected annotation is recorded in `view.rejections`."""
    channels: list[tuple[str, bool]] = []
    if pod.result is not None:
        channels.append((pod.result, True))
    if pod.terminal and pod.termination_message:
        channels.append((pod.termination_message, False))
    for text, strict in channels:
        try:
            check_result(text, ladder, cell, metric, strict=strict)
        except ResultError as exc:
            if strict:  # a bad termination message is not worth an Event: the kubelet wrote it
                view.rejections.append(Rejection(f"{pod.namespace}/{pod.name}", _key(pod, text), exc.reason,
                                                 f"result annotation on pod {pod.name} rejected: {exc}"))
            continue
        return text, strict
    if not channels:
        return None, False
    text, strict = channels[-1]
    return text, strict


def cell_outcome(ladder: str, ladder_uid: str, cell: Cell, metric: str, job: JobSummary | None,
                 pods: list[PodSummary]) -> CellView:
    """The cell's state from its Job and that Job's Pods (pure)."""
    view = CellView()
    if job is None:
        return view
    if job.owner_uid != ladder_uid or job.cell != cell or job.ladder != ladder:
        return view  # not ours (a leftover of a deleted ladder of the same name): ignore it
    mine = [p for p in pods if p.owner_uid == job.uid]
    # Stable order: Succeeded pods first, then by name (a retried Job has several pods).
    mine.sort(key=lambda p: (p.phase != "Succeeded", p.name))
    decided: CellOutcome | None = None
    for pod in mine:
        text, strict = _evidence(pod, ladder, cell, metric, view)
        if decided is not None or not pod.terminal:
            continue  # a running Pod's annotation may be rejected (above), never decides the cell
        # Final evidence: the Pod succeeded, failed for good, or failed with a result document
        # after the Job gave up on it. A Pod the Job retries decides nothing; a failed Job with
        # no document keeps the Job's own reason (below).
        final = (pod.phase == "Succeeded" or pod.exit_code in NON_RETRYABLE_EXIT_CODES
                 or (job.finished and text is not None))
        if not final:
            continue
        code = pod.exit_code if pod.exit_code is not None else (0 if pod.phase == "Succeeded" else 1)
        decided = judge(text, code, cell, ladder, metric, strict=strict)
    if decided is not None:
        view.outcome = decided
        return view
    if job.failed:
        last = next((p for p in reversed(mine) if p.phase == "Failed"), None)
        detail = f"; last pod exit code {last.exit_code}" if last and last.exit_code is not None else ""
        view.outcome = CellOutcome("failed", reason=f"job failed: {job.failed_reason or 'Failed'}{detail}"[:200])
        return view
    if job.complete:
        view.outcome = CellOutcome("failed", reason="job completed without a valid result")
        return view
    view.running = True
    return view
