"""The reload proxy's admission (benchmark mode C): one model in the engine at a time, switches only when drained."""

from __future__ import annotations

import asyncio

import pytest

from loadtest.reload_proxy import Switcher
from tests.waiting import until


class Engine:
    """A fake engine: records reloads, and what ran under which weights."""

    def __init__(self, fail: set[str] = frozenset()):
        self.loaded, self.reloads, self.fail, self.ran = None, [], fail, []

    async def reload(self, model: str) -> None:
        await asyncio.sleep(0.01)  # a reload takes a while: requests arriving meanwhile must wait
        if model in self.fail:
            raise RuntimeError(f"cannot load {model}")
        self.loaded = model
        self.reloads.append(model)


async def _request(sw: Switcher, engine: Engine, model: str, hold: float | asyncio.Event = 0.02):
    """One request on the engine for `hold` seconds, or until `hold` (an event) is set by the test."""
    await sw.acquire(model)
    try:
        assert engine.loaded == model  # never served by another tenant's weights
        engine.ran.append(model)
        await (hold.wait() if isinstance(hold, asyncio.Event) else asyncio.sleep(hold))
    finally:
        sw.release()


def test_same_model_runs_concurrently_without_reloads():
    async def main():
        engine = Engine()
        engine.loaded = "a"
        sw = Switcher(engine.reload, current="a")
        await asyncio.gather(*(_request(sw, engine, "a") for _ in range(5)))
        assert engine.reloads == [] and sw.switches == 0 and sw.inflight == 0

    asyncio.run(main())


def test_a_switch_waits_for_the_engine_to_drain_and_is_first_come_first_served():
    async def main():
        engine = Engine()
        engine.loaded = "a"
        sw = Switcher(engine.reload, current="a")
        done = asyncio.Event()  # the first request runs until the others queued, however slow the host
        first = asyncio.create_task(_request(sw, engine, "a", hold=done))
        await until(lambda: sw.inflight == 1)
        b = asyncio.create_task(_request(sw, engine, "b"))
        await until(lambda: len(sw.waiting) == 1)
        late_a = asyncio.create_task(_request(sw, engine, "a"))  # queued behind b: no starvation of b
        await until(lambda: len(sw.waiting) == 2)
        done.set()
        await asyncio.gather(first, b, late_a)
        assert engine.ran == ["a", "b", "a"] and engine.reloads == ["b", "a"] and sw.switches == 2
        assert sw.inflight == 0 and not sw.waiting

    asyncio.run(main())


def test_waiting_requests_of_one_model_share_one_reload():
    async def main():
        engine = Engine()
        sw = Switcher(engine.reload, current=None)
        await asyncio.gather(*(_request(sw, engine, m) for m in ["x", "x", "y", "x", "y"]))
        assert engine.reloads == ["x", "y"]  # all x first (the oldest is x), then all y

    asyncio.run(main())


def test_a_failed_reload_fails_that_model_only_and_a_cancelled_waiter_does_not_wedge():
    async def main():
        engine = Engine(fail={"bad"})
        engine.loaded = "a"
        sw = Switcher(engine.reload, current="a")
        done = asyncio.Event()  # "a" runs until c's caller went away, however slow the host
        running = asyncio.create_task(_request(sw, engine, "a", hold=done))
        await until(lambda: sw.inflight == 1)
        bad = asyncio.create_task(_request(sw, engine, "bad"))
        gone = asyncio.create_task(_request(sw, engine, "c"))
        good = asyncio.create_task(_request(sw, engine, "d"))
        await until(lambda: len(sw.waiting) == 3)
        gone.cancel()
        done.set()
        await running
        with pytest.raises(RuntimeError, match="cannot load bad"):
            await bad
        await good
        assert engine.reloads == ["d"] and sw.inflight == 0 and not sw.waiting

    asyncio.run(main())
