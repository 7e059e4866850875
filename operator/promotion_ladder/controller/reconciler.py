"""One reconcile of one ladder: the API plumbing around the pure `reconcile.reconcile`.

`Reconciler.reconcile(key, since)` runs in a worker thread (workloop.py) and, in order:
  1. reads only memory: the ladder body (Kopf's watch), its Jobs and Pods from the caches
     (informer.py) with the Pods read directly in their place (lookups.py), our last write;
  2. calls `reconcile.reconcile` (pure): status, Events, Jobs to create, rejected results;
     a ladder not yet started is admitted first (admission.py: dry-run Jobs, nodes);
  3. writes the status, then posts its Events (statuswriter.py): an operator killed after the
     write loses at most the Events, never the decision;
  4. creates the missing Jobs, a few at a time (jobcreator.py);
  5. announces rejected results once each (announcer.py), reads the Pods of Complete Jobs
     missing from the cache (lookups.py), ends Pods stuck past their deadline, acts on cells
     that wait to start (waits.py: why a Job has no Pod, Jobs of cells that waited too long,
     start-time histograms), and updates the metrics.
A ladder being deleted is left alone: garbage collection removes its Jobs and Pods, and nothing
about them is worth an Event or a counter.
Nothing is reconciled while the Gate is shut (lease.py: another operator leads, or SIGTERM came);
on taking the Lease every ladder is reconciled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from ..core import clock
from .admission import AdmissionApi, AdmissionChecks
from .announcer import Announcer, EventApi
from .failures import RECONCILE_ERROR, error_message, with_error_condition
from .intake import JobSummary, PodSummary
from .jobcreator import JobApi, JobCreator
from .lease import Gate
from .lookups import LookupApi, PodLookups
from .metrics import LadderMetrics
from .queueing import QUEUE_CHECK_SECONDS, LostPods, WorkloadApi, WorkloadChecks
from .reconcile import Reconciled, merge_known_status, reconcile
from .statuswriter import StatusApi, StatusWriter, WriteResult
from .stuck import STUCK_GRACE_SECONDS
from .waits import CellWaits, WaitsApi
from .workqueue import Key, Requeue

log = logging.getLogger("promotion_ladder.operator")

STATUS_COALESCE_SECONDS = 2.0  # cell progress is written at most this often; decisions at once
RECHECK_MARGIN_SECONDS = 0.5  # a timed look again comes this long after the moment it waits for

T = TypeVar("T")


class SummaryIndex(Protocol[T]):
    """A cache of one kind's ladder objects (informer.Cache): the summaries of one ladder's."""

    def get(self, key: Key) -> list[T]: ...
    def synced(self) -> bool: ...


class ReconcileApi(StatusApi, EventApi, JobApi, LookupApi, AdmissionApi, WaitsApi, WorkloadApi, Protocol):
    """The API calls of a reconcile (kubeapi.KubeApi)."""

    def write_conditions(self, namespace: str, name: str, conditions: list[dict[str, Any]]) -> None: ...
    def delete_pod(self, namespace: str, name: str, uid: str) -> None: ...


class Reconciler:
    def __init__(
        self,
        api: ReconcileApi,
        ladders: Mapping[Key, dict[str, Any]],
        jobs: SummaryIndex[JobSummary],
        pods: SummaryIndex[PodSummary],
        queue: Requeue,
        gate: Gate,
        metrics: LadderMetrics,
        *,
        stuck_grace: float = STUCK_GRACE_SECONDS,
        lost_pods: LostPods | None = None,
    ) -> None:
        self._api, self._ladders, self._jobs, self._pods = api, ladders, jobs, pods
        self._queue, self._gate, self._metrics = queue, gate, metrics
        self.stuck_grace = stuck_grace
        self.announcer = Announcer(api, metrics)
        self.status_writer = StatusWriter(api, STATUS_COALESCE_SECONDS)
        self.creator = JobCreator(api, self.announcer, queue, gate)
        self.lookups = PodLookups(api, self.announcer, queue)
        self.admission = AdmissionChecks(api)
        self.lost_pods = lost_pods or LostPods()  # filled by the Pod watch (parts.py)
        self.workloads = WorkloadChecks(api)
        self.waits = CellWaits(api, self.announcer, queue, metrics)

    def reconcile(self, key: Key, since: float | None = None) -> None:
        """Reconcile one ladder now. `since`: when it became dirty (monotonic), for the
        decision latency. Blocking (API calls): the work loop runs it in a thread."""
        since = time.monotonic() if since is None else since
        body = self._ladders.get(key)
        if body is None:
            self._forget(key)
            return
        if not self._gate.open() or body["metadata"].get("deletionTimestamp"):
            return
        t0 = time.perf_counter()
        known, r = self._decide(key, body)
        if self._write(key, body, known, r, since):
            self._follow_up(key, body, r)
        self._metrics.reconcile_duration.observe(time.perf_counter() - t0)

    def _decide(self, key: Key, body: dict[str, Any]) -> tuple[dict[str, Any], Reconciled]:
        """Steps 1 and 2: the status known so far, and what the pure reconcile makes of it."""
        # 1. memory only (and the admission checks, once per spec generation)
        jobs = self._jobs.get(key)
        pods = self.lookups.with_looked_up(key, self._pods.get(key))
        w = self.status_writer.last_written(key, body["metadata"]["uid"])
        known = merge_known_status(
            body.get("status"),
            w.status if w else None,
            body["metadata"].get("resourceVersion"),
            w.resource_version if w else None,
        )
        creating = self.creator.creating(key, {j.name for j in jobs})
        queue_name = ((body.get("spec") or {}).get("queueName")) or None
        queue = self.workloads.check(
            key, queue_name, [j for j in jobs if j.owner_uid == body["metadata"]["uid"]], time.time()
        )
        # 2. the pure reconcile
        r = reconcile(
            body,
            known,
            jobs,
            pods,
            creating,
            clock.iso(),
            stuck_grace=self.stuck_grace,
            admission=self.admission.check(key, body),
            failed_create=self.waits.failed_creates(key[0]),
            deleted=self.lost_pods.of(key),
            queue=queue,
        )
        if any(j.suspended and not j.finished for j in jobs):  # look at the queue again (queueing.py)
            r.recheck_after = min(r.recheck_after or QUEUE_CHECK_SECONDS, QUEUE_CHECK_SECONDS)
        return known, r

    def _write(self, key: Key, body: dict[str, Any], known: dict[str, Any], r: Reconciled, since: float) -> bool:
        """Steps 3 and 4; False when the ladder is gone."""
        # 3. status, then its Events, both before the slow part (Job creation)
        written, retry_in = self.status_writer.write(key, body, known, r.status, r.events)
        if written == WriteResult.GONE:
            return False
        if written == WriteResult.DEFERRED:
            self._queue.add_after(key, retry_in)
        # 4. Jobs
        if r.create:
            created = self.creator.create(key, body, r.create)
            if r.new_decisions and created:
                # to the first Job of the next stage: from then on the stage is under way
                self._metrics.decision_latency.observe(min(created) - since)
        return True

    def _follow_up(self, key: Key, body: dict[str, Any], r: Reconciled) -> None:
        # 5. rejections, missing, stuck and waiting evidence, metrics
        ns, name = key
        for rejection in r.rejections:
            self.announcer.reject(body, rejection)
        for job in r.failed_prunes:  # the eliminated candidates' checkpoints are still on the volume
            self.announcer.warn_once(
                body,
                "CheckpointPruneFailed",
                f"{ns}/{name}:prune:{job.uid}",
                f"Job {job.name}, deleting the checkpoints of the candidates a stage eliminated, failed "
                f"({job.failed_reason}: {job.failed_message}); they are still on the volume",
            )
        if r.look_up:
            self.lookups.look_up(key, body, r.look_up)
        if r.recheck_after is not None:
            self._queue.wake(key, r.recheck_after + RECHECK_MARGIN_SECONDS)
        for pod in r.end:  # stuck far past its deadline: end it; the Job retries or fails the cell
            self._api.delete_pod(ns, pod.name, pod.uid)
            self.announcer.warn_once(
                body,
                "CellStuck",
                f"{ns}/{name}:stuck:{pod.uid}",
                f"pod {pod.name} was still running {self.stuck_grace:g} s after its deadline "
                f"({pod.deadline_seconds} s from its start); it was ended and its Job retries or fails the cell",
            )
        self.waits.follow_up(key, body, r.read_events, r.end_jobs, r.start_times)
        if r.spec is not None and r.ladder_status is not None:
            self._metrics.observe(ns, name, r.spec, r.ladder_status)
        else:
            self._metrics.set_info(
                ns, name, r.status.get("phase") or "", r.status.get("currentStage") or "", r.status.get("leader") or ""
            )
        if r.new_decisions or r.create:
            log.info("ladder %s/%s: %s; %d job(s) created", ns, name, r.status.get("message"), len(r.create))

    def report_failure(self, key: Key, exc: Exception, failures: int, delay: float) -> None:
        """A failed reconcile, said on the ladder: a ReconcileError condition (written alone, as
        the full status write may be what fails) and a Warning, once per distinct error."""
        body = self._ladders.get(key)
        if body is None:
            return
        message = error_message(exc)
        conditions = with_error_condition(
            (body.get("status") or {}).get("conditions") or [], message, failures, delay, clock.iso()
        )
        self._api.write_conditions(*key, conditions)
        self.announcer.warn_once(body, RECONCILE_ERROR, f"{key[0]}/{key[1]}:{RECONCILE_ERROR}:{message}", message)

    def is_own_write(self, key: Key, resource_version: str | None) -> bool:
        return self.status_writer.is_own_write(key, resource_version)

    def shutdown(self) -> None:
        """Wait for the Job creates under way (the Gate is shut: no new ones start)."""
        self.creator.shutdown()

    def _forget(self, key: Key) -> None:
        """A deleted ladder: nothing of it is kept."""
        self._metrics.forget(*key)
        self.status_writer.forget(key)
        self.creator.forget(key)
        self.lookups.forget(key)
        self.admission.forget(key)
        self.lost_pods.forget(key)
        self.workloads.forget(key)
