"""`ladder report` end to end through the CLI, and its sources: files, stdin, the cluster."""

from __future__ import annotations

import io
import json
import sys

import pytest
import yaml

from promotion_ladder.cli import main
from promotion_ladder.report import ReportError, from_cluster

from .builders import full_object, simulate_json

SMALL = {
    "apiVersion": "ladder.promotion.dev/v1alpha1",
    "kind": "PromotionLadder",
    "metadata": {"name": "small"},
    "spec": {
        "hostBlocks": [{"name": "a100"}, {"name": "l40s"}],
        "candidates": [{"name": f"c{i}"} for i in range(4)],
        "stages": [
            {"name": "s1", "budget": "2m", "hostBlocks": ["a100", "l40s"], "seeds": [1], "promote": {"top": 2}},
            {"name": "s2", "budget": "10m", "hostBlocks": ["a100", "l40s"], "seeds": [1, 2]},
        ],
        "verdict": {
            "reference": "c0",
            "checks": [{"name": "c1-close", "type": "nearEquivalence", "candidate": "c1", "margin": 0.01}],
        },
    },
}


@pytest.fixture
def small(tmp_path):
    """A small ladder simulated through the CLI: `ladder simulate --output json` > sim.json (c3 fails a cell)."""
    ladder = tmp_path / "small.yaml"
    ladder.write_text(yaml.safe_dump(SMALL))
    lines = []
    for st, blocks, seeds in (("s1", ["a100", "l40s"], [1]), ("s2", ["a100", "l40s"], [1, 2])):
        for i in range(4):
            for b in blocks:
                for s in seeds:
                    v = None if (st, i, b) == ("s1", 3, "l40s") else 1.0 + 0.01 * i + (0.002 if b == "l40s" else 0)
                    lines.append(json.dumps({"stage": st, "candidate": f"c{i}", "hostBlock": b, "seed": s, "value": v}))
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(lines) + "\n")
    return ladder, results


def simulate_to(capsys, ladder, results, path):
    assert main(["simulate", str(ladder), "--results", str(results), "--output", "json"]) == 0
    path.write_text(capsys.readouterr().out)
    return path


def test_bare_status_plus_ladder_to_html(tmp_path, capsys, small):
    pytest.importorskip("matplotlib")
    sim = simulate_to(capsys, *small, tmp_path / "sim.json")
    out = tmp_path / "r.html"
    assert main(["report", str(sim), "--ladder", str(small[0]), "-o", str(out)]) == 0
    html = out.read_text()
    assert "Promotion ladder report: small" in html
    assert '<table id="table-spec-stages">' in html  # the frozen spec came from --ladder
    assert html.count("data:image/png;base64,") == 5  # rank flow, rank stability, s1, s2, GPU-hours
    assert "r.html: html report of small (Succeeded)" in capsys.readouterr().err


def test_stdin_to_markdown_on_stdout(tmp_path, capsys, monkeypatch, small):
    pytest.importorskip("matplotlib")
    sim = simulate_to(capsys, *small, tmp_path / "sim.json")
    monkeypatch.setattr(sys, "stdin", io.StringIO(sim.read_text()))
    assert main(["report", "-", "--format", "markdown", "-o", "-"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Promotion ladder report: ladder")
    assert "pass --ladder FILE" in md
    assert md.count("](data:image/png;base64,") == 5  # rank flow, rank stability, s1, s2, GPU-hours


def test_default_output_name_and_format_from_suffix(tmp_path, capsys, monkeypatch, small):
    pytest.importorskip("matplotlib")
    sim = simulate_to(capsys, *small, tmp_path / "sim.json")
    full = tmp_path / "small.status.json"
    doc = json.loads(sim.read_text())
    full.write_text(json.dumps({**SMALL, "status": doc}))
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(full)]) == 0
    assert (tmp_path / "small-report.html").exists()
    assert main(["report", str(full), "-o", "audit.md"]) == 0
    assert (tmp_path / "audit.md").read_text().startswith("# Promotion ladder report: small")


ERRORS = {
    "missing file": (["report", "nope.json"], "nope.json: no such file"),
    "not json": (["report", "{bad}.json"], "not JSON"),
    "bad status": (["report", "bad-status.json"], "status.phase"),
    "unknown format": (["report", "x.json", "--format", "pdf"], None),  # argparse: exit 2
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_errors_name_the_file(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "{bad}.json").write_text("{bad")
    (tmp_path / "bad-status.json").write_text(json.dumps({"phase": "Exploded"}))
    argv, want = ERRORS[case]
    if want is None:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        return
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert want in err and err.startswith("ladder: ")


def test_missing_matplotlib_is_a_clear_error(tmp_path, capsys, monkeypatch):
    status = tmp_path / "s.json"
    status.write_text(json.dumps(simulate_json()))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["report", str(status), "-o", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install 'promotion-ladder[report]'" in err


class FakeApi:
    """CustomObjectsApi.get_namespaced_custom_object, answering from a dict of (namespace, name)."""

    def __init__(self, objects):
        self.objects, self.calls = objects, []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        from kubernetes.client import ApiException

        self.calls.append((group, version, namespace, plural, name))
        if (namespace, name) not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return self.objects[(namespace, name)]


def test_cluster_source_reads_the_custom_resource():
    api = FakeApi({("research", "protocol"): full_object(simulate_json())})
    inp = from_cluster("protocol", namespace="research", api=api)
    assert api.calls == [("ladder.promotion.dev", "v1alpha1", "research", "promotionladders", "protocol")]
    assert inp.name == "protocol" and inp.spec is not None and inp.origin == "cluster research/protocol"
    assert inp.status.gpu_hours.total == pytest.approx(169.2)


def test_cluster_source_not_found_and_no_status():
    doc = full_object(simulate_json())
    doc["status"] = {}
    api = FakeApi({("research", "fresh"): doc})
    with pytest.raises(ReportError, match="no PromotionLadder 'gone' in namespace 'research'"):
        from_cluster("gone", namespace="research", api=api)
    with pytest.raises(ReportError, match="no status yet"):
        from_cluster("fresh", namespace="research", api=api)


def test_cluster_namespace_defaults_to_the_kubeconfig_context(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "lab",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "lab", "context": {"cluster": "c", "user": "u", "namespace": "research"}}],
            }
        )
    )
    api = FakeApi({("research", "protocol"): full_object(simulate_json())})
    assert from_cluster("protocol", kubeconfig=str(kubeconfig), api=api).origin == "cluster research/protocol"


def test_cli_name_without_a_cluster_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["report", "protocol", "--kubeconfig", str(tmp_path / "missing-kubeconfig")]) == 1
    err = capsys.readouterr().err
    assert "protocol: no such file, and no cluster" in err


def test_yaml_from_kubectl_get(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from promotion_ladder.report import load_source

    path = tmp_path / "protocol.yaml"  # as `kubectl get promotionladder protocol -o yaml` writes it
    path.write_text(yaml.safe_dump(full_object(simulate_json())))
    inp = load_source(str(path))
    assert inp.name == "protocol" and inp.spec is not None and inp.status.phase == "Succeeded"


def test_report_of_a_real_ladder_run_status_file(tmp_path, capsys):
    """`ladder run` (with the unit tests' fake cell program) writes the status file; the report reads it as is."""
    pytest.importorskip("matplotlib")
    from pathlib import Path

    from promotion_ladder.core.api import load_ladder
    from promotion_ladder.local.runner import run_ladder

    from ..unit.builders import ladder_doc

    fake = str(Path(__file__).parents[1] / "unit" / "fixtures" / "fake_trainer.py")
    doc = ladder_doc(candidates=["c0", "c1", "c2"], host_blocks=("a", "b"), trainer={"command": [sys.executable, fake]})
    for c, cfg in zip(
        doc["spec"]["candidates"], [{"base": 1.0}, {"base": 0.9}, {"base": 0.5, "fail_stage": "s1"}], strict=True
    ):
        c["config"] = cfg
    status_file = tmp_path / "test.status.json"
    run_ladder(load_ladder(doc), status_file, parallel=2, stream=io.StringIO(), poll_seconds=0.02)
    out = tmp_path / "r.md"
    assert main(["report", str(status_file), "-o", str(out)]) == 0
    md = out.read_text()
    assert md.startswith("# Promotion ladder report: test")
    assert "| s1 | c2 | a | 1 | exit code 3 (diverged: loss is nan)" in md
    assert "| **1** | c1 |" in md and "| winner |" in md
