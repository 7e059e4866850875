"""Where the control-plane binaries built by cluster/build.sh live, and whether they are there."""

from __future__ import annotations

import os
from pathlib import Path

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def cache_dir() -> Path:
    return Path(os.environ.get("LADDER_CACHE") or Path.home() / ".cache" / "promotion-ladder")


def bin_dir() -> Path:
    """LOCALCLUSTER_BIN if set, else ${LADDER_CACHE:-~/.cache/promotion-ladder}/bin."""
    return Path(os.environ.get("LOCALCLUSTER_BIN") or cache_dir() / "bin")


def missing_binaries(directory: Path | None = None) -> list[str]:
    directory = directory or bin_dir()
    return [b for b in BINARIES if not os.access(directory / b, os.X_OK)]


def missing_reason(directory: Path | None = None) -> str | None:
    """One line saying why the control plane cannot start and how to fix it, or None."""
    directory = directory or bin_dir()
    missing = missing_binaries(directory)
    if not missing:
        return None
    return (
        f"local Kubernetes control plane not built ({', '.join(missing)} missing in {directory}): "
        "run `bash cluster/build.sh` once (needs Go and the Go module proxy; about 25 min cold on 2 cores)"
    )


def helm_path() -> Path:
    return bin_dir() / "helm"


# Prometheus and promtool (cluster/build.sh, part "prometheus"): the monitoring tests run the
# dashboard's queries and the alert rules through them.
PROMETHEUS_BINARIES = ("prometheus", "promtool")


def prometheus_path() -> Path:
    return bin_dir() / "prometheus"


def promtool_path() -> Path:
    return bin_dir() / "promtool"


def prometheus_missing_reason(directory: Path | None = None) -> str | None:
    """One line saying that prometheus/promtool are not built and how to build them, or None."""
    directory = directory or bin_dir()
    missing = [b for b in PROMETHEUS_BINARIES if not os.access(directory / b, os.X_OK)]
    if not missing:
        return None
    return (
        f"Prometheus not built ({', '.join(missing)} missing in {directory}): "
        "run `bash cluster/build.sh prometheus` once (needs Go and the Go module proxy; see docs/localcluster.md)"
    )


# Kueue (cluster/build.sh, part "kueue"): the manager, and beside it the module's CRDs, webhook
# configurations and RBAC that `localcluster.kueue` installs.
def kueue_path() -> Path:
    return bin_dir() / "kueue"


def kueue_config_dir() -> Path:
    return bin_dir() / "kueue-config"


def kueue_missing_reason(directory: Path | None = None) -> str | None:
    """One line saying that Kueue is not built and how to build it, or None."""
    directory = directory or bin_dir()
    missing = []
    if not os.access(directory / "kueue", os.X_OK):
        missing.append("kueue")
    if not (directory / "kueue-config" / "VERSION").exists():  # written last by build.sh
        missing.append("kueue-config/")
    if not missing:
        return None
    return (
        f"Kueue not built ({', '.join(missing)} missing in {directory}): "
        "run `bash cluster/build.sh kueue` once (needs Go and the Go module proxy; see docs/localcluster.md)"
    )


# Real nodes (`up --kubelet`): kubelet, kube-proxy and CoreDNS from cluster/build.sh (parts node,
# coredns); containerd, runc, the CNI plugins, iptables and nsenter from Debian's packages.
NODE_BINARIES = ("kubelet", "kube-proxy", "kubectl", "coredns")
HOST_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "mount": "mount",
}
CNI_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
DEBIAN_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables")


def real_nodes_missing_reason(directory: Path | None = None) -> str | None:
    """One line saying what real nodes lack on this machine and how to get it, or None."""
    import shutil

    directory = directory or bin_dir()
    if os.geteuid() != 0:
        return "real nodes need root (network namespaces, mounts, containerd)"
    built = [b for b in NODE_BINARIES if not os.access(directory / b, os.X_OK)]
    if built:
        return (
            f"real nodes: {', '.join(built)} missing in {directory}: run `bash cluster/build.sh node coredns` "
            "(a few minutes once the control plane is built)"
        )
    tools = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    cni = [p for p in CNI_PLUGINS if not os.access(CNI_DIR / p, os.X_OK)]
    if tools or cni:
        missing = tools + (["containernetworking-plugins"] if cni else [])
        return f"real nodes: Debian packages missing: apt-get install {' '.join(sorted(set(missing)))}"
    return None
