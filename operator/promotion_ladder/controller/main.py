"""`ladder operator`: run the Kopf operator with its /metrics and health endpoints.

Ports: --metrics-port serves /metrics (and /healthz, /readyz for convenience);
--health-port serves /healthz (liveness: the work loop is beating) and /readyz (readiness:
Kopf has started and the Jobs' and Pods' caches have their first listing). The kubeconfig is
the in-cluster service account, else $KUBECONFIG / ~/.kube/config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import threading

import kopf
from aiohttp import web

from .handlers import register
from .reconciler import Controller
from .metrics import LadderMetrics
from .stuck import STUCK_GRACE_SECONDS


async def start_http(controller: Controller, metrics: LadderMetrics, ready: asyncio.Event,
                     metrics_port: int, health_port: int, host: str = "0.0.0.0") -> list[web.AppRunner]:
    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def healthz(_: web.Request) -> web.Response:
        ok = controller.alive()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "work loop stalled\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = ready.is_set() and controller.caches_synced() and controller.alive()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "not ready\n")

    runners = []
    ports = [(metrics_port, True)] + ([(health_port, False)] if health_port != metrics_port else [])
    for port, with_metrics in ports:
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        if with_metrics or health_port == metrics_port:
            app.router.add_get("/metrics", metrics_view)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    return runners


def kopf_identity() -> str:
    """The name Kopf gives this operator. Kopf's own default is `<user>@<host>`, with the user
    looked up in /etc/passwd, which has no entry for the image's uid 65532: in the chart's pod
    Kopf then fails at start with "getpwuid(): uid not found: 65532". The pod's name (the chart
    sets POD_NAME) is what a reader of its Events wants anyway."""
    return os.environ.get("POD_NAME") or f"ladder-operator@{socket.gethostname()}"


async def serve(namespaces: list[str] | None, metrics_port: int, health_port: int,
                stop_flag: threading.Event | asyncio.Event | None = None, api=None, workers: int = 8,
                stuck_grace: float = STUCK_GRACE_SECONDS) -> None:
    metrics = LadderMetrics()
    controller = Controller(metrics, api=api, workers=workers)
    controller.stuck_grace = stuck_grace
    controller.watch_children = api is None  # a fake api (tests) comes with its own caches
    controller.namespaces = namespaces or None
    # The leader Lease: in the first watched namespace (the operator's Role covers it), else the
    # operator's own (the chart sets POD_NAMESPACE; watching all namespaces, its ClusterRole
    # covers it). A fake api (tests) runs without election.
    if api is None:
        controller.lease_namespace = (namespaces or [None])[0] or os.environ.get("POD_NAMESPACE") or "default"
    registry = kopf.OperatorRegistry()
    register(registry, controller)
    ready = asyncio.Event()
    runners = await start_http(controller, metrics, ready, metrics_port, health_port)
    stop = stop_flag if stop_flag is not None else asyncio.Event()

    async def take_signals() -> None:
        # Kopf stops on SIGTERM only after its watchers and handlers wind down, while Job
        # creates queued in worker threads went on (45 s of a second operator's worth of work
        # in one test). Stop starting work the moment the signal arrives, then let Kopf stop.
        # Installed once Kopf is ready: Kopf installs its own handlers during start-up, and the
        # last one installed for a signal is the one that runs.
        await ready.wait()

        def on_signal(sig: signal.Signals) -> None:
            logging.getLogger("promotion_ladder.operator").info("%s: no new work from now on; stopping", sig.name)
            controller.stop_starting_work()
            stop.set()
        loop = asyncio.get_running_loop()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests): Kopf's own handling
            pass

    signals = asyncio.create_task(take_signals())
    try:
        await kopf.operator(
            registry=registry, standalone=True, clusterwide=not namespaces, namespaces=namespaces or [],
            ready_flag=ready, stop_flag=stop, identity=kopf_identity(),
        )
    finally:
        signals.cancel()
        for r in runners:
            await r.cleanup()


def run_operator(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # per-object handler chatter
    asyncio.run(serve(args.namespace, args.metrics_port, args.health_port,
                      stuck_grace=getattr(args, "stuck_grace", STUCK_GRACE_SECONDS)))
    return 0
