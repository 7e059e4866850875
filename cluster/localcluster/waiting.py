"""Wait-for-condition helpers: poll a function until it returns something truthy, with a timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """Raised when a condition is not met in time; an AssertionError so pytest shows it as a failure."""


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
    describe: Callable[[], object] | None = None,
) -> T:
    """Returns the first truthy value of condition(); raises WaitTimeout after timeout seconds.

    Exceptions from condition() count as "not yet" (the API server may 404 a fresh object),
    and the last one is reported on timeout together with describe(), if given.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last = exc
        if time.monotonic() >= deadline:
            detail = ""
            if describe is not None:
                try:
                    detail = f"; state: {describe()}"
                except Exception as exc:  # noqa: BLE001
                    detail = f"; describe() failed: {exc!r}"
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){detail}")
        time.sleep(interval)
