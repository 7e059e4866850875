"""Where a cell's result and progress go: the result file, the Pod's own annotations, and
the container's termination message.

The Pod path is best effort by design: an API server that is slow or refuses must never cost
a training run, so every failure is logged and swallowed. Progress patches run on a
background thread, so the training loop only hands over a small dict.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from promotion_ladder.core import contract
from promotion_ladder.core.contract import PROGRESS_ANNOTATION, RESULT_ANNOTATION
from promotion_ladder.core.result import CellResult

TERMINATION_LIMIT = 4096
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# Optional fields dropped, in this order, when the termination message is too long.
_DROP_ORDER = (
    "compileSeconds",
    "setupSeconds",
    "evalSeconds",
    "gpuName",
    "peakMemoryBytes",
    "mfu",
    "tokensPerSecond",
    "tokens",
    "steps",
    "hostBlock",
    "ladder",
)


def log(msg: str) -> None:
    print(f"[ladder-trainer] {msg}", file=sys.stderr, flush=True)


def identity_from_env(env: dict[str, str] | None = None) -> dict:
    """The result's identity fields from the LADDER_* variables (core.contract names them)."""
    return contract.identity_from_env(os.environ if env is None else env)


def write_result_file(path: str, result: CellResult) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(result.to_json() + "\n")
    os.replace(tmp, p)  # readers never see half a document


def termination_message(result: CellResult, limit: int = TERMINATION_LIMIT) -> str:
    """The result JSON within `limit` bytes: drop optional fields, then shorten the message."""
    data = json.loads(result.to_json())
    text = json.dumps(data, separators=(",", ":"))
    for key in _DROP_ORDER:
        if len(text.encode()) <= limit:
            return text
        data.pop(key, None)
        text = json.dumps(data, separators=(",", ":"))
    while len(text.encode()) > limit and data.get("message"):
        excess = len(text.encode()) - limit
        msg = data["message"]
        data["message"] = msg[: max(0, len(msg) - excess - 8)] + "..."
        if data["message"] == "..." and len(msg) <= 3:
            data["message"] = ""
        text = json.dumps(data, separators=(",", ":"))
    return text


def write_termination_message(result: CellResult) -> None:
    path = os.environ.get("LADDER_TERMINATION_LOG")
    if not path:
        if not os.path.exists(DEFAULT_TERMINATION_LOG):
            return
        path = DEFAULT_TERMINATION_LOG
    try:
        with open(path, "w") as fh:
            fh.write(termination_message(result))
    except OSError as exc:
        log(f"could not write the termination message to {path}: {exc}")


class PodAnnotator:
    """Patches annotations on this container's own Pod (POD_NAME / POD_NAMESPACE)."""

    def __init__(self, name: str, namespace: str, timeout: float = 10.0):
        self.name, self.namespace, self.timeout = name, namespace, timeout
        self._api = None

    @classmethod
    def from_env(cls) -> PodAnnotator | None:
        name, ns = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        return cls(name, ns) if name and ns else None

    def _client(self):
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()  # honours KUBECONFIG (the local simulated kubelet sets it)
            self._api = client.CoreV1Api()
        return self._api

    def patch(self, annotations: dict[str, str]) -> bool:
        try:
            self._client().patch_namespaced_pod(
                self.name,
                self.namespace,
                {"metadata": {"annotations": annotations}},
                _content_type="application/merge-patch+json",
                _request_timeout=self.timeout,
            )
            return True
        except Exception as exc:  # noqa: BLE001 - never let the API cost the run
            first_line = " ".join(str(exc).split("\n")[:2])[:300]  # ApiException adds headers and body
            log(f"could not annotate pod {self.namespace}/{self.name}: {type(exc).__name__}: {first_line}")
            return False


class ProgressReporter:
    """Rate-limited progress annotation, patched from a background thread."""

    def __init__(self, annotator: PodAnnotator | None, interval: float):
        self.annotator, self.interval = annotator, interval
        self._last = -float("inf")
        self._pending: dict | None = None
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = None
        if annotator is not None:
            self._thread = threading.Thread(target=self._loop, args=(annotator,), name="ladder-progress", daemon=True)
            self._thread.start()

    def update(self, **progress) -> None:
        if self._thread is None:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        with self._cv:
            self._pending = progress
            self._cv.notify()

    def _loop(self, annotator: PodAnnotator) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stopped:
                    self._cv.wait()
                if self._pending is None:
                    return
                progress, self._pending = self._pending, None
            annotator.patch({PROGRESS_ANNOTATION: json.dumps(progress, separators=(",", ":"))})

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after it has sent what is pending (bounded wait)."""
        if self._thread is None:
            return
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout)


def publish(result: CellResult, result_file: str | None, annotator: PodAnnotator | None) -> None:
    """Send the final result everywhere it is expected; only the result file may raise."""
    if result_file:
        write_result_file(result_file, result)
    write_termination_message(result)
    if annotator is not None:
        for attempt in range(3):
            if annotator.patch({RESULT_ANNOTATION: result.to_json()}):
                break
            if attempt < 2:
                time.sleep(1.0 + attempt)
