"""The end-to-end checks every real-cluster flow shares: one list, run against any cluster
through kubectl once a ladder has ended.

    python3 tests/e2e/checks.py --namespace ladder-e2e --ladder demo     # all checks; exit 1 on any failure

Two flows call it: scripts/kind-e2e.sh (`run`, and tests/e2e/test_kind.py) on kind, and
tests/realnodes/test_e2e.py on the local cluster's real nodes. Standard library only, so the
kind script runs it with any python3 beside kubectl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

HOST_BLOCK_LABEL = "ladder.promotion.dev/host-block"
LADDER_LABEL = "ladder.promotion.dev/ladder"
RESULT_ANNOTATION = "ladder.promotion.dev/result"
TRAINER_ACCOUNT = "ladder-trainer"
# Container IDs a CRI runtime reports; the simulated node agent reports localcluster://<pid>.
CRI_RUNTIMES = ("containerd://", "cri-o://", "docker://")


class CheckFailed(AssertionError):
    pass


@dataclass(frozen=True)
class Target:
    """Where the checks look: the ladder, and the chart release that runs the operator."""

    kubectl: Callable[..., str]
    namespace: str
    ladder: str
    system_namespace: str = "ladder-system"
    release: str = "ladder"

    @property
    def operator(self) -> str:
        return f"{self.release}-promotion-ladder"

    def json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def ladder_object(self) -> dict:
        return self.json("get", "promotionladder", self.ladder, "-n", self.namespace)

    def cell_pods(self) -> list[dict]:
        pods = self.json("get", "pods", "-n", self.namespace, "-l", f"{LADDER_LABEL}={self.ladder}")["items"]
        if not pods:
            raise CheckFailed(f"no pods of ladder {self.ladder} left to check")
        return pods


def kubectl_runner(kubectl: str = "kubectl", kubeconfig: str | None = None) -> Callable[..., str]:
    env = {**os.environ, **({"KUBECONFIG": kubeconfig} if kubeconfig else {})}

    def run(*args: str, check: bool = True) -> str:
        proc = subprocess.run([kubectl, *args], capture_output=True, text=True, timeout=120, env=env, check=False)
        if check and proc.returncode != 0:
            raise CheckFailed(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    return run


def _finished_cells(status: dict) -> list[dict]:
    return [c for s in status.get("stages", []) for c in s.get("cells", []) if c.get("state") == "Succeeded"]


# --- the checks ------------------------------------------------------------------------------


def ladder_succeeded(t: Target) -> None:
    status = t.ladder_object().get("status", {})
    if status.get("phase") != "Succeeded":
        raise CheckFailed(f"phase {status.get('phase')}; conditions {status.get('conditions')}")
    if not _finished_cells(status):
        raise CheckFailed("no cell Succeeded")


def cells_on_their_host_blocks(t: Target) -> None:
    spec = t.ladder_object()["spec"]
    selectors = {h["name"]: h.get("nodeSelector", {}) for h in spec["hostBlocks"]}
    nodes = {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in t.json("get", "nodes")["items"]}
    for pod in t.cell_pods():
        block = pod["metadata"]["labels"][HOST_BLOCK_LABEL]
        labels = nodes.get(pod["spec"].get("nodeName", ""), {})
        if not selectors[block].items() <= labels.items():
            raise CheckFailed(
                f"pod {pod['metadata']['name']} of host block {block} ran on {pod['spec'].get('nodeName')}"
            )
        if pod["spec"].get("serviceAccountName") != TRAINER_ACCOUNT:
            raise CheckFailed(f"pod {pod['metadata']['name']} ran as {pod['spec'].get('serviceAccountName')}")


def _terminated(pod: dict) -> dict:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return statuses[0].get("state", {}).get("terminated") or {}


def cells_ran_in_containers(t: Target) -> None:
    for pod in t.cell_pods():
        cid = (pod.get("status", {}).get("containerStatuses") or [{}])[0].get("containerID", "")
        if not cid.startswith(CRI_RUNTIMES):
            raise CheckFailed(f"pod {pod['metadata']['name']}: container ID {cid!r} is not a CRI runtime's")


def results_through_the_kubelet(t: Target) -> None:
    """Each successful cell's value is the one its container's termination message carries (the
    kubelet reads it from the container's file), and the same result is on the Pod's annotation,
    which only the trainer's own token may write."""
    values = {}
    for pod in t.cell_pods():
        term = _terminated(pod)
        if term.get("exitCode") != 0 or not term.get("message"):
            continue
        message = json.loads(term["message"])
        labels = pod["metadata"]["labels"]
        key = (labels["ladder.promotion.dev/stage"], labels["ladder.promotion.dev/candidate"], labels[HOST_BLOCK_LABEL])
        values[key] = message.get("value")
        annotation = json.loads(pod["metadata"].get("annotations", {}).get(RESULT_ANNOTATION, "{}"))
        if annotation.get("value") != message.get("value") or annotation.get("kind") != "CellResult":
            raise CheckFailed(
                f"pod {pod['metadata']['name']}: annotation {annotation} differs from its termination message {message}"
            )
    status = t.ladder_object()["status"]
    cells = [(s["name"], c) for s in status["stages"] for c in s.get("cells", []) if c.get("state") == "Succeeded"]
    if not values:
        raise CheckFailed("no pod left with a termination message")
    for stage, cell in cells:
        key = (stage, cell["candidate"], cell["hostBlock"])
        if key in values and values[key] != cell.get("value"):
            raise CheckFailed(f"cell {key}: status value {cell.get('value')} but termination message {values[key]}")


def _series(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples of `name` whose labels include `labels` (in any order)."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            if want <= set(head[len(name) + 1 : -1].split(",")):
                out.append(float(value))
    return out


def metrics_show_the_gpu_hours(t: Target) -> None:
    text = t.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{t.system_namespace}/services/http:{t.operator}-metrics:8080/proxy/metrics"
    )
    if sum(_series(text, "ladder_gpu_seconds_total", ladder=t.ladder, namespace=t.namespace)) <= 0:
        raise CheckFailed(f"/metrics has no ladder_gpu_seconds_total > 0 for {t.ladder}")
    if not _series(text, "ladder_info", ladder=t.ladder, namespace=t.namespace, phase="Succeeded"):
        raise CheckFailed(f"/metrics has no ladder_info for {t.ladder} in phase Succeeded")


def printer_columns(t: Target) -> None:
    header = t.kubectl("get", "promotionladders", "-n", t.namespace).splitlines()[0].split()
    if header != ["NAME", "PHASE", "STAGE", "LEADER", "GPU-HOURS", "AGE"]:
        raise CheckFailed(f"kubectl get columns {header}")


def operator_hardened(t: Target) -> None:
    pods = t.json("get", "pods", "-n", t.system_namespace, "-l", "app.kubernetes.io/component=operator")["items"]
    if len(pods) != 1:
        raise CheckFailed(f"{len(pods)} operator pods")
    pod = pods[0]
    if pod["spec"]["serviceAccountName"] != t.operator:
        raise CheckFailed(f"operator runs as {pod['spec']['serviceAccountName']}")
    sc = pod["spec"]["containers"][0]["securityContext"]
    if not (
        sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    ):
        raise CheckFailed(f"operator securityContext {sc}")
    if not all(s["ready"] for s in pod["status"]["containerStatuses"]):
        raise CheckFailed("operator container not ready (its readiness probe fails)")


# (`kubectl auth can-i` arguments, in the ladder namespace?, allowed) for the operator's ServiceAccount.
CAN_I = {
    "create jobs": (["create", "jobs.batch"], True, True),
    # `TYPE/status` would name an object called "status": a subresource is a flag.
    "patch ladder status": (["patch", "promotionladders.ladder.promotion.dev", "--subresource=status"], True, True),
    "no secrets": (["get", "secrets"], True, False),
    "no pod creation (Jobs make them)": (["create", "pods"], True, False),
    "no ladder deletion": (["delete", "promotionladders.ladder.promotion.dev"], True, False),
    "no node writes": (["patch", "nodes"], False, False),
}


def operator_rbac_least_privilege(t: Target) -> None:
    for case, (what, namespaced, allowed) in CAN_I.items():
        args = ["auth", "can-i", *what, f"--as=system:serviceaccount:{t.system_namespace}:{t.operator}"]
        args += ["-n", t.namespace] if namespaced else []
        answer = t.kubectl(*args, check=False).strip()  # `can-i` exits 1 when it says "no"
        if answer != ("yes" if allowed else "no"):
            raise CheckFailed(f"{case}: kubectl auth can-i {' '.join(what)} answered {answer!r}")


CHECKS: dict[str, Callable[[Target], None]] = {
    "ladder succeeded": ladder_succeeded,
    "cells on their host blocks as ladder-trainer": cells_on_their_host_blocks,
    "cells ran in containers": cells_ran_in_containers,
    "results through the kubelet": results_through_the_kubelet,
    "metrics show the GPU-hours": metrics_show_the_gpu_hours,
    "printer columns": printer_columns,
    "operator hardened and ready": operator_hardened,
    "operator RBAC least privilege": operator_rbac_least_privilege,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--namespace", required=True)
    p.add_argument("--ladder", required=True)
    p.add_argument("--system-namespace", default="ladder-system")
    p.add_argument("--release", default="ladder")
    p.add_argument("--kubectl", default=os.environ.get("KUBECTL", "kubectl"))
    args = p.parse_args(argv)
    target = Target(kubectl_runner(args.kubectl), args.namespace, args.ladder, args.system_namespace, args.release)
    failed = 0
    for name, check in CHECKS.items():
        try:
            check(target)
            print(f"ok: {name}")
        except (CheckFailed, KeyError, ValueError) as exc:
            failed += 1
            print(f"FAILED: {name}: {exc}")
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
