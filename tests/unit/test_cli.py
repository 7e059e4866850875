"""The `ladder` command: exit codes and messages, never a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promotion_ladder.cli import crd_yaml, main
from promotion_ladder.core.crd import crd

from .builders import edit, ladder_doc

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, doc, name="ladder.yaml"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(p)


def test_committed_crd_is_generated():
    committed = (ROOT / "crds/promotionladders.yaml").read_text()
    assert committed == crd_yaml(crd()), (
        "crds/promotionladders.yaml is stale: run `ladder crd > crds/promotionladders.yaml`"
    )


def test_crd_is_structural():
    doc = crd()
    version = doc["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Stage", "Leader", "GPU-Hours", "Age"]
    assert version["subresources"] == {"status": {}}

    def walk(node, path):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        if (
            node.get("type") == "object"
            and not node.get("x-kubernetes-preserve-unknown-fields")
            and path != ".metadata"
        ):
            assert "properties" in node or "additionalProperties" in node, path
        for k, v in node.get("properties", {}).items():
            walk(v, f"{path}.{k}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}.{key}")

    walk(version["schema"]["openAPIV3Schema"], "")
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for frozen in ("objective", "candidates", "stages", "verdict"):
        assert {"rule": "self == oldSelf"}.items() <= spec["properties"][frozen]["x-kubernetes-validations"][0].items()


CASES = {
    "valid": (ladder_doc(), 0, "valid PromotionLadder 'test'"),
    "invalid lists every error": (
        edit(edit(ladder_doc(), "spec.stages.0.budget", "0s"), "spec.candidates.1.name", "c0"),
        1,
        "spec.stages[0].budget: budget '0s' must be greater than zero",
    ),
    "not yaml": ("spec: [unclosed", 1, "not valid YAML at line 1"),
    "not a ladder": ("- 1\n- 2\n", 1, "expected a PromotionLadder object"),
    "two ladders": (
        yaml.safe_dump(ladder_doc()) + "---\n" + yaml.safe_dump(ladder_doc()),
        1,
        "holds 2 PromotionLadder documents",
    ),
    "continuation: a bad path names the field": (
        edit(ladder_doc(), "spec.continuation", {"from": "previousStage", "path": "ckpt"}),
        1,
        "spec.continuation.path: 'ckpt': give an absolute path",
    ),
    "continuation: cells without a predecessor are said": (
        edit(ladder_doc(), "spec.continuation", {"from": "previousStage"}),
        0,
        "continuation: 2 of the 4 cells per candidate of stage s2 have no cell of the same host block and seed",
    ),
    "continuation: no volume at the path is a warning": (
        edit(ladder_doc(), "spec.continuation", {"from": "previousStage"}),
        0,
        "warning: spec.continuation.path: /checkpoints is on no volume of the cells' pods",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_validate(name, tmp_path, capsys):
    doc, code, text = CASES[name]
    assert main(["validate", write(tmp_path, doc)]) == code
    out = capsys.readouterr()
    assert text in (out.out + out.err)
    assert "Traceback" not in out.err


@pytest.mark.parametrize("blob, warned", [(1000, False), (300_000, True)], ids=["small", "over the annotation limit"])
def test_validate_warns_before_kubectl_apply_fails_on_size(blob, warned, tmp_path, capsys):
    """Issue 12, defect 8: a ladder of a few hundred KiB fails client-side `kubectl apply` as
    `metadata.annotations: Too long`, which says nothing about the ladder; validate says why
    and what to run instead."""
    doc = ladder_doc()
    doc["spec"]["candidates"] += [{"name": f"big{i}", "config": {"notes": "x" * (blob // 10)}} for i in range(10)]
    assert main(["validate", write(tmp_path, doc)]) == 0
    out = capsys.readouterr().out
    assert ("kubectl apply --server-side -f" in out) == warned, out


def test_validate_missing_file(capsys):
    assert main(["validate", "/nonexistent/ladder.yaml"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_each_error_on_its_own_line(tmp_path, capsys):
    doc = edit(
        edit(ladder_doc(), "spec.stages.0.hostBlocks", ["x"]), "spec.stages.0.promote", {"top": 1, "keep": ["y"]}
    )
    assert main(["validate", write(tmp_path, doc)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("spec.stages[0]" in line for line in lines)


def test_simulate_json_is_status_shaped(capsys):
    assert (
        main(
            [
                "simulate",
                str(ROOT / "examples/protocol-ladder.yaml"),
                "--results",
                str(ROOT / "examples/protocol-results.jsonl"),
                "--output",
                "json",
            ]
        )
        == 0
    )
    status = json.loads(capsys.readouterr().out)
    assert status["phase"] == "Succeeded"
    assert status["gpuHours"]["total"] == pytest.approx(169.2)
    assert status["verdict"]["winner"] == "bridge"
    assert status["stages"][2]["decision"]["promoted"] == ["greedy", "bridge", "d12-ar48", "sentinel-d8-ar48"]


RESULTS = {
    "not json": ("{oops\n", "results.jsonl:1: not JSON"),
    "unknown key": (
        '{"stage": "s1", "candidate": "c0", "hostBlock": "a100", "seed": 1, "value": 1, "vlaue": 2}\n',
        "results.jsonl:1: vlaue: unknown field",
    ),
    "duplicate cell": (
        '{"stage": "s1", "candidate": "c0", "hostBlock": "a100", "seed": 1, "value": 1}\n' * 2,
        "results.jsonl:2: a second result for cell s1/c0/a100/1",
    ),
    "missing field": (
        '{"stage": "s1", "candidate": "c0", "seed": 1, "value": 1}\n',
        "results.jsonl:1: hostBlock: Field required",
    ),
}


@pytest.mark.parametrize("name", list(RESULTS))
def test_simulate_rejects_bad_results(name, tmp_path, capsys):
    text, expected = RESULTS[name]
    results = tmp_path / "results.jsonl"
    results.write_text(text)
    assert main(["simulate", write(tmp_path, ladder_doc()), "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_simulate_missing_results_fail_cells(tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    results.write_text("")
    assert main(["simulate", write(tmp_path, ladder_doc()), "--results", str(results), "--output", "json"]) == 3
    status = json.loads(capsys.readouterr().out)
    assert status["phase"] == "Failed"
    assert {c["reason"] for c in status["stages"][0]["cells"]} == {"no recorded result"}


def test_console_script_has_no_traceback_on_bad_input(tmp_path):
    bad = write(tmp_path, "apiVersion: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "promotion_ladder.cli", "validate", bad], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "kind: must be 'PromotionLadder'" in proc.stderr


def test_validate_notes_a_cluster_it_cannot_reach_and_stays_valid(tmp_path, capsys):
    """Issue 21: `ladder validate` looks at the cluster's nodes where a kubeconfig leads to one
    (tests/operator/test_trust_and_waits_integration.py checks the warning on the local control
    plane); a kubeconfig that leads nowhere is a one-line note, and --offline skips the look."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "x", "user": "u"}}],
            }
        )
    )
    path = write(tmp_path, ladder_doc())
    assert main(["validate", path, "--kubeconfig", str(kubeconfig)]) == 0
    out = capsys.readouterr().out
    assert "note: the cluster https://127.0.0.1:9 was not checked" in out and "--offline" in out
    assert main(["validate", path, "--kubeconfig", str(kubeconfig), "--offline"]) == 0
    assert "was not checked" not in capsys.readouterr().out
