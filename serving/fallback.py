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

    async def call(self, key: Hashable, fn: Callable[[], T], reuse_s: float = 0.0) -> T:
        """`fn()`, remembered; a value fetched less than `reuse_s` ago is returned without calling `fn`."""
        held = self._values.get(key)
        if held is not None and time.monotonic() - held[1] < reuse_s:
            return held[0]
        try:
            value = await asyncio.to_thread(fn)
        except StorageUnavailable:
            if held is None:
                raise
            metrics.STALE_SERVED.labels(self.what).inc()
            log.warning("object store unavailable: serving the last known %s", self.what)
            return held[0]
        self._values[key] = (value, time.monotonic())
        self._values.move_to_end(key)
        if len(self._values) > self.max_entries:
            self._values.popitem(last=False)
        return value

    def forget(self, predicate: Callable[[Hashable, T], bool]) -> None:
        """Drop remembered answers that must never be replayed (a rotated key, a deleted tenant)."""
        for key in [k for k, (v, _) in self._values.items() if predicate(k, v)]:
            del self._values[key]
