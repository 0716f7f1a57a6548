"""The transport of the single-machine gateway: httpx to the local vLLM engine, or to a tenant's own engine.

An adapter is loaded into the engine on demand (serving/residency.py) and held while its request runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import httpx

from common.errors import EngineUnavailable, LoraplexError
from registry.cache import ArtifactCache
from serving.engine import EngineClient
from serving.residency import AdapterResidency
from serving.settings import ServingSettings
from serving.transport.base import EngineCall, Reply, Transport

log = logging.getLogger(__name__)


class HttpReply(Reply):
    def __init__(self, upstream: httpx.Response):
        self.upstream, self.status = upstream, upstream.status_code

    async def json(self) -> object:
        try:
            await self.upstream.aread()
        except httpx.HTTPError as e:
            raise EngineUnavailable(f"the engine connection broke ({type(e).__name__}); retry", retry_after=5) from e
        try:
            return self.upstream.json()
        except ValueError:
            return None

    async def lines(self) -> AsyncGenerator[str, None]:
        try:
            async for line in self.upstream.aiter_lines():
                yield line
        except httpx.HTTPError as e:
            raise EngineUnavailable(f"the engine stream broke ({type(e).__name__})") from e

    async def close(self) -> None:
        await self.upstream.aclose()  # closing the engine connection mid-stream makes vLLM abort


class HttpTransport(Transport):
    def __init__(self, settings: ServingSettings, engine: EngineClient, residency: AdapterResidency,
                 cache: ArtifactCache):
        self.settings, self.engine, self.residency, self.cache = settings, engine, residency, cache
        self.own_engines: dict[str, httpx.AsyncClient] = {}  # by URL: tenants' own engines

    def _own_engine(self, tenant: str, model: str) -> httpx.AsyncClient | None:
        """Separate-model mode: the client of `tenant`'s own engine if it serves `model`, else None."""
        spec = self.settings.dedicated_engines.get(tenant)
        if not spec or spec.get("model") != model:
            return None
        url = spec["url"]
        if url not in self.own_engines:
            self.own_engines[url] = httpx.AsyncClient(base_url=url, timeout=self.engine.http.timeout)
        return self.own_engines[url]

    def serves_as_is(self, tenant: str, model: str) -> bool:
        return self._own_engine(tenant, model) is not None

    async def send(self, call: EngineCall) -> Reply:
        http, model = self._own_engine(call.tenant, call.body["model"]), call.body["model"]
        if http is None:
            http, model = self.engine.http, self.settings.base_name
            if call.lora is not None:
                await self._hold_adapter(call)
                model = call.lora
        reply = await self._post(http, call, model)
        if call.lora is not None and reply.status == 404 and await _names(reply, call.lora):
            # The engine lost the adapter the residency LRU counts as loaded (another client unloaded it,
            # or another gateway sharing the engine evicted it): load it again and send once more.
            log.warning("the engine no longer had %s: loading it again", call.lora)
            await reply.close()
            self.residency.forget(call.lora)
            await self._hold_adapter(call)
            reply = await self._post(http, call, model)
        return reply

    async def _post(self, http: httpx.AsyncClient, call: EngineCall, model: str) -> HttpReply:
        try:
            req = http.build_request("POST", call.path, json={**call.body, "model": model})
            return HttpReply(await http.send(req, stream=call.stream))
        except httpx.HTTPError as e:
            raise EngineUnavailable(f"the engine did not answer ({type(e).__name__}); retry shortly",
                                    retry_after=5) from e

    async def _hold_adapter(self, call: EngineCall) -> None:
        """Make the call's adapter resident and hold it until the request ends. A load is shared by every
        request waiting for that adapter and leaves the engine in a known state only when it completes, so a
        client that disconnects meanwhile does not cancel it: the hold it gets is given back at once."""
        manifest, residency = call.manifest, self.residency
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
        for http in (self.engine.http, *self.own_engines.values()):
            await http.aclose()


async def _names(reply: HttpReply, lora: str) -> bool:
    """Whether an engine error answer is about `lora` (vLLM: "The model `<name>` does not exist.")."""
    try:
        await reply.upstream.aread()
    except httpx.HTTPError:
        return False
    return f"`{lora}`" in reply.upstream.text

