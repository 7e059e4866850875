"""Result intake: which observed Jobs and Pods give a cell its outcome, and which are rejected.

Pure. The informers turn raw Job/Pod bodies into small summaries (`job_summary`, `pod_summary`,
kept in the operator's in-memory index) and ask `cell_outcome` what a cell's state is.

How a finished cell is judged is the cell contract's (core.contract.judge, the same for
`ladder run`); this module only gathers the Kubernetes evidence for it:
  * which Pod: one controlled by a Job this ladder controls whose owner UID, whose
    `batch.kubernetes.io/controller-uid` label and whose ladder/cell labels all agree with that
    Job (`disagreement`); a Pod that claims the Job by one of them and disagrees in another was
    relabelled or re-owned and is rejected as `forged`. Succeeded Pods first; of a multi-node cell's Pods only
    the index-0 Pod (global rank 0) publishes: the others exit 0 without a result, which
    neither gives nor lacks one (their non-retryable exit codes still fail the cell);
  * which channel: the container's termination message (the kubelet reads it from the
    container's own file: only the cell itself can write it) is the authority; the Pod
    annotation (core.contract.RESULT_ANNOTATION; any holder of `patch pods` in the namespace
    can write it, unless the chart's admission policy limits a trainer to its own Pod) counts
    when there is no usable termination message. Both usable and different: the annotation is
    rejected as `forged`;
  * when it is final: a Pod that Succeeded, a Pod that failed with a non-retryable exit code,
    or a Job that has finished (its retries are spent). A Pod that is still running, or that
    failed in a way the Job retries, decides nothing, whatever its annotation says.
  * never a failure from missing evidence: a Complete Job with no terminal Pod at hand (the
    cache has not seen it, or holds a stale copy; its labels were changed) is not judged:
    `CellView.look_up` asks the reconciler to read its Pods from the API server first;
  * a container that never ran (StartError: a missing command, a mount that fails) says so: the
    runtime's error in its termination message is not a result document.
A rejected annotation yields a `Rejection` (reason = metric label, message = Event text), also
for a Pod that has not ended. A rejection already announced is remembered on its Pod (the
annotation REJECTED_ANNOTATION, written by the operator), so a restarted operator does not
announce it again.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from ..core.cell import Cell, CellOutcome
from ..core.clock import epoch
from ..core.contract import NON_RETRYABLE_EXIT_CODES, REASON_LIMIT, RESULT_ANNOTATION, check_result, judge
from ..core.result import CellResult, ResultError
from .jobs import CONTAINER, GPU_RESOURCE, IDENTITY_LABELS, LABEL_PREFIX, LADDER_LABEL, cell_from_labels
from .occupancy import pod_times

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# The Job controller labels every Pod of a Job with the Job's UID (its generated selector).
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
# The digests of the rejected documents of a Pod already announced (space-separated; the operator
# writes it, a trainer may not: the admission policy lets it change only the result and progress).
REJECTED_ANNOTATION = LABEL_PREFIX + "rejected"
REJECTED_KEEP = 16  # digests remembered per Pod (a Pod rejected more often than this may repeat an Event)
# A container that ended this way never ran the trainer: its termination message is the runtime's
# error (containerd: StartError, exit 128; dockershim: ContainerCannotRun), not a result.
START_FAILED_REASONS = ("StartError", "ContainerCannotRun")
# A container waiting for one of these will not start by itself (controller/scheduling.py).
CANNOT_START_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
)


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
    # A batch queue (Kueue) holds the Job: spec.suspend (queueing.py reads the times below).
    suspended: bool = False
    created_at: float | None = None  # metadata.creationTimestamp (epoch seconds)
    suspended_at: float | None = None  # the Suspended=True condition's lastTransitionTime
    resumed_at: float | None = None  # the Suspended=False condition's lastTransitionTime: admitted
    finished_at: float | None = None  # the Complete/Failed condition's lastTransitionTime

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
    started_at: str | None = None  # status.startTime: with the deadline, tells a stuck Pod
    deadline_seconds: int | None = None  # spec.activeDeadlineSeconds
    index: int | None = None  # batch.kubernetes.io/job-completion-index: the node rank of a multi-node cell
    job_uid_label: str | None = None  # JOB_UID_LABEL: the Job the Job controller made it for
    created_at: float | None = None  # metadata.creationTimestamp (epoch seconds)
    running_at: float | None = None  # the trainer container's start (state running or terminated)
    unschedulable: str | None = None  # PodScheduled=False, reason Unschedulable: the scheduler's message
    unschedulable_since: float | None = None  # ... since (its lastTransitionTime)
    waiting_reason: str = ""  # the trainer container's state.waiting.reason (ImagePullBackOff, ...)
    waiting_message: str = ""
    rejected: tuple[str, ...] = ()  # REJECTED_ANNOTATION: digests of documents already announced

    @property
    def ladder(self) -> str | None:
        return dict(self.labels).get(LADDER_LABEL)

    @property
    def start_failed(self) -> bool:
        """The trainer container ended without ever running (see START_FAILED_REASONS)."""
        return self.terminated_reason in START_FAILED_REASONS

    @property
    def publishes(self) -> bool:
        """Only global rank 0 (the index-0 pod of a multi-node cell) publishes a result."""
        return self.index in (None, 0)

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class Rejection:
    pod: str  # namespace/name
    key: str  # dedupe key: pod UID + a hash of the rejected text
    reason: str  # ladder_result_errors_total's reason label
    message: str
    # What the operator writes back to the Pod once announced (REJECTED_ANNOTATION): its digests so far.
    seen: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return self.key.rpartition(":")[2]

    def remembered(self) -> str:
        """The REJECTED_ANNOTATION value that records this rejection with the earlier ones."""
        return " ".join((*[d for d in self.seen if d != self.digest], self.digest)[-REJECTED_KEEP:])


@dataclass
class CellView:
    """What the cluster says about one cell right now."""

    outcome: CellOutcome | None = None  # terminal: succeeded/failed
    running: bool = False  # a Job exists and is not finished
    rejections: list[Rejection] = field(default_factory=list)
    node: str | None = None  # where the cell ran (the Pod whose result counts, else its latest)
    # The Job says Complete but no terminal Pod of it is at hand (the cache has not seen it, or
    # holds a stale copy): missing evidence, not a failure. The reconciler looks its Pods up.
    look_up: bool = False
    pods: list[PodSummary] = field(default_factory=list)  # the Job's own Pods (see `disagreement`)


def _controller_uid(meta: dict[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _labels(meta: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    labels = meta.get("labels") or {}
    return tuple(sorted((k, v) for k, v in labels.items() if k in IDENTITY_LABELS))


def job_summary(body: dict[str, Any]) -> JobSummary:
    meta, status, spec = body.get("metadata") or {}, body.get("status") or {}, body.get("spec") or {}
    complete = failed = False
    reason = message = ""
    suspended_at = resumed_at = finished_at = None
    for c in status.get("conditions") or []:
        if c.get("type") == "Suspended":
            if c.get("status") == "True":
                suspended_at = epoch(c.get("lastTransitionTime"))
            else:
                resumed_at = epoch(c.get("lastTransitionTime"))
        if c.get("status") != "True":
            continue
        if c.get("type") == "Complete":
            complete, finished_at = True, epoch(c.get("lastTransitionTime"))
        elif c.get("type") == "Failed":
            failed, reason, message = True, c.get("reason") or "", c.get("message") or ""
            finished_at = epoch(c.get("lastTransitionTime"))
    gpus, image = _launch(body)
    return JobSummary(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        labels=_labels(meta),
        owner_uid=_controller_uid(meta),
        complete=complete,
        failed=failed,
        failed_reason=reason,
        failed_message=message,
        active=int(status.get("active") or 0),
        gpus=gpus,
        image=image,
        suspended=bool(spec.get("suspend")),
        created_at=epoch(meta.get("creationTimestamp")),
        suspended_at=suspended_at,
        resumed_at=resumed_at,
        finished_at=finished_at,
    )


def _launch(job: dict[str, Any]) -> tuple[int | None, str | None]:
    """The GPUs (per pod x pods: an Indexed Job's completions) and image of the trainer
    container in a Job's Pod template."""
    pod_spec = (((job.get("spec") or {}).get("template") or {}).get("spec")) or {}
    pods = int((job.get("spec") or {}).get("completions") or 1)
    for c in pod_spec.get("containers") or []:
        if c.get("name") != CONTAINER:
            continue
        limit = ((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE)
        try:
            gpus = int(str(limit)) * pods if limit is not None else 0
        except ValueError:
            gpus = None
        return gpus, c.get("image")
    return None, None


def _container(status: dict[str, Any]) -> dict[str, Any]:
    """What the trainer container's status says: its end, its start, why it waits."""
    out: dict[str, Any] = {}
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != CONTAINER:
            continue
        state = cs.get("state") or {}
        term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            out.update(
                exit_code=term.get("exitCode"),
                terminated_reason=term.get("reason") or "",
                termination_message=term.get("message") or None,
            )
        started = (state.get("running") or {}).get("startedAt")
        if started is None and term and term.get("reason") not in START_FAILED_REASONS:
            started = term.get("startedAt")
        out["running_at"] = epoch(started)
        waiting = state.get("waiting") or {}
        out.update(waiting_reason=waiting.get("reason") or "", waiting_message=waiting.get("message") or "")
    return out


def _unschedulable(status: dict[str, Any]) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return {"unschedulable": c.get("message") or "", "unschedulable_since": epoch(c.get("lastTransitionTime"))}
    return {}


def pod_summary(body: dict[str, Any]) -> PodSummary:
    meta, status, spec = body.get("metadata") or {}, body.get("status") or {}, body.get("spec") or {}
    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    times = pod_times(body, CONTAINER)
    return PodSummary(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        labels=_labels(meta),
        owner_uid=_controller_uid(meta),
        phase=status.get("phase") or "Pending",
        node=spec.get("nodeName"),
        deleting=bool(meta.get("deletionTimestamp")),
        result=annotations.get(RESULT_ANNOTATION),
        started_at=status.get("startTime"),
        deadline_seconds=spec.get("activeDeadlineSeconds"),
        index=completion_index(meta),
        job_uid_label=labels.get(JOB_UID_LABEL),
        created_at=epoch(meta.get("creationTimestamp")),
        rejected=tuple(str(annotations.get(REJECTED_ANNOTATION) or "").split()),
        **_container(status),
        **_unschedulable(status),
        bound_at=times["bound_at"],
        released_at=times["released_at"],
    )


def completion_index(meta: dict[str, Any]) -> int | None:
    """The Job controller writes the index as an annotation (always) and a label (PodIndexLabel)."""
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        try:
            return int(source[COMPLETION_INDEX])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _key(pod: PodSummary, text: str) -> str:
    return pod.uid + ":" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _rejection(pod: PodSummary, text: str, reason: str, message: str) -> Rejection:
    return Rejection(f"{pod.namespace}/{pod.name}", _key(pod, text), reason, message, pod.rejected)


def foreign_pod_rejection(pod: PodSummary) -> Rejection | None:
    """A Pod with our labels and a result that no Job of the ladder controls: never counted.

    Not foreign, and not announced: a Pod being deleted, and a Job's own Pod whose Job is not
    in the cache (its owner and its JOB_UID_LABEL agree): the Job was deleted (a ladder being
    deleted, garbage collection removes Jobs before their Pods) or is not listed yet."""
    if pod.result is None or pod.deleting:
        return None
    if pod.owner_uid is not None and pod.owner_uid == pod.job_uid_label:
        return None
    return _rejection(
        pod,
        pod.result,
        "foreign",
        f"pod {pod.name} carries a result but is not controlled by a Job of this ladder; ignored",
    )


def claims(pod: PodSummary, job: JobSummary) -> bool:
    """Does the Pod claim to be this Job's, by its owner or by the Job controller's label?"""
    return pod.owner_uid == job.uid or pod.job_uid_label == job.uid


def disagreement(pod: PodSummary, job: JobSummary) -> str | None:
    """Why a Pod that claims this Job is not the Job's own (None: it is). The Job controller
    makes every Pod of a Job with the Job's UID as owner and as JOB_UID_LABEL and the Job's
    ladder/cell labels; a Pod where any of them differs was re-owned or relabelled after."""
    wrong = []
    if pod.owner_uid != job.uid:
        wrong.append(f"its owner is {pod.owner_uid or 'none'}")
    if pod.job_uid_label != job.uid:
        wrong.append(f"its {JOB_UID_LABEL} label is {pod.job_uid_label or 'absent'}")
    have, want = dict(pod.labels), dict(job.labels)
    changed = [k.removeprefix(LABEL_PREFIX) for k in IDENTITY_LABELS if have.get(k) != want.get(k)]
    if changed:
        wrong.append("its " + ", ".join(changed) + " label" + ("s differ" if len(changed) > 1 else " differs"))
    if not wrong:
        return None
    return f"pod {pod.name} claims Job {job.name} ({job.uid}) but " + "; ".join(wrong)


def forged_pod_rejection(pod: PodSummary, job: JobSummary, why: str) -> Rejection:
    """A relabelled or re-owned Pod: never assigned to a cell, announced once per change."""
    state = f"{pod.owner_uid}|{pod.job_uid_label}|{pod.labels}"
    return _rejection(pod, state, "forged", f"{why}: rejected as forged, it counts for no cell")


def disagree(annotation: CellResult, message: CellResult) -> bool:
    """Do two reports of one cell say different things (status, value, train seconds)? The
    termination message may be shortened, so only what both carry is compared."""
    if annotation.status != message.status:
        return True
    for a, b in ((annotation.value, message.value), (annotation.train_seconds, message.train_seconds)):
        if a is not None and b is not None and not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            return True
    return (annotation.value is None) != (message.value is None)


def _evidence(
    pod: PodSummary, ladder: str, cell: Cell, metric: str, view: CellView, budget_seconds: float | None = None
) -> tuple[str | None, bool]:
    """The result text this Pod offers and whether it came from the strict channel (annotation).

    The termination message is the authority: only the cell's own container can write it,
    while anyone allowed to patch the Pod can write the annotation. A usable termination
    message wins; a usable annotation that disagrees with it is rejected as forged. The
    annotation counts when there is no usable termination message. When neither passes the
    contract's checks, the termination message (the kubelet's) is the evidence to judge. A
    rejected annotation, and an out-of-range document from either channel, is recorded in
    `view.rejections`."""
    channels: list[tuple[str, bool]] = []
    if pod.result is not None:
        channels.append((pod.result, True))
    if pod.terminal and pod.termination_message and not pod.start_failed:
        channels.append((pod.termination_message, False))
    usable: dict[bool, tuple[str, CellResult]] = {}
    for text, strict in channels:
        try:
            usable[strict] = (
                text,
                check_result(text, ladder, cell, metric, strict=strict, budget_seconds=budget_seconds),
            )
        except ResultError as exc:
            # A malformed termination message is not worth an Event (the kubelet wrote it, the
            # trainer may have shortened it); an out-of-range one is, wherever it came from.
            if strict or exc.reason == "range":
                what = "result annotation" if strict else "termination message"
                view.rejections.append(_rejection(pod, text, exc.reason, f"{what} on pod {pod.name} rejected: {exc}"))
    if False in usable:
        if True in usable and disagree(usable[True][1], usable[False][1]):
            ann, msg = usable[True][1], usable[False][1]
            view.rejections.append(
                _rejection(
                    pod,
                    usable[True][0],
                    "forged",
                    f"result annotation on pod {pod.name} (status {ann.status}, value {ann.value}) disagrees with its "
                    f"termination message (status {msg.status}, value {msg.value}), which only the cell's container "
                    "can write: the annotation is rejected as forged and the termination message counts",
                )
            )
        return usable[False][0], False
    if True in usable:
        return usable[True][0], True
    if not channels:
        return None, False
    text, strict = channels[-1]
    return text, strict


def cell_outcome(
    ladder: str,
    ladder_uid: str,
    cell: Cell,
    metric: str,
    job: JobSummary | None,
    pods: list[PodSummary],
    budget_seconds: float | None = None,
) -> CellView:
    """The cell's state from its Job and that Job's Pods (pure)."""
    view = CellView()
    if job is None:
        return view
    if job.owner_uid != ladder_uid or job.cell != cell or job.ladder != ladder:
        return view  # not ours (a leftover of a deleted ladder of the same name): ignore it
    mine = []
    for p in pods:
        if not claims(p, job):
            continue
        why = disagreement(p, job)
        if why is None:
            mine.append(p)
        else:
            view.rejections.append(forged_pod_rejection(p, job, why))
    view.pods = mine
    # Stable order: Succeeded pods first, then by name (a retried Job has several pods).
    mine.sort(key=lambda p: (p.phase != "Succeeded", p.name))
    view.node = next((p.node for p in mine if p.node), None)
    decided: CellOutcome | None = None
    for pod in mine:
        if not pod.publishes and pod.exit_code not in NON_RETRYABLE_EXIT_CODES:
            continue  # another rank of a multi-node cell: no result is its contract
        text, strict = _evidence(pod, ladder, cell, metric, view, budget_seconds)
        if decided is not None or not pod.terminal:
            continue  # a running Pod's annotation may be rejected (above), never decides the cell
        # Final evidence: the Pod succeeded, failed for good, or failed with a result document
        # after the Job gave up on it. A Pod the Job retries decides nothing; a failed Job with
        # no document keeps the Job's own reason (below).
        final = (
            pod.phase == "Succeeded" or pod.exit_code in NON_RETRYABLE_EXIT_CODES or (job.finished and text is not None)
        )
        if not final:
            continue
        code = pod.exit_code if pod.exit_code is not None else (0 if pod.phase == "Succeeded" else 1)
        decided = judge(text, code, cell, ladder, metric, strict=strict, budget_seconds=budget_seconds)
    if decided is not None:
        view.outcome = decided
        return view
    if job.failed:
        last = next((p for p in reversed(mine) if p.phase == "Failed"), None)
        detail = f"; last pod exit code {last.exit_code}" if last and last.exit_code is not None else ""
        if last is not None and last.start_failed:
            detail = f"; {start_failure(last)}"
        view.outcome = CellOutcome(
            "failed", reason=f"job failed: {job.failed_reason or 'Failed'}{detail}"[:REASON_LIMIT]
        )
        return view
    if job.complete and not any(p.terminal for p in mine):
        # Never a failure from missing evidence: a Complete Job had a Pod that exited 0; until
        # that Pod is seen (looked up directly), the cell is still running as far as we know.
        view.running = view.look_up = True
        return view
    if job.complete:
        view.outcome = CellOutcome("failed", reason="job completed without a valid result")
        return view
    view.running = True
    return view


def start_failure(pod: PodSummary) -> str:
    """The words for a container that never ran: its runtime's reason and message."""
    message = (pod.termination_message or "").strip()
    return f"the container could not start ({pod.terminated_reason}" + (f": {message})" if message else ")")
