"""An open-loop traffic driver over the public HTTP API: Poisson arrivals per tenant, streaming, timings.

Open loop (arrivals do not wait for answers) is what exposes queueing: a closed loop slows its own
arrivals down when the server is slow and hides the latency a flood inflicts on others.

The client is aiohttp, not httpx: a flooding tenant keeps hundreds of streams open, and on a host the
server shares, the load generator's CPU is taken from the server. Measured with 400 streams at 20/s
(~100 open at once): httpx 13 ms of client CPU per request, aiohttp 5 ms.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp


@dataclass
class TenantLoad:
    """One tenant's traffic: its key, the model it asks for, arrivals per second, prompts to cycle."""

    tenant: str
    key: str
    model: str
    rate: float
    prompts: list[str]
    max_tokens: int = 16


@dataclass
class Sample:
    tenant: str
    sent_at: float
    status: int
    ttft_s: float | None
    latency_s: float
    tokens: int
    error: str | None = None  # why a request failed: the start of the error body, or the exception


ERROR_CHARS = 300


async def _one(client: aiohttp.ClientSession, load: TenantLoad, prompt: str, t0: float) -> Sample:
    sent = time.monotonic()
    body = {"model": load.model, "prompt": prompt, "max_tokens": load.max_tokens, "temperature": 0, "stream": True}
    ttft, tokens, status, error = None, 0, 0, None
    try:
        async with client.post("/v1/completions", json=body,
                               headers={"Authorization": f"Bearer {load.key}"}) as r:
            status = r.status
            if status != 200:
                error = (await r.text())[:ERROR_CHARS]
            else:
                async for line in r.content:
                    if line.startswith(b"data:") and b"[DONE]" not in line:
                        if line.startswith(b'data: {"error"'):  # the gateway's error event after the start
                            error = error or line.decode(errors="replace").strip()[:ERROR_CHARS]
                            continue
                        ttft = ttft if ttft is not None else time.monotonic() - sent
                        tokens += 1
    except (TimeoutError, aiohttp.ClientError) as exc:
        status, error = 599, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
    return Sample(load.tenant, sent - t0, status, ttft, time.monotonic() - sent, tokens, error)


async def drive(url: str, loads: list[TenantLoad], duration_s: float, seed: int = 0,
                start_at: float | None = None) -> list[Sample]:
    """Send every tenant's Poisson arrivals for `duration_s`, then wait for the answers (bounded).

    Each tenant draws its arrivals from its own generator seeded by (seed, tenant): with the same seed a
    tenant sends at the same moments whatever the others do, so conditions compare request by request.
    `start_at` (time.monotonic(), which is system-wide on Linux) lines up drivers in several processes.
    """
    connector = aiohttp.TCPConnector(limit=2000)
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=10)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        t0 = time.monotonic()
        tasks: list[asyncio.Task] = []

        async def arrivals(load: TenantLoad) -> None:
            rng = random.Random(f"{seed}:{load.tenant}")
            i, t = 0, rng.expovariate(load.rate)
            while t < duration_s:
                await asyncio.sleep(max(0.0, t0 + t - time.monotonic()))
                tasks.append(asyncio.create_task(_one(client, load, load.prompts[i % len(load.prompts)], t0)))
                i, t = i + 1, t + rng.expovariate(load.rate)

        await asyncio.gather(*(arrivals(load) for load in loads if load.rate > 0))
        return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration_s * 10 + 120))
