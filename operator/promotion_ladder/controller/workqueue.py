"""The operator's work queue: which ladders need a reconcile, one at a time per ladder.

Watch events and timers `add` a ladder key; workers `get` one, reconcile it and call `done`.
  * De-duplicated: a key that is already waiting is not queued twice.
  * One reconcile per ladder at a time: a key added while its reconcile runs waits, and is
    queued once more when `done` is called (events during a reconcile coalesce into one).
  * Retry later: `add_after` re-adds a key after a delay; safe from any thread (workers run the
    reconcile in threads).
  * Back off: after `back_off(key, delay)` the key is not handed out again before the delay has
    passed, however often it is added meanwhile (a failing ladder's watch events wait too);
    `clear_backoff` ends that early.
  * Wake up: `wake(key, delay)` is `add_after` with one timer per key (the earliest wins), for
    "look again in N seconds" from every reconcile of a busy ladder.
Hand-made: the Python client has no work queue (client-go's workqueue is what this follows),
and Kopf's per-object handlers are what the informer (informer.py) replaced.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
Key = tuple[str, str]  # a ladder: (namespace, name)


class Requeue(Protocol):
    """What a reconcile may ask of the queue (from any thread)."""

    def add_after(self, key: Key, delay: float) -> None: ...
    def wake(self, key: Key, delay: float) -> None: ...


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._dirty: dict[K, float] = {}  # key -> monotonic time it became dirty
        self._busy: set[K] = set()
        self._queue: asyncio.Queue[K] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._not_before: dict[K, float] = {}  # backing off: not handed out before (monotonic)
        self._deferred: set[K] = set()  # keys with a timer waiting for their backoff to pass
        self._wake_at: dict[K, float] = {}  # the wake-up timer of a key (monotonic)
        self._wake_lock = threading.Lock()  # wake() is called from reconcile threads

    def start(self) -> None:
        """Bind to the running event loop; keys added before are queued now."""
        self._queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        for key in self._dirty:
            if key not in self._busy:
                self._queue.put_nowait(key)

    def add(self, key: K) -> None:
        if key in self._dirty:
            return
        wait = self._not_before.get(key, 0.0) - time.monotonic()
        if wait > 0 and self._loop is not None:
            if key not in self._deferred:
                self._deferred.add(key)
                self._loop.call_later(wait, self._undefer, key)
            return
        self._dirty[key] = time.monotonic()
        if key not in self._busy and self._queue is not None:
            self._queue.put_nowait(key)

    def _undefer(self, key: K) -> None:
        self._deferred.discard(key)
        self.add(key)

    def back_off(self, key: K, delay: float) -> None:
        """Hand `key` out again only after `delay` seconds (call on the event loop)."""
        self._not_before[key] = time.monotonic() + delay
        self.add(key)

    def clear_backoff(self, key: K) -> None:
        self._not_before.pop(key, None)

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` after `delay` seconds; callable from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.call_later, delay, self.add, key)

    def wake(self, key: K, delay: float) -> None:
        """Add `key` after `delay` seconds unless an earlier wake-up is already set; any thread."""
        now = time.monotonic()
        at = now + delay
        with self._wake_lock:
            prev = self._wake_at.get(key)
            if prev is not None and now < prev <= at:
                return
            self._wake_at[key] = at
        self.add_after(key, delay)

    def forget(self, key: K) -> None:
        """A key that is gone for good (a deleted ladder): drop its backoff and wake-up."""
        self._not_before.pop(key, None)
        with self._wake_lock:
            self._wake_at.pop(key, None)

    async def get(self) -> tuple[K, float]:
        """The next key and the monotonic time it became dirty; the key is busy until `done`."""
        assert self._queue is not None, "start() first"
        key = await self._queue.get()
        since = self._dirty.pop(key, time.monotonic())
        self._busy.add(key)
        return key, since

    def done(self, key: K) -> None:
        self._busy.discard(key)
        if key in self._dirty and self._queue is not None:
            self._queue.put_nowait(key)

    def waiting(self, key: K) -> bool:
        return key in self._dirty
