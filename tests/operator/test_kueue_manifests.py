"""`ladder manifests --kueue`: the ResourceFlavors, ClusterQueue and LocalQueue of a ladder, as data.

Applied to a real Kueue in tests/integration/test_kueue.py."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from promotion_ladder.cli import main
from promotion_ladder.controller.jobs import GPU_RESOURCE
from promotion_ladder.controller.kueue_manifests import (
    QueueOptions,
    kueue_objects,
    parse_block_values,
    pod_requests,
)
from promotion_ladder.core.api import load_ladder

from ..unit.builders import edit, ladder_doc

REPO = Path(__file__).resolve().parents[2]


def queued(trainer: dict | None = None, **spec) -> dict:
    doc = ladder_doc(queueName="gpu-queue", **spec)
    return edit(doc, "spec.trainer", trainer) if trainer is not None else doc


def objects(doc: dict, **options) -> dict[str, dict]:
    objs = kueue_objects(load_ladder(doc), QueueOptions(**options))
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objs}


def quotas(cq: dict) -> dict[str, dict[str, str]]:
    (group,) = cq["spec"]["resourceGroups"]
    return {f["name"]: {r["name"]: r["nominalQuota"] for r in f["resources"]} for f in group["flavors"]}


# --- the objects ----------------------------------------------------------------------------


def test_one_flavor_per_host_block_labelled_as_its_node_selector():
    doc = edit(queued(), "spec.hostBlocks.1.nodeSelector", {"nvidia.com/gpu.product": "NVIDIA-L40S", "zone": "b"})
    objs = objects(doc, gpu_quota={"": "4"})
    assert list(objs) == [
        "ResourceFlavor/a100",
        "ResourceFlavor/l40s",
        "ClusterQueue/gpu-queue",
        "LocalQueue/gpu-queue",
    ]
    assert objs["ResourceFlavor/a100"]["spec"] == {"nodeLabels": {"ladder.promotion.dev/host-block": "a100"}}
    assert objs["ResourceFlavor/l40s"]["spec"] == {"nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-L40S", "zone": "b"}}
    assert all(o["apiVersion"] == "kueue.x-k8s.io/v1beta2" for o in objs.values())


def test_queues_by_name_and_namespace():
    objs = objects(queued(), gpu_quota={"": "4"}, cluster_queue="team-gpus", namespace="research")
    cq, lq = objs["ClusterQueue/team-gpus"], objs["LocalQueue/gpu-queue"]
    assert lq["metadata"] == {"name": "gpu-queue", "namespace": "research"}
    assert lq["spec"] == {"clusterQueue": "team-gpus"}
    assert cq["spec"]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "research"}}
    assert cq["spec"]["preemption"] == {"withinClusterQueue": "Never"}


def test_without_a_namespace_every_namespace_may_submit():
    # A null selector would admit no namespace at all.
    objs = objects(queued(), gpu_quota={"": "4"})
    assert objs["ClusterQueue/gpu-queue"]["spec"]["namespaceSelector"] == {}
    assert "namespace" not in objs["LocalQueue/gpu-queue"]["metadata"]


QUOTA_CASES = {
    "one GPU per cell, quota for every block": (
        {},
        {"gpu_quota": {"": "4"}},
        {"a100": {GPU_RESOURCE: "4"}, "l40s": {GPU_RESOURCE: "4"}},
    ),
    "a block's own quota wins over every block's": (
        {},
        {"gpu_quota": {"": "4", "l40s": "2"}},
        {"a100": {GPU_RESOURCE: "4"}, "l40s": {GPU_RESOURCE: "2"}},
    ),
    "cpu and memory derived: what the cells that fit the GPUs request": (
        {"gpus": 2, "resources": {"requests": {"cpu": "4", "memory": "16Gi"}}},
        {"gpu_quota": {"": "8"}},
        {b: {"cpu": "16", "memory": "64Gi", GPU_RESOURCE: "8"} for b in ("a100", "l40s")},
    ),
    "a limit without a request counts as the request": (
        {"gpus": 1, "resources": {"limits": {"cpu": "500m"}}},
        {"gpu_quota": {"": "3"}},
        {b: {"cpu": "1500m", GPU_RESOURCE: "3"} for b in ("a100", "l40s")},
    ),
    "a multi-node cell counts all its pods": (
        {"gpus": 8, "nodes": 2, "resources": {"requests": {"memory": "100Gi"}}},
        {"gpu_quota": {"": "32"}},
        {b: {"memory": "400Gi", GPU_RESOURCE: "32"} for b in ("a100", "l40s")},
    ),
    "explicit cpu and memory quotas": (
        {"gpus": 1, "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
        {"gpu_quota": {"": "4"}, "cpu_quota": {"a100": "100"}, "memory_quota": {"": "1Ti"}},
        {
            "a100": {"cpu": "100", "memory": "1Ti", GPU_RESOURCE: "4"},
            "l40s": {"cpu": "8", "memory": "1Ti", GPU_RESOURCE: "4"},
        },
    ),
    "CPU-only cells: quotas given, no GPUs covered": (
        {"gpus": 0, "resources": {"requests": {"cpu": "1"}}},
        {"cpu_quota": {"": "2"}},
        {"a100": {"cpu": "2"}, "l40s": {"cpu": "2"}},
    ),
}


@pytest.mark.parametrize("case", QUOTA_CASES, ids=list(QUOTA_CASES))
def test_quotas(case):
    trainer, options, want = QUOTA_CASES[case]
    cq = objects(queued(trainer), **options)["ClusterQueue/gpu-queue"]
    assert quotas(cq) == want
    (group,) = cq["spec"]["resourceGroups"]
    assert group["coveredResources"] == sorted(want["a100"])


ERROR_CASES = {
    "no queueName": (ladder_doc(), {"gpu_quota": {"": "4"}}, "spec.queueName: not set"),
    "a block without GPU quota": (
        queued(),
        {"gpu_quota": {"a100": "4"}},
        "--gpu-quota: no GPU quota for host block 'l40s'",
    ),
    "a quota for a block the ladder lacks": (
        queued(),
        {"gpu_quota": {"": "4", "h100": "8"}},
        "--gpu-quota: unknown host block 'h100'",
    ),
    "GPU quota below one cell": (
        queued({"gpus": 8, "nodes": 2}),
        {"gpu_quota": {"": "8"}},
        "--gpu-quota: 8 GPUs for host block 'a100' cannot hold one cell, which needs 16",
    ),
    "cpu quota below one cell": (
        queued({"resources": {"requests": {"cpu": "4"}}}),
        {"gpu_quota": {"": "4"}, "cpu_quota": {"": "2"}},
        "--cpu-quota: 2 for host block 'a100' cannot hold one cell, which requests 4",
    ),
    "GPU quota for CPU-only cells": (
        queued({"gpus": 0, "resources": {"requests": {"cpu": "1"}}}),
        {"gpu_quota": {"": "4"}},
        "--gpu-quota: the ladder's cells request no GPUs",
    ),
    "CPU-only cells without cpu quota": (
        queued({"gpus": 0, "resources": {"requests": {"cpu": "1"}}}),
        {},
        "--cpu-quota: no cpu quota for host block 'a100'",
    ),
    "cells that request nothing": (
        queued({"gpus": 0}),
        {},
        "spec.trainer.resources: a cell of host block 'a100' requests nothing",
    ),
    "too many labels for a flavor": (
        edit(queued(), "spec.hostBlocks.0.nodeSelector", {f"k{i}": "v" for i in range(9)}),
        {"gpu_quota": {"": "4"}},
        "spec.hostBlocks[a100].nodeSelector: has 9 labels; a Kueue ResourceFlavor takes at most 8",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_errors_name_the_field_or_option(case):
    doc, options, message = ERROR_CASES[case]
    with pytest.raises(ValueError) as exc:
        objects(doc, **options)
    assert str(exc.value).startswith(message), str(exc.value)


# --- how Kueue counts a pod -----------------------------------------------------------------


def c(**requests: str) -> dict:
    return {"resources": {"requests": requests}}


POD_CASES = {
    "containers add up": ({"containers": [c(cpu="1"), c(cpu="2")]}, {"cpu": Decimal(3)}),
    "a larger init container sets the peak": (
        {"containers": [c(cpu="1")], "initContainers": [c(cpu="4")]},
        {"cpu": Decimal(4)},
    ),
    "a native sidecar adds to the containers": (
        {"containers": [c(cpu="1")], "initContainers": [{**c(cpu="2"), "restartPolicy": "Always"}]},
        {"cpu": Decimal(3)},
    ),
    "an init container after a sidecar runs beside it": (
        {"containers": [c(cpu="1")], "initContainers": [{**c(cpu="2"), "restartPolicy": "Always"}, c(cpu="3")]},
        {"cpu": Decimal(5)},
    ),
    "zero requests are not requests": ({"containers": [c(cpu="0", memory="1Gi")]}, {"memory": Decimal(2**30)}),
}


@pytest.mark.parametrize("case", POD_CASES, ids=list(POD_CASES))
def test_pod_requests(case):
    pod, want = POD_CASES[case]
    assert pod_requests(pod) == want


# --- the command ----------------------------------------------------------------------------


def test_parse_block_values():
    assert parse_block_values(["8", "a100=16"], "--gpu-quota") == {"": "8", "a100": "16"}
    for bad in ("a100=", "=4", "a100=lots"):
        with pytest.raises(ValueError, match="--gpu-quota"):
            parse_block_values([bad], "--gpu-quota")


def test_cli_prints_the_objects_of_the_multinode_example(tmp_path, capsys):
    doc = edit(yaml.safe_load((REPO / "examples" / "multinode-ladder.yaml").read_text()), "spec.queueName", "ib-queue")
    path = tmp_path / "l.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert (
        main(
            ["manifests", str(path), "--kueue", "--gpu-quota", "32", "-n", "research", "--preemption", "LowerPriority"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("# ladder manifests --kueue: PromotionLadder 'multinode'")
    docs = [d for d in yaml.safe_load_all(out) if d is not None]
    assert [d["kind"] for d in docs] == ["ResourceFlavor", "ClusterQueue", "LocalQueue"]
    assert docs[0]["spec"]["nodeLabels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "network": "infiniband"}
    assert quotas(docs[1]) == {"h100-ib": {GPU_RESOURCE: "32"}}  # two cells of 2 x 8 GPUs
    assert docs[1]["spec"]["preemption"] == {"withinClusterQueue": "LowerPriority"}
    assert docs[2]["metadata"] == {"name": "ib-queue", "namespace": "research"}


CLI_ERRORS = {
    "a quota option without --kueue": (["--gpu-quota", "4"], "--gpu-quota: only with --kueue"),
    "--stage with --kueue": (["--kueue", "--gpu-quota", "4", "--stage", "s1"], "--stage: not used with --kueue"),
    "a bad quantity": (
        ["--kueue", "--gpu-quota", "a100=many"],
        "--gpu-quota 'a100=many': 'many' is not a Kubernetes quantity",
    ),
    "no quota at all": (["--kueue"], "--gpu-quota: no GPU quota for host block 'a100'"),
}


@pytest.mark.parametrize("case", CLI_ERRORS, ids=list(CLI_ERRORS))
def test_cli_errors_exit_1_naming_the_option(case, tmp_path, capsys):
    args, message = CLI_ERRORS[case]
    path = tmp_path / "l.yaml"
    path.write_text(yaml.safe_dump(queued()))
    assert main(["manifests", str(path), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ladder: {message}"), err
