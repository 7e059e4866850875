"""Warnings that announce nothing the status records, posted once per distinct cause.

ResultRejected (with its counter), JobCreateFailed, ResultLost, CellStuck, CellNotStarted and ReconcileError
say what went wrong around a ladder, not what it decided; the status writer (statuswriter.py)
posts the Events that belong to a status change. Hand-made because the Python client has no
EventRecorder (client-go's de-duplicates and aggregates); this keeps only "once per cause".
A rejected result document is also remembered on its Pod (intake.REJECTED_ANNOTATION), so a
restarted operator, whose memory is empty, does not announce it again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from .intake import REJECTED_ANNOTATION, Rejection
from .metrics import LadderMetrics

log = logging.getLogger("promotion_ladder.operator")

SEEN_LIMIT = 100_000  # bounded memory for announced causes; at worst an Event is repeated


class EventApi(Protocol):
    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None: ...
    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None: ...


class Once:
    """What has been seen, in bounded memory, for threads (reconciles of different ladders run
    in parallel)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def first(self, cause: str) -> bool:
        """True the first time `cause` is seen."""
        with self._lock:
            if cause in self._seen:
                return False
            if len(self._seen) > SEEN_LIMIT:
                self._seen.clear()
            self._seen.add(cause)
            return True


class Announcer:
    def __init__(self, api: EventApi, metrics: LadderMetrics) -> None:
        self._api = api
        self._metrics = metrics
        self._first = Once().first

    def warn_once(self, body: dict[str, Any], reason: str, cause: str, message: str) -> None:
        """A Warning Event on the ladder (and the log), unless `cause` was announced before."""
        if not self._first(cause):
            return
        self._api.post_event(body, "Warning", reason, message)
        log.warning("ladder %s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], message)

    def reject(self, body: dict[str, Any], rejection: Rejection) -> None:
        """A rejected result: counted by its reason and announced, once per document (also
        across restarts: its digest is written to its Pod)."""
        if rejection.digest in rejection.seen or not self._first(rejection.key):
            return
        meta = body["metadata"]
        self._metrics.result_error(meta["namespace"], meta["name"], rejection.reason)
        self._api.post_event(body, "Warning", "ResultRejected", rejection.message)
        log.warning("ladder %s/%s: %s", meta["namespace"], meta["name"], rejection.message)
        pod_ns, _, pod_name = rejection.pod.partition("/")
        try:
            self._api.annotate_pod(pod_ns, pod_name, {REJECTED_ANNOTATION: rejection.remembered()})
        except Exception as exc:  # noqa: BLE001 - at worst a restart announces it once more
            log.warning("could not mark pod %s as announced: %s", rejection.pod, exc)
