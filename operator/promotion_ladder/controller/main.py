"""`ladder operator`: Kopf runs the operator.

Kopf owns the process: start-up and clean-up (its startup and cleanup handlers start and stop
the operator's parts, parts.py), signals (SIGTERM/SIGINT stop it; the cleanup handler shuts the
Gate before anything else and waits for every thread), and the health endpoint: Kopf's liveness
endpoint at /healthz on `--health-port`, with the probes in handlers.py. It answers only once
the startup handler is done, i.e. once the Jobs' and Pods' caches hold their first listing.
Kopf watches the ladders.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket

import kopf

from .handlers import register
from .metrics import LadderMetrics
from .parts import OperatorParts, Settings

HEALTH_PATH = "/healthz"


def kopf_identity() -> str:
    """The name Kopf gives this operator. Kopf's own default is `<user>@<host>`, with the user
    looked up in /etc/passwd, which has no entry for the image's uid 65532: in the chart's pod
    Kopf then fails at start with "getpwuid(): uid not found: 65532". The pod's name (the chart
    sets POD_NAME) is what a reader of its Events wants anyway."""
    return os.environ.get("POD_NAME") or f"ladder-operator@{socket.gethostname()}"


async def serve(settings: Settings) -> None:
    registry = kopf.OperatorRegistry()
    register(registry, OperatorParts.build(settings, LadderMetrics()))
    await kopf.operator(
        registry=registry,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces or [],
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}{HEALTH_PATH}",
        identity=kopf_identity(),  # type: ignore[arg-type]  # kopf.Identity, a NewType of str, is not exported
    )


def run_operator(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Per-object handler chatter, and a line per probe of /healthz (every few seconds in a cluster).
    for chatty in ("kopf.objects", "kopf.activities.probe", "aiohttp.access"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings = Settings(args.namespace or None, args.metrics_port, args.health_port, stuck_grace=args.stuck_grace)
    asyncio.run(serve(settings))
    return 0
