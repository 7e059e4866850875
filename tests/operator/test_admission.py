"""Issue 12, defect 6: a ladder whose Jobs the API server refuses does not start; one whose host
block no node serves runs with a warning (controller/admission.py)."""

from __future__ import annotations

from promotion_ladder.controller.admission import Admission, sample_jobs, unmatched_blocks
from promotion_ladder.controller.reconcile import reconcile
from promotion_ladder.core.api import load_ladder

from .kube import ladder_body

NOW = "2026-11-29T10:00:00Z"


def test_one_sample_job_per_host_block():
    body = ladder_body()
    jobs = sample_jobs(body, load_ladder(body).spec)
    assert [b for b, _ in jobs] == ["a100", "l40s"]
    assert all(j["spec"]["template"]["spec"]["nodeSelector"] == {"ladder.promotion.dev/host-block": b} for b, j in jobs)


def test_unmatched_blocks():
    spec = load_ladder(ladder_body()).spec
    assert unmatched_blocks(spec, [{"ladder.promotion.dev/host-block": "a100", "x": "y"}]) == ["l40s"]
    assert unmatched_blocks(spec, []) == ["a100", "l40s"]


def test_refused_jobs_keep_the_ladder_pending_with_the_reason():
    body = ladder_body()
    bad = Admission(problem="host block a100: the API server refuses its cell Jobs: quantities must match")
    r = reconcile(body, None, [], [], set(), NOW, admission=bad)
    assert r.create == [] and r.status["phase"] == "Pending"
    admitted = next(c for c in r.status["conditions"] if c["type"] == "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "JobInvalid" and "quantities" in admitted["message"]
    assert [e[1] for e in r.events] == ["JobInvalid"]
    again = reconcile(body, r.status, [], [], set(), NOW, admission=bad)
    assert again.events == [] and again.create == []  # said once
    fixed = reconcile(body, r.status, [], [], set(), NOW, admission=Admission())
    assert len(fixed.create) == 8 and not any(c["type"] == "Admitted" for c in fixed.status["conditions"])


def test_no_matching_node_is_a_warning_not_a_stop():
    body = ladder_body()
    r = reconcile(body, None, [], [], set(), NOW, admission=Admission(warnings=("no node matches host block l40s",)))
    assert len(r.create) == 8 and r.status["phase"] == "Running"
    cond = next(c for c in r.status["conditions"] if c["type"] == "Schedulable")
    assert cond["status"] == "False" and cond["reason"] == "NoNodeMatches"
    assert ("Warning", "NoNodeMatches", "no node matches host block l40s") in r.events
