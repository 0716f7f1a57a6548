"""Waiting in tests for a condition, never for a guessed time.

CI runs the suite on a fresh, often loaded 2-core host: something that takes 50 ms here can take a few
seconds there. So a test polls for what it needs with a deadline far beyond the usual time; the deadline
only decides how long a real failure takes to be reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEADLINE_S = 30.0  # far beyond any wait of the unit tests on a loaded host; a failure is reported after it


def wait_until(cond: Callable[[], object], timeout: float = DEADLINE_S, interval: float = 0.05,
               what: str = "") -> None:
    """Poll `cond()` until it is true; AssertionError naming `what` once `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what or getattr(cond, '__name__', cond)}")
        time.sleep(interval)


async def until(cond: Callable[[], object], timeout: float = DEADLINE_S, interval: float = 0.005,
                what: str = "") -> None:
    """`wait_until` inside an event loop: the loop keeps running while the test waits."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what or getattr(cond, '__name__', cond)}")
        await asyncio.sleep(interval)


async def settle(timeout: float = DEADLINE_S) -> None:
    """Wait until every other task of the running loop has finished (background renewals, timers' work)."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), timeout)
