"""Issue 21, defect 2: cells that wait to start are named within a bound, and a documented
policy ends the ones that will not start (controller/scheduling.py, pure)."""

from __future__ import annotations

from datetime import UTC

import pytest

from promotion_ladder.controller.admission import Admission, Node, unfit_blocks
from promotion_ladder.controller.occupancy import epoch
from promotion_ladder.controller.reconcile import reconcile
from promotion_ladder.controller.scheduling import (
    CELLS_WAITING,
    WAIT_NOTICE_SECONDS,
    cell_wait,
    shortage_only,
    start_times,
    timed_out,
)
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import Cell

from ..unit.builders import edit, ladder_doc
from .kube import JobB, PodB, ladder_body

CELL = Cell("s1", "c1", "a100", 1)
CREATED = "2026-11-29T10:00:00Z"
T0 = epoch(CREATED)

GPUS = (
    "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient nvidia.com/gpu. "
    "preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found."
)
PVC = (
    '0/3 nodes are available: persistentvolumeclaim "corpus" not found. preemption: 0/3 nodes are available: '
    "3 Preemption is not helpful for scheduling."
)
TAINT = "0/3 nodes are available: 3 node(s) had untolerated taint {dedicated: infra}."
PRIORITY = 'pods "x" is forbidden: no PriorityClass with name no-such-class was found'
QUOTA = 'pods "x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, used: 8, limited: 8'


@pytest.mark.parametrize(
    "message, shortage",
    [
        (GPUS, True),
        ("0/3 nodes are available: 3 Insufficient cpu, 3 Insufficient memory.", True),
        ("0/1 nodes are available: 1 Too many pods.", True),
        (PVC, False),
        (TAINT, False),
        ("0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {a: b}.", False),
        ("no nodes available to schedule pods", False),
        ("", False),
    ],
    ids=["gpus", "cpu and memory", "too many pods", "missing pvc", "taint", "shortage and taint", "no nodes", "empty"],
)
def test_shortage_only(message, shortage):
    assert shortage_only(message) is shortage


def job(**kw):
    return JobB(ladder_body(), CELL).created(CREATED)


# name -> (job builder, pod builders, failed_create, unfit) ; expected (cause or None, capacity, message part)
WAITS = {
    "running": (
        lambda j: j.active(),
        [lambda j: PodB(j).running("2026-11-29T10:00:05Z")],
        None,
        None,
        (None, None, ""),
    ),
    "pending, nothing said yet": (
        lambda j: j.active(),
        [lambda j: PodB(j).phase("Pending")],
        None,
        None,
        (None, None, ""),
    ),
    "unschedulable: busy GPUs": (
        lambda j: j.active(),
        [lambda j: PodB(j).unschedulable(GPUS)],
        None,
        None,
        ("Unschedulable", True, "Insufficient nvidia.com/gpu"),
    ),
    "unschedulable: more GPUs than any node": (
        lambda j: j.active(),
        [lambda j: PodB(j).unschedulable(GPUS)],
        None,
        "trainer.gpus exceeds ...",
        ("Unschedulable", False, "trainer.gpus exceeds"),
    ),
    "unschedulable: missing PVC": (
        lambda j: j.active(),
        [lambda j: PodB(j).unschedulable(PVC)],
        None,
        None,
        ("Unschedulable", False, 'persistentvolumeclaim "corpus" not found'),
    ),
    "image pull back-off": (
        lambda j: j.active(),
        [lambda j: PodB(j).waiting("ImagePullBackOff", "Back-off pulling")],
        None,
        None,
        ("CannotStart", False, "ImagePullBackOff: Back-off pulling"),
    ),
    "container creating": (
        lambda j: j.active(),
        [lambda j: PodB(j).waiting("ContainerCreating")],
        None,
        None,
        (None, None, ""),
    ),
    "no pod, FailedCreate": (lambda j: j, [], PRIORITY, None, ("FailedCreate", False, "no PriorityClass")),
    "no pod, quota used up": (lambda j: j, [], QUOTA, None, ("FailedCreate", True, "exceeded quota")),
    "no pod, nothing said": (lambda j: j, [], None, None, ("NoPodYet", True, "no Pod yet")),
    "no pod in the cache, the Job has one": (lambda j: j.active(), [], None, None, (None, None, "")),
    "suspended by a queue": (lambda j: j.suspended(), [], None, None, (None, None, "")),
    "retrying after a failed pod": (lambda j: j, [lambda j: PodB(j).exited(1)], None, None, (None, None, "")),
    "finished": (lambda j: j.failed(), [], PRIORITY, None, (None, None, "")),
}


@pytest.mark.parametrize("name", WAITS, ids=list(WAITS))
def test_cell_wait(name):
    job_b, pod_bs, failed_create, unfit, (cause, capacity, part) = WAITS[name]
    j = job_b(job())
    pods = [b(j).summary() for b in pod_bs]
    w = cell_wait(CELL, j.summary(), pods, T0 + 100, failed_create, unfit)
    assert (w.cause if w else None, w.capacity if w else None) == (cause, capacity)
    if w is not None:
        assert part in w.message and w.describe().startswith("s1/c1/a100/1: " + cause)


@pytest.mark.parametrize(
    "capacity, age, timeout, fails",
    [
        (False, 899, 900.0, False),
        (False, 900, 900.0, True),
        (True, 10**6, 900.0, False),
        (False, 10**6, None, False),
    ],
    ids=["stall, before the timeout", "stall, at the timeout", "capacity: never", "timeout 0s: never"],
)
def test_timed_out(capacity, age, timeout, fails):
    j = job()
    pods = [PodB(j).unschedulable(GPUS if capacity else PVC, since=CREATED).summary()]
    w = cell_wait(CELL, j.summary(), pods, T0 + age)
    failed = timed_out(w, "15m", timeout, T0 + age)
    assert (failed is not None) is fails
    if fails:
        assert failed.state == "failed" and failed.reason.startswith(
            "not started within schedulingTimeout 15m: Unschedulable"
        )


def test_start_times_of_the_first_pod_that_ran():
    j = job()
    first = PodB(j).created("2026-11-29T10:00:02Z").bound("2026-11-29T10:00:12Z").running("2026-11-29T10:00:15Z")
    later = PodB(j).created("2026-11-29T10:05:00Z").bound("2026-11-29T10:05:01Z").running("2026-11-29T10:05:02Z")
    t = start_times(j.summary(), [later.summary(), first.summary()])
    assert (t.pod_created, t.scheduled, t.running) == (2.0, 12.0, 3.0)
    assert start_times(j.summary(), [PodB(j).unschedulable(GPUS).summary()]) is None


def test_start_times_of_a_queued_cell_count_from_its_admission():
    """Kueue held the Job 60 s: the start is measured from the resume, the wait is the queue's."""
    j = job().suspended("2026-11-29T10:00:00Z").resumed("2026-11-29T10:01:00Z")
    pod = PodB(j).created("2026-11-29T10:01:01Z").bound("2026-11-29T10:01:02Z").running("2026-11-29T10:01:04Z")
    t = start_times(j.summary(), [pod.summary()])
    assert (t.pod_created, t.scheduled, t.running) == (1.0, 2.0, 2.0)


NODES = [
    Node("a100-0", {"ladder.promotion.dev/host-block": "a100"}, {"nvidia.com/gpu": "8", "cpu": "96", "memory": "1Ti"}),
    Node("a100-1", {"ladder.promotion.dev/host-block": "a100"}, {"nvidia.com/gpu": "4", "cpu": "64", "memory": "1Ti"}),
    Node(
        "l40s-0", {"ladder.promotion.dev/host-block": "l40s"}, {"nvidia.com/gpu": "4", "cpu": "32", "memory": "256Gi"}
    ),
]


@pytest.mark.parametrize(
    "trainer, unfit",
    [
        ({"gpus": 4}, {}),
        ({"gpus": 8}, {"l40s": "trainer.gpus"}),
        (
            {"gpus": 9},
            {
                "a100": "nvidia.com/gpu: 9 requested, at most 8 on a node, a100-0",
                "l40s": "nvidia.com/gpu: 9 requested, at most 4 on a node, l40s-0",
            },
        ),
        (
            {"gpus": 1, "resources": {"requests": {"cpu": "5000"}}},
            {"a100": "a cell Pod's requests", "l40s": "cpu: 5000 requested, at most 32 on a node, l40s-0"},
        ),
    ],
    ids=["fits", "8 gpus: only a100", "9 gpus: nowhere", "cpu 5000: nowhere"],
)
def test_unfit_blocks(trainer, unfit):
    body = ladder_body(edit(ladder_doc(), "spec.trainer", trainer))
    got = unfit_blocks(body, load_ladder(body).spec, NODES)
    assert sorted(got) == sorted(unfit)
    for block, part in unfit.items():
        assert part in got[block] and f"host block {block}" in got[block]


def _at(seconds: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(T0 + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_stage(body, pod=None):
    """The first stage's Jobs, active; the first cell's Pod is `pod` (None: no Job has a Pod)."""
    from promotion_ladder.core.planner import plan

    cells = plan(load_ladder(body).spec, {}).to_run
    jobs = [JobB(body, c).created(CREATED) for c in cells]
    if pod is None:
        return [j.summary() for j in jobs], [], cells[0]
    return [j.active().summary() for j in jobs], [pod(jobs[0]).summary()], cells[0]


def test_a_stalled_cell_is_named_once_within_the_bound_then_failed_after_the_timeout():
    body = ladder_body(edit(ladder_doc(), "spec.schedulingTimeout", "5m"))
    jobs, pods, cell = _first_stage(body, lambda j: PodB(j).unschedulable(PVC, since=CREATED))
    quiet = reconcile(body, None, jobs, pods, set(), _at(WAIT_NOTICE_SECONDS - 5))
    assert not any(c["type"] == CELLS_WAITING for c in quiet.status["conditions"])
    assert quiet.recheck_after == pytest.approx(5.0)  # look again when it is old enough to be named
    said = reconcile(body, quiet.status, jobs, pods, set(), _at(WAIT_NOTICE_SECONDS))
    cond = next(c for c in said.status["conditions"] if c["type"] == CELLS_WAITING)
    assert cond["status"] == "True" and cond["reason"] == "Unschedulable"
    assert f"{cell.stage}/{cell.candidate}/{cell.host_block}/{cell.seed}: Unschedulable" in cond["message"]
    assert "schedulingTimeout (5m)" in cond["message"]
    assert [e[:2] for e in said.events] == [("Warning", CELLS_WAITING)]
    again = reconcile(body, said.status, jobs, pods, set(), _at(60))
    assert again.events == [] and again.status["conditions"] == said.status["conditions"]  # said once, unchanged
    failed = reconcile(body, again.status, jobs, pods, set(), _at(300))
    rec = next(
        c
        for c in failed.status["stages"][0]["cells"]
        if c["candidate"] == cell.candidate and c["hostBlock"] == cell.host_block and c["seed"] == cell.seed
    )
    assert rec["state"] == "Failed" and rec["reason"].startswith(
        "not started within schedulingTimeout 5m: Unschedulable"
    )
    assert [j.name for j in failed.end_jobs] == [jobs[0].name]
    cond = next(c for c in failed.status["conditions"] if c["type"] == CELLS_WAITING)
    assert cond["status"] == "False"  # none waits any more; the condition stays, False


def test_a_cell_waiting_for_capacity_waits_and_says_so():
    body = ladder_body()
    jobs, pods, _ = _first_stage(body, lambda j: PodB(j).unschedulable(GPUS, since=CREATED))
    r = reconcile(body, None, jobs, pods, set(), _at(10 * 3600))
    cond = next(c for c in r.status["conditions"] if c["type"] == CELLS_WAITING)
    assert cond["reason"] == "WaitingForCapacity" and "no timeout applies" in cond["message"]
    assert [e[:2] for e in r.events] == [("Normal", CELLS_WAITING)] and r.end_jobs == []
    assert all(c["state"] != "Failed" for c in r.status["stages"][0]["cells"])


def test_a_job_without_a_pod_is_read_for_its_failed_create_then_named():
    body = ladder_body()
    jobs, _, _ = _first_stage(body)
    early = reconcile(body, None, jobs, [], set(), _at(5))
    assert early.read_events == []
    asked = reconcile(body, None, jobs, [], set(), _at(12))
    assert {j.uid for j in asked.read_events} == {j.uid for j in jobs}
    named = reconcile(body, None, jobs, [], set(), _at(40), failed_create={j.uid: PRIORITY for j in jobs})
    cond = next(c for c in named.status["conditions"] if c["type"] == CELLS_WAITING)
    assert cond["reason"] == "FailedCreate" and "no PriorityClass with name no-such-class" in cond["message"]
    assert named.read_events == []


def test_unfit_host_block_is_a_stall_and_an_admission_warning():
    body = ladder_body()
    jobs, pods, _ = _first_stage(body, lambda j: PodB(j).unschedulable(GPUS, since=CREATED))
    unfit = {"a100": "trainer.gpus exceeds the allocatable of every node matching host block a100"}
    r = reconcile(body, None, jobs, pods, set(), _at(40), admission=Admission(unfit=unfit))
    sched = next(c for c in r.status["conditions"] if c["type"] == "Schedulable")
    assert sched["reason"] == "NoNodeFits" and "trainer.gpus exceeds" in sched["message"]
    cond = next(c for c in r.status["conditions"] if c["type"] == CELLS_WAITING)
    assert cond["reason"] == "Unschedulable"
    assert {e[1] for e in r.events} == {"NoNodeFits", CELLS_WAITING}


def test_cells_waiting_their_turn_are_said_in_words_that_do_not_change_with_them():
    """A ladder larger than its cluster queues hundreds of cells: the condition says what they wait
    for, not who, so it does not change (and rewrite the status) each time one starts."""
    from promotion_ladder.controller.scheduling import waiting_condition

    def waits(n, first_seed):
        out = []
        for i in range(n):
            j = JobB(ladder_body(), Cell("s1", f"c{i % 4}", "a100", first_seed + i)).created(CREATED)
            out.append(cell_wait(j.cell, j.summary(), [PodB(j).unschedulable(GPUS).summary()], T0 + 100))
        return out

    a, ev = waiting_condition(waits(12, 1), [], CREATED, "15m")
    b, again = waiting_condition(waits(3, 50), [a], _at(60), "15m")
    assert (
        a["message"]
        == b["message"]
        == ("Cells wait their turn (free room on the nodes: Insufficient nvidia.com/gpu): no timeout applies.")
    )
    assert ev[0] == "Normal" and again is None and b["lastTransitionTime"] == a["lastTransitionTime"]


def test_failed_create_events_are_listed_once_per_namespace_while_jobs_wait():
    from promotion_ladder.controller.jobevents import REREAD_SECONDS, FailedCreateEvents

    class Api:
        def __init__(self):
            self.calls, self.found = 0, {}

        def failed_creates(self, namespace):
            self.calls += 1
            return dict(self.found)

    now = [0.0]
    events, api = FailedCreateEvents(clock=lambda: now[0]), Api()
    assert events.read(api, "ns", ["j1", "j2"]) is False and api.calls == 1
    api.found = {"j2": PRIORITY}
    assert events.read(api, "ns", ["j1", "j2"]) is False and api.calls == 1  # read lately
    now[0] = REREAD_SECONDS
    assert events.read(api, "ns", ["j1", "j2"]) is True and api.calls == 2
    assert events.messages("ns") == {"j2": PRIORITY} and events.messages("other") == {}
