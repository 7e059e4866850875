"""The chart's RBAC is exactly what the operator says it needs (controller/rbac.py): nothing
missing (the operator would get 403s) and nothing extra (least privilege). The operator's rules
are imported plainly: if that import breaks, every test here fails (it used to skip them all)."""

from __future__ import annotations

import re

import yaml

from promotion_ladder.controller import rbac

from .conftest import CHART, FULL_VALUES, NAMESPACE, objects, one, render

CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"), ("", "nodes")}


def triples(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination a list of rules grants."""
    return {
        (g, r, v)
        for rule in rules
        for g in rule.get("apiGroups", [])
        for r in rule.get("resources", [])
        for v in rule.get("verbs", [])
    }


def _diff(granted: set, needed: set) -> str:
    fmt = lambda s: ", ".join(f"{g or 'core'}/{r}:{v}" for g, r, v in sorted(s))  # noqa: E731
    return f"missing: [{fmt(needed - granted)}]; extra: [{fmt(granted - needed)}]"


def _define(name: str) -> list[dict]:
    """The rules of one `define` in _helpers.tpl, read as YAML (they hold no template actions)."""
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    m = re.search(r'{{- define "' + re.escape(name) + r'" -}}\n(.*?){{- end }}', text, re.S)
    assert m, f"_helpers.tpl has no define {name!r}"
    return yaml.safe_load(m.group(1))


# --- without helm: the rule text in the templates -----------------------------------------


def test_template_rules_equal_the_operators_needs():
    granted = triples(_define("ladder.namespacedRules") + _define("ladder.clusterRules"))
    needed = triples(rbac.OPERATOR_RULES)
    assert granted == needed, _diff(granted, needed)


def test_cluster_rules_are_only_the_cluster_scoped_ones():
    assert {(g, r) for g, r, _ in triples(_define("ladder.clusterRules"))} == CLUSTER_SCOPED
    assert not {(g, r) for g, r, _ in triples(_define("ladder.namespacedRules"))} & CLUSTER_SCOPED


def test_trainer_role_template_equals_trainer_rules():
    text = (CHART / "templates" / "trainer-rbac.yaml").read_text()
    rules = yaml.safe_load(re.search(r"^rules:\n(.*?)^---", text, re.S | re.M).group(1))
    assert triples(rules) == triples(rbac.TRAINER_RULES), _diff(triples(rules), triples(rbac.TRAINER_RULES))
    assert set(re.findall(r"^ +name: (\S+)", text, re.M)) == {rbac.TRAINER_SERVICE_ACCOUNT}


# --- rendered --------------------------------------------------------------------------------


def test_rendered_cluster_role_equals_needs_when_watching_all_namespaces(helm):
    docs = render(helm)
    granted = triples(one(docs, "ClusterRole")["rules"])
    assert granted == triples(rbac.OPERATOR_RULES), _diff(granted, triples(rbac.OPERATOR_RULES))
    assert not objects(docs, "Role")
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": one(docs, "ServiceAccount")["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_rendered_roles_cover_each_watched_namespace(helm):
    docs = render(helm, FULL_VALUES)
    cluster = triples(one(docs, "ClusterRole")["rules"])
    assert {(g, r) for g, r, _ in cluster} == CLUSTER_SCOPED
    operator_roles = [d for d in objects(docs, "Role") if d["metadata"]["name"] == "ladder-operator"]
    assert sorted(d["metadata"]["namespace"] for d in operator_roles) == ["research", "screening"]
    for role in operator_roles:
        granted = cluster | triples(role["rules"])
        assert granted == triples(rbac.OPERATOR_RULES), _diff(granted, triples(rbac.OPERATOR_RULES))
    for binding in objects(docs, "RoleBinding"):
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]


def test_rendered_trainer_identity_equals_the_operators(helm):
    """The chart's trainer objects are the ones the operator would create itself."""
    docs = render(helm, FULL_VALUES)
    for ns in ("research", "screening"):
        want = {o["kind"]: o for o in rbac.trainer_objects(ns)}
        for kind in ("ServiceAccount", "Role", "RoleBinding"):
            got = next(
                d
                for d in objects(docs, kind)
                if d["metadata"]["namespace"] == ns and d["metadata"]["name"] == want[kind]["metadata"]["name"]
            )
            if kind == "Role":
                assert triples(got["rules"]) == triples(want[kind]["rules"])
            if kind == "RoleBinding":
                assert got["roleRef"] == want[kind]["roleRef"] and got["subjects"] == want[kind]["subjects"]


def test_rendered_trainer_admission_policy_equals_the_operators(helm):
    """Issue 12, defect 2: the chart limits a trainer to its own Pod's result/progress
    annotations with the policy rbac.trainer_admission_policy() defines (labels aside)."""
    docs = render(helm)
    for want in rbac.trainer_admission_policy():
        got = one(docs, want["kind"], want["metadata"]["name"])
        assert got["spec"] == want["spec"]
    off = render(helm, set_values={"trainer.admissionPolicy": "false"})
    assert not objects(off, "ValidatingAdmissionPolicy") and not objects(off, "ValidatingAdmissionPolicyBinding")
