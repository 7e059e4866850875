"""Stuck work: a cell's Pod still running well past its deadline (pure).

The Pod's activeDeadlineSeconds (budget + grace, core.budget.cell_deadline_seconds) is enforced
by the kubelet. A kubelet that lost the container's exit (an API outage while it reported), a
node that died without its Pods being marked, or a kubelet that does not enforce deadlines
leaves a Pod `Running` forever: its GPUs stay held and the ladder never decides. The operator
notices from the Pod's startTime:

  * past deadline + grace: the Pod is ended (deleted at once); the Job then retries the cell
    (or fails it when its retries are spent): the usual path, with a reason;
  * past deadline + 2 x grace and still there (deleted, but no kubelet confirms it): the cell is
    recorded failed with the reason, on the positive evidence of the deadline.
"""

from __future__ import annotations

from ..core.clock import epoch
from .intake import PodSummary

STUCK_GRACE_SECONDS = 120.0  # beyond the Pod's own deadline, before the operator steps in


def overdue_seconds(pod: PodSummary, now: str) -> float | None:
    """How long a non-terminal Pod has run past its deadline; None without a deadline or start."""
    start, t = epoch(pod.started_at), epoch(now)
    if pod.terminal or start is None or t is None or pod.deadline_seconds is None:
        return None
    return t - start - pod.deadline_seconds


def stuck(pods: list[PodSummary], now: str, grace: float = STUCK_GRACE_SECONDS) -> tuple[list[PodSummary], str | None]:
    """(Pods to end now, the failure reason when the cell must be recorded failed)."""
    end: list[PodSummary] = []
    for pod in pods:
        over = overdue_seconds(pod, now)
        if over is None or over < grace:
            continue
        if pod.deleting and over >= 2 * grace:
            return [], (
                f"stuck: pod {pod.name} ran {over:.0f} s past its deadline "
                f"({pod.deadline_seconds} s) and was ended, but nothing confirmed its end"
            )
        if not pod.deleting:
            end.append(pod)
    return end, None


def next_check(pods: list[PodSummary], now: str, grace: float = STUCK_GRACE_SECONDS) -> float | None:
    """Seconds until the first of these Pods would be stuck (ended, or failed when already
    ended): when to look again even if no event comes (a stuck Pod sends none)."""
    waits = []
    for pod in pods:
        over = overdue_seconds(pod, now)
        if over is not None:
            waits.append(max(0.0, (2 * grace if pod.deleting else grace) - over))
    return min(waits) if waits else None
