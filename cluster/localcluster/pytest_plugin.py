"""pytest fixtures for tests against the local control plane.

Register with ``pytest_plugins = ["localcluster.pytest_plugin"]`` in a conftest.py.

- ``local_cluster_nodes`` (session): the NodeSpecs to simulate; default_nodes() (two a100
  nodes, one l40s node, 4 GPUs each). Override it in a conftest.py to change them.
- ``local_cluster`` (session): a started :class:`localcluster.cluster.LocalCluster`
  (.kubeconfig, .server, .api_client(), .agent, .nodes, .pod_log(ns, pod), .dir). Started once
  per session, stopped at the end even when tests fail; its processes also die with pytest.
- ``namespace`` (function): a fresh namespace whose default ServiceAccount exists; deleted
  (without waiting) after the test.
- ``kueue_cluster`` (session): a second LocalCluster (nodes: ``kueue_cluster_nodes``, default
  default_nodes()) with Kueue installed and running; ``kueue`` (session): its
  :class:`localcluster.kueue.LocalKueue` (.restart(), .stop(), .start(), .log_path);
  ``kueue_namespace`` (function): a fresh namespace there. A cluster of its own, because
  Kueue's webhooks sit in the path of every Job created, and a test may stop Kueue.

When the binaries from cluster/build.sh are missing, tests marked ``integration`` are skipped
with one line saying how to build them; with CI set (CI=true or CI=1) they fail instead, so
CI cannot pass by skipping. LOCALCLUSTER_KEEP=1 keeps the cluster directory after the session
(its path is printed) for reading the logs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from . import binaries
from .nodeagent import NodeSpec, default_nodes
from .waiting import wait_for


def in_ci() -> bool:
    """CI=true/1/yes: tests that would skip for a missing tool fail instead (CI must run them).
    Every suite that skips for a missing tool reads CI through this one function."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(reason: str | None, what: str = "integration tests") -> None:
    """Skips (fails on CI) when `reason` says a tool is missing, from this one place, so the
    summary shows one line for all tests that need it."""
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI is set, so {what} must not skip: {reason}", pytrace=False)
    pytest.skip(reason)


def _require_binaries() -> None:
    require_tool(binaries.missing_reason())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is not None:
        _require_binaries()


@pytest.fixture(scope="session")
def local_cluster_nodes() -> list[NodeSpec]:
    return default_nodes()


@pytest.fixture(scope="session")
def local_cluster(local_cluster_nodes: list[NodeSpec]):
    from .cluster import LocalCluster  # imports the kubernetes client only when needed

    _require_binaries()
    with _cluster_dir("localcluster-") as directory:
        cluster = LocalCluster.start(directory, local_cluster_nodes)
        try:
            yield cluster
        finally:
            cluster.stop()


@contextmanager
def _cluster_dir(prefix: str) -> Iterator[Path]:
    """A new temporary directory, removed afterwards unless LOCALCLUSTER_KEEP is set."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    finally:
        if os.environ.get("LOCALCLUSTER_KEEP"):
            print(f"\nlocalcluster: kept {directory} (LOCALCLUSTER_KEEP)")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def namespace(local_cluster, request: pytest.FixtureRequest):
    yield from _fresh_namespace(local_cluster, request)


def _fresh_namespace(cluster, request: pytest.FixtureRequest):
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"localcluster.dev/test": "true"}}})
    # Pods are refused until the serviceaccount controller has made "default".
    wait_for(lambda: core.read_namespaced_service_account("default", name), timeout=30,
             what=f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except client.ApiException:
            pass


@pytest.fixture(scope="session")
def kueue_cluster_nodes() -> list[NodeSpec]:
    return default_nodes()


@pytest.fixture(scope="session")
def _kueue_stack(kueue_cluster_nodes: list[NodeSpec]):
    from .cluster import LocalCluster
    from .kueue import LocalKueue

    _require_binaries()
    require_tool(binaries.kueue_missing_reason(), "Kueue tests")
    with _cluster_dir("localcluster-kueue-") as directory:
        cluster = LocalCluster.start(directory, kueue_cluster_nodes)
        kueue = LocalKueue(cluster.control_plane)
        try:
            kueue.start()
            yield cluster, kueue
        finally:
            kueue.stop()
            cluster.stop()


@pytest.fixture(scope="session")
def kueue_cluster(_kueue_stack):
    return _kueue_stack[0]


@pytest.fixture(scope="session")
def kueue(_kueue_stack):
    return _kueue_stack[1]


@pytest.fixture
def kueue_namespace(kueue_cluster, request: pytest.FixtureRequest):
    yield from _fresh_namespace(kueue_cluster, request)
