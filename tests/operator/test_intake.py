"""Result intake: a result counts only from an owned Job's Pod, with the Job's identity, valid."""

from __future__ import annotations

import pytest

from promotion_ladder.controller.intake import cell_outcome, foreign_pod_rejection
from promotion_ladder.core.cell import Cell

from .kube import LADDER_UID, JobB, PodB, ladder_body, result_doc

CELL = Cell("s1", "c1", "a100", 1)
OTHER = Cell("s1", "c2", "a100", 1)


def job():
    return JobB(ladder_body(), CELL)


def case(job_b, *pods):
    """(job summary, pod summaries) for a Job and pods built on it."""
    return job_b.summary(), [p.summary() for p in pods]


def scenario(name):
    j = job()
    s = {
        "valid annotation, exit 0": lambda: case(j, PodB(j).result(result_doc(CELL, 1.25)).exited(0)),
        "still running": lambda: case(j.active(), PodB(j)),
        "annotation lands before exit": lambda: case(j.active(), PodB(j).result(result_doc(CELL, 1.25))),
        "forged identity, no fallback": lambda: case(j, PodB(j).result(result_doc(OTHER, 0.1)).exited(0)),
        "forged identity, termination message fallback": lambda: case(
            j, PodB(j).result(result_doc(OTHER, 0.1)).exited(0, message=result_doc(CELL, 1.3))
        ),
        "forged value, termination message counts": lambda: case(
            j, PodB(j).result(result_doc(CELL, 0.1)).exited(0, message=result_doc(CELL, 4.001))
        ),
        "forged failure, termination message counts": lambda: case(
            j, PodB(j).result(result_doc(CELL, None, status="error")).exited(0, message=result_doc(CELL, 1.3))
        ),
        "both channels agree": lambda: case(
            j, PodB(j).result(result_doc(CELL, 1.25)).exited(0, message=result_doc(CELL, 1.25))
        ),
        "malformed annotation": lambda: case(j, PodB(j).result("{not json").exited(0)),
        "invalid schema": lambda: case(j, PodB(j).result('{"status": "ok"}').exited(0)),
        "wrong metric": lambda: case(j, PodB(j).result(result_doc(CELL, 1.0, metric="loss")).exited(0)),
        "missing identity field": lambda: case(j, PodB(j).result(result_doc(CELL, 1.0, hostBlock=None)).exited(0)),
        "termination message only (shortened, no ladder field)": lambda: case(
            j, PodB(j).exited(0, message=result_doc(CELL, 1.4, ladder=None))
        ),
        "exit 0 without result": lambda: case(j, PodB(j).exited(0)),
        "diverged exit 3 with result": lambda: case(
            j, PodB(j).result(result_doc(CELL, None, status="diverged", message="loss is nan")).exited(3)
        ),
        "oom exit 4, no result": lambda: case(j, PodB(j).exited(4)),
        "exit 1 retried: still running": lambda: case(j.active(), PodB(j).exited(1), PodB(j)),
        "exit 1 then success": lambda: case(j, PodB(j).exited(1), PodB(j).result(result_doc(CELL, 1.1)).exited(0)),
        "job failed: backoff": lambda: case(j.failed("BackoffLimitExceeded"), PodB(j).exited(1), PodB(j).exited(1)),
        "job failed: deadline": lambda: case(j.failed("DeadlineExceeded"), PodB(j).phase("Failed")),
        "job complete, pods gone": lambda: case(j.complete()),
        "job complete, pod stale in the cache": lambda: case(j.complete(), PodB(j).result(result_doc(CELL, 1.25))),
        "job complete, pod exited 0 without result": lambda: case(j.complete(), PodB(j).exited(0)),
        "value out of range, termination message too": lambda: case(
            j, PodB(j).result(result_doc(CELL, 1.7e308)).exited(0, message=result_doc(CELL, 1.7e308))
        ),
        "train seconds out of range": lambda: case(
            j, PodB(j).result(result_doc(CELL, 1.2, train_seconds=1e9)).exited(0)
        ),
        "job of another ladder uid": lambda: case(j.owner("someone-else"), PodB(j).result(result_doc(CELL)).exited(0)),
        # Issue 21: a Pod is the Job's only when owner UID, controller-uid label and cell labels agree.
        "re-owned away to another job": lambda: case(
            j.active(), PodB(j).owner("other-job").result(result_doc(CELL)).exited(0)
        ),
        "re-owned to this job from another cell": lambda: case(
            j.active(),
            PodB(j)
            .label("batch.kubernetes.io/controller-uid", "job-of-e")
            .label("ladder.promotion.dev/candidate", "e")
            .exited(0, message=result_doc(CELL, 0.001)),
        ),
        "labelled as this cell, another job's pod": lambda: case(
            j.active(),
            PodB(j)
            .label("batch.kubernetes.io/controller-uid", "job-of-e")
            .owner("job-of-e")
            .exited(0, message=result_doc(CELL, 0.001)),
        ),
        "relabelled candidate": lambda: case(
            j.active(), PodB(j).label("ladder.promotion.dev/candidate", "c2").exited(0, message=result_doc(CELL, 0.1))
        ),
        "ladder label removed, job complete": lambda: case(
            j.complete(), PodB(j).label("ladder.promotion.dev/ladder", None).exited(0, message=result_doc(CELL, 1.2))
        ),
        "a forged pod beside the cell's own": lambda: case(
            j,
            PodB(j).result(result_doc(CELL, 1.25)).exited(0),
            PodB(j).label("ladder.promotion.dev/seed", "7").exited(0, message=result_doc(CELL, 0.001)),
        ),
        # Issue 21: a container that never ran says so, not "result is not JSON".
        "start error, retried": lambda: case(
            j.active(), PodB(j).start_error('exec: "nope": executable file not found in $PATH')
        ),
        "start error, job failed": lambda: case(
            j.failed(),
            PodB(j).start_error('exec: "nope": executable file not found in $PATH'),
            PodB(j).start_error('exec: "nope": executable file not found in $PATH'),
        ),
    }
    return s[name]()


# name -> (outcome state or None, value, running, rejection reasons, reason substring)
EXPECT = {
    "valid annotation, exit 0": ("succeeded", 1.25, False, [], ""),
    "still running": (None, None, True, [], ""),
    "annotation lands before exit": (None, None, True, [], ""),
    "forged identity, no fallback": ("failed", None, False, ["identity"], "identity does not match the cell"),
    "forged identity, termination message fallback": ("succeeded", 1.3, False, ["identity"], ""),
    # Issue 12, defect 2: the kubelet-written termination message is the authority.
    "forged value, termination message counts": ("succeeded", 4.001, False, ["forged"], ""),
    "forged failure, termination message counts": ("succeeded", 1.3, False, ["forged"], ""),
    "both channels agree": ("succeeded", 1.25, False, [], ""),
    "malformed annotation": ("failed", None, False, ["malformed"], "result is not JSON"),
    "invalid schema": ("failed", None, False, ["invalid"], ""),
    "wrong metric": (
        "failed",
        None,
        False,
        ["metric"],
        "reports metric 'loss', the ladder's objective metric is 'val_bpb'",
    ),
    "missing identity field": ("failed", None, False, ["identity"], ""),
    "termination message only (shortened, no ladder field)": ("succeeded", 1.4, False, [], ""),
    "exit 0 without result": ("failed", None, False, [], "exit code 0 but no result"),
    "diverged exit 3 with result": ("failed", None, False, [], "diverged: loss is nan"),
    "oom exit 4, no result": ("failed", None, False, [], "out of memory"),
    "exit 1 retried: still running": (None, None, True, [], ""),
    "exit 1 then success": ("succeeded", 1.1, False, [], ""),
    "job failed: backoff": ("failed", None, False, [], "BackoffLimitExceeded; last pod exit code 1"),
    "job failed: deadline": ("failed", None, False, [], "DeadlineExceeded"),
    # Issue 12, defect 1: a Complete Job with no terminal Pod at hand is missing evidence, not a
    # failure: the cell stays running and its Pods are looked up directly (view.look_up).
    "job complete, pods gone": (None, None, True, [], ""),
    "job complete, pod stale in the cache": (None, None, True, [], ""),
    "job complete, pod exited 0 without result": ("failed", None, False, [], "exit code 0 but no result"),
    # Issue 12, defect 3: both channels out of range: rejected (with an Event each), cell failed.
    "value out of range, termination message too": ("failed", None, False, ["range", "range"], "out of range"),
    "train seconds out of range": ("failed", None, False, ["range"], "trainSeconds"),
    "job of another ladder uid": (None, None, False, [], ""),
    "re-owned away to another job": (None, None, True, ["forged"], ""),
    "re-owned to this job from another cell": (None, None, True, ["forged"], ""),
    "labelled as this cell, another job's pod": (None, None, True, [], ""),
    "relabelled candidate": (None, None, True, ["forged"], ""),
    "ladder label removed, job complete": (None, None, True, ["forged"], ""),
    "a forged pod beside the cell's own": ("succeeded", 1.25, False, ["forged"], ""),
    "start error, retried": (None, None, True, [], ""),
    "start error, job failed": ("failed", None, False, [], 'the container could not start (StartError: exec: "nope"'),
}


LOOK_UP = {"job complete, pods gone", "job complete, pod stale in the cache", "ladder label removed, job complete"}


@pytest.mark.parametrize("name", EXPECT, ids=list(EXPECT))
def test_cell_outcome(name):
    job_s, pods = scenario(name)
    view = cell_outcome("test", LADDER_UID, CELL, "val_bpb", job_s, pods, budget_seconds=120.0)
    state, value, running, reasons, why = EXPECT[name]
    assert view.look_up == (name in LOOK_UP)
    got = (
        view.outcome.state if view.outcome else None,
        view.outcome.value if view.outcome else None,
        view.running,
        [r.reason for r in view.rejections],
    )
    assert got == (state, value, running, reasons)
    if why:
        assert why in view.outcome.reason
    if view.outcome and view.outcome.ok:
        assert view.outcome.train_seconds == 2.0


def test_no_job_no_outcome():
    view = cell_outcome("test", LADDER_UID, CELL, "val_bpb", None, [])
    assert view.outcome is None and not view.running


def test_rejection_keys_dedupe_by_pod_and_text():
    j = job()
    p = PodB(j).result("{bad").exited(0)
    a = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [p.summary()]).rejections[0]
    b = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [p.summary()]).rejections[0]
    assert a.key == b.key and "rejected" in a.message
    p.result("{worse")
    c = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [p.summary()]).rejections[0]
    assert c.key != a.key


FOREIGN = {
    "no result": (lambda j: PodB(j), None),
    "a Job's own Pod whose Job is gone (a ladder being deleted)": (lambda j: PodB(j).result(result_doc(CELL)), None),
    "being deleted": (lambda j: _deleting(PodB(j).owner("gone").result(result_doc(CELL))), None),
    "no owner": (lambda j: _no_owner(PodB(j).result(result_doc(CELL))), "foreign"),
    "owner and label disagree": (lambda j: PodB(j).owner("elsewhere").result(result_doc(CELL)), "foreign"),
}


def _deleting(p: PodB) -> PodB:
    p.o["metadata"]["deletionTimestamp"] = "2026-11-29T10:00:00Z"
    return p


def _no_owner(p: PodB) -> PodB:
    p.o["metadata"]["ownerReferences"] = []
    return p


@pytest.mark.parametrize("name", FOREIGN, ids=list(FOREIGN))
def test_foreign_pod(name):
    """Issue 21: deleting a ladder (its Jobs go before their Pods) announces no foreign result."""
    build, want = FOREIGN[name]
    r = foreign_pod_rejection(build(job()).summary())
    assert (r.reason if r else None) == want


def test_forged_pod_is_announced_once_per_change_and_names_what_differs():
    j = job()
    p = PodB(j).exited(0, message=result_doc(CELL, 0.1)).label("ladder.promotion.dev/candidate", "c2")
    a = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [p.summary()]).rejections
    b = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [p.summary()]).rejections
    assert [r.key for r in a] == [r.key for r in b] and len(a) == 1
    assert "candidate label differs" in a[0].message and "forged" in a[0].message
    p.owner("job-elsewhere")
    c = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [p.summary()]).rejections
    assert c[0].key != a[0].key and "its owner is job-elsewhere" in c[0].message


def test_a_rejection_remembers_the_digests_already_announced():
    """Issue 21: the digest goes onto the Pod; a Pod that carries it is not announced again."""
    from promotion_ladder.controller.intake import REJECTED_ANNOTATION

    j = job()
    p = PodB(j).result("{bad").exited(0)
    first = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [p.summary()]).rejections[0]
    assert first.seen == () and first.remembered() == first.digest
    p.o["metadata"]["annotations"][REJECTED_ANNOTATION] = first.remembered()
    again = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [p.summary()]).rejections[0]
    assert again.digest in again.seen
    p.result("{worse")
    third = cell_outcome("test", LADDER_UID, CELL, "val_bpb", j.summary(), [p.summary()]).rejections[0]
    assert third.digest not in third.seen and third.remembered() == f"{first.digest} {third.digest}"


# A multi-node cell: only the index-0 pod (global rank 0) publishes; the others exit 0 without.
def multi_node(name):
    from ..unit.builders import edit, ladder_doc

    j = JobB(ladder_body(edit(ladder_doc(), "spec.trainer", {"nodes": 2})), CELL)
    rank0, rank1 = PodB(j).index(0), PodB(j).index(1)
    s = {
        "rank 1 done first, rank 0 running": lambda: case(j.active(), rank0, rank1.exited(0)),
        "both done, rank 0 published": lambda: case(
            j.complete(), rank0.result(result_doc(CELL, 1.2)).exited(0), rank1.exited(0)
        ),
        "rank 0 done, result in its termination message only": lambda: case(
            j.complete(), rank0.exited(0, message=result_doc(CELL, 1.3)), rank1.exited(0)
        ),
        "a result on rank 1 is not read": lambda: case(
            j.complete(), rank0.exited(0), rank1.result(result_doc(CELL, 0.1)).exited(0)
        ),
        "rank 1 failed: the Job fails as a whole": lambda: case(
            j.failed("PodFailurePolicy"), rank0.exited(143), rank1.exited(1)
        ),
        "rank 1 out of memory": lambda: case(j.active(), rank0, rank1.exited(4)),
    }
    return s[name]()


MULTI_NODE = {
    "rank 1 done first, rank 0 running": (None, None, True, ""),
    "both done, rank 0 published": ("succeeded", 1.2, False, ""),
    "rank 0 done, result in its termination message only": ("succeeded", 1.3, False, ""),
    "a result on rank 1 is not read": ("failed", None, False, "no result"),
    "rank 1 failed: the Job fails as a whole": ("failed", None, False, "job failed: PodFailurePolicy"),
    "rank 1 out of memory": ("failed", None, False, "exit code 4 (out of memory)"),
}


@pytest.mark.parametrize("name", MULTI_NODE, ids=list(MULTI_NODE))
def test_multi_node_cell_outcome(name):
    job_s, pods = multi_node(name)
    view = cell_outcome("test", LADDER_UID, CELL, "val_bpb", job_s, pods)
    state, value, running, why = MULTI_NODE[name]
    got = (view.outcome.state if view.outcome else None, view.outcome.value if view.outcome else None, view.running)
    assert got == (state, value, running)
    assert why in (view.outcome.reason if view.outcome else "")
    assert view.rejections == []
