"""A cell's time in a batch queue and the attempts it lost, as the status records them (pure).

On a cluster behind a batch queue (Kueue), a cell's Job is held (suspended) until the queue
admits it, and a running cell can be evicted or preempted: its Pods are deleted, the Job waits
in the queue again and then runs the cell from the start. Neither is a failure, and neither is
protocol time. What the ladder records per cell (`CellStatus.attempts`, absent when there is
nothing to say):

  * `queuedSeconds`: the seconds the cell waited in the queue, every wait summed: from its Job's
    creation (or the moment it was suspended again) to the moment the queue let it run;
  * `queuedSince`: while the cell is Queued, when the current wait began;
  * `lost`: the attempts lost before the cell ended, one entry per Pod that held GPUs and was
    deleted (evicted, preempted, drained, or ended as stuck): its name, the seconds it held its
    GPUs (bound to a node -> its container's end, else the moment it was deleted) and, for a
    multi-node cell, its completion index. Those seconds are part of the cell's
    `occupiedSeconds` (a cluster paid for them) and, summed, of `gpuHours.occupied.lost`; they
    are never protocol GPU-hours.

The status is the durable record: `advance` folds what an adapter sees now (`AttemptsSeen`)
into what was recorded, so a restarted operator keeps what it recorded before. Lost attempts are
kept by Pod name (one Pod is never counted twice). A wait is measured from what is recorded
(`queuedSince`) or, for a first wait the operator never saw, from the Job's creation; a second
wait that begins and ends between two looks of the operator is not measured (it is at most a
status write interval long, or the operator was down).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from pydantic import Field

from .cell import CellKey, CellOutcome
from .clock import epoch, iso
from .model import WireModel


class LostPod(WireModel):
    pod: str
    held_seconds: float = Field(ge=0, description="Seconds it held its GPUs: bound to a node -> its container's end.")
    # Annotated defaults (not Field(None, ...)): mypy sees them without pydantic's plugin.
    index: Annotated[int | None, Field(description="Its completion index (the node rank of a multi-node cell).")] = None


class Attempts(WireModel):
    queued_seconds: Annotated[
        float | None, Field(ge=0, description="Seconds the cell waited in its batch queue (Kueue), every wait summed.")
    ] = None
    queued_since: Annotated[str | None, Field(description="While the cell is Queued: when the current wait began.")] = (
        None
    )
    lost: Annotated[
        list[LostPod] | None,
        Field(
            description="Attempts lost to eviction or preemption (each re-run): the Pods deleted before the cell "
            "ended. Their seconds are in occupiedSeconds, never in protocol GPU-hours."
        ),
    ] = None


@dataclass(frozen=True)
class AttemptsSeen:
    """What an adapter sees of one cell's attempts now (the operator: its Job and the Pods of it
    that were deleted). Times are epoch seconds."""

    queued: bool = False  # held by a queue now (the Job is suspended)
    wait_began: float | None = None  # when the current wait began (the Job's suspension), if known
    admitted_at: float | None = None  # when the queue last let it run (the Job resumed), if ever
    created_at: float | None = None  # when its Job was created
    lost: tuple[LostPod, ...] = field(default_factory=tuple)


def _seconds(x: float) -> float:
    return round(max(x, 0.0), 3)


def _iso(t: float) -> str:
    return iso(datetime.fromtimestamp(t, UTC))


def merge_lost(recorded: Iterable[LostPod], seen: Iterable[LostPod]) -> list[LostPod]:
    """The lost Pods recorded, then those seen that are not recorded yet (by Pod name)."""
    out = list(recorded)
    names = {p.pod for p in out}
    for p in seen:
        if p.pod not in names:
            names.add(p.pod)
            out.append(p)
    return out


def _waited(recorded: Attempts, seen: AttemptsSeen) -> tuple[float | None, float | None]:
    """(queued seconds, the current wait's start) after this look."""
    waited, since = recorded.queued_seconds, epoch(recorded.queued_since)
    if seen.queued:
        if since is None:
            since = seen.wait_began if seen.wait_began is not None else seen.created_at
        return waited, since
    if since is not None:  # a wait recorded as begun has ended: the queue let the cell run
        end = seen.admitted_at
        return (waited or 0.0) + (end - since if end is not None and end >= since else 0.0), None
    if waited is None and seen.admitted_at is not None and seen.created_at is not None:
        return seen.admitted_at - seen.created_at, None  # a first wait never seen while it lasted
    return waited, None


def advance(recorded: Attempts | None, seen: AttemptsSeen | None) -> Attempts | None:
    """The record of a cell's attempts after one more look (None: nothing to record)."""
    if seen is None:
        return recorded
    rec = recorded or Attempts()
    waited, since = _waited(rec, seen)
    lost = merge_lost(rec.lost or (), seen.lost)
    out = Attempts(
        queued_seconds=None if waited is None else _seconds(waited),
        queued_since=None if since is None else _iso(since),
        lost=lost or None,
    )
    return None if out == Attempts() else out


def advance_all(
    recorded: Mapping[CellKey, Attempts], seen: Mapping[CellKey, AttemptsSeen], final: Collection[CellKey]
) -> dict[CellKey, Attempts]:
    """Every cell's record after this look; a cell whose outcome is already recorded (`final`)
    keeps its record as it is, like its outcome."""
    out = {}
    for key in recorded.keys() | seen.keys():
        a = recorded.get(key) if key in final else advance(recorded.get(key), seen.get(key))
        if a is not None:
            out[key] = a
    return out


def lost_attempts(lost: Iterable[LostPod] | None) -> int:
    """How many times the cell was lost: its Pods lost per completion index, the most of any
    index (a multi-node cell loses all its Pods at once)."""
    counts: dict[int | None, int] = {}
    for p in lost or ():
        counts[p.index] = counts.get(p.index, 0) + 1
    return max(counts.values(), default=0)


def lost_seconds(lost: Iterable[LostPod] | None) -> float:
    """The seconds the lost attempts held the cell's GPUs, measured as the cell's occupancy is
    (controller/occupancy.py): summed per completion index, the longest index counted; x the
    cell's GPUs gives GPU-seconds."""
    by_index: dict[int | None, float] = {}
    for p in lost or ():
        by_index[p.index] = by_index.get(p.index, 0.0) + p.held_seconds
    return max(by_index.values(), default=0.0)


def with_lost_occupancy(
    outcomes: Mapping[CellKey, CellOutcome], attempts: Mapping[CellKey, Attempts], final: Collection[CellKey]
) -> dict[CellKey, CellOutcome]:
    """The outcomes with the seconds of each newly ended cell's lost attempts added to its measured
    occupancy (a cluster paid for them); recorded outcomes (`final`) already hold theirs."""
    out = dict(outcomes)
    for key, o in outcomes.items():
        a = attempts.get(key)
        if key in final or a is None or not a.lost or o.occupied_seconds is None:
            continue
        out[key] = o.model_copy(update={"occupied_seconds": o.occupied_seconds + lost_seconds(a.lost)})
    return out


def lost_gpu_hours(
    outcomes: Mapping[CellKey, CellOutcome], attempts: Mapping[CellKey, Attempts], default_gpus: int
) -> float:
    """GPU-hours held by the lost attempts of terminal cells (occupied and wasted; never protocol
    hours), at the GPUs each cell ran with."""
    total = 0.0
    for key, o in outcomes.items():
        a = attempts.get(key)
        if a is not None and a.lost:
            total += lost_seconds(a.lost) * (o.gpus if o.gpus is not None else default_gpus) / 3600.0
    return round(total, 6)
