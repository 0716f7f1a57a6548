"""Forwarding one tenant request to an engine: resolution, quota, fair admission, relay, finishing.

The same for every deployment; only the sending differs (serving/transport/). A `Ticket` holds what one
request took (an admission slot, an adapter hold) and gives each back exactly once, whichever of stream
end, error or client disconnect comes first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import orjson
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.types import Receive

from common.errors import EngineUnavailable, LoraplexError, error_body
from registry.manifest import Manifest
from registry.tenants import Tenant
from serving import metrics
from serving.admission import Charge, Quotas
from serving.disconnect import RelayResponse, unless_client_leaves
from serving.gateway import Gateway
from serving.protocol import estimate_tokens, rewrite_model, sse_error
from serving.residency import engine_lora_name
from serving.sse_relay import SseRelay
from serving.transport.base import EngineCall, Reply

log = logging.getLogger(__name__)


class Ticket:
    """One admitted request: its token charge, what it holds, its metrics."""

    def __init__(self, admission, tenant: str, public: str, est_tokens: int, label: str, arrived: float,
                 charge: Charge | None = None):
        self.tenant, self.public, self.est, self.label, self.arrived = tenant, public, est_tokens, label, arrived
        self.admission = admission  # the one that granted the slot gets it back (even if swapped since)
        self.charge = charge  # the estimate in the tenant's tokens-per-minute window, corrected by the usage
        self.releases: list[Callable[[], None]] = []  # what the transport holds for this request
        self.usage_total = 0  # tokens served, from the engine's usage
        self.events = 0  # streamed chunks with text: about one token each, the charge when usage never came
        self.granted = time.monotonic()  # tickets are made once admission granted the slot
        self.token_times: tuple[float, float] | None = None  # first and last streamed token (None: none yet)
        self.completion = 0
        self.client_usage = True  # False: the usage chunk was requested by the gateway and is not relayed
        self.on_first_token: Callable[[], None] | None = None  # the residency tiers' cold-start sample
        self.done = False

    def record_usage(self, usage: dict) -> None:
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        metrics.PROMPT_TOKENS.labels(metrics.LABELS.tenant(self.tenant), self.label).inc(prompt)
        metrics.COMPLETION_TOKENS.labels(metrics.LABELS.tenant(self.tenant), self.label).inc(completion)
        self.usage_total = usage.get("total_tokens") or prompt + completion
        self.completion = completion

    def note_events(self, events: int) -> None:
        """The relay has passed `events` chunks with a choice so far: time the first and the last token."""
        if events <= self.events:
            return
        self.events = events
        now = time.monotonic()
        if self.token_times is None:
            metrics.TTFT.labels(metrics.LABELS.tenant(self.tenant), self.label).observe(now - self.arrived)
            if self.on_first_token is not None:
                self.on_first_token()
        self.token_times = (self.token_times[0] if self.token_times else now, now)

    def finish(self, status: str = "ok") -> None:
        if self.done:
            return
        self.done = True
        for release in self.releases:
            release()
        if self.usage_total and self.charge is not None:  # the engine said what it served: that is the charge
            self.charge.settle(self.usage_total)
        self.admission.release(self.tenant, self.est, self.usage_total or self.events or self.est,
                               time.monotonic() - self.granted)
        if status == "ok":
            self._observe_speed()
        metrics.REQUESTS.labels(metrics.LABELS.tenant(self.tenant), self.label, status).inc()
        metrics.LATENCY.labels(metrics.LABELS.tenant(self.tenant), self.label).observe(time.monotonic() - self.arrived)

    def _observe_speed(self) -> None:
        """Seconds per output token since admission (the engine's queue and prefill included: on a busy host
        the first token is where the slowdown shows), for fair admission's slowdown guard."""
        if self.token_times and self.events >= 3:  # a chunk may carry several tokens (stream_interval)
            tokens = max(self.completion, self.events)
            self.admission.observe("stream", (self.token_times[1] - self.granted) / tokens)
        elif not self.token_times and self.completion >= 2:
            self.admission.observe("whole", (time.monotonic() - self.granted) / self.completion)


def _streamed(body: dict, interval: int) -> tuple[dict, bool]:
    """A stream's body for the engine: its usage asked for (`_with_usage`) and at least `interval` tokens a
    chunk (LORAPLEX_STREAM_INTERVAL; a client may ask for more)."""
    body, client_usage = _with_usage(body)
    asked = body.get("stream_interval")
    if interval > 1 and (not isinstance(asked, int) or asked < interval):
        body = {**body, "stream_interval": interval}
    return body, client_usage


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
    """Resolution (404), quota (429), fair admission (503): the request's Ticket and its adapter's manifest
    (None for the base model, or when `resolve` is False: a model the tenant's own engine serves).

    Quota is charged only for a request that authenticated (the route's dependency) and resolved, so that a
    mistyped model name costs nothing; a request the fair queue refuses keeps its place in requests per
    minute (a flood of retries stays limited) but gives its tokens back: the engine served none."""
    arrived = time.monotonic()
    metrics.LABELS.count(tenant.name)  # the busiest tenants get series of their own
    est = estimate_tokens(body)
    base = gw.settings.base_name
    is_base = body["model"] == base
    manifest = None if is_base or not resolve else await gw.resolve(tenant.name, body["model"])
    charge = gw.admission.check_quota(tenant.name, Quotas.of(tenant.quotas), est,
                                      metrics.LABELS.known(tenant.name, body["model"], base))
    label = metrics.BASE if is_base else metrics.LABELS.admit(tenant.name, manifest.name if manifest else body["model"])
    tiers = getattr(gw, "tiers", None)  # None: no local engine tiers (Ray), or a test's stand-in gateway
    if manifest is not None and tiers is not None:
        tiers.prefetch(manifest, queued=gw.admission.queued > 0)  # loaded while it waits for a slot
    try:
        await gw.admission.acquire(tenant.name, est, label)
    except BaseException as e:  # refused (queue full, draining) or the client left while waiting
        charge.settle(0)
        if isinstance(e, asyncio.CancelledError):
            metrics.REJECTED.labels(metrics.LABELS.tenant(tenant.name), label, "499", "disconnected").inc()
        raise
    return Ticket(gw.admission, tenant.name, body["model"], est, label, arrived, charge), manifest


async def forward(gw: Gateway, tenant: Tenant, body: dict, path: str, receive: Receive | None = None) -> Response:
    """The inference routes' one call: admit, send through the gateway's transport, relay the answer. With the
    request's ASGI `receive`, a client that disconnects before the response starts cancels it (queued: it
    leaves the queue; admitted: the engine request is aborted), see serving/disconnect.py."""
    return await unless_client_leaves(receive, _forward(gw, tenant, body, path))


async def _forward(gw: Gateway, tenant: Tenant, body: dict, path: str) -> Response:
    transport = gw.transport
    ticket, manifest = await admit(gw, tenant, body, resolve=not transport.serves_as_is(tenant.name, body["model"]))
    stream = bool(body.get("stream"))
    if stream:
        body, ticket.client_usage = _streamed(body, gw.settings.stream_interval)
    lora = engine_lora_name(tenant.name, manifest.name, manifest.version) if manifest else None
    tiers = getattr(gw, "tiers", None)
    if lora is not None and tiers is not None:
        ticket.on_first_token = lambda: tiers.first_token(lora, ticket.arrived)
    call = EngineCall(tenant.name, path, body, stream, manifest, lora, ticket.releases)
    try:
        reply = await transport.send(call)
    except asyncio.CancelledError:
        ticket.finish("disconnected")
        raise
    except BaseException as e:
        ticket.finish("error")
        _note_failure(gw, e)
        raise
    if not stream or reply.status != 200:
        return await _whole(gw, reply, ticket)
    relay = SseRelay(lora, ticket.public, drop_usage=not ticket.client_usage)
    return RelayResponse(_relay(gw, reply, ticket, relay), media_type="text/event-stream", headers=reply.headers,
                         background=BackgroundTask(_abandon, reply, ticket))


def _note_failure(gw: Gateway, e: BaseException) -> None:
    if isinstance(e, EngineUnavailable):
        gw.engine_failed()  # the next /ready checks the engine again


async def _whole(gw: Gateway, reply: Reply, ticket: Ticket) -> Response:
    try:
        data = await reply.json()
    except BaseException as e:
        ticket.finish("error")
        _note_failure(gw, e)
        raise
    finally:
        await reply.close()
    if not isinstance(data, dict):
        ticket.finish("error")
        text = reply.text()
        message = f"the engine answered HTTP {reply.status}" + (f": {text}" if text else "")
        return JSONResponse(error_body(message, code="engine_error"), headers=reply.headers,
                            status_code=502 if reply.status == 200 else reply.status)
    if isinstance(data.get("usage"), dict):
        ticket.record_usage(data["usage"])
    ticket.finish("ok" if reply.status == 200 else str(reply.status))
    return Response(orjson.dumps(rewrite_model(data, ticket.public)), status_code=reply.status,
                    headers=reply.headers, media_type="application/json")


async def _relay(gw: Gateway, reply: Reply, ticket: Ticket, relay: SseRelay) -> AsyncIterator[bytes | str]:
    """Pass SSE events through as they come, as bytes (serving/sse_relay.py); a failure mid-stream becomes an
    error event."""
    status = "ok"
    chunks = reply.chunks()
    try:
        async for data in chunks:
            out = relay.feed(data)
            if out:
                ticket.note_events(relay.events)
                yield out
        out = relay.flush()
        if out:
            ticket.note_events(relay.events)
            yield out
    except LoraplexError as e:
        status = "error"
        log.warning("engine stream broke: %s", e.message)
        _note_failure(gw, e)
        yield sse_error(f"{e.message}; retry the request", "engine_unavailable")
        yield "data: [DONE]\n\n"
    except BaseException:  # the client went away (cancellation / generator close)
        status = "disconnected"
        raise
    finally:
        await chunks.aclose()
        await reply.close()  # on client disconnect this closes the engine stream: vLLM aborts
        if relay.usage is not None:  # the engine's count, from its last usage chunk
            ticket.record_usage(relay.usage)
        ticket.finish(status)


async def _abandon(reply: Reply, ticket: Ticket) -> None:
    """The response's background task, whatever happened: a no-op when the relay finished, else (the client
    left before the stream started) the engine side is closed too. A coroutine so that it runs on the event
    loop: Starlette runs a plain function in a worker thread, and admission is not thread-safe (a release
    there dispatches off the loop and cannot arm the pacing timer)."""
    await reply.close()
    ticket.finish("disconnected")
