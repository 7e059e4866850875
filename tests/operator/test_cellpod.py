"""A cell's pods beyond the contract: the pod template (merge and owned fields), /dev/shm,
multi-GPU and multi-node Jobs, their rendezvous Service, and `ladder manifests`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from promotion_ladder.cli import main
from promotion_ladder.controller.cellpod import rendezvous_service
from promotion_ladder.controller.jobs import GPU_RESOURCE, build_job, config_volume
from promotion_ladder.core.api import LadderInvalid, frozen_hash, load_ladder
from promotion_ladder.core.cell import Cell

from ..unit.builders import edit, ladder_doc
from .kube import ladder_body

REPO = Path(__file__).resolve().parents[2]
CELL = Cell("s1", "c1", "l40s", 1)
BLOCK_TOLERATION = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}


def job_for(trainer: dict | None = None, doc: dict | None = None) -> dict:
    doc = doc if doc is not None else ladder_doc()
    doc = edit(doc, "spec.hostBlocks.1.tolerations", [BLOCK_TOLERATION])
    if trainer is not None:
        doc = edit(doc, "spec.trainer", trainer)
    body = ladder_body(doc)
    return build_job(body, load_ladder(body).spec, CELL)


def pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def trainer(job: dict) -> dict:
    (c,) = pod(job)["containers"]
    assert c["name"] == "trainer"
    return c


def env(job: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in trainer(job)["env"]}


def tpl(spec: dict | None = None, trainer_ctr: dict | None = None, **meta) -> dict:
    out: dict = {"spec": dict(spec or {})}
    if trainer_ctr is not None:
        out["spec"]["containers"] = [{"name": "trainer", **trainer_ctr}]
    if meta:
        out["metadata"] = meta
    return out


# --- the template merge: (template, check(job)) ---------------------------------------------

PVC = {"name": "corpus", "persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}}
MERGE = {
    "volumes and mounts are added to the scratch volume": (
        tpl({"volumes": [PVC]}, {"volumeMounts": [{"name": "corpus", "mountPath": "/data", "readOnly": True}]}),
        lambda j: (
            pod(j)["volumes"] == [{"name": "scratch", "emptyDir": {}}, config_volume(), PVC]
            and trainer(j)["volumeMounts"]
            == [
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "ladder-config", "mountPath": "/etc/ladder", "readOnly": True},
                {"name": "corpus", "mountPath": "/data", "readOnly": True},
            ]
        ),
    ),
    "env is added after the contract's, envFrom kept": (
        tpl(
            trainer_ctr={
                "env": [
                    {"name": "HF_HOME", "value": "/cache"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                ],
                "envFrom": [{"configMapRef": {"name": "nccl"}}],
            }
        ),
        lambda j: (
            env(j)["HF_HOME"] == "/cache"
            and env(j)["TOKEN"] == {"secretKeyRef": {"name": "s", "key": "k"}}
            and env(j)["LADDER_SEED"] == "1"
            and trainer(j)["envFrom"] == [{"configMapRef": {"name": "nccl"}}]
            and [e["name"] for e in trainer(j)["env"]].index("HF_HOME")
            > [e["name"] for e in trainer(j)["env"]].index("POD_NAME")
        ),
    ),
    "template env replaces spec.trainer.env of the same name": (
        tpl(trainer_ctr={"env": [{"name": "FOO", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "foo"}}}]}),
        lambda j: (
            [e["name"] for e in trainer(j)["env"]].count("FOO") == 1
            and env(j)["FOO"] == {"configMapKeyRef": {"name": "c", "key": "foo"}}
        ),
    ),
    "image pull secrets": (
        tpl({"imagePullSecrets": [{"name": "registry"}]}),
        lambda j: pod(j)["imagePullSecrets"] == [{"name": "registry"}],
    ),
    "tolerations are added to the host block's": (
        tpl({"tolerations": [BLOCK_TOLERATION, {"key": "spot", "operator": "Exists"}]}),
        lambda j: pod(j)["tolerations"] == [BLOCK_TOLERATION, {"key": "spot", "operator": "Exists"}],
    ),
    "labels and annotations on the pod, identity labels kept, Job untouched": (
        tpl(labels={"team": "lm"}, annotations={"cost-center": "42"}),
        lambda j: (
            j["spec"]["template"]["metadata"]["labels"]["team"] == "lm"
            and j["spec"]["template"]["metadata"]["labels"]["ladder.promotion.dev/candidate"] == "c1"
            and j["spec"]["template"]["metadata"]["annotations"]["cost-center"] == "42"
            and "ladder.promotion.dev/config" in j["spec"]["template"]["metadata"]["annotations"]
            and "team" not in j["metadata"]["labels"]
        ),
    ),
    "nodeSelector additions next to the host block's": (
        tpl({"nodeSelector": {"topology.kubernetes.io/zone": "z1"}}),
        lambda j: (
            pod(j)["nodeSelector"] == {"topology.kubernetes.io/zone": "z1", "ladder.promotion.dev/host-block": "l40s"}
        ),
    ),
    "pod-level settings pass through": (
        tpl(
            {
                "priorityClassName": "batch",
                "runtimeClassName": "nvidia",
                "securityContext": {"fsGroup": 1000},
                "affinity": {"podAntiAffinity": {}},
            }
        ),
        lambda j: (
            (pod(j)["priorityClassName"], pod(j)["runtimeClassName"], pod(j)["securityContext"], pod(j)["affinity"])
            == ("batch", "nvidia", {"fsGroup": 1000}, {"podAntiAffinity": {}})
        ),
    ),
    "container securityContext and a native sidecar": (
        tpl(
            {"initContainers": [{"name": "proxy", "image": "p", "restartPolicy": "Always"}]},
            {"securityContext": {"runAsNonRoot": True}},
        ),
        lambda j: (
            trainer(j)["securityContext"] == {"runAsNonRoot": True}
            and pod(j)["initContainers"] == [{"name": "proxy", "image": "p", "restartPolicy": "Always"}]
        ),
    ),
    "the contract is untouched": (
        tpl({"volumes": [PVC]}, {"env": [{"name": "X", "value": "1"}]}),
        lambda j: (
            (
                trainer(j)["image"],
                trainer(j)["workingDir"],
                pod(j)["restartPolicy"],
                pod(j)["serviceAccountName"],
                trainer(j)["resources"],
            )
            == (
                "ghcr.io/promotion-ladder/trainer:0.1.0",
                "/scratch",
                "Never",
                "ladder-trainer",
                {"limits": {GPU_RESOURCE: "1"}},
            )
        ),
    ),
}


@pytest.mark.parametrize("case", MERGE, ids=list(MERGE))
def test_template_merge(case):
    template, check = MERGE[case]
    job = job_for({"env": {"FOO": "plain"}, "template": template})
    assert check(job), yaml.safe_dump(job["spec"]["template"])
    assert job == job_for({"env": {"FOO": "plain"}, "template": template})  # pure


# --- owned fields: (template, the error line's start) ---------------------------------------

T = "spec.trainer.template"
OWNED = {
    "image": (tpl(trainer_ctr={"image": "x"}), f"{T}.spec.containers[trainer].image: owned by the operator"),
    "command": (tpl(trainer_ctr={"command": ["sh"]}), f"{T}.spec.containers[trainer].command: owned by the operator"),
    "args": (tpl(trainer_ctr={"args": ["--x"]}), f"{T}.spec.containers[trainer].args: owned by the operator"),
    "resources": (
        tpl(trainer_ctr={"resources": {"limits": {GPU_RESOURCE: 8}}}),
        f"{T}.spec.containers[trainer].resources: owned by the operator (set spec.trainer.resources",
    ),
    "workingDir": (tpl(trainer_ctr={"workingDir": "/"}), f"{T}.spec.containers[trainer].workingDir: owned"),
    "terminationMessagePath": (
        tpl(trainer_ctr={"terminationMessagePath": "/x"}),
        f"{T}.spec.containers[trainer].terminationMessagePath: owned",
    ),
    "restartPolicy": (tpl({"restartPolicy": "OnFailure"}), f"{T}.spec.restartPolicy: owned by the operator"),
    "activeDeadlineSeconds": (tpl({"activeDeadlineSeconds": 9}), f"{T}.spec.activeDeadlineSeconds: owned"),
    "serviceAccountName": (tpl({"serviceAccountName": "me"}), f"{T}.spec.serviceAccountName: owned"),
    "automountServiceAccountToken": (
        tpl({"automountServiceAccountToken": False}),
        f"{T}.spec.automountServiceAccountToken: owned",
    ),
    "nodeName": (tpl({"nodeName": "n1"}), f"{T}.spec.nodeName: owned"),
    "subdomain": (tpl({"subdomain": "x"}), f"{T}.spec.subdomain: owned"),
    "host block nodeSelector key": (
        tpl({"nodeSelector": {"ladder.promotion.dev/host-block": "a100"}}),
        f"{T}.spec.nodeSelector[ladder.promotion.dev/host-block]: owned by the operator "
        "(spec.hostBlocks[0].nodeSelector sets it",
    ),
    "scratch volume": (
        tpl({"volumes": [{"name": "scratch", "hostPath": {"path": "/"}}]}),
        f"{T}.spec.volumes[scratch]: owned",
    ),
    "scratch mount": (
        tpl(trainer_ctr={"volumeMounts": [{"name": "x", "mountPath": "/scratch/"}]}),
        f"{T}.spec.containers[trainer].volumeMounts[/scratch/]: owned",
    ),
    "config volume": (
        tpl({"volumes": [{"name": "ladder-config", "emptyDir": {}}]}),
        f"{T}.spec.volumes[ladder-config]: owned",
    ),
    "config mount": (
        tpl(trainer_ctr={"volumeMounts": [{"name": "x", "mountPath": "/etc/ladder"}]}),
        f"{T}.spec.containers[trainer].volumeMounts[/etc/ladder]: owned",
    ),
    "config annotation": (
        tpl(annotations={"ladder.promotion.dev/config": "{}"}),
        f"{T}.metadata.annotations[ladder.promotion.dev/config]: owned",
    ),
    "identity env": (
        tpl(trainer_ctr={"env": [{"name": "LADDER_SEED", "value": "7"}]}),
        f"{T}.spec.containers[trainer].env[LADDER_SEED]: owned by the operator",
    ),
    "process layout env": (
        tpl(trainer_ctr={"env": [{"name": "LADDER_GPUS", "value": "1"}]}),
        f"{T}.spec.containers[trainer].env[LADDER_GPUS]: owned",
    ),
    "pod identity env": (
        tpl(trainer_ctr={"env": [{"name": "POD_NAME", "value": "x"}]}),
        f"{T}.spec.containers[trainer].env[POD_NAME]: owned",
    ),
    "result annotation": (
        tpl(annotations={"ladder.promotion.dev/result": "{}"}),
        f"{T}.metadata.annotations[ladder.promotion.dev/result]: owned",
    ),
    "identity label": (
        tpl(labels={"ladder.promotion.dev/seed": "1"}),
        f"{T}.metadata.labels[ladder.promotion.dev/seed]: owned",
    ),
    "a second regular container": (
        tpl({"containers": [{"name": "sidecar", "image": "s"}]}),
        f"{T}.spec.containers[sidecar]: only the container 'trainer' may be given",
    ),
    "metadata name": (tpl(name="x"), f"{T}.metadata.name: not allowed"),
    "unknown container field": (tpl(trainer_ctr={"stdin": True}), f"{T}.spec.containers[trainer].stdin: not supported"),
    "not an object": ("pod", f"{T}: Input should be a valid dictionary"),
}


@pytest.mark.parametrize("case", OWNED, ids=list(OWNED))
def test_owned_field_is_refused_with_its_name(case, tmp_path, capsys):
    template, line = OWNED[case]
    doc = edit(ladder_doc(), "spec.trainer", {"template": template})
    with pytest.raises(LadderInvalid) as exc:
        load_ladder(doc)
    assert any(e.startswith(line) for e in exc.value.errors), exc.value.errors
    # `ladder validate` and `ladder manifests`: exit 1 with the same line
    path = tmp_path / "l.yaml"
    path.write_text(yaml.safe_dump(doc))
    for cmd in ("validate", "manifests"):
        assert main([cmd, str(path)]) == 1
        assert line in capsys.readouterr().err


# --- /dev/shm, GPUs and nodes ----------------------------------------------------------------

SHM = {"name": "dshm", "mountPath": "/dev/shm"}
SHM_CASES = {
    "one GPU: the runtime's /dev/shm": ({"gpus": 1}, None),
    "two GPUs: memory-backed emptyDir": ({"gpus": 2}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}),
    "the template says otherwise": (
        {
            "gpus": 4,
            "template": tpl(
                {"volumes": [{"name": "shm", "hostPath": {"path": "/dev/shm"}}]},
                {"volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}]},
            ),
        },
        {"name": "shm", "hostPath": {"path": "/dev/shm"}},
    ),
    "the template sizes ours": (
        {
            "gpus": 8,
            "template": tpl({"volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]}),
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
    ),
}


@pytest.mark.parametrize("case", SHM_CASES, ids=list(SHM_CASES))
def test_dev_shm(case):
    trainer_spec, want = SHM_CASES[case]
    job = job_for(trainer_spec)
    shm_mounts = [m for m in trainer(job)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    shm_volumes = [v for v in pod(job)["volumes"] if shm_mounts and v["name"] == shm_mounts[0]["name"]]
    if want is None:
        assert shm_mounts == []
    else:
        assert len(shm_mounts) == 1 and shm_volumes == [want]


LAYOUT = {
    "default": ({}, "1", "1", {GPU_RESOURCE: "1"}),
    "gpus 4: 4 processes": ({"gpus": 4}, "4", "1", {GPU_RESOURCE: "4"}),
    "cpu only: still one process": ({"gpus": 0}, "1", "1", None),
    "nodes 2": ({"gpus": 8, "nodes": 2}, "8", "2", {GPU_RESOURCE: "8"}),
    "trainer.env cannot change the layout": ({"gpus": 2, "env": {"LADDER_GPUS": "7"}}, "2", "1", {GPU_RESOURCE: "2"}),
}


@pytest.mark.parametrize("case", LAYOUT, ids=list(LAYOUT))
def test_process_layout(case):
    trainer_spec, gpus, nodes, limits = LAYOUT[case]
    job = job_for(trainer_spec)
    assert (env(job)["LADDER_GPUS"], env(job)["LADDER_NODES"]) == (gpus, nodes)
    assert [e["name"] for e in trainer(job)["env"]].count("LADDER_GPUS") == 1
    assert (trainer(job).get("resources") or {}).get("limits") == limits


def test_single_node_cell_is_a_plain_job():
    job = job_for({"gpus": 4})
    assert "completionMode" not in job["spec"] and "subdomain" not in pod(job)
    assert {"LADDER_RDZV_ENDPOINT", "LADDER_RDZV_ID"}.isdisjoint(env(job))
    assert rendezvous_service(job) is None


def test_multi_node_cell_is_an_indexed_job_with_a_headless_service():
    job = job_for({"gpus": 8, "nodes": 2})
    name = job["metadata"]["name"]
    assert len(name) <= 60  # its pods are <name>-<index>, a DNS label
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert pod(job)["subdomain"] == name
    assert pod(job)["nodeSelector"] == {"ladder.promotion.dev/host-block": "l40s"}  # every pod in the host block
    assert env(job)["LADDER_RDZV_ENDPOINT"] == f"{name}-0.{name}:29400"
    assert env(job)["LADDER_RDZV_ID"] == name
    # one rank cannot rejoin a running group: any failed pod fails the Job, disruptions included
    rules = spec["podFailurePolicy"]["rules"]
    assert all(r["action"] == "FailJob" for r in rules)
    assert rules[-1]["onExitCodes"] == {"containerName": "trainer", "operator": "NotIn", "values": [0]}
    svc = rendezvous_service(job)
    assert svc["metadata"]["name"] == name and svc["metadata"]["namespace"] == "ns"
    assert svc["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert svc["metadata"]["labels"] == job["metadata"]["labels"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert svc["spec"]["ports"] == [{"name": "rdzv", "port": 29400, "targetPort": 29400, "protocol": "TCP"}]


def test_rendezvous_service_name_starts_with_a_letter():
    doc = edit(ladder_doc(), "metadata.name", "7b-screen")
    job = job_for({"nodes": 2}, doc)
    assert job["metadata"]["name"].startswith("7b-")
    assert pod(job)["subdomain"] == "r" + job["metadata"]["name"]
    assert rendezvous_service(job)["metadata"]["name"] == pod(job)["subdomain"]


NODES_BOUNDS = {"zero": (0, "spec.trainer.nodes"), "too many": (65, "spec.trainer.nodes")}


@pytest.mark.parametrize("case", NODES_BOUNDS, ids=list(NODES_BOUNDS))
def test_nodes_bounds(case):
    value, path = NODES_BOUNDS[case]
    with pytest.raises(LadderInvalid) as exc:
        load_ladder(edit(ladder_doc(), "spec.trainer", {"nodes": value}))
    assert any(e.startswith(path) for e in exc.value.errors)


HASH = {
    "nodes is frozen": ({"nodes": 2}, False),
    "nodes: 1 spelled out hashes as before": ({"nodes": 1}, True),
    "the template is not frozen": ({"template": tpl({"priorityClassName": "x"})}, True),
}


@pytest.mark.parametrize("case", HASH, ids=list(HASH))
def test_frozen_hash(case):
    trainer_spec, same = HASH[case]
    base = load_ladder(ladder_doc()).spec
    assert (
        frozen_hash(load_ladder(edit(ladder_doc(), "spec.trainer", trainer_spec)).spec) == frozen_hash(base)
    ) is same


# --- ladder manifests ------------------------------------------------------------------------


def manifests(capsys, *args: str) -> list[dict]:
    assert main(["manifests", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ladder manifests: ")
    return [d for d in yaml.safe_load_all(out) if d is not None]


def test_manifests_of_the_pvc_corpus_example(capsys):
    path = REPO / "examples" / "gpu-pool-ladder.yaml"
    ladder = load_ladder(yaml.safe_load(path.read_text()))
    docs = manifests(capsys, str(path), "-n", "research")
    assert [d["kind"] for d in docs] == ["Job"] * 3 * 4  # first stage: 3 candidates x 2 blocks x 2 seeds
    for d in docs:
        assert d["metadata"]["namespace"] == "research"
        p = d["spec"]["template"]["spec"]
        assert {"name": "corpus", "persistentVolumeClaim": {"claimName": "pretraining-corpus", "readOnly": True}} in p[
            "volumes"
        ]
        assert p["imagePullSecrets"] == [{"name": "registry-credentials"}]
        (c,) = p["containers"]
        assert {"name": "corpus", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert c["resources"]["limits"][GPU_RESOURCE] == "8"
        assert c["args"][:2] == ["--data", "/data/corpus"]
        assert {"name": "LADDER_GPUS", "value": "8"} in c["env"]
    # what the operator would build for the same cells, in the same order
    cell = Cell("10m", "bridge", "h100-a", 1)
    body = {"metadata": {"name": ladder.name, "namespace": "research", "uid": "00000000-0000-0000-0000-000000000000"}}
    assert docs[0] == build_job(body, ladder.spec, cell)


def test_manifests_of_the_multinode_example_later_stage(capsys):
    docs = manifests(capsys, str(REPO / "examples" / "multinode-ladder.yaml"), "--stage", "4h")
    assert [d["kind"] for d in docs] == ["Service", "Job"] * 2 * 3
    for svc, job in zip(docs[::2], docs[1::2], strict=True):
        assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
        assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}


def test_manifests_unknown_stage(capsys):
    assert main(["manifests", str(REPO / "examples" / "demo-ladder.yaml"), "--stage", "nope"]) == 1
    assert "--stage: unknown stage 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate(path, capsys):
    assert main(["validate", str(path)]) == 0


GPU_HOURS = {"one GPU": ({}, 1), "gpus 4": ({"gpus": 4}, 4), "2 nodes x 8 gpus": ({"gpus": 8, "nodes": 2}, 16)}


@pytest.mark.parametrize("case", GPU_HOURS, ids=list(GPU_HOURS))
def test_gpu_hours_count_nodes_times_gpus(case):
    from promotion_ladder.core.accounting import gpu_hours
    from promotion_ladder.core.cell import CellOutcome

    trainer_spec, per_cell = GPU_HOURS[case]
    spec = load_ladder(edit(ladder_doc(), "spec.trainer", trainer_spec)).spec
    outcomes = {Cell("s1", "c0", h, 1).key: CellOutcome("succeeded", 1.0, train_seconds=90.0) for h in ("a100", "l40s")}
    g = gpu_hours(spec, outcomes, {"s1": ["c0"]})
    assert g.total == pytest.approx(2 * 90 * per_cell / 3600)  # two 90 s cells
    # the counterfactual (straight to the final stage) counts the same GPUs per cell: 4 cells x 10 min
    assert g.counterfactuals[0].gpu_hours == pytest.approx(4 * per_cell / 6)


def test_ladder_run_refuses_multi_node_cells(capsys, tmp_path):
    assert main(["run", str(REPO / "examples" / "multinode-ladder.yaml"), "--output", str(tmp_path / "s.json")]) == 1
    assert "spec.trainer.nodes: 2: `ladder run` runs every cell on this one machine" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_operator_refuses_an_owned_field_with_a_condition_naming_it():
    """What the CRD's CEL rules do not catch (here: a template env var of the contract) the
    operator refuses: the ladder goes Failed with reason InvalidSpec, naming the field."""
    from promotion_ladder.controller.reconcile import reconcile

    doc = edit(
        ladder_doc(), "spec.trainer", {"template": tpl(trainer_ctr={"env": [{"name": "LADDER_STAGE", "value": "x"}]})}
    )
    r = reconcile(ladder_body(doc), None, [], [], set(), "2026-11-29T00:00:00Z")
    assert r.create == []
    failed = next(c for c in r.status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec"
    assert (
        "spec.trainer.template.spec.containers[trainer].env[LADDER_STAGE]: owned by the operator" in failed["message"]
    )


RECORDED_GPUS = {
    "one GPU": ({}, 1),
    "gpus 4": ({"gpus": 4}, 4),
    "2 nodes x 8 gpus": ({"gpus": 8, "nodes": 2}, 16),
    "cpu only": ({"gpus": 0}, 0),
}


@pytest.mark.parametrize("case", RECORDED_GPUS, ids=list(RECORDED_GPUS))
def test_a_cell_records_the_gpus_of_all_its_pods(case):
    """What a finished cell is charged at is read from its Job: GPUs per pod x pods."""
    from promotion_ladder.controller.intake import job_summary

    trainer_spec, gpus = RECORDED_GPUS[case]
    assert job_summary(job_for(trainer_spec)).gpus == gpus
