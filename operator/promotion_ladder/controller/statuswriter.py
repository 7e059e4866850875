"""The status writer: a ladder's status and the Events that go with it, written together.

jobset's rule: compute, then write the status once, then emit the Events that belong to that
write, and only if it succeeded. An Event announces something the status records (a decision,
the ladder's end, a stop); posting it before or without the write could announce a decision
that a restart then never finds. Events are best effort: an operator killed between the write
and the Events loses at most an Event, never the decision, and never posts one twice.

Writes are coalesced: cell progress (started, finished, values) is written at most every
`coalesce_seconds` per ladder; until then the Pods still hold the results, so a restart in
between re-reads them and decides the same. A change is *urgent* (written at once) when
`urgent_change` says so, and always when the step announces something: every change that
raises an Event is an urgent status write, otherwise the Event would be posted for a status
that is not written yet (or be dropped with the deferred write). Hand-made: this is the
operator's own write policy; Kopf's status patching writes per handler, not once per reconcile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Event = tuple[str, str, str]  # (type, reason, message)


class StatusApi(Protocol):
    def write_status(self, namespace: str, name: str, status: dict[str, Any]) -> str | None: ...
    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None: ...


def urgent_change(old: dict, new: dict) -> bool:
    """A change that must be written at once: a decision, the phase, the verdict, the spec seen
    (generation, frozen hash) or a condition. Cell progress (started, finished, values) and the
    sums that follow from it may wait a moment (see the module docstring)."""

    def decisions(s: dict) -> list:
        return [st.get("decision") for st in s.get("stages") or []]

    def key(s: dict) -> tuple:
        return (
            s.get("phase"),
            s.get("observedGeneration"),
            s.get("frozenHash"),
            s.get("currentStage"),
            s.get("verdict"),
            decisions(s),
            [c.get("status") for c in s.get("conditions") or []],
        )

    return key(old) != key(new)


@dataclass(frozen=True)
class Written:
    uid: str  # the ladder object the status was written to (a re-created ladder has a new one)
    status: dict
    resource_version: str


class WriteResult:
    WRITTEN = "written"  # status written, its Events posted
    UNCHANGED = "unchanged"  # nothing to write; Events (if any) posted
    DEFERRED = "deferred"  # cell progress only, folded into a later write: retry after `retry_in`
    GONE = "gone"  # the ladder was deleted meanwhile


class StatusWriter:
    def __init__(self, api: StatusApi, coalesce_seconds: float = 2.0) -> None:
        self._api = api
        self.coalesce_seconds = coalesce_seconds
        self._written: dict[Hashable, Written] = {}
        self._last_write: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def last_written(self, key: Hashable, uid: str) -> Written | None:
        """Our last write to this ladder object (None after a re-create under the same name)."""
        w = self._written.get(key)
        return w if w is not None and w.uid == uid else None

    def is_own_write(self, key: Hashable, resource_version: str | None) -> bool:
        w = self._written.get(key)
        return w is not None and w.resource_version == resource_version

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._written.pop(key, None)
            self._last_write.pop(key, None)

    def write(
        self, key: tuple[str, str], body: dict, known: dict, status: dict, events: Sequence[Event]
    ) -> tuple[str, float]:
        """Write `status` (if it differs from `known`) and then post `events`.

        Returns (WriteResult.*, retry_in seconds for DEFERRED)."""
        ns, name = key
        result = WriteResult.UNCHANGED
        if status != known:
            wait = self._last_write.get(key, 0.0) + self.coalesce_seconds - time.monotonic()
            if wait > 0 and not events and not urgent_change(known, status):
                return WriteResult.DEFERRED, wait
            rv = self._api.write_status(ns, name, status)
            if rv is None:
                return WriteResult.GONE, 0.0
            with self._lock:
                self._written[key] = Written(body["metadata"]["uid"], status, rv)
                self._last_write[key] = time.monotonic()
            result = WriteResult.WRITTEN
        for type_, reason, message in events:
            self._api.post_event(body, type_, reason, message)
        return result, 0.0
