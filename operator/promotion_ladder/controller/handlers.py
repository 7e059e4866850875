"""The Kopf wiring: the ladders' watch handler, start-up and clean-up, nothing else.

  * Kopf watches the ladders; its handler (`@kopf.on.event`) only records the body and marks
    the ladder dirty in the Controller's work queue (reconciler.py, which does the rest).
  * The ladders' Jobs and Pods are not Kopf's: the Controller's informers (informer.py) list
    and watch them, because Kopf's per-object machinery does not scale to thousands of them
    after a restart (informer.py says why).
Kopf's changing handlers (on.create/update) are not used on purpose: they store progress
annotations on the object. Nothing here adds finalizers; owner references do the cleanup.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..core.api import GROUP, PLURAL, VERSION
from .kubeapi import KubeApi
from .reconciler import Controller

__all__ = ["Controller", "KubeApi", "register"]


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Wire the handlers into a Kopf registry."""
    # A registry of our own gets none of Kopf's default login handlers: add the kubernetes
    # client's (in-cluster service account, else $KUBECONFIG / ~/.kube/config).
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def shutdown(**_: Any) -> None:
        await controller.stop()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def ladder_event(event: dict, **_: Any) -> None:
        controller.on_ladder(event.get("type"), event["object"])
