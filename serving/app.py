"""The tenants' plane: the FastAPI app of the OpenAI API, adapters, files and models, /health and /ready; it
owns the shared gateway's start-up and shutdown. The operators' plane is serving/operator_app.py."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving import metrics
from serving.gateway import Gateway
from serving.heap import freeze_startup_heap, watch_gc
from serving.http_app import new_app
from serving.inference_lane import InferenceLane
from serving.routes import adapters, files, fine_tuning, inference, model_artifacts, ops
from serving.settings import ServingSettings
from serving.supervisor import EngineSupervisor

log = logging.getLogger(__name__)


async def drain(app: FastAPI, timeout: float) -> bool:
    """Graceful shutdown, first half: stop admitting (503 + Retry-After, /ready 503) and wait up to
    `timeout` for admitted requests (running or queued, streams included) to finish. True if all did.
    The caller then stops the server; the lifespan's shutdown stops a managed engine after that."""
    gw: Gateway = app.state.gateway
    gw.admission.close()
    log.info("draining", extra={"fields": {"inflight": gw.admission.inflight, "queued": gw.admission.queued,
                                           "timeout_s": timeout}})
    done = await gw.admission.wait_idle(timeout)
    if done:
        log.info("drained")
    else:
        log.warning("drain timed out; exiting with requests still running",
                    extra={"fields": {"inflight": gw.admission.inflight, "queued": gw.admission.queued}})
    return done


def create_app(gateway: Gateway | None = None) -> FastAPI:
    """Build the tenants' app; without `gateway`, one is built from the environment at start-up. Its lifespan
    starts and stops the gateway (engine supervisor, transport): an operator app sharing the gateway must
    run no longer than this one (serving/listeners.py)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gw = gateway or Gateway.from_settings(ServingSettings())
        app.state.gateway = gw
        metrics.LABELS.per_tenant = gw.settings.metrics_adapters_per_tenant
        metrics.LABELS.tenants = gw.settings.metrics_tenants
        metrics.LABELS.window_s = gw.settings.metrics_tenant_window_s
        supervisor = EngineSupervisor(gw.settings, gw.residency) if gw.settings.engine_managed else None
        if supervisor:
            gw.supervisor = supervisor
            await supervisor.start()
        else:
            await gw.transport.open()
        if gw.tiers is not None:
            gw.tiers.refresh_soon()  # the operators' pins: kept and loaded from the start
        watch_gc()
        if gw.settings.gc_freeze:
            frozen = freeze_startup_heap()
            log.info("start-up heap frozen", extra={"fields": {"objects": frozen}})
        yield
        if gw.settings.gc_freeze:
            gc.unfreeze()  # exit as usual: extension modules check at interpreter shutdown that theirs were freed
        if supervisor:
            await supervisor.stop()
        await gw.transport.aclose()

    routers = (m.router for m in (ops, inference, adapters, model_artifacts, files, fine_tuning))
    return new_app("loraplex gateway", routers, lifespan, inner=(InferenceLane,))
