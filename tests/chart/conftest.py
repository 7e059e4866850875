"""Helpers for the chart tests: find helm, render the chart, pick objects out of the render.

helm comes from cluster/build.sh (${LADDER_CACHE:-~/.cache/promotion-ladder}/bin/helm) or
PATH. Without it the helm tests skip with one line, except under CI (env CI set), where a
missing helm is a failure: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from localcluster import binaries
from localcluster.pytest_plugin import in_ci

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "promotion-ladder"
FULL_VALUES = Path(__file__).with_name("values-full.yaml")
RELEASE = "ladder"
NAMESPACE = "ladder-system"
# helm built from source (cluster/build.sh) does not know its client-go version and assumes
# Kubernetes v1.20 offline, below the chart's kubeVersion (>=1.28); offline commands get the
# version of the local control plane instead.
KUBE_VERSION = "1.34.4"


def find_helm() -> str | None:
    cached = binaries.helm_path()
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("helm")


NO_HELM = "helm not found in ${LADDER_CACHE:-~/.cache/promotion-ladder}/bin or PATH; run cluster/build.sh"


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_helm()
    if path is None:
        if in_ci():
            pytest.fail(NO_HELM + " (CI is set: the chart tests must run)", pytrace=False)
        pytest.skip(NO_HELM)
    return path


def run_helm(helm: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # A throwaway HELM_* home: no repositories, cache or plugins of the user's leak in.
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/ladder-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/ladder-helm/config",
        "HELM_DATA_HOME": "/tmp/ladder-helm/data",
    }
    return subprocess.run([helm, *args], capture_output=True, text=True, env=env, timeout=timeout)


def render(
    helm: str, *values_files: Path, set_values: dict[str, str] | None = None, expect_ok: bool = True
) -> list[dict] | subprocess.CompletedProcess:
    """`helm template` of the chart; the objects (crds/ included) or, with expect_ok=False, the process."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds", "--kube-version", KUBE_VERSION]
    for f in values_files:
        args += ["-f", str(f)]
    for k, v in (set_values or {}).items():
        args += ["--set-json", f"{k}={v}"]
    proc = run_helm(helm, *args)
    if not expect_ok:
        return proc
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in objects(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]
