"""Jobs being created: remembered until the watch shows them, so a lagging watch does not cause a
second create (the controller-runtime "expectations" idea, by name and with an expiry).

An expectation expires after `ttl` seconds even if the Job never shows up (a create that
succeeded on a connection that then broke, a Job deleted at once): then the reconcile sees the
Job missing and creates it again (create-if-absent: a 409 is fine). Hand-made: client-go has
these (ControllerExpectations), the Python client and Kopf do not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterable


class CreateExpectations:
    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._by_key: dict[Hashable, dict[str, float]] = {}  # key -> job name -> expiry (monotonic)
        self._lock = threading.Lock()

    def pending(self, key: Hashable, seen: Iterable[str]) -> set[str]:
        """Names expected for `key` and not yet seen; drops the seen and the expired ones."""
        now, seen = time.monotonic(), set(seen)
        with self._lock:
            left = {n: t for n, t in self._by_key.get(key, {}).items() if t > now and n not in seen}
            self._by_key[key] = left
            return set(left)

    def expect(self, key: Hashable, name: str, ttl: float | None = None) -> None:
        with self._lock:
            self._by_key.setdefault(key, {})[name] = time.monotonic() + (self.ttl if ttl is None else ttl)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._by_key.pop(key, None)
