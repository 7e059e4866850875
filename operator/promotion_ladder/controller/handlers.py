"""Kopf handlers and the work queue: Kubernetes I/O around `reconcile.reconcile`.

Shape (the controller-runtime pattern, on Kopf):
  * Kopf indexes hold small summaries of the ladders' Jobs and Pods (filled from watches;
    Kopf starts no handler before every index has its initial listing, so a reconcile never
    sees a cold cache and never mistakes "not listed yet" for "missing").
  * Watch handlers (`@kopf.on.event`) only mark a ladder dirty. A fixed pool of workers takes
    dirty ladders from a de-duplicating queue, at most one reconcile per ladder at a time.
  * A reconcile reads only memory, then writes: the status first (the durable record: results
    and decisions), then the missing Jobs, then Events.
Kopf's changing handlers (on.create/update) are not used on purpose: they store progress
annotations on the object. Nothing here adds finalizers; owner references do the cleanup.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import kopf

from ..core.api import GROUP, KIND, PLURAL, VERSION, LadderInvalid, load_ladder
from .admission import Admission, sample_jobs, unmatched_blocks
from .failures import RECONCILE_ERROR, error_message, retry_delay, with_error_condition
from .intake import Rejection, job_summary, pod_summary
from .lease import LeaderLease
from .jobs import LADDER_LABEL
from .metrics import LadderMetrics
from .rbac import trainer_objects
from .stuck import STUCK_GRACE_SECONDS
from .reconcile import Reconciled, merge_known_status, reconcile

log = logging.getLogger("promotion_ladder.operator")
Key = tuple[str, str]  # (namespace, ladder name)

CREATE_EXPECTATION_SECONDS = 30.0  # a created Job not yet seen in the index counts as existing this long
ADOPTED_EXPECTATION_SECONDS = 300.0  # ...and a Job whose create answered 409 (it exists) this long
RESYNC_SECONDS = 60.0  # safety net: every unfinished ladder is reconciled at least this often
JOB_CREATE_CONCURRENCY = 8  # a stage's Jobs are created in parallel: the next stage starts sooner
LOOKUP_KEEP_SECONDS = 120.0  # Pods read directly (a Complete Job's, missing from the cache) are used this long
LOOKUPS_PER_RECONCILE = 50  # bounded: after a restart thousands of Jobs may want a look
STATUS_COALESCE_SECONDS = 2.0  # cell progress is written at most this often; decisions at once
HEARTBEAT_SECONDS = 5.0  # /healthz fails when the queue loop stops beating
COMPONENT = "promotion-ladder-operator"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeApi:
    """The few API calls the operator makes (sync kubernetes client; called from worker threads)."""

    def __init__(self, api_client=None, metrics: LadderMetrics | None = None):
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self.api_client = api_client
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.requests = 0  # API requests made, for the benchmark's requests-per-cell
        self.metrics = metrics
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()

    def _count(self, operation: str) -> None:
        self.requests += 1
        if self.metrics is not None:
            self.metrics.api_requests.labels(operation).inc()

    def create_job(self, namespace: str, job: dict) -> bool:
        """True when created, False when it already existed."""
        from kubernetes.client.exceptions import ApiException

        self._count("create_job")
        try:
            self.batch.create_namespaced_job(namespace, job)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def write_status(self, namespace: str, name: str, status: dict) -> str | None:
        """Replace .status (JSON patch `add` replaces the whole member); the new resourceVersion,
        or None when the ladder is gone."""
        from kubernetes.client.exceptions import ApiException

        self._count("patch_status")
        try:
            obj = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, [{"op": "add", "path": "/status", "value": status}],
                _content_type="application/json-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj["metadata"]["resourceVersion"]

    def pods_of_job(self, namespace: str, job_name: str, job_uid: str) -> list[dict]:
        """A Job's Pods read from the API server (not the cache), found by the labels the Job
        controller sets and kept only when the Job controls them (owner reference UID): a Pod
        whose ladder labels were changed is still found, one that merely claims the Job is not."""
        from kubernetes.client.exceptions import ApiException

        items: list[dict] = []
        for selector in (f"batch.kubernetes.io/controller-uid={job_uid}", f"batch.kubernetes.io/job-name={job_name}"):
            self._count("list_pods")
            try:
                found = self.core.list_namespaced_pod(namespace, label_selector=selector)
            except ApiException as exc:
                if exc.status == 404:
                    return []
                raise
            items = [self.core.api_client.sanitize_for_serialization(p) for p in found.items]
            items = [p for p in items if any(r.get("controller") and r.get("uid") == job_uid
                                             for r in (p.get("metadata") or {}).get("ownerReferences") or [])]
            if items:
                break
        return items

    def dry_run_job(self, namespace: str, job: dict) -> None:
        """Create a Job with dryRun=All: validated and admitted by the API server, never stored."""
        self._count("dry_run_job")
        self.batch.create_namespaced_job(namespace, job, dry_run="All")

    def node_labels(self) -> list[dict[str, str]]:
        self._count("list_nodes")
        return [dict(n.metadata.labels or {}) for n in self.core.list_node().items]

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """End a stuck Pod at once (no grace: it already ran past its deadline)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        self._count("delete_pod")
        try:
            self.core.delete_namespaced_pod(name, namespace, body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)))
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete one Job (and its Pods) if it is still the one we mean (UID precondition)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        self._count("delete_job")
        try:
            self.batch.delete_namespaced_job(name, namespace, body=client.V1DeleteOptions(
                propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid)))
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def write_conditions(self, namespace: str, name: str, conditions: list[dict]) -> None:
        """Replace only .status.conditions (a merge patch replaces a list whole): works when the
        full status write is what the API server refuses."""
        from kubernetes.client.exceptions import ApiException

        self._count("patch_status")
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": {"conditions": conditions}},
                _content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def post_event(self, body: dict, type_: str, reason: str, message: str) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = body["metadata"]
        now = _now()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": self.instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self._count("create_event")
        try:
            self.core.create_namespaced_event(meta["namespace"], event)
        except ApiException as exc:  # Events are best effort
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)

    def ensure_trainer_rbac(self, namespace: str) -> None:
        from kubernetes.client.exceptions import ApiException

        for obj in trainer_objects(namespace):
            self._count("create_rbac")
            try:
                if obj["kind"] == "ServiceAccount":
                    self.core.create_namespaced_service_account(namespace, obj)
                elif obj["kind"] == "Role":
                    self.rbac.create_namespaced_role(namespace, obj)
                else:
                    self.rbac.create_namespaced_role_binding(namespace, obj)
            except ApiException as exc:
                if exc.status != 409:
                    raise


class Controller:
    def __init__(self, metrics: LadderMetrics, api: KubeApi | None = None, workers: int = 8):
        self.metrics = metrics
        self._api = api
        self.workers = workers
        self.ladders: dict[Key, dict] = {}
        self.written: dict[Key, tuple[str, dict, str]] = {}  # key -> (uid, status, resourceVersion)
        self.creating: dict[Key, dict[str, float]] = {}  # key -> job name -> expiry (monotonic)
        self.seen_rejections: set[str] = set()
        self.rbac_done: set[str] = set()
        self.jobs_index: Any = None
        self.pods_index: Any = None
        self._summaries: dict[str, Any] = {}  # object uid -> last summary that woke a ladder
        self._dirty: dict[Key, float] = {}  # key -> monotonic time it became dirty
        self._busy: set[Key] = set()
        self._queue: asyncio.Queue[Key] | None = None
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Reconciles wait on the API server most of the time: threads, not cores, are the limit.
        # (asyncio.to_thread's default pool has cpu_count + 4 threads: 6 on two cores.)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._creators = ThreadPoolExecutor(max_workers=JOB_CREATE_CONCURRENCY, thread_name_prefix="create")
        self._last_write: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}  # failed reconciles in a row, for the backoff
        self._not_before: dict[Key, float] = {}  # no reconcile of a failing ladder before (monotonic)
        self._deferred: set[Key] = set()  # keys with a timer waiting for their backoff to pass
        self._looked_up: dict[Key, dict[str, tuple[float, list]]] = {}  # job uid -> (expiry, its Pods read directly)
        self.heartbeat = time.monotonic()
        self.reconciles = 0
        self.stuck_grace = STUCK_GRACE_SECONDS
        self.stopping = threading.Event()  # set on SIGTERM: worker threads check it before each write
        self.lease_namespace: str | None = None  # where the leader Lease lives; None: no election (tests)
        self.lease: LeaderLease | None = None
        self._wake_at: dict[Key, float] = {}  # the next timed reconcile of a ladder (monotonic)
        self._admitted: dict[Key, tuple[tuple, Admission]] = {}  # (uid, generation) -> admission checks

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(metrics=self.metrics)
        return self._api

    # -- queue -----------------------------------------------------------------------------
    def enqueue(self, key: Key) -> None:
        if key in self._dirty:
            return
        wait = self._not_before.get(key, 0.0) - time.monotonic()
        if wait > 0 and self._loop is not None:  # backing off after failures: events wait too
            if key not in self._deferred:
                self._deferred.add(key)
                self._loop.call_later(wait, self._undefer, key)
            return
        self._dirty[key] = time.monotonic()
        if key not in self._busy and self._queue is not None:
            self._queue.put_nowait(key)

    def _undefer(self, key: Key) -> None:
        self._deferred.discard(key)
        self.enqueue(key)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        if self.lease_namespace is not None:
            identity = f"{self.api.instance}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            self.lease = LeaderLease(self.api.api_client, self.lease_namespace, identity,
                                     on_acquired=self._on_leading).start()
        for key in self._dirty:
            self._queue.put_nowait(key)
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._resync()))

    def _on_leading(self) -> None:
        """Called from the Lease thread on taking the Lease: everything may have changed while
        another operator led (or none did), so every ladder is reconciled."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: [self.enqueue(k) for k in list(self.ladders)])

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
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _worker(self, n: int) -> None:
        assert self._queue is not None
        while True:
            key = await self._queue.get()
            since = self._dirty.pop(key, time.monotonic())
            self._busy.add(key)
            try:
                await self._reconcile(key, since)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one ladder's trouble must not stop the others; retry later
                await self._failed(key, exc)
            else:
                self._failures.pop(key, None)
                self._not_before.pop(key, None)
            finally:
                self._busy.discard(key)
                if key in self._dirty:
                    self._queue.put_nowait(key)

    async def _failed(self, key: Key, exc: Exception) -> None:
        """Back off (5 s doubling to 5 min) and say so on the ladder: a ReconcileError condition
        and a Warning Event (once per distinct error), instead of retrying silently."""
        n = self._failures[key] = self._failures.get(key, 0) + 1
        delay = retry_delay(n)
        log.error("reconcile of %s/%s failed (%d in a row); retrying in %g s", *key, n, delay,
                  exc_info=(type(exc), exc, exc.__traceback__))
        self.metrics.reconcile_errors.inc()
        self._not_before[key] = time.monotonic() + delay
        self.enqueue(key)  # deferred until the backoff has passed
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
                                          failures, delay, _now())
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

    # -- one reconcile ---------------------------------------------------------------------
    async def _reconcile(self, key: Key, since: float) -> None:
        body = self.ladders.get(key)
        if body is None:
            self.metrics.forget(*key)
            self.written.pop(key, None)
            self.creating.pop(key, None)
            self._looked_up.pop(key, None)
            self._wake_at.pop(key, None)
            self._admitted.pop(key, None)
            return
        uid = body["metadata"]["uid"]
        jobs = list(self.jobs_index.get(key, [])) if self.jobs_index is not None else []
        pods = list(self.pods_index.get(key, [])) if self.pods_index is not None else []
        pods = self._with_looked_up(key, pods)
        w = self.written.get(key)
        mine = w is not None and w[0] == uid
        known = merge_known_status(body.get("status"), w[1] if mine else None,
                                   body["metadata"].get("resourceVersion"), w[2] if mine else None)
        now = time.monotonic()
        seen_names = {j.name for j in jobs}
        creating = {n: t for n, t in self.creating.get(key, {}).items() if t > now and n not in seen_names}
        self.creating[key] = creating
        t0 = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._reconcile_sync, key, body, known, jobs, pods, set(creating), since)
        self.metrics.reconcile_duration.observe(time.perf_counter() - t0)
        self.reconciles += 1

    def _reconcile_sync(self, key: Key, body: dict, known: dict, jobs, pods, creating: set[str], since: float) -> None:
        ns, name = key
        if self.stopping.is_set() or not self.leading():
            return  # standing by: the leader does the work; on taking the Lease all is reconciled
        r: Reconciled = reconcile(body, known, jobs, pods, creating, _now(), stuck_grace=self.stuck_grace,
                                  admission=self._admission(key, body))
        if r.status != known:
            wait = self._last_write.get(key, 0.0) + STATUS_COALESCE_SECONDS - time.monotonic()
            if wait > 0 and not urgent_change(known, r.status):
                self._retry_later(key, wait)  # cell progress only: fold into a later write
            else:
                rv = self.api.write_status(ns, name, r.status)
                if rv is None:
                    return  # deleted meanwhile
                self.written[key] = (body["metadata"]["uid"], r.status, rv)
                self._last_write[key] = time.monotonic()
        # Events right after the record they announce, before the slow part (Job creation): an
        # operator killed in between loses at most the Event, never the decision.
        for type_, reason, message in r.events:
            self.api.post_event(body, type_, reason, message)
        if r.create:
            if ns not in self.rbac_done:
                self.rbac_done.add(ns)  # claimed first: two workers on one namespace create once
                try:
                    self.api.ensure_trainer_rbac(ns)
                except Exception:
                    self.rbac_done.discard(ns)
                    raise
            expiry = time.monotonic() + CREATE_EXPECTATION_SECONDS
            first_created: list[float] = []

            def create(job: dict) -> None:
                name_ = job["metadata"]["name"]
                if self.stopping.is_set() or not self.leading():  # SIGTERM or Lease lost: no new work
                    return
                try:
                    created = self.api.create_job(ns, job)
                except Exception as exc:  # noqa: BLE001 - a refused Job must be visible, not a crash loop
                    status = getattr(exc, "status", None)
                    if status is None or status >= 500 or status == 429:
                        self._retry_later(key, 5.0)
                        log.warning("creating Job %s/%s failed (%s); retrying", ns, name_, exc)
                        return
                    self._warn_once(body, "JobCreateFailed", f"{ns}/{name}:create-job:{status}",
                                    f"cannot create Job {name_}: {getattr(exc, 'reason', exc)}: "
                                    f"{str(getattr(exc, 'body', ''))[:500]}")
                    self._retry_later(key, 30.0)
                    return
                first_created.append(time.monotonic())
                # 409: the Job exists (our earlier create, not yet in a lagging watch): adopt it,
                # and expect it for longer, so a slow watch does not cause create after create.
                self.creating.setdefault(key, {})[name_] = (
                    expiry if created else time.monotonic() + ADOPTED_EXPECTATION_SECONDS)

            list(self._creators.map(create, r.create))
            if r.new_decisions and first_created:
                # to the first Job of the next stage: from then on the stage is under way
                self.metrics.decision_latency.observe(min(first_created) - since)
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
        if r.spec is not None and r.ladder_status is not None:
            self.metrics.observe(ns, name, r.spec, r.ladder_status)
        else:
            self.metrics.set_info(ns, name, r.status.get("phase") or "", r.status.get("currentStage") or "",
                                  r.status.get("leader") or "")
        if r.new_decisions or r.create:
            log.info("ladder %s/%s: %s; %d job(s) created", ns, name, r.status.get("message"), len(r.create))

    def _admission(self, key: Key, body: dict) -> Admission | None:
        """Dry-run one Job per host block and look for matching nodes, once per spec generation
        of an unfinished ladder (controller/admission.py)."""
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
                    problem = (f"host block {block}: the API server refuses its cell Jobs: "
                               f"{_api_message(exc)}")[:1024]
                    break
                if status not in (409,):  # 403 (a full quota), 5xx: not a verdict on the spec
                    log.warning("dry run of a Job of %s/%s: %s", *key, exc)
        warnings: tuple[str, ...] = ()
        try:
            nodes = self.api.node_labels()
            blocks = {h.name: h for h in spec.host_blocks}
            warnings = tuple(f"no node matches host block {b} (nodeSelector {blocks[b].node_selector}); its cells "
                             "wait until one does (a cluster autoscaler may add it)"
                             for b in unmatched_blocks(spec, nodes))
        except Exception as exc:  # noqa: BLE001 - a warning only; never blocks
            log.warning("could not list nodes for %s/%s: %s", *key, exc)
        admission = Admission(problem, warnings)
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
            bodies = self.api.pods_of_job(ns, job.name, job.uid)
            if bodies:
                summaries = [pod_summary(b) for b in bodies]
                self._looked_up.setdefault(key, {})[job.uid] = (time.monotonic() + LOOKUP_KEEP_SECONDS, summaries)
                found_terminal = found_terminal or any(p.terminal for p in summaries)
                continue
            self.api.delete_job(ns, job.name, job.uid)
            self._warn_once(body, "ResultLost", f"{ns}/{name}:lost:{job.uid}",
                            f"Job {job.name} is Complete but its Pods are gone, so its result cannot be read; "
                            "the cell runs again")
        self._retry_later(key, 0.05 if found_terminal else 5.0)

    def _wake(self, key: Key, delay: float) -> None:
        """Reconcile again after `delay` unless an earlier wake-up is already set (one timer per
        ladder, not one per reconcile)."""
        now = time.monotonic()
        at = now + delay
        prev = self._wake_at.get(key)
        if prev is not None and now < prev <= at:
            return
        self._wake_at[key] = at
        self._retry_later(key, delay)

    def _retry_later(self, key: Key, delay: float) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, delay, self.enqueue, key)

    def _warn_once(self, body: dict, reason: str, key: str, message: str) -> None:
        if key in self.seen_rejections:
            return
        self.seen_rejections.add(key)
        self.api.post_event(body, "Warning", reason, message)
        log.warning("ladder %s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], message)

    def _reject(self, body: dict, rej: Rejection) -> None:
        if rej.key in self.seen_rejections:
            return
        if len(self.seen_rejections) > 100_000:  # bounded memory; at worst an Event is repeated
            self.seen_rejections.clear()
        self.seen_rejections.add(rej.key)
        meta = body["metadata"]
        self.metrics.result_error(meta["namespace"], meta["name"], rej.reason)
        self.api.post_event(body, "Warning", "ResultRejected", rej.message)
        log.warning("ladder %s/%s: %s", meta["namespace"], meta["name"], rej.message)

    # -- watch events ----------------------------------------------------------------------
    def on_ladder(self, event_type: str | None, raw: dict) -> None:
        meta = raw.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self.ladders.pop(key, None)
            self.enqueue(key)  # the reconcile forgets its metrics
            return
        old = self.ladders.get(key)
        if old is not None and (old.get("metadata") or {}).get("generation") != meta.get("generation"):
            self._not_before.pop(key, None)  # an edited spec may be the fix: no backoff for it
        self.ladders[key] = copy.deepcopy(raw)
        w = self.written.get(key)
        if w is not None and w[2] == meta.get("resourceVersion"):
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

    def alive(self, max_age: float = 60.0) -> bool:
        return time.monotonic() - self.heartbeat < max_age


def _api_message(exc: Exception) -> str:
    """The message of an API server Status in an ApiException body, else the exception."""
    import json

    try:
        return json.loads(getattr(exc, "body", "") or "{}").get("message") or str(exc)
    except ValueError:
        return str(getattr(exc, "body", "") or exc)


def urgent_change(old: dict, new: dict) -> bool:
    """A change that must be written at once: a decision, the phase, the verdict, the spec seen
    (generation, frozen hash) or a condition. Cell progress (started, finished, values) and the
    sums that follow from it may wait a moment: until written, the Pods still hold the results,
    so a restart in between re-reads them (and decides the same)."""
    def decisions(s: dict) -> list:
        return [st.get("decision") for st in s.get("stages") or []]

    def key(s: dict) -> tuple:
        return (s.get("phase"), s.get("observedGeneration"), s.get("frozenHash"), s.get("currentStage"),
                s.get("verdict"), decisions(s), [c.get("status") for c in s.get("conditions") or []])
    return key(old) != key(new)


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Wire the handlers into a Kopf registry."""
    present = {LADDER_LABEL: kopf.PRESENT}

    # A registry of our own gets none of Kopf's default login handlers: add the kubernetes
    # client's (in-cluster service account, else $KUBECONFIG / ~/.kube/config).
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        # Server-side label selection: only the ladders' Jobs and Pods are listed, watched and
        # held in memory, not every Pod of the namespace (or cluster). Kopf 1.45+ has it.
        selectors = getattr(settings.watching, "label_selectors", None)
        if selectors is not None:
            selectors["batch", "v1", "jobs"] = LADDER_LABEL
            selectors["", "v1", "pods"] = LADDER_LABEL
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def shutdown(**_: Any) -> None:
        await controller.stop()

    @kopf.index("batch", "v1", "jobs", labels=present, registry=registry, id="ladder_jobs")
    def ladder_jobs(body: kopf.Body, namespace: str, **_: Any) -> dict:
        s = job_summary(dict(body))
        return {(namespace, s.ladder): s}

    @kopf.index("", "v1", "pods", labels=present, registry=registry, id="ladder_pods")
    def ladder_pods(body: kopf.Body, namespace: str, **_: Any) -> dict:
        s = pod_summary(dict(body))
        return {(namespace, s.ladder): s}

    def capture(kw: dict) -> None:
        if controller.jobs_index is None:
            controller.jobs_index = kw["ladder_jobs"]
            controller.pods_index = kw["ladder_pods"]

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def ladder_event(event: dict, **kw: Any) -> None:
        capture(kw)
        controller.on_ladder(event.get("type"), event["object"])

    @kopf.on.event("batch", "v1", "jobs", labels=present, registry=registry)
    async def job_event(event: dict, namespace: str, uid: str, **kw: Any) -> None:
        capture(kw)
        s = job_summary(event["object"])
        controller.on_child(event.get("type"), uid, s.ladder, namespace, s)

    @kopf.on.event("", "v1", "pods", labels=present, registry=registry)
    async def pod_event(event: dict, namespace: str, uid: str, **kw: Any) -> None:
        capture(kw)
        s = pod_summary(event["object"])
        controller.on_child(event.get("type"), uid, s.ladder, namespace, s)
