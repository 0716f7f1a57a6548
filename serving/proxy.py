"""Forwarding one tenant request to the engine: quota, fair admission, adapter residency, relay.

A `Ticket` holds what one request took (an admission slot, an adapter reference) and gives each
back exactly once, whichever of stream end, error or client disconnect comes first.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from common.errors import EngineUnavailable
from registry.manifest import Manifest
from registry.tenants import Tenant
from serving import metrics
from serving.admission import Quotas
from serving.protocol import estimate_tokens, rewrite_model, sse_error, sse_json
from serving.residency import engine_lora_name
from serving.state import Gateway

log = logging.getLogger(__name__)


class Ticket:
    """One admitted request: its engine model name, its adapter hold, its token charge, its metrics."""

    def __init__(self, gw: Gateway, tenant: str, public: str, est_tokens: int, label: str, arrived: float):
        self.gw, self.tenant, self.public, self.est, self.label = gw, tenant, public, est_tokens, label
        self.engine_model, self.lora = gw.settings.base_name, None
        self.http = gw.engine.http
        self.admission = gw.admission  # the one that granted the slot gets it back (even if swapped since)
        self.arrived = arrived
        self.usage_total = 0  # tokens served, from the engine's usage
        self.events = 0  # streamed chunks with text: about one token each, the charge when usage never came
        self.granted = time.monotonic()  # tickets are made once admission granted the slot
        self.token_times: tuple[float, float] | None = None  # first and last streamed token (None: none yet)
        self.completion = 0
        self.client_usage = True  # False: the usage chunk was requested by the gateway and is not relayed
        self.done = False

    async def hold_adapter(self, manifest) -> None:
        lora = engine_lora_name(self.tenant, manifest.name, manifest.version)
        await self.gw.residency.acquire(lora, lambda: self.gw.local_adapter(manifest))
        self.engine_model = self.lora = lora

    def record_usage(self, usage: dict) -> None:
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        metrics.PROMPT_TOKENS.labels(self.tenant, self.label).inc(prompt)
        metrics.COMPLETION_TOKENS.labels(self.tenant, self.label).inc(completion)
        self.usage_total = usage.get("total_tokens") or prompt + completion
        self.completion = completion

    def relay_line(self, line: str) -> str | None:
        """One SSE line for the client (model rewritten), or None to drop it; notes usage and first token."""
        chunk = sse_json(line)
        if chunk is None:
            return line
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.record_usage(usage)
        if chunk.get("choices"):
            self.events += 1
            now = time.monotonic()
            if self.token_times is None:
                metrics.TTFT.labels(self.tenant, self.label).observe(now - self.arrived)
            self.token_times = (self.token_times[0] if self.token_times else now, now)
        elif isinstance(usage, dict) and not self.client_usage:
            return None
        return "data: " + json.dumps(rewrite_model(chunk, self.public))

    def finish(self, status: str = "ok") -> None:
        if self.done:
            return
        self.done = True
        if self.lora:
            self.gw.residency.release(self.lora)
        self.admission.release(self.tenant, self.est, self.usage_total or self.events or self.est,
                               time.monotonic() - self.granted)
        if status == "ok":
            self._observe_speed()
        metrics.REQUESTS.labels(self.tenant, self.label, status).inc()
        metrics.LATENCY.labels(self.tenant, self.label).observe(time.monotonic() - self.arrived)

    def _observe_speed(self) -> None:
        """Seconds per output token since admission (the engine's queue and prefill included: on a busy host
        the first token is where the slowdown shows), for fair admission's slowdown guard."""
        if self.token_times and self.events >= 3:
            self.admission.observe("stream", (self.token_times[1] - self.granted) / self.events)
        elif not self.token_times and self.completion >= 2:
            self.admission.observe("whole", (time.monotonic() - self.granted) / self.completion)


def _with_usage(body: dict) -> tuple[dict, bool]:
    """Ask the engine for a stream's usage (the token metrics need it); True if the client asked itself."""
    opts = body.get("stream_options")
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        return body, True  # malformed: the engine's validation answers it
    if opts.get("include_usage"):
        return body, True
    return {**body, "stream_options": {**opts, "include_usage": True}}, False


async def admit(gw: Gateway, tenant: Tenant, body: dict, resolve: bool = True) -> tuple[Ticket, Manifest | None]:
    """Quota (429), resolution (404), fair admission: the request's Ticket and its adapter's manifest (None
    for the base model, or when `resolve` is False: a model the tenant's own engine serves)."""
    arrived = time.monotonic()
    est = estimate_tokens(body)
    base = gw.settings.base_name
    gw.admission.check_quota(tenant.name, Quotas.of(tenant.quotas), est,
                             metrics.LABELS.known(tenant.name, body["model"], base))
    is_base = body["model"] == base
    manifest = None if is_base or not resolve else await gw.resolve(tenant.name, body["model"])  # 404s first
    label = metrics.BASE if is_base else metrics.LABELS.admit(tenant.name, manifest.name if manifest else body["model"])
    await gw.admission.acquire(tenant.name, est, label)
    return Ticket(gw, tenant.name, body["model"], est, label, arrived), manifest


async def forward(gw: Gateway, tenant: Tenant, body: dict, path: str) -> Response:
    dedicated = gw.dedicated_engine(tenant.name, body["model"])
    ticket, manifest = await admit(gw, tenant, body, resolve=dedicated is None)
    stream = bool(body.get("stream"))
    if stream:
        body, ticket.client_usage = _with_usage(body)
    try:
        if dedicated is not None:
            ticket.http, ticket.engine_model = dedicated, body["model"]
        elif manifest is not None:
            await ticket.hold_adapter(manifest)
        req = ticket.http.build_request("POST", path, json={**body, "model": ticket.engine_model})
        upstream = await ticket.http.send(req, stream=stream)
    except httpx.HTTPError as e:
        ticket.finish("error")
        raise EngineUnavailable(f"the engine did not answer ({type(e).__name__}); retry shortly",
                                retry_after=5) from e
    except BaseException:
        ticket.finish("error")
        raise
    if not stream or upstream.status_code != 200:
        return await _whole(upstream, ticket)
    return StreamingResponse(_relay(upstream, ticket), media_type="text/event-stream",
                             background=BackgroundTask(_finish_on_loop, ticket, "disconnected"))


async def _finish_on_loop(ticket: Ticket, status: str) -> None:
    """The response's background task: a no-op when the relay finished the ticket. A coroutine so that it
    runs on the event loop: Starlette runs a plain function in a worker thread, and admission is not
    thread-safe (a release there dispatches off the loop and cannot arm the pacing timer)."""
    ticket.finish(status)


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
    if isinstance(data.get("usage"), dict):
        ticket.record_usage(data["usage"])
    ticket.finish("ok" if upstream.status_code == 200 else str(upstream.status_code))
    return JSONResponse(rewrite_model(data, ticket.public), status_code=upstream.status_code)


def _engine_error(message: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": "engine_error"}}


async def _relay(upstream: httpx.Response, ticket: Ticket) -> AsyncIterator[str]:
    """Pass SSE events through as they come; a failure mid-stream becomes an error event."""
    status = "ok"
    try:
        async for line in upstream.aiter_lines():
            out = ticket.relay_line(line)
            if out is not None:
                yield out + "\n"
    except httpx.HTTPError as e:
        status = "error"
        log.warning("engine stream broke: %s", type(e).__name__)
        yield sse_error(f"the engine stream broke ({type(e).__name__}); retry the request", "engine_unavailable")
        yield "data: [DONE]\n\n"
    except BaseException:  # the client went away (cancellation / generator close)
        status = "disconnected"
        raise
    finally:
        await upstream.aclose()  # on client disconnect this closes the engine connection: vLLM aborts
        ticket.finish(status)
