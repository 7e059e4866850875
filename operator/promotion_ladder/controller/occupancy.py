"""How long a cell held its GPUs on the cluster, from its Pods' own timestamps (pure).

The occupancy of one Pod runs
  from `bound`: the PodScheduled condition's lastTransitionTime (status True), the moment the
    scheduler bound the Pod to a node. From then on the scheduler counts the node's GPUs that
    the Pod requests as taken: nothing else can be placed on them while the image is pulled,
    the container starts, Python imports, the trainer prepares, compiles, trains and evaluates.
    Fallback: status.startTime (when the kubelet took the Pod, usually within a second);
  to `released`: the trainer container's terminated.finishedAt (state, else lastState). When
    the container has ended, the trainer no longer holds the GPU; the seconds the kubelet then
    needs to mark the Pod terminal are not counted.
A Pod never bound (still Pending, or deleted while queued) held no GPU and counts 0. A cell's
occupancy is the sum over every Pod of its Job: a retried Job paid for every attempt. A
multi-node cell (an Indexed Job, one Pod per node, `index` = the completion index) holds its
nodes at the same time: the attempts of each index are summed and the cell counts its longest
index, which the accounting multiplies by the cell's GPUs (nodes x gpus). It is
unmeasured (None) when some bound Pod lacks an end (deleted while running, or still running),
or when none of its Pods is known any more; the accounting then counts the cell's protocol
seconds (core.accounting). Kubernetes writes these timestamps with one-second resolution, so
each Pod's figure is within about a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ..core.cell import CellOutcome
from ..core.clock import epoch


class _Timed(Protocol):
    """What occupancy reads of a Pod (intake.PodSummary)."""

    @property
    def bound_at(self) -> float | None: ...
    @property
    def released_at(self) -> float | None: ...
    @property
    def index(self) -> int | None: ...  # the completion index of a multi-node cell's Pod, else None


def pod_times(body: dict[str, Any], container: str) -> dict[str, float | None]:
    """`bound_at` and `released_at` (epoch seconds, None when absent) of one Pod body."""
    status = body.get("status") or {}
    bound = None
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "True":
            bound = epoch(c.get("lastTransitionTime"))
    if bound is None:
        bound = epoch(status.get("startTime"))
    released = None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != container:
            continue
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            released = epoch(term.get("finishedAt"))
    return {"bound_at": bound, "released_at": released}


def occupied_seconds(pods: Iterable[_Timed]) -> float | None:
    """The seconds a cell held its GPUs: its Pods' intervals summed per completion index, the
    longest index counted; None when not measurable."""
    by_index: dict[int | None, float] = {}
    for p in pods:
        if p.bound_at is None:
            continue  # never bound: held nothing
        if p.released_at is None:
            return None
        by_index[p.index] = by_index.get(p.index, 0.0) + max(p.released_at - p.bound_at, 0.0)
    return max(by_index.values()) if by_index else None


def with_occupancy(outcome: CellOutcome, pods: Iterable[_Timed]) -> CellOutcome:
    """A terminal cell's outcome with the occupancy of its Job's Pods."""
    return outcome.model_copy(update={"occupied_seconds": occupied_seconds(pods)})
