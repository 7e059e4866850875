"""End to end on kind (LADDER_E2E=kind; needs Docker, kind, kubectl, helm): the chart
installed into a real cluster with fake GPU nodes, the demo ladder run by the real operator
and trainer images to Succeeded, and the same checks as on the local control plane.

    LADDER_E2E=kind pytest tests/e2e/test_kind.py     # KEEP_CLUSTER=1 keeps it afterwards

scripts/kind-e2e.sh does the setup (`up`) and teardown (`down`); see docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

if os.environ.get("LADDER_E2E") != "kind":
    pytest.skip("kind end-to-end tests run only with LADDER_E2E=kind (needs Docker, kind, kubectl, helm)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kind-e2e.sh"
LADDER_FILE = REPO / "examples" / "demo-ladder.yaml"
LADDER_NS = "ladder-e2e"
SYSTEM_NS = "ladder-system"
OPERATOR = "ladder-promotion-ladder"  # release "ladder": the chart's full name
TIMEOUT = int(os.environ.get("TIMEOUT", "1200"))


@pytest.fixture(scope="session")
def kubeconfig():
    artifacts = Path(os.environ.get("ARTIFACTS", REPO / "out" / "kind-e2e"))
    env = {**os.environ, "ARTIFACTS": str(artifacts)}
    subprocess.run(["bash", str(SCRIPT), "up"], check=True, env=env, timeout=3600)
    yield artifacts / "kubeconfig"
    if not os.environ.get("KEEP_CLUSTER"):
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, timeout=600)


@pytest.fixture(scope="session")
def kubectl(kubeconfig):
    def run(*args: str, check: bool = True) -> str:
        proc = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "KUBECONFIG": str(kubeconfig)})
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc.stdout
    return run


@pytest.fixture(scope="session")
def demo(kubectl):
    """The demo ladder applied and run to an end; its object (with status)."""
    name = yaml.safe_load(LADDER_FILE.read_text())["metadata"]["name"]
    kubectl("apply", "-n", LADDER_NS, "-f", str(LADDER_FILE))
    deadline = time.monotonic() + TIMEOUT
    while True:
        obj = json.loads(kubectl("get", "promotionladder", name, "-n", LADDER_NS, "-o", "json"))
        phase = obj.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return obj
        assert time.monotonic() < deadline, f"ladder {name} not finished after {TIMEOUT}s (phase {phase})"
        time.sleep(5)


def test_demo_ladder_succeeds_as_simulate_says(demo):
    from promotion_ladder.core.api import load_ladder
    from promotion_ladder.core.status import outcomes_from_status, parse_status, simulate

    assert demo["status"]["phase"] == "Succeeded", demo["status"].get("conditions")
    status = parse_status(demo["status"])
    sim, _ = simulate(load_ladder(demo).spec, outcomes_from_status(status))
    operator_only = ("observedGeneration", "conditions")
    assert {k: v for k, v in demo["status"].items() if k not in operator_only} == \
        {k: v for k, v in sim.wire().items() if k not in operator_only}


def test_every_cell_ran_on_its_host_block(demo, kubectl):
    name = demo["metadata"]["name"]
    pods = json.loads(kubectl("get", "pods", "-n", LADDER_NS, "-l", f"ladder.promotion.dev/ladder={name}", "-o", "json"))
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"]
             for n in json.loads(kubectl("get", "nodes", "-o", "json"))["items"]}
    assert pods["items"], "no cell pods left to check"
    for pod in pods["items"]:
        block = pod["metadata"]["labels"]["ladder.promotion.dev/host-block"]
        want = next(h["nodeSelector"] for h in demo["spec"]["hostBlocks"] if h["name"] == block)
        node_labels = nodes[pod["spec"]["nodeName"]]
        assert want.items() <= node_labels.items(), f"{pod['metadata']['name']} ({block}) ran on {pod['spec']['nodeName']}"
        assert pod["spec"]["serviceAccountName"] == "ladder-trainer"


def test_metrics_show_the_ladders_gpu_hours(demo, kubectl):
    name = demo["metadata"]["name"]
    text = kubectl("get", "--raw", f"/api/v1/namespaces/{SYSTEM_NS}/services/http:{OPERATOR}-metrics:8080/proxy/metrics")
    spent = [line for line in text.splitlines() if line.startswith("ladder_gpu_seconds_total{") and f'ladder="{name}"' in line]
    assert spent and sum(float(line.rsplit(" ", 1)[1]) for line in spent) > 0
    assert f'ladder_info{{namespace="{LADDER_NS}",ladder="{name}",phase="Succeeded"' in text


def test_kubectl_get_shows_the_printer_columns(demo, kubectl):
    header = kubectl("get", "promotionladders", "-n", LADDER_NS).splitlines()[0].split()
    assert header == ["NAME", "PHASE", "STAGE", "LEADER", "GPU-HOURS", "AGE"]


def test_operator_runs_hardened_under_the_charts_identity(demo, kubectl):
    pods = json.loads(kubectl("get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=operator", "-o", "json"))
    (pod,) = pods["items"]
    assert pod["spec"]["serviceAccountName"] == OPERATOR
    c = pod["spec"]["containers"][0]["securityContext"]
    assert c["readOnlyRootFilesystem"] and not c["allowPrivilegeEscalation"] and c["capabilities"]["drop"] == ["ALL"]
    assert all(s["ready"] for s in pod["status"]["containerStatuses"])


# (verb, resource, namespace, allowed) for the operator's ServiceAccount: what it needs, and
# a few things least privilege must refuse.
CAN_I = {
    "create jobs": ("create", "jobs.batch", LADDER_NS, True),
    "patch ladder status": ("patch", "promotionladders.ladder.promotion.dev/status", LADDER_NS, True),
    "no secrets": ("get", "secrets", LADDER_NS, False),
    "no pod deletion": ("delete", "pods", LADDER_NS, False),
    "no ladder deletion": ("delete", "promotionladders.ladder.promotion.dev", LADDER_NS, False),
    "no node writes": ("patch", "nodes", "", False),
}


@pytest.mark.parametrize("case", CAN_I, ids=list(CAN_I))
def test_operator_rbac_is_least_privilege(kubectl, case):
    verb, resource, ns, allowed = CAN_I[case]
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{SYSTEM_NS}:{OPERATOR}"]
    if ns:
        args += ["-n", ns]
    assert kubectl(*args, check=False).strip() == ("yes" if allowed else "no"), case
