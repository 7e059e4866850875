"""What `localcluster.kueue` installs, read from the Kueue module's own manifests (kueue-config/,
copied by `cluster/build.sh kueue`), as data. Running it: tests/integration/test_kueue.py."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from localcluster import binaries
from localcluster.kueue import (
    CONVERSION_CRDS,
    NAMESPACE,
    SERVICE_ACCOUNT,
    configuration,
    crd_objects,
    rbac_objects,
    webhook_configurations,
    write_pki,
)
from localcluster.pytest_plugin import require_tool

URL = "https://127.0.0.1:4443"
CA = b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def conf() -> Path:
    require_tool(binaries.kueue_missing_reason(), "the Kueue manifest tests")
    return binaries.kueue_config_dir()


def test_every_crd_of_the_module_and_its_conversion_webhooks(conf):
    crds = {c["spec"]["names"]["plural"]: c for c in crd_objects(conf, URL, CA)}
    assert {
        "workloads",
        "clusterqueues",
        "localqueues",
        "resourceflavors",
        "topologies",
        "workloadpriorityclasses",
    } <= set(crds)
    for plural, crd in crds.items():
        conversion = crd["spec"].get("conversion") or {}
        if plural in CONVERSION_CRDS:
            assert conversion["webhook"]["clientConfig"] == {
                "url": f"{URL}/convert",
                "caBundle": base64.b64encode(CA).decode(),
            }
        else:
            assert conversion.get("strategy", "None") == "None", plural


def test_webhooks_call_the_url_and_cover_kueue_kinds_and_jobs_only(conf):
    configs = {c["kind"]: c for c in webhook_configurations(conf, URL, CA)}
    assert {c["metadata"]["name"] for c in configs.values()} == {
        "kueue-mutating-webhook-configuration",
        "kueue-validating-webhook-configuration",
    }  # what the cert rotator patches
    mutating = {h["name"]: h for h in configs["MutatingWebhookConfiguration"]["webhooks"]}
    assert mutating["mjob.kb.io"]["clientConfig"] == {
        "url": f"{URL}/mutate-batch-v1-job",
        "caBundle": base64.b64encode(CA).decode(),
    }
    assert {"mworkload.kb.io", "mclusterqueue.kb.io", "mresourceflavor.kb.io"} <= set(mutating)
    assert "mpod.kb.io" not in mutating and "mdeployment.kb.io" not in mutating
    for config in configs.values():
        for hook in config["webhooks"]:
            assert "service" not in hook["clientConfig"]
            assert {g for r in hook["rules"] for g in r["apiGroups"]} <= {"kueue.x-k8s.io", "batch"}


def test_rbac_binds_the_modules_roles_to_kueues_service_account(conf):
    objs = {(o["kind"], o["metadata"]["name"]): o for o in rbac_objects(conf)}
    role = objs[("ClusterRole", "kueue-manager-role")]
    assert any("workloads" in r.get("resources", []) for r in role["rules"])
    secrets = objs[("Role", "kueue-manager-secrets-role")]
    assert secrets["metadata"]["namespace"] == NAMESPACE
    for kind, name in (
        ("ClusterRoleBinding", "kueue-manager-rolebinding"),
        ("RoleBinding", "kueue-manager-secrets-rolebinding"),
    ):
        binding = objs[(kind, name)]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]


def test_configuration_manages_queued_jobs_only_on_loopback(tmp_path):
    cfg = configuration(9443, 8081, tmp_path)
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 9443, "certDir": str(tmp_path)}
    assert cfg["integrations"] == {"frameworks": ["batch/job"]}
    assert cfg["manageJobsWithoutQueueName"] is False
    assert cfg["internalCertManagement"]["enable"] is True


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True).stdout


def test_pki_is_what_kueues_cert_rotator_keeps(tmp_path):
    write_pki(tmp_path)
    # The rotator parses the CA key as PKCS#1 only, and checks the CA for the name kueue-ca.
    assert (tmp_path / "ca.key").read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert "DNS:kueue-ca" in openssl("x509", "-in", str(tmp_path / "ca.crt"), "-noout", "-ext", "subjectAltName")
    # The serving certificate: the Service's name (the rotator's check) and 127.0.0.1 (what the
    # API server dials), signed by the CA, valid past the rotator's 90-day look-ahead.
    san = openssl("x509", "-in", str(tmp_path / "tls.crt"), "-noout", "-ext", "subjectAltName")
    assert "DNS:kueue-webhook-service.kueue-system.svc" in san and "IP Address:127.0.0.1" in san
    openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt"))
    openssl("x509", "-in", str(tmp_path / "tls.crt"), "-noout", "-checkend", str(91 * 24 * 3600))
