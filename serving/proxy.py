"""Forwarding one tenant request to the engine: resolve the model, hold its adapter, relay the answer."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from common.errors import EngineUnavailable
from registry.tenants import Tenant
from serving import metrics
from serving.protocol import rewrite_model, rewrite_sse_line, sse_error
from serving.residency import engine_lora_name
from serving.state import Gateway

log = logging.getLogger(__name__)


@dataclass
class Target:
    """Where one request goes: the engine's model name, and the adapter held while it runs."""

    public: str
    engine_model: str
    lora: str | None


async def resolve_target(gw: Gateway, tenant: Tenant, model: str) -> Target:
    """Map the client's `model` to an engine name, loading the tenant's adapter if needed."""
    if model == gw.settings.base_name:
        return Target(model, gw.settings.base_name, None)
    manifest = await gw.resolve(tenant.name, model)
    lora = engine_lora_name(tenant.name, manifest.name, manifest.version)
    await gw.residency.acquire(lora, lambda: gw.local_adapter(manifest))
    return Target(model, lora, lora)


class _Release:
    """Releases the adapter exactly once, whichever of stream end or response teardown comes first."""

    def __init__(self, gw: Gateway, target: Target, tenant: str, started: float):
        self.gw, self.target, self.tenant, self.started = gw, target, tenant, started
        self.done = False

    def __call__(self, status: str = "ok") -> None:
        if self.done:
            return
        self.done = True
        if self.target.lora:
            self.gw.residency.release(self.target.lora)
        kind = "adapter" if self.target.lora else "base"
        metrics.REQUESTS.labels(self.tenant, kind, status).inc()
        metrics.LATENCY.labels(self.tenant).observe(time.monotonic() - self.started)


async def forward(gw: Gateway, tenant: Tenant, body: dict, path: str) -> Response:
    started = time.monotonic()
    target = await resolve_target(gw, tenant, body["model"])
    release = _Release(gw, target, tenant.name, started)
    payload = {**body, "model": target.engine_model}
    try:
        req = gw.engine.http.build_request("POST", path, json=payload)
        upstream = await gw.engine.http.send(req, stream=bool(body.get("stream")))
    except httpx.HTTPError as e:
        release("error")
        raise EngineUnavailable(f"the engine did not answer ({type(e).__name__}); retry shortly",
                                retry_after=5) from e
    except BaseException:
        release("error")
        raise
    if not body.get("stream") or upstream.status_code != 200:
        return await _whole(upstream, target, release)
    return StreamingResponse(_relay(upstream, target, release), media_type="text/event-stream",
                             background=BackgroundTask(release, "disconnected"))


async def _whole(upstream: httpx.Response, target: Target, release: _Release) -> Response:
    try:
        await upstream.aread()
    finally:
        await upstream.aclose()
    status = "ok" if upstream.status_code == 200 else str(upstream.status_code)
    release(status)
    try:
        data = upstream.json()
    except ValueError:
        return JSONResponse(sse_error_body(f"the engine answered HTTP {upstream.status_code}"), status_code=502)
    return JSONResponse(rewrite_model(data, target.public), status_code=upstream.status_code)


def sse_error_body(message: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": "engine_error"}}


async def _relay(upstream: httpx.Response, target: Target, release: _Release) -> AsyncIterator[str]:
    """Pass SSE events through as they come; a failure mid-stream becomes an error event."""
    status = "ok"
    try:
        async for line in upstream.aiter_lines():
            yield rewrite_sse_line(line, target.public) + "\n"
    except httpx.HTTPError as e:
        status = "error"
        log.warning("engine stream broke: %s", type(e).__name__)
        yield sse_error(f"the engine stream broke ({type(e).__name__}); retry the request", "engine_unavailable")
        yield "data: [DONE]\n\n"
    finally:
        await upstream.aclose()  # on client disconnect this closes the engine connection: vLLM aborts
        release(status)
