"""Cells behind a batch queue (Kueue): queued or running, their waits, and a queue that cannot admit.

Kueue's webhook stores every Job that names a queue (`kueue.x-k8s.io/queue-name`, from
`spec.queueName`) with `spec.suspend: true`; the Job makes no Pod until Kueue admits its
Workload and resumes it, and an evicted or preempted Job is suspended again (its Pods deleted,
not counted as failures) until it is admitted anew (benchmarks/kueue-spike.md). So:

  * queued: a cell whose Job is not finished and is suspended (`spec.suspend`). It holds no
    GPU: shown Queued, not counted in `ladder_gpus_in_use`;
  * its wait: from the Job's creation or its Suspended=True transition to its Suspended=False
    transition (the Job's own conditions; `attempts_seen` -> core/attempts.py);
  * a lost attempt: a Pod of the cell deleted while it held its GPUs and its Job had not
    finished (`lost_pod`). The operator keeps the Pod's times from the watch's last view of it
    (LostPods), rather than counting Kueue's `schedulingStats.evictions`: the count alone gives
    no seconds, and the Pod's view is the same evidence the cell's occupancy is measured from;
  * a queue that cannot admit: Kueue says why on the cell's Workload only (condition
    QuotaReserved=False, reason Inadmissible: the LocalQueue or its ClusterQueue does not exist;
    reason Pending with "maximum capacity": the ClusterQueue can never hold one cell). No Event
    says it, so the operator reads the Workloads of its queued cells (`queue_problem`) and names
    the queue in a condition QueueAdmissible=False and a Warning Event (`queue_conditions`).

Pure, except `LostPods` (a thread-safe memory the Pod watch fills) and `WorkloadChecks` (a
rate-limited read of the namespace's Workloads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.attempts import AttemptsSeen, LostPod
from ..core.status import MESSAGE_LIMIT
from .intake import JobSummary, PodSummary
from .workqueue import Key

log = logging.getLogger("promotion_ladder.operator")

QUEUE_CONDITION = "QueueAdmissible"
QUEUE_CHECK_SECONDS = 5.0  # a ladder with queued cells reads its Workloads at most this often
QUEUE_PROBLEM_AFTER_SECONDS = 2.0  # a Workload's first seconds are Kueue's own: not yet a problem
LOST_PODS_KEPT = 1000  # per ladder: lost Pods remembered until the status records them


def attempts_seen(job: JobSummary, lost: Iterable[LostPod] = ()) -> AttemptsSeen:
    """What the cell's Job shows of its waits in the queue, with its lost Pods."""
    return AttemptsSeen(
        queued=job.suspended and not job.finished,
        wait_began=job.suspended_at,
        admitted_at=job.resumed_at,
        created_at=job.created_at,
        lost=tuple(lost),
    )


def lost_pod(pod: PodSummary, job_finished_at: float | None, deleted_at: float) -> LostPod | None:
    """A deleted Pod as a lost attempt, when it was one: it was bound to a node (it held its
    GPUs), had not succeeded, and was deleted before its Job finished (a Job keeps its ended Pods:
    one deleted before the end was evicted, preempted, drained or ended as stuck; its last view
    may already say Failed, exit 143, as the trainer answers SIGTERM so)."""
    if pod.bound_at is None or pod.phase == "Succeeded":
        return None
    if job_finished_at is not None and deleted_at >= job_finished_at:
        return None  # cleaned up with or after its Job
    end = pod.released_at if pod.released_at is not None else deleted_at
    return LostPod(pod=pod.name, held_seconds=round(max(end - pod.bound_at, 0.0), 3), index=pod.index)


class LostPods:
    """The last view of each deleted Pod of a ladder (the Pod watch's DELETED), kept by the
    ladder until the reconcile that records it; bounded, and forgotten with the ladder. An
    operator restarted between a Pod's deletion and the next status write loses that one attempt's
    seconds (never the cell: Kueue re-runs it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[Key, dict[str, tuple[PodSummary, float]]] = {}

    def deleted(self, key: Key, pod: PodSummary, at: float | None = None) -> None:
        with self._lock:
            pods = self._by_key.setdefault(key, {})
            if len(pods) < LOST_PODS_KEPT:
                pods[pod.uid] = (pod, time.time() if at is None else at)

    def of(self, key: Key) -> list[tuple[PodSummary, float]]:
        with self._lock:
            return list(self._by_key.get(key, {}).values())

    def forget(self, key: Key) -> None:
        with self._lock:
            self._by_key.pop(key, None)


def lost_by_job(jobs: Iterable[JobSummary], deleted: Iterable[tuple[PodSummary, float]]) -> dict[str, list[LostPod]]:
    """Job UID -> the lost attempts among the deleted Pods it controlled."""
    finished = {j.uid: j.finished_at if j.finished else None for j in jobs}
    out: dict[str, list[LostPod]] = {}
    for pod, at in deleted:
        if pod.owner_uid not in finished:
            continue
        lost = lost_pod(pod, finished[pod.owner_uid], at)
        if lost is not None:
            out.setdefault(pod.owner_uid, []).append(lost)
    return out


@dataclass(frozen=True)
class QueueProblem:
    reason: str  # QueueMissing | QueueCannotFit
    queue: str  # the queue named in the message: spec.queueName, or its ClusterQueue
    message: str


def _condition(workload: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (workload.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def workload_job_uid(workload: Mapping[str, Any]) -> str | None:
    for ref in (workload.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("controller"):
            uid = ref.get("uid")
            return None if uid is None else str(uid)
    return None


def queue_problem(
    workloads: Iterable[Mapping[str, Any]], queued_jobs: Mapping[str, str], queue_name: str
) -> QueueProblem | None:
    """Why Kueue will never admit the ladder's queued cells, from their Workloads (None: it may,
    they wait for quota). `queued_jobs`: Job UID -> Job name of the suspended cells."""
    for w in workloads:
        job_uid = workload_job_uid(w)
        if job_uid is None or job_uid not in queued_jobs:
            continue
        c = _condition(w, "QuotaReserved")
        if c is None or c.get("status") != "False":
            continue
        message = str(c.get("message") or "")
        job = queued_jobs[job_uid]
        if c.get("reason") == "Inadmissible":
            named = _named_queue(message, queue_name)
            return QueueProblem(
                "QueueMissing",
                named,
                f"Kueue cannot admit cell Job {job} from queue "
                f"{queue_name!r}: {message}; the cells wait until the queue exists",
            )
        if "maximum capacity" in message:
            return QueueProblem(
                "QueueCannotFit",
                queue_name,
                f"queue {queue_name!r} can never hold cell Job "
                f"{job}: {message}; raise its ClusterQueue's quota or lower the cell's GPUs",
            )
    return None


def _named_queue(message: str, queue_name: str) -> str:
    """The queue Kueue names ("LocalQueue X doesn't exist", "ClusterQueue X doesn't exist")."""
    words = message.split()
    for kind in ("ClusterQueue", "LocalQueue"):
        if kind in words and words.index(kind) + 1 < len(words):
            return words[words.index(kind) + 1]
    return queue_name


def queue_conditions(problem: QueueProblem | None, old: list[dict[str, Any]], now: str) -> list[dict[str, Any]]:
    """QueueAdmissible=False while a queue cannot admit the cells; absent otherwise."""
    if problem is None:
        return []
    prev = next((c for c in old if c.get("type") == QUEUE_CONDITION and c.get("status") == "False"), None)
    return [
        {
            "type": QUEUE_CONDITION,
            "status": "False",
            "reason": problem.reason,
            "message": problem.message[:MESSAGE_LIMIT],
            "lastTransitionTime": (prev or {}).get("lastTransitionTime") or now,
        }
    ]


def queue_said(problem: QueueProblem, old: list[dict[str, Any]]) -> bool:
    """Was this problem's Event already posted (the recorded condition says the same)?"""
    return any(
        c.get("type") == QUEUE_CONDITION
        and c.get("reason") == problem.reason
        and c.get("message") == problem.message[:MESSAGE_LIMIT]
        for c in old
    )


class WorkloadApi(Protocol):
    def list_workloads(self, namespace: str) -> list[dict[str, Any]]: ...


class WorkloadChecks:
    """A ladder's queue problem, read from the namespace's Workloads at most every
    QUEUE_CHECK_SECONDS while it has cells queued longer than QUEUE_PROBLEM_AFTER_SECONDS."""

    def __init__(self, api: WorkloadApi, every: float = QUEUE_CHECK_SECONDS) -> None:
        self._api, self._every = api, every
        self._lock = threading.Lock()
        self._last: dict[Key, tuple[float, QueueProblem | None]] = {}

    def check(self, key: Key, queue_name: str | None, jobs: list[JobSummary], now: float) -> QueueProblem | None:
        queued = {
            j.uid: j.name
            for j in jobs
            if j.suspended
            and not j.finished
            and now - (j.suspended_at or j.created_at or now) >= QUEUE_PROBLEM_AFTER_SECONDS
        }
        if not queue_name or not queued:
            self.forget(key)
            return None
        with self._lock:
            last = self._last.get(key)
        if last is not None and time.monotonic() - last[0] < self._every:
            return last[1]
        try:
            workloads = self._api.list_workloads(key[0])
        except Exception as exc:  # noqa: BLE001 - why cells wait is worth a look, never a failed reconcile
            log.warning("cannot list Kueue Workloads in %s: %s", key[0], exc)
            workloads = []
        problem = queue_problem(workloads, queued, queue_name)
        with self._lock:
            self._last[key] = (time.monotonic(), problem)
        return problem

    def forget(self, key: Key) -> None:
        with self._lock:
            self._last.pop(key, None)
