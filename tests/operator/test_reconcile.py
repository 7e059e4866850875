"""One reconcile as data: cluster view in, status + Jobs + Events out."""

from __future__ import annotations

import json

from promotion_ladder.controller.jobs import cell_job_name
from promotion_ladder.controller.reconcile import merge_known_status, reconcile
from promotion_ladder.core.api import frozen_hash, load_ladder
from promotion_ladder.core.cell import Cell, CellOutcome
from promotion_ladder.core.status import simulate

from ..unit.builders import edit, funnel_stages, ladder_doc
from .kube import JobB, PodB, ladder_body, result_doc

NOW = "2026-11-22T20:00:00Z"
VALUES = {"c0": 1.0, "c1": 1.1, "c2": 1.2, "c3": 1.3}


def cells(body, stage_index, entering):
    spec = load_ladder(body).spec
    st = spec.stages[stage_index]
    return [Cell(st.name, c, hb, s) for c in entering for hb, s in st.cells()]


def finished(body, cs, values=VALUES):
    """Jobs and pods of cells that all reported a value."""
    jobs, pods = [], []
    for c in cs:
        j = JobB(body, c).complete()
        jobs.append(j.summary())
        pods.append(PodB(j).result(result_doc(c, values[c.candidate] + 0.01 * c.seed)).exited(0).summary())
    return jobs, pods


def test_new_ladder_creates_first_stage_and_records_hash():
    body = ladder_body()
    r = reconcile(body, None, [], [], set(), NOW)
    assert [j["metadata"]["name"] for j in r.create] == [cell_job_name("test", c) for c in cells(body, 0, list(VALUES))]
    assert r.status["phase"] == "Running" and r.status["currentStage"] == "s1"
    assert r.status["frozenHash"] == frozen_hash(load_ladder(body).spec)
    assert r.status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in r.status["conditions"]} == {
        "Progressing": "True",
        "Complete": "False",
        "Failed": "False",
    }
    assert r.events == []


def test_existing_and_creating_jobs_are_not_created_again():
    body = ladder_body()
    cs = cells(body, 0, list(VALUES))
    running = [JobB(body, cs[0]).active().summary()]
    r = reconcile(body, None, running, [], {cell_job_name("test", cs[1])}, NOW)
    assert [j["metadata"]["name"] for j in r.create] == [cell_job_name("test", c) for c in cs[2:]]
    st = r.status["stages"][0]["cells"]
    assert [c["state"] for c in st][:2] == ["Running", "Pending"]


def test_parallelism_caps_running_cells():
    body = ladder_body(edit(ladder_doc(), "spec.parallelism", 3))
    cs = cells(body, 0, list(VALUES))
    r = reconcile(body, None, [JobB(body, cs[0]).active().summary()], [], set(), NOW)
    assert len(r.create) == 2


def test_stage_decision_creates_next_stage_and_an_event():
    body = ladder_body()
    jobs, pods = finished(body, cells(body, 0, list(VALUES)))
    r = reconcile(body, None, jobs, pods, set(), NOW)
    assert r.status["stages"][0]["decision"]["promoted"] == ["c0", "c1"]
    assert {j["metadata"]["labels"]["ladder.promotion.dev/candidate"] for j in r.create} == {"c0", "c1"}
    assert all(j["metadata"]["labels"]["ladder.promotion.dev/stage"] == "s2" for j in r.create)
    assert [(t, reason) for t, reason, _ in r.events] == [("Normal", "StageDecided")]
    assert "promoted c0, c1" in r.events[0][2]
    assert [d.stage for d in r.new_decisions] == ["s1"]


def test_completed_ladder_matches_simulate():
    body = ladder_body()
    jobs, pods = finished(body, cells(body, 0, list(VALUES)))
    r1 = reconcile(body, None, jobs, pods, set(), NOW)
    j2, p2 = finished(body, cells(body, 1, ["c0", "c1"]))
    r2 = reconcile(body, r1.status, jobs + j2, pods + p2, set(), NOW)
    assert r2.status["phase"] == "Succeeded" and r2.create == []
    assert [e[1] for e in r2.events] == ["StageDecided", "LadderSucceeded"]
    recorded = {}
    for p in pods + p2:
        d = json.loads(p.result)
        recorded[(d["stage"], d["candidate"], d["hostBlock"], d["seed"])] = CellOutcome(
            "succeeded", d["value"], train_seconds=d["trainSeconds"]
        )
    sim, _ = simulate(load_ladder(body).spec, recorded)
    operator_only = ("observedGeneration", "conditions")
    assert {k: v for k, v in without_launch(r2.status).items() if k not in operator_only} == {
        k: v for k, v in sim.wire().items() if k not in operator_only
    }
    # Each finished cell records what it ran with (issue 12, defect 5), from its Job and Pod.
    cell = r2.status["stages"][0]["cells"][0]
    assert (
        cell["gpus"] == 1
        and cell["node"] == "node-1"
        and r2.status["stages"][0]["image"] == "ghcr.io/promotion-ladder/trainer:0.1.0"
    )


def without_launch(status: dict) -> dict:
    """The status without what cells ran with (gpus, node, image): `ladder simulate` of recorded
    values has no launch facts to record."""
    out = json.loads(json.dumps(status))
    for st in out.get("stages") or []:
        st.pop("image", None)
        for c in st.get("cells") or []:
            for k in ("gpus", "node", "image"):
                c.pop(k, None)
    return out


def test_recorded_outcomes_and_decisions_are_final():
    """Restart after the jobs of stage 1 were cleaned up: nothing is re-run or re-decided."""
    body = ladder_body()
    jobs, pods = finished(body, cells(body, 0, list(VALUES)))
    r1 = reconcile(body, None, jobs, pods, set(), NOW)
    # Later, pods say something else (e.g. forged after the fact) or are gone: the record wins.
    other = {"c0": 9.0, "c1": 9.0, "c2": 0.1, "c3": 0.1}
    jobs_b, pods_b = finished(body, cells(body, 0, list(VALUES)), values=other)
    for view_jobs, view_pods in (([], []), (jobs_b, pods_b)):
        r = reconcile(body, r1.status, view_jobs, view_pods, set(), NOW)
        assert r.status["stages"][0] == r1.status["stages"][0]
        assert r.events == []
        assert all(j["metadata"]["labels"]["ladder.promotion.dev/stage"] == "s2" for j in r.create)


def test_status_is_stable_when_nothing_changed():
    body = ladder_body()
    r1 = reconcile(body, None, [], [], set(), "2026-11-22T20:00:00Z")
    r2 = reconcile(body, r1.status, [], [], set(), "2026-11-22T21:00:00Z")
    assert r2.status == r1.status  # lastTransitionTime kept: no status write


def test_frozen_spec_change_stops_and_creates_nothing():
    body = ladder_body()
    jobs, pods = finished(body, cells(body, 0, list(VALUES)))
    r1 = reconcile(body, None, jobs, pods, set(), NOW)
    edited = ladder_body(edit(ladder_doc(), "spec.stages.1.budget", "20m"), generation=2)
    r = reconcile(edited, r1.status, jobs, pods, set(), NOW)
    assert r.create == []
    assert r.status["phase"] == "Failed"
    failed = next(c for c in r.status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "FrozenSpecChanged"
    assert r.status["stages"] == r1.status["stages"]  # the record is kept
    assert r.status["observedGeneration"] == 2
    assert [e[1] for e in r.events] == ["FrozenSpecChanged"]
    again = reconcile(edited, r.status, jobs, pods, set(), NOW)
    assert again.events == [] and again.status == r.status


def test_non_frozen_edit_is_fine():
    body = ladder_body()
    r1 = reconcile(body, None, [], [], set(), NOW)
    edited = ladder_body(edit(ladder_doc(), "spec.trainer", {"image": "other:1"}), generation=2)
    r = reconcile(edited, r1.status, [], [], set(), NOW)
    assert r.status["phase"] == "Running" and len(r.create) == 8
    assert r.create[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "other:1"


def test_invalid_spec_fails_with_the_field():
    body = ladder_body(edit(ladder_doc(), "spec.stages.0.promote.keep", ["nobody"]))
    r = reconcile(body, None, [], [], set(), NOW)
    assert r.status["phase"] == "Failed" and "keep[0]" in r.status["message"] and r.create == []


def test_failed_cells_rank_last_and_everyone_failing_fails_the_ladder():
    body = ladder_body()
    jobs, pods = [], []
    for c in cells(body, 0, list(VALUES)):
        j = JobB(body, c).failed()
        jobs.append(j.summary())
        pods.append(PodB(j).exited(1).summary())
    r = reconcile(body, None, jobs, pods, set(), NOW)
    assert r.status["phase"] == "Failed" and r.create == []
    assert [e[1] for e in r.events] == ["StageDecided", "LadderFailed"]
    failed = next(c for c in r.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NoCandidateCompleted"


def test_forged_result_is_reported_and_not_counted():
    body = ladder_body()
    cs = cells(body, 0, list(VALUES))
    j = JobB(body, cs[0]).active()
    pods = [PodB(j).result(result_doc(cs[1], 0.0)).summary()]
    r = reconcile(body, None, [j.summary()], pods, set(), NOW)
    assert [x.reason for x in r.rejections] == ["identity"]
    assert r.status["stages"][0]["cells"][0]["state"] == "Running"


def test_merge_known_status_prefers_the_fuller_record():
    body = ladder_body()
    jobs, pods = finished(body, cells(body, 0, list(VALUES)))
    r0 = reconcile(body, None, [], [], set(), NOW)
    r1 = reconcile(body, None, jobs, pods, set(), NOW)
    assert merge_known_status(r0.status, r1.status) == r1.status
    assert merge_known_status(r1.status, r0.status) == r1.status  # a stale write loses to the watched body
    assert merge_known_status(None, None) == {}
    edited = {**r1.status, "frozenHash": "sha256:other"}  # same record, edited by someone else later
    assert merge_known_status(edited, r1.status, "12", "11") == edited
    assert merge_known_status(edited, r1.status, "10", "11") == r1.status


def test_status_of_a_500_candidate_ladder_stays_small():
    """The status holds every cell (compact camelCase, nulls dropped) and one decision per stage.
    Worst realistic case: 500 candidates x 4 cells at stage 1, 100 x 4 at stage 2, 10 x 8 at stage 3."""
    names = [f"cand-{i:03d}" for i in range(500)]
    stages = funnel_stages()
    body = ladder_body(ladder_doc(candidates=names, stages=stages))
    spec = load_ladder(body).spec
    import random

    rnd = random.Random(1)
    recorded = {}
    for st in spec.stages:
        for c in names:
            for hb, s in st.cells():
                train = rnd.uniform(100, 4000)  # and each cell's measured occupancy
                recorded[(st.name, c, hb, s)] = CellOutcome(
                    "succeeded",
                    rnd.uniform(0.9, 1.5),
                    train_seconds=train,
                    occupied_seconds=round(train + rnd.uniform(10, 60)),
                )
    status, _ = simulate(spec, recorded)
    assert len(status.stability.promotion[0].promoted_share) == 500  # the stability figures are in it too
    size = len(json.dumps(status.wire(), separators=(",", ":")))
    print(f"status of a 500-candidate ladder: {size / 1024:.0f} KiB")
    assert size < 768 * 1024  # half of the 1.5 MiB object limit, leaving room for the spec
