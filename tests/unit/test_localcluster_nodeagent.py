"""The simulated kubelet's status writes survive a short API outage (issue 12, defect 7: after a
20 s API-server outage the node agent dropped 12 pod exits and 12 ghost pods held every GPU)."""

from __future__ import annotations

import pytest
import urllib3
from kubernetes.client.rest import ApiException

from localcluster import nodeagent
from localcluster.nodeagent import NodeAgent


class FlakyCore:
    def __init__(self, failures):
        self.failures = list(failures)
        self.written = []

    def patch_namespaced_pod_status(self, name, ns, body):
        if self.failures:
            raise self.failures.pop(0)
        self.written.append((ns, name, body))


def agent(tmp_path):
    return NodeAgent(tmp_path / "kubeconfig", [], tmp_path)


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(nodeagent.threading.Event, "wait", lambda self, t=None: False)


CASES = {
    "connection refused, then up": ([ConnectionRefusedError(), urllib3.exceptions.MaxRetryError(None, "/", "down")], 1),
    "503 while restarting": ([ApiException(status=503), ApiException(status=429)], 1),
    "deleted meanwhile": ([ApiException(status=404)], 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_status_write_is_retried(name, tmp_path):
    failures, written = CASES[name]
    core = FlakyCore(failures)
    agent(tmp_path)._patch_status(core, "ns", "p", {"phase": "Succeeded"})
    assert len(core.written) == written


def test_a_refused_write_is_not_retried(tmp_path):
    core = FlakyCore([ApiException(status=422)])
    with pytest.raises(ApiException):
        agent(tmp_path)._patch_status(core, "ns", "p", {"phase": "Bogus"})


def test_retries_are_bounded(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 7))
    monkeypatch.setattr(nodeagent.time, "monotonic", lambda: next(clock))
    core = FlakyCore([ConnectionRefusedError()] * 1000)
    with pytest.raises(ConnectionRefusedError):
        agent(tmp_path)._patch_status(core, "ns", "p", {"phase": "Succeeded"})
    assert len(core.failures) > 900  # gave up after about STATUS_RETRY_SECONDS, not 1000 tries
