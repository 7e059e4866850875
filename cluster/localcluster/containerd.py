"""One real node's container runtime: a containerd of its own (CRI plugin, runc, CNI), in the
cluster's network namespace.

Each node has its own containerd (root, state, socket) because a kubelet kills every pod
sandbox its runtime lists that it does not know: two kubelets on one containerd would kill
each other's pods. Everything of a node's runtime is under its node directory, so `down`
removes it with the directory; the runc state, the CNI IPAM state and the pods' network
namespace mounts are there too, not in /run or /var/lib.

The node's root starts as a hard-link clone of the image store (localcluster.images), so the
project's images and the pause image are there at once, without unpacking gigabytes per node.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .netns import ClusterNetwork
from .processes import spawn

log = logging.getLogger("localcluster.containerd")

NAMESPACE = "k8s.io"  # the CRI plugin's containerd namespace
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
SNAPSHOTTER = "overlayfs"


class ContainerdError(RuntimeError):
    """containerd did not start or answer; the message names the node and its log."""


@dataclass(frozen=True)
class RuntimeClient:
    """containerd's own client (ctr) on one socket, in the CRI namespace."""

    socket: Path

    def ctr(
        self, *args: str, timeout: float = 600, check: bool = True, stdin: IO[bytes] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=stdin,
        )
        if check and proc.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args)} on {self.socket}: {proc.stderr.strip()}")
        return proc

    def image_digests(self) -> dict[str, str]:
        """Reference -> manifest digest of every image the runtime has."""
        out = self.ctr("images", "list", timeout=60).stdout.splitlines()[1:]
        return {cols[0]: cols[2] for cols in (line.split() for line in out) if len(cols) >= 3}

    def import_image(self, archive: Path) -> None:
        """Imports a docker-archive (or OCI) tar, unpacked for the CRI's snapshotter."""
        self.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(archive), timeout=3600)

    def running_tasks(self) -> list[str]:
        """IDs of the containers whose process runs."""
        if not self.socket.exists():
            return []
        out = self.ctr("tasks", "list", check=False, timeout=60).stdout.splitlines()[1:]
        return [cols[0] for cols in (line.split() for line in out) if len(cols) >= 3 and cols[2] == "RUNNING"]

    def containers(self) -> list[str]:
        """IDs of every container (pod sandboxes included)."""
        if not self.socket.exists():
            return []
        return self.ctr("containers", "list", "-q", check=False, timeout=60).stdout.split()

    def remove_all(self) -> None:
        """Kills and deletes every container left (once the kubelet has stopped)."""
        for cid in self.containers():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False, timeout=30)
            self.ctr("tasks", "delete", "--force", cid, check=False, timeout=30)
            self.ctr("containers", "delete", cid, check=False, timeout=30)


@dataclass
class NodeRuntime:
    """containerd for node `name` (index `index` in the cluster) under `dir`."""

    name: str
    index: int
    dir: Path
    network: ClusterNetwork
    pause_image: str
    log_dir: Path

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "containerd.log"

    @property
    def client(self) -> RuntimeClient:
        return RuntimeClient(self.socket)

    # --- configuration ----------------------------------------------------------------------

    def write_config(self) -> Path:
        cni = self.dir / "cni"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-localcluster.conflist").write_text(json.dumps(self.cni_config(), indent=2))
        config = self.dir / "config.toml"
        config.write_text(self.config_toml(cni))
        return config

    def cni_config(self) -> dict[str, object]:
        """A bridge per node (its own pod subnet); no masquerade (pods talk only inside the machine)."""
        return {
            "cniVersion": "1.0.0",
            "name": f"localcluster-{self.name}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.network.bridge(self.index),
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.network.pod_subnet(self.index)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.dir / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def config_toml(self, cni_dir: Path) -> str:
        # restrict_oom_score_adj: without CAP_SYS_RESOURCE (refused on these machines) runc cannot
        # lower a container's oom_score_adj below containerd's own, and every sandbox fails with
        # "can't get final child's PID from pipe".
        return f'''version = 2
root = "{self.root}"
state = "{self.state_dir}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{self.socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.root / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.pause_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{SNAPSHOTTER}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{self.state_dir / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_dir}"
    max_conf_num = 1
'''

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, *, die_with_parent: bool) -> subprocess.Popen[bytes]:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        proc = spawn(
            [*self.network.nsenter(), "containerd", "--config", str(config)],
            log_path=self.log_path,
            die_with_parent=die_with_parent,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ContainerdError(
                    f"node {self.name}: containerd exited with {proc.returncode}; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if self.socket.exists() and self.client.ctr("version", check=False, timeout=10).returncode == 0:
                return proc
            time.sleep(0.2)
        raise ContainerdError(
            f"node {self.name}: containerd did not answer on {self.socket} in 60s; log {self.log_path}"
        )


def clone_root(store: Path, root: Path) -> None:
    """A node's containerd root as hard links to the image store's files: content blobs and the
    unpacked layers are immutable, so nodes share them on disk. The bolt databases (containerd's
    metadata and the snapshotter's) are written in place, so each node gets its own copy."""
    t0 = time.monotonic()
    root.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["cp", "-a", "--link", f"{store}/.", str(root)], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        raise ContainerdError(f"cloning the image store into {root}: {proc.stderr.strip()[-1000:]}")
    for db in root.rglob("*.db"):
        copy = db.with_name(db.name + ".copy")
        shutil.copy2(db, copy)
        os.replace(copy, db)
    log.info("containerd root %s cloned from the image store in %.1fs", root, time.monotonic() - t0)


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""
