"""Issue 12, defect 7: a cell's Pod still Running far past its deadline is noticed (stuck.py)."""

from __future__ import annotations

import pytest

from promotion_ladder.controller.reconcile import reconcile
from promotion_ladder.controller.stuck import stuck
from promotion_ladder.core.cell import Cell

from .kube import JobB, PodB, ladder_body

CELL = Cell("s1", "c0", "a100", 1)
START = "2026-11-29T10:00:00Z"


def pod(deadline=100, started=START, phase="Running", deleting=False):
    p = PodB(JobB(ladder_body(), CELL)).phase(phase)
    p.o["spec"]["activeDeadlineSeconds"] = deadline
    if started:
        p.o["status"]["startTime"] = started
    if deleting:
        p.o["metadata"]["deletionTimestamp"] = "2026-11-29T10:05:00Z"
    return p.summary()


# name: (pod, now, grace) -> (ended, failure reason substring or None)
CASES = {
    "within its deadline": (pod(), "2026-11-29T10:01:00Z", 60, (0, None)),
    "past the deadline, within the grace": (pod(), "2026-11-29T10:02:30Z", 60, (0, None)),
    "past deadline + grace: ended": (pod(), "2026-11-29T10:03:00Z", 60, (1, None)),
    "ended but still there past 2 x grace: failed": (pod(deleting=True), "2026-11-29T10:04:00Z", 60, (0, "stuck: pod")),
    "ended, waiting for its end": (pod(deleting=True), "2026-11-29T10:03:00Z", 60, (0, None)),
    "terminal pods are never stuck": (pod(phase="Succeeded"), "2026-11-29T12:00:00Z", 60, (0, None)),
    "not started yet (Pending, waiting for a GPU)": (
        pod(started=None, phase="Pending"),
        "2026-11-29T12:00:00Z",
        60,
        (0, None),
    ),
    "no deadline": (pod(deadline=None), "2026-11-29T12:00:00Z", 60, (0, None)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_stuck(name):
    p, now, grace, (n_end, why) = CASES[name]
    end, reason = stuck([p], now, grace)
    assert len(end) == n_end
    assert (reason is None) == (why is None) and (why is None or why in reason)


def test_reconcile_ends_a_stuck_pod_then_fails_the_cell():
    body = ladder_body()
    j = JobB(body, CELL).active()
    p = PodB(j)
    p.o["spec"]["activeDeadlineSeconds"] = 100
    p.o["status"]["startTime"] = START
    early = reconcile(body, None, [j.summary()], [p.summary()], set(), "2026-11-29T10:02:00Z", stuck_grace=60)
    assert early.end == [] and early.recheck_after == 40  # a stuck Pod sends no event: look again then
    r = reconcile(body, None, [j.summary()], [p.summary()], set(), "2026-11-29T10:03:00Z", stuck_grace=60)
    assert [x.name for x in r.end] == [p.o["metadata"]["name"]]
    p.o["metadata"]["deletionTimestamp"] = "2026-11-29T10:03:01Z"
    r = reconcile(body, r.status, [j.summary()], [p.summary()], set(), "2026-11-29T10:04:00Z", stuck_grace=60)
    cell = next(c for c in r.status["stages"][0]["cells"] if c["candidate"] == "c0" and c["hostBlock"] == "a100")
    assert cell["state"] == "Failed" and cell["reason"].startswith("stuck: pod") and r.end == []
