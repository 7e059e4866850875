"""Pod Security Standards (baseline, restricted) for a cell's pod: which field of the ladder breaks
them, said before any pod is refused.

A namespace labelled `pod-security.kubernetes.io/enforce=restricted` makes the API server refuse
every pod that breaks the standard; a cell Job whose pods are refused never runs. The operator
checks a ladder's cell pods against the namespace's level before it starts (controller/
admission.py) and `ladder validate --pod-security restricted` does the same without a cluster.
Each finding names the field to set in the ladder (spec.trainer.template...), as the standard
words it (kubernetes.io/docs/concepts/security/pod-security-standards, v1.34).

Pure: a pod spec (the merged cell pod) in, findings out. Not every rule of the standards is here,
only those a cell pod can meet by its template: host namespaces, privileged, host paths and
ports, volume types, privilege escalation, non-root, seccomp and capabilities. The API server
remains the authority.
"""

from __future__ import annotations

from typing import Any

LEVELS = ("privileged", "baseline", "restricted")
TEMPLATE = "spec.trainer.template.spec"
# Volume types the restricted standard allows.
RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
SECCOMP_OK = ("RuntimeDefault", "Localhost")


def _containers(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for kind in ("initContainers", "containers"):
        for c in pod.get(kind) or []:
            out.append((f"{TEMPLATE}.{kind}[{c.get('name', '?')}]", c))
    return out


def _baseline(pod: dict[str, Any]) -> list[str]:
    found = [
        f"{TEMPLATE}.{f} must be unset or false (baseline: host namespaces)"
        for f in ("hostNetwork", "hostPID", "hostIPC")
        if pod.get(f)
    ]
    found += [
        f"{TEMPLATE}.volumes[{v.get('name')}].hostPath is not allowed (baseline: hostPath volumes)"
        for v in pod.get("volumes") or []
        if "hostPath" in v
    ]
    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"{where}.securityContext.privileged must be unset or false (baseline: privileged containers)")
        found += [
            f"{where}.ports[{p.get('containerPort')}].hostPort must be unset (baseline: host ports)"
            for p in c.get("ports") or []
            if p.get("hostPort")
        ]
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"{where}.securityContext.seccompProfile.type must not be Unconfined (baseline: seccomp)")
    if ((pod.get("securityContext") or {}).get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append(f"{TEMPLATE}.securityContext.seccompProfile.type must not be Unconfined (baseline: seccomp)")
    return found


def _restricted(pod: dict[str, Any]) -> list[str]:
    psc = pod.get("securityContext") or {}
    found = [
        f"{TEMPLATE}.volumes[{v.get('name')}] of type {kind} is not allowed (restricted: volume types)"
        for v in pod.get("volumes") or []
        for kind in v
        if kind != "name" and kind not in RESTRICTED_VOLUMES and kind != "hostPath"
    ]
    if psc.get("runAsUser") == 0:
        found.append(f"{TEMPLATE}.securityContext.runAsUser must not be 0 (restricted: running as non-root user)")
    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(
                f"{where}.securityContext.allowPrivilegeEscalation must be false (restricted: privilege escalation)"
            )
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            found.append(
                f"{where}.securityContext.runAsNonRoot (or {TEMPLATE}.securityContext.runAsNonRoot) "
                "must be true (restricted: running as non-root)"
            )
        if sc.get("runAsUser") == 0:
            found.append(f"{where}.securityContext.runAsUser must not be 0 (restricted: running as non-root user)")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in SECCOMP_OK:
            found.append(
                f"{where}.securityContext.seccompProfile.type (or {TEMPLATE}.securityContext."
                "seccompProfile.type) must be RuntimeDefault or Localhost (restricted: seccomp)"
            )
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{where}.securityContext.capabilities.drop must include ALL (restricted: capabilities)")
        extra = [a for a in caps.get("add") or [] if a != "NET_BIND_SERVICE"]
        if extra:
            found.append(
                f"{where}.securityContext.capabilities.add may hold only NET_BIND_SERVICE, not "
                f"{', '.join(extra)} (restricted: capabilities)"
            )
    return found


def violations(level: str, pod: dict[str, Any]) -> list[str]:
    """What of `pod` (a pod spec) breaks the Pod Security Standard `level`; empty when it holds."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security Standard {level!r}; one of {', '.join(LEVELS)}")
    if level == "privileged":
        return []
    found = _baseline(pod)
    return found + _restricted(pod) if level == "restricted" else found
