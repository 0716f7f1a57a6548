"""Which adapters the engine holds: load on demand (single-flight), evict the least recently used.

Eviction never touches an adapter with requests in flight, so a request always finishes on the
weights it started with. The engine-side name pins (tenant, adapter, version digest), so a new
version never reuses an old version's weights or cache entries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

from serving import metrics
from serving.engine import EngineClient

log = logging.getLogger(__name__)


def engine_lora_name(tenant: str, adapter: str, version: str) -> str:
    """The engine's name for one adapter version (':' never occurs in validated names)."""
    return f"lpx:{tenant}:{adapter}:{version}"


def metric_labels(name: str) -> tuple[str, str]:
    """(tenant, adapter) labels of an engine-side name; names this gateway did not make count as "other"."""
    parts = name.split(":")
    if len(parts) != 4 or parts[0] != "lpx":
        return metrics.OTHER, metrics.OTHER
    return parts[1], metrics.LABELS.known(parts[1], parts[2])


class AdapterResidency:
    """An LRU of the adapters registered in the engine, bounded by `capacity`."""

    def __init__(self, engine: EngineClient, capacity: int):
        self.engine = engine
        self.capacity = capacity
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._inflight: Counter[str] = Counter()
        self._loading: dict[str, asyncio.Future] = {}
        self._paths: dict[str, Path] = {}

    @property
    def resident(self) -> list[str]:
        return list(self._lru)

    def adopt(self, names: set[str]) -> None:
        """Take over adapters a previous gateway process registered in a still-running engine."""
        for name in names:
            self._lru.setdefault(name, None)
        metrics.RESIDENT.set(len(self._lru))

    def forget(self, name: str) -> None:
        """The engine no longer has `name` (unloaded by someone else): the next acquire loads it again.
        Requests holding it keep their count and release it as usual."""
        self._lru.pop(name, None)
        self._paths.pop(name, None)
        metrics.RESIDENT.set(len(self._lru))

    def take_hot(self) -> list[tuple[str, Path]]:
        """The engine died: forget what it held, returning it (most recent last) to load back later."""
        hot = [(n, self._paths[n]) for n in self._lru if n in self._paths]
        self._lru.clear()
        metrics.RESIDENT.set(0)
        return hot

    async def reload(self, hot: list[tuple[str, Path]]) -> None:
        """Load adapters back into a restarted engine (the files are still in the verified cache)."""
        for name, path in hot[-self.capacity:]:
            if name in self._lru or not path.exists():
                continue
            try:
                await self._timed_load(name, path)
            except Exception:
                log.warning("could not reload %s after an engine restart", name, exc_info=True)
                continue
            self._lru[name] = None
        metrics.RESIDENT.set(len(self._lru))

    async def acquire(self, name: str, local_path: Callable[[], Awaitable[Path]]) -> None:
        """Make `name` resident and count one request on it; pair with `release(name)`."""
        while True:
            if name in self._lru:
                self._lru.move_to_end(name)
                self._inflight[name] += 1
                metrics.ADAPTER_CACHE.labels("hit", *metric_labels(name)).inc()
                return
            pending = self._loading.get(name)
            if pending is None:
                break
            await asyncio.shield(pending)  # another request is loading it; re-check when done
        await self._load(name, local_path)

    def release(self, name: str) -> None:
        self._inflight[name] -= 1
        if self._inflight[name] <= 0:
            del self._inflight[name]

    async def _load(self, name: str, local_path: Callable[[], Awaitable[Path]]) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._loading[name] = fut
        metrics.ADAPTER_CACHE.labels("miss", *metric_labels(name)).inc()
        try:
            path = await local_path()
            await self._make_room()
            await self._timed_load(name, path)
            self._lru[name] = None
            metrics.RESIDENT.set(len(self._lru))
            self._paths[name] = path
            self._inflight[name] += 1
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # waiters re-raise it; this marks it retrieved when there are none
            raise
        finally:
            del self._loading[name]

    async def _timed_load(self, name: str, path: Path) -> None:
        labels = metric_labels(name)
        started = time.monotonic()
        try:
            await self.engine.load_lora(name, path)
        except BaseException:
            metrics.ADAPTER_LOADS.labels(*labels, "error").inc()
            raise
        metrics.ADAPTER_LOADS.labels(*labels, "ok").inc()
        metrics.ADAPTER_LOAD_SECONDS.labels(*labels).observe(time.monotonic() - started)

    async def _make_room(self) -> None:
        while len(self._lru) >= self.capacity:
            victim = next((n for n in self._lru if not self._inflight[n]), None)
            if victim is None:
                return  # all busy: exceed the bound for now rather than break a running request
            del self._lru[victim]
            self._paths.pop(victim, None)
            metrics.ADAPTER_EVICTIONS.labels(*metric_labels(victim)).inc()
            metrics.RESIDENT.set(len(self._lru))
            try:
                await self.engine.unload_lora(victim)
            except Exception:  # the engine forgets it on restart anyway
                log.warning("unloading %s failed", victim, exc_info=True)
