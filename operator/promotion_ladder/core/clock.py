"""The one clock of the adapters, and the one reader of the timestamps they get back.

The core's own functions never read the clock: they take `now` as an argument, so a ladder
step stays data in, data out. The adapters (the operator, the local runner, the simulated
kubelet) stamp what they write with `iso()` (Kubernetes' Time, to the second) or
`iso_micro()` (MicroTime: Leases, Events' eventTime) and read stamps back with `parse()`.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, UTC, timezone-aware."""
    return datetime.now(UTC)


def iso(t: datetime | None = None) -> str:
    """RFC 3339 to the second, as Kubernetes writes a Time: "2026-12-06T23:55:29Z"."""
    return (now() if t is None else t).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_micro(t: datetime | None = None) -> str:
    """RFC 3339 to the microsecond, as Kubernetes writes a MicroTime."""
    return (now() if t is None else t).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(stamp: object) -> datetime | None:
    """A stamp as read back (an RFC 3339 string, or a datetime from the kubernetes client's
    models) -> an aware datetime; None when absent or unreadable. A naive datetime is UTC."""
    if not stamp:
        return None
    if isinstance(stamp, datetime):
        when = stamp
    else:
        try:
            when = datetime.fromisoformat(str(stamp))
        except ValueError:
            return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def epoch(stamp: object) -> float | None:
    """`parse(stamp)` as seconds since the epoch; None when absent or unreadable."""
    when = parse(stamp)
    return None if when is None else when.timestamp()
