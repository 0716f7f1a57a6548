"""A bound on the time between two reads of an engine's answer, kept with one timer per period, not per read.

aiohttp's `sock_read` timeout cancels the connection's loop timer and makes a new one on every read: per
streamed token that was 0.2-0.4 ms of gateway CPU per 32-token stream on the 2-core host (two gateway
processes over one paced engine, measured alternately, medians of 5 rounds: 3.5 ms a stream with it and 3.1 ms
without, then 2.9 ms and 2.7 ms with this instead). Here a read only notes the loop's time; the timer, due one
period after the first read, re-arms itself for one period after the last read it finds, and expires only when
a whole period passed without one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ReadDeadline:
    """Calls `on_expire` once when `timeout_s` pass with no `touch()`; `cancel()` ends the watch."""

    def __init__(self, timeout_s: float, on_expire: Callable[[], None]):
        self.loop = asyncio.get_running_loop()
        self.timeout_s, self.on_expire = timeout_s, on_expire
        self.last = self.loop.time()
        self._handle: asyncio.TimerHandle | None = self.loop.call_at(self.last + timeout_s, self._check)

    def touch(self) -> None:
        """A read: the period starts again (the loop's cached time: no clock read, no timer work)."""
        self.last = self.loop.time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        due = self.last + self.timeout_s
        if self.loop.time() < due:
            self._handle = self.loop.call_at(due, self._check)
            return
        self._handle = None
        self.on_expire()
