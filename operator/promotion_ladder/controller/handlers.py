"""The Kopf wiring: login, start-up and clean-up of the operator's parts, the probes of its
health endpoint, and the ladders' watch handler.

  * Kopf watches the ladders; its handler (`@kopf.on.event`) only hands the body to the work
    loop (workloop.py), which marks the ladder dirty; the reconciler does the rest.
  * The ladders' Jobs and Pods are not Kopf's: the informers (informer.py) list and watch them,
    because Kopf's per-object machinery does not scale to thousands of them after a restart.
  * Probes (`@kopf.on.probe`) make Kopf's /healthz: it fails (500) when the work loop has not
    beaten for a minute, and says whether this operator leads.
Kopf's changing handlers (on.create/update) are not used on purpose: they store progress
annotations on the object. Nothing here adds finalizers; owner references do the cleanup.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..core.api import GROUP, PLURAL, VERSION
from .parts import OperatorParts
from .workloop import ALIVE_SECONDS


def register(registry: kopf.OperatorRegistry, parts: OperatorParts) -> None:
    """Wire the handlers into a Kopf registry: Kopf starts and stops `parts`."""

    # A registry of our own gets none of Kopf's default login handlers: add the kubernetes
    # client's (in-cluster service account, else $KUBECONFIG / ~/.kube/config).
    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="start", registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        await parts.start()

    @kopf.on.cleanup(id="stop", registry=registry)
    async def stop(**_: Any) -> None:
        await parts.stop()

    @kopf.on.probe(id="workLoop", registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    def work_loop(**_: Any) -> str:
        if not parts.loop.alive():
            raise kopf.PermanentError(f"the work loop has not beaten for {ALIVE_SECONDS:g} s")
        return "alive"

    @kopf.on.probe(id="leading", registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    def leading(**_: Any) -> bool:
        return parts.lease.held()

    @kopf.on.event(GROUP, VERSION, PLURAL, id="ladder", registry=registry)
    async def ladder_event(event: kopf.RawEvent, **_: Any) -> None:
        parts.loop.on_ladder(event["type"], dict(event["object"]))
