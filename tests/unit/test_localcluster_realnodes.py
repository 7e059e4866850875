"""The real nodes' configuration as data (no root, no cluster): addresses of a cluster network, the
containerd and CNI configuration, the kubelet's configuration, CoreDNS's Corefile, the image
build's cache key and the pod sandbox image."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from localcluster import images
from localcluster.clusterdns import corefile
from localcluster.containerd import NodeRuntime
from localcluster.kubelet import CLUSTER_DNS, Kubelet
from localcluster.netns import ClusterNetwork
from localcluster.nodeagent import gpu_node

NET = ClusterNetwork(207)

ADDRESSES = {
    "namespace": (NET.netns, "localcluster-207"),
    "host link": (NET.host_link, "lch207"),
    "cluster network": (NET.cidr, "10.207.0.0/16"),
    "apiserver on the host end": (NET.host_ip, "10.207.255.1"),
    "kubelets and CoreDNS on the namespace end": (NET.node_ip, "10.207.255.2"),
    "node 0's pods": (NET.pod_subnet(0), "10.207.1.0/24"),
    "node 3's pods": (NET.pod_subnet(3), "10.207.4.0/24"),
    "node 3's bridge": (NET.bridge(3), "lcbr3"),
}


@pytest.mark.parametrize("case", ADDRESSES, ids=list(ADDRESSES))
def test_cluster_network_addresses(case):
    got, want = ADDRESSES[case]
    assert got == want


def test_pod_subnets_stay_inside_the_cluster_network_and_apart():
    import ipaddress

    nets = [ipaddress.ip_network(NET.pod_subnet(i)) for i in range(250)]
    assert all(n.subnet_of(ipaddress.ip_network(NET.cidr)) for n in nets)
    assert len(set(nets)) == 250
    assert not any(ipaddress.ip_address(NET.node_ip) in n for n in nets)
    with pytest.raises(ValueError, match="out of range"):
        NET.pod_subnet(250)


def test_nsenter_enters_only_the_network_namespace():
    assert NET.nsenter() == ["nsenter", "--net=/run/netns/localcluster-207", "--"]


def runtime(tmp_path: Path, index: int = 1) -> NodeRuntime:
    return NodeRuntime("a100-1", index, tmp_path / "containerd", NET, images.PAUSE_IMAGE, tmp_path / "logs")


def test_containerd_keeps_its_state_under_the_node_directory(tmp_path):
    rt = runtime(tmp_path)
    assert rt.socket == tmp_path / "containerd" / "containerd.sock"
    assert rt.log_path == tmp_path / "logs" / "containerd.log"
    toml = rt.config_toml(tmp_path / "cni")
    for line in (
        f'root = "{rt.root}"',
        f'state = "{rt.state_dir}"',
        f'address = "{rt.socket}"',
        f'Root = "{rt.state_dir / "runc"}"',
        "netns_mounts_under_state_dir = true",
    ):
        assert line in toml
    # The machine lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
    assert "restrict_oom_score_adj = true" in toml
    assert f'sandbox_image = "{images.PAUSE_IMAGE}"' in toml


def test_cni_is_a_bridge_of_the_nodes_own_with_its_own_ipam_state(tmp_path):
    rt = runtime(tmp_path, index=2)
    bridge, portmap = rt.cni_config()["plugins"]
    assert bridge["bridge"] == "lcbr2" and bridge["isGateway"] and not bridge["ipMasq"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.207.3.0/24"}]]
    assert bridge["ipam"]["dataDir"] == str(rt.dir / "ipam")
    assert portmap["type"] == "portmap"


def test_kubelet_configuration(tmp_path):
    rt = runtime(tmp_path)
    kubelet = Kubelet(gpu_node("a100-1", "a100", 2), tmp_path, NET, rt, tmp_path / "logs")
    config = kubelet.config(tmp_path / "ca.crt")
    assert config["containerRuntimeEndpoint"] == f"unix://{rt.socket}"
    assert config["address"] == NET.node_ip and config["port"] != config["healthzPort"]
    assert config["clusterDNS"] == [CLUSTER_DNS] and config["clusterDomain"] == "cluster.local"
    assert (config["cgroupDriver"], config["cgroupsPerQOS"], config["failSwapOn"]) == ("cgroupfs", False, False)
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["podLogsDir"].startswith(str(tmp_path))
    json.dumps(config)  # written as JSON


def test_corefile_serves_cluster_local_on_the_namespace_address(tmp_path):
    text = corefile(NET, tmp_path / "kubeconfig", 8080, 8181)
    assert text.startswith("cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {")
    assert text.count(f"bind {NET.node_ip}") == 2
    assert f"kubeconfig {tmp_path / 'kubeconfig'} localcluster" in text
    assert "forward" not in text  # nothing outside the cluster is resolved


def test_image_cache_key_follows_what_the_build_copies(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "operator" / "pkg").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        (repo / name).write_text(name)
    (repo / "trainer").mkdir()
    (repo / "Dockerfile.operator").write_text(
        "FROM x AS b\nCOPY pyproject.toml README.md ./\nCOPY operator/ operator/\nFROM x\nCOPY --from=b /opt /opt\n"
    )
    (repo / "operator" / "pkg" / "a.py").write_text("a = 1\n")
    monkeypatch.setattr(images, "REPO", repo)
    first = images.input_hash(images.OPERATOR, "base:1")
    (repo / "operator" / "pkg" / "__pycache__").mkdir()
    (repo / "operator" / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert images.input_hash(images.OPERATOR, "base:1") == first  # compiled files are not inputs
    assert images.input_hash(images.OPERATOR, "base:2") != first  # another base
    (repo / "operator" / "pkg" / "a.py").write_text("a = 2\n")
    assert images.input_hash(images.OPERATOR, "base:1") != first  # the package changed
    (repo / "operator" / "pkg" / "a.py").write_text("a = 1\n")
    assert images.input_hash(images.OPERATOR, "base:1") == first
    (repo / "trainer" / "t.py").write_text("t = 1\n")
    assert images.input_hash(images.OPERATOR, "base:1") == first  # not copied by this Dockerfile
    (repo / "Dockerfile.operator").write_text("FROM y\n")
    assert images.input_hash(images.OPERATOR, "base:1") != first  # the Dockerfile changed


def test_copied_paths_are_the_real_dockerfiles_copy_sources():
    assert images.copied_paths(images.REPO / "Dockerfile.operator") == ["pyproject.toml", "README.md", "operator"]
    assert images.copied_paths(images.REPO / "Dockerfile.trainer") == [
        "pyproject.toml",
        "README.md",
        "operator",
        "trainer",
        "cluster",
    ]


def test_pause_image_is_a_deterministic_docker_archive(tmp_path, monkeypatch):
    if not images.BUSYBOX.exists():
        pytest.skip("busybox-static not installed")
    monkeypatch.setattr(images, "images_dir", lambda: tmp_path / "a")
    first = images.pause_archive().read_bytes()
    monkeypatch.setattr(images, "images_dir", lambda: tmp_path / "b")
    assert images.pause_archive().read_bytes() == first
    with tarfile.open(tmp_path / "b" / "pause.tar") as tar:
        (manifest,) = json.loads(tar.extractfile("manifest.json").read())
        config = json.loads(tar.extractfile(manifest["Config"]).read())
    assert manifest["RepoTags"] == [images.PAUSE_IMAGE]
    assert config["config"]["Entrypoint"][0] == "/bin/busybox"


def test_torch_closure_holds_torch_and_what_it_needs():
    pytest.importorskip("torch")
    names = {d.metadata["Name"].lower().replace("_", "-") for d in images.torch_closure()}
    assert {"torch", "filelock", "sympy", "jinja2", "networkx", "fsspec"} <= names
