"""The cell pod template (spec.trainer.template): which fields a user may give, and how they merge.

A ladder's `spec.trainer.template` is a partial PodTemplateSpec merged into every cell's pod:
what the operator cannot know (the corpus volume, pull secrets, priority, affinity, security
settings) comes from it. Some fields are the operator's: the cell contract (the trainer's
image, command, args, working directory, result and scratch paths, identity env), placement
(the host block's nodeSelector keys), the failure and deadline policy (restartPolicy,
activeDeadlineSeconds) and the identity that may publish results (serviceAccountName). A
template that sets one of those is refused (`owned_field_errors`), never silently overridden,
so what a user reads in the ladder is what runs.

The merge (`merge_pod_template`) follows Kubernetes' strategic merge patch where it matters:
lists of named things (volumes, containers, env, imagePullSecrets) merge by name, volume mounts
by mountPath, tolerations are added to the host block's, maps merge key by key.

The template is infrastructure, not protocol: it is not part of the frozen hash
(core.api.frozen_hash), and may change while a ladder runs (it applies to Jobs created after).

Pure: dicts in, dicts (or error lines) out.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from .contract import CONTINUATION_ENV, ENV_NODE_RANK, IDENTITY_ENV, LAYOUT_ENV

TRAINER_CONTAINER = "trainer"
SCRATCH_VOLUME = "scratch"
SCRATCH_PATH = "/scratch"
# The candidate's config file (the cell contract's --config-file), projected from the Pod's
# config annotation by the downward API.
CONFIG_VOLUME = "ladder-config"
CONFIG_PATH = "/etc/ladder"
SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"

# Env the operator sets on the trainer container: the cell identity and the process layout
# (the cell contract), the downward-API pod identity the trainer uses to publish its result,
# and the index the Job controller gives each pod of a multi-node cell.
OWNED_ENV = frozenset({*IDENTITY_ENV, *LAYOUT_ENV, *CONTINUATION_ENV, ENV_NODE_RANK, "POD_NAME", "POD_NAMESPACE"})
# Label and annotation prefixes the operator and the Job controller use to find a cell's pods
# and its result (ladder.promotion.dev/result): a template must not be able to forge them.
OWNED_META_PREFIXES = ("ladder.promotion.dev/", "batch.kubernetes.io/")

# Pod-level fields the operator owns, and why (the why is part of the error line).
OWNED_POD_FIELDS = {
    "containers": None,  # handled separately: only the `trainer` container, partly
    "restartPolicy": "the Job's failure policy depends on it",
    "activeDeadlineSeconds": "set from the stage budget",
    "serviceAccountName": (
        "results are published under the ladder-trainer identity; annotate that ServiceAccount instead"
    ),
    "serviceAccount": "results are published under the ladder-trainer identity",
    "automountServiceAccountToken": "the trainer needs its token to publish its result",
    "nodeName": "placement is the host block's (nodeSelector)",
    "hostname": "multi-node cells get their hostnames from the Job",
    "subdomain": "multi-node cells use the operator's rendezvous Service",
}
# Trainer-container fields the operator owns, and fields the template may give.
OWNED_CONTAINER_FIELDS = {
    "image": "spec.trainer.image sets it",
    "command": "spec.trainer.command sets it",
    "args": "spec.trainer.args sets it (the operator appends the cell contract)",
    "workingDir": "the cell's scratch directory",
    "resources": "set spec.trainer.resources (and spec.trainer.gpus for nvidia.com/gpu)",
    "terminationMessagePath": "the result's fallback channel",
    "terminationMessagePolicy": "the result's fallback channel",
    "restartPolicy": "the Job's failure policy depends on it",
}
TEMPLATE_CONTAINER_FIELDS = frozenset(
    {
        "name",
        "volumeMounts",
        "volumeDevices",
        "env",
        "envFrom",
        "securityContext",
        "imagePullPolicy",
        "ports",
        "lifecycle",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
    }
)

OWNED = "owned by the operator"


# --- validation ----------------------------------------------------------------------------


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _named_list(value: Any, path: str, errs: list[str], key: str = "name") -> list[dict[str, Any]]:
    """The entries of a list of objects that each have a string `key`; problems go to errs."""
    if not isinstance(value, list):
        errs.append(f"{path}: must be a list")
        return []
    out, seen = [], set()
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get(key), str) or not item.get(key):
            errs.append(f"{path}[{i}]: must be an object with a {key}")
            continue
        if item[key] in seen:
            errs.append(f"{path}[{item[key]}]: listed twice")
        seen.add(item[key])
        out.append(item)
    return out


def _meta_errors(meta: Any, path: str) -> list[str]:
    if not isinstance(meta, dict):
        return [f"{path}: must be an object"]
    errs = []
    for key, value in meta.items():
        if key not in ("labels", "annotations"):
            errs.append(f"{path}.{key}: not allowed in a cell's pod template (only labels and annotations)")
        elif not _is_str_map(value):
            errs.append(f"{path}.{key}: must be a map of strings")
        else:
            errs += [
                f"{path}.{key}[{k}]: {OWNED} "
                f"(the operator and the Job controller use {k.split('/')[0]}/ to find a cell's pods and result)"
                for k in value
                if k.startswith(OWNED_META_PREFIXES)
            ]
    return errs


def _trainer_errors(ctr: dict[str, Any], path: str) -> list[str]:
    errs = []
    for key in ctr:
        if key in OWNED_CONTAINER_FIELDS:
            errs.append(f"{path}.{key}: {OWNED} ({OWNED_CONTAINER_FIELDS[key]})")
        elif key not in TEMPLATE_CONTAINER_FIELDS:
            errs.append(
                f"{path}.{key}: not supported in the template's trainer container "
                f"(allowed: {', '.join(sorted(TEMPLATE_CONTAINER_FIELDS - {'name'}))})"
            )
    if "volumeMounts" in ctr:
        for m in _named_list(ctr["volumeMounts"], f"{path}.volumeMounts", errs, key="mountPath"):
            p = m["mountPath"].rstrip("/") or "/"
            if p == SCRATCH_PATH or m.get("name") == SCRATCH_VOLUME:
                errs.append(
                    f"{path}.volumeMounts[{m['mountPath']}]: {OWNED} (the cell's scratch directory {SCRATCH_PATH}, "
                    "where the result file is written)"
                )
            elif p == CONFIG_PATH or m.get("name") == CONFIG_VOLUME:
                errs.append(f"{path}.volumeMounts[{m['mountPath']}]: {OWNED} (the cell's config file, {CONFIG_PATH})")
            elif not m.get("name"):
                errs.append(f"{path}.volumeMounts[{m['mountPath']}].name: required (the volume to mount)")
    if "env" in ctr:
        for e in _named_list(ctr["env"], f"{path}.env", errs):
            if e["name"] in OWNED_ENV:
                errs.append(f"{path}.env[{e['name']}]: {OWNED} (the cell contract sets it)")
    if "envFrom" in ctr and not isinstance(ctr["envFrom"], list):
        errs.append(f"{path}.envFrom: must be a list")
    return errs


def owned_field_errors(
    template: Any, host_selector_keys: Iterable[tuple[str, str]] = (), path: str = "spec.trainer.template"
) -> list[str]:
    """One "field.path: problem" line per field of `template` that the operator owns or that is
    malformed. `host_selector_keys`: (host block path, key) of every host block nodeSelector key,
    e.g. ("spec.hostBlocks[0].nodeSelector", "nvidia.com/gpu.product")."""
    if template is None or template == {}:
        return []
    if not isinstance(template, dict):
        return [f"{path}: must be an object (a partial PodTemplateSpec: metadata and spec)"]
    errs = [
        f"{path}.{k}: unknown field; a pod template has metadata and spec"
        for k in template
        if k not in ("metadata", "spec")
    ]
    if "metadata" in template:
        errs += _meta_errors(template["metadata"], f"{path}.metadata")
    spec = template.get("spec", {})
    if not isinstance(spec, dict):
        return errs + [f"{path}.spec: must be an object (a partial PodSpec)"]
    sp = f"{path}.spec"
    for key, why in OWNED_POD_FIELDS.items():
        if key in spec and why is not None:
            errs.append(f"{sp}.{key}: {OWNED} ({why})")
    if "nodeSelector" in spec:
        if not _is_str_map(spec["nodeSelector"]):
            errs.append(f"{sp}.nodeSelector: must be a map of strings")
        else:
            owners: dict[str, str] = {}
            for where, key in host_selector_keys:
                owners.setdefault(key, where)
            errs += [
                f"{sp}.nodeSelector[{k}]: {OWNED} ({owners[k]} sets it; the host block's placement wins)"
                for k in spec["nodeSelector"]
                if k in owners
            ]
    if "volumes" in spec:
        owned_volumes = {SCRATCH_VOLUME: "the cell's scratch emptyDir", CONFIG_VOLUME: "the cell's config file"}
        errs += [
            f"{sp}.volumes[{v['name']}]: {OWNED} ({owned_volumes[v['name']]})"
            for v in _named_list(spec["volumes"], f"{sp}.volumes", errs)
            if v["name"] in owned_volumes
        ]
    if "imagePullSecrets" in spec:
        _named_list(spec["imagePullSecrets"], f"{sp}.imagePullSecrets", errs)
    if "tolerations" in spec and not (
        isinstance(spec["tolerations"], list) and all(isinstance(t, dict) for t in spec["tolerations"])
    ):
        errs.append(f"{sp}.tolerations: must be a list of objects")
    if "initContainers" in spec:
        errs += [
            f"{sp}.initContainers[{c['name']}]: the name {TRAINER_CONTAINER!r} is the operator's trainer container"
            for c in _named_list(spec["initContainers"], f"{sp}.initContainers", errs)
            if c["name"] == TRAINER_CONTAINER
        ]
    if "containers" in spec:
        for c in _named_list(spec["containers"], f"{sp}.containers", errs):
            cp = f"{sp}.containers[{c['name']}]"
            if c["name"] != TRAINER_CONTAINER:
                errs.append(
                    f"{cp}: only the container {TRAINER_CONTAINER!r} may be given; run a sidecar as an "
                    "initContainer with restartPolicy: Always (a native sidecar), since a second regular "
                    "container would keep the cell's Job from completing"
                )
            else:
                errs += _trainer_errors(c, cp)
    return errs


# --- merge ---------------------------------------------------------------------------------


def _merge_named(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str = "name") -> list[dict[str, Any]]:
    """Strategic-merge style: an entry of `theirs` replaces ours of the same key in place;
    new ones are appended in their order."""
    out = [copy.deepcopy(x) for x in ours]
    index = {x.get(key): i for i, x in enumerate(out)}
    for item in theirs:
        if item.get(key) in index:
            out[index[item[key]]] = copy.deepcopy(item)
        else:
            index[item.get(key)] = len(out)
            out.append(copy.deepcopy(item))
    return out


def _merge_trainer(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(ours)
    for key, value in theirs.items():
        if key in ("name", *OWNED_CONTAINER_FIELDS):
            continue
        if key == "volumeMounts":
            out[key] = _merge_named(out.get(key, []), value, key="mountPath")
        elif key == "env":
            out[key] = _merge_named(out.get(key, []), value)
        elif key == "envFrom":
            out[key] = [*copy.deepcopy(out.get(key, [])), *copy.deepcopy(value)]
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_pod_template(ours: dict[str, Any], template: dict[str, Any] | None) -> dict[str, Any]:
    """`ours` (the operator's PodTemplateSpec: metadata + spec) with `template` merged in.

    Expects a template that passed `owned_field_errors`; owned fields it might still carry are
    skipped, so the operator's values stand. Labels: ours win. nodeSelector: the template's
    keys are added, ours win. Tolerations: the template's are added after the host block's.
    Volumes, imagePullSecrets, initContainers: by name. The trainer container: volumeMounts by
    mountPath, env by name, envFrom appended, the other allowed fields set.
    """
    out = copy.deepcopy(ours)
    if not template:
        return out
    meta = template.get("metadata") or {}
    out_meta = out.setdefault("metadata", {})
    for key in ("labels", "annotations"):
        if meta.get(key):
            out_meta[key] = {**meta[key], **(out_meta.get(key) or {})}
    spec = out.setdefault("spec", {})
    for key, value in (template.get("spec") or {}).items():
        if key in OWNED_POD_FIELDS and key != "containers":
            continue
        if key in ("volumes", "imagePullSecrets", "initContainers"):
            spec[key] = _merge_named(spec.get(key, []), value)
        elif key == "tolerations":
            have = spec.get(key, [])
            spec[key] = [*copy.deepcopy(have), *[copy.deepcopy(t) for t in value if t not in have]]
        elif key == "nodeSelector":
            spec[key] = {**value, **(spec.get(key) or {})}
        elif key == "containers":
            given = next((c for c in value if c.get("name") == TRAINER_CONTAINER), None)
            if given is not None:
                spec["containers"] = [
                    _merge_trainer(c, given) if c.get("name") == TRAINER_CONTAINER else c
                    for c in spec.get("containers", [])
                ]
        else:
            spec[key] = copy.deepcopy(value)
    return out


def template_mounts(template: dict[str, Any] | None) -> set[str]:
    """The mountPaths the template gives the trainer container (e.g. to see whether it says
    what /dev/shm is)."""
    spec = (template or {}).get("spec") or {}
    for c in spec.get("containers") or []:
        if c.get("name") == TRAINER_CONTAINER:
            return {(m.get("mountPath") or "").rstrip("/") or "/" for m in c.get("volumeMounts") or []}
    return set()


def continuation_mount_errors(continuation_path: str | None, template: dict[str, Any] | None) -> list[str]:
    """On a cluster the cells of a ladder that continues share their checkpoints through a volume
    the template mounts at (or above) spec.continuation.path, writable: without one each pod
    would write into its own filesystem and the next stage would find nothing."""
    if continuation_path is None:
        return []
    spec = (template or {}).get("spec") or {}
    mounts = [
        m
        for c in spec.get("containers") or []
        if c.get("name") == TRAINER_CONTAINER
        for m in c.get("volumeMounts") or []
    ]
    covering = [m for m in mounts if _covers((m.get("mountPath") or "").rstrip("/"), continuation_path)]
    if not covering:
        return [
            f"spec.continuation.path: {continuation_path} is on no volume of the cells' pods; mount one every "
            "cell can write (a ReadWriteMany claim) at it or above it in spec.trainer.template "
            "(containers[trainer].volumeMounts)"
        ]
    mount = max(covering, key=lambda m: len(m.get("mountPath") or ""))
    if mount.get("readOnly"):
        return [
            f"spec.continuation.path: {continuation_path} is on the volume mounted read-only at "
            f"{mount.get('mountPath')}; the cells write their checkpoints there"
        ]
    return []


def _covers(mount_path: str, path: str) -> bool:
    return path == mount_path or path.startswith(mount_path + "/") or mount_path == ""
