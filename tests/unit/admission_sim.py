"""A simulated engine and clock for admission tests: deterministic arrivals, virtual time, no sleeping.

`VirtualLoop` is an asyncio loop whose clock only moves when every task waits (the selector "sleeps" by
advancing it), so a 40-second scenario runs in well under a second and the same way every time. The
admission modules read `time.monotonic()`; `simulate` points them at the loop's clock.

`SimEngine` batches like a CPU engine: every running request gets one token per step, and a step takes
longer the more requests share it (`step_s + per_seq_s * batch`), which is what makes one tenant's extra
requests slow the others.
"""

from __future__ import annotations

import asyncio
import selectors
import types
from dataclasses import dataclass


class _Selector(selectors.BaseSelector):
    """Never blocks: a wait of `timeout` seconds moves the loop's clock on by that much."""

    def __init__(self, loop: VirtualLoop):
        self._loop, self._keys = loop, {}

    def register(self, fileobj, events, data=None):
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj):
        return self._keys.pop(fileobj)

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("the simulation would wait forever: nothing is scheduled")
        self._loop.now += max(0.0, timeout)
        return []

    def get_map(self):
        return self._keys


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self):
        self.now = 1000.0
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self.now


class SimEngine:
    """Continuous batching: each step serves one token to every running request."""

    def __init__(self, step_s: float = 0.004, per_seq_s: float = 0.001):
        self.step_s, self.per_seq_s = step_s, per_seq_s
        self._running: list[list] = []  # [future, tokens left, first-token time]
        self._work = asyncio.Event()

    async def serve(self, tokens: int) -> tuple[float, float]:
        """Run a request of `tokens` output tokens; returns (first token time, last token time)."""
        fut = asyncio.get_running_loop().create_future()
        self._running.append([fut, tokens, None])
        self._work.set()
        return await fut

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._running:
                self._work.clear()
                await self._work.wait()
            await asyncio.sleep(self.step_s + self.per_seq_s * len(self._running))
            for r in list(self._running):
                r[1] -= 1
                r[2] = r[2] if r[2] is not None else loop.time()
                if r[1] <= 0:
                    self._running.remove(r)
                    r[0].set_result((r[2], loop.time()))


@dataclass
class Served:
    tenant: str
    arrived: float
    granted: float
    first: float
    done: float

    @property
    def ttft(self) -> float:
        return self.first - self.arrived


def periodic(tenant: str, rate: float, until: float, offset: float = 0.0) -> list[tuple[float, str]]:
    """Arrivals of `tenant` every 1/`rate` seconds from `offset` up to `until` (deterministic)."""
    return [(offset + i / rate, tenant) for i in range(int((until - offset) * rate))]


def simulate(admission, arrivals: list[tuple[float, str]], monkeypatch, tokens: int = 16, est_tokens: int = 24,
             engine: SimEngine | None = None, probe_every_s: float = 0.01) -> tuple[list[Served], list[tuple]]:
    """Send `arrivals` ((seconds from the start, tenant)) through `admission` to a simulated engine.

    Returns what was served (a request refused with 503 is left out), and probes of the queue every
    `probe_every_s`: (time, inflight, tenant -> requests waiting), to check what admission did meanwhile.
    """
    import serving.admission as package
    from common.errors import Overloaded
    from serving.admission import fair_queue, guard

    loop = VirtualLoop()
    clock = types.SimpleNamespace(monotonic=loop.time)
    for module in (package, fair_queue, guard):
        monkeypatch.setattr(module, "time", clock)
    engine = engine or SimEngine()
    served: list[Served] = []
    refused: list[tuple[float, str]] = []
    probes: list[tuple] = []
    queue = admission.queue

    async def one(at: float, tenant: str, t0: float) -> None:
        await asyncio.sleep(t0 + at - loop.time())
        arrived = loop.time()
        try:
            await admission.acquire(tenant, est_tokens)
        except Overloaded:
            refused.append((arrived, tenant))
            return
        granted = loop.time()
        first, done = await engine.serve(tokens)
        admission.release(tenant, est_tokens, tokens, done - granted)
        admission.observe("stream", (done - granted) / tokens)
        served.append(Served(tenant, arrived, granted, first, done))

    async def probe(until: float) -> None:
        while loop.time() < until:
            probes.append((loop.time(), queue.inflight, {t: len(q) for t, q in queue._waiting.items()}))
            await asyncio.sleep(probe_every_s)

    async def main() -> None:
        t0 = loop.time()
        runner = asyncio.create_task(engine.run())
        prober = asyncio.create_task(probe(t0 + max(a for a, _ in arrivals)))
        await asyncio.gather(*(one(a, t, t0) for a, t in arrivals))
        await prober
        runner.cancel()
        for s in served:
            s.arrived, s.granted, s.first, s.done = (x - t0 for x in (s.arrived, s.granted, s.first, s.done))
        probes[:] = [(at - t0, n, w) for at, n, w in probes]

    try:
        loop.run_until_complete(asyncio.wait_for(main(), timeout=3600))
    finally:
        loop.close()
    return served, probes
