"""A reconcile that fails: how long to wait before the next try, and what the ladder says meanwhile.

Pure. The core is total (no input to the rules or the accounting raises), so a failing
reconcile means the API server refused something (a write, a quota) or a bug: either way a
person must be able to see it on the ladder (`kubectl describe`), not only in the operator's
log, and the operator must not hammer the API server with retries every few seconds.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException

from ..core.status import MESSAGE_LIMIT

RECONCILE_ERROR = "ReconcileError"  # the condition type and the Event reason
FIRST_RETRY_SECONDS = 5.0
MAX_RETRY_SECONDS = 300.0


def retry_delay(failures: int) -> float:
    """Seconds before the next try after `failures` failures in a row: 5, 10, 20, ... 300."""
    if failures <= 1:
        return FIRST_RETRY_SECONDS
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2.0 ** min(failures - 1, 30))


def error_message(exc: BaseException) -> str:
    """What the condition and the Event say: the API server's answer when there is one."""
    if isinstance(exc, ApiException) and exc.status is not None:
        return f"API server answered {exc.status} {exc.reason or ''}: {exc.body or ''}"[:MESSAGE_LIMIT]
    return f"{type(exc).__name__}: {exc}"[:MESSAGE_LIMIT]


def with_error_condition(
    conditions: list[dict[str, Any]], message: str, failures: int, delay: float, now: str
) -> list[dict[str, Any]]:
    """The ladder's conditions plus ReconcileError=True (replacing an older one). A successful
    reconcile writes its own conditions, which have no ReconcileError: that clears it."""
    kept = [c for c in conditions if c.get("type") != RECONCILE_ERROR]
    prev = next((c for c in conditions if c.get("type") == RECONCILE_ERROR and c.get("status") == "True"), None)
    since = prev.get("lastTransitionTime") if prev and prev.get("lastTransitionTime") else now
    return kept + [
        {
            "type": RECONCILE_ERROR,
            "status": "True",
            "reason": RECONCILE_ERROR,
            "message": f"reconcile failed {failures} time(s) in a row; next try in {delay:g} s: {message}"[
                :MESSAGE_LIMIT
            ],
            "lastTransitionTime": since,
        }
    ]
