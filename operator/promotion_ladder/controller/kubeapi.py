"""The operator's few Kubernetes API calls, and the rule for their errors.

`KubeApi` wraps the sync kubernetes client (called from worker threads) and counts every request
(ladder_operator_api_requests_total). `retryable` is the one HTTP-error rule the workers apply:
a failure the API server may not repeat (no status: a connection error; 5xx; 429 throttling) is
retried later; any other refusal (403 quota, 422 invalid) is the user's to fix and is reported
as a Warning Event instead of retried in a tight loop. `TrainerRbac` sets up the trainer's
ServiceAccount/Role/RoleBinding once per namespace.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ..core.api import GROUP, KIND, PLURAL, VERSION
from ..core.clock import iso
from ..core.status import MESSAGE_LIMIT
from .cellpod import rendezvous_service
from .metrics import LadderMetrics
from .rbac import trainer_objects

log = logging.getLogger("promotion_ladder.operator")
COMPONENT = "promotion-ladder-operator"
# connect, read: a call the API server does not answer in time fails (and is retried) instead of
# holding a worker thread, which also bounds how long a stopping operator waits for its threads.
REQUEST_SECONDS = (10, 60)
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"  # the Workload API of Kueue v0.17


@dataclass(frozen=True)
class Node:
    """What admission needs of a Node: its labels and its allocatable resources (quantities)."""

    name: str
    labels: dict[str, str]
    allocatable: dict[str, str] = field(default_factory=dict)


def node_from(n: Any) -> Node:
    """A Node as the kubernetes client reads it (V1Node) -> what admission needs of it."""
    meta, status = n.metadata, n.status
    allocatable = (status.allocatable if status is not None else None) or {}
    return Node(str(meta.name), dict(meta.labels or {}), {k: str(v) for k, v in allocatable.items()})


def api_status(exc: BaseException) -> int | None:
    """The HTTP status of an API server's refusal; None for anything else (a connection error)."""
    return exc.status if isinstance(exc, ApiException) else None


def api_message(exc: BaseException) -> str:
    """What the API server said: its Status message when the answer has one, else the exception."""
    if not isinstance(exc, ApiException):
        return str(exc)
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return message or str(exc.body or exc.reason or exc)


def retryable(exc: BaseException) -> bool:
    """Whether an API failure is worth retrying as it is (see the module docstring)."""
    status = api_status(exc)
    return status is None or status >= 500 or status == 429


def _body(manifest: dict[str, Any]) -> Any:
    """A manifest as a request body. The client sends a dict as is, but its types name only its
    model classes (V1Job, V1Service, ...): this is the one place that says so."""
    return manifest


class KubeApi:
    """The few API calls the operator makes (sync kubernetes client; called from worker threads)."""

    def __init__(self, api_client=None, metrics: LadderMetrics | None = None):
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self.api_client = api_client
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
        service = rendezvous_service(job)
        if service is not None:  # before its Job, so the pods' names resolve from their start
            self._count("create_service")
            try:
                self.core.create_namespaced_service(namespace, _body(service), _request_timeout=REQUEST_SECONDS)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        self._count("create_job")
        try:
            self.batch.create_namespaced_job(namespace, _body(job), _request_timeout=REQUEST_SECONDS)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def write_status(self, namespace: str, name: str, status: dict) -> str | None:
        """Replace .status (JSON patch `add` replaces the whole member); the new resourceVersion,
        or None when the ladder is gone."""
        self._count("patch_status")
        try:
            obj = self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                [{"op": "add", "path": "/status", "value": status}],
                _content_type="application/json-patch+json",
                _request_timeout=REQUEST_SECONDS,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        # The custom objects API returns the decoded JSON object (its types say `object`).
        return cast(dict[str, Any], obj)["metadata"]["resourceVersion"]

    def write_conditions(self, namespace: str, name: str, conditions: list[dict]) -> None:
        """Replace only .status.conditions (a merge patch replaces a list whole): works when the
        full status write is what the API server refuses."""
        self._count("patch_status")
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": {"conditions": conditions}},
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_SECONDS,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def pods_of_job(self, namespace: str, job_name: str, job_uid: str) -> list[dict]:
        """A Job's Pods read from the API server (not the cache), found by the labels the Job
        controller sets and kept only when the Job controls them (owner reference UID): a Pod
        whose ladder labels were changed is still found, one that merely claims the Job is not."""
        items: list[dict] = []
        for selector in (f"batch.kubernetes.io/controller-uid={job_uid}", f"batch.kubernetes.io/job-name={job_name}"):
            self._count("list_pods")
            try:
                found = self.core.list_namespaced_pod(
                    namespace, label_selector=selector, _request_timeout=REQUEST_SECONDS
                )
            except ApiException as exc:
                if exc.status == 404:
                    return []
                raise
            items = [self.core.api_client.sanitize_for_serialization(p) for p in found.items]
            items = [
                p
                for p in items
                if any(
                    r.get("controller") and r.get("uid") == job_uid
                    for r in (p.get("metadata") or {}).get("ownerReferences") or []
                )
            ]
            if items:
                break
        return items

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete one Job (and its Pods) if it is still the one we mean (UID precondition)."""
        self._count("delete_job")
        try:
            self.batch.delete_namespaced_job(
                name,
                namespace,
                body=client.V1DeleteOptions(
                    propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid)
                ),
                _request_timeout=REQUEST_SECONDS,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """End a stuck Pod at once (no grace: it already ran past its deadline)."""
        self._count("delete_pod")
        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)),
                _request_timeout=REQUEST_SECONDS,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def list_workloads(self, namespace: str) -> list[dict]:
        """Kueue's Workloads in a namespace (queueing.py reads why a queued cell waits); none
        when Kueue is not installed (404) or the operator may not read them (403: an RBAC older
        than controller/rbac.py; the queued cells are still shown Queued, only not why)."""
        self._count("list_workloads")
        try:
            found = self.custom.list_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads", _request_timeout=REQUEST_SECONDS
            )
        except ApiException as exc:
            if exc.status in (403, 404):
                log.debug("cannot list Workloads in %s: %s", namespace, exc.status)
                return []
            raise
        items: list[dict] = (found.get("items") or []) if isinstance(found, dict) else []
        return items

    def dry_run_job(self, namespace: str, job: dict) -> None:
        """Create a Job with dryRun=All: validated and admitted by the API server, never stored."""
        self._count("dry_run_job")
        self.batch.create_namespaced_job(namespace, _body(job), dry_run="All", _request_timeout=REQUEST_SECONDS)

    def namespace_labels(self, name: str) -> dict[str, str]:
        self._count("read_namespace")
        meta = self.core.read_namespace(name, _request_timeout=REQUEST_SECONDS).metadata
        assert meta is not None  # an object read from the API server always has its metadata
        return dict(meta.labels or {})

    def nodes(self) -> list[Node]:
        self._count("list_nodes")
        return [node_from(n) for n in self.core.list_node(_request_timeout=REQUEST_SECONDS).items]

    def failed_creates(self, namespace: str) -> dict[str, str]:
        """The message of the Job controller's latest FailedCreate Event of each Job in the
        namespace that has one, by Job UID."""
        self._count("list_events")
        found = self.core.list_namespaced_event(
            namespace, field_selector="reason=FailedCreate,involvedObject.kind=Job", _request_timeout=REQUEST_SECONDS
        ).items

        def when(e: Any) -> float:
            t = e.last_timestamp or e.event_time or e.metadata.creation_timestamp
            return t.timestamp() if t is not None else 0.0

        out: dict[str, str] = {}
        for e in sorted(found, key=when):  # the latest wins
            if e.involved_object is not None and e.involved_object.uid:
                out[e.involved_object.uid] = e.message or "FailedCreate"
        return out

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge annotations into a Pod (gone: nothing to do)."""
        self._count("patch_pod")
        try:
            self.core.patch_namespaced_pod(
                name, namespace, {"metadata": {"annotations": annotations}}, _request_timeout=REQUEST_SECONDS
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def post_event(self, body: dict, type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = iso()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:MESSAGE_LIMIT],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._count("create_event")
        try:
            self.core.create_namespaced_event(meta["namespace"], _body(event), _request_timeout=REQUEST_SECONDS)
        except ApiException as exc:  # Events are best effort
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)

    def ensure_trainer_rbac(self, namespace: str) -> None:
        for obj in trainer_objects(namespace):
            self._count("create_rbac")
            try:
                if obj["kind"] == "ServiceAccount":
                    self.core.create_namespaced_service_account(namespace, _body(obj), _request_timeout=REQUEST_SECONDS)
                elif obj["kind"] == "Role":
                    self.rbac.create_namespaced_role(namespace, _body(obj), _request_timeout=REQUEST_SECONDS)
                else:
                    self.rbac.create_namespaced_role_binding(namespace, _body(obj), _request_timeout=REQUEST_SECONDS)
            except ApiException as exc:
                if exc.status != 409:
                    raise


class RbacApi(Protocol):
    def ensure_trainer_rbac(self, namespace: str) -> None: ...


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

    def ensure(self, api: RbacApi, namespace: str) -> None:
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
