"""A real Prometheus (built by cluster/build.sh) scraping static targets on loopback.

What the monitoring tests and `python -m localcluster prometheus` share: the scrape config
(static targets, short interval), starting and stopping the server with its TSDB in a given
directory, and a small client for the HTTP query API (instant and range queries). No
service discovery: the operator under test is a process on 127.0.0.1, not a Pod.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import binaries
from .processes import free_port, spawn, stop_group
from .waiting import wait_for

JOB = "promotion-ladder-operator"


class PromQLError(Exception):
    """Prometheus refused a query (parse error, bad range); the message is Prometheus' own."""


def scrape_config(targets: list[str], interval: str = "1s", job: str = JOB) -> dict:
    """prometheus.yml for scraping `targets` (host:port, /metrics) every `interval`."""
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": list(targets)}]}
        ],
    }


@dataclass
class LocalPrometheus:
    """`prometheus` with its config and TSDB under `dir`, listening on 127.0.0.1:`port`."""

    dir: Path
    targets: list[str]
    scrape_interval: str = "1s"
    port: int = 0
    die_with_parent: bool = True
    proc: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "prometheus.log"

    def start(self, timeout: float = 60) -> LocalPrometheus:
        reason = binaries.prometheus_missing_reason()
        if reason:
            raise FileNotFoundError(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = self.dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.targets, self.scrape_interval), sort_keys=False))
        argv = [
            str(binaries.prometheus_path()),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc = spawn(
            argv,
            log_path=self.log_path,
            cwd=self.dir,
            die_with_parent=self.die_with_parent,
            env={**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS", "2")},
        )
        wait_for(self._ready, timeout=timeout, what=f"prometheus ready on {self.url}", describe=self.tail)
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.tail()}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
            return r.status == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc.pid, grace=10.0, proc=self.proc)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # --- the HTTP API ---------------------------------------------------------------------

    def api(self, path: str, **params) -> object:
        """GET /api/v1/<path>?params; the `data` of a success, PromQLError otherwise."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus' error as JSON
            try:
                doc = json.loads(exc.read())
            except ValueError:
                raise PromQLError(f"HTTP {exc.code} from {path}") from exc
        if doc.get("status") != "success":
            raise PromQLError(f"{doc.get('errorType', 'error')}: {doc.get('error', doc)}")
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query: [{"metric": {labels}, "value": [t, "v"]}, ...] (scalars as one unlabelled series)."""
        data = self.api("query", query=expr, time=at)
        return _as_series(data)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return _as_series(data)

    def label_values(self, label: str, match: str) -> list[str]:
        return self.api(f"label/{label}/values", **{"match[]": match})

    def active_targets(self) -> list[dict]:
        return self.api("targets", state="active")["activeTargets"]

    def wait_scraping(self, timeout: float = 60) -> None:
        """Until every target has been scraped once and is up."""

        def up():
            targets = self.active_targets()
            return targets and all(t["health"] == "up" for t in targets)

        wait_for(
            up,
            timeout=timeout,
            what=f"prometheus scraping {self.targets}",
            describe=lambda: [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.active_targets()],
        )


def _as_series(data: dict) -> list[dict]:
    if data["resultType"] in ("vector", "matrix"):
        return data["result"]
    return [{"metric": {}, "value": data["result"]}]  # scalar, string


def serve(directory: Path, targets: list[str], port: int, interval: str) -> int:
    """Runs Prometheus in the foreground until Ctrl-C (python -m localcluster prometheus)."""
    import signal
    import threading

    prom = LocalPrometheus(directory, targets, interval, port, die_with_parent=True).start()
    print(
        f"prometheus: {prom.url} scraping {', '.join(targets)} every {interval} "
        f"(config and TSDB in {directory}, log {prom.log_path})"
    )
    print(f"  try: curl -s '{prom.url}/api/v1/query?query=ladder_info' or open {prom.url}/api/v1/targets")
    print("# stop with Ctrl-C", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        if prom.proc.poll() is not None:
            print(f"prometheus exited with {prom.proc.returncode}:\n{prom.tail()}")
            return 1
    prom.stop()
    return 0
