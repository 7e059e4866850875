"""Integration harness: the CRD, an operator identity bound to the RBAC rules of rbac.py, and the
operator itself as a subprocess (`python -m promotion_ladder.cli operator`), restartable."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster.waiting import wait_for
from promotion_ladder.controller.jobs import LADDER_LABEL
from promotion_ladder.controller.rbac import operator_cluster_role
from promotion_ladder.core.api import GROUP, PLURAL, VERSION
from promotion_ladder.core.crd import crd

STUB = str(Path(__file__).with_name("stub_trainer.py"))
REPO = Path(__file__).resolve().parents[2]


def _without_transition_rules(node):
    """The CRD as a cluster would have it if installed without its `oldSelf` (frozen) rules."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "x-kubernetes-validations":
                v = [r for r in v if "oldSelf" not in r["rule"]]
                if not v:
                    continue
            out[k] = _without_transition_rules(v)
        return out
    if isinstance(node, list):
        return [_without_transition_rules(x) for x in node]
    return node


def install_crd(api: client.ApiClient, transition_rules: bool = True) -> None:
    ext = client.ApiextensionsV1Api(api)
    body = crd() if transition_rules else _without_transition_rules(crd())
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)

    def established():
        c = ext.read_custom_resource_definition(name)
        return any(x.type == "Established" and x.status == "True" for x in (c.status.conditions or []))

    wait_for(established, timeout=30, what="CRD established")


def operator_kubeconfig(api: client.ApiClient, admin_kubeconfig: Path, out: Path) -> Path:
    """A kubeconfig for a ServiceAccount bound to exactly rbac.OPERATOR_RULES (not admin), so the
    integration tests also prove the rules are enough."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    ns, sa = "ladder-system", "promotion-ladder-operator"
    for create in (
        lambda: core.create_namespace({"metadata": {"name": ns}}),
        lambda: core.create_namespaced_service_account(ns, {"metadata": {"name": sa}}),
        lambda: rbac.create_cluster_role(operator_cluster_role(sa)),
        lambda: rbac.create_cluster_role_binding(
            {
                "metadata": {"name": sa},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": sa},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
            }
        ),
    ):
        try:
            create()
        except ApiException as exc:
            if exc.status != 409:
                raise
    rbac.replace_cluster_role(sa, operator_cluster_role(sa))
    token = wait_for(
        lambda: (
            core.create_namespaced_service_account_token(sa, ns, {"spec": {"expirationSeconds": 7200}}).status.token
        ),
        timeout=30,
        what="operator token",
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "operator",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
    }
    out.write_text(yaml.safe_dump(cfg))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """`ladder operator -n NAMESPACE` in a subprocess; kill() is SIGKILL (no graceful anything)."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, extra_args: tuple[str, ...] = ()):
        self.kubeconfig, self.namespace = kubeconfig, namespace
        self.extra_args = tuple(extra_args)
        self.log_path = log_dir / f"operator-{namespace}.log"
        self.metrics_port, self.health_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Operator:
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "a")
        log.write(f"\n===== start {self.starts} =====\n")
        log.flush()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "promotion_ladder.cli",
                "operator",
                "-n",
                self.namespace,
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO),
            start_new_session=True,
        )
        # Kopf's health endpoint answers once the startup handler is done: the caches are filled.
        wait_for(
            lambda: self.health().get("workLoop") == "alive", timeout=60, what="operator /healthz", describe=self.tail
        )
        return self

    def get(self, path: str, port: int | None = None) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}: {self.tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port or self.metrics_port}{path}", timeout=5) as r:
            return r.read().decode()

    def metrics(self) -> str:
        return self.get("/metrics")

    def health(self) -> dict:
        """Kopf's /healthz: the probes' results; {} while it does not answer yet."""
        try:
            return json.loads(self.get("/healthz", self.health_port))
        except OSError:
            return {}

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, as a Deployment's rollout sends it; the exit code (None: it did not exit in
        `timeout` seconds and was killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Cluster:
    """Small typed helpers over the admin API for the tests."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.api = api

    def create(self, doc: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, doc)

    def ladder(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch(self, name: str, patch: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, patch)

    def patch_status(self, name: str, patch: dict) -> dict:
        return self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.ns, PLURAL, name, patch)

    def jobs(self, ladder: str):
        return self.batch.list_namespaced_job(self.ns, label_selector=f"{LADDER_LABEL}={ladder}").items

    def pods(self, ladder: str):
        return self.core.list_namespaced_pod(self.ns, label_selector=f"{LADDER_LABEL}={ladder}").items

    def events(self, reason: str | None = None):
        items = self.core.list_namespaced_event(self.ns).items
        return [e for e in items if reason is None or e.reason == reason]

    def wait_phase(self, name: str, phases: tuple[str, ...] = ("Succeeded", "Failed"), timeout: float = 120) -> dict:
        def done():
            obj = self.ladder(name)
            return obj if (obj.get("status") or {}).get("phase") in phases else None

        return wait_for(
            done,
            timeout=timeout,
            what=f"ladder {name} phase in {phases}",
            describe=lambda: json.dumps(
                {
                    k: v
                    for k, v in (self.ladder(name).get("status") or {}).items()
                    if k in ("phase", "message", "currentStage")
                }
            ),
        )

    def describe(self, name: str) -> str:
        st = self.ladder(name).get("status") or {}
        pods = [(p.metadata.name, p.status.phase) for p in self.pods(name)]
        return json.dumps({"phase": st.get("phase"), "message": st.get("message"), "pods": pods})[:3000]


def node_host_blocks(core: client.CoreV1Api) -> dict[str, str]:
    return {
        n.metadata.name: (n.metadata.labels or {}).get("ladder.promotion.dev/host-block", "")
        for n in core.list_node().items
    }


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def apply_trainer_admission_policy(api: client.ApiClient) -> None:
    """Install (or replace) the chart's ValidatingAdmissionPolicy and its binding (cluster-scoped)."""
    from promotion_ladder.controller.rbac import trainer_admission_policy

    adm = client.AdmissionregistrationV1Api(api)
    calls = {
        "ValidatingAdmissionPolicy": (
            adm.create_validating_admission_policy,
            adm.replace_validating_admission_policy,
            adm.read_validating_admission_policy,
        ),
        "ValidatingAdmissionPolicyBinding": (
            adm.create_validating_admission_policy_binding,
            adm.replace_validating_admission_policy_binding,
            adm.read_validating_admission_policy_binding,
        ),
    }
    for o in trainer_admission_policy():
        create, replace, read = calls[o["kind"]]
        try:
            create(o)
        except ApiException as exc:
            if exc.status != 409:
                raise
            o = {
                **o,
                "metadata": {**o["metadata"], "resourceVersion": read(o["metadata"]["name"]).metadata.resource_version},
            }
            replace(o["metadata"]["name"], o)


def trainer_pods(local_cluster, namespace: str, names: tuple[str, ...]) -> tuple[client.CoreV1Api, dict[str, str]]:
    """Pods `names` under the trainer's ServiceAccount (never scheduled: a pod need not run to hold
    a bound token), and a CoreV1Api authenticated as a token bound to the last of them, as its
    trainer would be. Returns (that api, pod name -> uid)."""
    from kubernetes import config

    from promotion_ladder.controller.rbac import TRAINER_SERVICE_ACCOUNT, trainer_objects

    api = local_cluster.api_client()
    core, rbac_api = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    sa, role, binding = trainer_objects(namespace)
    core.create_namespaced_service_account(namespace, sa)
    rbac_api.create_namespaced_role(namespace, role)
    rbac_api.create_namespaced_role_binding(namespace, binding)
    uids = {}
    for name in names:
        uids[name] = core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name, "labels": {LADDER_LABEL: "l", "ladder.promotion.dev/candidate": name}},
                "spec": {
                    "serviceAccountName": TRAINER_SERVICE_ACCOUNT,
                    "restartPolicy": "Never",
                    "nodeSelector": {"no-such-node": "true"},
                    "containers": [{"name": "trainer", "image": "x"}],
                },
            },
        ).metadata.uid
    own = names[-1]
    token = core.create_namespaced_service_account_token(
        TRAINER_SERVICE_ACCOUNT,
        namespace,
        {
            "spec": {
                "expirationSeconds": 600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": own, "uid": uids[own]},
            }
        },
    ).status.token
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(local_cluster.kubeconfig), client_configuration=cfg)
    cfg.api_key = {"authorization": f"Bearer {token}"}
    cfg.cert_file = cfg.key_file = None
    return client.CoreV1Api(client.ApiClient(cfg)), uids
