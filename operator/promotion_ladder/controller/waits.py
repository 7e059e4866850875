"""The reconciler's part in cells that wait to start (scheduling.py decides; this acts).

After a reconcile: the FailedCreate Events of Jobs that have had no Pod for a while are read
(jobevents.py; a Job that got a new message is reconciled again at once, so its cell is named
with its cause), the Jobs of cells failed for waiting longer than spec.schedulingTimeout are
deleted (a Pod placed later would run for nothing) with a CellNotStarted Warning, and each
cell's start times go into the histograms once (metrics.observe_start).
"""

from __future__ import annotations

from typing import Any, Protocol

from .announcer import Announcer, Once
from .intake import JobSummary
from .jobevents import EventsApi, FailedCreateEvents
from .metrics import LadderMetrics
from .scheduling import StartTimes
from .workqueue import Key, Requeue

AGAIN_SECONDS = 0.05  # a Job got its cause: reconcile again at once to name it


class WaitsApi(EventsApi, Protocol):
    def delete_job(self, namespace: str, name: str, uid: str) -> None: ...


class CellWaits:
    def __init__(self, api: WaitsApi, announcer: Announcer, requeue: Requeue, metrics: LadderMetrics) -> None:
        self._api, self._announcer, self._requeue, self._metrics = api, announcer, requeue, metrics
        self.job_events = FailedCreateEvents()
        self._timed = Once()  # Jobs whose start times are in the histograms

    def failed_creates(self, namespace: str) -> dict[str, str]:
        """Why a Job of the namespace has no Pod (FailedCreate messages last read, by Job UID)."""
        return self.job_events.messages(namespace)

    def follow_up(
        self,
        key: Key,
        body: dict[str, Any],
        read_events: list[JobSummary],
        end_jobs: list[JobSummary],
        times: list[tuple[str, StartTimes]],
    ) -> None:
        ns, name = key
        if read_events and self.job_events.read(self._api, ns, [j.uid for j in read_events]):
            self._requeue.add_after(key, AGAIN_SECONDS)
        for job in end_jobs:
            self._api.delete_job(ns, job.name, job.uid)
            self._announcer.warn_once(
                body,
                "CellNotStarted",
                f"{ns}/{name}:not-started:{job.uid}",
                f"Job {job.name} was deleted: its cell waited longer than schedulingTimeout to start "
                "and is recorded Failed (see the CellsWaiting condition and the cell's reason)",
            )
        for uid, t in times:
            if self._timed.first(uid):
                self._metrics.observe_start(ns, t)
