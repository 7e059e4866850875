"""Metric names are a contract (dashboard, alerts): values from a status, restart semantics."""

from __future__ import annotations

import pytest

from promotion_ladder.controller.metrics import LadderMetrics
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import CellOutcome
from promotion_ladder.core.status import build_status, simulate

from ..unit.builders import ladder_doc

SPEC = load_ladder(ladder_doc()).spec  # 4 candidates; s1: 2m x (a100, l40s) x [1]; s2: 10m x 2 blocks x [1, 2]; top 2


def outcomes(stage_values: dict[str, float], stage="s1", seconds=90.0):
    st = next(s for s in SPEC.stages if s.name == stage)
    return {
        (stage, c, hb, s): CellOutcome("succeeded", v, train_seconds=seconds)
        for c, v in stage_values.items()
        for hb, s in st.cells()
    }


def sample(m: LadderMetrics, name: str, **labels) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_names_are_the_contract():
    m = LadderMetrics()
    done = {**outcomes({"c0": 1.0, "c1": 1.1, "c2": 1.2, "c3": 1.3}), **outcomes({"c0": 1.0, "c1": 1.1}, stage="s2")}
    m.observe("ns", "l", SPEC, simulate(SPEC, done)[0])
    m.result_error("ns", "l", "identity")
    m.reconcile_duration.observe(0.1)
    m.decision_latency.observe(0.2)
    names = {s.name for fam in m.registry.collect() for s in fam.samples}
    for want in (
        "ladder_gpu_seconds_total",
        "ladder_gpus_in_use",
        "ladder_counterfactual_gpu_seconds",
        "ladder_cells",
        "ladder_decisions_total",
        "ladder_result_errors_total",
        "ladder_reconcile_duration_seconds_bucket",
        "ladder_decision_latency_seconds_bucket",
        "ladder_info",
        "ladder_rank_stability_kendall_tau",
    ):
        assert want in names, want
    assert b"ladder_info{" in m.exposition()


def test_values_from_a_status_and_counting_once():
    m = LadderMetrics()
    o = outcomes({"c0": 1.0, "c1": 1.1, "c2": 1.2, "c3": 1.3})
    status, _ = build_status(SPEC, o, running={("s2", "c0", "a100", 1)})
    for _ in range(3):  # reconciles repeat; counters count each cell and decision once
        m.observe("ns", "l", SPEC, status)
    assert sample(
        m, "ladder_gpu_seconds_total", namespace="ns", ladder="l", stage="s1", candidate="c0", host_block="a100"
    ) == pytest.approx(90)
    assert sample(m, "ladder_decisions_total", namespace="ns", ladder="l", stage="s1") == 1
    assert sample(m, "ladder_cells", namespace="ns", ladder="l", stage="s1", state="Succeeded") == 8
    assert sample(m, "ladder_cells", namespace="ns", ladder="l", stage="s2", state="Running") == 1
    assert sample(m, "ladder_cells", namespace="ns", ladder="l", stage="s2", state="Pending") == 7
    assert sample(m, "ladder_gpus_in_use", namespace="ns", ladder="l") == 1
    # counterfactual of s1: 4 entered x 4 final cells x 10 min x 1 GPU
    assert sample(m, "ladder_counterfactual_gpu_seconds", namespace="ns", ladder="l", stage="s1") == pytest.approx(
        4 * 4 * 10 * 60
    )
    assert (
        sample(m, "ladder_info", namespace="ns", ladder="l", phase="Running", stage="s2", leader="") == 1
    )  # no s2 value yet


def test_info_moves_with_the_phase_and_forget_drops_gauges():
    m = LadderMetrics()
    m.observe("ns", "l", SPEC, build_status(SPEC, {})[0])
    done = {**outcomes({"c0": 1.0, "c1": 1.1, "c2": 1.2, "c3": 1.3}), **outcomes({"c0": 1.0, "c1": 1.1}, stage="s2")}
    final, _ = simulate(SPEC, done)
    m.observe("ns", "l", SPEC, final)
    assert sample(m, "ladder_info", namespace="ns", ladder="l", phase="Running", stage="s1", leader="") is None
    assert sample(m, "ladder_info", namespace="ns", ladder="l", phase="Succeeded", stage="", leader="c0") == 1
    total = sum(s.value for fam in m.registry.collect() for s in fam.samples if s.name == "ladder_gpu_seconds_total")
    assert total == pytest.approx(final.gpu_hours.total * 3600)
    m.forget("ns", "l")
    assert sample(m, "ladder_info", namespace="ns", ladder="l", phase="Succeeded", stage="", leader="c0") is None
    assert sample(m, "ladder_cells", namespace="ns", ladder="l", stage="s1", state="Succeeded") is None
    assert sample(m, "ladder_gpus_in_use", namespace="ns", ladder="l") is None


def test_counters_start_at_zero_before_their_first_event():
    """A series that appears at 1 hides its first event from increase(): export 0 first."""
    m = LadderMetrics()
    status, _ = build_status(SPEC, {}, running={("s1", "c0", "a100", 1)})
    m.observe("ns", "l", SPEC, status)
    assert sample(m, "ladder_decisions_total", namespace="ns", ladder="l", stage="s1") == 0
    assert sample(m, "ladder_cell_queue_seconds_count", namespace="ns", ladder="l") == 0
    assert (
        sample(m, "ladder_gpu_seconds_total", namespace="ns", ladder="l", stage="s1", candidate="c0", host_block="a100")
        == 0
    )
    for reason in ("malformed", "invalid", "identity", "metric", "foreign"):
        assert sample(m, "ladder_result_errors_total", namespace="ns", ladder="l", reason=reason) == 0, reason
    m.result_error("ns", "l", "identity")
    assert sample(m, "ladder_result_errors_total", namespace="ns", ladder="l", reason="identity") == 1


def test_rank_stability_is_the_latest_defined_stage_pair():
    spec = load_ladder(
        ladder_doc(
            stages=[
                {"name": "s1", "budget": "2m", "hostBlocks": ["a100", "l40s"], "seeds": [1], "promote": {"top": 3}},
                {"name": "s2", "budget": "5m", "hostBlocks": ["a100", "l40s"], "seeds": [1], "promote": {"top": 2}},
                {"name": "s3", "budget": "10m", "hostBlocks": ["a100", "l40s"], "seeds": [1]},
            ]
        )
    ).spec

    def cells(stage, values):
        return {
            (stage, c, hb, 1): CellOutcome("succeeded", v, train_seconds=60.0)
            for c, v in values.items()
            for hb in ("a100", "l40s")
        }

    def tau(**labels):
        return sample(m, "ladder_rank_stability_kendall_tau", namespace="ns", ladder="l", **labels)

    m = LadderMetrics()
    s1 = cells("s1", {"c0": 1.0, "c1": 1.1, "c2": 1.2, "c3": 1.3})
    m.observe("ns", "l", spec, build_status(spec, s1)[0])
    assert not [s for fam in m.registry.collect() for s in fam.samples if s.name == "ladder_rank_stability_kendall_tau"]
    # s2 reverses s1's order of c0, c1, c2: tau -1 over 3 candidates.
    s2 = {**s1, **cells("s2", {"c0": 1.3, "c1": 1.2, "c2": 1.1})}
    m.observe("ns", "l", spec, build_status(spec, s2)[0])
    assert tau(from_stage="s1", to_stage="s2") == -1.0
    # s3 keeps s2's order of c2, c1: tau 1 over 2; the s1 -> s2 series goes.
    m.observe("ns", "l", spec, build_status(spec, {**s2, **cells("s3", {"c2": 1.0, "c1": 1.05})})[0])
    assert tau(from_stage="s2", to_stage="s3") == 1.0
    assert tau(from_stage="s1", to_stage="s2") is None
    m.forget("ns", "l")
    assert tau(from_stage="s2", to_stage="s3") is None


def test_a_cells_start_times_go_into_the_three_histograms():
    """Issue 21, defect 6: the wait a user feels, per cell: Job -> Pod created -> scheduled -> running."""
    from promotion_ladder.controller.scheduling import StartTimes

    m = LadderMetrics()
    m.observe_start("ns", StartTimes(pod_created=1.0, scheduled=3.0, running=0.5))
    m.observe_start("ns", StartTimes(pod_created=None, scheduled=200.0, running=2.0))
    for name, count, total in (
        ("ladder_cell_pod_creation_seconds", 1, 1.0),
        ("ladder_cell_scheduling_seconds", 2, 203.0),
        ("ladder_cell_start_seconds", 2, 2.5),
    ):
        assert sample(m, f"{name}_count", namespace="ns") == count
        assert sample(m, f"{name}_sum", namespace="ns") == total
    assert sample(m, "ladder_cell_scheduling_seconds_bucket", namespace="ns", le="5.0") == 1
