"""`ladder report NAME -n NAMESPACE --kubeconfig FILE` against the local control plane's API server."""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client

from promotion_ladder.cli import main
from promotion_ladder.core.api import GROUP, PLURAL, VERSION

from ..operator.harness import install_crd
from .builders import LADDER, simulate_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ladders(local_cluster):
    install_crd(local_cluster.api_client())
    return client.CustomObjectsApi(local_cluster.api_client())


def test_report_of_a_ladder_on_the_cluster(local_cluster, ladders, namespace, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    doc = yaml.safe_load(LADDER.read_text())
    ladders.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)
    # What the operator would have written once the ladder finished.
    ladders.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "protocol", {"status": simulate_json()}
    )
    out = tmp_path / "cluster-report.html"
    argv = ["report", "protocol", "-n", namespace, "--kubeconfig", str(local_cluster.kubeconfig), "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    html = out.read_text()
    assert f"cluster {namespace}/protocol" in html
    assert '<table id="table-spec-stages">' in html and "169.2" in html and "60.8%" in html

    assert main(["report", "absent", "-n", namespace, "--kubeconfig", str(local_cluster.kubeconfig)]) == 1
    assert f"no PromotionLadder 'absent' in namespace '{namespace}'" in capsys.readouterr().err
