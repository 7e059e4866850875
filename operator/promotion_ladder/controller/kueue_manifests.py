"""`ladder manifests --kueue`: the Kueue objects that put a ladder's cells behind a quota.

A host block is a pool of nodes, and Kueue's name for a pool is a ResourceFlavor: one flavor per
host block, named after it, whose nodeLabels are the block's nodeSelector (Kueue matches each
cell's pod nodeSelector against them, so a cell only ever takes quota from its own block). One
ClusterQueue holds each flavor's quota, and one LocalQueue, named as `spec.queueName`, lets the
ladder's namespace submit to it.

The ClusterQueue covers every resource a cell's pod requests, since Kueue admits nothing whose
requests its queue does not cover. What a cell requests is read from the Job the operator
builds (`jobs.build_job`), counted as Kueue counts it (a request, else the limit; containers
summed; see `pod_requests`), times the pods of a cell. The GPU quota per block is the user's
choice (`--gpu-quota`); any other requested resource gets, unless given, exactly what the cells
that fit in the GPU quota need, so the GPUs stay the only limit.

Pure: a ladder and options in, dicts out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import yaml
from kubernetes.utils.quantity import parse_quantity

from ..core.api import HostBlock, LadderSpec, PromotionLadder
from ..core.cell import Cell
from .jobs import GPU_RESOURCE, build_job
from .manifests import PLACEHOLDER_UID

KUEUE_API = "kueue.x-k8s.io/v1beta2"
# ResourceFlavor.spec.nodeLabels (the CRD's maxProperties).
MAX_FLAVOR_LABELS = 8
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
Preemption = Literal["Never", "LowerPriority", "LowerOrNewerEqualPriority", "Any"]
PREEMPTION_POLICIES: tuple[str, ...] = ("Never", "LowerPriority", "LowerOrNewerEqualPriority", "Any")
# The command-line option that sets each resource's quota.
QUOTA_OPTIONS = {GPU_RESOURCE: "--gpu-quota", "cpu": "--cpu-quota", "memory": "--memory-quota"}


@dataclass(frozen=True)
class QueueOptions:
    """What the platform decides. Quotas: {host block or "" for every block: quantity}."""

    gpu_quota: dict[str, str] = field(default_factory=dict)
    cpu_quota: dict[str, str] = field(default_factory=dict)
    memory_quota: dict[str, str] = field(default_factory=dict)
    cluster_queue: str | None = None
    namespace: str | None = None
    preemption: Preemption = "Never"


def parse_block_values(values: list[str] | None, option: str) -> dict[str, str]:
    """`--gpu-quota 8 --gpu-quota a100=16` -> {"": "8", "a100": "16"}; each value checked as a quantity."""
    out: dict[str, str] = {}
    for value in values or []:
        block, sep, quantity = value.rpartition("=")
        if not quantity or (sep and not block):
            raise ValueError(f"{option} {value!r}: expected QUANTITY or HOSTBLOCK=QUANTITY")
        _quantity(quantity, f"{option} {value!r}")
        out[block] = quantity
    return out


def _parse(value: object) -> Decimal:
    return Decimal(parse_quantity(value))


def _quantity(value: str, where: str) -> Decimal:
    try:
        q = _parse(value)
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)") from None
    if q < 0:
        raise ValueError(f"{where}: {value!r} is negative")
    return q


_BINARY_SUFFIXES = (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024))


def _format(q: Decimal, resource: str = "") -> str:
    """A quantity as a person writes it: memory-like amounts in Ki..Ti when exact, cores and
    GPUs as whole numbers, fractions in milli-units."""
    if q != q.to_integral_value():
        return f"{int((q * 1000).to_integral_value())}m"
    if resource not in ("cpu", GPU_RESOURCE):
        for suffix, size in _BINARY_SUFFIXES:
            if q >= size and q % size == 0:
                return f"{int(q // size)}{suffix}"
    return str(int(q))


# --- what a cell asks Kueue for -------------------------------------------------------------


def _container_requests(container: dict[str, Any]) -> dict[str, Decimal]:
    res = container.get("resources") or {}
    # A limit with no request is the request (the API server defaults it so, and Kueue does too).
    merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
    return {name: _parse(str(v)) for name, v in merged.items()}


def _add(a: dict[str, Decimal], b: dict[str, Decimal]) -> dict[str, Decimal]:
    return {k: a.get(k, Decimal(0)) + b.get(k, Decimal(0)) for k in a.keys() | b.keys()}


def pod_requests(pod_spec: dict[str, Any]) -> dict[str, Decimal]:
    """A pod's effective requests as Kubernetes and Kueue count them (k8s.io/component-helpers
    PodRequests): the containers and native sidecars summed, or an init container (plus the
    sidecars started before it) if that is larger."""
    total: dict[str, Decimal] = {}
    for c in pod_spec.get("containers") or []:
        total = _add(total, _container_requests(c))
    sidecars: dict[str, Decimal] = {}
    peak: dict[str, Decimal] = {}
    for c in pod_spec.get("initContainers") or []:
        if c.get("restartPolicy") == "Always":
            sidecars = _add(sidecars, _container_requests(c))
        else:
            during = _add(sidecars, _container_requests(c))
            peak = {k: max(peak.get(k, Decimal(0)), during.get(k, Decimal(0))) for k in peak.keys() | during.keys()}
    total = _add(total, sidecars)
    out = {k: max(total.get(k, Decimal(0)), peak.get(k, Decimal(0))) for k in total.keys() | peak.keys()}
    return {k: v for k, v in out.items() if v > 0}


def cell_requests(ladder: PromotionLadder, block: str) -> dict[str, Decimal]:
    """What one cell of `block` requests in all: its pod's requests times its pods (trainer.nodes)."""
    spec = ladder.spec
    stage = spec.stages[0]
    cell = Cell(stage.name, spec.candidates[0].name, block, stage.seeds[0])
    body = {"metadata": {"name": ladder.name, "uid": PLACEHOLDER_UID}}
    job = build_job(body, spec, cell)
    per_pod = pod_requests(job["spec"]["template"]["spec"])
    pods = job["spec"].get("parallelism", 1)
    return {k: v * pods for k, v in per_pod.items()}


# --- the objects ----------------------------------------------------------------------------


def resource_flavor(block: HostBlock) -> dict[str, Any]:
    """The flavor of one host block: its nodes are the ones the block's nodeSelector selects."""
    if len(block.node_selector) > MAX_FLAVOR_LABELS:
        raise ValueError(
            f"spec.hostBlocks[{block.name}].nodeSelector: has {len(block.node_selector)} labels; a Kueue "
            f"ResourceFlavor takes at most {MAX_FLAVOR_LABELS} nodeLabels"
        )
    spec: dict[str, Any] = {}
    if block.node_selector:
        spec["nodeLabels"] = dict(block.node_selector)
    return {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": block.name}, "spec": spec}


def _block_quota(given: dict[str, str], block: str) -> str | None:
    return given.get(block, given.get(""))


def flavor_quotas(ladder: PromotionLadder, options: QueueOptions) -> dict[str, dict[str, str]]:
    """{host block: {resource: nominal quota}} for every resource the cells request."""
    names = [b.name for b in ladder.spec.host_blocks]
    for option, given in (
        ("--gpu-quota", options.gpu_quota),
        ("--cpu-quota", options.cpu_quota),
        ("--memory-quota", options.memory_quota),
    ):
        unknown = sorted(set(given) - {""} - set(names))
        if unknown:
            raise ValueError(
                f"{option}: unknown host block {unknown[0]!r}; the ladder's host blocks are {', '.join(names)}"
            )
    return {
        b.name: _quotas_of_block(ladder.spec, b.name, cell_requests(ladder, b.name), options)
        for b in ladder.spec.host_blocks
    }


def _quotas_of_block(
    spec: LadderSpec, block: str, per_cell: dict[str, Decimal], options: QueueOptions
) -> dict[str, str]:
    if not per_cell:
        raise ValueError(
            f"spec.trainer.resources: a cell of host block {block!r} requests nothing (and "
            "spec.trainer.gpus is 0), so Kueue has nothing to count against a quota; give it requests"
        )
    gpu = _block_quota(options.gpu_quota, block)
    cell_gpus = per_cell.get(GPU_RESOURCE)
    if cell_gpus is None and gpu is not None:
        raise ValueError("--gpu-quota: the ladder's cells request no GPUs (spec.trainer.gpus is 0)")
    if cell_gpus is not None and gpu is None:
        raise ValueError(
            f"--gpu-quota: no GPU quota for host block {block!r}; give --gpu-quota {block}=N "
            "(or --gpu-quota N for every block)"
        )
    fitting = None
    if cell_gpus is not None and gpu is not None:
        fitting = int(_quantity(gpu, "--gpu-quota") // cell_gpus)
        if fitting == 0:
            raise ValueError(
                f"--gpu-quota: {gpu} GPUs for host block {block!r} cannot hold one cell, which needs "
                f"{_format(cell_gpus)} (spec.trainer.nodes x spec.trainer.gpus); Kueue would never admit it"
            )
    explicit = {
        GPU_RESOURCE: gpu,
        "cpu": _block_quota(options.cpu_quota, block),
        "memory": _block_quota(options.memory_quota, block),
    }
    out: dict[str, str] = {}
    for resource, need in sorted(per_cell.items()):
        option = QUOTA_OPTIONS.get(resource, f"spec.trainer.resources ({resource})")
        value = explicit.get(resource)
        if value is None:
            if fitting is None:
                raise ValueError(
                    f"{option}: no {resource} quota for host block {block!r}, and with no GPUs per cell "
                    "none can be derived from the GPU quota; give it explicitly"
                )
            value = _format(need * fitting, resource)
        elif _quantity(value, option) < need:
            raise ValueError(
                f"{option}: {value} for host block {block!r} cannot hold one cell, which requests "
                f"{_format(need, resource)}; Kueue would never admit it"
            )
        out[resource] = value
    return out


def cluster_queue(
    name: str, quotas: dict[str, dict[str, str]], namespace: str | None, preemption: Preemption
) -> dict[str, Any]:
    """One resource group: a cell fits exactly one flavor (its block's), so the order does not matter."""
    covered = sorted({r for q in quotas.values() for r in q})
    flavors = [
        {"name": block, "resources": [{"name": r, "nominalQuota": q.get(r, "0")} for r in covered]}
        for block, q in quotas.items()
    ]
    # A null selector admits no namespace at all; {} admits every namespace.
    selector = {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}} if namespace else {}
    return {
        "apiVersion": KUEUE_API,
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": selector,
            "preemption": {"withinClusterQueue": preemption},
            "resourceGroups": [{"coveredResources": covered, "flavors": flavors}],
        },
    }


def local_queue(name: str, namespace: str | None, cluster_queue_name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": KUEUE_API,
        "kind": "LocalQueue",
        "metadata": meta,
        "spec": {"clusterQueue": cluster_queue_name},
    }


def kueue_objects(ladder: PromotionLadder, options: QueueOptions) -> list[dict[str, Any]]:
    """ResourceFlavors (one per host block), the ClusterQueue, the LocalQueue spec.queueName."""
    queue = ladder.spec.queue_name
    if not queue:
        raise ValueError(
            "spec.queueName: not set, so the cells' Jobs name no queue and Kueue would not gate them; "
            "set it to the LocalQueue's name"
        )
    if options.preemption not in PREEMPTION_POLICIES:
        raise ValueError(f"--preemption: {options.preemption!r} is not one of {', '.join(PREEMPTION_POLICIES)}")
    namespace = options.namespace or ladder.metadata.namespace
    cq = options.cluster_queue or queue
    quotas = flavor_quotas(ladder, options)
    return [
        *(resource_flavor(b) for b in ladder.spec.host_blocks),
        cluster_queue(cq, quotas, namespace, options.preemption),
        local_queue(queue, namespace, cq),
    ]


def render(ladder: PromotionLadder, options: QueueOptions) -> str:
    objects = kueue_objects(ladder, options)
    flavors = len(ladder.spec.host_blocks)
    header = [
        f"# ladder manifests --kueue: PromotionLadder {ladder.name!r}: {flavors} ResourceFlavor(s), a ClusterQueue, "
        + "a LocalQueue",
        "# Apply once per cluster (flavors and the ClusterQueue are cluster-scoped; a flavor is named after its",
        "# host block). Needs Kueue v0.17+ (kueue.x-k8s.io/v1beta2). Quotas other than GPUs, unless given, hold",
        "# exactly the cells that fit in the GPU quota.",
    ]
    body: str = yaml.safe_dump_all(objects, sort_keys=False, width=120)
    return "\n".join(header) + "\n---\n" + body
