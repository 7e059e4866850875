"""Cells behind Kueue, as data: suspended Jobs -> Queued cells and their waits, deleted Pods ->
lost attempts, Workloads -> a queue named as missing or too small, a down webhook -> backoff
and one Event. The Workload and Job bodies are shaped as benchmarks/kueue-spike.md recorded
them from Kueue v0.17.0."""

from __future__ import annotations

import pytest

from promotion_ladder.controller.jobcreator import MAX_RETRY_SECONDS, RETRY_SECONDS
from promotion_ladder.controller.metrics import LadderMetrics
from promotion_ladder.controller.queueing import QUEUE_CONDITION, LostPods, attempts_seen, lost_pod, queue_problem
from promotion_ladder.controller.reconcile import reconcile
from promotion_ladder.core.clock import epoch
from promotion_ladder.core.status import parse_status

from ..unit.builders import edit, ladder_doc
from .kube import JobB, PodB, ladder_body, result_doc
from .test_controller import KEY, FakeApi, controller, kinds, refusal, run
from .test_reconcile import cells

NOW = "2026-12-07T03:01:00Z"
QUEUED_BODY = ladder_body(edit(ladder_doc(), "spec.queueName", "ladder-queue"))


def workload(job: JobB, reason: str, message: str, status: str = "False") -> dict:
    return {
        "metadata": {
            "name": f"job-{job.o['metadata']['name']}-1a2b3",
            "ownerReferences": [{"kind": "Job", "uid": job.o["metadata"]["uid"], "controller": True}],
        },
        "status": {"conditions": [{"type": "QuotaReserved", "status": status, "reason": reason, "message": message}]},
    }


def queued_job(body: dict, i: int = 0, since: str = "2026-12-07T03:00:00Z") -> JobB:
    return JobB(body, cells(body, 0, ["c0", "c1", "c2", "c3"])[i]).created(since).suspended(since)


def test_a_suspended_job_is_a_queued_cell_holding_no_gpu():
    body = QUEUED_BODY
    q, r = (
        queued_job(body, 0),
        JobB(body, cells(body, 0, ["c0"])[1]).created("2026-12-07T03:00:00Z").resumed("2026-12-07T03:00:09Z").active(),
    )
    out = reconcile(body, None, [q.summary(), r.summary()], [], set(), NOW)
    status = parse_status(out.status)
    states = {(c.candidate, c.host_block): c for c in status.stages[0].cells}
    assert states[("c0", "a100")].state == "Queued"
    assert states[("c0", "a100")].attempts.queued_since == "2026-12-07T03:00:00Z"
    assert states[("c0", "l40s")].state == "Running"
    assert states[("c0", "l40s")].attempts.queued_seconds == 9.0
    m = LadderMetrics()
    m.observe("ns", "test", out.spec, status)
    assert m.registry.get_sample_value("ladder_gpus_in_use", {"namespace": "ns", "ladder": "test"}) == 1
    assert (
        m.registry.get_sample_value(
            "ladder_cells", {"namespace": "ns", "ladder": "test", "stage": "s1", "state": "Queued"}
        )
        == 1
    )
    assert m.registry.get_sample_value("ladder_cell_queue_seconds_count", {"namespace": "ns", "ladder": "test"}) == 1
    assert m.registry.get_sample_value("ladder_cell_queue_seconds_sum", {"namespace": "ns", "ladder": "test"}) == 9.0
    m.observe("ns", "test", out.spec, status)  # the same record: the same wait, observed once
    assert m.registry.get_sample_value("ladder_cell_queue_seconds_count", {"namespace": "ns", "ladder": "test"}) == 1


def test_queued_cells_count_against_the_parallelism():
    body = ladder_body(edit(edit(ladder_doc(), "spec.queueName", "q"), "spec.parallelism", 2))
    out = reconcile(body, None, [queued_job(body, 0).summary(), queued_job(body, 1).summary()], [], set(), NOW)
    assert out.create == []


def test_attempts_seen_from_the_job():
    body = QUEUED_BODY
    seen = attempts_seen(queued_job(body, 0, "2026-12-07T03:00:05Z").summary())
    assert seen.queued and seen.wait_began == epoch("2026-12-07T03:00:05Z")
    done = JobB(body, cells(body, 0, ["c0"])[0]).resumed("2026-12-07T03:00:09Z").complete()
    done.suspended("2026-12-07T03:01:00Z")
    assert not attempts_seen(done.summary()).queued  # a finished Job waits for nothing


def sigterm(pod: PodB, at: str) -> PodB:
    """The last view of a preempted trainer: SIGTERM answered with exit 143 at `at`."""
    pod.exited(143)
    pod.o["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = at
    return pod


@pytest.mark.parametrize(
    "pod, job_finished_at, want",
    [
        pytest.param(PodB(queued_job(QUEUED_BODY)).bound("2026-12-07T03:00:10Z"), None, 20.0, id="preempted-running"),
        pytest.param(
            sigterm(PodB(queued_job(QUEUED_BODY)).bound("2026-12-07T03:00:10Z"), "2026-12-07T03:00:25Z"),
            None,
            15.0,
            id="preempted-exit-143",
        ),
        pytest.param(PodB(queued_job(QUEUED_BODY)), None, None, id="never-bound-held-nothing"),
        pytest.param(
            PodB(queued_job(QUEUED_BODY)).bound("2026-12-07T03:00:10Z").exited(0), None, None, id="succeeded-is-no-loss"
        ),
        pytest.param(
            PodB(queued_job(QUEUED_BODY)).bound("2026-12-07T03:00:10Z"),
            "2026-12-07T03:00:29Z",
            None,
            id="deleted-after-its-job-finished",
        ),
        pytest.param(
            PodB(queued_job(QUEUED_BODY)).bound("2026-12-07T03:00:10Z"),
            "2026-12-07T03:00:31Z",
            20.0,
            id="deleted-before-its-job-finished",
        ),
    ],
)
def test_a_deleted_pod_is_a_lost_attempt_only_when_it_held_gpus_before_its_cell_ended(pod, job_finished_at, want):
    lost = lost_pod(pod.summary(), epoch(job_finished_at), epoch("2026-12-07T03:00:30Z") or 0.0)
    assert (None if lost is None else lost.held_seconds) == want


def test_a_preempted_attempt_is_recorded_and_its_seconds_are_occupied_not_protocol():
    body = QUEUED_BODY
    job = JobB(body, cells(body, 0, ["c0"])[0]).created("2026-12-07T03:00:00Z")
    first = PodB(job, name="first").bound("2026-12-07T03:00:01Z")
    deleted = LostPods()
    deleted.deleted(KEY, first.summary(), epoch("2026-12-07T03:00:05Z"))
    job.resumed("2026-12-07T03:00:20Z").complete()
    second = (
        PodB(job, name="second")
        .bound("2026-12-07T03:00:20Z")
        .result(result_doc(job.cell, 1.0, train_seconds=2.0))
        .exited(0)
    )
    second.o["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-12-07T03:00:30Z"
    out = reconcile(body, None, [job.summary()], [second.summary()], set(), NOW, deleted=deleted.of(KEY))
    status = parse_status(out.status)
    cell = next(c for c in status.stages[0].cells if c.candidate == "c0" and c.host_block == "a100")
    assert cell.state == "Succeeded"
    assert [(p.pod, p.held_seconds) for p in cell.attempts.lost] == [("first", 4.0)]
    assert cell.occupied_seconds == 14.0  # 10 s of the second attempt + 4 s of the lost one
    assert status.gpu_hours.occupied.lost == pytest.approx(4.0 / 3600, abs=1e-6)


@pytest.mark.parametrize(
    "reason, message, want_reason, want_queue",
    [
        pytest.param(
            "Inadmissible", "LocalQueue ladder-queue doesn't exist", "QueueMissing", "ladder-queue", id="no-local-queue"
        ),
        pytest.param(
            "Inadmissible",
            "ClusterQueue no-such-cluster-queue doesn't exist",
            "QueueMissing",
            "no-such-cluster-queue",
            id="no-cluster-queue",
        ),
        pytest.param(
            "Pending",
            "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor "
            "a100, previously considered podsets requests (0) + current podset request (8) > maximum capacity (4)",
            "QueueCannotFit",
            "ladder-queue",
            id="never-fits",
        ),
        pytest.param(
            "Pending",
            "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu "
            "in flavor a100, 1 more needed",
            None,
            None,
            id="waits-for-quota",
        ),
    ],
)
def test_queue_problem_from_the_workloads(reason, message, want_reason, want_queue):
    job = queued_job(QUEUED_BODY)
    problem = queue_problem([workload(job, reason, message)], {job.o["metadata"]["uid"]: "j"}, "ladder-queue")
    assert (problem.reason if problem else None) == want_reason
    assert (problem.queue if problem else None) == want_queue
    if problem:
        assert want_queue in problem.message


def test_a_missing_queue_is_a_condition_and_one_event_and_clears_when_fixed():
    job = queued_job(QUEUED_BODY)
    api = FakeApi()
    api.workloads = [workload(job, "Inadmissible", "LocalQueue ladder-queue doesn't exist")]
    c = controller(api, jobs=[job.summary()], body=QUEUED_BODY)
    run(c)
    status = c.reconciler.status_writer.last_written(KEY, QUEUED_BODY["metadata"]["uid"]).status
    cond = next(x for x in status["conditions"] if x["type"] == QUEUE_CONDITION)
    assert cond["status"] == "False" and cond["reason"] == "QueueMissing" and "ladder-queue" in cond["message"]
    assert ("event", "QueueMissing") in api.calls
    assert KEY in c.queue._wake_at  # looked at again while cells wait (the queue is not started: no timer runs)
    c.ladders[KEY] = {**QUEUED_BODY, "status": status}
    api.calls.clear()
    c.reconciler.workloads.forget(KEY)
    run(c)
    assert ("event", "QueueMissing") not in api.calls  # said once
    api.workloads = [workload(job, "Pending", "insufficient unused quota, 1 more needed")]
    c.reconciler.workloads.forget(KEY)
    run(c)
    status = c.reconciler.status_writer.last_written(KEY, QUEUED_BODY["metadata"]["uid"]).status
    assert not any(x["type"] == QUEUE_CONDITION for x in status["conditions"])


def test_a_down_webhook_backs_off_and_is_named_once(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("promotion_ladder.controller.jobcreator.time.monotonic", lambda: clock[0])
    api = FakeApi()
    down = refusal(
        500,
        "Internal Server Error",
        '{"kind": "Status", "message": "Internal error occurred: failed '
        'calling webhook \\"mjob.kb.io\\": failed to call webhook: Post \\"https://kueue-webhook-service.'
        'kueue-system.svc:443/mutate-batch-v1-job\\": connect: connection refused"}',
    )

    def create_job(ns, job):
        api.calls.append(("create-refused",))
        raise down

    api.create_job = create_job
    c = controller(api, body=QUEUED_BODY)
    run(c)
    tries = kinds(api.calls).count("create-refused")
    assert tries == 8 and kinds(api.calls).count("event") == 1
    assert ("event", "WebhookUnavailable") in api.calls
    waits = []
    for _ in range(6):
        api.calls.clear()
        run(c)  # woken by anything before the backoff ends: no create
        assert "create-refused" not in kinds(api.calls)
        left = c.reconciler.creator.backing_off(KEY)
        assert left is not None
        waits.append(left)
        clock[0] += left + 0.1
        run(c)  # after it: one round of creates, refused again; no second Event
        assert kinds(api.calls).count("create-refused") == 8 and "event" not in kinds(api.calls)
    assert waits[0] == RETRY_SECONDS and waits[-1] == MAX_RETRY_SECONDS and waits == sorted(waits)
    api.create_job = lambda ns, job: True  # Kueue answers again
    clock[0] += MAX_RETRY_SECONDS + 1
    run(c)
    assert c.reconciler.creator.backing_off(KEY) is None


def test_a_queued_cell_is_no_stall_and_never_times_out():
    """A cell Kueue holds for an hour under schedulingTimeout 1m: Queued, not failed, not a
    CellsWaiting stall (issue 21's policy is for cells the cluster cannot start)."""
    body = ladder_body(edit(edit(ladder_doc(), "spec.queueName", "gpus"), "spec.schedulingTimeout", "1m"))
    job = queued_job(body, 0, since="2026-12-07T02:00:00Z")
    out = reconcile(body, None, [job.summary()], [], set(), NOW)
    status = parse_status(out.status)
    cell = next(c for c in status.stages[0].cells if c.candidate == "c0" and c.host_block == "a100")
    assert cell.state == "Queued"
    assert not any(c["type"] == "CellsWaiting" and c["status"] == "True" for c in out.status["conditions"])
    assert out.end_jobs == [] and out.read_events == []
