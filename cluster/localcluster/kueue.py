"""Kueue (built by `cluster/build.sh kueue`) as a host process against the local control plane.

What `python -m localcluster up --kueue` and the pytest fixture `kueue_cluster` share:
installing Kueue's CRDs, RBAC and webhook configurations from the module's own manifests
(`kueue-config/` beside the binary, copied there by build.sh), the certificates of its webhook
server, its Configuration, and starting, stopping and restarting the manager.

How the API server reaches the webhooks. In a cluster they sit behind the Service
kueue-system/kueue-webhook-service; here nothing routes Service IPs, so every webhook and
CRD-conversion clientConfig is rewritten to `url: https://127.0.0.1:<port><path>`, the port
Kueue's webhook server listens on.

Certificates. Kueue runs with internal cert management on, as in its default install. Its
Secret is filled beforehand with a CA and a serving certificate made here (SANs: the Service's
DNS name, which Kueue's cert rotator checks, and 127.0.0.1, which the API server dials); the
rotator finds them valid and keeps them, and the same files are written into the webhook
server's cert dir, as the kubelet would mount the Secret. (With internal cert management off,
Kueue v0.17 insists on metrics certificates at the fixed path /etc/kueue/metrics/certs, outside
anything a test harness should write.)

Identity: the ServiceAccount kueue-system/kueue-controller-manager with the module's own
ClusterRole and secrets Role, through a token from the TokenRequest API, so Kueue acts under
exactly the RBAC it ships with.

Configuration: batch/v1 Jobs that carry the label kueue.x-k8s.io/queue-name are managed (no
others); the webhooks of integrations left off (pods, deployments, Kubeflow and Ray kinds, ...)
are not installed. No leader election (one manager; a restart takes over at once), no metrics
endpoint and no visibility API server (it needs API aggregation).
"""

from __future__ import annotations

import base64
import copy
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from . import binaries
from .apply import apply_objects, wait_established
from .controlplane import ControlPlane, write_kubeconfig
from .processes import free_port, spawn, stop_group
from .waiting import wait_for

log = logging.getLogger("localcluster.kueue")

NAMESPACE = "kueue-system"
SERVICE_ACCOUNT = "kueue-controller-manager"
# The names Kueue's cert rotator looks for (InternalCertManagement defaults; the webhook
# configurations' names are the kustomize prefix "kueue-" + the module's names).
WEBHOOK_SERVICE = "kueue-webhook-service"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
NAME_PREFIX = "kueue-"
# The CRDs whose conversion webhook the module enables (config/components/crd/kustomization.yaml)
# and whose caBundle the rotator keeps (pkg/util/cert/cert.go).
CONVERSION_CRDS = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")
# Webhooks kept: Kueue's own kinds and the one integration enabled (batch/job).
WEBHOOK_API_GROUPS = {"kueue.x-k8s.io", "batch"}
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Longer than any test session; a restart asks for a fresh one.
TOKEN_SECONDS = 7 * 24 * 3600


class KueueError(RuntimeError):
    pass


# --- the objects installed (pure: from the module's manifests) --------------------------------


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ca_bundle(ca_pem: bytes) -> str:
    return base64.b64encode(ca_pem).decode()


def crd_objects(conf: Path, url: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """The module's CRDs; the conversion-webhook ones call `url`/convert."""
    crds = [d for f in sorted((conf / "crds").glob("*.yaml")) for d in _load_all(f)]
    for crd in crds:
        if crd["spec"]["names"]["plural"] in CONVERSION_CRDS:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": f"{url}/convert", "caBundle": _ca_bundle(ca_pem)},
                    "conversionReviewVersions": ["v1"],
                },
            }
    return crds


def webhook_configurations(conf: Path, url: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """The module's Mutating/ValidatingWebhookConfigurations, kept to WEBHOOK_API_GROUPS, each
    webhook's Service reference replaced by `url` + its path."""
    out = []
    for doc in _load_all(conf / "webhooks.yaml"):
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] = NAME_PREFIX + doc["metadata"]["name"]
        hooks = [
            h
            for h in doc["webhooks"]
            if {g for r in h.get("rules", []) for g in r.get("apiGroups", [])} <= WEBHOOK_API_GROUPS
        ]
        for h in hooks:
            path = h["clientConfig"]["service"]["path"]
            h["clientConfig"] = {"url": f"{url}{path}", "caBundle": _ca_bundle(ca_pem)}
        doc["webhooks"] = hooks
        out.append(doc)
    return out


def rbac_objects(conf: Path) -> list[dict[str, Any]]:
    """The ServiceAccount Kueue runs as, bound to the module's ClusterRole and secrets Role."""
    (role,) = _load_all(conf / "role.yaml")
    (secrets_role,) = _load_all(conf / "secrets_role.yaml")
    role["metadata"]["name"] = NAME_PREFIX + role["metadata"]["name"]
    secrets_role["metadata"] = {"name": NAME_PREFIX + secrets_role["metadata"]["name"], "namespace": NAMESPACE}
    subject = [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]
    ref = {"apiGroup": "rbac.authorization.k8s.io"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}},
        role,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME_PREFIX + "manager-rolebinding"},
            "roleRef": {**ref, "kind": "ClusterRole", "name": role["metadata"]["name"]},
            "subjects": subject,
        },
        secrets_role,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": NAME_PREFIX + "manager-secrets-rolebinding", "namespace": NAMESPACE},
            "roleRef": {**ref, "kind": "Role", "name": secrets_role["metadata"]["name"]},
            "subjects": subject,
        },
    ]


def secret_object(pki: Path) -> dict[str, Any]:
    data = {
        name: base64.b64encode((pki / name).read_bytes()).decode()
        for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE},
        "data": data,
    }


def configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for one manager on loopback."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": WEBHOOK_SERVICE,
            "webhookSecretName": WEBHOOK_SECRET,
        },
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
        "clientConnection": {"qps": 50, "burst": 100},  # the module's own manager config
    }


# --- certificates -------------------------------------------------------------------------------


def write_pki(pki: Path) -> None:
    """A CA and the webhook server's certificate, in the form Kueue's cert rotator accepts as valid:
    the CA's key RSA in PKCS#1 (it parses no other), the CA named kueue-ca, both valid far beyond
    the rotator's 90-day look-ahead."""
    pki.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=pki)

    openssl("genrsa", "-traditional", "-out", "ca.key", "2048")
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/O=kueue/CN=kueue-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,digitalSignature,keyEncipherment",
        "-addext",
        "subjectAltName=DNS:kueue-ca",
    )
    dns = f"{WEBHOOK_SERVICE}.{NAMESPACE}.svc"
    (pki / "tls.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{dns},IP:127.0.0.1\n"
    )
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        f"/CN={dns}",
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "365",
        "-extfile",
        "tls.ext",
    )


# --- the manager process ------------------------------------------------------------------------


@dataclass
class LocalKueue:
    """Kueue's manager for one control plane. start() installs and runs it; stop() ends the
    process and leaves the installed objects; restart() is both, on the same ports."""

    control_plane: ControlPlane
    die_with_parent: bool = True
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def dir(self) -> Path:
        return self.control_plane.dir / "kueue"

    @property
    def log_path(self) -> Path:
        return self.control_plane.dir / "logs" / "kueue.log"

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['webhook']}"

    def api_client(self) -> client.ApiClient:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.control_plane.kubeconfig))

    def start(self, timeout: float = 120.0) -> LocalKueue:
        reason = binaries.kueue_missing_reason()
        if reason:
            raise KueueError(reason)
        t0 = time.monotonic()
        if not self.ports:
            self.ports = {"webhook": free_port(), "health": free_port()}
        if not (self.dir / "pki" / "tls.crt").exists():
            write_pki(self.dir / "pki")
        api = self.api_client()
        try:
            self._install(api, timeout)
            self._write_files(api)
        finally:
            api.close()
        self.proc = spawn(
            [str(binaries.kueue_path()), f"--config={self.dir / 'config.yaml'}"],
            log_path=self.log_path,
            die_with_parent=self.die_with_parent,
            env={**os.environ, "KUBECONFIG": str(self.dir / "kubeconfig")},
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("kueue up in %.1fs (webhooks %s, log %s)", time.monotonic() - t0, self.webhook_url, self.log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid, grace=10.0, proc=self.proc)
            self.proc = None

    def remove_webhooks(self) -> None:
        """Delete the webhook configurations start() installed. stop() keeps them, since a
        stopped Kueue behind its webhooks is what an outage looks like; a cluster that goes on
        without Kueue needs them gone, or every Job create fails on a webhook nobody answers."""
        api = self.api_client()
        try:
            adm = client.AdmissionregistrationV1Api(api)
            for doc in _load_all(binaries.kueue_config_dir() / "webhooks.yaml"):
                name = NAME_PREFIX + doc["metadata"]["name"]
                delete = (
                    adm.delete_mutating_webhook_configuration
                    if doc["kind"] == "MutatingWebhookConfiguration"
                    else adm.delete_validating_webhook_configuration
                )
                try:
                    delete(name)
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise
        finally:
            api.close()

    def restart(self, timeout: float = 120.0) -> LocalKueue:
        self.stop()
        return self.start(timeout)

    def state(self) -> dict[str, Any]:
        return {"pid": self.proc.pid if self.proc else None, "log": str(self.log_path), "ports": self.ports}

    def _install(self, api: client.ApiClient, timeout: float) -> None:
        conf = binaries.kueue_config_dir()
        ca = (self.dir / "pki" / "ca.crt").read_bytes()
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        crds = crd_objects(conf, self.webhook_url, ca)
        apply_objects(api, [namespace, *crds])
        wait_established(api, [c["metadata"]["name"] for c in crds], timeout)
        apply_objects(
            api,
            [*rbac_objects(conf), secret_object(self.dir / "pki"), *webhook_configurations(conf, self.webhook_url, ca)],
        )

    def _write_files(self, api: client.ApiClient) -> None:
        """The cert dir (what the kubelet would mount from the Secret), the Configuration, and a
        kubeconfig with a fresh token of Kueue's ServiceAccount."""
        certs = self.dir / "certs"
        certs.mkdir(exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (certs / name).write_bytes((self.dir / "pki" / name).read_bytes())
        config = configuration(self.ports["webhook"], self.ports["health"], certs)
        (self.dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
        )
        status = (
            client.CoreV1Api(api).create_namespaced_service_account_token(SERVICE_ACCOUNT, NAMESPACE, request).status
        )
        if status is None:
            raise KueueError(f"the TokenRequest for {NAMESPACE}/{SERVICE_ACCOUNT} came back without a token")
        token = status.token
        write_kubeconfig(
            self.dir / "kubeconfig",
            server=self.control_plane.server,
            ca_file=self.control_plane.ca_file,
            user={"token": token},
        )

    def _wait_ready(self, timeout: float) -> None:
        """Healthy, and its Job webhook answers: a dry-run Job with a queue name comes back suspended."""

        def alive_and(probe: Any) -> Any:
            def check() -> Any:
                if self.proc is None or self.proc.poll() is not None:
                    raise KueueError(
                        f"kueue exited with {self.proc.returncode if self.proc else '?'}; "
                        f"log {self.log_path}:\n{self.tail()}"
                    )
                return probe()

            return check

        wait_for(
            alive_and(self._healthy),
            timeout=timeout,
            what=f"kueue /readyz on port {self.ports['health']}",
            describe=self.tail,
        )
        api = self.api_client()
        try:
            wait_for(
                alive_and(lambda: _webhook_suspends(api)),
                timeout=timeout,
                what="kueue's Job webhook (a dry-run Job with a queue name comes back suspended)",
                describe=self.tail,
            )
        finally:
            api.close()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['health']}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError:
            return False

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _webhook_suspends(api: client.ApiClient) -> bool:
    container = client.V1Container(name="c", image="none", command=["true"])
    job = client.V1Job(
        metadata=client.V1ObjectMeta(generate_name="kueue-probe-", labels={QUEUE_LABEL: "probe"}),
        spec=client.V1JobSpec(
            template=client.V1PodTemplateSpec(spec=client.V1PodSpec(restart_policy="Never", containers=[container]))
        ),
    )
    made = client.BatchV1Api(api).create_namespaced_job("default", job, dry_run="All")
    return made.spec is not None and bool(made.spec.suspend)
