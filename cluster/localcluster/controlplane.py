"""The control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler on loopback.

Everything lives in one directory (certificates, etcd data, logs, kubeconfigs) and listens on
127.0.0.1 at random free ports. Authentication is by client certificate (components, admin),
static token (admin, handy for curl) and service-account tokens (pods); authorization is RBAC.
The controller manager runs every default controller except node lifecycle (nodes are
simulated by the node agent, which keeps them Ready itself).
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import binaries
from .processes import free_port, spawn, stop_group

log = logging.getLogger("localcluster.controlplane")

SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Every default controller but node lifecycle: with simulated nodes it would only taint and
# evict. (Names as listed by `kube-controller-manager --help`, v1.34.)
CONTROLLERS = "*,-node-lifecycle-controller,-cloud-node-lifecycle-controller"
# The controller manager's client rate limits. The defaults (20 QPS, burst 30; each controller
# has its own limiter under --use-service-account-credentials) are for small clusters: with a
# thousand finished Jobs the Job controller then took minutes to create a stage's Pods (issue 21).
# Clusters that run thousands of Jobs raise them: Kubernetes' own scalability tests (gce-100 and
# 5,000-node performance jobs) and managed clusters such as Huawei CCE (below 1,000 nodes) use 100/100.
CONTROLLER_MANAGER_API_QPS = 100
CONTROLLER_MANAGER_API_BURST = 100


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class Component:
    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class ControlPlane:
    """Start with start(), stop with stop(); the admin kubeconfig is `kubeconfig`.

    die_with_parent: children get SIGKILL when the calling thread dies (pytest); `up` turns it
    off so the cluster outlives the command.
    address: where the apiserver listens and what it advertises; 127.0.0.1 for simulated nodes,
    the host end of the cluster network for real ones (localcluster.netns), which also turns on
    what real kubelets need: the Node authorizer, the `kubernetes` Service's endpoint, and a
    client certificate for the apiserver's calls to kubelets (logs).
    """

    dir: Path
    bin_dir: Path = field(default_factory=binaries.bin_dir)
    die_with_parent: bool = True
    ports: dict[str, int] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    address: str = "127.0.0.1"

    @property
    def real_nodes(self) -> bool:
        return self.address != "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.ports['apiserver']}"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> ControlPlane:
        reason = binaries.missing_reason(self.bin_dir)
        if reason:
            raise ControlPlaneError(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler"):
            self.ports[name] = free_port()
        if self.die_with_parent:  # `up` leaves the cluster running on purpose
            atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            self._write_pki()
            self._write_kubeconfigs()
            self._start_etcd()
            self._wait_http(f"http://127.0.0.1:{self.ports['etcd']}/health", "etcd", timeout)
            self._start_apiserver()
            self._wait_apiserver(timeout)
            self._start_controller_manager()
            self._start_scheduler()
            self._wait_https_health(self.ports["controller_manager"], "kube-controller-manager", timeout)
            self._wait_https_health(self.ports["scheduler"], "kube-scheduler", timeout)
        except BaseException:
            self.stop()
            raise
        log.info("control plane up in %.1fs at %s (dir %s)", time.monotonic() - t0, self.server, self.dir)
        self._write_state()
        return self

    def stop(self) -> None:
        """Stops the components in reverse order; safe to call twice."""
        for c in reversed(self.components):
            stop_group(c.proc.pid, grace=5.0, proc=c.proc)
        self.components.clear()

    def stop_controllers(self) -> None:
        """Stops the controller manager and the scheduler only: then nothing recreates or places
        pods, so real nodes can be emptied before they stop."""
        for c in [c for c in self.components if c.name in ("kube-controller-manager", "kube-scheduler")]:
            stop_group(c.proc.pid, grace=5.0, proc=c.proc)
            self.components.remove(c)

    def client_kubeconfig(self, name: str, subject: str) -> Path:
        """A kubeconfig for a new client certificate (e.g. a kubelet's: /O=system:nodes/CN=system:node:<name>)."""
        self._sign(name, subject)
        pki = self.dir / "pki"
        return write_kubeconfig(
            self.dir / f"{name}.kubeconfig",
            server=self.server,
            ca_file=pki / "ca.crt",
            user={"client-certificate-data": _b64(pki / f"{name}.crt"), "client-key-data": _b64(pki / f"{name}.key")},
        )

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def state(self) -> dict:
        return {
            "dir": str(self.dir),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "admin_token": self.admin_token,
            "ports": self.ports,
            "components": {c.name: {"pid": c.pid, "log": str(c.log_path)} for c in self.components},
        }

    def _write_state(self) -> None:
        (self.dir / "state.json").write_text(json.dumps(self.state(), indent=2))

    # --- certificates and kubeconfigs ---------------------------------------------------------

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.dir / "pki")

    def _write_pki(self) -> None:
        pki = self.dir / "pki"
        pki.mkdir(exist_ok=True)
        # EC P-256 keys: generated instantly, and everything here speaks ECDSA.
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=localcluster-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )
        san = (
            "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        )
        if self.real_nodes:
            san += f",IP:{self.address}"
        self._sign("apiserver", "/CN=kube-apiserver", server=True, san=san)
        self._sign("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
        self._sign("admin", "/O=system:masters/CN=localcluster-admin")
        self._sign("controller-manager", "/CN=system:kube-controller-manager")
        self._sign("scheduler", "/CN=system:kube-scheduler")
        # The service-account signing key: RSA, the algorithm every token consumer accepts.
        self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key")
        self._openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        (pki / "tokens.csv").write_text(f'{self.admin_token},localcluster-admin,localcluster-admin,"system:masters"\n')

    def _sign(self, name: str, subject: str, *, server: bool = False, san: str = "") -> None:
        pki = self.dir / "pki"
        ext = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid",
        ]
        ext.append("extendedKeyUsage=serverAuth" if server else "extendedKeyUsage=clientAuth")
        if san:
            ext.append(f"subjectAltName={san}")
        (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
        self._openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
        )
        self._openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "365",
            "-extfile",
            f"{name}.ext",
        )

    def _write_kubeconfigs(self) -> None:
        pki = self.dir / "pki"
        for name, user in (
            ("kubeconfig", "admin"),
            ("controller-manager.kubeconfig", "controller-manager"),
            ("scheduler.kubeconfig", "scheduler"),
        ):
            write_kubeconfig(
                self.dir / name,
                server=self.server,
                ca_file=pki / "ca.crt",
                user={
                    "client-certificate-data": _b64(pki / f"{user}.crt"),
                    "client-key-data": _b64(pki / f"{user}.key"),
                },
            )

    # --- components -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.dir / "logs" / f"{name}.log"
        proc = spawn(argv, log_path=log_path, die_with_parent=self.die_with_parent)
        self.components.append(Component(name, proc, log_path))

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=localcluster",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=localcluster={peer}",
                "--listen-metrics-urls=",
                # Throwaway data: skipping fsync makes every write several times cheaper on CI disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        pki = self.dir / "pki"
        if self.real_nodes:
            # Kubelets authenticate as system:node:<name> (the Node authorizer scopes them to their
            # pods); the apiserver reaches them by InternalIP (the node names resolve nowhere)
            # with its own client certificate; the `kubernetes` Service gets this address as
            # its endpoint, so in-cluster config works from pods.
            nodes = [
                "--authorization-mode=Node,RBAC",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            ]
        else:
            # The "kubernetes" Service's endpoints would point at 127.0.0.1, which Endpoints
            # validation rejects; nothing here routes service IPs anyway.
            nodes = ["--authorization-mode=RBAC", "--endpoint-reconciler-type=none"]
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self.ports['apiserver']}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                *nodes,
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controller_manager(self) -> None:
        pki = self.dir / "pki"
        kc = self.dir / "controller-manager.kubeconfig"
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['controller_manager']}",
                f"--cert-dir={self.dir / 'controller-manager-certs'}",
                f"--controllers={CONTROLLERS}",
                # Each controller acts with its own service account, so RBAC is exercised as in a
                # real cluster.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--kube-api-qps={CONTROLLER_MANAGER_API_QPS}",
                f"--kube-api-burst={CONTROLLER_MANAGER_API_BURST}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        kc = self.dir / "scheduler.kubeconfig"
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['scheduler']}",
                f"--cert-dir={self.dir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )

    # --- readiness --------------------------------------------------------------------------

    def _check_alive(self) -> None:
        for c in self.components:
            if c.proc.poll() is not None:
                tail = c.log_path.read_text(errors="replace")[-3000:] if c.log_path.exists() else ""
                raise ControlPlaneError(f"{c.name} exited with {c.proc.returncode}; log {c.log_path}:\n{tail}")

    def _poll(self, what: str, timeout: float, probe) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if probe():
                    return
            except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
                last = exc
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{what} not ready after {timeout:.0f}s (last error: {last!r}); logs in {self.dir / 'logs'}"
        )

    def _wait_http(self, url: str, what: str, timeout: float) -> None:
        self._poll(what, timeout, lambda: urllib.request.urlopen(url, timeout=2).status == 200)

    def _wait_apiserver(self, timeout: float) -> None:
        pki = self.dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

        def ready() -> bool:
            try:
                return urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=5).status == 200
            except urllib.error.HTTPError:
                return False  # 500 while post-start hooks (RBAC bootstrap, ...) finish

        self._poll("kube-apiserver /readyz", timeout, ready)

    def _wait_https_health(self, port: int, what: str, timeout: float) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert of kcm/scheduler, loopback only

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=5).status == 200
            except urllib.error.HTTPError:
                return False

        self._poll(f"{what} /healthz", timeout, healthy)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path, *, server: str, ca_file: Path, user: dict, name: str = "localcluster", namespace: str | None = None
) -> Path:
    """Writes a single-context kubeconfig (JSON is valid YAML, so no YAML dependency)."""
    context: dict = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": name,
        "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": context}],
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
