"""Why a cell's Job has no Pod: the Job controller's FailedCreate Events, read on demand.

The Job controller records a Pod it cannot create (a PriorityClass that does not exist, a quota,
an admission webhook's refusal) only as a FailedCreate Event on the Job: no condition, no Pod.
The reconcile asks about Jobs that have had no Pod for a while (reconcile.READ_EVENTS_AFTER_SECONDS);
this cache then lists the namespace's FailedCreate Events of Jobs (one request, at most once per
REREAD_SECONDS per namespace, however many Jobs wait) and hands the messages, by Job UID, to the
next reconciles (scheduling.cell_wait names the cell with it). Events are listed, not watched:
only a namespace where some Job already waits is ever looked at, so a busy cluster's Events cost
nothing, and a stage of a thousand Jobs the Job controller is slow to serve costs one request
every REREAD_SECONDS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

REREAD_SECONDS = 15.0  # a namespace's FailedCreate Events are listed at most this often


class EventsApi(Protocol):
    def failed_creates(self, namespace: str) -> dict[str, str]: ...


class FailedCreateEvents:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._read: dict[str, tuple[float, dict[str, str]]] = {}  # namespace -> (read at, job uid -> message)

    def messages(self, namespace: str) -> dict[str, str]:
        """The FailedCreate messages last read in the namespace, by Job UID."""
        with self._lock:
            return dict(self._read.get(namespace, (0.0, {}))[1])

    def read(self, api: EventsApi, namespace: str, job_uids: Iterable[str]) -> bool:
        """List the namespace's FailedCreate Events unless that was done lately; True when one of
        these Jobs got a message it did not have."""
        wanted = set(job_uids)
        now = self._clock()
        with self._lock:
            at, old = self._read.get(namespace, (None, {}))
            if at is not None and now - at < REREAD_SECONDS:
                return False
            self._read[namespace] = (now, old)  # claimed: one reader per namespace at a time
        try:
            found = api.failed_creates(namespace)
        except Exception:
            with self._lock:
                self._read[namespace] = (now - REREAD_SECONDS, old)  # try again next time
            raise
        with self._lock:
            self._read[namespace] = (now, found)
        return any(found.get(u) != old.get(u) and u in found for u in wanted)
