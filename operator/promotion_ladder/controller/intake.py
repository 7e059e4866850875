"""Result intake: which observed Jobs and Pods give a cell its outcome, and which are rejected.

Pure. The handlers turn raw Job/Pod bodies into small summaries (`job_summary`, `pod_summary`,
kept in the operator's in-memory index) and ask `cell_outcome` what a cell's state is.

A cell fails only on positive evidence: a terminal Pod with a bad or absent result, a Job
Failed condition (backoff, deadline), a non-retryable exit code. A Complete Job whose Pod is
not (or not yet as terminal) in the cache is missing evidence: `CellView.look_up` asks the
handlers to read its Pods from the API server before anything is judged.

A result counts only when:
  * the Pod is controlled by a Job this ladder controls (owner-reference UIDs, not labels), and
  * the Job's identity labels name the cell, and
  * the document validates (core.result.parse_result), its identity fields equal the Job's
    labels and its metric is the ladder's objective metric.
Two channels carry a result: the Pod annotation (ladder.promotion.dev/result; any holder of
`patch pods` in the namespace can write it, unless the chart's admission policy limits a
trainer to its own Pod) and the container's termination message (the kubelet reads it from
the container's own file: only the cell itself can write it). When both are present the
termination message is the authority and a disagreeing annotation is rejected as `forged`;
the annotation counts alone only when there is no usable termination message. A rejected
document yields a `Rejection` (reason = metric label, message = Event text).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from ..core.planner import Cell
from ..core.result import (EXIT_BAD_CONFIG, EXIT_DIVERGED, EXIT_OOM, NON_RETRYABLE_EXIT_CODES,
                           RESULT_ANNOTATION, CellResult, ResultError, check_range, parse_result)
from ..core.rules import Outcome
from .jobs import CONTAINER, GPU_RESOURCE, IDENTITY_LABELS, LADDER_LABEL, cell_from_labels

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
    gpus: int | None = None  # what its Pods run with (the Job's template is immutable)
    image: str | None = None

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
    started_at: str | None = None  # status.startTime: with the deadline, tells a stuck Pod
    deadline_seconds: int | None = None  # spec.activeDeadlineSeconds

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
    node: str | None = None  # where the cell ran (the Pod whose result counts, else its latest)
    # The Job says Complete but no terminal Pod of it is at hand (the cache has not seen it, or
    # holds a stale copy): missing evidence, not a failure. The handlers look its Pods up.
    look_up: bool = False


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
    gpus, image = _launch(body)
    return JobSummary(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
        labels=_labels(meta), owner_uid=_controller_uid(meta), complete=complete, failed=failed,
        failed_reason=reason, failed_message=message, active=int(status.get("active") or 0),
        gpus=gpus, image=image,
    )


def _launch(job: dict[str, Any]) -> tuple[int | None, str | None]:
    """The GPUs and image of the trainer container in a Job's Pod template."""
    pod_spec = (((job.get("spec") or {}).get("template") or {}).get("spec")) or {}
    for c in pod_spec.get("containers") or []:
        if c.get("name") != CONTAINER:
            continue
        limit = ((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE)
        try:
            gpus = int(str(limit)) if limit is not None else 0
        except ValueError:
            gpus = None
        return gpus, c.get("image")
    return None, None


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
        started_at=status.get("startTime"), deadline_seconds=spec.get("activeDeadlineSeconds"),
    )


def _key(pod: PodSummary, text: str) -> str:
    return pod.uid + ":" + hashlib.sha256(text.encode()).hexdigest()[:16]


def check_result(text: str, ladder: str, cell: Cell, metric: str, strict: bool = True,
                 budget_seconds: float | None = None) -> CellResult:
    """Parse a result and check it belongs to this cell. `strict`: every identity field must be
    present (annotations); otherwise only the fields present must match (termination messages,
    which the trainer may shorten). With the stage's budget, also that its numbers are in range."""
    result = parse_result(text)
    if budget_seconds is not None:
        check_range(result, budget_seconds)
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


def disagree(annotation: CellResult, message: CellResult) -> bool:
    """Do two reports of one cell say different things (status, value, train seconds)? The
    termination message may be shortened, so only what both carry is compared."""
    if annotation.status != message.status:
        return True
    for a, b in ((annotation.value, message.value), (annotation.train_seconds, message.train_seconds)):
        if a is not None and b is not None and not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            return True
    return (annotation.value is None) != (message.value is None)


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
                 pods: list[PodSummary], budget_seconds: float | None = None) -> CellView:
    """The cell's state from its Job and that Job's Pods (pure)."""
    view = CellView()
    if job is None:
        return view
    if job.owner_uid != ladder_uid or job.cell != cell or job.ladder != ladder:
        return view  # not ours (a leftover of a deleted ladder of the same name): ignore it
    mine = [p for p in pods if p.owner_uid == job.uid]
    # Stable order: Succeeded pods first, then by name (a retried Job has several pods).
    mine.sort(key=lambda p: (p.phase != "Succeeded", p.name))
    view.node = next((p.node for p in mine if p.node), None)
    accepted: tuple[CellResult, PodSummary] | None = None
    problem = ""  # why the last result was refused: the failure reason when none is accepted
    for pod in mine:
        where = f"{pod.namespace}/{pod.name}"
        checked: dict[bool, CellResult] = {}  # strict (annotation) / not (termination message) -> result
        channels = []
        if pod.result is not None:
            channels.append((pod.result, True))
        if pod.terminal and pod.termination_message:
            channels.append((pod.termination_message, False))
        for text, strict in channels:
            try:
                checked[strict] = check_result(text, ladder, cell, metric, strict=strict, budget_seconds=budget_seconds)
            except ResultError as exc:
                problem = str(exc)
                # A malformed termination message is not worth an Event (the kubelet wrote it,
                # the trainer may have shortened it); an out-of-range one is, wherever it came from.
                if strict or exc.reason == "range":
                    what = "result annotation" if strict else "termination message"
                    view.rejections.append(Rejection(where, _key(pod, text), exc.reason,
                                                     f"{what} on pod {pod.name} rejected: {exc}"))
        # The termination message is the authority: only the cell's own container can write it
        # (the kubelet reads it from the container's file), while any holder of `patch pods`
        # can write an annotation. Both present and different: the annotation is forged.
        res = checked.get(False) or checked.get(True)
        if True in checked and False in checked and disagree(checked[True], checked[False]):
            problem = "result annotation disagrees with the termination message"
            view.rejections.append(Rejection(
                where, _key(pod, pod.result or ""), "forged",
                f"result annotation on pod {pod.name} (status {checked[True].status}, value {checked[True].value}) "
                f"disagrees with its termination message (status {checked[False].status}, value "
                f"{checked[False].value}), which only the cell's container can write: the annotation is "
                "rejected as forged and the termination message counts"))
        if res is not None and pod.terminal and accepted is None:
            accepted = (res, pod)
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
    if job.complete and not any(p.terminal for p in mine):
        # Never a failure from missing evidence: a Complete Job had a Pod that exited 0; until
        # that Pod is seen (looked up directly), the cell is still running as far as we know.
        view.running = view.look_up = True
        return view
    if job.complete:
        view.outcome = Outcome("failed", reason=("job completed without a valid result"
                                                 + (f" ({problem})" if problem else ""))[:200])
        return view
    if any(p.phase == "Succeeded" for p in mine):
        # Exit 0 but no acceptable result: the contract says failed. Wait for the Job to say
        # Complete only if a result may still be on its way (the annotation lands before exit).
        view.outcome = Outcome("failed", reason=("trainer exited 0 without a valid result"
                                                 + (f" ({problem})" if problem else ""))[:200])
        return view
    view.running = True
    return view
