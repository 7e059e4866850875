"""A cell's GPU occupancy on the cluster, from its Pods' timestamps (controller/occupancy.py):
bound to a node (PodScheduled) -> the trainer container's finishedAt, every attempt summed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from promotion_ladder.controller.intake import pod_summary
from promotion_ladder.controller.metrics import LadderMetrics
from promotion_ladder.controller.occupancy import occupied_seconds, pod_times
from promotion_ladder.controller.reconcile import reconcile
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import Cell

from .kube import JobB, PodB, ladder_body, result_doc

NOW = "2026-11-29T20:00:00Z"
T0 = "2026-11-29T19:00:00Z"  # an hour earlier: epoch seconds below are relative to it


def at(seconds: int) -> str:
    return f"2026-11-29T19:{seconds // 60:02d}:{seconds % 60:02d}Z"


def held(
    pod: PodB,
    bound: int | None = None,
    finished: int | None = None,
    started: int | None = None,
    last_state: bool = False,
) -> PodB:
    """Give a Pod the timestamps the scheduler and the kubelet write (seconds after T0)."""
    st = pod.o["status"]
    if bound is not None:
        st["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": at(bound)}]
    if started is not None:
        st["startTime"] = at(started)
    if finished is not None:
        first = {"running": {}} if last_state else {"terminated": {"exitCode": 0}}
        cs = st.setdefault("containerStatuses", [{"name": "trainer", "state": first}])[0]
        key = "lastState" if last_state else "state"
        cs.setdefault(key, {}).setdefault("terminated", {"exitCode": 0})["finishedAt"] = at(finished)
    return pod


BODY = ladder_body()
CELL = Cell("s1", "c0", "a100", 1)
JOB = JobB(BODY, CELL)
BASE = pod_times(held(PodB(JOB), bound=0).obj(), "trainer")["bound_at"]

# name: (pod builders, expected seconds or None)
CASES = {
    "bound to finished": ([lambda: held(PodB(JOB).exited(0), bound=3, finished=130)], 127.0),
    "startTime when PodScheduled is missing": ([lambda: held(PodB(JOB).exited(0), started=5, finished=65)], 60.0),
    "PodScheduled wins over startTime": ([lambda: held(PodB(JOB).exited(0), bound=2, started=9, finished=62)], 60.0),
    "finishedAt of lastState": ([lambda: held(PodB(JOB), bound=0, finished=40, last_state=True)], 40.0),
    "a retried Job pays for every attempt": (
        [
            lambda: held(PodB(JOB).exited(1), bound=0, finished=50),
            lambda: held(PodB(JOB).exited(0), bound=60, finished=190),
        ],
        180.0,
    ),
    "a Pod never bound held nothing": (
        [lambda: PodB(JOB).phase("Pending"), lambda: held(PodB(JOB).exited(0), bound=10, finished=20)],
        10.0,
    ),
    "a bound Pod without an end: unmeasured": (
        [lambda: held(PodB(JOB).exited(1), bound=0, finished=50), lambda: held(PodB(JOB), bound=60)],
        None,
    ),
    "no Pod bound at all: unmeasured": ([lambda: PodB(JOB).phase("Pending")], None),
    "no timestamps at all: unmeasured": ([lambda: PodB(JOB).exited(0)], None),
}


def node(index: int, bound: float, released: float | None):
    """A Pod of a multi-node cell (an Indexed Job), reduced to what occupancy reads."""
    return SimpleNamespace(index=index, bound_at=bound, released_at=released)


# name: (pods, expected seconds or None)
MULTI_NODE = {
    "nodes held at once: the longest index": ([node(0, 0, 100), node(1, 2, 101)], 100.0),
    "an index retried: its attempts summed": ([node(0, 0, 100), node(1, 0, 30), node(1, 40, 150)], 140.0),
    "a node without an end: unmeasured": ([node(0, 0, 100), node(1, 0, None)], None),
}


@pytest.mark.parametrize("name", MULTI_NODE)
def test_occupied_seconds_of_a_multi_node_cell(name):
    pods, want = MULTI_NODE[name]
    assert occupied_seconds(pods) == want


@pytest.mark.parametrize("name", CASES)
def test_occupied_seconds_of_a_cell(name):
    builders, want = CASES[name]
    pods = [pod_summary(b().obj()) for b in builders]
    assert occupied_seconds(pods) == want


def test_timestamps_parse_to_epoch_seconds():
    t = pod_times(held(PodB(JOB).exited(0), bound=1, finished=121).obj(), "trainer")
    assert t["released_at"] - t["bound_at"] == 120
    assert t["bound_at"] == BASE + 1
    assert pod_times({"status": {"startTime": "not a time"}}, "trainer") == {"bound_at": None, "released_at": None}


def test_reconcile_records_occupancy_in_the_status_and_metrics():
    spec = load_ladder(BODY).spec
    st = spec.stages[0]
    jobs, pods = [], []
    for i, c in enumerate([Cell("s1", cand, hb, s) for cand in ("c0", "c1", "c2", "c3") for hb, s in st.cells()]):
        j = JobB(BODY, c).complete()
        jobs.append(j.summary())
        pod = PodB(j).result(result_doc(c, 1.0 + i / 10)).exited(0)
        if c.candidate != "c3":  # c3's pods carry no timestamps: counted by their train seconds
            held(pod, bound=0, finished=100 + i)
        pods.append(pod.summary())
    r = reconcile(BODY, None, jobs, pods, set(), NOW)
    cells = {(c["candidate"], c["hostBlock"]): c for c in r.status["stages"][0]["cells"]}
    assert cells[("c0", "a100")]["occupiedSeconds"] == 100
    assert "occupiedSeconds" not in cells[("c3", "a100")]
    occ = r.status["gpuHours"]["occupied"]
    assert (occ["measuredCells"], occ["cells"]) == (6, 8)
    train = 2.0  # result_doc's trainSeconds
    want = (sum(100 + i for i in range(6)) + 2 * train) / 3600
    assert occ["total"] == pytest.approx(want, abs=1e-6) and occ["byStage"] == {"s1": occ["total"], "s2": 0.0}
    assert occ["ratio"] == pytest.approx(want * 3600 / (8 * train), abs=1e-4)

    m = LadderMetrics()
    m.observe("ns", "test", spec, r.ladder_status)
    samples = [s for fam in m.registry.collect() for s in fam.samples if s.name == "ladder_occupied_gpu_seconds_total"]
    assert sum(s.value for s in samples) == pytest.approx(want * 3600)
    assert m.registry.get_sample_value(
        "ladder_occupied_gpu_seconds_total",
        {"namespace": "ns", "ladder": "test", "stage": "s1", "candidate": "c0", "host_block": "a100"},
    ) == pytest.approx(100)
