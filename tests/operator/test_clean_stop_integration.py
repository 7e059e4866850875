"""Issue 21, item 7 (a clean stop): SIGTERM always ends the operator with exit 0 once its work is
stopped, with ladders and a metrics scrape in flight.

On e70d837, 2 of 5 tries died of SIGABRT (exit 134) after "cleanup succeeded": the watch threads
of the Jobs' and Pods' informers were left blocked in a socket read, and one woken by a Pod
update while the interpreter finalized aborted it. Each start here runs while a busy ladder's
Pods come and go and a new ladder's Jobs are being created, and SIGTERM comes while /metrics is
scraped without pause.
"""

from __future__ import annotations

import threading
import urllib.request
from typing import Self

import pytest

from localcluster.waiting import wait_for

from .harness import Operator
from .test_operator_integration import ladder, stage

pytestmark = pytest.mark.integration

STARTS = 20


class Scraper:
    """Scrapes /metrics without pause from a thread until the operator stops answering."""

    def __init__(self, op: Operator) -> None:
        self.url = f"http://127.0.0.1:{op.metrics_port}/metrics"
        self.scrapes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                self.scrapes += 1
            except OSError:
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(10)


def test_sigterm_ends_the_operator_with_exit_0_every_time(operator_identity, namespace, tmp_path, kube):
    # Busy across every start: its cells take a second each, four at a time.
    busy = {f"c{i:02d}": {"value": 1.0 + i / 100, "sleep": 1} for i in range(80)}
    kube.create(ladder("busy", busy, [stage("s1", blocks=("a100",))], parallelism=4))
    op = Operator(operator_identity, namespace, tmp_path)
    codes: list[int | None] = []
    for i in range(STARTS):
        op.start()
        name = f"small-{i}"
        kube.create(ladder(name, {"a": {"value": 1.0}, "b": {"value": 1.1}}, [stage("s1")]))
        wait_for(lambda name=name: kube.jobs(name), timeout=60, what=f"{name}'s first Job", describe=op.tail)
        with Scraper(op) as scraper:
            wait_for(lambda: scraper.scrapes > 0, timeout=10, what="a scrape")
            codes.append(op.stop(timeout=30))
    log = op.log_path.read_text(errors="replace")
    assert codes == [0] * STARTS, f"exit codes {codes}:\n{op.tail(80)}"
    assert "Fatal Python error" not in log and "Traceback" not in log, op.tail(80)
    assert log.count("stopped: every thread of the operator has ended") == STARTS
