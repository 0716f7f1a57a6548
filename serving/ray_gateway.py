"""The gateway as Ray Serve's ingress: the same FastAPI app (auth, quotas, fair admission, resolution,
adapters and admin routes), with inference sent to the engine deployment through a DeploymentHandle
instead of HTTP to one local engine.

The adapter (`lpx:<tenant>:<name>:<version>`) is the request's multiplexed model id, so Ray's router
prefers a replica that already holds it. A request whose replica turns out to have lost its engine
before the request reached it is sent again (to any replica) for up to `retry_window_s`; a request
that was already running when its engine died fails with a clean 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from common.errors import EngineUnavailable, LoraplexError
from registry.settings import RegistrySettings
from registry.tenants import Tenant
from serving import metrics
from serving.admission import Quotas
from serving.app import create_app
from serving.deps import GatewayDep, TenantDep
from serving.protocol import (CHAT_FIELDS, COMPLETION_FIELDS, check_body, estimate_tokens, read_json,
                              rewrite_model, rewrite_sse_line, sse_error)
from serving.ray_engine import EngineDown
from serving.ray_settings import RaySettings
from serving.residency import engine_lora_name
from serving.settings import ServingSettings
from serving.state import Gateway

log = logging.getLogger("loraplex.ray")

INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")
ROUTING_HEADERS = ("replica", "resident", "loads")


class _NoLocalEngine:
    """Stands in for the single-machine EngineClient: in Ray mode the gateway owns no engine."""

    http = None

    async def loaded_loras(self) -> set[str]:
        return set()

    async def aclose(self) -> None:
        return None


@dataclass
class RayGateway(Gateway):
    engines: Any = None  # DeploymentHandle of the engine deployment
    ray: RaySettings | None = None

    async def readiness(self) -> tuple[bool, dict]:
        """S3 answers and some engine replica answers a real generate; reused for `ready_cache_s`."""
        at, ok, detail = self._ready
        if time.monotonic() - at < self.settings.ready_cache_s:
            return ok, detail
        detail = {"engine": "ok", "storage": "ok"}
        try:
            await asyncio.to_thread(self.store.ping)
        except LoraplexError as e:
            detail["storage"] = e.message
        except Exception as e:  # e.g. a missing bucket: not ready, never a crash
            detail["storage"] = f"{type(e).__name__}: {e} (does bucket {self.store.bucket!r} exist?)"
        try:
            await asyncio.wait_for(self.engines.probe.remote(), timeout=15)
        except Exception as e:
            cause = _cause(e)
            detail["engine"] = cause.message if isinstance(cause, LoraplexError) else \
                f"no engine replica answered a probe ({type(cause).__name__})"
        ok = detail == {"engine": "ok", "storage": "ok"}
        self._ready = (time.monotonic(), ok, detail)
        return ok, detail


def _cause(exc: BaseException) -> BaseException:
    """The replica-side exception behind a Ray error (RayTaskError keeps it as `.cause`)."""
    seen = 0
    while getattr(exc, "cause", None) is not None and seen < 5:
        exc, seen = exc.cause, seen + 1
    return exc


def _as_loraplex(exc: BaseException) -> LoraplexError:
    cause = _cause(exc)
    if cause is exc and isinstance(exc, LoraplexError):
        return exc  # raised here, not by a replica
    if isinstance(cause, LoraplexError):
        # rebuilt as the plain class: Ray raises a RayTaskError(<class>) hybrid, and pickling drops retry_after
        err = type(cause).__new__(type(cause))
        LoraplexError.__init__(err, cause.message if hasattr(cause, "message") else str(cause),
                               param=getattr(cause, "param", None),
                               retry_after=getattr(cause, "retry_after", None) or
                               (5 if isinstance(cause, EngineUnavailable) else None))
        return err
    return EngineUnavailable(f"the engine replica failed ({type(cause).__name__}); retry shortly", retry_after=5)


class _Request:
    """One admitted request: gives its admission slot back exactly once and records its metrics."""

    def __init__(self, gw: RayGateway, tenant: str, public: str, est: int, label: str, arrived: float):
        self.gw, self.tenant, self.public, self.est, self.label, self.arrived = gw, tenant, public, est, label, arrived
        self.tokens = 0
        self.done = False

    def finish(self, status: str) -> None:
        if self.done:
            return
        self.done = True
        self.gw.admission.release(self.tenant, self.est, self.tokens or self.est)
        _observe(self.tenant, self.label, status, time.monotonic() - self.arrived)


def _observe(tenant: str, label: str, status: str, seconds: float) -> None:
    metrics.REQUESTS.labels(tenant, label, status).inc()
    metrics.LATENCY.labels(tenant, label).observe(seconds)


def _label(tenant: str, manifest, base: bool) -> str:
    """The bounded `adapter` label of the gateway's metrics."""
    return metrics.BASE if base else metrics.LABELS.admit(tenant, manifest.name)


async def forward_ray(gw: RayGateway, tenant: Tenant, body: dict, path: str) -> Response:
    arrived = time.monotonic()
    est = estimate_tokens(body)
    gw.admission.check_quota(tenant.name, Quotas.of(tenant.quotas), est)
    is_base = body["model"] == gw.settings.base_name
    manifest = None if is_base else await gw.resolve(tenant.name, body["model"])  # 404s first
    label = _label(tenant.name, manifest, is_base)
    await gw.admission.acquire(tenant.name, est)
    req = _Request(gw, tenant.name, body["model"], est, label, arrived)
    lora = engine_lora_name(tenant.name, manifest.name, manifest.version) if manifest else None
    stream = bool(body.get("stream"))
    try:
        if stream:
            gen, first = await _call(gw, path, body, lora, stream=True)
        else:
            result = await _call(gw, path, body, lora, stream=False)
    except asyncio.CancelledError:
        req.finish("disconnected")
        raise
    except Exception as e:
        req.finish("error")
        raise _as_loraplex(e) from None
    headers = _routing_headers(gw, first if stream else result)
    if not stream or first.get("status") != 200:
        return _whole(req, first if stream else result, headers)
    return StreamingResponse(_relay(gen, req), media_type="text/event-stream", headers=headers)


async def _call(gw: RayGateway, path: str, body: dict, lora: str | None, stream: bool):
    """One engine call through the handle, sent again while replicas report a dead engine before starting."""
    affinity = gw.ray.routing == "affinity"
    deadline = time.monotonic() + gw.ray.retry_window_s
    attempt = 0
    while True:
        options: dict = {"stream": stream}
        if lora and affinity and attempt == 0:
            options["multiplexed_model_id"] = lora
        handle = gw.engines.options(**options)
        try:
            if stream:
                gen = handle.generate_stream.remote(path, body, lora)
                try:
                    return gen, await gen.__anext__()
                except BaseException:
                    gen.cancel()
                    raise
            return await handle.generate.remote(path, body, lora)
        except Exception as e:
            if not isinstance(_cause(e), EngineDown) or time.monotonic() >= deadline:
                raise
            # a replica whose engine died before this request reached it: any other replica will do
            attempt += 1
            log.warning("engine replica down, retrying elsewhere: %s", _cause(e))
            await asyncio.sleep(min(0.25 * attempt, 1.0))


def _routing_headers(gw: RayGateway, meta: dict) -> dict | None:
    if not gw.ray.routing_headers:
        return None
    return {f"x-loraplex-{k}": str(meta.get(k)).lower() for k in ROUTING_HEADERS}


def _whole(req: _Request, result: dict, headers: dict | None) -> Response:
    status = result.get("status", 502)
    data = result.get("body")
    if not isinstance(data, dict):
        req.finish("error")
        return JSONResponse({"error": {"message": f"the engine answered HTTP {status}: {result.get('text', '')[:200]}",
                                       "type": "server_error", "param": None, "code": "engine_error"}},
                            status_code=502 if status == 200 else status, headers=headers)
    req.tokens = (data.get("usage") or {}).get("total_tokens") or 0
    req.finish("ok" if status == 200 else str(status))
    return JSONResponse(rewrite_model(data, req.public), status_code=status, headers=headers)


async def _relay(gen, req: _Request) -> AsyncIterator[str]:
    status = "ok"
    try:
        async for line in gen:
            if line.startswith("data:"):
                req.tokens += 1  # about one token per event
            yield rewrite_sse_line(line, req.public) + "\n"
    except Exception as e:
        status = "error"
        err = _as_loraplex(e)
        log.warning("engine stream broke: %s", err.message)
        yield sse_error(f"{err.message}; retry the request", "engine_unavailable")
        yield "data: [DONE]\n\n"
    finally:
        gen.cancel()  # the client left (or we are done): the replica closes its engine stream, vLLM aborts
        req.finish(status if status != "ok" or req.tokens else "disconnected")


router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request, tenant: TenantDep, gw: GatewayDep):
    body = check_body(read_json(await request.body()), COMPLETION_FIELDS, "prompt")
    return await forward_ray(gw, tenant, body, "/v1/completions")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, tenant: TenantDep, gw: GatewayDep):
    body = check_body(read_json(await request.body()), CHAT_FIELDS, "messages")
    return await forward_ray(gw, tenant, body, "/v1/chat/completions")


def create_ray_app(gw: RayGateway) -> FastAPI:
    """The single-machine app with its inference routes sent through Ray instead of a local engine."""
    app = create_app(gw)
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in INFERENCE_PATHS]
    app.include_router(router)
    return app


@serve.ingress()
class GatewayIngress:
    """Ray Serve's HTTP ingress: one gateway per replica, all sharing S3 (tenants, keys, adapters)."""

    def __init__(self, engines, ray_settings: dict):
        settings = ServingSettings().model_copy(update={"engine_managed": False})
        gw = RayGateway.from_settings(settings, RegistrySettings())
        gw.engine = _NoLocalEngine()
        gw.engines, gw.ray = engines, RaySettings(**ray_settings)
        self.gateway = gw

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_ray_app(self.gateway)
