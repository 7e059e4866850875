"""The network of one real-node cluster: its own network namespace, joined to the host by a veth pair.

Everything on the nodes' side (containerd, the CNI bridges and pod veths, the kubelets,
kube-proxy's iptables rules, CoreDNS) lives in a network namespace made for this cluster, so
two clusters on one machine never share a bridge, an iptables chain or a port, and deleting
the namespace removes every rule and interface at once. The control plane stays in the host
namespace; the apiserver listens on the host end of the veth, which pods reach through their
bridge's gateway (the `kubernetes` Service's endpoint).

Addresses: cluster number X (200..239, the first whose host link name is free) owns 10.X.0.0/16.
The veth is 10.X.255.1 (host) / 10.X.255.2 (namespace: every kubelet's node IP and CoreDNS);
node i's pods get 10.X.(i+1).0/24 on bridge `lcbr<i>`. The host routes 10.X.0.0/16 to the
namespace so the apiserver (logs, service proxy) and the tests reach pods. Nothing here is
routed off the machine.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

log = logging.getLogger("localcluster.netns")

FIRST_CLUSTER, LAST_CLUSTER = 200, 239
NETNS_DIR = Path("/run/netns")


class NetworkState(TypedDict):
    """What `down` needs to delete a cluster's network after its maker is gone (state.json)."""

    number: int
    netns: str
    host_link: str
    cidr: str


class NetworkError(RuntimeError):
    """The machine refused a step of the cluster network; the message names the step and the command."""


def run(argv: list[str], *, what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise NetworkError(f"{what}: `{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class ClusterNetwork:
    """The addresses and names of one cluster's network (see the module docstring)."""

    number: int

    @property
    def netns(self) -> str:
        return f"localcluster-{self.number}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def host_link(self) -> str:
        return f"lch{self.number}"

    @property
    def cidr(self) -> str:
        return f"10.{self.number}.0.0/16"

    @property
    def host_ip(self) -> str:
        """The host end of the veth: where the apiserver listens for the nodes and pods."""
        return f"10.{self.number}.255.1"

    @property
    def node_ip(self) -> str:
        """The namespace end: every kubelet's InternalIP, CoreDNS's address."""
        return f"10.{self.number}.255.2"

    def pod_subnet(self, index: int) -> str:
        if not 0 <= index < 250:
            raise ValueError(f"node index {index} out of range (at most 250 real nodes)")
        return f"10.{self.number}.{index + 1}.0/24"

    def bridge(self, index: int) -> str:
        return f"lcbr{index}"

    def nsenter(self) -> list[str]:
        """Prefix that runs a command in this namespace but the host's mount namespace (kubelet and
        containerd must see each other's mounts, which `ip netns exec` would hide)."""
        return ["nsenter", f"--net={self.netns_path}", "--"]

    def state(self) -> NetworkState:
        return {"number": self.number, "netns": self.netns, "host_link": self.host_link, "cidr": self.cidr}

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    def create(cls) -> ClusterNetwork:
        """Takes the first free cluster number: creating its host link is the lock (link names are
        unique per namespace, so two clusters starting at once cannot both get one number)."""
        taken = _routed_networks()
        for number in range(FIRST_CLUSTER, LAST_CLUSTER + 1):
            net = cls(number)
            mine = ipaddress.ip_network(net.cidr)
            if any(n.prefixlen > 0 and n.overlaps(mine) for n in taken) or net.netns_path.exists():
                continue
            made = run(
                ["ip", "link", "add", net.host_link, "type", "veth", "peer", "name", "lcn" + str(number)],
                what="create the cluster's veth pair",
                check=False,
            )
            if made.returncode != 0:
                if "File exists" in made.stderr:
                    continue
                raise NetworkError(f"create the cluster's veth pair (needs CAP_NET_ADMIN): {made.stderr.strip()}")
            try:
                net._setup()
            except BaseException:
                net.delete()
                raise
            return net
        raise NetworkError(f"no free cluster network among 10.{FIRST_CLUSTER}-{LAST_CLUSTER}.0.0/16")

    def _setup(self) -> None:
        peer = "lcn" + str(self.number)
        run(["ip", "netns", "add", self.netns], what="create the cluster's network namespace (needs CAP_SYS_ADMIN)")
        run(["ip", "link", "set", peer, "netns", self.netns], what="move the veth into the namespace")
        run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_link], what="address the host end")
        run(["ip", "link", "set", self.host_link, "up"], what="bring the host end up")
        inside = ["ip", "netns", "exec", self.netns]
        run(inside + ["ip", "link", "set", peer, "name", "eth0"], what="name the namespace end eth0")
        run(inside + ["ip", "addr", "add", f"{self.node_ip}/30", "dev", "eth0"], what="address the namespace end")
        run(inside + ["ip", "link", "set", "eth0", "up"], what="bring the namespace end up")
        run(inside + ["ip", "link", "set", "lo", "up"], what="bring the namespace's loopback up")
        run(inside + ["ip", "route", "add", "default", "via", self.host_ip], what="route the namespace to the host")
        run(
            ["ip", "route", "add", self.cidr, "via", self.node_ip, "dev", self.host_link],
            what="route the cluster's pod network from the host",
        )
        # Pods on one bridge reach pods on another (another node) and the host through the
        # namespace; bridged traffic must pass iptables for kube-proxy's Service rules.
        self.sysctl("net.ipv4.ip_forward", "1")
        self.sysctl("net.bridge.bridge-nf-call-iptables", "1", required=False)
        log.info("cluster network %s: namespace %s, host %s, pods %s", self.number, self.netns, self.host_ip, self.cidr)

    def sysctl(self, key: str, value: str, *, required: bool = True) -> None:
        proc = run(
            ["ip", "netns", "exec", self.netns, "sysctl", "-q", "-w", f"{key}={value}"],
            what=f"set {key} in the cluster namespace",
            check=False,
        )
        if proc.returncode != 0:
            if required:
                raise NetworkError(f"set {key}={value} in {self.netns}: {proc.stderr.strip()}")
            log.warning(
                "could not set %s=%s in %s (%s); Services that hairpin on one bridge may not answer",
                key,
                value,
                self.netns,
                proc.stderr.strip(),
            )

    def delete(self) -> None:
        """Deletes the namespace (its bridges, veths, iptables rules) and the host link; idempotent."""
        delete_network(self.state())


def delete_network(state: NetworkState) -> None:
    """Teardown from a recorded state (also what `down` uses after the process that made it is gone)."""
    run(["ip", "link", "del", state["host_link"]], what="delete the host link", check=False)
    if (NETNS_DIR / state["netns"]).exists():
        run(["ip", "netns", "del", state["netns"]], what="delete the cluster namespace", check=False)


def _routed_networks() -> list[ipaddress.IPv4Network]:
    """Networks the host already routes (another cluster's, or anything else on 10.X)."""
    out = run(["ip", "-4", "route", "show"], what="read the host's routes").stdout
    nets = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        try:
            nets.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def leftovers(state: NetworkState) -> list[str]:
    """What of this network still exists (empty after a clean delete)."""
    left = []
    if (NETNS_DIR / state["netns"]).exists():
        left.append(f"network namespace {state['netns']}")
    if run(["ip", "link", "show", state["host_link"]], what="look up the host link", check=False).returncode == 0:
        left.append(f"host link {state['host_link']}")
    return left
