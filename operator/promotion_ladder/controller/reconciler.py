"""The shared reconciler: the API plumbing around `reconcile.reconcile` for every ladder.

`Controller` owns the operator's in-memory state and puts the named parts together:
  * the work queue (workqueue.py): watch events mark a ladder dirty; `workers` tasks reconcile
    dirty ladders, one reconcile per ladder at a time;
  * the Jobs-being-created expectations (expectations.py);
  * the API client and its retry rule (kubeapi.py), the trainer RBAC set-up (kubeapi.TrainerRbac);
  * the status writer (statuswriter.py): status, then the Events that go with it.

One reconcile, in order:
  1. read only memory: the ladder body, its Jobs and Pods from the informers' caches
     (informer.py), our last write;
  2. `reconcile.reconcile` (pure): status, Events, Jobs to create, rejected results;
  3. write the status, then post its Events (StatusWriter);
  4. create the missing Jobs (after the trainer RBAC of the namespace), a few at a time;
  5. report rejected results once each, read the Pods of Complete Jobs missing from the cache,
     end Pods stuck past their deadline, and update the metrics.
ResultRejected, JobCreateFailed, ResultLost, CellStuck, CellNotStarted and ReconcileError Events
announce nothing the status records, so they are posted outside the status writer, once per
distinct cause.

Around it: only the holder of the leader Lease (lease.py) reconciles; SIGTERM stops new work at
once (`stop_starting_work`); a reconcile that fails backs off (failures.py) with a condition and
an Event; a ladder not yet started is admitted first (admission.py: dry-run Jobs, nodes).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..core.api import LadderInvalid, load_ladder
from .admission import Admission, sample_jobs, unfit_blocks, unmatched_blocks
from .expectations import CreateExpectations
from .failures import RECONCILE_ERROR, error_message, retry_delay, with_error_condition
from .informer import Cache, Informer
from .intake import (REJECTED_ANNOTATION, Rejection, disagreement, forged_pod_rejection, job_summary,
                     pod_summary)
from .jobevents import FailedCreateEvents
from .jobs import LADDER_LABEL
from .kubeapi import KubeApi, TrainerRbac, now_iso, retryable
from .lease import LeaderLease
from .stuck import STUCK_GRACE_SECONDS
from .metrics import LadderMetrics
from .reconcile import Reconciled, merge_known_status, reconcile
from .statuswriter import StatusWriter, WriteResult
from .workqueue import WorkQueue

log = logging.getLogger("promotion_ladder.operator")
Key = tuple[str, str]  # (namespace, ladder name)

CREATE_EXPECTATION_SECONDS = 30.0  # a created Job not yet seen in the index counts as existing this long
ADOPTED_EXPECTATION_SECONDS = 300.0  # ...and a Job whose create answered 409 (it exists) this long
LOOKUP_KEEP_SECONDS = 120.0  # Pods read directly (a Complete Job's, missing from the cache) are used this long
LOOKUPS_PER_RECONCILE = 50  # bounded: after a restart thousands of Jobs may want a look
RESYNC_SECONDS = 60.0  # safety net: every unfinished ladder is reconciled at least this often
JOB_CREATE_CONCURRENCY = 8  # a stage's Jobs are created in parallel: the next stage starts sooner
STATUS_COALESCE_SECONDS = 2.0  # cell progress is written at most this often; decisions at once
HEARTBEAT_SECONDS = 5.0  # /healthz fails when the queue loop stops beating
RETRY_SECONDS = 5.0  # a reconcile that failed, or a Job create the API server may accept later
REFUSED_RETRY_SECONDS = 30.0  # a Job create refused for a reason the user must fix
SEEN_LIMIT = 100_000  # bounded memory for reported rejections; at worst an Event is repeated


class Controller:
    def __init__(self, metrics: LadderMetrics, api: KubeApi | None = None, workers: int = 8):
        self.metrics = metrics
        self._api = api
        self.workers = workers
        self.ladders: dict[Key, dict] = {}  # the watched ladder bodies
        # The Jobs' and Pods' caches, `get((namespace, ladder))` -> summaries: informers started by
        # `start` when `watch_children` is set (the operator), or set by tests.
        self.jobs_index: Any = None
        self.pods_index: Any = None
        self.watch_children = False
        self.namespaces: list[str] | None = None  # None: all namespaces
        self.queue: WorkQueue[Key] = WorkQueue()
        self.expectations = CreateExpectations(CREATE_EXPECTATION_SECONDS)
        self.status_writer = StatusWriter(lambda: self.api, STATUS_COALESCE_SECONDS)
        self.trainer_rbac = TrainerRbac()
        self._reported: set[str] = set()  # rejections and warnings already posted
        self._tasks: list[asyncio.Task] = []
        # Reconciles wait on the API server most of the time: threads, not cores, are the limit.
        # (asyncio.to_thread's default pool has cpu_count + 4 threads: 6 on two cores.)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._creators = ThreadPoolExecutor(max_workers=JOB_CREATE_CONCURRENCY, thread_name_prefix="create")
        self.heartbeat = time.monotonic()
        self.reconciles = 0
        self.stuck_grace = STUCK_GRACE_SECONDS
        self.stopping = threading.Event()  # set on SIGTERM: worker threads check it before each write
        self.lease_namespace: str | None = None  # where the leader Lease lives; None: no election (tests)
        self.lease: LeaderLease | None = None
        self._failures: dict[Key, int] = {}  # failed reconciles in a row, for the backoff
        self._looked_up: dict[Key, dict[str, tuple[float, list]]] = {}  # job uid -> (expiry, its Pods read directly)
        self._wake_at: dict[Key, float] = {}  # the next timed reconcile of a ladder (monotonic)
        self._admitted: dict[Key, tuple[tuple, Admission]] = {}  # (uid, generation) -> admission checks
        self.job_events = FailedCreateEvents()  # why a Job has no Pod (scheduling.py)
        self._timed: set[str] = set()  # Jobs whose start times are in the histograms

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(metrics=self.metrics)
        return self._api

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.queue.start()
        if self.watch_children:
            self._start_informers()
        if self.lease_namespace is not None:
            identity = f"{self.api.instance}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            self.lease = LeaderLease(self.api.api_client, self.lease_namespace, identity,
                                     on_acquired=self._on_leading).start()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._resync()))

    def _start_informers(self) -> None:
        from kubernetes import client

        loop = asyncio.get_running_loop()

        def on_event(kind: str, uid: str, ladder: str, namespace: str, summary: Any) -> None:
            loop.call_soon_threadsafe(self.enqueue, (namespace, ladder))  # the queue is the loop's
        # A connection pool of their own: each watch holds a connection for minutes.
        watch_client = client.ApiClient(self.api.api_client.configuration)
        batch, core = client.BatchV1Api(watch_client), client.CoreV1Api(watch_client)
        jobs, pods = [], []
        for ns in self.namespaces or [None]:
            jobs.append(Informer("jobs", batch.list_namespaced_job if ns else batch.list_job_for_all_namespaces,
                                 ns, LADDER_LABEL, job_summary, on_event).start())
            pods.append(Informer("pods", core.list_namespaced_pod if ns else core.list_pod_for_all_namespaces,
                                 ns, LADDER_LABEL, pod_summary, on_event).start())
        self.jobs_index, self.pods_index = Cache(jobs), Cache(pods)

    def caches_synced(self) -> bool:
        """Every informer has its first list (always true for caches set by tests)."""
        return all(getattr(c, "synced", lambda: True)() for c in (self.jobs_index, self.pods_index) if c is not None)

    def _on_leading(self) -> None:
        """Called from the Lease thread on taking the Lease: everything may have changed while
        another operator led (or none did), so every ladder is reconciled."""
        for key in list(self.ladders):
            self.queue.add_after(key, 0.0)  # thread-safe

    def leading(self) -> bool:
        return self.lease is None or self.lease.held()

    def stop_starting_work(self) -> None:
        """SIGTERM: from now on no reconcile starts, no status is written and no Job is created
        (a Job create already sent may still land; the next operator adopts it). The Lease is
        given up at once, so a successor need not wait for it to expire."""
        self.stopping.set()
        if self.lease is not None:  # an API call: off the event loop, which must keep stopping
            threading.Thread(target=self.lease.stop, kwargs={"release": True}, daemon=True).start()

    async def stop(self) -> None:
        self.stop_starting_work()
        for cache in (self.jobs_index, self.pods_index):
            for inf in getattr(cache, "informers", []):
                inf.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def alive(self, max_age: float = 60.0) -> bool:
        return time.monotonic() - self.heartbeat < max_age

    def enqueue(self, key: Key) -> None:
        self.queue.add(key)

    async def _worker(self) -> None:
        # Nothing is reconciled from a cache that is not filled yet: a Job "missing" there
        # may only be not listed yet.
        while not self.caches_synced():
            await asyncio.sleep(0.1)
        while True:
            key, since = await self.queue.get()
            try:
                await self.reconcile(key, since)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one ladder's trouble must not stop the others; retry later
                await self._failed(key, exc)
            else:
                self._failures.pop(key, None)
                self.queue.clear_backoff(key)
            finally:
                self.queue.done(key)

    async def _failed(self, key: Key, exc: Exception) -> None:
        """Back off (5 s doubling to 5 min) and say so on the ladder: a ReconcileError condition
        and a Warning Event (once per distinct error), instead of retrying silently."""
        n = self._failures[key] = self._failures.get(key, 0) + 1
        delay = retry_delay(n)
        log.error("reconcile of %s/%s failed (%d in a row); retrying in %g s", *key, n, delay,
                  exc_info=(type(exc), exc, exc.__traceback__))
        self.metrics.reconcile_errors.inc()
        self.queue.back_off(key, delay)
        body = self.ladders.get(key)
        if body is None:
            return
        message = error_message(exc)
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._report_failure, key, body,
                                                             message, n, delay)
        except Exception as again:  # noqa: BLE001 - the API server may be what fails; the log has it
            log.warning("could not report the failed reconcile of %s/%s: %s", *key, again)

    def _report_failure(self, key: Key, body: dict, message: str, failures: int, delay: float) -> None:
        conditions = with_error_condition((body.get("status") or {}).get("conditions") or [], message,
                                          failures, delay, now_iso())
        self.api.write_conditions(*key, conditions)
        self._warn_once(body, RECONCILE_ERROR, f"{key[0]}/{key[1]}:{RECONCILE_ERROR}:{message}", message)

    async def _resync(self) -> None:
        last = time.monotonic()
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if time.monotonic() - last >= RESYNC_SECONDS:
                last = time.monotonic()
                for key, body in list(self.ladders.items()):
                    if (body.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                        self.enqueue(key)

    # -- one reconcile -----------------------------------------------------------------------
    async def reconcile(self, key: Key, since: float | None = None) -> None:
        """Reconcile one ladder now (the workers call this; so do tests). `since`: when it became
        dirty (monotonic), for the decision latency."""
        since = time.monotonic() if since is None else since
        # 1. memory only
        body = self.ladders.get(key)
        if body is None:
            self.metrics.forget(*key)
            self.status_writer.forget(key)
            self.expectations.forget(key)
            for d in (self._looked_up, self._wake_at, self._admitted, self._failures):
                d.pop(key, None)
            return
        jobs = list(self.jobs_index.get(key, [])) if self.jobs_index is not None else []
        pods = list(self.pods_index.get(key, [])) if self.pods_index is not None else []
        pods = self._with_looked_up(key, pods)
        w = self.status_writer.last_written(key, body["metadata"]["uid"])
        known = merge_known_status(body.get("status"), w.status if w else None,
                                   body["metadata"].get("resourceVersion"), w.resource_version if w else None)
        creating = self.expectations.pending(key, {j.name for j in jobs})
        t0 = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._reconcile_sync, key, body, known, jobs, pods, creating, since)
        self.metrics.reconcile_duration.observe(time.perf_counter() - t0)
        self.reconciles += 1

    def _reconcile_sync(self, key: Key, body: dict, known: dict, jobs, pods, creating: set[str], since: float) -> None:
        ns, name = key
        if self.stopping.is_set() or not self.leading():
            return  # standing by: the leader does the work; on taking the Lease all is reconciled
        if body["metadata"].get("deletionTimestamp"):
            return  # being deleted: garbage collection removes its Jobs and Pods; nothing to say
        # 2. the pure reconcile
        r: Reconciled = reconcile(body, known, jobs, pods, creating, now_iso(), stuck_grace=self.stuck_grace,
                                  admission=self._admission(key, body), failed_create=self.job_events.messages(ns))
        # 3. status, then its Events: an operator killed after the write loses at most the
        # Events, never the decision; both come before the slow part (Job creation).
        written, retry_in = self.status_writer.write(key, body, known, r.status, r.events)
        if written == WriteResult.GONE:
            return
        if written == WriteResult.DEFERRED:
            self.queue.add_after(key, retry_in)
        # 4. Jobs
        if r.create:
            self.trainer_rbac.ensure(self.api, ns)
            first_created = self._create_jobs(key, body, r.create)
            if r.new_decisions and first_created:
                # to the first Job of the next stage: from then on the stage is under way
                self.metrics.decision_latency.observe(min(first_created) - since)
        # 5. rejections, missing and stuck evidence, metrics
        for rej in r.rejections:
            self._reject(body, rej)
        if r.look_up:
            self._look_up(key, body, r.look_up[:LOOKUPS_PER_RECONCILE])
        if r.recheck_after is not None:
            self._wake(key, r.recheck_after + 0.5)
        for pod in r.end:  # stuck far past its deadline: end it; the Job retries or fails the cell
            self.api.delete_pod(ns, pod.name, pod.uid)
            self._warn_once(body, "CellStuck", f"{ns}/{name}:stuck:{pod.uid}",
                            f"pod {pod.name} was still running {self.stuck_grace:g} s after its deadline "
                            f"({pod.deadline_seconds} s from its start); it was ended and its Job retries or fails the cell")
        self._waiting(key, body, r)
        if r.spec is not None and r.ladder_status is not None:
            self.metrics.observe(ns, name, r.spec, r.ladder_status)
        else:
            self.metrics.set_info(ns, name, r.status.get("phase") or "", r.status.get("currentStage") or "",
                                  r.status.get("leader") or "")
        if r.new_decisions or r.create:
            log.info("ladder %s/%s: %s; %d job(s) created", ns, name, r.status.get("message"), len(r.create))

    def _create_jobs(self, key: Key, body: dict, manifests: list[dict]) -> list[float]:
        """Create the Jobs a few at a time; the monotonic times of the ones created."""
        ns, name = key
        created: list[float] = []

        def create(job: dict) -> None:
            job_name = job["metadata"]["name"]
            if self.stopping.is_set() or not self.leading():  # SIGTERM or Lease lost: no new work
                return
            try:
                made = self.api.create_job(ns, job)
            except Exception as exc:  # noqa: BLE001 - a refused Job must be visible, not a crash loop
                if retryable(exc):
                    self.queue.add_after(key, RETRY_SECONDS)
                    log.warning("creating Job %s/%s failed (%s); retrying", ns, job_name, exc)
                    return
                status = getattr(exc, "status", None)
                self._warn_once(body, "JobCreateFailed", f"{ns}/{name}:create-job:{status}",
                                f"cannot create Job {job_name}: {getattr(exc, 'reason', exc)}: "
                                f"{str(getattr(exc, 'body', ''))[:500]}")
                self.queue.add_after(key, REFUSED_RETRY_SECONDS)
                return
            created.append(time.monotonic())
            # 409: the Job exists (our earlier create, not yet in a lagging watch): adopt it and
            # expect it for longer, so a slow watch does not cause create after create.
            self.expectations.expect(key, job_name, None if made else ADOPTED_EXPECTATION_SECONDS)

        list(self._creators.map(create, manifests))
        return created

    def _waiting(self, key: Key, body: dict, r: Reconciled) -> None:
        """Cells that wait to start (scheduling.py): read why a Job has no Pod, delete the Jobs of
        cells failed for waiting too long, and put each cell's start times in the histograms."""
        ns, name = key
        if r.read_events and self.job_events.read(self.api, ns, [j.uid for j in r.read_events]):
            self.queue.add_after(key, 0.05)
        for job in r.end_jobs:
            self.api.delete_job(ns, job.name, job.uid)
            self._warn_once(body, "CellNotStarted", f"{ns}/{name}:not-started:{job.uid}",
                            f"Job {job.name} was deleted: its cell waited longer than schedulingTimeout to start "
                            "and is recorded Failed (see the CellsWaiting condition and the cell's reason)")
        for uid, times in r.start_times:
            if uid not in self._timed:
                if len(self._timed) > SEEN_LIMIT:
                    self._timed.clear()
                self._timed.add(uid)
                self.metrics.observe_start(ns, times)

    # -- admission, missing and stuck evidence -------------------------------------------------
    def _admission(self, key: Key, body: dict) -> Admission | None:
        """Dry-run one Job per host block and look for matching nodes, once per spec generation
        of an unfinished ladder (admission.py)."""
        if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return None
        meta = body["metadata"]
        mark = (meta.get("uid"), meta.get("generation"))
        cached = self._admitted.get(key)
        if cached is not None and cached[0] == mark:
            return cached[1]
        try:
            spec = load_ladder(body).spec
        except LadderInvalid:
            return None  # the reconcile reports it
        problem = None
        for block, job in sample_jobs(body, spec):
            try:
                self.api.dry_run_job(key[0], job)
            except Exception as exc:  # noqa: BLE001 - only the API server's "invalid" blocks a ladder
                status = getattr(exc, "status", None)
                if status in (400, 422):
                    problem = f"host block {block}: the API server refuses its cell Jobs: {_api_message(exc)}"[:1024]
                    break
                if status != 409:  # 403 (a full quota), 5xx: not a verdict on the spec
                    log.warning("dry run of a Job of %s/%s: %s", *key, exc)
        warnings: tuple[str, ...] = ()
        unfit: dict[str, str] = {}
        try:
            nodes = self.api.nodes()
            blocks = {h.name: h for h in spec.host_blocks}
            warnings = tuple(f"no node matches host block {b} (nodeSelector {blocks[b].node_selector}); its cells "
                             "wait until one does (a cluster autoscaler may add it)"
                             for b in unmatched_blocks(spec, [n.labels for n in nodes]))
            unfit = unfit_blocks(body, spec, nodes)
        except Exception as exc:  # noqa: BLE001 - a warning only; never blocks
            log.warning("could not list nodes for %s/%s: %s", *key, exc)
        admission = Admission(problem, warnings, unfit)
        self._admitted[key] = (mark, admission)
        return admission

    def _with_looked_up(self, key: Key, pods: list) -> list:
        """The cached Pods, with those read directly in their place (fresher) while they last."""
        found = self._looked_up.get(key)
        if not found:
            return pods
        now = time.monotonic()
        for uid in [u for u, (expiry, _) in found.items() if expiry <= now]:
            del found[uid]
        extra = {p.uid: p for _, ps in found.values() for p in ps}
        return [p for p in pods if p.uid not in extra] + list(extra.values())

    def _look_up(self, key: Key, body: dict, jobs: list) -> None:
        """Complete Jobs with no terminal Pod in the cache: read their Pods from the API server.
        Found: used by the next reconcile. Gone (deleted by someone): the result is lost, not
        failed; the Job is deleted so that the cell runs again."""
        ns, name = key
        found_terminal = False
        for job in jobs:
            # Only the Job's own Pods: a relabelled or re-owned one is forged (intake.disagreement).
            summaries = []
            for pod in map(pod_summary, self.api.pods_of_job(ns, job.name, job.uid)):
                why = disagreement(pod, job)
                if why is None:
                    summaries.append(pod)
                else:
                    self._reject(body, forged_pod_rejection(pod, job, why))
            if summaries:
                self._looked_up.setdefault(key, {})[job.uid] = (time.monotonic() + LOOKUP_KEEP_SECONDS, summaries)
                found_terminal = found_terminal or any(p.terminal for p in summaries)
                continue
            self.api.delete_job(ns, job.name, job.uid)
            self._warn_once(body, "ResultLost", f"{ns}/{name}:lost:{job.uid}",
                            f"Job {job.name} is Complete but its Pods are gone or were relabelled or re-owned, so "
                            "its result cannot be read; the cell runs again")
        self.queue.add_after(key, 0.05 if found_terminal else RETRY_SECONDS)

    def _wake(self, key: Key, delay: float) -> None:
        """Reconcile again after `delay` unless an earlier wake-up is already set (one timer per
        ladder, not one per reconcile)."""
        now = time.monotonic()
        at = now + delay
        prev = self._wake_at.get(key)
        if prev is not None and now < prev <= at:
            return
        self._wake_at[key] = at
        self.queue.add_after(key, delay)

    def _once(self, key: str) -> bool:
        """True the first time `key` is seen (rejections and warnings are posted once each)."""
        if key in self._reported:
            return False
        if len(self._reported) > SEEN_LIMIT:
            self._reported.clear()
        self._reported.add(key)
        return True

    def _warn_once(self, body: dict, reason: str, key: str, message: str) -> None:
        if not self._once(key):
            return
        self.api.post_event(body, "Warning", reason, message)
        log.warning("ladder %s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], message)

    def _reject(self, body: dict, rej: Rejection) -> None:
        """Announce a rejected document once: an Event, the counter, and its digest written to
        its Pod, so that a restarted operator (whose memory is empty) does not announce it again."""
        if rej.digest in rej.seen or not self._once(rej.key):
            return
        meta = body["metadata"]
        self.metrics.result_error(meta["namespace"], meta["name"], rej.reason)
        self.api.post_event(body, "Warning", "ResultRejected", rej.message)
        log.warning("ladder %s/%s: %s", meta["namespace"], meta["name"], rej.message)
        pod_ns, _, pod_name = rej.pod.partition("/")
        try:
            self.api.annotate_pod(pod_ns, pod_name, {REJECTED_ANNOTATION: rej.remembered()})
        except Exception as exc:  # noqa: BLE001 - at worst a restart announces it once more
            log.warning("could not mark pod %s as announced: %s", rej.pod, exc)

    # -- watch events ------------------------------------------------------------------------
    def on_ladder(self, event_type: str | None, raw: dict) -> None:
        meta = raw.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self.ladders.pop(key, None)
            self.enqueue(key)  # the reconcile forgets its metrics
            return
        old = self.ladders.get(key)
        if old is not None and (old.get("metadata") or {}).get("generation") != meta.get("generation"):
            self.queue.clear_backoff(key)  # an edited spec may be the fix: no backoff for it
        self.ladders[key] = copy.deepcopy(raw)
        if self.status_writer.is_own_write(key, meta.get("resourceVersion")):
            return  # our own status write coming back
        self.enqueue(key)


def _api_message(exc: Exception) -> str:
    """The message of an API server Status in an ApiException body, else the exception."""
    try:
        return json.loads(getattr(exc, "body", "") or "{}").get("message") or str(exc)
    except ValueError:
        return str(getattr(exc, "body", "") or exc)
