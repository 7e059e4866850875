"""Fixtures for the operator's integration tests (the unit tests here need none of them)."""

from __future__ import annotations

import pytest

from .harness import Cluster, Operator, install_crd, operator_kubeconfig


@pytest.fixture(scope="session")
def ladder_crd(local_cluster):
    install_crd(local_cluster.api_client())


@pytest.fixture(scope="session")
def operator_identity(local_cluster, ladder_crd, tmp_path_factory):
    return operator_kubeconfig(
        local_cluster.api_client(), local_cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "kubeconfig"
    )


@pytest.fixture
def operator(operator_identity, namespace, tmp_path):
    op = Operator(operator_identity, namespace, tmp_path).start()
    yield op
    op.stop()
    print(f"\noperator log ({op.log_path}):\n{op.tail(60)}")


@pytest.fixture
def kube(local_cluster, namespace):
    return Cluster(local_cluster.api_client(), namespace)
