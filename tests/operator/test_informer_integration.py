"""The operator's Jobs/Pods cache (controller/informer.py) against the real API server: a paged
list, then a watch; relabelling and deleting; what a relist reports after the watch was down.

Issue 12, defect 1: the cache this replaces (Kopf's indexes) took 23 minutes to be ready after a
restart among 8,000 objects and recorded results as lost; benchmarks/operator_bench.py --restart
measures that scale, these tests the behaviour."""

from __future__ import annotations

import threading
import time

import pytest

from localcluster.waiting import wait_for
from promotion_ladder.controller import informer as informer_mod
from promotion_ladder.controller.informer import Cache, Informer
from promotion_ladder.controller.intake import pod_summary
from promotion_ladder.controller.jobs import LADDER_LABEL

pytestmark = pytest.mark.integration


def pod(name: str, ladder: str | None) -> dict:
    labels = {LADDER_LABEL: ladder} if ladder else {"other": "x"}
    # A node no one has: the pods stay Pending and nothing runs them.
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeSelector": {"no-such-node": "x"},
            "containers": [{"name": "trainer", "image": "stub", "command": ["true"]}],
        },
    }


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, str, str]] = []  # (type, pod name, ladder)
        self.lock = threading.Lock()

    def __call__(self, kind, uid, ladder, namespace, summary):
        with self.lock:
            self.events.append((kind, summary.name, ladder))

    def seen(self, event) -> bool:
        with self.lock:
            return event in self.events


def names(cache, ns: str, ladder: str) -> set[str]:
    return {s.name for s in cache.get((ns, ladder))}


def test_lists_in_pages_then_follows_the_watch(kube, namespace, monkeypatch):
    monkeypatch.setattr(informer_mod, "PAGE_SIZE", 3)  # 7 pods of the ladder: three pages
    for i in range(7):
        kube.core.create_namespaced_pod(namespace, pod(f"p{i}", "lad"))
    kube.core.create_namespaced_pod(namespace, pod("stranger", None))
    rec = Recorder()
    inf = Informer("pods", kube.core.list_namespaced_pod, namespace, LADDER_LABEL, pod_summary, rec).start()
    cache = Cache([inf])
    try:
        assert cache.wait_synced(30)
        assert names(cache, namespace, "lad") == {f"p{i}" for i in range(7)} and len(inf) == 7
        assert rec.events == []  # the first list fills the cache; the Controller reconciles all ladders anyway

        kube.core.create_namespaced_pod(namespace, pod("p7", "lad"))
        kube.core.patch_namespaced_pod("p1", namespace, {"metadata": {"labels": {LADDER_LABEL: None}}})
        kube.core.patch_namespaced_pod("p2", namespace, {"metadata": {"labels": {LADDER_LABEL: "other"}}})
        kube.core.delete_namespaced_pod("p3", namespace, grace_period_seconds=0)
        wait_for(
            lambda: names(cache, namespace, "lad") == {"p0", "p4", "p5", "p6", "p7"},
            timeout=30,
            what="the watch applied to the cache",
            describe=lambda: names(cache, namespace, "lad"),
        )
        assert names(cache, namespace, "other") == {"p2"}
        # A Pod relabelled away is gone for its old ladder (issue 12: not taken for its failed cell).
        for event in [
            ("ADDED", "p7", "lad"),
            ("DELETED", "p1", "lad"),
            ("DELETED", "p2", "lad"),
            ("MODIFIED", "p2", "other"),
        ]:
            wait_for(lambda event=event: rec.seen(event), timeout=10, what=str(event))
        wait_for(lambda: any(e[:2] == ("DELETED", "p3") for e in rec.events), timeout=30, what="p3 deleted")
        # A change no reconcile reads (the trainer's progress annotation) wakes no ladder; one
        # event later on the same stream shows the watch got past it.
        kube.core.patch_namespaced_pod(
            "p0", namespace, {"metadata": {"annotations": {"ladder.promotion.dev/progress": '{"step": 3}'}}}
        )
        kube.core.patch_namespaced_pod(
            "p4", namespace, {"metadata": {"annotations": {"ladder.promotion.dev/result": "{}"}}}
        )
        wait_for(lambda: rec.seen(("MODIFIED", "p4", "lad")), timeout=30, what="p4's result seen")
        assert not rec.seen(("MODIFIED", "p0", "lad"))
        assert inf.lists == 1
    finally:
        inf.stop()


def test_a_relist_reports_what_changed_while_the_watch_was_down(kube, namespace):
    for i in range(4):
        kube.core.create_namespaced_pod(namespace, pod(f"q{i}", "lad"))
    rec = Recorder()
    inf = Informer("pods", kube.core.list_namespaced_pod, namespace, LADDER_LABEL, pod_summary, rec)
    inf.source.list_once()  # as the thread's first step; no watch runs in this test
    assert inf.synced.is_set() and len(inf) == 4
    kube.core.delete_namespaced_pod("q0", namespace, grace_period_seconds=0)
    kube.core.patch_namespaced_pod("q1", namespace, {"metadata": {"labels": {LADDER_LABEL: None}}})
    kube.core.patch_namespaced_pod(
        "q2", namespace, {"metadata": {"annotations": {"ladder.promotion.dev/result": "{}"}}}
    )
    kube.core.patch_namespaced_pod("q3", namespace, {"metadata": {"labels": {LADDER_LABEL: "other"}}})
    kube.core.create_namespaced_pod(namespace, pod("q4", "lad"))
    wait_for(lambda: not [p for p in kube.pods("lad") if p.metadata.name == "q0"], timeout=30, what="q0 gone")
    inf.source.list_once()
    # q3 moved to another ladder: gone for "lad" (as the watch reports it), there for "other".
    assert sorted(rec.events) == [
        ("ADDED", "q4", "lad"),
        ("DELETED", "q0", "lad"),
        ("DELETED", "q1", "lad"),
        ("DELETED", "q3", "lad"),
        ("MODIFIED", "q2", "lad"),
        ("MODIFIED", "q3", "other"),
    ]
    assert {s.name for s in inf.get((namespace, "lad"))} == {"q2", "q4"} and inf.lists == 2


@pytest.mark.parametrize(
    "fault, lists", [("dropped", 1), ("gone", 2)], ids=["dropped connection: resume", "410: relist"]
)
def test_a_broken_watch_resumes_or_relists(fault, lists, kube, namespace, monkeypatch):
    """A watch that breaks (a dropped connection) resumes from its resourceVersion: no relist of
    thousands of objects for a blip. One whose version is too old (410 Gone) lists again. The
    first watch call fails on purpose; the list and every other call go to the real API server."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import ProtocolError

    monkeypatch.setattr(informer_mod, "BACKOFF_SECONDS", (0.1,))
    real = kube.core.list_namespaced_pod
    failed = []

    def flaky(*args, **kwargs):
        if kwargs.get("watch") and not failed:
            failed.append(kwargs["resource_version"])
            raise ProtocolError("connection dropped") if fault == "dropped" else ApiException(status=410, reason="Gone")
        return real(*args, **kwargs)

    kube.core.create_namespaced_pod(namespace, pod("r0", "lad"))
    inf = Informer("pods", flaky, namespace, LADDER_LABEL, pod_summary, Recorder()).start()
    try:
        assert Cache([inf]).wait_synced(30)
        kube.core.create_namespaced_pod(namespace, pod("r1", "lad"))
        wait_for(
            lambda: names(Cache([inf]), namespace, "lad") == {"r0", "r1"}, timeout=30, what="r1 seen after the fault"
        )
        assert failed and inf.lists == lists
    finally:
        inf.stop()


def test_stop_ends_a_thread_blocked_reading_a_quiet_watch(kube, namespace):
    """Issue 21, a clean stop: a quiet watch blocks its thread in a socket read for minutes; a
    thread left reading (or logging) while the interpreter finalizes can abort the process.
    stop() interrupts the read and joins the thread."""
    kube.core.create_namespaced_pod(namespace, pod("s0", "lad"))
    inf = Informer("pods", kube.core.list_namespaced_pod, namespace, LADDER_LABEL, pod_summary, Recorder()).start()
    assert Cache([inf]).wait_synced(30)

    def watching():
        return [t for t in threading.enumerate() if t.name == f"watch-pods-{namespace}"]

    assert watching(), "the watch thread runs"
    t0 = time.monotonic()
    assert inf.stop() is True
    assert time.monotonic() - t0 < 2.0 and watching() == []
