"""Creating a stage's Jobs: a few at a time, each remembered until the watch shows it.

The trainer RBAC of the namespace comes first (kubeapi.TrainerRbac). A create that the API
server may accept later (a connection error, 5xx, 429) is retried after a backoff per ladder
(RETRY_SECONDS doubling to MAX_RETRY_SECONDS; no create of that ladder is tried before it ends,
whatever else wakes its reconcile). A create refused because an admission webhook does not
answer (Kueue's `mjob.kb.io` while Kueue is down: every Job naming a queue is refused with 500)
is said once in a Warning `WebhookUnavailable` naming the webhook. One it
refuses for a reason the user must fix (403 quota, 422) is a JobCreateFailed Warning, retried
after REFUSED_RETRY_SECONDS. No Job is created once the Gate closes (SIGTERM, Lease lost): a
create already sent may still land, and the next operator adopts it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .announcer import Announcer
from .expectations import CreateExpectations
from .kubeapi import TrainerRbac, api_message, api_status, retryable
from .lease import Gate
from .workqueue import Key, Requeue

log = logging.getLogger("promotion_ladder.operator")

CREATE_EXPECTATION_SECONDS = 30.0  # a created Job not yet seen in the index counts as existing this long
ADOPTED_EXPECTATION_SECONDS = 300.0  # ...and a Job whose create answered 409 (it exists) this long
JOB_CREATE_CONCURRENCY = 8  # a stage's Jobs are created in parallel: the next stage starts sooner
RETRY_SECONDS = 5.0  # a Job create the API server may accept later: the first wait ...
MAX_RETRY_SECONDS = 60.0  # ... doubled after each failure up to this
WEBHOOK_PATTERN = re.compile(r'failed calling webhook "([^"]+)"')
REFUSED_RETRY_SECONDS = 30.0  # a Job create refused for a reason the user must fix


class JobApi(Protocol):
    def create_job(self, namespace: str, job: dict[str, Any]) -> bool: ...
    def ensure_trainer_rbac(self, namespace: str) -> None: ...


class JobCreator:
    def __init__(
        self, api: JobApi, announcer: Announcer, requeue: Requeue, gate: Gate, concurrency: int = JOB_CREATE_CONCURRENCY
    ) -> None:
        self._api, self._announcer, self._requeue, self._gate = api, announcer, requeue, gate
        self._expectations = CreateExpectations(CREATE_EXPECTATION_SECONDS)
        self._rbac = TrainerRbac()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="create")
        self._lock = threading.Lock()
        self._backoff: dict[Key, tuple[float, float]] = {}  # key -> (monotonic end, last wait)

    def creating(self, key: Key, seen: set[str]) -> set[str]:
        """Names of the ladder's Jobs created (or adopted) and not yet seen by the watch."""
        return self._expectations.pending(key, seen)

    def forget(self, key: Key) -> None:
        self._expectations.forget(key)
        with self._lock:
            self._backoff.pop(key, None)

    def backing_off(self, key: Key) -> float | None:
        """Seconds until the ladder's creates may be tried again; None when they may now."""
        with self._lock:
            b = self._backoff.get(key)
        left = None if b is None else b[0] - time.monotonic()
        return left if left is not None and left > 0 else None

    def _failed(self, key: Key) -> float:
        """One more retryable failure: the ladder's next wait."""
        with self._lock:
            prev = self._backoff.get(key)
            wait = RETRY_SECONDS if prev is None else min(prev[1] * 2, MAX_RETRY_SECONDS)
            if prev is not None and prev[0] > time.monotonic():
                wait = prev[1]  # a create of the same round: the round counts once
            self._backoff[key] = (time.monotonic() + wait, wait)
        return wait

    def _succeeded(self, key: Key) -> None:
        with self._lock:
            self._backoff.pop(key, None)

    def shutdown(self) -> None:
        """Drop the creates not yet started and wait for the ones under way."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def create(self, key: Key, body: dict[str, Any], manifests: list[dict[str, Any]]) -> list[float]:
        """Create the Jobs a few at a time; the monotonic times of the ones created."""
        left = self.backing_off(key)
        if left is not None:
            self._requeue.add_after(key, left)
            return []
        self._rbac.ensure(self._api, key[0])
        made = [t for t in self._pool.map(lambda job: self._create_one(key, body, job), manifests) if t is not None]
        return made

    def _create_one(self, key: Key, body: dict[str, Any], job: dict[str, Any]) -> float | None:
        ns, name = key
        job_name = job["metadata"]["name"]
        if not self._gate.open():  # SIGTERM or Lease lost: no new work
            return None
        try:
            created = self._api.create_job(ns, job)
        except Exception as exc:  # noqa: BLE001 - a refused Job must be visible, not a crash loop
            if retryable(exc):
                wait = self._failed(key)
                self._requeue.add_after(key, wait)
                log.warning("creating Job %s/%s failed (%s); retrying in %.0f s", ns, job_name, exc, wait)
                self._webhook_down(body, exc, wait)
                return None
            status = api_status(exc)
            self._announcer.warn_once(
                body,
                "JobCreateFailed",
                f"{ns}/{name}:create-job:{status}",
                f"cannot create Job {job_name}: API server answered {status}: {api_message(exc)}",
            )
            self._requeue.add_after(key, REFUSED_RETRY_SECONDS)
            return None
        self._succeeded(key)
        # 409: the Job exists (our earlier create, not yet in a lagging watch): adopt it and
        # expect it for longer, so a slow watch does not cause create after create.
        self._expectations.expect(key, job_name, None if created else ADOPTED_EXPECTATION_SECONDS)
        return time.monotonic()

    def _webhook_down(self, body: dict[str, Any], exc: Exception, wait: float) -> None:
        """A create refused because an admission webhook did not answer: name the webhook."""
        found = WEBHOOK_PATTERN.search(api_message(exc))
        if found is None:
            return
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        webhook = found.group(1)
        self._announcer.warn_once(
            body,
            "WebhookUnavailable",
            f"{ns}/{name}:webhook:{webhook}",
            f"cannot create the cells' Jobs: admission webhook {webhook} does not answer (its service is down or "
            f"starting; Kueue's webhooks gate every Job that names a queue): {api_message(exc)[:300]}; "
            f"retrying with backoff (next in {wait:.0f} s)",
        )
