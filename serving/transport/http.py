"""The transport of the single-machine gateway: HTTP to the local vLLM engine, or to a tenant's own engine.

Inference goes through one aiohttp session per engine, made once on the gateway's loop: a keep-alive pool
to the engine on loopback, a C HTTP parser and no per-request set-up (measured on the 2-core host, httpx's
pure-Python HTTP/1.1 stack on anyio was a third of the gateway's CPU per request). Bodies are encoded with
orjson. `engine_timeout_s` bounds the wait for the engine's answer to start (asyncio.timeout, once a call) and
the time between two reads of it (serving/transport/deadline.py, rather than aiohttp's per-read timer). The
engine's own control calls (adapter load/unload, probes) stay on serving/engine.py's client.

An adapter is loaded into the engine on demand (serving/residency.py) and held while its request runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import aiohttp
import orjson

from common.errors import EngineUnavailable, LoraplexError
from registry.cache import ArtifactCache
from serving.engine import EngineClient
from serving.residency import AdapterResidency
from serving.settings import ServingSettings
from serving.transport.base import EngineCall, Reply, Transport
from serving.transport.deadline import ReadDeadline

log = logging.getLogger(__name__)
JSON_HEADERS = {"Content-Type": "application/json"}


def engine_session(settings: ServingSettings) -> aiohttp.ClientSession:
    """The inference session to one engine: pooled keep-alive connections, no overall deadline (a stream
    lasts as long as it generates; the read timeouts are HttpTransport's), no proxies from the environment."""
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.engine_connect_timeout_s, sock_read=None)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False, trust_env=False,
                                 skip_auto_headers=("User-Agent", "Accept-Encoding"))


class HttpReply(Reply):
    """The engine's answer; reading it fails (EngineUnavailable) once `timeout_s` pass without data."""

    def __init__(self, upstream: aiohttp.ClientResponse, timeout_s: float):
        self.upstream, self.status = upstream, upstream.status
        self._text = ""
        self.deadline = ReadDeadline(timeout_s, lambda: upstream.content.set_exception(
            aiohttp.ServerTimeoutError(f"no data from the engine for {timeout_s:g} s")))

    async def body(self) -> bytes:
        try:
            return await self.upstream.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise EngineUnavailable(f"the engine connection broke ({type(e).__name__}); retry", retry_after=5) from e

    async def json(self) -> object:
        raw = await self.body()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._text = raw[:200].decode("utf-8", "replace")
            return None

    def text(self) -> str:
        return self._text

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self.upstream.content.iter_any():
                self.deadline.touch()
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as e:
            raise EngineUnavailable(f"the engine stream broke ({type(e).__name__})") from e

    async def lines(self) -> AsyncGenerator[str, None]:
        try:
            async for line in self.upstream.content:
                self.deadline.touch()
                yield line.decode().rstrip("\r\n")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise EngineUnavailable(f"the engine stream broke ({type(e).__name__})") from e

    async def close(self) -> None:
        self.deadline.cancel()
        if self.upstream.content.at_eof():
            self.upstream.release()  # read to the end: the connection goes back to the pool
        else:
            self.upstream.close()  # closing the engine connection mid-stream makes vLLM abort


class HttpTransport(Transport):
    def __init__(self, settings: ServingSettings, engine: EngineClient, residency: AdapterResidency,
                 cache: ArtifactCache):
        self.settings, self.engine, self.residency, self.cache = settings, engine, residency, cache
        self.sessions: dict[str, aiohttp.ClientSession] = {}  # by engine URL, made on first use (on the loop)

    def _own_engine(self, tenant: str, model: str) -> str | None:
        """Separate-model mode: the URL of `tenant`'s own engine if it serves `model`, else None."""
        spec = self.settings.dedicated_engines.get(tenant)
        if not spec or spec.get("model") != model:
            return None
        return spec["url"]

    def serves_as_is(self, tenant: str, model: str) -> bool:
        return self._own_engine(tenant, model) is not None

    def _session(self, url: str) -> aiohttp.ClientSession:
        session = self.sessions.get(url)
        if session is None or session.closed:
            session = self.sessions[url] = engine_session(self.settings)
        return session

    async def send(self, call: EngineCall) -> Reply:
        url, model = self._own_engine(call.tenant, call.body["model"]), call.body["model"]
        if url is None:
            url, model = self.settings.engine_url, self.settings.base_name
            if call.lora is not None:
                await self._hold_adapter(call)
                model = call.lora
        reply = await self._post(url, call, model)
        if call.lora is not None and reply.status == 404 and await _names(reply, call.lora):
            # The engine lost the adapter the residency LRU counts as loaded (another client unloaded it,
            # or another gateway sharing the engine evicted it): load it again and send once more.
            log.warning("the engine no longer had %s: loading it again", call.lora)
            await reply.close()
            self.residency.forget(call.lora)
            await self._hold_adapter(call)
            reply = await self._post(url, call, model)
        return reply

    async def _post(self, url: str, call: EngineCall, model: str) -> HttpReply:
        body = orjson.dumps({**call.body, "model": model})
        timeout_s = self.settings.engine_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                upstream = await self._session(url).post(url.rstrip("/") + call.path, data=body,
                                                         headers=JSON_HEADERS)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise EngineUnavailable(f"the engine did not answer ({type(e).__name__}); retry shortly",
                                    retry_after=5) from e
        return HttpReply(upstream, timeout_s)

    async def _hold_adapter(self, call: EngineCall) -> None:
        """Make the call's adapter resident and hold it until the request ends. A load is shared by every
        request waiting for that adapter and leaves the engine in a known state only when it completes, so a
        client that disconnects meanwhile does not cancel it: the hold it gets is given back at once."""
        manifest, residency = call.manifest, self.residency
        if residency.try_hold(call.lora):  # resident: no load to share, no task
            call.releases.append(lambda: residency.release(call.lora))
            return
        holding = asyncio.ensure_future(residency.acquire(
            call.lora, lambda: asyncio.to_thread(self.cache.ensure_local, manifest)))
        try:
            await asyncio.shield(holding)
        except asyncio.CancelledError:
            holding.add_done_callback(
                lambda f: None if f.cancelled() or f.exception() else residency.release(call.lora))
            raise
        call.releases.append(lambda: residency.release(call.lora))

    async def probe(self) -> None:
        await self.engine.probe()

    async def open(self) -> None:
        """Adopt the adapters a previous gateway process loaded into the (already running) engine."""
        try:
            self.residency.adopt(await self.engine.loaded_loras())
        except LoraplexError:
            log.warning("engine not reachable at start-up; adapters will be loaded on demand")

    async def aclose(self) -> None:
        await self.engine.http.aclose()
        for session in self.sessions.values():
            await session.close()


async def _names(reply: HttpReply, lora: str) -> bool:
    """Whether an engine error answer is about `lora` (vLLM: "The model `<name>` does not exist.")."""
    try:
        raw = await reply.body()
    except LoraplexError:
        return False
    return f"`{lora}`".encode() in raw
