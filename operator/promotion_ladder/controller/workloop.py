"""The work loop: ladder events in, reconciles out, on Kopf's event loop.

* `on_ladder` takes Kopf's watch events of the ladders: it keeps the latest body of each and
  marks the ladder dirty in the work queue (workqueue.py); our own status write coming back
  is not a change;
* `workers` tasks take dirty ladders and run `Reconciler.reconcile` in threads (reconciles
  wait on the API server, not on cores), one reconcile per ladder at a time;
* a reconcile that fails backs off (failures.py: 5 s doubling to 5 min) and says so on the
  ladder, instead of retrying silently;
* every unfinished ladder is reconciled at least every RESYNC_SECONDS (a safety net), and
  the heartbeat shows the loop is alive (the liveness probe, main.py).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .failures import retry_delay
from .metrics import LadderMetrics
from .reconciler import Reconciler
from .workqueue import Key, WorkQueue

log = logging.getLogger("promotion_ladder.operator")

WORKERS = 8
RESYNC_SECONDS = 60.0  # safety net: every unfinished ladder is reconciled at least this often
HEARTBEAT_SECONDS = 5.0
ALIVE_SECONDS = 60.0  # the loop counts as stalled (liveness fails) without a beat for this long
SYNC_POLL_SECONDS = 0.1


class WorkLoop:
    def __init__(
        self,
        reconciler: Reconciler,
        ladders: dict[Key, dict[str, Any]],
        queue: WorkQueue[Key],
        caches_synced: Callable[[], bool],
        metrics: LadderMetrics,
        workers: int = WORKERS,
    ) -> None:
        self._reconciler, self._ladders, self.queue = reconciler, ladders, queue
        self._caches_synced, self._metrics, self._workers = caches_synced, metrics, workers
        # asyncio.to_thread's default pool has cpu_count + 4 threads (6 on two cores): too few.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._failures: dict[Key, int] = {}  # failed reconciles in a row, for the backoff
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.heartbeat = time.monotonic()

    # -- events ------------------------------------------------------------------------------
    def on_ladder(self, event_type: str | None, raw: dict[str, Any]) -> None:
        meta = raw.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self._ladders.pop(key, None)
            self._failures.pop(key, None)
            self.queue.forget(key)
            self.queue.add(key)  # its reconcile forgets everything kept for it
            return
        old = self._ladders.get(key)
        if old is not None and (old.get("metadata") or {}).get("generation") != meta.get("generation"):
            self.queue.clear_backoff(key)  # an edited spec may be the fix: no backoff for it
        self._ladders[key] = copy.deepcopy(raw)
        if self._reconciler.is_own_write(key, meta.get("resourceVersion")):
            return
        self.queue.add(key)

    def requeue_all(self) -> None:
        """Every ladder, from any thread (the Lease's, on taking it: everything may have changed
        while another operator led, or none did)."""
        for key in list(self._ladders):
            self.queue.add_after(key, 0.0)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.queue.start()
        self._tasks = [asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}") for i in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._resync(), name="resync"))

    async def stop(self) -> None:
        """Stop taking work and wait for the reconciles under way (call once the Gate is shut,
        so they write nothing more): no reconcile thread outlives the event loop."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(self._reconciler.shutdown)

    def alive(self) -> bool:
        return time.monotonic() - self.heartbeat < ALIVE_SECONDS

    # -- workers -----------------------------------------------------------------------------
    async def _worker(self) -> None:
        # Nothing is reconciled from a cache that is not filled yet: a Job "missing" there may
        # only be not listed yet.
        while not self._caches_synced():
            await asyncio.sleep(SYNC_POLL_SECONDS)
        loop = asyncio.get_running_loop()
        while True:
            key, since = await self.queue.get()
            try:
                await loop.run_in_executor(self._executor, self._reconciler.reconcile, key, since)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one ladder's trouble must not stop the others
                await self._failed(key, exc)
            else:
                self._failures.pop(key, None)
                self.queue.clear_backoff(key)
            finally:
                self.queue.done(key)

    async def _failed(self, key: Key, exc: Exception) -> None:
        n = self._failures[key] = self._failures.get(key, 0) + 1
        delay = retry_delay(n)
        log.error(
            "reconcile of %s/%s failed (%d in a row); retrying in %g s",
            *key,
            n,
            delay,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        self._metrics.reconcile_errors.inc()
        self.queue.back_off(key, delay)
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._reconciler.report_failure, key, exc, n, delay
            )
        except Exception as again:  # noqa: BLE001 - the API server may be what fails; the log has it
            log.warning("could not report the failed reconcile of %s/%s: %s", *key, again)

    def failures(self, key: Key) -> int:
        """Failed reconciles of this ladder in a row."""
        return self._failures.get(key, 0)

    async def _resync(self) -> None:
        last = time.monotonic()
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if time.monotonic() - last >= RESYNC_SECONDS:
                last = time.monotonic()
                for key, body in list(self._ladders.items()):
                    if (body.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                        self.queue.add(key)
