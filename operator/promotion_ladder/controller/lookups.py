"""Pods read directly from the API server: a Complete Job's, when the cache has no terminal one.

After a restart under load a Complete Job's Pod may be missing from the cache, or stale in it
(its labels changed, its last update not yet seen). A result is never failed for missing
evidence (intake.py asks for a look instead); its Pods are read directly and used by the next
reconciles for LOOKUP_KEEP_SECONDS, in place of the cached copies. A Complete Job whose Pods
are really gone (deleted by someone) lost its result: the Job is deleted so the cell runs again.
Only the Job's own Pods count: one whose owner, controller-uid label or cell labels disagree
with the Job (relabelled or re-owned) is rejected as forged (intake.disagreement).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from .announcer import Announcer
from .intake import JobSummary, PodSummary, disagreement, forged_pod_rejection, pod_summary
from .workqueue import Key, Requeue

LOOKUP_KEEP_SECONDS = 120.0  # Pods read directly are used this long
LOOKUPS_PER_RECONCILE = 50  # bounded: after a restart thousands of Jobs may want a look
NEXT_LOOK_SECONDS = 5.0  # when nothing terminal was found yet, reconcile again after this


class LookupApi(Protocol):
    def pods_of_job(self, namespace: str, job_name: str, job_uid: str) -> list[dict[str, Any]]: ...
    def delete_job(self, namespace: str, name: str, uid: str) -> None: ...


class PodLookups:
    def __init__(self, api: LookupApi, announcer: Announcer, requeue: Requeue) -> None:
        self._api, self._announcer, self._requeue = api, announcer, requeue
        self._found: dict[Key, dict[str, tuple[float, list[PodSummary]]]] = {}  # job uid -> (expiry, its Pods)
        self._lock = threading.Lock()

    def forget(self, key: Key) -> None:
        with self._lock:
            self._found.pop(key, None)

    def with_looked_up(self, key: Key, pods: list[PodSummary]) -> list[PodSummary]:
        """The cached Pods, with those read directly in their place (fresher) while they last."""
        now = time.monotonic()
        with self._lock:
            found = self._found.get(key)
            if not found:
                return pods
            for uid in [u for u, (expiry, _) in found.items() if expiry <= now]:
                del found[uid]
            extra = {p.uid: p for _, ps in found.values() for p in ps}
        return [p for p in pods if p.uid not in extra] + list(extra.values())

    def look_up(self, key: Key, body: dict[str, Any], jobs: list[JobSummary]) -> None:
        """Read the Pods of (at most LOOKUPS_PER_RECONCILE of) these Complete Jobs; reconcile
        again at once when a terminal one was found, else after NEXT_LOOK_SECONDS."""
        ns, name = key
        found_terminal = False
        for job in jobs[:LOOKUPS_PER_RECONCILE]:
            summaries = self._own_pods(body, job, self._api.pods_of_job(ns, job.name, job.uid))
            if summaries:
                with self._lock:
                    self._found.setdefault(key, {})[job.uid] = (time.monotonic() + LOOKUP_KEEP_SECONDS, summaries)
                found_terminal = found_terminal or any(p.terminal for p in summaries)
                continue
            self._api.delete_job(ns, job.name, job.uid)
            self._announcer.warn_once(
                body,
                "ResultLost",
                f"{ns}/{name}:lost:{job.uid}",
                f"Job {job.name} is Complete but its Pods are gone or were relabelled or "
                "re-owned, so its result cannot be read; the cell runs again",
            )
        self._requeue.add_after(key, 0.05 if found_terminal else NEXT_LOOK_SECONDS)

    def _own_pods(self, body: dict[str, Any], job: JobSummary, bodies: list[dict[str, Any]]) -> list[PodSummary]:
        """The Job's own Pods among those read; the others announced as forged."""
        own = []
        for pod in map(pod_summary, bodies):
            why = disagreement(pod, job)
            if why is None:
                own.append(pod)
            else:
                self._announcer.reject(body, forged_pod_rejection(pod, job, why))
        return own
