"""scripts/kind-e2e.sh, run here against stub docker/kind/kubectl/helm that record their calls
and answer like a healthy cluster: the script's flow and every command it sends are checked
without Docker. (The real thing: LADDER_E2E=kind, test_kind.py.)"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kind-e2e.sh"

# kubectl answers like a healthy cluster that ran the demo ladder, in Python so the shared
# checks (tests/e2e/checks.py) get JSON; $PHASE can make the ladder fail and $WORKER_BLOCK
# relabel the a100 worker (a cell then ran off its host block).
STUB_KUBECTL = r"""#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
line = " ".join(args)
with open(os.environ["CALLS"], "a") as fh:
    fh.write("kubectl " + line + "\n")
phase = os.environ.get("PHASE", "Succeeded")
result = {"apiVersion": "ladder.promotion.dev/v1alpha1", "kind": "CellResult", "status": "ok", "value": 1.5}
def pod(name, block, node):
    labels = {"ladder.promotion.dev/ladder": "demo", "ladder.promotion.dev/stage": "screen",
              "ladder.promotion.dev/candidate": "d2-w64", "ladder.promotion.dev/host-block": block}
    return {"metadata": {"name": name, "labels": labels,
                         "annotations": {"ladder.promotion.dev/result": json.dumps(result)}},
            "spec": {"nodeName": node, "serviceAccountName": "ladder-trainer"},
            "status": {"containerStatuses": [{"containerID": "containerd://abc", "ready": False, "state": {
                "terminated": {"exitCode": 0, "message": json.dumps(result)}}}]}}
ladder = {"spec": {"hostBlocks": [{"name": "pool-a", "nodeSelector": {"ladder.promotion.dev/host-block": "a100"}},
                                  {"name": "pool-b", "nodeSelector": {"ladder.promotion.dev/host-block": "l40s"}}]},
          "status": {"phase": phase, "stages": [{"name": "screen", "cells": [
              {"candidate": "d2-w64", "hostBlock": "pool-a", "state": "Succeeded", "value": 1.5},
              {"candidate": "d2-w64", "hostBlock": "pool-b", "state": "Succeeded", "value": 1.5}]}]}}
operator = {"spec": {"serviceAccountName": "ladder-promotion-ladder", "containers": [{"securityContext": {
    "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]},
    "status": {"containerStatuses": [{"ready": True}]}}
if line == "get nodes -l !node-role.kubernetes.io/control-plane -o name":
    print("node/e2e-worker2\nnode/e2e-worker")
elif "get promotionladder demo -o jsonpath={.status.phase}" in line:
    sys.stdout.write(phase)
elif "get promotionladder demo -o jsonpath={.status.conditions}" in line:
    print('[{"type":"Failed"}]')
elif line.startswith("get promotionladder demo -n ladder-e2e -o json"):
    print(json.dumps(ladder))
elif line == "get nodes -o json":
    print(json.dumps({"items": [
        {"metadata": {"name": "e2e-worker",
                      "labels": {"ladder.promotion.dev/host-block": os.environ.get("WORKER_BLOCK", "a100")}}},
        {"metadata": {"name": "e2e-worker2", "labels": {"ladder.promotion.dev/host-block": "l40s"}}}]}))
elif line.startswith("get pods -n ladder-e2e -l ladder.promotion.dev/ladder=demo -o json"):
    # pool-a/pool-b are the ladder's host block names; the pods carry them as labels
    items = [pod("demo-screen-a", "pool-a", "e2e-worker"), pod("demo-screen-b", "pool-b", "e2e-worker2")]
    print(json.dumps({"items": items}))
elif line.startswith("get pods -n ladder-system -l app.kubernetes.io/component=operator -o json"):
    print(json.dumps({"items": [operator]}))
elif line.startswith("get --raw "):
    print('ladder_gpu_seconds_total{namespace="ladder-e2e",ladder="demo",stage="screen",'
          'candidate="d2-w64",host_block="pool-a"} 0.01')
    print('ladder_info{namespace="ladder-e2e",ladder="demo",phase="Succeeded",stage=""} 1')
elif line == "get promotionladders -n ladder-e2e":
    print("NAME   PHASE       STAGE   LEADER   GPU-HOURS   AGE")
elif line.startswith("auth can-i"):
    allowed = (args[2:4] == ["create", "jobs.batch"]
               or (args[2:4] == ["patch", "promotionladders.ladder.promotion.dev"] and "--subresource=status" in args))
    print("yes" if allowed else "no")
    sys.exit(0 if allowed else 1)
elif line == "get namespace ladder-e2e":
    sys.exit(1)
"""
STUB_RECORDER = '#!/usr/bin/env bash\necho "$(basename "$0") $*" >> "$CALLS"\n{extra}\nexit 0\n'


@pytest.fixture
def stubs(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "kubectl").write_text(STUB_KUBECTL)
    (bin_ / "kind").write_text(STUB_RECORDER.format(extra='[ "$1" = "get" ] && [ "$2" = "clusters" ] && echo other'))
    (bin_ / "docker").write_text(STUB_RECORDER.format(extra=""))
    (bin_ / "helm").write_text(STUB_RECORDER.format(extra=""))
    for f in bin_.iterdir():
        f.chmod(0o755)
    return tmp_path


def run_script(stubs: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    calls = stubs / "calls.txt"
    calls.touch()
    trainer = stubs / "Dockerfile.trainer"  # the real one may not exist yet; the stub docker never reads it
    trainer.write_text("FROM python:3.11.13-slim\nUSER 1\n")
    full_env = {
        **os.environ,
        "PATH": f"{stubs / 'bin'}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "ARTIFACTS": str(stubs / "artifacts"),
        "CLUSTER": "e2e",
        "TRAINER_DOCKERFILE": str(trainer),
        **env,
    }
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=120)
    return proc, calls.read_text().splitlines()


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_all_creates_fakes_gpus_installs_runs_checks_and_deletes(stubs):
    proc, calls = run_script(stubs, "all")
    assert proc.returncode == 0, proc.stderr
    order = [
        c
        for c in calls
        if c.split()[:2]
        in (
            ["kind", "create"],
            ["docker", "build"],
            ["kind", "load"],
            ["helm", "upgrade"],
            ["kubectl", "apply"],
            ["kind", "delete"],
        )
    ]
    assert [" ".join(c.split()[:2]) for c in order] == [
        "kind create",
        "docker build",
        "docker build",
        "kind load",
        "helm upgrade",
        "kubectl apply",
        "kind delete",
    ]
    joined = "\n".join(calls)
    # Fake GPUs through the status subresource, host-block labels, one block per worker (sorted).
    assert "kubectl patch node/e2e-worker --subresource=status --type=json" in joined
    assert "nvidia.com~1gpu" in joined
    assert "kubectl label node/e2e-worker --overwrite ladder.promotion.dev/host-block=a100" in joined
    assert "kubectl label node/e2e-worker2 --overwrite ladder.promotion.dev/host-block=l40s" in joined
    # The images under the names the chart and example use, so both install unchanged.
    assert "docker build -f Dockerfile.operator -t ghcr.io/promotion-ladder/operator:0.1.0 ." in joined
    assert (
        "kind load docker-image --name e2e ghcr.io/promotion-ladder/operator:0.1.0 "
        "ghcr.io/promotion-ladder/trainer:0.1.0" in joined
    )
    helm = next(c for c in calls if c.startswith("helm upgrade"))
    assert shlex.split(helm)[:5] == ["helm", "upgrade", "--install", "ladder", "charts/promotion-ladder"]
    assert "kubectl create namespace ladder-e2e" in joined
    assert "kubectl apply -n ladder-e2e -f examples/demo-ladder.yaml" in joined
    assert "ok: demo Succeeded and passed the end-to-end checks" in proc.stderr
    assert "8 passed, 0 failed" in proc.stdout  # tests/e2e/checks.py, every check of the shared list


def test_failed_ladder_collects_diagnostics_and_fails(stubs):
    proc, calls = run_script(stubs, "all", PHASE="Failed", KEEP_ON_FAILURE="1")
    assert proc.returncode == 1
    assert "ladder demo Failed" in proc.stderr
    assert (stubs / "artifacts" / "diagnostics").is_dir()
    assert not any(c.startswith("kind delete") for c in calls), "KEEP_ON_FAILURE keeps the cluster"


def test_cell_off_its_host_block_fails(stubs):
    proc, _ = run_script(stubs, "run", WORKER_BLOCK="l40s")
    assert proc.returncode == 1 and "end-to-end checks failed for demo" in proc.stderr
    assert (
        "FAILED: cells on their host blocks as ladder-trainer: pod demo-screen-a of host block pool-a ran on "
        "e2e-worker" in proc.stdout
    )


def test_missing_tool_says_which(stubs):
    (stubs / "bin" / "helm").unlink()
    env_path = f"{stubs / 'bin'}:/usr/bin:/bin"
    proc, _ = run_script(stubs, "up", PATH=env_path)
    if subprocess.run(["bash", "-c", "command -v helm"], env={"PATH": env_path}).returncode == 0:
        pytest.skip("a real helm is on /usr/bin or /bin")
    assert proc.returncode == 1 and "helm not found on PATH" in proc.stderr
