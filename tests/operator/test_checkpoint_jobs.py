"""The operator and a ladder that continues, as data (controller/checkpoints.py, reconcile.py):
each cell's Job gets its checkpoint paths, a decided stage gets one prune Job on the template's
volume, created once, and a prune Job that failed is reported."""

from __future__ import annotations

from promotion_ladder.controller.checkpoints import PRUNE_MODULE, failed_prunes, prune_job_name
from promotion_ladder.controller.intake import job_summary
from promotion_ladder.controller.reconcile import reconcile
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import Cell
from promotion_ladder.core.contract import RESUME_FROM_FLAG, STABLE_CHECKPOINT_FLAG

from ..unit.builders import ladder_doc
from .kube import JobB, PodB, ladder_body, result_doc

NOW = "2026-12-07T03:00:00Z"
VALUES = {"c0": 1.0, "c1": 1.1, "c2": 1.2, "c3": 1.3}
TEMPLATE = {
    "spec": {
        "volumes": [{"name": "ck", "persistentVolumeClaim": {"claimName": "checkpoints"}}],
        "containers": [{"name": "trainer", "volumeMounts": [{"name": "ck", "mountPath": "/checkpoints"}]}],
    }
}


def _body() -> dict:
    doc = ladder_doc(host_blocks=("a100",), continuation={"from": "previousStage"})
    doc["spec"]["trainer"] = {"image": "t:1", "template": TEMPLATE}
    return ladder_body(doc)


def _s1_finished(body: dict) -> tuple[list, list]:
    jobs, pods = [], []
    for c, value in VALUES.items():
        cell = Cell("s1", c, "a100", 1)
        j = JobB(body, cell).complete()
        jobs.append(j.summary())
        pods.append(PodB(j).result(result_doc(cell, value)).exited(0).summary())
    return jobs, pods


def _args(job: dict) -> list[str]:
    return job["spec"]["template"]["spec"]["containers"][0]["args"]


def test_each_cell_job_gets_its_checkpoint_paths():
    body = _body()
    first = reconcile(body, None, [], [], set(), NOW)
    (args,) = [_args(j) for j in first.create if j["metadata"]["labels"]["ladder.promotion.dev/candidate"] == "c0"]
    assert args[args.index(STABLE_CHECKPOINT_FLAG) + 1] == "/checkpoints/test/s1/c0.a100.1"
    assert RESUME_FROM_FLAG not in args
    jobs, pods = _s1_finished(body)
    later = reconcile(body, None, jobs, pods, set(), NOW)
    (args,) = [
        _args(j)
        for j in later.create
        if j["metadata"]["labels"].get("ladder.promotion.dev/candidate") == "c0"
        and j["metadata"]["labels"].get("ladder.promotion.dev/seed") == "1"
    ]
    assert args[args.index(STABLE_CHECKPOINT_FLAG) + 1] == "/checkpoints/test/s2/c0.a100.1"
    assert args[args.index(RESUME_FROM_FLAG) + 1] == "/checkpoints/test/s1/c0.a100.1"


def test_a_decided_stage_creates_one_prune_job_on_the_cells_volume():
    body = _body()
    jobs, pods = _s1_finished(body)
    r = reconcile(body, None, jobs, pods, set(), NOW)
    prunes = [j for j in r.create if j["metadata"]["name"] == prune_job_name("test", "s1")]
    assert len(prunes) == 1 and len(r.create) == 1 + 2 * 2  # the prune Job; s2's cells of c0, c1 (seeds 1, 2)
    pod = prunes[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "python",
        "-m",
        PRUNE_MODULE,
        "--root",
        "/checkpoints/test",
        "--stages",
        "s1",
        "--candidates",
        "c2",
        "c3",
    ]
    assert container["volumeMounts"] == [{"name": "ck", "mountPath": "/checkpoints"}]
    assert pod["volumes"] == TEMPLATE["spec"]["volumes"]
    assert prunes[0]["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    # Known (created or being created): never created again.
    again = reconcile(body, r.status, jobs, pods, {prune_job_name("test", "s1")}, NOW)
    assert not [j for j in again.create if j["metadata"]["name"] == prune_job_name("test", "s1")]


def test_a_failed_prune_job_is_reported():
    body = _body()
    jobs, pods = _s1_finished(body)
    r = reconcile(body, None, jobs, pods, set(), NOW)
    prune = next(j for j in r.create if j["metadata"]["name"] == prune_job_name("test", "s1"))
    prune["metadata"]["uid"] = "prune-uid"
    prune["status"] = {
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            }
        ]
    }
    spec = load_ladder(body).spec
    summary = job_summary(prune)
    assert [j.name for j in failed_prunes("test", spec, [*jobs, summary])] == [prune_job_name("test", "s1")]
    done = reconcile(body, r.status, [*jobs, summary], pods, set(), NOW)
    assert [j.name for j in done.failed_prunes] == [prune_job_name("test", "s1")]
