"""Where a report's data comes from: a status file (bare status or full object) or the cluster.

A report needs the status document; the frozen spec is optional (a bare status from
`ladder simulate --output json` does not carry it, so `--ladder FILE` supplies it).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.api import GROUP, KIND, PLURAL, VERSION, LadderInvalid, LadderSpec, frozen_hash_matches, load_ladder
from ..core.status import LadderStatus, parse_status
from ..files import FileError, read_ladder, read_text


class ReportError(ValueError):
    """A report that cannot be made; the message names the source and says what to do."""


@dataclass(frozen=True)
class ReportInput:
    name: str
    status: LadderStatus
    spec: LadderSpec | None = None
    origin: str = ""  # "file examples/x.json", "cluster ns/name"
    warnings: list[str] = field(default_factory=list)


def from_document(data: Any, origin: str, name: str | None = None, ladder_file: str | None = None) -> ReportInput:
    """A bare status dict, or a full PromotionLadder object {apiVersion, kind, metadata, spec, status}."""
    if not isinstance(data, dict):
        raise ReportError(
            f"{origin}: expected a JSON object (a ladder status or a PromotionLadder), got {type(data).__name__}"
        )
    spec = None
    if data.get("kind") == KIND or ("spec" in data and "status" in data):
        try:
            ladder = load_ladder(data, source=origin)
        except LadderInvalid as exc:
            raise ReportError(f"{origin}: its spec does not validate: {'; '.join(exc.errors)}") from None
        spec, name = ladder.spec, ladder.name
        raw_status = data.get("status") or {}
    else:
        raw_status = data
    try:
        status = parse_status(raw_status)
    except ValueError as exc:
        raise ReportError(f"{origin}: {exc}") from None
    warnings = []
    if ladder_file is not None:
        ladder = read_ladder(ladder_file)
        if spec is not None and ladder.spec.frozen_hash() != spec.frozen_hash():
            warnings.append(
                f"--ladder {ladder_file} differs from the spec stored with the status; showing the stored spec"
            )
        elif spec is None:
            spec, name = ladder.spec, ladder.name
    if spec is not None and not frozen_hash_matches(status.frozen_hash, spec):
        warnings.append(
            f"the spec's frozen hash {spec.frozen_hash()} differs from the status's {status.frozen_hash}: "
            "the frozen fields changed after the ladder ran, so the spec shown is not the one that was decided on"
        )
    return ReportInput(name=name or "ladder", status=status, spec=spec, origin=origin, warnings=warnings)


def from_file(path: str, ladder_file: str | None = None) -> ReportInput:
    """`path` is a JSON file, or "-" for stdin (e.g. piped from `ladder simulate --output json`)."""
    if path == "-":
        text, origin, stem = sys.stdin.read(), "stdin", None
    else:
        text, origin, stem = read_text(path), path, Path(path).name.split(".")[0]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if not origin.endswith((".yaml", ".yml")):
            raise ReportError(
                f"{origin}: not JSON ({exc.msg} at line {exc.lineno}); give a status file from `ladder run` or "
                "`ladder simulate --output json`"
            ) from None
        try:  # e.g. `kubectl get promotionladder NAME -o yaml`
            data = yaml.safe_load(text)
        except yaml.YAMLError as yexc:
            raise ReportError(f"{origin}: not valid YAML: {getattr(yexc, 'problem', yexc)}") from None
    return from_document(data, origin, name=stem, ladder_file=ladder_file)


def _default_namespace(kubeconfig: str | None, context: str | None) -> str:
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError, yaml.YAMLError):  # in-cluster, no or bad kubeconfig: kubectl's default
        return "default"
    ctx = next((c for c in contexts if c["name"] == context), active) if context else active
    return (ctx or {}).get("context", {}).get("namespace") or "default"


def from_cluster(
    name: str,
    namespace: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    api: Any = None,
    ladder_file: str | None = None,
) -> ReportInput:
    """Read the PromotionLadder `name` with the kubernetes client, as kubectl would find it."""
    import urllib3
    from kubernetes import client, config

    if api is None:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
        except Exception as load_exc:  # noqa: BLE001 - auth plugins (exec, oidc, gcp) raise their own; the message says it
            try:
                config.load_incluster_config()
            except (config.ConfigException, OSError):  # not in a pod, or its token cannot be read
                raise ReportError(
                    f"{name}: no such file, and no cluster to read a {KIND} from ({load_exc}); "
                    "give a status file, or --kubeconfig / KUBECONFIG for the cluster"
                ) from None
        api = client.CustomObjectsApi()
    ns = namespace or _default_namespace(kubeconfig, context)
    origin = f"cluster {ns}/{name}"
    try:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except client.ApiException as exc:
        if exc.status == 404:
            raise ReportError(f"{origin}: no {KIND} {name!r} in namespace {ns!r} (and no file of that name)") from None
        raise ReportError(f"{origin}: the API server answered {exc.status} {exc.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # connection refused, TLS, timeouts
        raise ReportError(f"{origin}: cannot reach the API server: {exc}") from None
    if not obj.get("status"):
        raise ReportError(f"{origin}: the ladder has no status yet; is the operator running?")
    return from_document(obj, origin, ladder_file=ladder_file)


def load_source(
    source: str,
    ladder_file: str | None = None,
    namespace: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> ReportInput:
    """A path (or "-") that exists or looks like a file is read as a file; anything else is a ladder name."""
    p = Path(source)
    if source == "-" or p.exists() or p.suffix in (".json", ".yaml", ".yml") or "/" in source:
        try:
            return from_file(source, ladder_file)
        except FileError as exc:
            raise ReportError(str(exc)) from None
    return from_cluster(source, namespace, kubeconfig, context, ladder_file=ladder_file)
