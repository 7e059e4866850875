"""The generated CRD on a real API server: it is accepted (CEL rules compile within the cost
budget), enforces the validation it carries, keeps the frozen fields frozen, and prints its
columns in kubectl."""

import subprocess

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster.waiting import wait_for
from promotion_ladder.core.api import (
    GROUP,
    MAX_CANDIDATES,
    MAX_CHECKS,
    MAX_HOST_BLOCKS,
    MAX_KEEP,
    MAX_SEEDS,
    MAX_STAGES,
    PLURAL,
    VERSION,
)

from ..operator.harness import install_crd
from ..unit.builders import edit, ladder_doc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ladders(local_cluster):
    install_crd(local_cluster.api_client())
    return client.CustomObjectsApi(local_cluster.api_client())


def create(ladders, namespace, doc):
    return ladders.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)


def test_valid_ladder_is_admitted(ladders, namespace):
    doc = yaml.safe_load(open("examples/protocol-ladder.yaml"))
    created = create(ladders, namespace, doc)
    assert created["spec"]["stages"][4]["name"] == "12h"
    assert created["spec"]["trainer"]["gpus"] == 1


REJECTED = {
    "duplicate candidate": (edit(ladder_doc(), "spec.candidates.1.name", "c0"), "Duplicate value"),
    "bad budget": (edit(ladder_doc(), "spec.stages.0.budget", "two minutes"), "spec.stages[0].budget"),
    "bad name": (edit(ladder_doc(), "spec.candidates.0.name", "Not_DNS"), "spec.candidates[0].name"),
    "template sets the trainer image": (
        edit(ladder_doc(), "spec.trainer", {"template": {"spec": {"containers": [{"name": "trainer", "image": "x"}]}}}),
        "spec.trainer.template.spec.containers[trainer].image: owned by the operator",
    ),
    "template sets restartPolicy": (
        edit(ladder_doc(), "spec.trainer", {"template": {"spec": {"restartPolicy": "Always"}}}),
        "spec.trainer.template.spec.restartPolicy: owned by the operator",
    ),
    "nodes above 64": (edit(ladder_doc(), "spec.trainer", {"nodes": 65}), "spec.trainer.nodes"),
    "margin missing": (
        edit(
            ladder_doc(),
            "spec.verdict",
            {"reference": "c0", "checks": [{"name": "x", "type": "nearEquivalence", "candidate": "c1"}]},
        ),
        "nearEquivalence needs margin",
    ),
    "continuation path relative": (
        edit(ladder_doc(), "spec.continuation", {"from": "previousStage", "path": "ckpt"}),
        "spec.continuation.path: give an absolute path",
    ),
    "continuation from unknown": (
        edit(ladder_doc(), "spec.continuation", {"from": "bestStage"}),
        "spec.continuation.from",
    ),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_server_rejects_invalid(ladders, namespace, name):
    doc, message = REJECTED[name]
    with pytest.raises(ApiException) as exc:
        create(ladders, namespace, doc)
    assert exc.value.status == 422
    assert message in exc.value.body, exc.value.body


def _three_stages(**promote: dict) -> dict:
    """Three stages, so a bad entry can sit at an index other than 0 or the last."""
    stages = [
        {
            "name": f"s{i}",
            "budget": f"{i}m",
            "hostBlocks": ["a100", "l40s"],
            "seeds": [1, 2],
            **({"promote": promote[f"s{i}"]} if f"s{i}" in promote else {}),
        }
        for i in (1, 2, 3)
    ]
    return ladder_doc(stages=stages)


def _largest_ladder() -> dict:
    """Every list at its maxItems and every name at 63 characters: the most CEL work a ladder can ask
    for (1,000 candidates x 16 stages x 32 host blocks x 16 keeps, 32 verdict checks)."""
    names = [f"c{i:04d}".ljust(63, "x") for i in range(MAX_CANDIDATES)]
    blocks = [f"b{i:02d}".ljust(63, "y") for i in range(MAX_HOST_BLOCKS)]
    stages = [
        {
            "name": f"s{i}",
            "budget": f"{i + 1}m",
            "hostBlocks": list(blocks),
            "seeds": list(range(MAX_SEEDS)),
            "promote": {"top": 1, "keep": names[-MAX_KEEP:]},
        }
        for i in range(MAX_STAGES)
    ]
    del stages[-1]["promote"]
    checks = [{"name": f"k{i}", "type": "rankFirstAllCells", "candidate": names[-1 - i]} for i in range(MAX_CHECKS)]
    return ladder_doc(
        candidates=names, stages=stages, host_blocks=tuple(blocks), verdict={"reference": names[-1], "checks": checks}
    )


# Issue 12, defect 8: the cross-field rules named the list but not the index ("spec.stages: a stage
# names a host block that is not declared under spec.hostBlocks"). Each now names the first
# offending index and value, as `ladder validate` does.
CROSS_FIELD = {
    "a stage names an undeclared host block": (
        edit(_three_stages(s1={"top": 2}, s2={"top": 1}), "spec.stages.1.hostBlocks", ["a100", "h100"]),
        "spec.stages[1].hostBlocks[1]: unknown host block 'h100'; declare it under spec.hostBlocks",
    ),
    "promote.keep names an unknown candidate": (
        _three_stages(s1={"top": 2}, s2={"top": 1, "keep": ["c0", "zz"]}),
        "spec.stages[1].promote.keep[1]: unknown candidate 'zz'",
    ),
    "the last stage promotes": (
        _three_stages(s1={"top": 2}, s2={"top": 1}, s3={"top": 1}),
        "spec.stages[2].promote: the last stage cannot promote; remove it (the verdict decides after the last stage)",
    ),
    "a middle stage lacks promote": (
        _three_stages(s1={"top": 2}),
        "spec.stages[1].promote: required on every stage but the last",
    ),
    "the first stage promotes more than the candidates": (
        edit(ladder_doc(), "spec.stages.0.promote.top", 9),
        "spec.stages[0].promote.top: larger than the number of candidates that can enter stage 's1'",
    ),
    "the verdict's reference is not a candidate": (
        edit(ladder_doc(), "spec.verdict", {"reference": "zz"}),
        "spec.verdict.reference: unknown candidate 'zz'",
    ),
    "a verdict check names an unknown candidate": (
        edit(
            ladder_doc(),
            "spec.verdict",
            {
                "reference": "c0",
                "checks": [
                    {"name": "a", "type": "rankFirstAllCells", "candidate": "c1"},
                    {"name": "b", "type": "rankFirstAllCells", "candidate": "zz"},
                ],
            },
        ),
        "spec.verdict.checks[1].candidate: unknown candidate 'zz'",
    ),
    # The most expensive failure to describe: the message's search runs over every list at its limit.
    "the largest ladder with one unknown keep at the end": (
        edit(_largest_ladder(), "spec.stages.14.promote.keep.15", "zz"),
        "spec.stages[14].promote.keep[15]: unknown candidate 'zz'",
    ),
}


@pytest.mark.parametrize("name", list(CROSS_FIELD))
def test_cross_field_messages_name_the_index(ladders, namespace, name):
    """Issue 12, defect 8: the API server's message names the index and the value, at the same path
    as `ladder validate`."""
    from promotion_ladder.core.api import LadderInvalid, load_ladder

    doc, message = CROSS_FIELD[name]
    with pytest.raises(ApiException) as exc:
        create(ladders, namespace, doc)
    assert exc.value.status == 422
    assert message in exc.value.body, exc.value.body
    with pytest.raises(LadderInvalid) as invalid:
        load_ladder(doc)
    path = message.split(": ")[0]
    assert path in [e.split(": ")[0] for e in invalid.value.errors], invalid.value.errors


def test_the_largest_ladder_is_admitted(ladders, namespace):
    """Every list at its maxItems, 1,000 candidates of 63-character names: the CEL rules fit the API
    server's per-call cost limit (the keep rule written with `exists` did not, and refused it)."""
    from promotion_ladder.core.api import load_ladder

    doc = _largest_ladder()
    load_ladder(doc)  # valid for `ladder validate` too
    created = create(ladders, namespace, doc)
    assert len(created["spec"]["candidates"]) == MAX_CANDIDATES


FROZEN = {
    "candidate config": ("spec.candidates.0.config", {"depth": 99}),
    "stage budget": ("spec.stages.1.budget", "20m"),
    "objective": ("spec.objective", {"metric": "val_bpb", "direction": "maximize"}),
    "verdict added": ("spec.verdict", {"reference": "c0"}),
    "trainer nodes": ("spec.trainer.nodes", 2),
    "trainer gpus (issue 12, defect 5)": ("spec.trainer", {"gpus": 2}),
    "continuation added": ("spec.continuation", {"from": "previousStage"}),
}


@pytest.mark.parametrize("name", list(FROZEN))
def test_frozen_fields_reject_edits(ladders, namespace, name):
    created = create(ladders, namespace, ladder_doc())
    path, value = FROZEN[name]
    changed = edit(created, path, value)
    with pytest.raises(ApiException) as exc:
        ladders.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "test", changed)
    assert exc.value.status == 422 and "frozen" in exc.value.body


def test_operational_fields_stay_editable_and_status_is_a_subresource(ladders, namespace, local_cluster):
    created = create(ladders, namespace, ladder_doc())
    changed = edit(
        created,
        "spec.trainer",
        {
            "image": "registry.example/trainer:2",
            "gpus": 1,
            "template": {
                "spec": {
                    "volumes": [{"name": "corpus", "persistentVolumeClaim": {"claimName": "c"}}],
                    "containers": [{"name": "trainer", "volumeMounts": [{"name": "corpus", "mountPath": "/data"}]}],
                }
            },
        },
    )
    ladders.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "test", changed)
    patched = ladders.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "test",
        {
            "status": {
                "phase": "Running",
                "currentStage": "s1",
                "leader": "c0",
                "gpuHours": {"total": 1.5, "byStage": {}, "byCandidate": {}, "byHostBlock": {}, "counterfactuals": []},
            }
        },
    )
    assert patched["status"]["phase"] == "Running"
    # The short name reaches kubectl through discovery, which can lag the CRD's Established.
    get = ["kubectl", "--kubeconfig", str(local_cluster.kubeconfig), "get", "pl", "-n", namespace]
    out = wait_for(
        lambda: (p := subprocess.run(get, capture_output=True, text=True)).returncode == 0 and p.stdout,
        timeout=30,
        what="kubectl get pl",
    )
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "STAGE", "LEADER", "GPU-HOURS", "AGE"]
    assert row.split()[:5] == ["test", "Running", "s1", "c0", "1.5"]


def _ordered_doc() -> dict:
    """Every frozen list has two or more entries, so each can be reordered."""
    stages = [
        {"name": "s1", "budget": "2m", "hostBlocks": ["a100", "l40s"], "seeds": [1, 2], "promote": {"top": 2}},
        {"name": "s2", "budget": "2m", "hostBlocks": ["a100", "l40s"], "seeds": [1, 2], "promote": {"top": 2}},
        {"name": "s3", "budget": "10m", "hostBlocks": ["a100", "l40s"], "seeds": [1, 2]},
    ]
    verdict = {
        "reference": "c0",
        "checks": [
            {"name": "k1", "type": "meanGap", "candidate": "c1", "maxGap": 0.1},
            {"name": "k2", "type": "rankFirstAllCells", "candidate": "c0"},
        ],
    }
    return ladder_doc(stages=stages, verdict=verdict)


def _swap(items: list) -> list:
    return [items[1], items[0], *items[2:]]


# Defect 4 of issue 12: `self == oldSelf` compares listType=map/set lists as sets, so these
# reorderings were admitted while the frozen hash (and ranking ties, and cell order) changed.
REORDERED = {
    "candidates": lambda d: edit(d, "spec.candidates", _swap(d["spec"]["candidates"])),
    "stages": lambda d: edit(d, "spec.stages", _swap(d["spec"]["stages"])),
    "a stage's seeds": lambda d: edit(d, "spec.stages.1.seeds", [2, 1]),
    "a stage's host blocks": lambda d: edit(d, "spec.stages.2.hostBlocks", ["l40s", "a100"]),
    "verdict checks": lambda d: edit(d, "spec.verdict.checks", _swap(d["spec"]["verdict"]["checks"])),
}


@pytest.mark.parametrize("name", list(REORDERED))
def test_frozen_fields_reject_reordering(ladders, namespace, name):
    """Issue 12, defect 4: frozen means the same in CEL as in the frozen hash, order included."""
    from promotion_ladder.core.api import load_ladder

    created = create(ladders, namespace, _ordered_doc())
    reordered = REORDERED[name](created)
    # The hash sees the reordering, so the API server must refuse it.
    assert load_ladder(reordered).spec.frozen_hash() != load_ladder(created).spec.frozen_hash()
    with pytest.raises(ApiException) as exc:
        ladders.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "test", reordered)
    assert exc.value.status == 422 and "order included" in exc.value.body, exc.value.body


def test_reordering_an_unfrozen_list_is_allowed(ladders, namespace):
    """Issue 12, defect 4 (the other side): spec.hostBlocks is not frozen and not hashed."""
    from promotion_ladder.core.api import load_ladder

    created = create(ladders, namespace, _ordered_doc())
    reordered = edit(created, "spec.hostBlocks", _swap(created["spec"]["hostBlocks"]))
    assert load_ladder(reordered).spec.frozen_hash() == load_ladder(created).spec.frozen_hash()
    ladders.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "test", reordered)


def test_a_full_status_is_kept_as_written(ladders, namespace):
    """Every status field the core writes (stability included) survives the structural schema's pruning."""
    from promotion_ladder.core.api import load_ladder
    from promotion_ladder.core.cell import CellOutcome
    from promotion_ladder.core.status import simulate

    doc = edit(ladder_doc(), "metadata.name", "full-status")
    spec = load_ladder(doc).spec
    values = {"c0": (1.0, 1.3), "c1": (1.1, 1.0), "c2": (1.2, 1.25), "c3": (1.4, 1.5)}
    recorded = {
        (st.name, c, hb, s): CellOutcome("succeeded", v[hb == "l40s"] + 0.01 * s, train_seconds=60.0)
        for st in spec.stages
        for c, v in values.items()
        for hb, s in st.cells()
    }
    status = simulate(spec, recorded)[0].wire()
    assert status["stability"]["stages"] and status["stability"]["promotion"][0]["promotedShare"]
    create(ladders, namespace, doc)
    patched = ladders.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "full-status", {"status": status}
    )
    assert patched["status"] == status
