"""A control plane plus its nodes (the in-process simulated agent, or real kubelets): what the
pytest fixtures hand to tests."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config

from .controlplane import ControlPlane
from .netns import ClusterNetwork
from .nodeagent import NodeAgent, NodeSpec
from .realnodes import RealNodes
from .waiting import wait_for

log = logging.getLogger("localcluster")


@dataclass
class LocalCluster:
    """Everything of one local cluster.

    kubeconfig: admin kubeconfig path (system:masters); server: the apiserver URL;
    dir: the cluster directory (logs/ for components, nodes/ for the agent);
    agent: the NodeAgent (None with no simulated nodes); nodes: the NodeSpecs it serves;
    real: the real nodes (kubelets, containerd, kube-proxy, CoreDNS) when started with real=True.
    """

    control_plane: ControlPlane
    agent: NodeAgent | None
    nodes: list[NodeSpec] = field(default_factory=list)
    real: RealNodes | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def server(self) -> str:
        return self.control_plane.server

    @property
    def dir(self) -> Path:
        return self.control_plane.dir

    def api_client(self) -> client.ApiClient:
        """A new admin ApiClient (one per thread; they are cheap)."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def pod_log(self, namespace: str, pod: str) -> str:
        """What a pod's process printed so far ('' when it has not started)."""
        if self.agent is None:
            return ""
        path = self.agent.log_path(namespace, pod)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        if self.real is not None:
            # Nothing may recreate or place pods while the nodes are emptied.
            self.control_plane.stop_controllers()
            self.real.stop()
        self.control_plane.stop()

    @classmethod
    def start(
        cls,
        dir: Path,
        nodes: Iterable[NodeSpec],
        *,
        die_with_parent: bool = True,
        timeout: float = 120.0,
        real: bool = False,
    ) -> LocalCluster:
        """Simulated nodes by default; real=True runs a kubelet and a containerd per node in the
        cluster's own network namespace (localcluster.realnodes)."""
        t0 = time.monotonic()
        nodes = list(nodes)
        network = ClusterNetwork.create() if real else None
        try:
            cp = ControlPlane(
                dir=Path(dir), die_with_parent=die_with_parent, address=network.host_ip if network else "127.0.0.1"
            ).start(timeout=timeout)
        except BaseException:
            if network is not None:
                network.delete()
            raise
        agent, real_nodes = None, None
        try:
            if network is not None:
                real_nodes = RealNodes(cp, network, nodes, cp.dir / "nodes", die_with_parent=die_with_parent)
                real_nodes.start(timeout=timeout)
            elif nodes:
                agent = NodeAgent(cp.kubeconfig, nodes, cp.dir / "nodes", die_with_parent=die_with_parent).start()
            cluster = cls(cp, agent, nodes, real_nodes)
            cluster.wait_ready(timeout=timeout)
        except BaseException:
            if agent is not None:
                agent.stop()
            if real_nodes is not None:
                cp.stop_controllers()
                real_nodes.stop()
            elif network is not None:
                network.delete()
            cp.stop()
            raise
        log.info("local cluster ready in %.1fs", time.monotonic() - t0)
        return cluster

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Nodes Ready and untainted, and the default ServiceAccount exists (pods can be created)."""
        core = client.CoreV1Api(self.api_client())
        names = {n.name for n in self.nodes}

        def nodes_ready() -> bool:
            ready = set()
            for node in core.list_node().items:
                conds = {c.type: c.status for c in node.status.conditions or []}
                if conds.get("Ready") == "True" and not node.spec.taints:
                    ready.add(node.metadata.name)
            return names <= ready

        wait_for(nodes_ready, timeout=timeout, what=f"nodes {sorted(names)} Ready")
        wait_for(
            lambda: core.read_namespaced_service_account("default", "default"),
            timeout=timeout,
            what="ServiceAccount default/default (kube-controller-manager's serviceaccount controller)",
        )
