"""Service networking of a real-node cluster: kube-proxy (ClusterIPs) and CoreDNS (cluster.local).

Both run as processes in the cluster's network namespace (localcluster.netns), once per cluster
rather than once per node: all nodes share that namespace, and two kube-proxies there would
rewrite each other's iptables chains.

- kube-proxy, iptables mode, programs every Service's ClusterIP (the `kubernetes` Service's
  10.96.0.1 reaches the apiserver on the host end of the veth, which is how in-cluster config
  works in pods). It is told not to touch conntrack sysctls, which a non-initial network
  namespace cannot set.
- CoreDNS (built by cluster/build.sh with the kubernetes plugin) listens on the namespace's
  address; the `kube-dns` Service in kube-system (ClusterIP 10.96.0.10, the kubelets'
  clusterDNS) has that address as its only endpoint. It answers cluster.local (Services,
  headless Services' pod hostnames, pods) and nothing else: pods here have no business outside.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from .controlplane import SERVICE_CIDR, ControlPlane
from .kubelet import CLUSTER_DNS, CLUSTER_DOMAIN
from .netns import ClusterNetwork
from .processes import free_port, spawn

log = logging.getLogger("localcluster.clusterdns")

DNS_SERVICE = "kube-dns"
DNS_NAMESPACE = "kube-system"


def corefile(network: ClusterNetwork, kubeconfig: Path, health_port: int, ready_port: int) -> str:
    ip = network.node_ip
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {ip}
    errors
    health {ip}:{health_port}
    ready {ip}:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} localcluster
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
    loadbalance
}}
.:53 {{
    bind {ip}
    errors
}}
"""


def start_coredns(
    cp: ControlPlane, network: ClusterNetwork, directory: Path, *, die_with_parent: bool
) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    # CoreDNS reads Services, EndpointSlices, Pods and Namespaces cluster-wide; the admin
    # identity is enough for a test cluster (a real one binds system:coredns).
    path = directory / "Corefile"
    path.write_text(corefile(network, cp.kubeconfig, free_port(), free_port()))
    proc = spawn(
        [*network.nsenter(), str(cp.bin_dir / "coredns"), "-conf", str(path)],
        log_path=directory / "coredns.log",
        die_with_parent=die_with_parent,
    )
    _publish_dns_service(client.CoreV1Api(_api(cp)), client.DiscoveryV1Api(_api(cp)), network.node_ip)
    return proc


def _api(cp: ControlPlane) -> client.ApiClient:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(cp.kubeconfig))


def _publish_dns_service(core: client.CoreV1Api, discovery: client.DiscoveryV1Api, ip: str) -> None:
    """kube-dns: a Service without selector at the kubelets' clusterDNS, and its EndpointSlice."""
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    ports = [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    service = {
        "metadata": {"name": DNS_SERVICE, "namespace": DNS_NAMESPACE, "labels": labels},
        "spec": {"clusterIP": CLUSTER_DNS, "ports": [{**p, "targetPort": 53} for p in ports]},
    }
    endpoints = {
        "metadata": {
            "name": f"{DNS_SERVICE}-localcluster",
            "namespace": DNS_NAMESPACE,
            "labels": {
                **labels,
                "kubernetes.io/service-name": DNS_SERVICE,
                "endpointslice.kubernetes.io/managed-by": "localcluster",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
        "ports": ports,
    }
    for create in (
        lambda: core.create_namespaced_service(DNS_NAMESPACE, service),
        lambda: discovery.create_namespaced_endpoint_slice(DNS_NAMESPACE, endpoints),
    ):
        try:
            create()
        except ApiException as exc:
            if exc.status != 409:
                raise


def start_kube_proxy(
    cp: ControlPlane, network: ClusterNetwork, node_name: str, directory: Path, *, die_with_parent: bool
) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    # system:kube-proxy is bound to the system:node-proxier ClusterRole by the default RBAC.
    kubeconfig = cp.client_kubeconfig("kube-proxy", "/CN=system:kube-proxy")
    config = {
        "kind": "KubeProxyConfiguration",
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": network.cidr,
        "hostnameOverride": node_name,
        "bindAddress": network.node_ip,
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        # A non-initial network namespace cannot set nf_conntrack_max or the TCP timeouts.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    path = directory / "kube-proxy-config.json"
    path.write_text(json.dumps(config, indent=2))
    log.info("kube-proxy for %s (services %s)", network.netns, SERVICE_CIDR)
    return spawn(
        [*network.nsenter(), str(cp.bin_dir / "kube-proxy"), f"--config={path}", "--v=1"],
        log_path=directory / "kube-proxy.log",
        die_with_parent=die_with_parent,
    )
