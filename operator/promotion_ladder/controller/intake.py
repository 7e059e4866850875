"""Result intake: which observed Jobs and Pods give a cell its outcome, and which are rejected.

Pure. The handlers turn raw Job/Pod bodies into small summaries (`job_summary`, `pod_summary`,
kept in the operator's in-memory index) and ask `cell_outcome` what a cell's state is.

A result counts only when:
  * the Pod is controlled by a Job this ladder controls (owner-reference UIDs, not labels), and
  * the Job's identity labels name the cell, and
  * the document validates (core.result.parse_result), its identity fields equal the Job's
    labels and its metric is the ladder's objective metric.
The Pod annotation (ladder.promotion.dev/result) is the primary channel; the container's
termination message (written by the kubelet, so it cannot be forged through the API) is the
fallback. A rejected document yields a `Rejection` (reason = metric label, message = Event text).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..core.planner import Cell
from ..core.result import (EXIT_BAD_CONFIG, EXIT_DIVERGED, EXIT_OOM, NON_RETRYABLE_EXIT_CODES,
                           RESULT_ANNOTATION, CellResult, ResultError, parse_result)
from ..core.rules import Outcome
from .jobs import CONTAINER, IDENTITY_LABELS, LADDER_LABEL, cell_from_labels
from .occupancy import pod_times

EXIT_REASONS = {EXIT_BAD_CONFIG: "bad config", EXIT_DIVERGED: "diverged", EXIT_OOM: "out of memory"}


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

    outcome: Outcome | None = None  # terminal: succeeded/failed
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


def check_result(text: str, ladder: str, cell: Cell, metric: str, strict: bool = True) -> CellResult:
    """Parse a result and check it belongs to this cell. `strict`: every identity field must be
    present (annotations); otherwise only the fields present must match (termination messages,
    which the trainer may shorten)."""
    result = parse_result(text)
    want = {"ladder": ladder, "stage": cell.stage, "candidate": cell.candidate,
            "hostBlock": cell.host_block, "seed": cell.seed}
    got = dict(zip(("ladder", "stage", "candidate", "hostBlock", "seed"), result.identity()))
    wrong = [k for k, v in want.items() if (got[k] is not None or strict) and got[k] != v]
    if wrong:
        raise ResultError("identity", "result identity does not match its Job: " + ", ".join(
            f"{k}={got[k]!r} (expected {want[k]!r})" for k in wrong))
    if result.metric != metric:
        raise ResultError("metric", f"result metric {result.metric!r} is not the ladder's objective metric {metric!r}")
    return result


def _outcome_from(result: CellResult, exit_code: int | None) -> Outcome:
    if result.status == "ok" and exit_code in (0, None):
        return Outcome("succeeded", result.value, result.train_seconds)
    why = result.status if result.status != "ok" else f"exit code {exit_code}"
    msg = f"{why}: {result.message}" if result.message else why
    return Outcome("failed", None, result.train_seconds, msg[:200])


def foreign_pod_rejection(pod: PodSummary) -> Rejection | None:
    """A Pod with our labels and a result that no Job of the ladder controls: never counted."""
    if pod.result is None:
        return None
    return Rejection(f"{pod.namespace}/{pod.name}", _key(pod, pod.result), "foreign",
                     f"pod {pod.name} carries a result but is not controlled by a Job of this ladder; ignored")


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
    accepted: tuple[CellResult, PodSummary] | None = None
    for pod in mine:
        where = f"{pod.namespace}/{pod.name}"
        candidates = []
        if pod.result is not None:
            candidates.append((pod.result, True))
        if pod.terminal and pod.termination_message:
            candidates.append((pod.termination_message, False))
        for text, strict in candidates:
            try:
                res = check_result(text, ladder, cell, metric, strict=strict)
            except ResultError as exc:
                if strict:  # a bad termination message is not worth an Event: the kubelet wrote it
                    view.rejections.append(Rejection(where, _key(pod, text), exc.reason,
                                                     f"result annotation on pod {pod.name} rejected: {exc}"))
                continue
            if pod.terminal and accepted is None:
                accepted = (res, pod)
            break
    if accepted is not None:
        res, pod = accepted
        if pod.phase == "Succeeded" or (pod.exit_code in NON_RETRYABLE_EXIT_CODES) or job.failed:
            view.outcome = _outcome_from(res, pod.exit_code if pod.phase != "Succeeded" else 0)
            return view
    for pod in mine:  # a non-retryable exit fails the cell at once (the Job follows)
        if pod.phase == "Failed" and pod.exit_code in NON_RETRYABLE_EXIT_CODES:
            view.outcome = Outcome("failed", reason=f"exit code {pod.exit_code} ({EXIT_REASONS[pod.exit_code]})")
            return view
    if job.failed:
        last = next((p for p in reversed(mine) if p.phase == "Failed"), None)
        detail = f"; last pod exit code {last.exit_code}" if last and last.exit_code is not None else ""
        view.outcome = Outcome("failed", reason=f"job failed: {job.failed_reason or 'Failed'}{detail}"[:200])
        return view
    if job.complete:
        view.outcome = Outcome("failed", reason="job completed without a valid result")
        return view
    if any(p.phase == "Succeeded" for p in mine):
        # Exit 0 but no acceptable result: the contract says failed. Wait for the Job to say
        # Complete only if a result may still be on its way (the annotation lands before exit).
        view.outcome = Outcome("failed", reason="trainer exited 0 without a valid result")
        return view
    view.running = True
    return view
