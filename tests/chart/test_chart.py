"""The Helm chart: lint, render with default and full values, hardening of the operator pod,
the schema's rejections, and the copies (CRD, dashboard) it must keep identical."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from .conftest import CHART, FULL_VALUES, KUBE_VERSION, NAMESPACE, REPO, one, render, run_helm

# --- copies kept identical: no helm needed -------------------------------------------------


def test_chart_crd_is_the_committed_crd():
    committed = (REPO / "crds" / "promotionladders.yaml").read_text()
    assert (CHART / "crds" / "promotionladders.yaml").read_text() == committed, (
        "charts/promotion-ladder/crds/promotionladders.yaml differs from crds/promotionladders.yaml; regenerate both: "
        "ladder crd > crds/promotionladders.yaml && cp crds/promotionladders.yaml charts/promotion-ladder/crds/"
    )


def test_committed_crd_is_what_ladder_crd_prints():
    from promotion_ladder.cli import crd_yaml
    from promotion_ladder.core.crd import crd

    assert (REPO / "crds" / "promotionladders.yaml").read_text() == crd_yaml(crd()), (
        "crds/promotionladders.yaml is stale; run: ladder crd > crds/promotionladders.yaml && "
        "cp crds/promotionladders.yaml charts/promotion-ladder/crds/"
    )


def test_chart_dashboard_is_the_committed_dashboard():
    assert (CHART / "dashboards" / "promotion-ladder.json").read_bytes() == (
        REPO / "dashboards" / "promotion-ladder.json"
    ).read_bytes(), (
        "charts/promotion-ladder/dashboards/promotion-ladder.json differs from dashboards/promotion-ladder.json; "
        "edit the latter and: cp dashboards/promotion-ladder.json charts/promotion-ladder/dashboards/"
    )


def test_values_schema_is_json_and_closed():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["properties"]["runAsUser"]["minimum"] == 1


# --- helm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [FULL_VALUES]], ids=["default", "full"])
def test_helm_lint_strict(helm, values):
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for f in values:
        args += ["-f", str(f)]
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _kinds(docs):
    return sorted((d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs)


def test_default_render_has_exactly_the_base_objects(helm):
    docs = render(helm)
    assert _kinds(docs) == sorted(
        [
            ("CustomResourceDefinition", "", "promotionladders.ladder.promotion.dev"),
            ("ServiceAccount", NAMESPACE, "ladder-promotion-ladder"),
            ("ClusterRole", "", "ladder-promotion-ladder"),
            ("ClusterRoleBinding", "", "ladder-promotion-ladder"),
            ("Service", NAMESPACE, "ladder-promotion-ladder-metrics"),
            ("Deployment", NAMESPACE, "ladder-promotion-ladder"),
            ("ValidatingAdmissionPolicy", "", "ladder-trainer-own-pod"),
            ("ValidatingAdmissionPolicyBinding", "", "ladder-trainer-own-pod"),
        ]
    )


def test_full_render_has_every_optional_object(helm):
    docs = render(helm, FULL_VALUES)
    kinds = _kinds(docs)
    for ns in ("research", "screening"):
        for kind in ("ServiceAccount", "Role", "RoleBinding"):
            assert (kind, ns, "ladder-trainer") in kinds
        assert ("Role", ns, "ladder-operator") in kinds
        assert ("RoleBinding", ns, "ladder-operator") in kinds
    assert ("ServiceMonitor", NAMESPACE, "ladder-operator") in kinds
    assert ("PrometheusRule", NAMESPACE, "ladder-operator") in kinds
    assert ("ConfigMap", "monitoring", "ladder-operator-dashboard") in kinds


def _operator_pod(docs):
    dep = one(docs, "Deployment")
    return dep, dep["spec"]["template"]["spec"]


# Named checks on the operator Deployment: name -> (getter, expected), for both renders.
HARDENING = {
    "one replica": (lambda d, p: d["spec"]["replicas"], 1),
    "Recreate strategy": (lambda d, p: d["spec"]["strategy"]["type"], "Recreate"),
    "pod runs as non-root": (lambda d, p: p["securityContext"]["runAsNonRoot"], True),
    "pod seccomp RuntimeDefault": (lambda d, p: p["securityContext"]["seccompProfile"]["type"], "RuntimeDefault"),
    "container non-root": (lambda d, p: p["containers"][0]["securityContext"]["runAsNonRoot"], True),
    "read-only root filesystem": (lambda d, p: p["containers"][0]["securityContext"]["readOnlyRootFilesystem"], True),
    "no privilege escalation": (lambda d, p: p["containers"][0]["securityContext"]["allowPrivilegeEscalation"], False),
    "drops ALL capabilities": (lambda d, p: p["containers"][0]["securityContext"]["capabilities"], {"drop": ["ALL"]}),
    "liveness on /healthz of the health port": (
        lambda d, p: (
            p["containers"][0]["livenessProbe"]["httpGet"]["path"],
            p["containers"][0]["livenessProbe"]["httpGet"]["port"],
        ),
        ("/healthz", "health"),
    ),
    "readiness on /healthz of the health port": (
        lambda d, p: (
            p["containers"][0]["readinessProbe"]["httpGet"]["path"],
            p["containers"][0]["readinessProbe"]["httpGet"]["port"],
        ),
        ("/healthz", "health"),
    ),
    "a startup probe waits for the first listing": (
        lambda d, p: (
            p["containers"][0]["startupProbe"]["httpGet"]["path"],
            p["containers"][0]["startupProbe"]["failureThreshold"] * p["containers"][0]["startupProbe"]["periodSeconds"]
            >= 300,
        ),
        ("/healthz", True),
    ),
    "requests and limits both set": (
        lambda d, p: sorted(k for k, v in p["containers"][0]["resources"].items() if v.get("cpu") and v.get("memory")),
        ["limits", "requests"],
    ),
    "keeps the image's `ladder operator` entrypoint": (lambda d, p: "command" in p["containers"][0], False),
    "health and metrics ports from values": (
        lambda d, p: p["containers"][0]["args"][0].startswith("--metrics-port="),
        True,
    ),
}


@pytest.mark.parametrize("values", [[], [FULL_VALUES]], ids=["default", "full"])
def test_operator_deployment_is_hardened(helm, values):
    docs = render(helm, *values)
    dep, pod = _operator_pod(docs)
    problems = []
    for name, (get, want) in HARDENING.items():
        got = get(dep, pod)
        if got != want:
            problems.append(f"{name}: got {got!r}, want {want!r}")
    assert not problems, "\n".join(problems)
    sa = one(docs, "ServiceAccount", pod["serviceAccountName"])
    assert sa["metadata"]["namespace"] == NAMESPACE
    assert pod["securityContext"]["runAsUser"] > 0


def test_ports_and_args_follow_values(helm):
    docs = render(helm, FULL_VALUES)
    _, pod = _operator_pod(docs)
    c = pod["containers"][0]
    assert c["image"] == "registry.example.com/ml/promotion-ladder-operator:0.1.0-rc1"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090, "health": 9091}
    assert c["args"] == ["--metrics-port=9090", "--health-port=9091", "--namespace=research", "--namespace=screening"]
    svc = one(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"].items() <= dep_labels(docs).items()
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"


def dep_labels(docs):
    return one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]


def test_image_tag_defaults_to_app_version_and_accepts_a_digest(helm):
    _, pod = _operator_pod(render(helm))
    assert pod["containers"][0]["image"] == "ghcr.io/promotion-ladder/operator:0.1.0"
    digest = "sha256:" + "a" * 64
    _, pod = _operator_pod(render(helm, set_values={"image.tag": json.dumps(digest)}))
    assert pod["containers"][0]["image"] == f"ghcr.io/promotion-ladder/operator@{digest}"


def test_dashboard_configmap_holds_the_dashboard(helm):
    cm = one(render(helm, FULL_VALUES), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["promotion-ladder.json"]) == json.loads(
        (REPO / "dashboards" / "promotion-ladder.json").read_text()
    )


def test_prometheus_rule_alerts(helm):
    rule = one(render(helm, FULL_VALUES), "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert sorted(alerts) == ["PromotionLadderOverGPUHourBudget", "PromotionLadderResultErrors", "PromotionLadderStuck"]
    assert "ladder_cells[13h]" in alerts["PromotionLadderStuck"]["expr"]
    assert alerts["PromotionLadderOverGPUHourBudget"]["expr"].strip().endswith("> 250.5")
    assert "{{ $labels.ladder }}" in alerts["PromotionLadderResultErrors"]["annotations"]["summary"]
    # An alert can be switched off on its own.
    rule = one(
        render(helm, FULL_VALUES, set_values={"metrics.prometheusRule.ladderStuck.enabled": "false"}), "PrometheusRule"
    )
    assert "PromotionLadderStuck" not in {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}


def test_notes_render(helm, tmp_path):
    # NOTES.txt is only printed by `helm install`, which wants a cluster; render it through a
    # ConfigMap added to a copy of the chart (every template file is a named template).
    chart = tmp_path / "promotion-ladder"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n"
        '    {{- include "promotion-ladder/templates/NOTES.txt" . | nindent 4 }}\n'
    )
    proc = run_helm(
        helm,
        "template",
        "ladder",
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "-f",
        str(FULL_VALUES),
        "--show-only",
        "templates/zz-notes.yaml",
    )
    assert proc.returncode == 0, proc.stderr
    notes = yaml.safe_load(proc.stdout)["data"]["notes"]
    assert "kubectl get promotionladders" in notes
    assert "ladder-operator-metrics.ladder-system.svc:9090/metrics" in notes
    assert "research, screening" in notes


# Named bad values: each must fail `helm template`, and the error must name the culprit.
BAD_VALUES = {
    "root uid": ({"runAsUser": "0"}, "runAsUser"),
    "unknown top-level key": ({"replicaCount": "2"}, "replicaCount"),
    "unknown nested key": ({"operator.replicas": "2"}, "replicas"),
    "pull policy typo": ({"image.pullPolicy": '"Sometimes"'}, "pullPolicy"),
    "port as a string": ({"operator.metricsPort": '"8080"'}, "metricsPort"),
    "port out of range": ({"operator.healthPort": "70000"}, "healthPort"),
    "same metrics and health port": ({"operator.healthPort": "8080"}, "must differ"),
    "namespace not DNS-1123": ({"operator.watchNamespaces": '["Research"]'}, "watchNamespaces"),
    "trainer namespace not DNS-1123": ({"trainer.namespaces": '["a_b"]'}, "namespaces"),
    "negative GPU-hour budget": ({"metrics.prometheusRule.gpuHoursBudget.gpuHours": "-1"}, "gpuHours"),
    "window not a duration": ({"metrics.prometheusRule.ladderStuck.window": '"two hours"'}, "window"),
    "severity typo": ({"metrics.prometheusRule.resultErrors.severity": '"page"'}, "severity"),
    "resources without limits": ({"resources.limits": "null"}, "limits"),  # null deletes the default
    "bad cpu quantity": ({"resources.limits.cpu": '"lots"'}, "cpu"),
    "serviceAccount.create false without a name": ({"serviceAccount.create": "false"}, "serviceAccount.name"),
}


@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_schema_rejects_bad_values(helm, case):
    set_values, culprit = BAD_VALUES[case]
    proc = render(helm, set_values=set_values, expect_ok=False)
    assert proc.returncode != 0, f"{case}: helm template accepted {set_values}"
    assert culprit in proc.stderr, f"{case}: the error does not name {culprit!r}:\n{proc.stderr}"
