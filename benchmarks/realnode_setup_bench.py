"""Set-up cost of a cell in a real container: what a cell's occupied GPU-time holds besides training
on real nodes (kubelet + containerd, localcluster.realnodes), with the trainer image built here.

    python benchmarks/realnode_setup_bench.py [--cold-unpack]     # as root; prints a Markdown table

Starts a real-node cluster (a100-0, l40s-0), `helm install`s the chart with the operator image,
applies tests/realnodes/small-ladder.yaml with kubectl and, once it Succeeded, reads per cell:

- container start: the pod's PodScheduled time to its container's startedAt (sandbox, CNI,
  volumes, container creation; the image is already on the node, cloned from the image store);
- trainer set-up: the result's setupSeconds (process start to the first timed step: imports, data,
  model, compilation);
- train and eval seconds (the result), and occupiedSeconds (the ladder status: Pod times).

--cold-unpack also times what a node pays the first time it sees the trainer image (a registry
pull's unpack): `ctr images import` of the image into an empty containerd. Results:
benchmarks/realnode-results.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "cluster"))

from localcluster import binaries, images  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402
from localcluster.nodeagent import gpu_node  # noqa: E402
from localcluster.waiting import wait_for  # noqa: E402

LADDER = REPO / "tests" / "realnodes" / "small-ladder.yaml"
NS = "bench"


def _time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def kubectl(cluster: LocalCluster, *args: str) -> str:
    return subprocess.run(
        [str(binaries.bin_dir() / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout


def run_ladder(cluster: LocalCluster, refs: dict[str, str]) -> tuple[dict, list[dict]]:
    repo, tag = refs["operator"].rsplit(":", 1)
    kubectl(cluster, "create", "namespace", NS)
    subprocess.run(
        [
            str(binaries.helm_path()),
            "install",
            "ladder",
            str(REPO / "charts" / "promotion-ladder"),
            "-n",
            "ladder-system",
            "--create-namespace",
            f"--kubeconfig={cluster.kubeconfig}",
            "--set",
            f"image.repository={repo}",
            "--set",
            f"image.tag={tag}",
            "--set-json",
            f'trainer.namespaces=["{NS}"]',
            "--wait",
            "--timeout",
            "5m",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=400,
    )
    kubectl(cluster, "apply", "-n", NS, "-f", str(LADDER))

    def done() -> dict | None:
        obj = json.loads(kubectl(cluster, "get", "promotionladder", "small", "-n", NS, "-o", "json"))
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    ladder = wait_for(done, timeout=1200, interval=5, what="the ladder to end")
    pods = json.loads(kubectl(cluster, "get", "pods", "-n", NS, "-o", "json"))["items"]
    return ladder, pods


def rows(ladder: dict, pods: list[dict]) -> list[dict]:
    occupied = {
        (s["name"], c["candidate"], c["hostBlock"]): c.get("occupiedSeconds")
        for s in ladder["status"]["stages"]
        for c in s.get("cells", [])
    }
    out = []
    for pod in pods:
        labels = pod["metadata"]["labels"]
        term = pod["status"]["containerStatuses"][0]["state"].get("terminated") or {}
        if not term.get("message"):
            continue
        result = json.loads(term["message"])
        scheduled = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
        key = (
            labels["ladder.promotion.dev/stage"],
            labels["ladder.promotion.dev/candidate"],
            labels["ladder.promotion.dev/host-block"],
        )
        out.append(
            {
                "cell": "/".join(key),
                "node": pod["spec"]["nodeName"],
                "container start": (_time(term["startedAt"]) - _time(scheduled)).total_seconds(),
                "trainer set-up": result.get("setupSeconds"),
                "train": result.get("trainSeconds"),
                "eval": result.get("evalSeconds"),
                "occupied": occupied.get(key),
            }
        )
    return sorted(out, key=lambda r: r["cell"])


def cold_unpack() -> float:
    """Seconds to import the trainer image into an empty containerd (what a first pull unpacks)."""
    with tempfile.TemporaryDirectory(prefix="bench-unpack-", dir=images.images_dir()) as tmp:
        archive = Path(tmp) / "trainer.tar"
        with images.store_runtime() as store:
            store.ctr("images", "export", str(archive), images.TRAINER.reference, timeout=3600)
        root, state = Path(tmp) / "root", Path(tmp) / "state"
        config = Path(tmp) / "config.toml"
        config.write_text(f'version = 2\nroot = "{root}"\nstate = "{state}"\n[grpc]\n  address = "{state}/c.sock"\n')
        proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            client = images.RuntimeClient(state / "c.sock")
            wait_for(lambda: client.ctr("version", check=False).returncode == 0, timeout=60, what="containerd")
            t0 = time.monotonic()
            client.import_image(archive)
            return time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cold-unpack", action="store_true", help="also time importing the trainer image into an empty node"
    )
    args = p.parse_args()
    t0 = time.monotonic()
    images.build_all()
    refs = {i.name: i.reference for i in images.IMAGES}
    print(f"images ready in {time.monotonic() - t0:.0f}s: {refs}", file=sys.stderr)
    directory = Path(tempfile.mkdtemp(prefix="localcluster-bench-"))
    t0 = time.monotonic()
    cluster = LocalCluster.start(directory, [gpu_node("a100-0", "a100", 2), gpu_node("l40s-0", "l40s", 2)], real=True)
    print(f"real nodes up in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    try:
        t0 = time.monotonic()
        ladder, pods = run_ladder(cluster, refs)
        print(
            f"ladder {ladder['status']['phase']} in {time.monotonic() - t0:.0f}s (helm install included)",
            file=sys.stderr,
        )
        table = rows(ladder, pods)
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    cols = ["cell", "node", "container start", "trainer set-up", "train", "eval", "occupied"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in table:
        print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if args.cold_unpack:
        print(f"\ncold unpack of {images.TRAINER.reference} into an empty containerd: {cold_unpack():.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
