"""The Grafana dashboard's queries against a real Prometheus scraping a real operator.

On the local control plane, `ladder operator` runs three ladders in one namespace while
Prometheus (cluster/build.sh) scrapes its /metrics every second:
  real    the real trainer at tiny CPU budgets: 2 candidates on both host blocks, both promoted
          to a second stage (so a rank-stability tau is defined)
  broken  the real trainer, one candidate with a bad config (exit 2: its cell fails)
  forged  the stub trainer, one candidate annotating a result that claims another cell
          (the operator rejects it: ladder_result_errors_total{reason="identity"})
Then every panel's queries, with the variables substituted as Grafana would, must parse and
return series carrying the labels their legends and table columns use (tests/monitoring/
panels.py), and `promtool check metrics` must find nothing to lint in the scrape.
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from localcluster.prometheus import LocalPrometheus
from localcluster.waiting import wait_for

from ..corpus import write_tiny_corpus
from ..operator.harness import STUB, Cluster, Operator, install_crd, operator_kubeconfig
from .conftest import require_prometheus
from .panels import ALL, TimeRange, Variables, check_dashboard, substitute, targets

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "promotion-ladder.json"
SCRAPE_SECONDS = 1
TINY = {"depth": 1, "aspect_ratio": 32, "head_dim": 16, "seq_len": 32, "tokenizer": "byte", "batch": 64}
BLOCKS = ("a100", "l40s")


def _ladder(name: str, trainer: dict, candidates: dict[str, dict], stages: list[dict]) -> dict:
    return {
        "apiVersion": "ladder.promotion.dev/v1alpha1",
        "kind": "PromotionLadder",
        "metadata": {"name": name},
        "spec": {
            "trainer": {"image": "trainer:dev", "gpus": 1, **trainer},
            "hostBlocks": [{"name": h, "nodeSelector": {"ladder.promotion.dev/host-block": h}} for h in BLOCKS],
            "candidates": [{"name": n, "config": c} for n, c in candidates.items()],
            "stages": stages,
        },
    }


def _stage(name: str, budget: str, blocks=BLOCKS, top: int | None = None) -> dict:
    s = {"name": name, "budget": budget, "hostBlocks": list(blocks), "seeds": [1]}
    if top is not None:
        s["promote"] = {"top": top}
    return s


def ladders(corpus: Path) -> list[dict]:
    real_trainer = {
        "command": ["python", "-m", "ladder_trainer"],
        "env": {
            "LADDER_TRAINER_DATA": str(corpus),
            "LADDER_TRAINER_DEVICE": "cpu",
            "LADDER_TRAINER_THREADS": "1",
            "LADDER_TRAINER_EVAL_TOKENS": "256",
            "LADDER_TRAINER_COMPILE": "off",
        },
    }
    stub = {"command": [sys.executable, STUB]}
    return [
        _ladder(
            "real",
            real_trainer,
            {"lr-lo": {**TINY, "matrix_lr": 0.01}, "lr-hi": {**TINY, "matrix_lr": 0.04}},
            [_stage("s1", "2s", top=2), _stage("s2", "2s", blocks=("a100",))],
        ),
        # head_dim must be even: the trainer refuses the config and exits 2 (not retried).
        _ladder(
            "broken",
            real_trainer,
            {"ok": TINY, "bad-config": {**TINY, "head_dim": 15}},
            [_stage("only", "2s", blocks=("l40s",))],
        ),
        _ladder(
            "forged",
            stub,
            {"honest": {"value": 1.2}, "forger": {"value": 1.5, "annotation": "forge", "forge_as": "honest"}},
            [_stage("only", "2s", blocks=("a100",))],
        ),
    ]


@dataclass
class Monitored:
    prom: LocalPrometheus
    operator: Operator
    kube: Cluster
    namespace: str
    time_range: TimeRange
    scrape: str  # the operator's /metrics after the ladders finished


@pytest.fixture(scope="module")
def monitored(local_cluster, tmp_path_factory) -> Monitored:
    require_prometheus()
    api = local_cluster.api_client()
    install_crd(api)
    tmp = tmp_path_factory.mktemp("monitoring")
    kubeconfig = operator_kubeconfig(api, local_cluster.kubeconfig, tmp / "operator-kubeconfig")
    core = client.CoreV1Api(api)
    ns = f"monitoring-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"localcluster.dev/test": "true"}}})
    wait_for(
        lambda: core.read_namespaced_service_account("default", ns), timeout=30, what=f"ServiceAccount {ns}/default"
    )
    operator = prom = None
    try:
        operator = Operator(kubeconfig, ns, tmp).start()
        prom = LocalPrometheus(tmp / "prometheus", [f"127.0.0.1:{operator.metrics_port}"], f"{SCRAPE_SECONDS}s").start()
        prom.wait_scraping()
        start = time.time()
        kube = Cluster(api, ns)
        docs = ladders(write_tiny_corpus(tmp_path_factory.mktemp("corpus")))
        for doc in docs:
            kube.create(doc)
        phases = {
            d["metadata"]["name"]: kube.wait_phase(d["metadata"]["name"], timeout=420)["status"]["phase"] for d in docs
        }
        # Prometheus has the final state once it has scraped every ladder's final phase.
        final = f'count(ladder_info{{namespace="{ns}", phase=~"Succeeded|Failed"}})'
        wait_for(
            lambda: [s["value"][1] for s in prom.query(final)] == [str(len(docs))],
            timeout=30,
            what="prometheus scraped the final phases",
            describe=lambda: prom.query(f'ladder_info{{namespace="{ns}"}}'),
        )
        # And one scrape more, so the last step of a range query ending now falls after the
        # scrape that first held the final state (a series born in it shows in range queries).
        seen = time.time()
        wait_for(
            lambda: float(prom.query("max(timestamp(up))")[0]["value"][1]) > seen, timeout=30, what="one more scrape"
        )
        end = time.time()
        yield Monitored(
            prom, operator, kube, ns, TimeRange(start - 5, end, scrape_interval=SCRAPE_SECONDS), operator.metrics()
        )
        print(f"\nladders: {phases}")
    finally:
        if prom is not None:
            prom.stop()
        if operator is not None:
            operator.stop()
            print(f"\noperator log ({operator.log_path}):\n{operator.tail(30)}")
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(ns)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_the_ladders_ran_as_arranged(monitored):
    st = {n: monitored.kube.ladder(n)["status"] for n in ("real", "broken", "forged")}
    assert st["real"]["phase"] == "Succeeded", monitored.kube.describe("real")
    failed = [c for s in st["broken"]["stages"] for c in s["cells"] if c["state"] == "Failed"]
    assert [c["candidate"] for c in failed] == ["bad-config"], st["broken"]
    assert monitored.kube.events("ResultRejected"), "the forged annotation was not rejected"


# The ladder picked in the dashboard: "All" (the regex .*, which also matches a label that is
# not there at all) and two ladders by name (a matcher on a misspelt label then matches nothing).
SELECTIONS = {"all ladders": ALL, "two ladders picked": ["real", "forged"]}


@pytest.mark.parametrize("selection", SELECTIONS)
def test_every_panel_returns_labelled_series(monitored, selection):
    selected = {"namespace": [monitored.namespace], "ladder": SELECTIONS[selection]}
    problems = check_dashboard(dashboard(), monitored.prom, Variables(dashboard(), selected), monitored.time_range)
    assert not problems, "\n".join(problems)


# What the stat panels must show after the arranged run (each at least this much).
STAT_AT_LEAST = {
    "Stage decisions": 2 + 1 + 1,  # real: s1, s2; broken: only; forged: only
    "Rejected results": 1,
}


@pytest.mark.parametrize("title", STAT_AT_LEAST)
def test_stat_panel_counts_what_happened(monitored, title):
    """increase() over the dashboard's range must see the first event of a counter too."""
    target = next(t for t in targets(dashboard()) if t.panel == title)
    variables = Variables(dashboard(), {"namespace": [monitored.namespace], "ladder": ALL})
    expr, _ = substitute(target.expr, variables, monitored.time_range.builtins())
    series = monitored.prom.query(expr, at=monitored.time_range.end)
    assert series and float(series[0]["value"][1]) >= STAT_AT_LEAST[title] - 0.01, (title, expr, series)


# Broken copies of the dashboard: the checker must name the broken panel.
PLANTED = {
    "misspelt metric": ("Cells by state", lambda e: e.replace("ladder_cells", "ladder_cels")),
    "wrong label in a matcher": ("GPUs in use", lambda e: e.replace("ladder=~", "ladder_name=~")),
    "legend label dropped by the aggregation": (
        "GPU-hours per hour by host block",
        lambda e: e.replace("sum by (host_block)", "sum by (stage)"),
    ),
    "table column not in the query": ("Current stage and leader per ladder", lambda e: e.replace(", leader)", ")")),
    "does not parse": ("Reconcile duration", lambda e: e.replace("sum by (le)", "sum by (le")),
}


@pytest.mark.parametrize("case", PLANTED)
def test_checker_names_a_broken_panel(monitored, case):
    title, breaks = PLANTED[case]
    broken = copy.deepcopy(dashboard())
    panel = next(p for p in broken["panels"] if p["title"] == title)
    before = [t["expr"] for t in panel["targets"]]
    for t in panel["targets"]:
        t["expr"] = breaks(t["expr"])
    assert before != [t["expr"] for t in panel["targets"]], f"{case}: the planted change is a no-op"
    selected = {"namespace": [monitored.namespace], "ladder": SELECTIONS["two ladders picked"]}
    problems = check_dashboard(broken, monitored.prom, Variables(broken, selected), monitored.time_range)
    assert problems, f"{case}: no problem reported"
    assert all(p.startswith(title) for p in problems), problems


def test_promtool_check_metrics_on_a_real_scrape(monitored, promtool):
    assert (
        "ladder_result_errors_total{" in monitored.scrape
        and "ladder_decision_latency_seconds_bucket" in monitored.scrape
    )
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=monitored.scrape, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
