"""The cell Job builder: names, labels, placement, the cell contract, failure policy."""

from __future__ import annotations

import json
import re

import pytest

from promotion_ladder.controller.jobs import (
    GPU_RESOURCE,
    QUEUE_LABEL,
    build_job,
    cell_from_labels,
    cell_job_name,
    cell_labels,
)
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.cell import Cell

from ..unit.builders import edit, ladder_doc
from .kube import ladder_body

DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LONG = "x" * 63

NAMES = {
    "short": ("lad", Cell("2m", "bridge", "a100", 1), "lad-2m-bridge-a100-1-"),
    "long parts are cut": (LONG, Cell(LONG, LONG, LONG, 7), "x" * 51),
    "upper-case free, seeds big": ("l", Cell("s", "c", "h", 2**31 - 1), "l-s-c-h-2147483647-"),
}


@pytest.mark.parametrize("case", NAMES, ids=list(NAMES))
def test_cell_job_name(case):
    ladder, cell, prefix = NAMES[case]
    name = cell_job_name(ladder, cell)
    # 60, not 63: a multi-node cell's pods are named <job>-<index> (index < 64), a DNS label too.
    assert len(name) <= 60 and DNS.match(name), name
    assert name.startswith(prefix)
    assert name == cell_job_name(ladder, cell)  # deterministic


def test_ambiguous_readable_parts_get_different_names():
    a = cell_job_name("l", Cell("a-b", "c", "h", 1))
    b = cell_job_name("l", Cell("a", "b-c", "h", 1))
    assert a != b


def test_long_names_differ_by_hash():
    a = cell_job_name(LONG, Cell(LONG, LONG + "a", "h", 1))
    b = cell_job_name(LONG, Cell(LONG, LONG + "b", "h", 1))
    assert a != b and len(a) == len(b) == 60


def test_labels_round_trip():
    cell = Cell("s1", "c0", "a100", 3)
    assert cell_from_labels(cell_labels("test", cell)) == cell
    assert cell_from_labels({"ladder.promotion.dev/stage": "s1"}) is None


JOB_CELL = Cell("s1", "c1", "l40s", 1)


def job_for(doc=None, cell=JOB_CELL):
    body = ladder_body(doc)
    return build_job(body, load_ladder(body).spec, cell)


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def test_job_identity_owner_and_placement():
    doc = edit(
        ladder_doc(), "spec.hostBlocks.1.tolerations", [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    job = job_for(doc)
    meta = job["metadata"]
    assert meta["namespace"] == "ns"
    for labels in (meta["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert {k: v for k, v in labels.items() if k.startswith("ladder.promotion.dev/")} == {
            "ladder.promotion.dev/ladder": "test",
            "ladder.promotion.dev/stage": "s1",
            "ladder.promotion.dev/candidate": "c1",
            "ladder.promotion.dev/host-block": "l40s",
            "ladder.promotion.dev/seed": "1",
        }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "ladder.promotion.dev/v1alpha1",
            "kind": "PromotionLadder",
            "name": "test",
            "uid": "uid-ladder-1",
            "controller": True,
        }
    ]
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"ladder.promotion.dev/host-block": "l40s"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "ladder-trainer"
    assert QUEUE_LABEL not in meta["labels"]


def test_cell_contract_args_and_env():
    doc = edit(
        ladder_doc(),
        "spec.trainer",
        {
            "command": ["python", "-m", "ladder_trainer"],
            "args": ["--device", "cpu"],
            "env": {"FOO": "1", "LADDER_SEED": "spoofed"},
        },
    )
    c = container(job_for(doc))
    assert c["command"] == ["python", "-m", "ladder_trainer"]
    assert c["args"] == [
        "--device",
        "cpu",
        "--config-file",
        "/etc/ladder/config.json",
        "--seed",
        "1",
        "--budget",
        "2m",
        "--result-file",
        "result.json",
    ]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["FOO"] == "1"
    assert env["LADDER_SEED"] == "1"  # ours win over spec.trainer.env
    assert (env["LADDER_NAME"], env["LADDER_STAGE"], env["LADDER_CANDIDATE"], env["LADDER_HOST_BLOCK"]) == (
        "test",
        "s1",
        "c1",
        "l40s",
    )
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert [e["name"] for e in c["env"]].count("LADDER_SEED") == 1


def test_config_reaches_the_trainer_as_a_file_not_an_argument():
    """Issue 12, defect 6: a config passed as one argument failed every pod of a 1 MB config with
    "Argument list too long". The config is the Pod's annotation, projected as the file the
    trainer's --config-file names; no argument carries it."""
    config = {"depth": 4, "notes": "x" * 30_000}
    doc = edit(ladder_doc(), "spec.candidates.0.config", config)
    job = job_for(doc, Cell("s1", doc["spec"]["candidates"][0]["name"], "l40s", 1))
    pod = job["spec"]["template"]
    c = container(job)
    assert json.loads(pod["metadata"]["annotations"]["ladder.promotion.dev/config"]) == config
    assert max(len(a) for a in c["args"]) < 100
    path = c["args"][c["args"].index("--config-file") + 1]
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["downwardAPI"]["items"] == [
        {
            "path": path[len(mount["mountPath"]) + 1 :],
            "fieldRef": {"fieldPath": "metadata.annotations['ladder.promotion.dev/config']"},
        }
    ]


GPUS = {
    "default one gpu": ({}, {"limits": {GPU_RESOURCE: "1"}}),
    "four gpus": ({"gpus": 4}, {"limits": {GPU_RESOURCE: "4"}}),
    "cpu only": ({"gpus": 0}, None),
    "gpu in resources is overridden": (
        {"gpus": 2, "resources": {"limits": {GPU_RESOURCE: 8, "memory": "1Gi"}, "requests": {"cpu": "1"}}},
        {"limits": {"memory": "1Gi", GPU_RESOURCE: "2"}, "requests": {"cpu": "1"}},
    ),
    "cpu only keeps other limits, quantities as strings": (
        {"gpus": 0, "resources": {"limits": {GPU_RESOURCE: 1, "cpu": 2}}},
        {"limits": {"cpu": "2"}},
    ),
}


@pytest.mark.parametrize("case", GPUS, ids=list(GPUS))
def test_gpu_limits(case):
    trainer, want = GPUS[case]
    c = container(job_for(edit(ladder_doc(), "spec.trainer", trainer)))
    assert c.get("resources") == want


def test_failure_policy_and_deadline():
    spec = job_for()["spec"]
    assert "activeDeadlineSeconds" not in spec  # the Job's would count time queued for a GPU
    assert spec["template"]["spec"]["activeDeadlineSeconds"] == 120 + 300
    assert spec["backoffLimit"] == 2
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2, 3, 4, 5]},
    }
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"


def test_queue_name_label():
    job = job_for(edit(ladder_doc(), "spec.queueName", "gpu-queue"))
    assert job["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue"
    assert QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]


def test_builder_is_pure():
    assert job_for() == job_for()
