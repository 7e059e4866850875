"""Pod Security Standards for cell pods (core/podsecurity.py), the operator's admission verdict
(controller/admission.py) and `ladder validate --pod-security`: table-driven, named cases."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from promotion_ladder.controller.admission import pod_security_problem
from promotion_ladder.core.api import load_ladder
from promotion_ladder.core.podsecurity import violations

from .builders import ladder_doc

HARDENED_POD = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}}
HARDENED_TRAINER = {
    "name": "trainer",
    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
}


def pod(**over) -> dict:
    spec = {
        **HARDENED_POD,
        "containers": [dict(HARDENED_TRAINER)],
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
    }
    spec.update(over)
    return spec


def trainer(**sc) -> list[dict]:
    return [{"name": "trainer", "securityContext": {**HARDENED_TRAINER["securityContext"], **sc}}]


# name: (level, pod spec, the fields the findings must name; [] = the standard holds)
CASES = {
    "hardened holds restricted": ("restricted", pod(), []),
    "hardened holds baseline": ("baseline", pod(), []),
    "privileged level allows anything": ("privileged", pod(hostNetwork=True), []),
    "escalation allowed": (
        "restricted",
        pod(containers=trainer(allowPrivilegeEscalation=True)),
        ["containers[trainer].securityContext.allowPrivilegeEscalation"],
    ),
    "no runAsNonRoot anywhere": (
        "restricted",
        pod(securityContext={"seccompProfile": {"type": "RuntimeDefault"}}),
        ["containers[trainer].securityContext.runAsNonRoot"],
    ),
    "runAsNonRoot on the container is enough": (
        "restricted",
        pod(securityContext={"seccompProfile": {"type": "RuntimeDefault"}}, containers=trainer(runAsNonRoot=True)),
        [],
    ),
    "no seccomp": (
        "restricted",
        pod(securityContext={"runAsNonRoot": True}),
        ["containers[trainer].securityContext.seccompProfile.type"],
    ),
    "capabilities not dropped": (
        "restricted",
        pod(containers=trainer(capabilities={})),
        ["containers[trainer].securityContext.capabilities.drop"],
    ),
    "capability added": (
        "restricted",
        pod(containers=trainer(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]})),
        ["containers[trainer].securityContext.capabilities.add"],
    ),
    "root uid": ("restricted", pod(containers=trainer(runAsUser=0)), ["containers[trainer].securityContext.runAsUser"]),
    "hostPath volume": (
        "baseline",
        pod(volumes=[{"name": "corpus", "hostPath": {"path": "/data"}}]),
        ["volumes[corpus].hostPath"],
    ),
    "host network": ("baseline", pod(hostNetwork=True), ["spec.trainer.template.spec.hostNetwork"]),
    "privileged container": (
        "baseline",
        pod(containers=trainer(privileged=True)),
        ["containers[trainer].securityContext.privileged"],
    ),
    "host port": (
        "baseline",
        pod(containers=[{**HARDENED_TRAINER, "ports": [{"containerPort": 80, "hostPort": 80}]}]),
        ["containers[trainer].ports[80].hostPort"],
    ),
    "nfs volume under restricted": (
        "restricted",
        pod(volumes=[{"name": "n", "nfs": {"server": "s", "path": "/"}}]),
        ["volumes[n] of type nfs"],
    ),
    "baseline ignores restricted-only rules": (
        "baseline",
        pod(securityContext={}, containers=[{"name": "trainer"}]),
        [],
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_violations(case):
    level, spec, fields = CASES[case]
    found = violations(level, spec)
    assert len(found) == len(fields), found
    for field in fields:
        assert any(field in line for line in found), (field, found)


def test_unknown_level_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown Pod Security Standard 'strict'"):
        violations("strict", pod())


def hardened_template() -> dict:
    return {"spec": {**HARDENED_POD, "containers": [HARDENED_TRAINER]}}


@pytest.mark.parametrize(
    "labels,template,blocked",
    [
        ({}, None, False),
        ({"pod-security.kubernetes.io/enforce": "privileged"}, None, False),
        ({"pod-security.kubernetes.io/enforce": "restricted"}, None, True),
        ({"pod-security.kubernetes.io/enforce": "restricted"}, "hardened", False),
        ({"pod-security.kubernetes.io/enforce": "baseline"}, None, False),
    ],
    ids=["no label", "privileged", "restricted, no template", "restricted, hardened", "baseline"],
)
def test_admission_blocks_a_ladder_the_namespace_would_refuse(labels, template, blocked):
    doc = ladder_doc()
    if template:
        doc["spec"].setdefault("trainer", {})["template"] = hardened_template()
    body = {**doc, "metadata": {**doc["metadata"], "uid": "u1", "namespace": "ns"}}
    problem = pod_security_problem(labels, body, load_ladder(body).spec)
    assert (problem is not None) == blocked, problem
    if blocked:
        assert "spec.trainer.template.spec.containers[trainer].securityContext.allowPrivilegeEscalation" in problem


@pytest.mark.parametrize("template,rc", [(None, 1), ("hardened", 0)], ids=["plain", "hardened"])
def test_ladder_validate_pod_security(tmp_path, template, rc):
    doc = ladder_doc()
    if template:
        doc["spec"].setdefault("trainer", {})["template"] = hardened_template()
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [sys.executable, "-m", "promotion_ladder.cli", "validate", str(path), "--pod-security", "restricted"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == rc, proc.stderr
    if rc:
        assert "containers[trainer].securityContext.runAsNonRoot" in proc.stderr
        assert "Traceback" not in proc.stderr
    else:
        assert "meet the Pod Security Standard restricted" in proc.stdout
