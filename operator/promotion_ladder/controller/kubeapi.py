"""The operator's few Kubernetes API calls, and the rule for their errors.

`KubeApi` wraps the sync kubernetes client (called from worker threads) and counts every request
(ladder_operator_api_requests_total). `retryable` is the one HTTP-error rule the workers apply:
a failure the API server may not repeat (no status: a connection error; 5xx; 429 throttling) is
retried later; any other refusal (403 quota, 422 invalid) is the user's to fix and is reported
as a Warning Event instead of retried in a tight loop. `TrainerRbac` sets up the trainer's
ServiceAccount/Role/RoleBinding once per namespace.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timezone

from ..core.api import GROUP, KIND, PLURAL, VERSION
from .metrics import LadderMetrics
from .rbac import trainer_objects

log = logging.getLogger("promotion_ladder.operator")
COMPONENT = "promotion-ladder-operator"


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def retryable(exc: BaseException) -> bool:
    """Whether an API failure is worth retrying as it is (see the module docstring)."""
    status = getattr(exc, "status", None)
    return status is None or status >= 500 or status == 429


class KubeApi:
    """The few API calls the operator makes (sync kubernetes client; called from worker threads)."""

    def __init__(self, api_client=None, metrics: LadderMetrics | None = None):
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.requests = 0  # API requests made, for the benchmark's requests-per-cell
        self.metrics = metrics
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()

    def _count(self, operation: str) -> None:
        self.requests += 1
        if self.metrics is not None:
            self.metrics.api_requests.labels(operation).inc()

    def create_job(self, namespace: str, job: dict) -> bool:
        """True when created, False when it already existed."""
        from kubernetes.client.exceptions import ApiException

        self._count("create_job")
        try:
            self.batch.create_namespaced_job(namespace, job)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def write_status(self, namespace: str, name: str, status: dict) -> str | None:
        """Replace .status (JSON patch `add` replaces the whole member); the new resourceVersion,
        or None when the ladder is gone."""
        from kubernetes.client.exceptions import ApiException

        self._count("patch_status")
        try:
            obj = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, [{"op": "add", "path": "/status", "value": status}],
                _content_type="application/json-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj["metadata"]["resourceVersion"]

    def post_event(self, body: dict, type_: str, reason: str, message: str) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = body["metadata"]
        now = now_iso()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": self.instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self._count("create_event")
        try:
            self.core.create_namespaced_event(meta["namespace"], event)
        except ApiException as exc:  # Events are best effort
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)

    def ensure_trainer_rbac(self, namespace: str) -> None:
        from kubernetes.client.exceptions import ApiException

        for obj in trainer_objects(namespace):
            self._count("create_rbac")
            try:
                if obj["kind"] == "ServiceAccount":
                    self.core.create_namespaced_service_account(namespace, obj)
                elif obj["kind"] == "Role":
                    self.rbac.create_namespaced_role(namespace, obj)
                else:
                    self.rbac.create_namespaced_role_binding(namespace, obj)
            except ApiException as exc:
                if exc.status != 409:
                    raise



class TrainerRbac:
    """The trainer's RBAC objects, created once per namespace by whichever worker gets there first.

    The namespace is claimed *before* the API calls, so two workers reconciling ladders of one
    namespace at the same time create the objects once (the second sees the claim and goes on;
    its Jobs may be created a moment before the RoleBinding exists, which only delays the
    trainer's first annotation, never fails it: creation is create-if-absent and the Pod's
    patch is retried). A failed set-up gives the claim back, so the next reconcile tries again.
    """

    def __init__(self) -> None:
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def ensure(self, api: "KubeApi", namespace: str) -> None:
        with self._lock:
            if namespace in self._done:
                return
            self._done.add(namespace)  # claimed first: see the class docstring
        try:
            api.ensure_trainer_rbac(namespace)
        except Exception:
            with self._lock:
                self._done.discard(namespace)
            raise
