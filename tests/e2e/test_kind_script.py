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

# kubectl answers by the first argument pattern that matches the command line (a glob); the
# phase answer comes from $PHASE so a case can make the ladder fail.
STUB_KUBECTL = r'''#!/usr/bin/env bash
echo "kubectl $*" >> "$CALLS"
case "$*" in
  "get nodes -l !node-role.kubernetes.io/control-plane -o name") printf 'node/e2e-worker2\nnode/e2e-worker\n' ;;
  *"get promotionladder demo -o jsonpath={.status.phase}"*) echo -n "${PHASE:-Succeeded}" ;;
  *"get promotionladder demo -o jsonpath={.status.conditions}"*) echo '[{"type":"Failed"}]' ;;
  *"get pods -l ladder.promotion.dev/ladder=demo -o jsonpath="*)
    printf 'demo-screen-a 'a100' e2e-worker\ndemo-screen-b l40s e2e-worker2\n' ;;
  *"get pods -l ladder.promotion.dev/ladder=demo -o name"*) echo pod/demo-screen-a ;;
  "get node e2e-worker -o jsonpath="*) echo -n "${WORKER_BLOCK:-a100}" ;;
  "get node e2e-worker2 -o jsonpath="*) echo -n l40s ;;
  "get --raw "*) echo 'ladder_gpu_seconds_total{namespace="ladder-e2e",ladder="demo",stage="screen",candidate="d2-w64",host_block="a100"} 0.01' ;;
  "get namespace ladder-e2e") exit 1 ;;
esac
exit 0
'''
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
    full_env = {**os.environ, "PATH": f"{stubs / 'bin'}:{os.environ['PATH']}", "CALLS": str(calls),
                "ARTIFACTS": str(stubs / "artifacts"), "CLUSTER": "e2e",
                "TRAINER_DOCKERFILE": str(trainer), **env}
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=120)
    return proc, calls.read_text().splitlines()


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_all_creates_fakes_gpus_installs_runs_checks_and_deletes(stubs):
    proc, calls = run_script(stubs, "all")
    assert proc.returncode == 0, proc.stderr
    order = [c for c in calls if c.split()[:2] in (["kind", "create"], ["docker", "build"], ["kind", "load"],
                                                   ["helm", "upgrade"], ["kubectl", "apply"], ["kind", "delete"])]
    assert [" ".join(c.split()[:2]) for c in order] == [
        "kind create", "docker build", "docker build", "kind load", "helm upgrade", "kubectl apply", "kind delete"]
    joined = "\n".join(calls)
    # Fake GPUs through the status subresource, host-block labels, one block per worker (sorted).
    assert "kubectl patch node/e2e-worker --subresource=status --type=json" in joined
    assert "nvidia.com~1gpu" in joined
    assert "kubectl label node/e2e-worker --overwrite ladder.promotion.dev/host-block=a100" in joined
    assert "kubectl label node/e2e-worker2 --overwrite ladder.promotion.dev/host-block=l40s" in joined
    # The images under the names the chart and example use, so both install unchanged.
    assert "docker build -f Dockerfile.operator -t ghcr.io/promotion-ladder/operator:0.1.0 ." in joined
    assert "kind load docker-image --name e2e ghcr.io/promotion-ladder/operator:0.1.0 " \
           "ghcr.io/promotion-ladder/trainer:0.1.0" in joined
    helm = next(c for c in calls if c.startswith("helm upgrade"))
    assert shlex.split(helm)[:5] == ["helm", "upgrade", "--install", "ladder", "charts/promotion-ladder"]
    assert "kubectl create namespace ladder-e2e" in joined
    assert "kubectl apply -n ladder-e2e -f examples/demo-ladder.yaml" in joined
    assert "ok: demo Succeeded" in proc.stderr


def test_failed_ladder_collects_diagnostics_and_fails(stubs):
    proc, calls = run_script(stubs, "all", PHASE="Failed", KEEP_ON_FAILURE="1")
    assert proc.returncode == 1
    assert "ladder demo Failed" in proc.stderr
    assert (stubs / "artifacts" / "diagnostics").is_dir()
    assert not any(c.startswith("kind delete") for c in calls), "KEEP_ON_FAILURE keeps the cluster"


def test_cell_off_its_host_block_fails(stubs):
    proc, _ = run_script(stubs, "run", WORKER_BLOCK="l40s")
    assert proc.returncode == 1 and "outside their host blocks" in proc.stderr + proc.stdout


def test_missing_tool_says_which(stubs):
    (stubs / "bin" / "helm").unlink()
    env_path = f"{stubs / 'bin'}:/usr/bin:/bin"
    proc, _ = run_script(stubs, "up", PATH=env_path)
    if subprocess.run(["bash", "-c", "command -v helm"], env={"PATH": env_path}).returncode == 0:
        pytest.skip("a real helm is on /usr/bin or /bin")
    assert proc.returncode == 1 and "helm not found on PATH" in proc.stderr
