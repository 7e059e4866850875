"""The Pod path: result and progress annotations patched on the cell's own Pod, and the
termination message. A tiny HTTP server stands in for the API server and records requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")

from ladder_trainer.publish import termination_message  # noqa: E402
from promotion_ladder.core.contract import PROGRESS_ANNOTATION, RESULT_ANNOTATION  # noqa: E402
from promotion_ladder.core.result import CellResult, parse_result  # noqa: E402

from .conftest import TINY, run_cli  # noqa: E402


class FakeAPIServer:
    def __init__(self, status: int = 200):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append(
                    {
                        "path": self.path,
                        "body": json.loads(body),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                name = self.path.rstrip("/").split("/")[-1]
                reply = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def kubeconfig(self, path) -> str:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "sa", "user": {"token": "cell-token"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "sa"}}],
                }
            )
        )
        return str(path)

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def api_server():
    servers = []

    def make(status=200):
        servers.append(FakeAPIServer(status))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def pod_env(server, tmp_path) -> dict:
    return {
        "POD_NAME": "cell-0",
        "POD_NAMESPACE": "ladders",
        "KUBECONFIG": server.kubeconfig(tmp_path / "kubeconfig"),
        "KUBERNETES_SERVICE_HOST": "",
        "LADDER_TRAINER_PROGRESS_INTERVAL": "0",
        "LADDER_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }


def test_result_and_progress_are_patched_on_the_own_pod(corpus, tmp_path, api_server):
    server = api_server()
    out = tmp_path / "result.json"
    proc = run_cli(
        [
            "--config",
            json.dumps(TINY),
            "--budget",
            "2s",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--eval-tokens",
            "256",
        ],
        env=pod_env(server, tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert server.requests, proc.stderr
    for req in server.requests:
        assert req["path"].startswith("/api/v1/namespaces/ladders/pods/cell-0")
        assert req["headers"]["content-type"] == "application/merge-patch+json"
        assert req["headers"]["authorization"] == "Bearer cell-token"
    annotations = [r["body"]["metadata"]["annotations"] for r in server.requests]
    results = [a[RESULT_ANNOTATION] for a in annotations if RESULT_ANNOTATION in a]
    assert len(results) == 1 and parse_result(results[0]) == parse_result(out.read_text())
    progress = [json.loads(a[PROGRESS_ANNOTATION]) for a in annotations if PROGRESS_ANNOTATION in a]
    assert progress and set(progress[0]) == {"elapsed", "step", "tokens", "loss"}
    assert parse_result((tmp_path / "termination-log").read_text()).status == "ok"


@pytest.mark.parametrize(
    "fault,ranks_patching", [(None, {"ok"}), ("exit_at_step:2@1", {"error"})], ids=["ok", "rank 1 crashes"]
)
def test_a_two_process_cell_publishes_one_result_on_its_pod(corpus, tmp_path, api_server, fault, ranks_patching):
    """Rank 0 publishes, rank 1 never; when a rank fails, the agent's result (naming it) is the
    last word on the Pod, in the result file and in the termination message."""
    server = api_server()
    out = tmp_path / "result.json"
    env = {**pod_env(server, tmp_path), "LADDER_GPUS": "2", **({"LADDER_TRAINER_FAULT": fault} if fault else {})}
    proc = run_cli(
        [
            "--config",
            json.dumps(TINY),
            "--budget",
            "30s",
            "--max-steps",
            "3",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--eval-tokens",
            "256",
        ],
        env=env,
        timeout=180,
    )
    assert (proc.returncode == 0) == (fault is None), proc.stderr[-3000:]
    annotations = [r["body"]["metadata"]["annotations"] for r in server.requests]
    results = [parse_result(a[RESULT_ANNOTATION]) for a in annotations if RESULT_ANNOTATION in a]
    final = parse_result(out.read_text())
    assert results and results[-1] == final == parse_result((tmp_path / "termination-log").read_text())
    assert {r.status for r in results} == ranks_patching
    if fault is None:
        assert len(results) == 1 and final.world_size == 2
    else:  # rank 0 reported its broken collective first; the agent then said who failed
        assert final.message.startswith("rank 1 of 2 exited with code 1")


def test_api_failures_do_not_cost_the_run(corpus, tmp_path, api_server):
    server = api_server(status=500)
    out = tmp_path / "result.json"
    proc = run_cli(
        [
            "--config",
            json.dumps(TINY),
            "--budget",
            "1s",
            "--result-file",
            str(out),
            "--data",
            str(corpus),
            "--eval-tokens",
            "256",
        ],
        env=pod_env(server, tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert parse_result(out.read_text()).status == "ok"
    assert "could not annotate pod ladders/cell-0" in proc.stderr


def test_termination_message_fits_4096_bytes():
    full = CellResult(
        status="error",
        message="x" * 10_000,
        ladder="l",
        stage="s",
        candidate="c",
        host_block="h",
        seed=1,
        steps=5,
        tokens=10,
        gpu_name="NVIDIA H100 80GB HBM3",
    )
    text = termination_message(full)
    assert len(text.encode()) <= 4096
    result = parse_result(text)
    assert result.status == "error" and result.candidate == "c" and result.message.startswith("xxx")
    assert result.gpu_name is None  # optional fields go first

    small = CellResult(status="ok", value=1.23, gpu_name="L4")
    assert parse_result(termination_message(small)) == small
