"""Shared pytest setup. The local Kubernetes control plane fixtures (local_cluster, namespace,
local_cluster_nodes) come from cluster/localcluster/pytest_plugin.py."""

pytest_plugins = ["localcluster.pytest_plugin"]
