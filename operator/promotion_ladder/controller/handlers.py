"""The Kopf wiring: indexes, watch handlers, start-up and clean-up, nothing else.

  * Kopf indexes hold small summaries of the ladders' Jobs and Pods (filled from watches;
    Kopf starts no handler before every index has its initial listing, so a reconcile never
    sees a cold cache and never mistakes "not listed yet" for "missing").
  * Watch handlers (`@kopf.on.event`) only mark a ladder dirty in the Controller's work queue
    (reconciler.py, which does the rest).
Kopf's changing handlers (on.create/update) are not used on purpose: they store progress
annotations on the object. Nothing here adds finalizers; owner references do the cleanup.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..core.api import GROUP, PLURAL, VERSION
from .intake import job_summary, pod_summary
from .jobs import LADDER_LABEL
from .kubeapi import KubeApi
from .reconciler import Controller

__all__ = ["Controller", "KubeApi", "register"]


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Wire the handlers into a Kopf registry."""
    present = {LADDER_LABEL: kopf.PRESENT}

    # A registry of our own gets none of Kopf's default login handlers: add the kubernetes
    # client's (in-cluster service account, else $KUBECONFIG / ~/.kube/config).
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        # Server-side label selection: only the ladders' Jobs and Pods are listed, watched and
        # held in memory, not every Pod of the namespace (or cluster). Kopf 1.45+ has it.
        selectors = getattr(settings.watching, "label_selectors", None)
        if selectors is not None:
            selectors["batch", "v1", "jobs"] = LADDER_LABEL
            selectors["", "v1", "pods"] = LADDER_LABEL
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def shutdown(**_: Any) -> None:
        await controller.stop()

    @kopf.index("batch", "v1", "jobs", labels=present, registry=registry, id="ladder_jobs")
    def ladder_jobs(body: kopf.Body, namespace: str, **_: Any) -> dict:
        s = job_summary(dict(body))
        return {(namespace, s.ladder): s}

    @kopf.index("", "v1", "pods", labels=present, registry=registry, id="ladder_pods")
    def ladder_pods(body: kopf.Body, namespace: str, **_: Any) -> dict:
        s = pod_summary(dict(body))
        return {(namespace, s.ladder): s}

    def capture(kw: dict) -> None:
        if controller.jobs_index is None:
            controller.jobs_index = kw["ladder_jobs"]
            controller.pods_index = kw["ladder_pods"]

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def ladder_event(event: dict, **kw: Any) -> None:
        capture(kw)
        controller.on_ladder(event.get("type"), event["object"])

    @kopf.on.event("batch", "v1", "jobs", labels=present, registry=registry)
    async def job_event(event: dict, namespace: str, uid: str, **kw: Any) -> None:
        capture(kw)
        s = job_summary(event["object"])
        controller.on_child(event.get("type"), uid, s.ladder, namespace, s)

    @kopf.on.event("", "v1", "pods", labels=present, registry=registry)
    async def pod_event(event: dict, namespace: str, uid: str, **kw: Any) -> None:
        capture(kw)
        s = pod_summary(event["object"])
        controller.on_child(event.get("type"), uid, s.ladder, namespace, s)
