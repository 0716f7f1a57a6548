"""The fairness benchmark's clients: each tenant's open-loop traffic from its own process, and the calibration.

The traffic processes (spawn) import this module: its heavy imports (torch via training) are made in the
functions that need them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time

from loadtest.traffic import TenantLoad, drive


def prompts() -> list[str]:
    from training.demo import DEMO_WORDS, demo_prompt

    return [demo_prompt(w) for w in DEMO_WORDS]


def _drive_sync(url: str, loads: list[TenantLoad], duration_s: float, seed: int, start_at: float | None = None,
                nice: int = 0):
    """The samples, and the CPU seconds this client spent sending them and reading the answers (the load
    generator shares the host; its start-up is not counted). `nice`: this client's CPU priority (raised once
    per worker process: `os.nice` adds up)."""
    if nice and os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.nice(nice - os.getpriority(os.PRIO_PROCESS, 0))
    started = time.process_time()
    samples = asyncio.run(drive(url, loads, duration_s, seed, start_at))
    return samples, time.process_time() - started


def _warm(seconds: float) -> None:
    time.sleep(seconds)  # defined here: unpickling it imports this module in the worker


def drive_tenants(url: str, loads: list[TenantLoad], duration_s: float, seed: int = 0,
           nice: dict[str, int] | None = None) -> tuple[list, dict[str, float]]:
    """The open-loop traffic: each tenant from its own child process (its own interpreter and event loop,
    like real clients), so that the flooder's client work, thousands of open requests, does not delay when
    the other tenants' clients send and read; the processes start sending at the same instant. `nice`:
    tenant -> CPU priority of its client process. Returns the samples and each tenant's client CPU seconds."""
    nice = nice or {}
    with multiprocessing.get_context("spawn").Pool(len(loads)) as pool:  # starts every worker now
        pool.map(_warm, [0.3] * len(loads), chunksize=1)  # each busy a while: one each, all imported
        start_at = time.monotonic() + 0.5
        parts = pool.starmap(_drive_sync, [(url, [load], duration_s, seed, start_at, nice.get(load.tenant, 0))
                                           for load in loads], chunksize=1)
        return [s for samples, _ in parts for s in samples], {load.tenant: cpu for load, (_, cpu) in zip(loads, parts)}


def capacity(url: str, tenants, max_tokens: int) -> float:
    """Requests per second the stack completes with all tenants busy (closed loop, a few seconds)."""
    loads = [TenantLoad(t, k, m, rate=1000, prompts=prompts(), max_tokens=max_tokens) for t, k, m in tenants]
    started = time.monotonic()
    samples = asyncio.run(drive(url, loads, duration_s=0.05))  # ~150 requests at once
    ok = [s for s in samples if s.status == 200]
    return len(ok) / (time.monotonic() - started)


def sustained_capacity(url: str, tenants, max_tokens: int, concurrency: int = 32, seconds: float = 8.0) -> float:
    """Requests per second the stack keeps completing with `concurrency` requests always open (closed loop,
    spread over `tenants` in turn) for `seconds`, after a short warm-up. A burst of requests at once (`capacity`)
    measures how fast a full batch drains, which on a small host is well above what it sustains: the load
    generator, the gateway and the engine share the cores."""
    import aiohttp

    texts = prompts()

    async def run() -> float:
        done = 0
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=120)) as client:
            async def worker(i: int, until: float, count: bool) -> None:
                nonlocal done
                tenant, key, model = tenants[i % len(tenants)]
                body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True}
                j = i
                while time.monotonic() < until:
                    body["prompt"] = texts[j % len(texts)]
                    j += concurrency
                    async with client.post("/v1/completions", json=body,
                                           headers={"Authorization": f"Bearer {key}"}) as r:
                        async for _ in r.content:
                            pass
                        if r.status == 200 and count:
                            done += 1

            warm = time.monotonic() + 1.0
            await asyncio.gather(*(worker(i, warm, False) for i in range(concurrency)))
            started = time.monotonic()
            await asyncio.gather(*(worker(i, started + seconds, True) for i in range(concurrency)))
            return done / (time.monotonic() - started)

    return asyncio.run(run())
