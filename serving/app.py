"""The gateway's FastAPI application: routes, one error handler, start-up and shutdown."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import LoraplexError, error_body
from serving import metrics
from serving.gateway import Gateway
from serving.heap import freeze_startup_heap, watch_gc
from serving.logs import RequestLog
from serving.routes import adapters, admin, inference, model_artifacts, ops
from serving.settings import ServingSettings
from serving.supervisor import EngineSupervisor

log = logging.getLogger(__name__)


def error_response(status: int, message: str, type_: str, code: str, param=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


async def on_loraplex_error(request: Request, exc: LoraplexError) -> JSONResponse:
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else None
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers)


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(400, f"invalid request at {where}: {first.get('msg', 'malformed')}",
                          "invalid_request_error", "invalid_request", param=where or None)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, str(exc.detail), "invalid_request_error", code)


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
    """Build the app; without `gateway`, one is built from the environment at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gw = gateway or Gateway.from_settings(ServingSettings())
        app.state.gateway = gw
        metrics.LABELS.per_tenant = gw.settings.metrics_adapters_per_tenant
        supervisor = EngineSupervisor(gw.settings, gw.residency) if gw.settings.engine_managed else None
        if supervisor:
            gw.supervisor = supervisor
            await supervisor.start()
        else:
            await gw.transport.open()
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

    app = FastAPI(title="loraplex gateway", lifespan=lifespan)
    app.add_middleware(RequestLog)
    app.add_exception_handler(LoraplexError, on_loraplex_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    for module in (ops, inference, adapters, admin, model_artifacts):
        app.include_router(module.router)
    return app
