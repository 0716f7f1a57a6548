"""Keep serving what is already known while the object store is down.

Each registry read on the request path (key → tenant, model → manifest) remembers its last good
answer. When S3 fails, a remembered answer is used (the adapter's files are in the local verified
cache and the engine may hold it already); what was never seen fails fast with 503 + Retry-After.
Only an unavailable store falls back: "not found" and "revoked" are always taken fresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from common.errors import StorageUnavailable
from serving import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class LastGood(Generic[T]):
    """A bounded LRU of the last successful result per key, used only while storage is unavailable."""

    def __init__(self, what: str, max_entries: int = 10_000):
        self.what = what
        self.max_entries = max_entries
        self._values: OrderedDict[Hashable, tuple[T, float]] = OrderedDict()  # key -> (value, fetched at)
        self._refreshing: dict[Hashable, asyncio.Task] = {}
        self._generation = 0  # bumped by forget(): a fetch that began before it must not store its answer

    async def call(self, key: Hashable, fn: Callable[[], T], reuse_s: float = 0.0, refresh_ahead: bool = False,
                   max_stale_s: float | None = None, holds: Callable[[T], bool] | None = None) -> T:
        """`fn()`, remembered; a value fetched less than `reuse_s` ago is returned without calling `fn`.

        With `refresh_ahead`, an older value is returned too while one background call of `fn` renews it
        (stale-while-revalidate: no request waits on the store for a name it knows; a change made
        elsewhere shows within `reuse_s` plus one round trip). If that call fails for any other reason
        than an unavailable store (the name is gone, the key revoked), the value is dropped and the next
        request asks afresh and gets the error. With `max_stale_s`, a value older than that is not answered
        while renewing but asked for in line (an idle key's first request then waits one round trip), which
        bounds how old an answer can be: a change made elsewhere shows within `max_stale_s` at most.
        `holds(value)`, where given, renews an older value in line when it says so from what is already known
        (no I/O): the value counts as fetched now, no task, no thread.
        """
        held = self._values.get(key)
        now = time.monotonic()
        age = now - held[1] if held is not None else 0.0
        if held is not None and age < reuse_s:
            return held[0]
        if held is not None and holds is not None and holds(held[0]):
            self._values[key] = (held[0], now)
            return held[0]
        if held is not None and refresh_ahead and reuse_s > 0 and (max_stale_s is None or age < max_stale_s):
            if key not in self._refreshing:
                task = self._refreshing[key] = asyncio.create_task(self._refresh(key, fn, self._generation))
                task.add_done_callback(lambda _t: self._refreshing.pop(key, None))
            return held[0]
        return await self._fetch(key, fn, held, self._generation)

    async def _fetch(self, key: Hashable, fn: Callable[[], T], held: tuple[T, float] | None, generation: int) -> T:
        try:
            value = await asyncio.to_thread(fn)
        except StorageUnavailable:
            if held is None:
                raise
            metrics.STALE_SERVED.labels(self.what).inc()
            log.warning("object store unavailable: serving the last known %s", self.what)
            return held[0]
        if generation == self._generation:
            self._values[key] = (value, time.monotonic())
            self._values.move_to_end(key)
            if len(self._values) > self.max_entries:
                self._values.popitem(last=False)
        return value

    async def _refresh(self, key: Hashable, fn: Callable[[], T], generation: int) -> None:
        """`generation` as the renewal was decided: a forget() in between (even before this task ran) wins."""
        try:
            await self._fetch(key, fn, self._values.get(key), generation)
        except Exception as e:
            if generation == self._generation:
                self._values.pop(key, None)
            log.info("a remembered %s is no longer valid (%s): asked afresh on its next use", self.what,
                     type(e).__name__)

    def peek(self, key: Hashable) -> T | None:
        """The remembered value of `key`, however old (None: none)."""
        held = self._values.get(key)
        return held[0] if held is not None else None

    def forget(self, predicate: Callable[[Hashable, T], bool]) -> None:
        """Drop remembered answers that must never be replayed (a rotated key, a deleted tenant)."""
        self._generation += 1
        for key in [k for k, (v, _) in self._values.items() if predicate(k, v)]:
            del self._values[key]
