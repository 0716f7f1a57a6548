"""Forwarding one tenant request to the engine: quota, fair admission, adapter residency, relay.

A `Ticket` holds what one request took (an admission slot, an adapter reference) and gives each
back exactly once, whichever of stream end, error or client disconnect comes first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from common.errors import EngineUnavailable
from registry.tenants import Tenant
from serving import metrics
from serving.admission import Quotas
from serving.protocol import estimate_tokens, rewrite_model, rewrite_sse_line, sse_error
from serving.residency import engine_lora_name
from serving.state import Gateway

log = logging.getLogger(__name__)


class Ticket:
    """One admitted request: its engine model name, its adapter hold, its token charge."""

    def __init__(self, gw: Gateway, tenant: str, public: str, est_tokens: int):
        self.gw, self.tenant, self.public, self.est = gw, tenant, public, est_tokens
        self.engine_model, self.lora = gw.settings.base_name, None
        self.http = gw.engine.http
        self.started = time.monotonic()
        self.tokens = 0
        self.done = False

    async def hold_adapter(self, manifest) -> None:
        lora = engine_lora_name(self.tenant, manifest.name, manifest.version)
        await self.gw.residency.acquire(lora, lambda: self.gw.local_adapter(manifest))
        self.engine_model = self.lora = lora

    def finish(self, status: str = "ok") -> None:
        if self.done:
            return
        self.done = True
        if self.lora:
            self.gw.residency.release(self.lora)
        self.gw.admission.release(self.tenant, self.est, self.tokens or self.est)
        metrics.REQUESTS.labels(self.tenant, "adapter" if self.lora else "base", status).inc()
        metrics.LATENCY.labels(self.tenant).observe(time.monotonic() - self.started)


async def forward(gw: Gateway, tenant: Tenant, body: dict, path: str) -> Response:
    est = estimate_tokens(body)
    gw.admission.check_quota(tenant.name, Quotas.of(tenant.quotas), est)
    dedicated = gw.dedicated_engine(tenant.name, body["model"])
    is_base = body["model"] == gw.settings.base_name
    manifest = None if is_base or dedicated else await gw.resolve(tenant.name, body["model"])  # 404s first
    await gw.admission.acquire(tenant.name, est)
    ticket = Ticket(gw, tenant.name, body["model"], est)
    try:
        if dedicated is not None:
            ticket.http, ticket.engine_model = dedicated, body["model"]
        elif manifest is not None:
            await ticket.hold_adapter(manifest)
        req = ticket.http.build_request("POST", path, json={**body, "model": ticket.engine_model})
        upstream = await ticket.http.send(req, stream=bool(body.get("stream")))
    except httpx.HTTPError as e:
        ticket.finish("error")
        raise EngineUnavailable(f"the engine did not answer ({type(e).__name__}); retry shortly",
                                retry_after=5) from e
    except BaseException:
        ticket.finish("error")
        raise
    if not body.get("stream") or upstream.status_code != 200:
        return await _whole(upstream, ticket)
    return StreamingResponse(_relay(upstream, ticket), media_type="text/event-stream",
                             background=BackgroundTask(ticket.finish, "disconnected"))


async def _whole(upstream: httpx.Response, ticket: Ticket) -> Response:
    try:
        await upstream.aread()
    except httpx.HTTPError as e:
        ticket.finish("error")
        raise EngineUnavailable(f"the engine connection broke ({type(e).__name__}); retry", retry_after=5) from e
    finally:
        await upstream.aclose()
    try:
        data = upstream.json()
    except ValueError:
        ticket.finish("error")
        return JSONResponse(_engine_error(f"the engine answered HTTP {upstream.status_code}"), status_code=502)
    ticket.tokens = (data.get("usage") or {}).get("total_tokens") or 0
    ticket.finish("ok" if upstream.status_code == 200 else str(upstream.status_code))
    return JSONResponse(rewrite_model(data, ticket.public), status_code=upstream.status_code)


def _engine_error(message: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": "engine_error"}}


async def _relay(upstream: httpx.Response, ticket: Ticket) -> AsyncIterator[str]:
    """Pass SSE events through as they come; a failure mid-stream becomes an error event."""
    status = "ok"
    try:
        async for line in upstream.aiter_lines():
            if line.startswith("data:"):
                ticket.tokens += 1  # vLLM streams about one token per event
            yield rewrite_sse_line(line, ticket.public) + "\n"
    except httpx.HTTPError as e:
        status = "error"
        log.warning("engine stream broke: %s", type(e).__name__)
        yield sse_error(f"the engine stream broke ({type(e).__name__}); retry the request", "engine_unavailable")
        yield "data: [DONE]\n\n"
    finally:
        await upstream.aclose()  # on client disconnect this closes the engine connection: vLLM aborts
        ticket.finish(status)
