"""RBAC as data: what the operator may do, and what a trainer pod may do.

This module is the single source of truth for permissions. The Helm chart's ClusterRole and
the per-namespace trainer Role are tested against these lists, and the operator creates the
trainer's ServiceAccount/Role/RoleBinding in each ladder's namespace from `trainer_objects`.

Why each operator rule exists is written next to it; keep it least-privilege.
"""

from __future__ import annotations

from typing import Any

from ..core.api import GROUP, PLURAL
from ..core.contract import PROGRESS_ANNOTATION, RESULT_ANNOTATION

Rule = dict[str, list[str]]

# The trainer pods run under this ServiceAccount; the operator ensures it (and its Role and
# RoleBinding of the same name) exists in every namespace that holds a ladder.
TRAINER_SERVICE_ACCOUNT = "ladder-trainer"
TRAINER_ROLE = "ladder-trainer"

# The operator's ClusterRole (or Role when it watches only some namespaces).
OPERATOR_RULES: list[Rule] = [
    # The custom resource: watch it, read it, write its status (the durable record).
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch", "update"]},
    # One Job per cell; deletion only through owner-reference garbage collection, but the
    # operator deletes a Job of a cell that is no longer wanted (kept minimal: no deletecollection).
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
    # A multi-node cell's headless Service (rendezvous DNS), owned by the ladder like its Jobs.
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create"]},
    # Results arrive as Pod annotations and termination messages: read on pods. delete: a Pod
    # still running far past its deadline (lost exit, dead node) is ended (controller/stuck.py).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
    # An Event for each stage decision and each rejected result (both APIs: kopf and kubectl use either).
    # list: why a cell's Job has no Pod is only in the Job controller's FailedCreate Event (jobevents.py).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "list"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # The trainer's identity in each ladder's namespace (created if absent, never modified).
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "create"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["get", "create"]},
    # One operator at a time: the leader Lease (controller/lease.py), in the first watched
    # namespace or the operator's own.
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    # Kopf: resource discovery and namespace watching when run cluster-wide or with globs.
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    # Kueue: a queued cell's Workload says why it waits (a missing LocalQueue or ClusterQueue, a
    # quota that can never hold the cell): read to name the queue (controller/queueing.py). Only
    # list, in the ladders' namespaces; harmless where Kueue is not installed.
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["list"]},
    # Admission: warn when no node matches a host block (controller/admission.py). Read only.
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
]

# Rules the operator must hold itself only because it grants them to the trainer
# (RBAC escalation prevention: one can only grant what one has).
_TRAINER_GRANT_RULES: list[Rule] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
]
OPERATOR_RULES += _TRAINER_GRANT_RULES

# A trainer pod may read and annotate pods in its own namespace, and nothing more: it patches
# its own Pod's result annotation (core.contract.RESULT_ANNOTATION). RBAC cannot say "only your own pod"
# without knowing the name in advance: TRAINER_ADMISSION_POLICY below does (Kubernetes 1.30+),
# and the operator's result intake trusts the termination message over the annotation.
TRAINER_RULES: list[Rule] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
]


def _labels() -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "promotion-ladder",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": "promotion-ladder-operator",
    }


def trainer_objects(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding that let trainer pods in `namespace` report results."""
    meta = lambda: {"name": TRAINER_SERVICE_ACCOUNT, "namespace": namespace, "labels": _labels()}  # noqa: E731
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(), "automountServiceAccountToken": True},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {**meta(), "name": TRAINER_ROLE},
            "rules": [dict(r) for r in TRAINER_RULES],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {**meta(), "name": TRAINER_ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": TRAINER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": TRAINER_SERVICE_ACCOUNT, "namespace": namespace}],
        },
    ]


def operator_cluster_role(name: str = "promotion-ladder-operator") -> dict[str, Any]:
    """The operator's ClusterRole as a manifest (the chart renders the same rules)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [dict(r) for r in OPERATOR_RULES],
    }


def covers(granted: list[Rule], needed: list[Rule]) -> list[str]:
    """Which (group, resource, verb) of `needed` the `granted` rules do not allow; [] when covered.
    For the chart's tests: render the chart, pass its rules as `granted`."""
    missing = []
    for rule in needed:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    if not any(
                        (g in x.get("apiGroups", []) or "*" in x.get("apiGroups", []))
                        and (r in x.get("resources", []) or "*" in x.get("resources", []))
                        and (v in x.get("verbs", []) or "*" in x.get("verbs", []))
                        for x in granted
                    ):
                        missing.append(f"{g or 'core'}/{r}:{v}")
    return missing


# -- the trainer's admission policy (Kubernetes 1.30+: admissionregistration.k8s.io/v1) ------------
#
# RBAC lets ladder-trainer patch any pod of its namespace. A ValidatingAdmissionPolicy narrows
# that to: its own Pod (the bound service-account token names the pod it was issued for, in
# userInfo.extra["authentication.kubernetes.io/pod-name"]), and there only the result and
# progress annotations: no label, no other annotation, no owner reference (the operator's result
# intake finds a cell's Pod by its owner), no finalizer, nothing in the spec (the deadline, the
# tolerations). Requests of any other user pass.
TRAINER_ADMISSION_POLICY = "ladder-trainer-own-pod"
POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
TRAINER_ANNOTATIONS = (RESULT_ANNOTATION, PROGRESS_ANNOTATION)


def _trainer_policy_variables() -> list[dict[str, str]]:
    """The policy's CEL variables: the requesting Pod's name, and the request's old and new metadata."""
    allowed = "[" + ", ".join(f"'{a}'" for a in TRAINER_ANNOTATIONS) + "]"
    return [
        {
            "name": "podName",
            "expression": (
                f"has(request.userInfo.extra) && '{POD_NAME_CLAIM}' in request.userInfo.extra && "
                f"size(request.userInfo.extra['{POD_NAME_CLAIM}']) > 0 ? "
                f"request.userInfo.extra['{POD_NAME_CLAIM}'][0] : ''"
            ),
        },
        {"name": "newLabels", "expression": "has(object.metadata.labels) ? object.metadata.labels : {}"},
        {"name": "oldLabels", "expression": "has(oldObject.metadata.labels) ? oldObject.metadata.labels : {}"},
        {"name": "newAnn", "expression": "has(object.metadata.annotations) ? object.metadata.annotations : {}"},
        {
            "name": "oldAnn",
            "expression": "has(oldObject.metadata.annotations) ? oldObject.metadata.annotations : {}",
        },
        {"name": "allowed", "expression": allowed},
        {
            "name": "newOwners",
            "expression": ("has(object.metadata.ownerReferences) ? object.metadata.ownerReferences : []"),
        },
        {
            "name": "oldOwners",
            "expression": ("has(oldObject.metadata.ownerReferences) ? oldObject.metadata.ownerReferences : []"),
        },
        {
            "name": "newFinalizers",
            "expression": ("has(object.metadata.finalizers) ? object.metadata.finalizers : []"),
        },
        {
            "name": "oldFinalizers",
            "expression": ("has(oldObject.metadata.finalizers) ? oldObject.metadata.finalizers : []"),
        },
    ]


def _trainer_policy_validations() -> list[dict[str, str]]:
    """What a trainer may change on its own Pod: only the annotations it publishes."""
    return [
        {
            "expression": "variables.podName != '' && variables.podName == object.metadata.name",
            "reason": "Forbidden",
            "messageExpression": (
                "'a ladder trainer may change only its own Pod (its token is bound to pod ' + "
                "variables.podName + ', the request is for ' + object.metadata.name + ')'"
            ),
        },
        {
            "expression": "variables.newLabels == variables.oldLabels",
            "reason": "Forbidden",
            "message": "a ladder trainer may not change its Pod's labels",
        },
        {
            "expression": (
                "variables.newAnn.all(k, k in variables.allowed || "
                "(k in variables.oldAnn && variables.oldAnn[k] == variables.newAnn[k])) && "
                "variables.oldAnn.all(k, k in variables.allowed || k in variables.newAnn)"
            ),
            "reason": "Forbidden",
            "message": "a ladder trainer may change only the annotations " + ", ".join(TRAINER_ANNOTATIONS),
        },
        {
            "expression": "variables.newOwners == variables.oldOwners",
            "reason": "Forbidden",
            "message": "a ladder trainer may not change its Pod's ownerReferences",
        },
        {
            "expression": "variables.newFinalizers == variables.oldFinalizers",
            "reason": "Forbidden",
            "message": "a ladder trainer may not change its Pod's finalizers",
        },
        {
            "expression": "object.spec == oldObject.spec",
            "reason": "Forbidden",
            "message": "a ladder trainer may not change its Pod's spec",
        },
    ]


def trainer_admission_policy(name: str = TRAINER_ADMISSION_POLICY) -> list[dict[str, Any]]:
    """The ValidatingAdmissionPolicy and its binding (cluster-scoped; the chart renders the same)."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": _labels()},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"]}
                ]
            },
            "matchConditions": [
                {
                    "name": "is-a-ladder-trainer",
                    "expression": (
                        "request.userInfo.username.startsWith('system:serviceaccount:') && "
                        f"request.userInfo.username.endsWith(':{TRAINER_SERVICE_ACCOUNT}')"
                    ),
                }
            ],
            "variables": _trainer_policy_variables(),
            "validations": _trainer_policy_validations(),
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": _labels()},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return [policy, binding]
