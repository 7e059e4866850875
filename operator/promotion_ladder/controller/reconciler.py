"""The shared reconciler: the API plumbing around `reconcile.reconcile` for every ladder.

`Controller` owns the operator's in-memory state and puts the named parts together:
  * the work queue (workqueue.py): watch events mark a ladder dirty; `workers` tasks reconcile
    dirty ladders, one reconcile per ladder at a time;
  * the Jobs-being-created expectations (expectations.py);
  * the API client and its retry rule (kubeapi.py), the trainer RBAC set-up (kubeapi.TrainerRbac);
  * the status writer (statuswriter.py): status, then the Events that go with it.

One reconcile, in order:
  1. read only memory: the ladder body, its Jobs and Pods from Kopf's indexes, our last write;
  2. `reconcile.reconcile` (pure): status, Events, Jobs to create, rejected results;
  3. write the status, then post its Events (StatusWriter);
  4. create the missing Jobs (after the trainer RBAC of the namespace), a few at a time;
  5. report rejected results once each, and update the metrics.
ResultRejected and JobCreateFailed Events announce nothing the status records, so they are
posted outside the status writer, once per distinct cause.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .expectations import CreateExpectations
from .intake import Rejection
from .kubeapi import KubeApi, TrainerRbac, now_iso, retryable
from .metrics import LadderMetrics
from .reconcile import Reconciled, merge_known_status, reconcile
from .statuswriter import StatusWriter, WriteResult
from .workqueue import WorkQueue

log = logging.getLogger("promotion_ladder.operator")
Key = tuple[str, str]  # (namespace, ladder name)

CREATE_EXPECTATION_SECONDS = 30.0  # a created Job not yet seen in the index counts as existing this long
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
        self.jobs_index: Any = None  # Kopf's indexes (captured from the first handler call)
        self.pods_index: Any = None
        self.queue: WorkQueue[Key] = WorkQueue()
        self.expectations = CreateExpectations(CREATE_EXPECTATION_SECONDS)
        self.status_writer = StatusWriter(lambda: self.api, STATUS_COALESCE_SECONDS)
        self.trainer_rbac = TrainerRbac()
        self._reported: set[str] = set()  # rejections and warnings already posted
        self._summaries: dict[str, Any] = {}  # object uid -> last summary that woke a ladder
        self._tasks: list[asyncio.Task] = []
        # Reconciles wait on the API server most of the time: threads, not cores, are the limit.
        # (asyncio.to_thread's default pool has cpu_count + 4 threads: 6 on two cores.)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._creators = ThreadPoolExecutor(max_workers=JOB_CREATE_CONCURRENCY, thread_name_prefix="create")
        self.heartbeat = time.monotonic()
        self.reconciles = 0

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(metrics=self.metrics)
        return self._api

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.queue.start()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._resync()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def alive(self, max_age: float = 60.0) -> bool:
        return time.monotonic() - self.heartbeat < max_age

    def enqueue(self, key: Key) -> None:
        self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            key, since = await self.queue.get()
            try:
                await self.reconcile(key, since)
            except asyncio.CancelledError:
                raise
            except Exception:  # one ladder's trouble must not stop the others; retry later
                log.exception("reconcile of %s/%s failed; retrying in %g s", *key, RETRY_SECONDS)
                self.queue.add_after(key, RETRY_SECONDS)
            finally:
                self.queue.done(key)

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
            return
        jobs = list(self.jobs_index.get(key, [])) if self.jobs_index is not None else []
        pods = list(self.pods_index.get(key, [])) if self.pods_index is not None else []
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
        # 2. the pure reconcile
        r: Reconciled = reconcile(body, known, jobs, pods, creating, now_iso())
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
        # 5. rejections and metrics
        for rej in r.rejections:
            self._reject(body, rej)
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
            try:
                self.api.create_job(ns, job)
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
            self.expectations.expect(key, job_name)

        list(self._creators.map(create, manifests))
        return created

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
        if not self._once(rej.key):
            return
        meta = body["metadata"]
        self.metrics.result_error(meta["namespace"], meta["name"], rej.reason)
        self.api.post_event(body, "Warning", "ResultRejected", rej.message)
        log.warning("ladder %s/%s: %s", meta["namespace"], meta["name"], rej.message)

    # -- watch events ------------------------------------------------------------------------
    def on_ladder(self, event_type: str | None, raw: dict) -> None:
        meta = raw.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self.ladders.pop(key, None)
            self.enqueue(key)  # the reconcile forgets its metrics
            return
        self.ladders[key] = copy.deepcopy(raw)
        if self.status_writer.is_own_write(key, meta.get("resourceVersion")):
            return  # our own status write coming back
        self.enqueue(key)

    def on_child(self, event_type: str | None, uid: str, ladder: str | None, namespace: str, summary: Any) -> None:
        if not ladder:
            return
        if event_type == "DELETED":
            self._summaries.pop(uid, None)
        elif self._summaries.get(uid) == summary:
            return  # e.g. a progress annotation: nothing the reconcile reads changed
        else:
            self._summaries[uid] = summary
        self.enqueue((namespace, ladder))
