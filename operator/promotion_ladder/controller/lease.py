"""One operator at a time: a coordination.k8s.io Lease held by the operator that does the work,
and the `Gate` every write passes (leading, and not stopping).

Two operators acting at once (a rolling update, a second replica, an old pod still stopping)
would race on Job creation and status writes. Every operator watches and keeps its caches warm,
but only the holder of the Lease reconciles. The holder renews it every RENEW_SECONDS; another
takes it over once it has not been renewed for DURATION_SECONDS, or at once when the holder
releases it on a clean stop (SIGTERM). Writes use the Lease's resourceVersion, so two operators
can never both believe they took it.

Hand-made, because neither library mechanism serves:
  * kubernetes.leaderelection: `run()` can neither be stopped nor release the Lease, and a new
    candidate waits a full lease duration even for a Lease that expired long ago (every restart
    would wait 15 s before its first write; the restart benchmark's was 1.9 s);
  * Kopf peering: operators of the same priority all freeze (nobody works), a paused operator
    stops its watches (a standby would start cold), and it needs CRDs of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..core import clock

log = logging.getLogger("promotion_ladder.operator")

LEASE_NAME = "promotion-ladder-operator"
DURATION_SECONDS = 15
RENEW_SECONDS = 5.0
REQUEST_SECONDS = (5, 5)  # connect, read: a renewal slower than this is a failed one
JOIN_SECONDS = 12.0  # stop() waits this long for the renewal thread (two requests)


class Leadership(Protocol):
    def held(self) -> bool: ...


class Gate:
    """Whether this operator may start work now: it leads, and no SIGTERM came. Checked before
    every reconcile and every Job create; `close()` is for good (the process is stopping)."""

    def __init__(self, leadership: Leadership) -> None:
        self._leadership = leadership
        self._closed = threading.Event()

    def open(self) -> bool:
        return not self._closed.is_set() and self._leadership.held()

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


class LeaderLease:
    """Acquire and renew a Lease in a thread; `held()` says whether this operator may act now."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        identity: str,
        name: str = LEASE_NAME,
        duration: int = DURATION_SECONDS,
        renew: float = RENEW_SECONDS,
    ) -> None:
        self.coord = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration, self.renew = duration, renew
        self._on_acquired: Callable[[], None] = lambda: None
        self._valid_until = 0.0  # monotonic: held until then without another renewal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def start(self, on_acquired: Callable[[], None]) -> LeaderLease:
        """Begin campaigning; `on_acquired` is called from the thread each time the Lease is taken."""
        self._on_acquired = on_acquired
        self._thread = threading.Thread(target=self._loop, name="leader-lease", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        """Stop renewing (and give the Lease up, so a successor need not wait for it to expire);
        returns once the renewal thread has ended. Blocking: call it off the event loop."""
        if self._stop.is_set():
            return
        self._stop.set()
        was_held = self.held()
        self._valid_until = 0.0
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
            if self._thread.is_alive():
                log.warning("the Lease thread did not stop within %g s", JOIN_SECONDS)
        if release and was_held:
            try:
                self._write(release=True)
            except Exception as exc:  # noqa: BLE001 - the Lease then expires on its own
                log.warning("could not release the Lease %s/%s: %s", self.namespace, self.name, exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            was = self.held()
            try:
                taken = self._write()
            except Exception as exc:  # noqa: BLE001 - keep trying; the lease lapses on its own
                log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
                taken = None
            if self._stop.is_set():  # stop() came during the write: it owns the Lease from here
                return
            if taken:
                self._valid_until = time.monotonic() + self.duration - self.renew
                if not was:
                    log.info("leading: holding Lease %s/%s as %s", self.namespace, self.name, self.identity)
                    self._on_acquired()
            elif taken is False and was:
                self._valid_until = 0.0
                log.warning("lost the Lease %s/%s; standing by", self.namespace, self.name)
            self._stop.wait(self.renew if self.held() else min(self.renew, 2.0))

    def _create(self) -> bool:
        now = clock.now()
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self.duration,
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            self.coord.create_namespaced_lease(self.namespace, body, _request_timeout=REQUEST_SECONDS)
            return True
        except ApiException as again:
            if again.status == 409:  # another operator created it first
                return False
            raise

    def _write(self, release: bool = False) -> bool:
        """Take or renew the Lease (or give it up); True when this operator holds it after."""
        try:
            lease: Any = self.coord.read_namespaced_lease(self.name, self.namespace, _request_timeout=REQUEST_SECONDS)
        except ApiException as exc:
            if exc.status != 404 or release:
                raise
            return self._create()
        spec = lease.spec
        now = clock.now()
        mine = spec.holder_identity == self.identity
        if release:
            if not mine:
                return False
            spec.holder_identity, spec.lease_duration_seconds = None, 1
        else:
            renewed = clock.parse(spec.renew_time) or clock.parse(spec.acquire_time)
            expired = renewed is None or now > renewed + timedelta(seconds=spec.lease_duration_seconds or self.duration)
            if not mine and spec.holder_identity and not expired:
                return False
            if not mine:
                spec.acquire_time = now
                spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.holder_identity, spec.lease_duration_seconds, spec.renew_time = self.identity, self.duration, now
        try:  # resourceVersion: optimistic
            self.coord.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=REQUEST_SECONDS)
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote it meanwhile
                return False
            raise
        return not release
