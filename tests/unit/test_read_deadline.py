"""The bound between two reads of an engine answer (serving/transport/deadline.py), on a real event loop.

The stalled-engine path end to end (a real vLLM engine stopped mid-stream) is tests/e2e/test_engine_stall.py.
"""

from __future__ import annotations

import asyncio

from serving.transport.deadline import ReadDeadline

PERIOD = 0.2


def _run(coro):
    return asyncio.run(coro)


def test_it_expires_once_a_whole_period_passes_without_a_read():
    async def body():
        fired = []
        deadline = ReadDeadline(PERIOD, lambda: fired.append(asyncio.get_running_loop().time()))
        start = deadline.last
        await asyncio.sleep(PERIOD * 4)
        return fired, start

    fired, start = _run(body())
    assert len(fired) == 1, "it expires exactly once"
    assert fired[0] - start >= PERIOD


def test_reads_keep_it_alive_for_many_periods_and_it_expires_one_period_after_the_last():
    async def body():
        loop = asyncio.get_running_loop()
        fired = []
        deadline = ReadDeadline(PERIOD, lambda: fired.append(loop.time()))
        end = loop.time() + PERIOD * 5
        while loop.time() < end:  # a read every quarter period, for five periods
            deadline.touch()
            await asyncio.sleep(PERIOD / 4)
        last = deadline.last
        alive = not fired
        await asyncio.sleep(PERIOD * 3)
        return alive, fired, last

    alive, fired, last = _run(body())
    assert alive, "it expired while reads kept coming"
    assert len(fired) == 1 and fired[0] - last >= PERIOD


def test_a_read_makes_no_timer_work_and_the_timer_is_rearmed_once_a_period():
    """What it is for: aiohttp's read timeout cancels and makes a loop timer on every read."""
    async def body():
        loop = asyncio.get_running_loop()
        armed, expire = [], lambda: None
        call_at = loop.call_at
        loop.call_at = lambda when, cb, *a, **kw: (
            armed.append(when) if isinstance(getattr(cb, "__self__", None), ReadDeadline) else None
        ) or call_at(when, cb, *a, **kw)  # the deadline's own timers, not the test's sleeps
        deadline = ReadDeadline(PERIOD, expire)
        for _ in range(1000):
            deadline.touch()
        reads_armed = len(armed)
        end = loop.time() + PERIOD * 3
        while loop.time() < end:
            deadline.touch()
            await asyncio.sleep(PERIOD / 10)
        deadline.cancel()
        return reads_armed, len(armed)

    reads_armed, armed = _run(body())
    assert reads_armed == 1, "a thousand reads armed no timer of their own"
    assert armed <= 5, f"30 reads over 3 periods re-armed the timer {armed} times (about once a period)"


def test_cancel_stops_it():
    async def body():
        fired = []
        deadline = ReadDeadline(PERIOD, lambda: fired.append(1))
        deadline.cancel()
        deadline.cancel()  # idempotent
        await asyncio.sleep(PERIOD * 2)
        return fired

    assert _run(body()) == []
