"""The images: Dockerfiles pass the hadolint-like rules (dockerlint.py), the operator's pip
install (reproduced from the Dockerfile's own COPY lines) holds the operator alone, and the images
built here from the unchanged Dockerfiles (localcluster.images) run in a real kubelet's
containers as the Dockerfiles say: their entrypoints, their numeric non-root user, torch and the
prepared tokenizer data in the trainer."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from .conftest import REPO
from .dockerlint import exec_form, final_stage, lint

OPERATOR = REPO / "Dockerfile.operator"
DOCKERFILES = [p for p in (OPERATOR, REPO / "Dockerfile.trainer") if p.exists()]

# Named cases for the linter itself: (Dockerfile text, rules expected to fire).
LINT_CASES = {
    "clean": ('FROM python:3.11.13-slim\nUSER 65532\nENTRYPOINT ["x"]\n', []),
    "no tag": ("FROM python\nUSER 1\n", ["DL3006"]),
    "latest": ("FROM python:latest\nUSER 1\n", ["DL3007"]),
    "tag from ARG": ("ARG BASE=python:3.11.13-slim\nFROM ${BASE}\nUSER 1\n", []),
    "untagged ARG": ("ARG BASE=python\nFROM ${BASE}\nUSER 1\n", ["DL3006"]),
    "registry port is not a tag": ("FROM localhost:5000/python\nUSER 1\n", ["DL3006"]),
    "digest": ("FROM python@sha256:" + "a" * 64 + "\nUSER 1\n", []),
    "stage reference": ("FROM python:3.11.13 AS build\nFROM build\nUSER 1\n", []),
    "no USER": ("FROM python:3.11.13\n", ["DL3002"]),
    "root USER": ("FROM python:3.11.13\nUSER root\n", ["DL3002"]),
    "USER only in build stage": ("FROM python:3.11.13 AS b\nUSER 1\nFROM python:3.11.13\n", ["DL3002"]),
    "ADD URL": ("FROM python:3.11.13\nADD https://x.example/a.tgz /a\nUSER 1\n", ["DL3020-URL"]),
    "shell-form ENTRYPOINT": ("FROM python:3.11.13\nUSER 1\nENTRYPOINT ladder operator\n", ["DL3025"]),
    "apt without no-install-recommends": (
        "FROM debian:12\nRUN apt-get update && \\\n  apt-get install -y curl\nUSER 1\n",
        ["DL3015"],
    ),
}


@pytest.mark.parametrize("case", LINT_CASES, ids=list(LINT_CASES))
def test_linter(case, tmp_path):
    text, want = LINT_CASES[case]
    f = tmp_path / "Dockerfile"
    f.write_text(text)
    got = sorted({p.split(": ", 1)[1].split()[0] for p in lint(f)})
    assert got == sorted(want), lint(f)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_lints_clean(dockerfile):
    assert lint(dockerfile) == []


def test_operator_entrypoint_is_ladder_operator():
    entry = [i for i in final_stage(OPERATOR) if i.op == "ENTRYPOINT"]
    assert entry and exec_form(entry[-1].args) == ["ladder", "operator"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ladder"] == "promotion_ladder.cli:main"


def test_ladder_operator_help_starts():
    proc = subprocess.run(
        [sys.executable, "-m", "promotion_ladder.cli", "operator", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--metrics-port", "--health-port", "--namespace"):
        assert flag in proc.stdout


def test_chart_args_parse_with_the_operator_cli():
    """The args the chart passes after the ENTRYPOINT are ones `ladder operator` accepts."""
    from promotion_ladder.cli import build_parser

    args = build_parser().parse_args(
        ["operator", "--metrics-port=9090", "--health-port=9091", "--namespace=research", "--namespace=screening"]
    )
    assert (args.metrics_port, args.health_port, args.namespace) == (9090, 9091, ["research", "screening"])


# --- the built images, in a real kubelet's containers --------------------------------------

# (image, command or None for the entrypoint, args, what the output must hold). runAsNonRoot is
# set on every pod: the kubelet refuses to start it unless the image's USER is a numeric non-root uid.
# The kubelet takes only the uid from the image (the group is 0 unless the pod sets runAsGroup, as
# the chart does for the operator), so only the uid is the image's to check.
IMAGE_RUNS = {
    "operator entrypoint is ladder operator": ("operator", None, ["--help"], ["--metrics-port", "--health-port"]),
    "operator runs as 65532": ("operator", ["id", "-u"], [], ["65532"]),
    "operator image has no torch": (
        "operator",
        ["python", "-c", ("import importlib.util as u; print('torch', u.find_spec('torch'))")],
        [],
        ["torch None"],
    ),
    "trainer entrypoint is the trainer": ("trainer", None, ["--help"], ["--config", "--budget"]),
    "trainer runs as 65532 with torch and prepared data": (
        "trainer",
        [
            "python",
            "-c",
            (
                "import os, torch, ladder_trainer.data as d; "
                "print(os.getuid(), torch.__version__, "
                "sorted(os.listdir(os.environ['LADDER_CACHE'] + '/data')))"
            ),
        ],
        [],
        ["65532 2.", "-bpe8192", "-byte"],
    ),
}


@pytest.mark.integration
@pytest.mark.real_nodes
@pytest.mark.parametrize("case", IMAGE_RUNS, ids=list(IMAGE_RUNS))
def test_built_image_runs_as_its_dockerfile_says(case, real_cluster, project_images, tmp_path):
    from kubernetes import client

    from localcluster.waiting import wait_for

    image, command, args, expected = IMAGE_RUNS[case]
    core = client.CoreV1Api(real_cluster.api_client())
    name = "img-" + "".join(c if c.isalnum() else "-" for c in case.lower())[:40].strip("-")
    container = {
        "name": "c",
        "image": project_images[image],
        "args": args,
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    if command is not None:
        container["command"] = command
    core.create_namespaced_pod(
        "default", {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container]}}
    )
    try:
        pod = wait_for(
            lambda: (p := core.read_namespaced_pod(name, "default")).status.phase in ("Succeeded", "Failed") and p,
            timeout=180,
            what=f"pod {name} ({case}) to end",
        )
        out = core.read_namespaced_pod_log(name, "default")
        assert pod.status.phase == "Succeeded", out
        assert pod.status.container_statuses[0].container_id.startswith("containerd://")
        for text in expected:
            assert text in out, out
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


@pytest.mark.integration
@pytest.mark.real_nodes
def test_references_are_the_charts_and_the_examples(project_images):
    """The images are tagged as the chart's values and the example ladders name them, so both run unchanged."""
    import yaml

    from localcluster.images import app_version

    tag = app_version()
    assert project_images == {
        "operator": f"ghcr.io/promotion-ladder/operator:{tag}",
        "trainer": f"ghcr.io/promotion-ladder/trainer:{tag}",
    }
    values = yaml.safe_load((REPO / "charts" / "promotion-ladder" / "values.yaml").read_text())
    assert values["image"]["repository"] == project_images["operator"].rsplit(":", 1)[0]
    demo = yaml.safe_load((REPO / "examples" / "demo-ladder.yaml").read_text())
    assert demo["spec"]["trainer"]["image"] == project_images["trainer"]
