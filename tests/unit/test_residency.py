"""Pure logic of the residency LRU (the engine path itself is covered by the e2e suite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from serving.residency import AdapterResidency
from tests.waiting import until


class RecordingEngine:
    def __init__(self):
        self.loaded, self.calls = set(), []

    async def load_lora(self, name, path):
        self.calls.append(("load", name))
        await asyncio.sleep(0.01)
        self.loaded.add(name)

    async def unload_lora(self, name):
        self.calls.append(("unload", name))
        self.loaded.discard(name)


async def _path():
    return Path("/nonexistent")


def test_concurrent_first_requests_load_once():
    async def go():
        eng = RecordingEngine()
        res = AdapterResidency(eng, capacity=2)
        await asyncio.gather(*(res.acquire("a", _path) for _ in range(20)))
        return eng
    assert asyncio.run(go()).calls == [("load", "a")]


def test_evicts_least_recently_used_but_never_in_flight():
    async def go():
        eng = RecordingEngine()
        res = AdapterResidency(eng, capacity=2)
        await res.acquire("a", _path)          # a stays in flight
        await res.acquire("b", _path)
        res.release("b")
        await res.acquire("c", _path)          # evicts b (a is busy)
        res.release("c")
        assert res.resident == ["a", "c"]
        res.release("a")
        await res.acquire("a", _path)          # hit, a becomes most recent
        res.release("a")
        await res.acquire("d", _path)          # evicts c
        return eng, res
    eng, res = asyncio.run(go())
    assert ("unload", "b") in eng.calls and ("unload", "c") in eng.calls
    assert ("unload", "a") not in eng.calls
    assert sorted(res.resident) == ["a", "d"]  # a used twice: protected, so the order is d, a


def test_failed_load_is_not_resident_and_waiters_see_the_error():
    class Failing(RecordingEngine):
        async def load_lora(self, name, path):
            await asyncio.sleep(0.01)
            raise RuntimeError("boom")

    async def go():
        res = AdapterResidency(Failing(), capacity=2)
        results = await asyncio.gather(*(res.acquire("a", _path) for _ in range(3)), return_exceptions=True)
        return res, results
    res, results = asyncio.run(go())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert res.resident == []


def test_the_active_tier_gauges_follow_the_adapters_with_requests_in_flight(tmp_path):
    """engine_active counts adapters with a request running (set when an adapter's first request starts and
    its last ends); engine counts every registered one."""
    from prometheus_client import REGISTRY

    def gauge(name, tier):
        return REGISTRY.get_sample_value(name, {"tier": tier})

    (tmp_path / "w.bin").write_bytes(b"x" * 100)

    async def here():
        return tmp_path

    async def go():
        res = AdapterResidency(RecordingEngine(), capacity=4)
        seen = []
        await res.acquire("a", here)
        await res.acquire("a", here)  # a second request on a
        await res.acquire("b", here)
        seen.append((gauge("loraplex_tier_adapters", "engine_active"), gauge("loraplex_tier_bytes", "engine_active")))
        res.release("a")  # a still has one running
        seen.append(gauge("loraplex_tier_adapters", "engine_active"))
        res.release("a")
        seen.append(gauge("loraplex_tier_adapters", "engine_active"))
        res.release("b")
        seen.append((gauge("loraplex_tier_adapters", "engine_active"), gauge("loraplex_tier_bytes", "engine_active"),
                     gauge("loraplex_tier_adapters", "engine")))
        return seen

    assert asyncio.run(go()) == [(2, 200), 2, 1, (0, 0, 2)]


def test_try_hold_holds_a_resident_adapter_and_nothing_else():
    """The transport's fast path: a resident adapter is held without a load, and held it is not evicted to make
    room (the tier goes over its budget until the hold ends); one not resident is not held."""
    async def go():
        eng = RecordingEngine()
        res = AdapterResidency(eng, capacity=1)
        missing = res.try_hold("a")
        await res.acquire("a", _path)
        res.release("a")
        held = res.try_hold("a")
        await res.acquire("b", _path)  # no room: a would be unloaded first, were it not held
        while_held = list(eng.calls)
        res.release("b")  # the tier shrinks back: b goes, a is still held
        res.release("a")  # the fast path's hold is given back like any other
        await until(lambda: res.resident == ["a"], what="the tier shrank back")  # the shrink runs as a task
        return missing, held, while_held, eng.calls, res.resident

    missing, held, while_held, calls, resident = asyncio.run(go())
    assert (missing, held) == (False, True)
    assert while_held == [("load", "a"), ("load", "b")]
    assert calls[2:] == [("unload", "b")] and resident == ["a"]
