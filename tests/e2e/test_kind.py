"""End to end on kind (LADDER_E2E=kind; needs Docker, kind, kubectl, helm): the chart
installed into a real cluster with fake GPU nodes, the demo ladder run by the real operator
and trainer images to Succeeded, its status equal to `ladder simulate` on the same results, and
the end-to-end checks tests/realnodes runs on the local cluster's real nodes (tests/e2e/checks.py).

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

from .checks import CHECKS, Target, kubectl_runner

if os.environ.get("LADDER_E2E") != "kind":
    pytest.skip(
        "kind end-to-end tests run only with LADDER_E2E=kind (needs Docker, kind, kubectl, helm)",
        allow_module_level=True,
    )

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kind-e2e.sh"
LADDER_FILE = REPO / "examples" / "demo-ladder.yaml"
LADDER_NS = "ladder-e2e"
SYSTEM_NS = "ladder-system"
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
        proc = subprocess.run(
            ["kubectl", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
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
    assert {k: v for k, v in demo["status"].items() if k not in operator_only} == {
        k: v for k, v in sim.wire().items() if k not in operator_only
    }


@pytest.mark.parametrize("check", CHECKS, ids=list(CHECKS))
def test_demo_ladder(demo, kubeconfig, check):
    """The shared end-to-end checks (tests/e2e/checks.py), as tests/realnodes runs them on real nodes."""
    CHECKS[check](Target(kubectl_runner("kubectl", str(kubeconfig)), LADDER_NS, demo["metadata"]["name"], SYSTEM_NS))
