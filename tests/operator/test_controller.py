"""The controller's parts: the I/O order of a reconcile and its de-duplication, with a
recording fake of the API and dict-backed caches (each satisfies the Protocol the part takes)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from kubernetes.client.exceptions import ApiException

from promotion_ladder.controller.kubeapi import Node
from promotion_ladder.controller.lease import Gate
from promotion_ladder.controller.metrics import LadderMetrics
from promotion_ladder.controller.reconciler import Reconciler
from promotion_ladder.controller.workloop import WorkLoop
from promotion_ladder.controller.workqueue import WorkQueue
from promotion_ladder.core.cell import Cell

from .kube import JobB, PodB, ladder_body, result_doc

KEY = ("ns", "test")


def refusal(status: int, reason: str, body: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = body
    return exc


class FakeApi:
    def __init__(self, refuse_jobs: int | None = None, refuse_status: int | None = None, jobs_exist: bool = False):
        self.calls: list[tuple] = []
        self.jobs_exist = jobs_exist  # every Job create answers 409 (create_job returns False)
        self.rv = 100
        self.refuse_jobs = refuse_jobs
        self.refuse_status = refuse_status
        self.pods_by_job: dict = {}
        self.workloads: list[dict] = []  # Kueue's, for queueing.WorkloadChecks
        self.failed_create: dict[str, str] = {}  # Job UID -> the Job controller's FailedCreate message

    def write_status(self, ns, name, status):
        if self.refuse_status:
            self.calls.append(("status-refused",))
            raise refusal(self.refuse_status, "Bad Request", "status.gpuHours.total: Infinity")
        self.rv += 1
        self.calls.append(("status", status.get("phase"), status.get("currentStage")))
        return str(self.rv)

    def ensure_trainer_rbac(self, ns):
        self.calls.append(("rbac", ns))

    def create_job(self, ns, job):
        if self.refuse_jobs:
            raise refusal(self.refuse_jobs, "Forbidden", '{"kind": "Status", "message": "exceeded quota"}')
        self.calls.append(("job", job["metadata"]["labels"]["ladder.promotion.dev/stage"]))
        return not self.jobs_exist

    def post_event(self, body, type_, reason, message):
        self.calls.append(("event", reason))

    def dry_run_job(self, ns, job):  # admission: every Job is valid here
        pass

    def nodes(self):
        return [
            Node(f"node-{b}", {"ladder.promotion.dev/host-block": b}, {"cpu": "64", "nvidia.com/gpu": "8"})
            for b in ("a100", "l40s")
        ]

    def namespace_labels(self, name):  # admission: no Pod Security Standard enforced
        return {}

    def pods_of_job(self, ns, job_name, job_uid):
        self.calls.append(("lookup", job_name))
        return self.pods_by_job.get(job_uid, [])

    def delete_job(self, ns, name, uid):
        self.calls.append(("delete", name))

    def write_conditions(self, ns, name, conditions):
        self.calls.append(("conditions", [(c["type"], c["status"]) for c in conditions]))

    def delete_pod(self, ns, name, uid):
        self.calls.append(("delete-pod", name))

    def annotate_pod(self, ns, name, annotations):
        self.calls.append(("annotate", name, dict(annotations)))

    def failed_creates(self, ns):
        self.calls.append(("failed-creates", ns))
        return dict(self.failed_create)

    def list_workloads(self, ns):
        self.calls.append(("list-workloads", ns))
        return list(self.workloads)


class Index:
    """A cache with a fixed content (satisfies reconciler.SummaryIndex)."""

    def __init__(self, items):
        self.items = {KEY: list(items)}

    def get(self, key):
        return list(self.items.get(key, []))

    def synced(self):
        return True


class Leading:
    def held(self):
        return True


@dataclass
class Rig:
    """A reconciler over one ladder, built from fakes, with what the tests look at."""

    reconciler: Reconciler
    ladders: dict
    queue: WorkQueue
    metrics: LadderMetrics

    def loop(self) -> WorkLoop:
        return WorkLoop(self.reconciler, self.ladders, self.queue, lambda: True, self.metrics)


def controller(api, jobs=(), pods=(), body=None) -> Rig:
    ladders, queue, metrics = {KEY: body or ladder_body()}, WorkQueue(), LadderMetrics()
    r = Reconciler(api, ladders, Index(jobs), Index(pods), queue, Gate(Leading()), metrics)
    return Rig(r, ladders, queue, metrics)


def run(c: Rig) -> None:
    c.reconciler.reconcile(KEY, 0.0)


def kinds(calls):
    return [c[0] for c in calls]


def test_status_is_written_before_jobs_and_nothing_twice():
    api = FakeApi()
    c = controller(api)
    run(c)
    assert kinds(api.calls) == ["status", "rbac"] + ["job"] * 8
    api.calls.clear()
    run(c)  # jobs not in the index yet, but remembered as being created; status unchanged
    assert api.calls == []


@pytest.mark.parametrize("exists", [False, True], ids=["created", "409: adopted"])
def test_a_job_whose_create_answered_409_is_adopted_not_created_again(exists, monkeypatch):
    """Issue 12, defect 8: under load an expired create expectation caused ~389 repeated creates
    (all 409). A Job whose create says it exists is expected for 5 minutes; one just created for
    30 s (after that a watch that never showed it means it is gone: create it again)."""
    from promotion_ladder.controller import expectations

    clock = [1000.0]
    monkeypatch.setattr(expectations.time, "monotonic", lambda: clock[0])
    api = FakeApi(jobs_exist=exists)
    c = controller(api)
    run(c)
    assert kinds(api.calls).count("job") == 8
    clock[0] += 120  # the watch still shows none of them
    api.calls.clear()
    run(c)
    assert kinds(api.calls).count("job") == (0 if exists else 8)
    clock[0] += 300
    api.calls.clear()
    run(c)
    assert kinds(api.calls).count("job") == 8  # even an adopted Job the watch never shows is created again


def test_rejected_result_is_reported_once():
    body = ladder_body()
    cell = Cell("s1", "c0", "a100", 1)
    j = JobB(body, cell).active()
    bad = PodB(j).result("{nope")
    api = FakeApi()
    c = controller(api, [j.summary()], [bad.summary()])
    run(c)
    run(c)
    assert [x for x in api.calls if x[0] == "event"] == [("event", "ResultRejected")]
    assert (
        c.metrics.registry.get_sample_value(
            "ladder_result_errors_total", {"namespace": "ns", "ladder": "test", "reason": "malformed"}
        )
        == 1
    )


def test_a_rejected_result_is_remembered_on_its_pod_and_not_announced_again():
    """Issue 21, defect 4: a restarted operator (empty memory) announced every rejected document
    again. The digest written to the Pod is what a restarted one reads."""
    from promotion_ladder.controller.intake import REJECTED_ANNOTATION

    body = ladder_body()
    j = JobB(body, Cell("s1", "c0", "a100", 1)).active()
    bad = PodB(j).result("{nope")
    api = FakeApi()
    run(controller(api, [j.summary()], [bad.summary()]))
    marks = [x for x in api.calls if x[0] == "annotate"]
    assert [x[:2] for x in marks] == [("annotate", bad.o["metadata"]["name"])]
    bad.o["metadata"]["annotations"][REJECTED_ANNOTATION] = marks[0][2][REJECTED_ANNOTATION]
    restarted = FakeApi()
    run(controller(restarted, [j.summary()], [bad.summary()]))
    assert not [x for x in restarted.calls if x[:2] == ("event", "ResultRejected") or x[0] == "annotate"]


def test_a_ladder_being_deleted_is_left_alone():
    """Issue 21, defect 4: deleting a ladder raced garbage collection into result errors."""
    body = ladder_body()
    j = JobB(body, Cell("s1", "c0", "a100", 1)).active()
    api = FakeApi()
    c = controller(api, [j.summary()], [PodB(j).result("{nope").summary()])
    c.ladders[KEY]["metadata"]["deletionTimestamp"] = "2026-12-07T03:00:00Z"
    run(c)
    assert api.calls == []


def test_a_pod_read_directly_that_is_not_its_jobs_own_is_forged_not_used():
    body = ladder_body()
    cell, other = Cell("s1", "c0", "a100", 1), Cell("s1", "c1", "a100", 1)
    j, jo = JobB(body, cell).complete(), JobB(body, other).complete()
    api = FakeApi()
    # Another cell's Pod re-owned to this Job: its controller-uid label and cell labels say otherwise.
    api.pods_by_job = {
        j.o["metadata"]["uid"]: [PodB(jo).owner(j.o["metadata"]["uid"]).result(result_doc(cell, 0.5)).exited(0).obj()]
    }
    c = controller(api, [j.summary()], [])
    run(c)
    events = [x[1] for x in api.calls if x[0] == "event"]
    assert "ResultRejected" in events and "ResultLost" in events
    assert (
        c.metrics.registry.get_sample_value(
            "ladder_result_errors_total", {"namespace": "ns", "ladder": "test", "reason": "forged"}
        )
        == 1
    )
    assert ("delete", j.o["metadata"]["name"]) in api.calls  # the cell runs again


def test_a_job_without_a_pod_is_named_with_its_failed_create_message():
    """Issue 21, defect 2: a Job that cannot create its Pod (no such PriorityClass) is said with
    the Job controller's message, read once for the namespace, however many Jobs wait."""
    body = ladder_body()
    jobs = [JobB(body, Cell("s1", c, "a100", 1)).created("2026-12-07T00:00:00Z") for c in ("c0", "c1")]
    api = FakeApi()
    api.failed_create = {j.o["metadata"]["uid"]: "no PriorityClass with name no-such-class was found" for j in jobs}
    c = controller(api, [j.summary() for j in jobs], [])
    c.reconciler.status_writer.coalesce_seconds = 0.0
    run(c)
    assert api.calls.count(("failed-creates", "ns")) == 1
    run(c)
    assert api.calls.count(("failed-creates", "ns")) == 1  # listed at most every REREAD_SECONDS
    written = c.reconciler.status_writer.last_written(KEY, body["metadata"]["uid"]).status
    waiting = next(x for x in written["conditions"] if x["type"] == "CellsWaiting")
    cells = {x["candidate"]: x for x in written["stages"][0]["cells"] if x["hostBlock"] == "a100" and x["seed"] == 1}
    # waited since midnight, past the default schedulingTimeout: failed with the cause, Jobs deleted
    assert cells["c0"]["state"] == "Failed" and "no-such-class" in cells["c0"]["reason"], cells["c0"]
    assert ("delete", jobs[0].o["metadata"]["name"]) in api.calls
    assert [x for x in api.calls if x == ("event", "CellNotStarted")] == [("event", "CellNotStarted")] * 2
    assert waiting["status"] == "False"  # no cell waits any more: both failed


def test_a_cells_start_times_are_observed_once():
    body = ladder_body()
    j = JobB(body, Cell("s1", "c0", "a100", 1)).created("2026-12-07T00:00:00Z").active()
    p = PodB(j).created("2026-12-07T00:00:01Z").bound("2026-12-07T00:00:03Z").running("2026-12-07T00:00:04Z")
    api = FakeApi()
    c = controller(api, [j.summary()], [p.summary()])
    run(c)
    run(c)
    sample = c.metrics.registry.get_sample_value
    assert sample("ladder_cell_scheduling_seconds_count", {"namespace": "ns"}) == 1
    assert sample("ladder_cell_scheduling_seconds_sum", {"namespace": "ns"}) == 3.0
    assert sample("ladder_cell_start_seconds_sum", {"namespace": "ns"}) == 1.0
    assert sample("ladder_cell_pod_creation_seconds_sum", {"namespace": "ns"}) == 1.0


def test_refused_job_is_a_warning_not_a_crash():
    api = FakeApi(refuse_jobs=403)
    c = controller(api)
    run(c)
    run(c)
    assert [x for x in api.calls if x[0] == "event"] == [("event", "JobCreateFailed")]


def test_decision_then_next_stage():
    body = ladder_body()
    jobs, pods = [], []
    for cand, v in (("c0", 1.0), ("c1", 1.1), ("c2", 1.2), ("c3", 1.3)):
        for hb in ("a100", "l40s"):
            cell = Cell("s1", cand, hb, 1)
            j = JobB(body, cell).complete()
            jobs.append(j.summary())
            pods.append(PodB(j).result(result_doc(cell, v)).exited(0).summary())
    api = FakeApi()
    c = controller(api, jobs, pods)
    run(c)
    assert api.calls[0] == ("status", "Running", "s2")
    assert kinds(api.calls) == ["status", "event", "rbac"] + ["job"] * 8  # s2: 2 candidates x 2 blocks x 2 seeds
    assert c.metrics.registry.get_sample_value("ladder_decision_latency_seconds_count") == 1


def test_cell_progress_is_not_urgent_decisions_are():
    from promotion_ladder.controller.statuswriter import urgent_change

    base = {
        "phase": "Running",
        "stages": [{"name": "s1", "cells": [{"candidate": "a", "state": "Pending"}]}],
        "conditions": [{"type": "Progressing", "status": "True", "lastTransitionTime": "t0"}],
    }
    started = {**base, "stages": [{"name": "s1", "cells": [{"candidate": "a", "state": "Running"}]}]}
    done = {**base, "stages": [{"name": "s1", "cells": [{"candidate": "a", "state": "Succeeded", "value": 1.0}]}]}
    decided = {**base, "stages": [{**done["stages"][0], "decision": {"stage": "s1", "promoted": ["a"]}}]}
    assert not urgent_change(base, started) and not urgent_change(started, done)
    assert urgent_change(done, decided) and urgent_change(base, {**base, "phase": "Failed"})
    assert urgent_change(base, {**base, "observedGeneration": 2})


# -- the named parts, each on its own ------------------------------------------------------------


def test_work_queue_dedupes_and_runs_one_reconcile_per_ladder_at_a_time():
    from promotion_ladder.controller.workqueue import WorkQueue

    async def scenario():
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        q.add("a")  # waiting already: not queued twice
        q.start()
        q.add("b")
        key, _ = await q.get()
        assert key == "a"
        q.add("a")  # while its reconcile runs: waits
        assert (await q.get())[0] == "b"
        q.done("b")
        q.done("a")  # now queued once more
        assert (await asyncio.wait_for(q.get(), 1.0))[0] == "a"
        q.done("a")
        assert not q.waiting("a")

    asyncio.run(scenario())


def test_create_expectations_end_when_seen_or_expired():
    from promotion_ladder.controller.expectations import CreateExpectations

    e = CreateExpectations(ttl=30.0)
    e.expect(KEY, "j1")
    e.expect(KEY, "j2")
    assert e.pending(KEY, seen=["j1"]) == {"j2"}
    assert e.pending(KEY, seen=[]) == {"j2"}  # j1 was seen once: done with it
    short = CreateExpectations(ttl=0.0)
    short.expect(KEY, "j3")
    assert short.pending(KEY, seen=[]) == set()


def test_retryable_api_errors():
    from promotion_ladder.controller.kubeapi import retryable

    def err(status):  # an API server's refusal, or a connection that broke (urllib3's error)
        from urllib3.exceptions import ProtocolError

        return ProtocolError("connection dropped") if status is None else ApiException(status=status)

    cases = {
        "connection": (None, True),
        "500": (500, True),
        "503": (503, True),
        "429": (429, True),
        "403 quota": (403, False),
        "422 invalid": (422, False),
        "409": (409, False),
    }
    for name, (status, want) in cases.items():
        assert retryable(err(status)) is want, name


class WriterApi(FakeApi):
    """FakeApi whose status write reports the ladder gone when asked to."""

    def __init__(self, gone=False):
        super().__init__()
        self.gone = gone

    def write_status(self, ns, name, status):
        self.calls.append(("status", status.get("phase")))
        return None if self.gone else str(len(self.calls))


def test_status_writer_pairs_events_with_the_write():
    from promotion_ladder.controller.statuswriter import StatusWriter, WriteResult

    body = ladder_body()
    base = {"phase": "Running", "stages": [{"name": "s1", "cells": [{"candidate": "a", "state": "Pending"}]}]}
    progress = {**base, "stages": [{"name": "s1", "cells": [{"candidate": "a", "state": "Running"}]}]}
    cases = {
        # name: (api gone?, wrote just before?, new status, events) -> (result, calls)
        "first write": (False, False, progress, [], WriteResult.WRITTEN, [("status", "Running")]),
        "progress soon after a write is deferred": (False, True, progress, [], WriteResult.DEFERRED, []),
        "an Event makes the write urgent": (
            False,
            True,
            progress,
            [("Normal", "StageDecided", "m")],
            WriteResult.WRITTEN,
            [("status", "Running"), ("event", "StageDecided")],
        ),
        "no Event when the write finds no ladder": (
            True,
            False,
            progress,
            [("Normal", "StageDecided", "m")],
            WriteResult.GONE,
            [("status", "Running")],
        ),
        "unchanged status: Events only": (
            False,
            False,
            base,
            [("Warning", "X", "m")],
            WriteResult.UNCHANGED,
            [("event", "X")],
        ),
    }
    for name, (gone, recent, new, events, want, calls) in cases.items():
        api = WriterApi(gone)
        w = StatusWriter(api, coalesce_seconds=60.0)
        if recent:
            w.write(KEY, body, {}, base, [])
            api.calls.clear()
        result, _ = w.write(KEY, body, base, new, events)
        assert (result, api.calls) == (want, calls), name


def test_failing_reconcile_says_so_and_backs_off():
    """Issue 12, defect 3: a reconcile that fails sets ReconcileError and posts a Warning once,
    then waits (5 s, doubling) instead of retrying silently every few seconds, also when
    watch events keep arriving."""
    from promotion_ladder.controller.failures import retry_delay

    assert [retry_delay(n) for n in (1, 2, 3, 4, 10, 100)] == [5, 10, 20, 40, 300, 300]
    api = FakeApi(refuse_status=400)
    c = controller(api)

    loop = c.loop()

    async def scenario():
        await loop.start()
        c.queue.add(KEY)
        for _ in range(200):
            if any(x[0] == "event" for x in api.calls):
                break
            await asyncio.sleep(0.01)
        for _ in range(20):  # a burst of watch events during the backoff
            c.queue.add(KEY)
            await asyncio.sleep(0.01)
        await loop.stop()

    asyncio.run(scenario())
    assert api.calls == [("status-refused",), ("conditions", [("ReconcileError", "True")]), ("event", "ReconcileError")]
    assert loop.failures(KEY) == 1
    assert c.metrics.registry.get_sample_value("ladder_reconcile_errors_total") == 1


def test_complete_job_without_its_pod_in_the_cache_is_looked_up_not_failed():
    """Issue 12, defect 1: after a restart under load a Complete Job's Pod may be missing from
    (or stale in) the cache; its Pods are read directly and the result counts. A Job whose Pods
    are really gone is run again, never recorded as failed."""
    body = ladder_body()
    present, gone = Cell("s1", "c0", "a100", 1), Cell("s1", "c1", "a100", 1)
    jp, jg = JobB(body, present).complete(), JobB(body, gone).complete()
    api = FakeApi()
    api.pods_by_job = {jp.o["metadata"]["uid"]: [PodB(jp).result(result_doc(present, 1.25)).exited(0).obj()]}
    c = controller(api, [jp.summary(), jg.summary()], [])
    c.reconciler.status_writer.coalesce_seconds = 0.0

    def cells():
        written = c.reconciler.status_writer.last_written(KEY, body["metadata"]["uid"]).status
        return {x["candidate"]: x for x in written["stages"][0]["cells"] if x["hostBlock"] == "a100"}

    run(c)
    assert ("lookup", jp.o["metadata"]["name"]) in api.calls and ("delete", jg.o["metadata"]["name"]) in api.calls
    assert ("event", "ResultLost") in api.calls
    assert cells()["c0"]["state"] == "Running" and cells()["c1"]["state"] == "Running"  # nothing failed
    run(c)
    assert cells()["c0"]["state"] == "Succeeded" and cells()["c0"]["value"] == 1.25
    assert cells()["c1"]["state"] != "Failed"


class Standby:
    def held(self):
        return False


GATE_CASES = {
    # name: (leading, SIGTERM came) -> what one reconcile of a new ladder does
    "leading: status, RBAC, Jobs": (True, False, ["status", "rbac"] + ["job"] * 8),
    "standby: nothing": (False, False, []),
    "stopping: nothing": (True, True, []),
}


@pytest.mark.parametrize("leading,stopping,want", GATE_CASES.values(), ids=GATE_CASES.keys())
def test_only_an_open_gate_lets_a_reconcile_write(leading, stopping, want):
    """Only the holder of the Lease works, and nothing starts once SIGTERM came (issue 12,
    defect 8: a stopping operator went on creating Jobs beside its successor)."""
    api, ladders, queue = FakeApi(), {KEY: ladder_body()}, WorkQueue()
    gate = Gate(Leading() if leading else Standby())
    if stopping:
        gate.close()
    Reconciler(api, ladders, Index([]), Index([]), queue, gate, LadderMetrics()).reconcile(KEY, 0.0)
    assert kinds(api.calls) == want


def test_a_wake_up_is_one_timer_per_ladder_the_earliest():
    from promotion_ladder.controller.workqueue import WorkQueue

    async def scenario():
        q: WorkQueue[str] = WorkQueue()
        q.start()
        q.wake("a", 0.05)
        q.wake("a", 10.0)  # later than the one set: no second timer
        key, _ = await asyncio.wait_for(q.get(), 1.0)
        q.done(key)
        assert key == "a" and not q.waiting("a")
        await asyncio.sleep(0.1)
        q.wake("a", 0.01)  # the earlier one has fired: a new one is set
        assert (await asyncio.wait_for(q.get(), 1.0))[0] == "a"

    asyncio.run(scenario())


def test_a_warning_is_posted_once_per_cause():
    from promotion_ladder.controller.announcer import Announcer

    api, body = FakeApi(), ladder_body()
    a = Announcer(api, LadderMetrics())
    for cause in ("ns/test:stuck:p1", "ns/test:stuck:p1", "ns/test:stuck:p2"):
        a.warn_once(body, "CellStuck", cause, "m")
    assert api.calls == [("event", "CellStuck")] * 2
