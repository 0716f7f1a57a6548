"""The transport of the Ray Serve gateway: calls to the engine deployment through its DeploymentHandle.

The adapter (`lpx:<tenant>:<name>:<version>`) is the request's multiplexed model id, so Ray's router
prefers a replica that already holds it. A request whose replica turns out to have lost its engine
before the request reached it is sent again (to any replica) for up to `retry_window_s`; a request
that was already running when its engine died fails with a clean 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator

from common.errors import EngineUnavailable, LoraplexError
from serving.ray_engine import EngineDown
from serving.ray_settings import RaySettings
from serving.transport.base import EngineCall, Reply, Transport

log = logging.getLogger("loraplex.ray")

ROUTING_HEADERS = ("replica", "resident", "loads")


def _cause(exc: BaseException) -> BaseException:
    """The replica-side exception behind a Ray error (RayTaskError keeps it as `.cause`)."""
    seen = 0
    while getattr(exc, "cause", None) is not None and seen < 5:
        exc, seen = exc.cause, seen + 1
    return exc


def as_loraplex(exc: BaseException) -> LoraplexError:
    """A replica's LoraplexError as the plain class it was; any other failure a retryable 503."""
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


class RayReply(Reply):
    """A replica's answer: `{"status", "body" | "text", **routing metadata}`, then (streams) the SSE lines."""

    def __init__(self, meta: dict, headers: dict | None, stream=None):
        self.meta, self.headers, self.stream = meta, headers, stream
        self.status = meta.get("status", 502)

    async def json(self) -> object:
        body = self.meta.get("body")
        return body if isinstance(body, dict) else None

    def text(self) -> str:
        return self.meta.get("text", "")[:200]

    async def lines(self) -> AsyncGenerator[str, None]:
        try:
            async for line in self.stream:
                yield line
        except Exception as e:
            raise as_loraplex(e) from None

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()  # the replica closes its engine stream: vLLM aborts


class RayTransport(Transport):
    def __init__(self, handle, settings: RaySettings):
        self.handle, self.settings = handle, settings  # DeploymentHandle of the engine deployment

    async def send(self, call: EngineCall) -> Reply:
        try:
            if call.stream:
                gen, first = await self.call(call.path, call.body, call.lora, stream=True)
                return RayReply(first, self._headers(first), gen)
            result = await self.call(call.path, call.body, call.lora, stream=False)
            return RayReply(result, self._headers(result))
        except Exception as e:
            raise as_loraplex(e) from None

    async def call(self, path: str, body: dict, lora: str | None, stream: bool):
        """One engine call through the handle, sent again while replicas report a dead engine before starting:
        the result dict, or (stream) the replica's generator and its first item."""
        affinity = self.settings.routing == "affinity"
        deadline = time.monotonic() + self.settings.retry_window_s
        attempt = 0
        while True:
            options: dict = {"stream": stream}
            if lora and affinity and attempt == 0:
                options["multiplexed_model_id"] = lora
            handle = self.handle.options(**options)
            try:
                if stream:
                    gen = handle.generate_stream.remote(path, body, lora)
                    try:
                        return gen, await gen.__anext__()
                    except BaseException:
                        gen.cancel()
                        raise
                response = handle.generate.remote(path, body, lora)
                try:
                    return await response
                except asyncio.CancelledError:
                    response.cancel()  # the client left: the replica's call is cancelled, closing its engine request
                    raise
            except Exception as e:
                if not isinstance(_cause(e), EngineDown) or time.monotonic() >= deadline:
                    raise
                # a replica whose engine died before this request reached it: any other replica will do
                attempt += 1
                log.warning("engine replica down, retrying elsewhere: %s", _cause(e))
                await asyncio.sleep(min(0.25 * attempt, 1.0))

    def _headers(self, meta: dict) -> dict | None:
        if not self.settings.routing_headers:
            return None
        return {f"x-loraplex-{k}": str(meta.get(k)).lower() for k in ROUTING_HEADERS}

    async def probe(self) -> None:
        """A real generate on some engine replica."""
        try:
            await asyncio.wait_for(self.handle.probe.remote(), timeout=15)
        except Exception as e:
            cause = _cause(e)
            if isinstance(cause, LoraplexError):
                raise as_loraplex(e) from None
            raise EngineUnavailable(f"no engine replica answered a probe ({type(cause).__name__})") from None
