"""The one clock, and the form a time takes in a status (a condition's lastTransitionTime).

The core's functions never read the clock: they take `now` as an argument, so a ladder step is
data in, data out and replays the same. The adapters (`ladder run`, the operator) read it here.
"""

from __future__ import annotations

from datetime import datetime, timezone


def now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(timezone.utc)


def timestamp(t: datetime | None = None) -> str:
    """`t` (default: now) as Kubernetes writes times: RFC 3339 in UTC, to the second."""
    return (t or now()).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
