"""Server-side apply of any objects (CRDs, webhook configurations, Kueue's queues), as
`kubectl apply --server-side --force-conflicts` does, through the client's dynamic client."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from .waiting import wait_for

FIELD_MANAGER = "localcluster"


def apply_objects(
    api: client.ApiClient, objects: Iterable[dict[str, Any]], *, field_manager: str = FIELD_MANAGER
) -> list[Any]:
    """Applies each object in order; returns what the API server stored."""
    dyn = DynamicClient(api)
    out = []
    for obj in objects:
        out.append(
            dyn.server_side_apply(_resource(dyn, obj), body=obj, field_manager=field_manager, force_conflicts=True)
        )
    return out


def _resource(dyn: DynamicClient, obj: dict[str, Any]) -> Any:
    try:
        return dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    except ResourceNotFoundError:
        # A kind whose CRD was created after discovery was cached.
        dyn.resources.invalidate_cache()
        return dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])


def wait_established(api: client.ApiClient, names: Iterable[str], timeout: float = 60.0) -> None:
    """Until every named CRD has condition Established=True (its kinds can be served)."""
    ext = client.ApiextensionsV1Api(api)
    pending = set(names)

    def established() -> bool:
        for name in sorted(pending):
            status = ext.read_custom_resource_definition(name).status
            conditions = (status.conditions if status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                pending.discard(name)
        return not pending

    wait_for(established, timeout=timeout, what="CRDs Established", describe=lambda: sorted(pending))
