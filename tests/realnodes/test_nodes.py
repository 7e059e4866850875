"""Real nodes themselves: kubelets with the labels and GPUs of their spec, pods with cluster DNS and a
route to the apiserver, and `python -m localcluster down` leaving nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client, config

from localcluster import realnodes
from localcluster.containerd import RuntimeClient
from localcluster.images import PAUSE_IMAGE
from localcluster.kubelet import REAL_NODE_LABEL
from localcluster.waiting import wait_for

from .conftest import run_pod

pytestmark = [pytest.mark.integration, pytest.mark.real_nodes]


def test_nodes_are_kubelets_with_their_specs_labels_and_gpus(real_cluster, real_cluster_nodes):
    core = client.CoreV1Api(real_cluster.api_client())
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert set(nodes) == {s.name for s in real_cluster_nodes}
    for spec in real_cluster_nodes:
        node = nodes[spec.name]
        info = node.status.node_info
        assert info.container_runtime_version.startswith("containerd://"), info
        assert info.kubelet_version == "v1.34.4"
        assert spec.labels.items() <= node.metadata.labels.items()
        assert node.metadata.labels[REAL_NODE_LABEL] == "true"
        assert node.status.allocatable["nvidia.com/gpu"] == spec.capacity["nvidia.com/gpu"]
        assert not node.spec.taints
        assert {"type": "InternalIP", "address": real_cluster.real.network.node_ip} in [
            a.to_dict() for a in node.status.addresses
        ]


# The pause image is a static busybox: its applets run as `/bin/busybox APPLET`.
PROBE = (
    "/bin/busybox nslookup kubernetes.default.svc.cluster.local 2>&1; "
    "/bin/busybox nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT </dev/null && echo apiserver reachable; "
    "/bin/busybox cat /var/run/secrets/kubernetes.io/serviceaccount/namespace"
)


def test_a_pod_resolves_cluster_names_and_reaches_the_apiserver(real_cluster, kubectl, tmp_path):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dns-probe"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "c",
                    "image": PAUSE_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/busybox", "sh", "-c", PROBE],
                }
            ],
        },
    }
    done = run_pod(kubectl, "default", pod, tmp_path)
    out = kubectl("logs", "-n", "default", "dns-probe")
    assert done["status"]["phase"] == "Succeeded", out
    assert "Address: 10.96.0.1" in out  # CoreDNS answered the kubernetes Service's ClusterIP
    assert "apiserver reachable" in out  # kube-proxy took 10.96.0.1:443 to the apiserver
    assert out.strip().endswith("default")  # the projected service-account volume


def _cgroup_dirs(ids: list[str]) -> list[str]:
    found = []
    for controller in Path("/sys/fs/cgroup").iterdir():
        for cid in ids:
            found += [str(p) for p in controller.rglob(cid)] if controller.is_dir() else []
    return found


def test_down_leaves_no_mounts_netns_containers_or_cgroups(real_cluster, tmp_path):
    """A second real cluster beside the session's (its own namespace, bridges, ports): `up
    --kubelet`, a running pod, then `down`; nothing of it is left, and the first still works."""
    directory = tmp_path / "second"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.run(
        [sys.executable, "-m", "localcluster", "up", "--kubelet", "--nodes", "h100=1:1", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert up.returncode == 0, up.stderr[-3000:]
    state = json.loads((directory / "state.json").read_text())
    assert state["real_nodes"]["network"]["netns"] != real_cluster.real.network.netns
    kubeconfig = state["kubeconfig"]
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "sleeper"},
            "spec": {"containers": [{"name": "c", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}]},
        },
    )
    wait_for(
        lambda: core.read_namespaced_pod("sleeper", "default").status.phase == "Running",
        timeout=120,
        what="a pod running on the second cluster",
    )
    runtime = RuntimeClient(Path(state["real_nodes"]["sockets"][0]))
    ids = runtime.containers()
    assert len(ids) == 2  # the sandbox and the container
    assert _cgroup_dirs(ids)  # runc made their cgroups
    down = subprocess.run(
        [sys.executable, "-m", "localcluster", "down", "--dir", str(directory), "--keep"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert down.returncode == 0, down.stderr[-3000:]
    assert realnodes.leftovers(state["real_nodes"]) == []
    assert _cgroup_dirs(ids) == []
    cidr = state["real_nodes"]["network"]["cidr"].rsplit(".", 2)[0]
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    assert cidr not in rules  # no rule of its own in the host's tables (kube-proxy's were in its namespace)
    # The session's cluster is untouched.
    first = client.CoreV1Api(real_cluster.api_client())
    assert all(c.status == "True" for n in first.list_node().items for c in n.status.conditions if c.type == "Ready")
