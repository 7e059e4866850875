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

Real nodes (tests marked ``real_nodes``, docs/localcluster.md "Real nodes"):

- ``project_images`` (session): the operator and trainer images built from the Dockerfiles
  (localcluster.images; cached) and in the image store; name -> reference.
- ``real_cluster_nodes`` (session): a100-0 and l40s-0 (2 GPUs each), the host blocks of the
  examples' ladders. ``real_cluster`` (session): a LocalCluster whose nodes are real kubelets
  and containerds (``.real``), started after the images so every node has them.

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
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import binaries
from .nodeagent import NodeSpec, default_nodes, gpu_node

if TYPE_CHECKING:
    from .cluster import LocalCluster
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


def _require_real_nodes() -> None:
    from .images import images_missing_reason

    require_tool(binaries.real_nodes_missing_reason() or images_missing_reason(), "real-node tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Real-node tests run last (a stable sort): scripts/test.sh builds their images in the
    background, and every other test runs meanwhile instead of waiting for them."""
    items.sort(key=lambda item: item.get_closest_marker("real_nodes") is not None)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is not None:
        _require_binaries()
    if item.get_closest_marker("real_nodes") is not None:
        _require_real_nodes()


@pytest.fixture(scope="session")
def local_cluster_nodes() -> list[NodeSpec]:
    return default_nodes()


@contextmanager
def _session_cluster(prefix: str, nodes: list[NodeSpec], **start: object) -> Iterator[LocalCluster]:
    """A started LocalCluster for the session; stopped, and its directory removed, at the end
    (kept with LOCALCLUSTER_KEEP), also when it fails to start."""
    from .cluster import LocalCluster  # imports the kubernetes client only when needed

    directory = Path(tempfile.mkdtemp(prefix=prefix))
    keep = bool(os.environ.get("LOCALCLUSTER_KEEP"))
    try:
        cluster = LocalCluster.start(directory, nodes, **start)  # type: ignore[arg-type]
    except BaseException:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        yield cluster
    finally:
        cluster.stop()
        if keep:
            print(f"\nlocalcluster: kept {directory} (LOCALCLUSTER_KEEP)")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def local_cluster(local_cluster_nodes: list[NodeSpec]):
    _require_binaries()
    with _session_cluster("localcluster-", local_cluster_nodes) as cluster:
        yield cluster


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
    wait_for(
        lambda: core.read_namespaced_service_account("default", name), timeout=30, what=f"ServiceAccount {name}/default"
    )
    try:
        yield name
    finally:
        with suppress(client.ApiException):
            core.delete_namespace(name)


@pytest.fixture(scope="session")
def kueue_cluster_nodes() -> list[NodeSpec]:
    return default_nodes()


@pytest.fixture(scope="session")
def _kueue_stack(kueue_cluster_nodes: list[NodeSpec]):
    from .kueue import LocalKueue

    _require_binaries()
    require_tool(binaries.kueue_missing_reason(), "Kueue tests")
    with _session_cluster("localcluster-kueue-", kueue_cluster_nodes) as cluster:
        kueue = LocalKueue(cluster.control_plane)
        try:
            kueue.start()
            yield cluster, kueue
        finally:
            kueue.stop()


@pytest.fixture(scope="session")
def kueue_cluster(_kueue_stack):
    return _kueue_stack[0]


@pytest.fixture(scope="session")
def kueue(_kueue_stack):
    return _kueue_stack[1]


@pytest.fixture
def kueue_namespace(kueue_cluster, request: pytest.FixtureRequest):
    yield from _fresh_namespace(kueue_cluster, request)


@pytest.fixture(scope="session")
def project_images() -> dict[str, str]:
    from .images import IMAGES, build_all

    _require_real_nodes()
    build_all()
    return {image.name: image.reference for image in IMAGES}


@pytest.fixture(scope="session")
def real_cluster_nodes() -> list[NodeSpec]:
    return [gpu_node("a100-0", "a100", 2), gpu_node("l40s-0", "l40s", 2)]


@pytest.fixture(scope="session")
def real_cluster(project_images: dict[str, str], real_cluster_nodes: list[NodeSpec]):
    with _session_cluster("localcluster-real-", real_cluster_nodes, real=True, timeout=180.0) as cluster:
        yield cluster
