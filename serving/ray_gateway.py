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

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.background import BackgroundTask

from common.errors import EngineUnavailable, LoraplexError
from registry.settings import RegistrySettings
from registry.tenants import Tenant
from serving import metrics
from serving.app import create_app
from serving.protocol import rewrite_model, sse_error
from serving.proxy import Ticket, _engine_error, _with_usage, admit
from serving.ray_engine import EngineDown
from serving.ray_settings import RaySettings
from serving.residency import engine_lora_name
from serving.settings import ServingSettings
from serving.state import Gateway

log = logging.getLogger("loraplex.ray")

ROUTING_HEADERS = ("replica", "resident", "loads")


class RayEngines:
    """Stands in for the single-machine EngineClient: the gateway owns no engine, and its readiness probe
    is a real generate on some engine replica."""

    http = None

    def __init__(self, handle):
        self.handle = handle

    async def probe(self) -> None:
        try:
            await asyncio.wait_for(self.handle.probe.remote(), timeout=15)
        except Exception as e:
            cause = _cause(e)
            if isinstance(cause, LoraplexError):
                raise _as_loraplex(e) from None
            raise EngineUnavailable(f"no engine replica answered a probe ({type(cause).__name__})") from None

    async def loaded_loras(self) -> set[str]:
        return set()

    async def aclose(self) -> None:
        return None


@dataclass
class RayGateway(Gateway):
    engines: Any = None  # DeploymentHandle of the engine deployment
    ray: RaySettings | None = None

    async def forward(self, tenant: Tenant, body: dict, path: str) -> Response:
        """The app's inference routes land here: the request goes to an engine replica through Ray."""
        return await forward_ray(self, tenant, body, path)


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


async def forward_ray(gw: RayGateway, tenant: Tenant, body: dict, path: str) -> Response:
    """serving/proxy.py's `forward` with Ray as the transport: the same admission, Ticket (token charge,
    metrics) and SSE relay; the engine call goes through the handle, the adapter as multiplexed model id."""
    ticket, manifest = await admit(gw, tenant, body)
    lora = engine_lora_name(tenant.name, manifest.name, manifest.version) if manifest else None
    stream = bool(body.get("stream"))
    if stream:
        body, ticket.client_usage = _with_usage(body)
    try:
        if stream:
            gen, first = await _call(gw, path, body, lora, stream=True)
        else:
            result = await _call(gw, path, body, lora, stream=False)
    except asyncio.CancelledError:
        ticket.finish("disconnected")
        raise
    except Exception as e:
        ticket.finish("error")
        raise _as_loraplex(e) from None
    headers = _routing_headers(gw, first if stream else result)
    if not stream or first.get("status") != 200:
        return _whole(ticket, first if stream else result, headers)
    return StreamingResponse(_relay(gen, ticket), media_type="text/event-stream", headers=headers,
                             background=BackgroundTask(_abandon, gen, ticket))


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


def _whole(ticket: Ticket, result: dict, headers: dict | None) -> Response:
    status = result.get("status", 502)
    data = result.get("body")
    if not isinstance(data, dict):
        ticket.finish("error")
        return JSONResponse(_engine_error(f"the engine answered HTTP {status}: {result.get('text', '')[:200]}"),
                            status_code=502 if status == 200 else status, headers=headers)
    if isinstance(data.get("usage"), dict):
        ticket.record_usage(data["usage"])
    ticket.finish("ok" if status == 200 else str(status))
    return JSONResponse(rewrite_model(data, ticket.public), status_code=status, headers=headers)


async def _relay(gen, ticket: Ticket) -> AsyncIterator[str]:
    """proxy._relay over the replica's stream: a failure mid-stream becomes an error event."""
    status = "ok"
    try:
        async for line in gen:
            out = ticket.relay_line(line)
            if out is not None:
                yield out + "\n"
    except Exception as e:
        status = "error"
        err = _as_loraplex(e)
        log.warning("engine stream broke: %s", err.message)
        yield sse_error(f"{err.message}; retry the request", "engine_unavailable")
        yield "data: [DONE]\n\n"
    except BaseException:  # the client went away (cancellation / generator close)
        status = "disconnected"
        raise
    finally:
        gen.cancel()  # the replica closes its engine stream: vLLM aborts
        ticket.finish(status)


async def _abandon(gen, ticket: Ticket) -> None:
    """After the response, whatever happened: a stream the client left before it started is cancelled too.
    A coroutine, so that Starlette runs it on the event loop (admission is not thread-safe)."""
    gen.cancel()
    ticket.finish("disconnected")


@serve.ingress()
class GatewayIngress:
    """Ray Serve's HTTP ingress: one gateway per replica, all sharing S3 (tenants, keys, adapters)."""

    def __init__(self, engines, ray_settings: dict):
        settings = ServingSettings().model_copy(update={"engine_managed": False})
        gw = RayGateway.from_settings(settings, RegistrySettings())
        gw.engine = RayEngines(engines)
        gw.engines, gw.ray = engines, RaySettings(**ray_settings)
        self.gateway = gw

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.gateway)  # its inference routes call RayGateway.forward
