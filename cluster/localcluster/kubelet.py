"""One real node's kubelet: its configuration, its identity, and the GPUs it advertises.

Each kubelet has its own root directory, ports, certificate directory, pod log directory and
node name, and talks to its own containerd (localcluster.containerd). What it needs on these
machines (found by a spike on 2026-12-06, each line says why):

- cgroupDriver cgroupfs, cgroupsPerQOS false, enforceNodeAllocatable []: no systemd, and the
  kubelet does not manage a QoS cgroup tree on a machine it shares with others;
- failSwapOn false, localStorageCapacityIsolation false: the machine's own settings, and the
  eviction manager cannot stat the root filesystem's device here;
- clusterDNS: the kube-dns Service (CoreDNS, localcluster.clusterdns), clusterDomain cluster.local.

`nvidia.com/gpu` is an extended resource with no device plugin: the node's capacity is patched
through its status subresource (Kubernetes' documented way) and the kubelet copies it to
allocatable. The node.kubernetes.io/not-ready taint that admission puts on a new Node is
removed once the kubelet reports Ready, as the node lifecycle controller (not run here) would.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from .containerd import NodeRuntime
from .controlplane import ControlPlane
from .netns import ClusterNetwork
from .nodeagent import GPU_RESOURCE, NOT_READY_TAINTS, NodeSpec
from .processes import free_port, spawn
from .waiting import wait_for

log = logging.getLogger("localcluster.kubelet")

CLUSTER_DNS = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
REAL_NODE_LABEL = "localcluster.dev/real"


@dataclass
class Kubelet:
    """dir: its root dir, certificates, volume plugins and pod logs (a short path: the kubelet
    binds unix sockets under its root dir, and a socket path stops at 104 bytes); log_dir: its own log."""

    spec: NodeSpec
    dir: Path
    network: ClusterNetwork
    runtime: NodeRuntime
    log_dir: Path

    def __post_init__(self) -> None:
        self.port = free_port()
        self.healthz_port = free_port()

    @property
    def log_path(self) -> Path:
        return self.log_dir / "kubelet.log"

    @property
    def root_dir(self) -> Path:
        return self.dir / "kubelet"

    def config(self, ca_file: Path) -> dict[str, object]:
        return {
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "address": self.network.node_ip,
            "port": self.port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            # Only holders of a certificate from the cluster's CA (the apiserver) may call it.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(ca_file)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": self.runtime.endpoint,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "localStorageCapacityIsolation": False,
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": CLUSTER_DOMAIN,
            # No host search domains or nameservers in pods: they resolve only cluster names.
            "resolvConf": "",
            "podLogsDir": str(self.dir / "pod-logs"),
            "volumePluginDir": str(self.dir / "volume-plugins"),
            "makeIPTablesUtilChains": False,
            "serializeImagePulls": False,
            # The images are loaded, not pulled: never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi"},
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "registerNode": True,
            "nodeStatusUpdateFrequency": "5s",
        }

    def start(self, control_plane: ControlPlane, *, die_with_parent: bool) -> subprocess.Popen[bytes]:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = self.spec.name
        kubeconfig = control_plane.client_kubeconfig(f"kubelet-{name}", f"/O=system:nodes/CN=system:node:{name}")
        config = self.log_dir / "kubelet-config.json"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(self.config(control_plane.ca_file), indent=2))
        labels = {**self.spec.labels, REAL_NODE_LABEL: "true"}
        argv = [
            *self.network.nsenter(),
            str(control_plane.bin_dir / "kubelet"),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.root_dir}",
            f"--cert-dir={self.dir / 'pki'}",
            f"--hostname-override={name}",
            f"--node-ip={self.network.node_ip}",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            "--v=1",
        ]
        return spawn(argv, log_path=self.log_path, die_with_parent=die_with_parent)


def advertise(core: client.CoreV1Api, spec: NodeSpec, timeout: float = 120.0) -> None:
    """Waits for the kubelet's Node to be Ready, patches its GPUs into capacity and lifts the
    not-ready taint; returns once the scheduler can place GPU pods there."""
    name = spec.name

    def ready() -> bool:
        node = core.read_node(name)
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    wait_for(ready, timeout=timeout, what=f"real node {name} Ready")
    gpus = spec.capacity.get(GPU_RESOURCE)
    if gpus:
        core.patch_node_status(name, [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": gpus}])
    node = core.read_node(name)
    taints = [t for t in node.spec.taints or [] if t.key not in NOT_READY_TAINTS]
    if len(taints) != len(node.spec.taints or []):
        core.patch_node(name, {"spec": {"taints": core.api_client.sanitize_for_serialization(taints) or None}})
    if gpus:
        wait_for(
            lambda: (core.read_node(name).status.allocatable or {}).get(GPU_RESOURCE) == gpus,
            timeout=timeout,
            what=f"{gpus} {GPU_RESOURCE} allocatable on {name} (the kubelet copies the patched capacity)",
        )
