"""One operator at a time: a coordination.k8s.io Lease held by the operator that does the work.

Two operators acting at once (a rolling update, a second replica, an old pod still stopping)
would race on Job creation and status writes. Every operator watches and keeps its caches warm,
but only the holder of the Lease reconciles. The holder renews it every RENEW_SECONDS; another
takes it over only once it has not been renewed for DURATION_SECONDS, or at once when the
holder releases it on a clean stop (SIGTERM). Writes use the Lease's resourceVersion, so two
operators can never both believe they took it.

Kopf's own peering was not used: operators of the same priority both pause (nobody works), and
it needs a CRD of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Callable

from ..core import clock

log = logging.getLogger("promotion_ladder.operator")

LEASE_NAME = "promotion-ladder-operator"
DURATION_SECONDS = 15
RENEW_SECONDS = 5.0


class LeaderLease:
    """Acquire and renew a Lease in a thread; `held()` says whether this operator may act now."""

    def __init__(self, api_client, namespace: str, identity: str, name: str = LEASE_NAME,
                 on_acquired: Callable[[], None] | None = None, duration: int = DURATION_SECONDS,
                 renew: float = RENEW_SECONDS):
        from kubernetes import client

        self.coord = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration, self.renew = duration, renew
        self.on_acquired = on_acquired
        self._valid_until = 0.0  # monotonic: held until then without another renewal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def start(self) -> "LeaderLease":
        self._thread = threading.Thread(target=self._loop, name="leader-lease", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        was_held = self.held()
        self._valid_until = 0.0
        if release and was_held:
            try:
                self._write(release=True)
            except Exception as exc:  # noqa: BLE001 - the Lease then expires on its own
                log.warning("could not release the Lease %s/%s: %s", self.namespace, self.name, exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            was = self.held()
            try:
                if self._write():
                    self._valid_until = time.monotonic() + self.duration - self.renew
                    if not was:
                        log.info("leading: holding Lease %s/%s as %s", self.namespace, self.name, self.identity)
                        if self.on_acquired is not None:
                            self.on_acquired()
                elif was:
                    self._valid_until = 0.0
                    log.warning("lost the Lease %s/%s; standing by", self.namespace, self.name)
            except Exception as exc:  # noqa: BLE001 - keep trying; the lease lapses on its own
                log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
            self._stop.wait(self.renew if self.held() else min(self.renew, 2.0))

    def _write(self, release: bool = False) -> bool:
        """Take or renew the Lease (or give it up); True when this operator holds it after."""
        from kubernetes.client.exceptions import ApiException

        now = clock.now()
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404 or release:
                raise
            body = {"metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                             "acquireTime": clock.iso_micro(now), "renewTime": clock.iso_micro(now), "leaseTransitions": 0}}
            try:
                self.coord.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as again:
                if again.status == 409:  # another operator created it first
                    return False
                raise
        spec = lease.spec
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
        try:
            self.coord.replace_namespaced_lease(self.name, self.namespace, lease)  # resourceVersion: optimistic
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote it meanwhile
                return False
            raise
        return not release
