"""The operator's parts, put together (the composition root), started and stopped as one.

`OperatorParts.build` makes: the API client (kubeapi.py), the Jobs' and Pods' caches
(informer.py), the leader Lease and the Gate (lease.py), the reconciler and its helpers
(reconciler.py), the work loop (workloop.py); `start` also serves /metrics on `--metrics-port`
(prometheus_client's aiohttp handler). Kopf's startup and cleanup handlers (handlers.py) call
`start` and `stop`. The kubeconfig is the in-cluster service account, else $KUBECONFIG /
~/.kube/config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from kubernetes import client
from prometheus_client.aiohttp import make_aiohttp_handler

from .informer import Cache, EventFn, Informer
from .intake import JobSummary, PodSummary, job_summary, pod_summary
from .jobs import LADDER_LABEL
from .kubeapi import KubeApi
from .lease import Gate, LeaderLease
from .metrics import LadderMetrics
from .queueing import LostPods
from .reconciler import Reconciler
from .stuck import STUCK_GRACE_SECONDS
from .workloop import WORKERS, WorkLoop
from .workqueue import Key, WorkQueue

log = logging.getLogger("promotion_ladder.operator")

SYNC_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Settings:
    namespaces: list[str] | None  # None: all namespaces
    metrics_port: int
    health_port: int
    stuck_grace: float = STUCK_GRACE_SECONDS
    workers: int = WORKERS

    @property
    def lease_namespace(self) -> str:
        """Where the leader Lease lives: the first watched namespace (the operator's Role covers
        it), else the operator's own (the chart sets POD_NAMESPACE; its ClusterRole covers it)."""
        return (self.namespaces or [""])[0] or os.environ.get("POD_NAMESPACE") or "default"


def informers(
    api: KubeApi, namespaces: list[str] | None, on_change: EventFn
) -> tuple[Cache[JobSummary], Cache[PodSummary]]:
    """The Jobs' and Pods' caches over the watched namespaces (one informer each per namespace,
    or one for all), on a connection pool of their own: each watch holds a connection for minutes."""
    watch_client = client.ApiClient(api.api_client.configuration)
    batch, core = client.BatchV1Api(watch_client), client.CoreV1Api(watch_client)
    jobs, pods = [], []
    each: list[str | None] = list(namespaces) if namespaces else [None]
    for ns in each:
        jobs.append(
            Informer(
                "jobs",
                batch.list_namespaced_job if ns else batch.list_job_for_all_namespaces,
                ns,
                LADDER_LABEL,
                job_summary,
                on_change,
            )
        )
        pods.append(
            Informer(
                "pods",
                core.list_namespaced_pod if ns else core.list_pod_for_all_namespaces,
                ns,
                LADDER_LABEL,
                pod_summary,
                on_change,
            )
        )
    return Cache(jobs), Cache(pods)


@dataclass
class OperatorParts:
    """Everything the operator runs beside Kopf: built before Kopf starts (no I/O but reading
    the kubeconfig), started and stopped by its startup and cleanup handlers."""

    jobs: Cache[JobSummary]
    pods: Cache[PodSummary]
    lease: LeaderLease
    gate: Gate
    loop: WorkLoop
    metrics: LadderMetrics
    metrics_port: int
    http: web.AppRunner | None = None

    @classmethod
    def build(cls, settings: Settings, metrics: LadderMetrics) -> OperatorParts:
        api = KubeApi(metrics=metrics)
        loop = asyncio.get_running_loop()
        ladders: dict[Key, dict[str, Any]] = {}
        queue: WorkQueue[Key] = WorkQueue()

        lost_pods = LostPods()

        def on_change(kind: str, uid: str, ladder: str, namespace: str, summary: Any) -> None:
            if kind == "DELETED" and isinstance(summary, PodSummary):  # the watch's last view of it
                lost_pods.deleted((namespace, ladder), summary)
            loop.call_soon_threadsafe(queue.add, (namespace, ladder))  # the queue is the loop's

        jobs, pods = informers(api, settings.namespaces, on_change)
        identity = f"{api.instance}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        lease = LeaderLease(api.api_client, settings.lease_namespace, identity)
        gate = Gate(lease)
        reconciler = Reconciler(
            api, ladders, jobs, pods, queue, gate, metrics, stuck_grace=settings.stuck_grace, lost_pods=lost_pods
        )
        work = WorkLoop(reconciler, ladders, queue, lambda: jobs.synced() and pods.synced(), metrics, settings.workers)
        return cls(jobs, pods, lease, gate, work, metrics, settings.metrics_port)

    async def start(self) -> None:
        """Serve /metrics, fill the caches, then reconcile and campaign for the Lease."""
        self.http = await serve_metrics(self.metrics, self.metrics_port)
        for cache in (self.jobs, self.pods):
            for inf in cache.informers:
                inf.start()
        while not (self.jobs.synced() and self.pods.synced()):
            await asyncio.sleep(SYNC_POLL_SECONDS)
        await self.loop.start()
        self.lease.start(on_acquired=self.loop.requeue_all)

    async def stop(self) -> None:
        """No new work at once, then every thread ended: the reconciles under way, the Lease
        (given up, so a successor need not wait for it to expire), the watches, /metrics."""
        log.info("stopping: no new work from now on")
        self.gate.close()
        await self.loop.stop()
        await asyncio.to_thread(self.lease.stop, release=True)
        await asyncio.to_thread(lambda: [cache.stop() for cache in (self.jobs, self.pods)])
        if self.http is not None:
            await self.http.cleanup()
        log.info("stopped: every thread of the operator has ended")


async def serve_metrics(metrics: LadderMetrics, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
