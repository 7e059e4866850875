"""The controller's I/O order and de-duplication, with a recording fake of the API."""

from __future__ import annotations

import asyncio

from promotion_ladder.controller.handlers import Controller
from promotion_ladder.controller.metrics import LadderMetrics
from promotion_ladder.core.planner import Cell

from .kube import JobB, PodB, ladder_body, result_doc

KEY = ("ns", "test")


class FakeApi:
    def __init__(self, refuse_jobs: int | None = None, refuse_status: int | None = None):
        self.calls: list[tuple] = []
        self.rv = 100
        self.refuse_jobs = refuse_jobs
        self.refuse_status = refuse_status

    def write_status(self, ns, name, status):
        if self.refuse_status:
            self.calls.append(("status-refused",))
            exc = Exception("Bad Request")
            exc.status, exc.reason, exc.body = self.refuse_status, "Bad Request", "status.gpuHours.total: Infinity"
            raise exc
        self.rv += 1
        self.calls.append(("status", status.get("phase"), status.get("currentStage")))
        return str(self.rv)

    def ensure_trainer_rbac(self, ns):
        self.calls.append(("rbac", ns))

    def create_job(self, ns, job):
        if self.refuse_jobs:
            exc = Exception("Forbidden")
            exc.status, exc.reason, exc.body = self.refuse_jobs, "Forbidden", "quota"
            raise exc
        self.calls.append(("job", job["metadata"]["labels"]["ladder.promotion.dev/stage"]))
        return True

    pods_by_job: dict = {}

    def pods_of_job(self, ns, job_name, job_uid):
        self.calls.append(("lookup", job_name))
        return self.pods_by_job.get(job_uid, [])

    def delete_job(self, ns, name, uid):
        self.calls.append(("delete", name))

    def write_conditions(self, ns, name, conditions):
        self.calls.append(("conditions", [(c["type"], c["status"]) for c in conditions]))

    def post_event(self, body, type_, reason, message):
        self.calls.append(("event", reason))


def controller(api, jobs=(), pods=()):
    c = Controller(LadderMetrics(), api=api)
    c.jobs_index = {KEY: list(jobs)}
    c.pods_index = {KEY: list(pods)}
    c.ladders[KEY] = ladder_body()
    return c


def run(c):
    asyncio.run(c._reconcile(KEY, 0.0))


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
    assert c.metrics.registry.get_sample_value(
        "ladder_result_errors_total", {"namespace": "ns", "ladder": "test", "reason": "malformed"}) == 1


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
    from promotion_ladder.controller.handlers import urgent_change

    base = {"phase": "Running", "stages": [{"name": "s1", "cells": [{"candidate": "a", "state": "Pending"}]}],
            "conditions": [{"type": "Progressing", "status": "True", "lastTransitionTime": "t0"}]}
    started = {**base, "stages": [{"name": "s1", "cells": [{"candidate": "a", "state": "Running"}]}]}
    done = {**base, "stages": [{"name": "s1", "cells": [{"candidate": "a", "state": "Succeeded", "value": 1.0}]}]}
    decided = {**base, "stages": [{**done["stages"][0], "decision": {"stage": "s1", "promoted": ["a"]}}]}
    assert not urgent_change(base, started) and not urgent_change(started, done)
    assert urgent_change(done, decided) and urgent_change(base, {**base, "phase": "Failed"})
    assert urgent_change(base, {**base, "observedGeneration": 2})


def test_failing_reconcile_says_so_and_backs_off():
    """Issue 12, defect 3: a reconcile that fails sets ReconcileError and posts a Warning once,
    then waits (5 s, doubling) instead of retrying silently every few seconds, also when
    watch events keep arriving."""
    from promotion_ladder.controller.failures import retry_delay

    assert [retry_delay(n) for n in (1, 2, 3, 4, 10, 100)] == [5, 10, 20, 40, 300, 300]
    api = FakeApi(refuse_status=400)
    c = controller(api)

    async def scenario():
        await c.start()
        c.enqueue(KEY)
        for _ in range(200):
            if any(x[0] == "event" for x in api.calls):
                break
            await asyncio.sleep(0.01)
        for _ in range(20):  # a burst of watch events during the backoff
            c.enqueue(KEY)
            await asyncio.sleep(0.01)
        await c.stop()

    asyncio.run(scenario())
    assert api.calls == [("status-refused",), ("conditions", [("ReconcileError", "True")]), ("event", "ReconcileError")]
    assert c._failures[KEY] == 1
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
    run(c)
    assert ("lookup", jp.o["metadata"]["name"]) in api.calls and ("delete", jg.o["metadata"]["name"]) in api.calls
    assert ("event", "ResultLost") in api.calls
    cells = {x["candidate"]: x for x in c.written[KEY][1]["stages"][0]["cells"] if x["hostBlock"] == "a100"}
    assert cells["c0"]["state"] == "Running" and cells["c1"]["state"] == "Running"  # nothing failed
    c._last_write.clear()
    run(c)
    cells = {x["candidate"]: x for x in c.written[KEY][1]["stages"][0]["cells"] if x["hostBlock"] == "a100"}
    assert cells["c0"]["state"] == "Succeeded" and cells["c0"]["value"] == 1.25
    assert cells["c1"]["state"] != "Failed"
