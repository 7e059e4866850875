"""Simulated GPU nodes: one Python process that plays the kubelet for several Node objects.

The agent registers Nodes with the labels and capacity the caller chooses (GPUs are only a
number in `nvidia.com/gpu`; no device is assigned), keeps them Ready and their Leases in
kube-node-lease fresh, and runs each pod bound to one of them (spec.nodeName) as a local
process, patching the pod's status as a kubelet does. The contract pods can rely on:

- The image is ignored. The container's command + args run in the project's own Python
  environment: that venv's bin/ is first on PATH, so `python -m ladder_trainer` works. A
  container without `command` cannot run (there is no image entrypoint to fall back on).
- Env: the container's `env` (value, valueFrom.fieldRef, configMapKeyRef, secretKeyRef) and
  `envFrom`, with `$(VAR)` expansion in env, command and args as the kubelet does it.
  fieldRefs: metadata.name/namespace/uid, metadata.labels['k'], metadata.annotations['k'],
  spec.nodeName, spec.serviceAccountName, status.podIP and status.hostIP (both 127.0.0.1).
  Nothing else from the agent's environment leaks in except PATH, LANG/LC_*, TZ and the
  names in LOCALCLUSTER_PASSTHROUGH_ENV (comma separated).
- cwd, HOME and TMPDIR are a fresh per-pod scratch directory `<agent dir>/pods/<ns>_<pod>_<uid8>/`;
  workingDir is ignored.
- Volumes (localcluster.mounts): hostPath, a PVC bound to a hostPath/local PV, emptyDir
  (medium Memory: a directory on the host's /dev/shm) and downwardAPI (fieldRef items, written
  once at start) resolve to host directories; command,
  args and env values naming a path under a mountPath are rewritten to that directory, and
  LOCALCLUSTER_MOUNTS holds the mapping. Other volume types (the projected service-account
  token among them) are not mounted. A PVC that is not bound fails the start (StartError).
- API access: a token for the pod's service account, requested through the TokenRequest API
  and bound to the pod, in a kubeconfig at `<scratch>/kubeconfig` (server: the local
  apiserver, its CA); KUBECONFIG points at it. KUBERNETES_SERVICE_HOST is not set, so
  `load_incluster_config()` raises and callers fall back to `load_kube_config()`. RBAC applies.
- Termination message: LADDER_TERMINATION_LOG=<scratch>/termination-log; after exit its first
  4096 bytes become containerStatuses[0].state.terminated.message (terminationMessagePath);
  with terminationMessagePolicy FallbackToLogsOnError, a failed run without one gets the
  end of its output instead.
- Output: stdout and stderr go to `<agent dir>/logs/<namespace>_<pod>.log` (see log_path()).
- Status: Running (startTime, podIP, conditions, containerStatuses[0].state.running), then
  Succeeded/Failed (each write retried with backoff for up to 2 minutes while the API server
  is unreachable, so an exit during a short outage is not lost) with terminated.exitCode and
  reason Completed/Error (128+N for a signal), so the Job controller and podFailurePolicy see
  what they would see from a kubelet.
  restartPolicy OnFailure/Always restart the process in place (restartCount, lastState).
- Deletion: when a pod gets a deletionTimestamp its process group gets SIGTERM, then SIGKILL
  after the grace period; the agent reports the pod Failed (exit 143/137, or Succeeded if it
  exited 0) as the kubelet does, then deletes it with gracePeriodSeconds=0.
- Placement is the scheduler's; the agent runs whatever is bound to its nodes.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from promotion_ladder.controller.informer import ListWatch
from promotion_ladder.core.clock import iso, iso_micro

from .controlplane import write_kubeconfig
from .expansion import expand
from .mounts import MOUNTS_ENV, SHM_PATH, VolumeError, container_mounts, mounts_env, resolve_volume, translate
from .processes import spawn, stop_group

log = logging.getLogger("localcluster.nodeagent")

HOST_BLOCK_LABEL = "ladder.promotion.dev/host-block"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"
TERMINATION_LOG_ENV = "LADDER_TERMINATION_LOG"
MAX_TERMINATION_MESSAGE = 4096
START_ERROR_MESSAGE_LIMIT = 1024  # a pod's status.message when its container cannot start
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
NOT_READY_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
# Env the agent sets from its own paths: never rewritten by the volume path translation.
AGENT_ENV = frozenset({"PATH", "VIRTUAL_ENV", "HOME", "TMPDIR", "HOSTNAME", "KUBECONFIG", TERMINATION_LOG_ENV})
STATUS_RETRY_SECONDS = 120.0  # how long a pod status write is retried through an API outage
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


# --- nodes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node: its name, extra labels, capacity and taints."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    capacity: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict, ...] = ()


PLENTY = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}

# Host-block kinds the CLI's --nodes understands: label values and GPUs per node.
NODE_KINDS: dict[str, dict[str, str]] = {
    "a100": {HOST_BLOCK_LABEL: "a100", GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"},
    "h100": {HOST_BLOCK_LABEL: "h100", GPU_PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"},
    "l40s": {HOST_BLOCK_LABEL: "l40s", GPU_PRODUCT_LABEL: "NVIDIA-L40S"},
}


def gpu_node(name: str, kind: str, gpus: int = 4, **extra_capacity: str) -> NodeSpec:
    """A node of a host-block kind in NODE_KINDS with `gpus` nvidia.com/gpu and plenty of the rest."""
    if kind not in NODE_KINDS:
        raise ValueError(f"unknown node kind {kind!r}; known: {', '.join(NODE_KINDS)}")
    return NodeSpec(
        name=name, labels=dict(NODE_KINDS[kind]), capacity={**PLENTY, GPU_RESOURCE: str(gpus), **extra_capacity}
    )


def default_nodes() -> list[NodeSpec]:
    """Two a100 nodes and one l40s node, 4 GPUs each."""
    return [gpu_node("a100-0", "a100"), gpu_node("a100-1", "a100"), gpu_node("l40s-0", "l40s")]


def parse_nodes(spec: str) -> list[NodeSpec]:
    """'default', 'none', or 'KIND=COUNT[:GPUS],...' e.g. 'a100=2,l40s=1:8'."""
    spec = spec.strip()
    if spec == "default":
        return default_nodes()
    if spec in ("", "none"):
        return []
    nodes: list[NodeSpec] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*([a-z0-9]+)=(\d+)(?::(\d+))?\s*", part)
        if not m:
            raise ValueError(f"--nodes: cannot read {part!r}; expected KIND=COUNT[:GPUS], e.g. a100=2,l40s=1")
        kind, count, gpus = m.group(1), int(m.group(2)), int(m.group(3) or 4)
        nodes += [gpu_node(f"{kind}-{i}", kind, gpus) for i in range(count)]
    return nodes


# --- helpers -------------------------------------------------------------------------------


def _api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def _get(obj: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj or obj[key] is None:
            return default
        obj = obj[key]
    return obj


def _field_ref(pod: dict, path: str) -> str:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path not in simple:
        raise ValueError(f"fieldRef {path!r} is not supported by the localcluster node agent")
    return simple[path]


def signal_exit_code(returncode: int) -> int:
    """Popen reports death by signal N as -N; a kubelet reports 128+N."""
    return 128 - returncode if returncode < 0 else returncode


# --- pods ----------------------------------------------------------------------------------


class PodStartError(Exception):
    """The container could not be started (reported like the kubelet's StartError)."""


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    node: str
    scratch: Path
    log_path: Path
    restart_policy: str
    container: str
    image: str
    proc: subprocess.Popen | None = None
    started_at: str = ""
    restart_count: int = 0
    last_state: dict | None = None  # the previous run's state, shown after a restart
    deleting: bool = False
    finished: bool = False
    grace: float = 30.0
    message_policy: str = "File"


class NodeAgent:
    """Plays the kubelet for `nodes`. start() registers them and begins syncing pods; stop()
    kills every pod process (and, with delete_nodes=True, removes the Node objects).

    kubeconfig: an identity allowed to manage nodes, leases, pods, pods/status and
    serviceaccounts/token (the admin kubeconfig of the local cluster).
    dir: where pods' scratch directories (`pods/`) and logs (`logs/`) go.
    python_bin: the bin/ directory put first on pods' PATH (default: this interpreter's).
    extra_env: added to every pod's environment (under the container's own env).
    """

    def __init__(
        self,
        kubeconfig: Path,
        nodes: Iterable[NodeSpec],
        dir: Path,
        *,
        python_bin: Path | None = None,
        extra_env: dict[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.nodes = list(nodes)
        self.dir = Path(dir)
        self.python_bin = Path(python_bin) if python_bin else Path(sys.executable).parent
        self.extra_env = dict(extra_env or {})
        self.die_with_parent = die_with_parent
        self._node_names = {n.name for n in self.nodes}
        self._runs: dict[str, PodRun] = {}
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pod_watch: ListWatch | None = None

    # --- public -----------------------------------------------------------------------------

    def log_path(self, namespace: str, pod: str) -> Path:
        """Where a pod's stdout and stderr go."""
        return self.dir / "logs" / f"{namespace}_{pod}.log"

    def scratch_dir(self, namespace: str, pod: str, uid: str) -> Path:
        """A pod's cwd/HOME/TMPDIR."""
        return self.dir / "pods" / f"{namespace}_{pod}_{uid[:8]}"

    def running_pids(self) -> dict[str, int]:
        """'namespace/name' -> pid of every pod process still running."""
        return {
            f"{r.namespace}/{r.name}": r.proc.pid
            for r in list(self._runs.values())
            if r.proc is not None and r.proc.poll() is None
        }

    def start(self) -> NodeAgent:
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.dir / "pods").mkdir(parents=True, exist_ok=True)
        api = _api_client(self.kubeconfig)
        for node in self.nodes:
            self._register(api, node)
        self._pod_watch = self._watch_pods()
        for target, name in ((self._sync_loop, "sync"), (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"nodeagent-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("node agent serving %s (dir %s)", ", ".join(sorted(self._node_names)), self.dir)
        return self

    def stop(self, *, delete_nodes: bool = False) -> None:
        self._stop.set()
        if self._pod_watch is not None:
            self._pod_watch.stop()
        self._events.put(("stop",))
        for run in list(self._runs.values()):
            if run.proc is not None and run.proc.poll() is None:
                stop_group(run.proc.pid, grace=2.0, proc=run.proc)
        for t in self._threads:
            t.join(timeout=5)
        if delete_nodes:
            core = client.CoreV1Api(_api_client(self.kubeconfig))
            for node in self.nodes:
                with contextlib.suppress(ApiException):
                    core.delete_node(node.name)

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- node registration and heartbeats ----------------------------------------------------

    def _register(self, api: client.ApiClient, node: NodeSpec) -> None:
        core = client.CoreV1Api(api)
        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "localcluster.dev/simulated": "true",
            **node.labels,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {"taints": list(node.taints)} if node.taints else {},
        }
        try:
            core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.patch_node(node.name, {"metadata": {"labels": labels}})
        core.patch_node_status(node.name, self._node_status(node))
        # The TaintNodesByCondition admission plugin taints every new Node not-ready; the node
        # lifecycle controller (not run here) would lift it once the node reports Ready.
        current = core.read_node(node.name)
        taints = [
            api.sanitize_for_serialization(t) for t in (current.spec.taints or []) if t.key not in NOT_READY_TAINTS
        ]
        if len(taints) != len(current.spec.taints or []):
            core.patch_node(node.name, {"spec": {"taints": taints or None}})
        self._renew_lease(api, node.name, current.metadata.uid)

    def _node_status(self, node: NodeSpec) -> dict:
        now = iso()

        def cond(type_: str, status: str, reason: str, message: str) -> dict:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "status": {
                "capacity": node.capacity,
                "allocatable": node.capacity,
                "conditions": [
                    cond("Ready", "True", "KubeletReady", "localcluster node agent is posting ready status"),
                    cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
                    cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
                    cond("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": node.name},
                ],
                "nodeInfo": {
                    "machineID": node.name,
                    "systemUUID": node.name,
                    "bootID": node.name,
                    "kernelVersion": os.uname().release,
                    "osImage": "localcluster simulated node",
                    "containerRuntimeVersion": "localcluster://process",
                    "kubeletVersion": "v1.34.4-localcluster",
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            }
        }

    def _renew_lease(self, api: client.ApiClient, node_name: str, node_uid: str | None = None) -> None:
        coord = client.CoordinationV1Api(api)
        spec = {"holderIdentity": node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": iso_micro()}
        try:
            coord.patch_namespaced_lease(node_name, "kube-node-lease", {"spec": spec})
        except ApiException as exc:
            if exc.status != 404:
                raise
            meta: dict = {"name": node_name, "namespace": "kube-node-lease"}
            if node_uid:  # as the kubelet does: the Lease goes away with its Node
                meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}]
            coord.create_namespaced_lease("kube-node-lease", {"metadata": meta, "spec": spec})

    def _heartbeat_loop(self) -> None:
        api = _api_client(self.kubeconfig)
        core = client.CoreV1Api(api)
        beats = 0
        while not self._stop.wait(HEARTBEAT_SECONDS):
            beats += 1
            for node in self.nodes:
                try:
                    self._renew_lease(api, node.name)
                    if beats % 4 == 0:  # the kubelet posts status every ~40s when nothing changes
                        core.patch_node_status(node.name, self._node_status(node))
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the agent goes on
                    log.warning("heartbeat for %s failed: %s", node.name, exc)

    # --- watching pods -----------------------------------------------------------------------

    def _watch_pods(self) -> ListWatch:
        """List + watch the pods bound to any node (the operator's ListWatch: resumed after an
        error, listed again on 410); only ours are queued for the sync loop."""

        def listed(pods: Iterator[dict]) -> None:
            seen = set()
            for pod in pods:
                if _get(pod, "spec", "nodeName") in self._node_names:
                    seen.add(pod["metadata"]["uid"])
                    self._events.put(("pod", pod))
            self._events.put(("resync", seen))

        def changed(type_: str, pod: dict) -> None:
            if _get(pod, "spec", "nodeName") in self._node_names:
                self._events.put(("deleted" if type_ == "DELETED" else "pod", pod))

        core = client.CoreV1Api(_api_client(self.kubeconfig))
        return ListWatch(
            "pods",
            core.list_pod_for_all_namespaces,
            None,
            field_selector="spec.nodeName!=",
            on_list=listed,
            on_event=changed,
        ).start()

    # --- the sync loop: every spawn and status write happens on this one thread ---------------

    def _sync_loop(self) -> None:
        api = _api_client(self.kubeconfig)
        core = client.CoreV1Api(api)
        while True:
            event = self._events.get()
            kind = event[0]
            if kind == "stop":
                return
            try:
                if kind == "pod":
                    self._sync_pod(api, core, event[1])
                elif kind == "deleted":
                    self._forget(event[1]["metadata"]["uid"])
                elif kind == "resync":
                    for uid in [u for u in self._runs if u not in event[1]]:
                        self._forget(uid)
                elif kind == "exited":
                    self._on_exit(core, event[1], event[2])
                elif kind == "restart":
                    self._restart(core, event[1])
            except Exception:
                log.exception("node agent: handling %s failed", kind)

    def _sync_pod(self, api: client.ApiClient, core: client.CoreV1Api, pod: dict) -> None:
        meta = pod["metadata"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        run = self._runs.get(uid)
        if meta.get("deletionTimestamp"):
            if run is not None and run.proc is not None and run.proc.poll() is None:
                if not run.deleting:
                    run.deleting = True
                    grace = meta.get("deletionGracePeriodSeconds")
                    grace = float(grace if grace is not None else run.grace)
                    self._terminate(run, grace)
                return  # the exit event finishes the deletion
            self._delete_now(core, ns, name, uid)
            return
        if run is not None:
            return  # ours; the agent owns its status from here on
        phase = _get(pod, "status", "phase", default="Pending")
        if phase in ("Succeeded", "Failed"):
            return
        if phase == "Running":
            # Started by an earlier agent whose process is gone (agent restart).
            self._patch_status(
                core,
                ns,
                name,
                {
                    "phase": "Failed",
                    "reason": "NodeAgentRestarted",
                    "message": "the localcluster node agent restarted; the process is gone",
                },
            )
            return
        self._start_pod(api, core, pod)

    def _start_pod(self, api: client.ApiClient, core: client.CoreV1Api, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        containers = spec.get("containers") or []
        ctr = containers[0] if containers else {"name": "", "image": ""}
        run = PodRun(
            uid=uid,
            namespace=ns,
            name=name,
            node=spec["nodeName"],
            scratch=self.scratch_dir(ns, name, uid),
            log_path=self.log_path(ns, name),
            restart_policy=spec.get("restartPolicy") or "Always",
            container=ctr.get("name", ""),
            image=ctr.get("image", ""),
            grace=float(spec.get("terminationGracePeriodSeconds") or 30),
            message_policy=ctr.get("terminationMessagePolicy") or "File",
        )
        self._runs[uid] = run
        try:
            if len(containers) != 1 or spec.get("initContainers"):
                raise PodStartError(
                    "the localcluster node agent runs pods with exactly one container and no init containers"
                )
            if not ctr.get("command"):
                raise PodStartError(
                    f"container {run.container!r} has no command; localcluster ignores images, "
                    "so there is no entrypoint to run: set command (and args)"
                )
            run.scratch.mkdir(parents=True, exist_ok=True)
            argv, env = self._command(api, core, pod, ctr, run)
            self._spawn(run, argv, env)
        except (PodStartError, VolumeError, ValueError, ApiException) as exc:
            message = exc.body if isinstance(exc, ApiException) else str(exc)
            log.warning("pod %s/%s cannot start: %s", ns, name, message)
            run.finished = True
            run.log_path.parent.mkdir(parents=True, exist_ok=True)
            run.log_path.write_text(f"localcluster: cannot start container: {message}\n")
            now = iso()
            self._patch_status(
                core,
                ns,
                name,
                {
                    "phase": "Failed",
                    "reason": "StartError",
                    "message": str(message)[:START_ERROR_MESSAGE_LIMIT],
                    "startTime": now,
                    "hostIP": "127.0.0.1",
                    "containerStatuses": [
                        self._container_status(
                            run,
                            {
                                "terminated": {
                                    "exitCode": 128,
                                    "reason": "StartError",
                                    "message": str(message)[:MAX_TERMINATION_MESSAGE],
                                    "startedAt": now,
                                    "finishedAt": now,
                                }
                            },
                        )
                    ],
                    "conditions": self._conditions(ready=False, reason="PodFailed"),
                },
            )
            return
        now = run.started_at
        self._patch_status(
            core,
            ns,
            name,
            {
                "phase": "Running",
                "startTime": now,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "conditions": self._conditions(ready=True),
                "containerStatuses": [self._container_status(run, {"running": {"startedAt": now}}, ready=True)],
            },
        )

    def _spawn(self, run: PodRun, argv: list[str], env: dict[str, str]) -> None:
        term = run.scratch / "termination-log"
        if term.exists():
            term.unlink()
        with open(run.log_path, "ab") as f:
            f.write(
                f"--- localcluster: starting {argv!r} on {run.node} (restart {run.restart_count}) at {iso()}\n".encode()
            )
        try:
            run.proc = spawn(
                argv, log_path=run.log_path, env=env, cwd=run.scratch, die_with_parent=self.die_with_parent
            )
        except OSError as exc:
            raise PodStartError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
        run.started_at = iso()
        proc, uid = run.proc, run.uid
        threading.Thread(
            target=lambda: self._events.put(("exited", uid, proc.wait())), name=f"wait-{run.name}", daemon=True
        ).start()

    def _command(
        self, api: client.ApiClient, core: client.CoreV1Api, pod: dict, ctr: dict, run: PodRun
    ) -> tuple[list[str], dict[str, str]]:
        """argv and env of the pod's process: `$(VAR)` expanded, then paths under a volume's
        mountPath translated to the host directory behind it (localcluster.mounts)."""
        env = self._pod_env(api, core, pod, ctr, run)
        argv = [expand(a, env) for a in list(ctr.get("command") or []) + list(ctr.get("args") or [])]
        mounts = self._mounts(core, pod, ctr, run)
        if mounts:
            argv = [translate(a, mounts) for a in argv]
            env = {k: v if k in AGENT_ENV else translate(v, mounts) for k, v in env.items()}
            env[MOUNTS_ENV] = mounts_env(mounts)
        return argv, env

    def _mounts(self, core: client.CoreV1Api, pod: dict, ctr: dict, run: PodRun) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]

        def read(kind: str, fn: Any) -> Any:
            def get(name: str) -> dict:
                try:
                    return core.api_client.sanitize_for_serialization(fn(name))
                except ApiException as exc:
                    raise VolumeError(f"cannot read {kind} {name!r}: {exc.status} {exc.reason}") from exc

            return get

        read_pvc = read("PersistentVolumeClaim", lambda n: core.read_namespaced_persistent_volume_claim(n, ns))
        read_pv = read("PersistentVolume", core.read_persistent_volume)
        dirs = {
            v["name"]: resolve_volume(
                v,
                scratch=run.scratch,
                shm_dir=self._shm_dir(run),
                read_pvc=read_pvc,
                read_pv=read_pv,
                field_ref=lambda p: _field_ref(pod, p),
            )
            for v in pod["spec"].get("volumes") or []
        }
        mounts = container_mounts(ctr, dirs)
        with open(run.log_path, "ab") as f:
            for path, src in sorted(mounts.items()):
                f.write(f"--- localcluster: volume at {path} is {src}\n".encode())
        return mounts

    def _shm_dir(self, run: PodRun) -> Path:
        """Where a pod's memory-backed emptyDirs live: the host's /dev/shm (a tmpfs) when present."""
        root = Path(SHM_PATH) if Path(SHM_PATH).is_dir() else run.scratch
        return root / "localcluster" / run.scratch.name

    def _pod_env(
        self, api: client.ApiClient, core: client.CoreV1Api, pod: dict, ctr: dict, run: PodRun
    ) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        kubeconfig = self._pod_kubeconfig(api, pod, run)
        env: dict[str, str] = {}
        for key in ("LANG", "LC_ALL", "LC_CTYPE", "TZ"):
            if key in os.environ:
                env[key] = os.environ[key]
        for key in filter(None, os.environ.get("LOCALCLUSTER_PASSTHROUGH_ENV", "").split(",")):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(
            {
                "PATH": f"{self.python_bin}{os.pathsep}{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
                "VIRTUAL_ENV": str(self.python_bin.parent),
                "HOME": str(run.scratch),
                "TMPDIR": str(run.scratch),
                "HOSTNAME": pod["metadata"]["name"],
                "KUBECONFIG": str(kubeconfig),
                TERMINATION_LOG_ENV: str(run.scratch / "termination-log"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        for src in ctr.get("envFrom") or []:
            prefix = src.get("prefix") or ""
            data = self._source_data(core, ns, src.get("configMapRef"), src.get("secretRef"))
            env.update({prefix + k: v for k, v in data.items()})
        for var in ctr.get("env") or []:
            name = var["name"]
            if "valueFrom" in var and var["valueFrom"]:
                env[name] = self._value_from(core, pod, var["valueFrom"], name)
            else:
                env[name] = expand(var.get("value") or "", env)
        return env

    def _value_from(self, core: client.CoreV1Api, pod: dict, src: dict, name: str) -> str:
        ns = pod["metadata"]["namespace"]
        if src.get("fieldRef"):
            return _field_ref(pod, src["fieldRef"]["fieldPath"])
        for key, secret in (("configMapKeyRef", False), ("secretKeyRef", True)):
            ref = src.get(key)
            if ref:
                data = self._source_data(core, ns, None if secret else ref, ref if secret else None)
                if ref["key"] in data:
                    return data[ref["key"]]
                if ref.get("optional"):
                    return ""
                raise PodStartError(f"env {name}: key {ref['key']!r} not found in {key[:-6]} {ref['name']!r}")
        raise PodStartError(f"env {name}: valueFrom {sorted(src)} is not supported by the localcluster node agent")

    def _source_data(
        self, core: client.CoreV1Api, ns: str, cm_ref: dict | None, secret_ref: dict | None
    ) -> dict[str, str]:
        ref = cm_ref or secret_ref
        try:
            if cm_ref:
                return dict(core.read_namespaced_config_map(cm_ref["name"], ns).data or {})
            if secret_ref:
                raw = core.read_namespaced_secret(secret_ref["name"], ns).data or {}
                return {k: base64.b64decode(v).decode(errors="replace") for k, v in raw.items()}
        except ApiException as exc:
            if exc.status == 404 and ref and ref.get("optional"):
                return {}
            raise PodStartError(
                f"cannot read {'configmap' if cm_ref else 'secret'} {ns}/{ref['name'] if ref else '?'}: "
                f"{exc.status} {exc.reason}"
            ) from exc
        return {}

    def _pod_kubeconfig(self, api: client.ApiClient, pod: dict, run: PodRun) -> Path:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        token = client.CoreV1Api(api).create_namespaced_service_account_token(sa, meta["namespace"], body).status.token
        return write_kubeconfig(
            run.scratch / "kubeconfig",
            server=api.configuration.host,
            ca_file=Path(api.configuration.ssl_ca_cert),
            user={"token": token},
            name="localcluster-pod",
            namespace=meta["namespace"],
        )

    # --- exits, restarts, deletion -----------------------------------------------------------

    def _on_exit(self, core: client.CoreV1Api, uid: str, returncode: int) -> None:
        run = self._runs.get(uid)
        if run is None:
            return
        if run.proc is not None:
            stop_group(run.proc.pid, grace=0.5)  # leftovers the container forked
        code = signal_exit_code(returncode)
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": run.started_at,
            "finishedAt": iso(),
            "containerID": f"localcluster://{run.proc.pid if run.proc else 0}",
        }
        if returncode < 0:
            terminated["signal"] = -returncode
        if run.deleting:
            # As the kubelet does (since 1.27): report the killed pod terminal before it goes, so
            # the Job controller (podFailurePolicy, podReplacementPolicy: Failed) counts it and
            # lifts its tracking finalizer.
            self._patch_terminal(core, run, code, terminated)
            self._delete_now(core, run.namespace, run.name, uid)
            self._runs.pop(uid, None)
            shutil.rmtree(self._shm_dir(run), ignore_errors=True)
            return
        message = self._termination_message(run)
        if not message and code != 0 and run.message_policy == "FallbackToLogsOnError":
            message = self._log_tail(run)
        if message:
            terminated["message"] = message
        with open(run.log_path, "ab") as f:
            f.write(f"--- localcluster: exited with {code} at {terminated['finishedAt']}\n".encode())
        restart = run.restart_policy == "Always" or (run.restart_policy == "OnFailure" and code != 0)
        if restart:
            run.restart_count += 1
            run.last_state = {"terminated": terminated}
            backoff = min(10.0, 0.5 * 2 ** (run.restart_count - 1))
            self._patch_status(
                core,
                run.namespace,
                run.name,
                {
                    "conditions": self._conditions(ready=False, reason="ContainersNotReady"),
                    "containerStatuses": [
                        self._container_status(
                            run,
                            {
                                "waiting": {
                                    "reason": "CrashLoopBackOff" if code else "Completed",
                                    "message": f"restarting in {backoff:.1f}s",
                                }
                            },
                        )
                    ],
                },
            )
            threading.Timer(backoff, lambda: self._events.put(("restart", uid))).start()
            return
        run.finished = True
        shutil.rmtree(self._shm_dir(run), ignore_errors=True)  # memory-backed emptyDirs hold RAM
        self._patch_terminal(core, run, code, terminated)

    def _patch_terminal(self, core: client.CoreV1Api, run: PodRun, code: int, terminated: dict) -> None:
        """The pod's last status: Succeeded or Failed, its container terminated as given."""
        self._patch_status(
            core,
            run.namespace,
            run.name,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": self._conditions(ready=False, reason="PodCompleted" if code == 0 else "PodFailed"),
                "containerStatuses": [self._container_status(run, {"terminated": terminated})],
            },
        )

    def _restart(self, core: client.CoreV1Api, uid: str) -> None:
        run = self._runs.get(uid)
        if run is None or run.deleting or self._stop.is_set():
            return
        try:
            pod = core.api_client.sanitize_for_serialization(core.read_namespaced_pod(run.name, run.namespace))
        except ApiException as exc:
            if exc.status == 404:
                self._runs.pop(uid, None)
                return
            raise
        if pod["metadata"].get("deletionTimestamp") or pod["metadata"]["uid"] != uid:
            self._sync_pod(core.api_client, core, pod)
            return
        ctr = pod["spec"]["containers"][0]
        argv, env = self._command(core.api_client, core, pod, ctr, run)
        self._spawn(run, argv, env)
        self._patch_status(
            core,
            run.namespace,
            run.name,
            {
                "conditions": self._conditions(ready=True),
                "containerStatuses": [
                    self._container_status(run, {"running": {"startedAt": run.started_at}}, ready=True)
                ],
            },
        )

    def _terminate(self, run: PodRun, grace: float) -> None:
        pgid = run.proc.pid if run.proc else None
        if pgid is None:
            return
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

        threading.Timer(max(grace, 0.0), kill).start()

    def _forget(self, uid: str) -> None:
        """The pod is gone from the API (force-deleted): kill whatever still runs for it."""
        run = self._runs.pop(uid, None)
        if run is not None and run.proc is not None and run.proc.poll() is None:
            run.deleting = True
            stop_group(run.proc.pid, grace=1.0, proc=run.proc)

    def _delete_now(self, core: client.CoreV1Api, ns: str, name: str, uid: str) -> None:
        try:
            core.delete_namespaced_pod(
                name,
                ns,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    # --- status pieces -----------------------------------------------------------------------

    def _termination_message(self, run: PodRun) -> str:
        path = run.scratch / "termination-log"
        try:
            with open(path, "rb") as f:
                return f.read(MAX_TERMINATION_MESSAGE).decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, run: PodRun) -> str:
        """The kubelet's FallbackToLogsOnError: the end of the output (at most 80 lines, 2048 bytes)."""
        try:
            lines = [
                ln
                for ln in run.log_path.read_text(errors="replace").splitlines()
                if not ln.startswith("--- localcluster: ")
            ]
        except OSError:
            return ""
        return "\n".join(lines[-80:])[-2048:]

    def _container_status(self, run: PodRun, state: dict, *, ready: bool = False) -> dict:
        # containerStatuses is replaced as a whole by a patch, so every write carries lastState.
        status = {
            "name": run.container,
            "image": run.image,
            "imageID": "",
            "containerID": f"localcluster://{run.proc.pid}" if run.proc else "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": run.restart_count,
            "state": state,
        }
        if run.last_state:
            status["lastState"] = run.last_state
        return status

    @staticmethod
    def _conditions(*, ready: bool, reason: str = "") -> list[dict]:
        now = iso()
        extra = {} if ready else {"reason": reason}
        status = "True" if ready else "False"
        return [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now, **extra},
            {"type": "Ready", "status": status, "lastTransitionTime": now, **extra},
        ]

    def _patch_status(self, core: client.CoreV1Api, ns: str, name: str, status: dict) -> None:
        """Write a pod's status, retrying (bounded backoff) while the API server is unreachable or
        overloaded, as the kubelet's status manager does: an exit reported during a short API
        outage must not be lost (a pod would stay Running forever and hold its GPUs)."""
        deadline = time.monotonic() + STATUS_RETRY_SECONDS
        delay = 0.5
        while True:
            try:
                core.patch_namespaced_pod_status(name, ns, {"status": status})
                return
            except ApiException as exc:
                if exc.status == 404:  # deleted meanwhile
                    return
                if exc.status not in RETRYABLE_STATUS or time.monotonic() + delay > deadline or self._stop.is_set():
                    raise
                log.warning(
                    "status of pod %s/%s not written (%s %s); retrying in %.1fs",
                    ns,
                    name,
                    exc.status,
                    exc.reason,
                    delay,
                )
            except (OSError, urllib3.exceptions.HTTPError) as exc:  # connection refused/reset, timeouts
                if time.monotonic() + delay > deadline or self._stop.is_set():
                    raise
                log.warning("status of pod %s/%s not written (%r); retrying in %.1fs", ns, name, exc, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 8.0)


def pod_pid(pod: Any) -> int | None:
    """The local pid of a pod's process, from containerStatuses[0].containerID (localcluster://PID)."""
    statuses = (
        (pod.status.container_statuses or [])
        if hasattr(pod, "status")
        else _get(pod, "status", "containerStatuses", default=[])
    )
    for cs in statuses:
        cid = cs.container_id if hasattr(cs, "container_id") else cs.get("containerID")
        if cid and cid.startswith("localcluster://"):
            return int(cid.split("://", 1)[1])
    return None


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
