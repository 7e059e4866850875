"""Real nodes: a containerd and a kubelet per node, kube-proxy and CoreDNS, in the cluster's own
network namespace (`python -m localcluster up --kubelet`, the `real_cluster` pytest fixture).

Start: the network (localcluster.netns) exists before the control plane, whose apiserver
listens on its host end. Then CoreDNS and kube-proxy, then per node its containerd (root cloned
from the image store) and kubelet; each node is Ready, untainted and advertising its GPUs
before start() returns.

Stop (`teardown`, from a recorded state so `down` can do it for a detached `up`): the caller has
stopped the controller manager and the scheduler, so nothing recreates pods. All pods are
deleted through the API and the kubelets stop their containers (the CNI tears each pod's
network down); what is left is killed through containerd; then the processes stop, every
mount under the cluster directory is unmounted (the kubelets' root dirs, pod volumes, pod
network namespaces, container root filesystems) and the network namespace is deleted with its
bridges, veths and iptables rules. `leftovers()` says what, if anything, survived.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from kubernetes import client, config

from . import images
from .clusterdns import start_coredns, start_kube_proxy
from .containerd import NodeRuntime, RuntimeClient
from .controlplane import ControlPlane
from .hostmounts import mounts_under, unmount_under
from .kubelet import Kubelet, advertise
from .netns import ClusterNetwork, NetworkState, delete_network
from .netns import leftovers as network_leftovers
from .nodeagent import NodeSpec
from .processes import stop_group

log = logging.getLogger("localcluster.realnodes")


# The nodes' runtime state (kubelet root dirs, containerd roots, states and sockets) lives under
# RUN_ROOT/<cluster number>: a short path, since the kubelet and containerd bind unix sockets
# there and a socket path stops at 104 bytes; the cluster directory (any length) keeps the logs.
RUN_ROOT = Path("/var/lib/localcluster")


class RealNodesState(TypedDict):
    """What `down` needs to empty and stop real nodes after their maker is gone (state.json)."""

    dir: str
    run_dir: str
    network: NetworkState
    sockets: list[str]
    pids: dict[str, int]


@dataclass
class RealNodes:
    control_plane: ControlPlane
    network: ClusterNetwork
    nodes: list[NodeSpec]
    dir: Path
    die_with_parent: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    runtimes: list[NodeRuntime] = field(default_factory=list)

    def start(self, timeout: float = 180.0) -> RealNodes:
        t0 = time.monotonic()
        cp, net, keep = self.control_plane, self.network, self.die_with_parent
        self.procs["coredns"] = start_coredns(cp, net, self.dir / "services", die_with_parent=keep)
        self.procs["kube-proxy"] = start_kube_proxy(
            cp, net, self.nodes[0].name, self.dir / "services", die_with_parent=keep
        )
        pause = images.PAUSE_IMAGE
        kubelets = []
        for index, spec in enumerate(self.nodes):
            node_dir, log_dir = self.run_dir / spec.name, self.dir / spec.name
            runtime = NodeRuntime(spec.name, index, node_dir / "containerd", net, pause, log_dir)
            self.runtimes.append(runtime)
            images.clone_store(runtime.root)
            self.procs[f"containerd-{spec.name}"] = runtime.start(die_with_parent=keep)
            if pause not in runtime.client.image_digests():
                runtime.client.import_image(images.pause_archive())
            kubelet = Kubelet(spec, node_dir, net, runtime, log_dir)
            self.procs[f"kubelet-{spec.name}"] = kubelet.start(cp, die_with_parent=keep)
            kubelets.append(kubelet)
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(cp.kubeconfig)))
        for kubelet in kubelets:
            self._check_alive()
            advertise(core, kubelet.spec, timeout=timeout)
        log.info("real nodes %s ready in %.1fs", [n.name for n in self.nodes], time.monotonic() - t0)
        return self

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; logs under {self.dir}")

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / str(self.network.number)

    def state(self) -> RealNodesState:
        return {
            "dir": str(self.dir),
            "run_dir": str(self.run_dir),
            "network": self.network.state(),
            "sockets": [str(r.socket) for r in self.runtimes],
            "pids": {name: proc.pid for name, proc in self.procs.items()},
        }

    def stop(self) -> None:
        """Empties and stops the nodes (the caller stopped the controllers first); idempotent."""
        teardown(self.state(), self.control_plane.kubeconfig)
        for proc in self.procs.values():
            proc.poll()
        self.procs.clear()


# --- teardown from a recorded state ---------------------------------------------------------


def teardown(state: RealNodesState, kubeconfig: Path | None) -> None:
    runtimes = [RuntimeClient(Path(s)) for s in state["sockets"]]
    pids = state["pids"]
    if kubeconfig is not None:
        _delete_all_pods(kubeconfig, runtimes)
    for name, pid in pids.items():
        if name.startswith("kubelet-"):
            stop_group(pid, grace=10.0)
    for runtime in runtimes:
        runtime.remove_all()
    for name, pid in pids.items():
        if name.startswith("containerd-"):
            stop_group(pid, grace=10.0)
    for runtime in runtimes:
        _kill_shims(runtime.socket)
        for sock in (runtime.socket, runtime.socket.with_name(runtime.socket.name + ".ttrpc")):
            sock.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            runtime.socket.parent.rmdir()  # the cluster's socket directory, once its last node is gone
    for name in ("kube-proxy", "coredns"):
        if name in pids:
            stop_group(pids[name], grace=5.0)
    for directory in (Path(state["run_dir"]), Path(state["dir"])):
        unmount_under(directory)
    shutil.rmtree(state["run_dir"], ignore_errors=True)
    delete_network(state["network"])


def _delete_all_pods(kubeconfig: Path, runtimes: list[RuntimeClient], timeout: float = 60.0) -> None:
    """Deletes every pod; the kubelets stop their containers (and the CNI frees their network)."""
    try:
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
        for pod in core.list_pod_for_all_namespaces().items:
            core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
    except Exception as exc:  # noqa: BLE001 - the apiserver may be gone; containerd cleans up below
        log.warning("could not delete the pods through the API (%s); killing containers directly", exc)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(r.running_tasks() for r in runtimes):
        time.sleep(0.5)


def _kill_shims(socket: Path) -> None:
    """containerd-shim processes of this runtime that outlived it (they are started detached)."""
    needle = str(socket).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and needle in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def leftovers(state: RealNodesState) -> list[str]:
    """What survived a teardown: mounts, the network, processes, containers (empty when clean)."""
    left = [f"mount {m}" for d in (state["run_dir"], state["dir"]) for m in mounts_under(Path(d))]
    left += [f"directory {state['run_dir']}"] if Path(state["run_dir"]).exists() else []
    left += network_leftovers(state["network"])
    for name, pid in state["pids"].items():
        if _alive(pid):
            left.append(f"process {name} ({pid})")
    left += [f"socket {s}" for s in state["sockets"] if Path(s).exists()]
    for sock in state["sockets"]:
        needle = str(sock).encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if needle in (entry / "cmdline").read_bytes():
                        left.append(f"process {entry.name} using {sock}")
                except OSError:
                    pass
    return left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie of ours still counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
