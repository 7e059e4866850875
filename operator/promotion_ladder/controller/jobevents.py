"""Why a cell's Job has no Pod: the Job controller's FailedCreate Events, read on demand.

The Job controller records a Pod it cannot create (a PriorityClass that does not exist, a quota,
an admission webhook's refusal) only as a FailedCreate Event on the Job: no condition, no Pod.
The reconcile asks for the Events of Jobs that have had no Pod for a while
(reconcile.READ_EVENTS_AFTER_SECONDS); this cache reads them, a few per reconcile and each Job
at most once per REREAD_SECONDS, and hands the messages back to the next reconcile
(scheduling.cell_wait names the cell with it). Events are listed, not watched: only Jobs that
already wait are ever looked at, so a busy cluster's Events cost nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Protocol

REREAD_SECONDS = 15.0  # a Job whose Events said nothing (yet) is read again after this long
READS_PER_RECONCILE = 10  # bounded: a stage of a thousand cells that cannot be created
KEEP_SECONDS = 600.0  # a message is kept this long after its last read (the Job may be gone)


class EventsApi(Protocol):
    def failed_create(self, namespace: str, job_uid: str) -> str | None: ...


class FailedCreateEvents:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._messages: dict[Hashable, dict[str, tuple[float, str | None]]] = {}  # key -> job uid -> (read at, message)

    def messages(self, key: Hashable) -> dict[str, str]:
        """The FailedCreate messages known for the ladder's Jobs, by Job UID."""
        with self._lock:
            return {uid: m for uid, (_, m) in (self._messages.get(key) or {}).items() if m}

    def read(self, api: EventsApi, key: Hashable, namespace: str, job_uids: Iterable[str]) -> bool:
        """Read the Events of these Jobs (those not read lately); True when a new message came."""
        now = self._clock()
        with self._lock:
            known = self._messages.setdefault(key, {})
            for uid in [u for u, (at, _) in known.items() if now - at > KEEP_SECONDS]:
                del known[uid]
            due = [u for u in job_uids if u not in known or now - known[u][0] >= REREAD_SECONDS][:READS_PER_RECONCILE]
        found = False
        for uid in due:
            message = api.failed_create(namespace, uid)
            with self._lock:
                old = self._messages.setdefault(key, {}).get(uid)
                self._messages[key][uid] = (now, message)
            found = found or (message is not None and (old is None or old[1] != message))
        return found

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._messages.pop(key, None)
