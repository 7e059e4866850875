"""python -m localcluster up|down|agent|images|prometheus: the local control plane by hand.

up    [--dir D] [--nodes SPEC] [--kubelet] [--kueue] [--foreground]
      Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and (unless
      --nodes none) the node agent, detached; prints the kubeconfig path. SPEC is
      'default' (a100-0, a100-1, l40s-0; 4 GPUs each), 'none', or KIND=COUNT[:GPUS],...
      with KIND in a100, h100, l40s. With --kubelet the nodes are real: a containerd and a
      kubelet each, kube-proxy and CoreDNS, in the cluster's own network namespace
      (needs root, Debian's containerd, runc and containernetworking-plugins, and
      `cluster/build.sh node coredns`). --kueue also installs and runs Kueue (built by
      `cluster/build.sh kueue`). With --foreground it stays attached and stops
      everything on Ctrl-C.
down  [--dir D] [--keep]
      Stops everything `up` started in D (default: the last `up`), and removes D when
      `up` created it as a temporary directory (unless --keep).
agent --kubeconfig K --dir D [--nodes SPEC]
      Runs only the node agent in the foreground (what `up` starts in the background).
images [--dir D]
      Builds the operator and trainer images from Dockerfile.operator and
      Dockerfile.trainer on bases made here (cached; rebuilt when the Dockerfiles or the
      package change), loads them into the real nodes of the cluster in D (default: the
      last `up`, if it has real nodes; nodes started later get them from the image store),
      and prints the two image references, one per line.
prometheus [--target HOST:PORT]... [--port P] [--dir D] [--scrape-interval I]
      Runs Prometheus (built by `cluster/build.sh prometheus`) in the foreground on
      127.0.0.1:P (default 9090), scraping each target's /metrics (default
      127.0.0.1:8080, `ladder operator`'s metrics port) every I (default 5s); config and
      TSDB in D (default: a new temporary directory). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import binaries
from .processes import group_alive, spawn, stop_group

LAST = "localcluster.last"  # under the cache dir: the directory of the last `up`


def _last_file() -> Path:
    return binaries.cache_dir() / LAST


def cmd_up(args: argparse.Namespace) -> int:
    from .cluster import LocalCluster
    from .controlplane import ControlPlane
    from .nodeagent import parse_nodes

    nodes = parse_nodes(args.nodes)
    created = args.dir is None
    directory = Path(args.dir or tempfile.mkdtemp(prefix="localcluster-")).resolve()
    if (directory / "state.json").exists() and _alive(json.loads((directory / "state.json").read_text())):
        print(
            f"localcluster: already running in {directory}; `python -m localcluster down --dir {directory}` first",
            file=sys.stderr,
        )
        return 1
    t0 = time.monotonic()
    if args.kubelet and (reason := binaries.real_nodes_missing_reason()):
        print(f"localcluster: {reason}", file=sys.stderr)
        return 2
    if args.kubelet and not args.foreground:
        return _up_real_detached(directory, nodes, created, t0, with_kueue=args.kueue)
    if args.foreground:
        cluster = LocalCluster.start(directory, nodes, die_with_parent=True, real=args.kubelet)
        kueue = _start_kueue(cluster.control_plane, True) if args.kueue else None
        _print_up(cluster.control_plane, directory, time.monotonic() - t0, foreground=True)
        stop = threading.Event()
        # Explicit handlers: a shell starts background jobs with SIGINT ignored.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        if kueue is not None:
            kueue.stop()
        cluster.stop()
        if created:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
        print("localcluster: stopped")
        return 0
    cp = ControlPlane(dir=directory, die_with_parent=False).start()
    state = cp.state()
    state["created_dir"] = created
    if nodes:
        agent_log = directory / "logs" / "node-agent.log"
        proc = spawn(
            [
                sys.executable,
                "-m",
                "localcluster",
                "agent",
                "--kubeconfig",
                str(cp.kubeconfig),
                "--dir",
                str(directory / "nodes"),
                "--nodes",
                args.nodes,
            ],
            log_path=agent_log,
            die_with_parent=False,
        )
        state["components"]["node-agent"] = {"pid": proc.pid, "log": str(agent_log)}
        (directory / "state.json").write_text(json.dumps(state, indent=2))
        try:
            _wait_nodes(cp.kubeconfig, [n.name for n in nodes], proc, agent_log)
        except Exception as exc:  # noqa: BLE001 - whatever failed, stop what was started and say it
            _stop_state(state)
            print(f"localcluster: node agent failed: {exc}", file=sys.stderr)
            return 1
    return _finish_up(cp, state, directory, t0, with_kueue=args.kueue)


def _up_real_detached(directory: Path, nodes: list, created: bool, t0: float, with_kueue: bool = False) -> int:
    """`up --kubelet`: real nodes that outlive this command; state.json tells `down` what to stop."""
    from .cluster import LocalCluster

    if not nodes:
        print("localcluster: --kubelet needs nodes (--nodes none leaves nothing to run them)", file=sys.stderr)
        return 2
    try:
        cluster = LocalCluster.start(directory, nodes, die_with_parent=False, real=True)
    except Exception as exc:  # noqa: BLE001 - whatever failed, say it and exit 1
        print(f"localcluster: real nodes failed: {exc}", file=sys.stderr)
        return 1
    assert cluster.real is not None
    state = cluster.control_plane.state()
    state["created_dir"] = created
    state["real_nodes"] = cluster.real.state()
    return _finish_up(cluster.control_plane, state, directory, t0, with_kueue=with_kueue)


def _finish_up(cp, state: dict, directory: Path, t0: float, with_kueue: bool) -> int:
    """Kueue if asked, then state.json for `down` and the last-`up` pointer."""
    if with_kueue:
        try:
            state["components"]["kueue"] = _start_kueue(cp, False).state()
        except Exception as exc:  # noqa: BLE001 - whatever failed, stop what was started and say it
            _stop_state(state)
            print(f"localcluster: kueue failed: {exc}", file=sys.stderr)
            return 1
    (directory / "state.json").write_text(json.dumps(state, indent=2))
    _last_file().parent.mkdir(parents=True, exist_ok=True)
    _last_file().write_text(str(directory))
    _print_up(cp, directory, time.monotonic() - t0)
    return 0


def _wait_nodes(kubeconfig: Path, names: list[str], proc: subprocess.Popen, agent_log: Path) -> None:
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}; see {agent_log}")
        ready = {
            n.metadata.name
            for n in core.list_node().items
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or []) and not n.spec.taints
        }
        if set(names) <= ready:
            return
        time.sleep(0.3)
    raise RuntimeError(f"nodes {names} not Ready after 60s; see {agent_log}")


def _start_kueue(cp, die_with_parent: bool):
    from .kueue import LocalKueue

    kueue = LocalKueue(cp, die_with_parent=die_with_parent).start()
    print(f"localcluster: kueue up: webhooks on {kueue.webhook_url} (log: {kueue.log_path})")
    return kueue


def _print_up(cp, directory: Path, seconds: float, foreground: bool = False) -> None:
    print(
        f"localcluster: up in {seconds:.0f}s: {cp.server} "
        f"(logs: {directory / 'logs'}, pod logs: {directory / 'nodes' / 'logs'})"
    )
    print(f"export KUBECONFIG={cp.kubeconfig}")
    print(
        "# stop with Ctrl-C" if foreground else f"# stop with: python -m localcluster down --dir {directory}",
        flush=True,
    )


def _alive(state: dict) -> bool:
    pids = [c["pid"] for c in state.get("components", {}).values()]
    pids += list(state.get("real_nodes", {}).get("pids", {}).values())
    return any(group_alive(pid) for pid in pids)


def _stop_state(state: dict) -> None:
    comps = state.get("components", {})
    # Agent first (it kills its pods), then the control plane in reverse start order; real
    # nodes are emptied once nothing can recreate or place pods, before the apiserver stops.
    for name in ["kueue", "node-agent", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]:
        if name == "kube-apiserver" and "real_nodes" in state:
            from .realnodes import teardown

            teardown(state["real_nodes"], Path(state["kubeconfig"]))
        if name in comps:
            stop_group(comps[name]["pid"], grace=10.0 if name in ("node-agent", "kueue") else 5.0)


def cmd_down(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else (Path(_last_file().read_text()) if _last_file().exists() else None)
    if directory is None or not (directory / "state.json").exists():
        why = "no --dir and no last `up`" if directory is None else f"no {directory}/state.json"
        print(
            f"localcluster: nothing to stop ({why})",
            file=sys.stderr,
        )
        return 1
    state = json.loads((directory / "state.json").read_text())
    _stop_state(state)
    if state.get("created_dir") and not args.keep:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
        print(f"localcluster: stopped; removed {directory}")
    else:
        (directory / "state.json").unlink(missing_ok=True)
        print(f"localcluster: stopped; kept {directory}")
    if _last_file().exists() and _last_file().read_text() == str(directory):
        _last_file().unlink()
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from .nodeagent import NodeAgent, parse_nodes

    agent = NodeAgent(Path(args.kubeconfig), parse_nodes(args.nodes), Path(args.dir)).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    agent.stop()
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from .images import main_images

    directory = Path(args.dir) if args.dir else (Path(_last_file().read_text()) if _last_file().exists() else None)
    if directory is not None and "real_nodes" not in _read_state(directory):
        directory = None  # simulated nodes ignore images
    return main_images(directory)


def _read_state(directory: Path) -> dict:
    path = directory / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def cmd_prometheus(args: argparse.Namespace) -> int:
    from .prometheus import serve

    reason = binaries.prometheus_missing_reason()
    if reason:
        print(f"localcluster: {reason}", file=sys.stderr)
        return 2
    directory = Path(args.dir or tempfile.mkdtemp(prefix="localcluster-prometheus-")).resolve()
    return serve(directory, args.target or ["127.0.0.1:8080"], args.port, args.scrape_interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a local cluster")
    up.add_argument("--dir", help="cluster directory (default: a new temporary directory)")
    up.add_argument("--nodes", default="default", help="default | none | KIND=COUNT[:GPUS],... (default: default)")
    up.add_argument(
        "--kubelet",
        action="store_true",
        help="real nodes: containerd + kubelet per node, kube-proxy, CoreDNS (needs root)",
    )
    up.add_argument("--kueue", action="store_true", help="also run Kueue (cluster/build.sh kueue)")
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops everything")
    down = sub.add_parser("down", help="stop a local cluster")
    down.add_argument("--dir", help="cluster directory (default: the last `up`)")
    down.add_argument("--keep", action="store_true", help="keep the directory (logs)")
    agent = sub.add_parser("agent", help="run the node agent in the foreground")
    agent.add_argument("--kubeconfig", required=True)
    agent.add_argument("--dir", required=True)
    agent.add_argument("--nodes", default="default")
    imgs = sub.add_parser("images", help="build the operator and trainer images and load them into real nodes")
    imgs.add_argument("--dir", help="cluster directory whose real nodes get the images (default: the last `up`)")
    prom = sub.add_parser("prometheus", help="run Prometheus scraping the operator's /metrics")
    prom.add_argument("--target", action="append", help="HOST:PORT to scrape (repeatable; default 127.0.0.1:8080)")
    prom.add_argument("--port", type=int, default=9090, help="listen on 127.0.0.1:PORT (default 9090)")
    prom.add_argument("--dir", help="config and TSDB directory (default: a new temporary directory)")
    prom.add_argument("--scrape-interval", default="5s", help="scrape interval (default 5s)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOCALCLUSTER_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    reason = binaries.missing_reason()
    if args.command == "up" and reason:
        print(f"localcluster: {reason}", file=sys.stderr)
        return 2
    if args.command == "up" and args.kueue and binaries.kueue_missing_reason():
        print(f"localcluster: {binaries.kueue_missing_reason()}", file=sys.stderr)
        return 2
    commands = {"up": cmd_up, "down": cmd_down, "agent": cmd_agent, "images": cmd_images, "prometheus": cmd_prometheus}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
