"""Which adapters the engine holds: load on demand (single-flight), evict by a segmented LRU over bytes.

The engine tier is bounded twice: by count (vLLM's `--max-cpu-loras`, which the engine enforces itself and
would otherwise evict behind the gateway's back) and by bytes (`engine_adapter_max_bytes`: a rank-64
adapter takes eight times the room of a rank-8 one). Eviction never touches an adapter with requests in
flight, so a request always finishes on the weights it started with, nor a pinned one. A burst of one-off
adapters evicts other one-off adapters, not the popular set (registry/slru.py). The engine-side name pins
(tenant, adapter, version digest), so a new version never reuses an old version's weights or cache entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from common.errors import EngineError
from registry.slru import SegmentedLRU, TierUsage
from serving import metrics
from serving.engine import EngineClient

log = logging.getLogger(__name__)
# resolved once: on the request path (profiled with cProfile, the five gauges set on every hold and release took
# 15% of an adapter request's time in the gateway)
ACTIVE_ADAPTERS = metrics.TIER_ADAPTERS.labels("engine_active")
ACTIVE_BYTES = metrics.TIER_BYTES.labels("engine_active")


def engine_lora_name(tenant: str, adapter: str, version: str) -> str:
    """The engine's name for one adapter version (':' never occurs in validated names)."""
    return f"lpx:{tenant}:{adapter}:{version}"


def metric_labels(name: str) -> tuple[str, str]:
    """(tenant, adapter) labels of an engine-side name; names this gateway did not make count as "other"."""
    parts = name.split(":")
    if len(parts) != 4 or parts[0] != "lpx":
        return metrics.OTHER, metrics.OTHER
    return metrics.LABELS.tenant(parts[1]), metrics.LABELS.known(parts[1], parts[2])


def dir_bytes(path: Path) -> int:
    """Bytes of the files of an adapter directory: its real size, whatever its rank and dtype."""
    try:
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    except OSError:
        return 0


class AdapterResidency:
    """The adapters registered in the engine, bounded by `capacity` entries and `max_bytes` bytes.

    Args:
        engine: the engine's client (load/unload).
        capacity: the engine's `--max-cpu-loras`.
        max_bytes: byte budget of the engine's adapter cache (default: no byte bound).
        pinned: whether an engine-side name is pinned (never evicted); serving/pins.py provides it.
    """

    def __init__(self, engine: EngineClient, capacity: int, max_bytes: int = 1 << 62,
                 pinned: Callable[[str], bool] | None = None):
        self.engine = engine
        self.capacity = capacity
        self.pinned = pinned or (lambda _n: False)
        self._lru = SegmentedLRU(max_bytes, max_count=capacity)
        self._inflight: Counter[str] = Counter()
        self._loading: dict[str, asyncio.Future] = {}
        self._paths: dict[str, Path] = {}
        self.loads = 0  # engine loads done (cold starts and reloads), for benchmarks and tests
        self.loaded_at: dict[str, float] = {}  # engine name -> monotonic time of its last load
        self._shrinking: asyncio.Task | None = None

    @property
    def resident(self) -> list[str]:
        """Engine-side names, in eviction order (the next victim first)."""
        return list(self._lru)

    def usage(self) -> TierUsage:
        return self._lru.usage(pinned=sum(1 for n in self._lru if self.pinned(n)))

    def holds(self, name: str) -> bool:
        return name in self._lru

    def loading(self, name: str) -> bool:
        """Is `name` being loaded now (its files fetched, the engine not yet done reading them)?"""
        return name in self._loading

    def touch(self, name: str) -> None:
        """`name` is about to be used (a request waits for it): not the next victim."""
        if name in self._lru:
            self._lru.touch(name)

    def adopt(self, names: set[str]) -> None:
        """Take over adapters a previous gateway process registered in a still-running engine (their size
        is learnt when they are next loaded; until then they count by number only)."""
        for name in names:
            if name not in self._lru:
                self._lru.add(name, 0)
        self._publish()

    def forget(self, name: str) -> None:
        """The engine no longer has `name` (unloaded by someone else): the next acquire loads it again.
        Requests holding it keep their count and release it as usual."""
        self._lru.remove(name)
        self._paths.pop(name, None)
        self._publish()

    def take_hot(self) -> list[tuple[str, Path]]:
        """The engine died: forget what it held, returning it (most valuable last) to load back later."""
        hot = [(n, self._paths[n]) for n in self._lru if n in self._paths]
        for name in list(self._lru):
            self._lru.remove(name)
        self._publish()
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
            self._lru.add(name, dir_bytes(path))
            self._paths[name] = path
        self._publish()

    async def acquire(self, name: str, local_path: Callable[[], Awaitable[Path]]) -> None:
        """Make `name` resident and count one request on it; pair with `release(name)`."""
        while True:
            if self.try_hold(name):
                return
            pending = self._loading.get(name)
            if pending is None:
                break
            await asyncio.shield(pending)  # another request is loading it; re-check when done
        await self._load(name, local_path)

    def try_hold(self, name: str) -> bool:
        """Count one request on `name` if it is resident (then pair with `release(name)`); False if it is not.
        The common case of `acquire`, without a coroutine or a task."""
        if name not in self._lru:
            return False
        self._lru.touch(name)
        self._hold(name)
        metrics.ADAPTER_CACHE.labels("hit", *metric_labels(name)).inc()
        return True

    async def warm(self, name: str, local_path: Callable[[], Awaitable[Path]]) -> None:
        """Load `name` ahead of its traffic (a pin, `warm: true`) without holding it."""
        await self.acquire(name, local_path)
        self.release(name)

    def release(self, name: str) -> None:
        self._inflight[name] -= 1
        if self._inflight[name] <= 0:
            del self._inflight[name]
            if self._lru.over_budget() and (self._shrinking is None or self._shrinking.done()):
                # the tier grew past its budget while everything was in flight: back within it now, not at the
                # next load (an idle engine would keep the excess)
                with contextlib.suppress(RuntimeError):  # no running loop: the next load makes room
                    self._shrinking = asyncio.get_running_loop().create_task(self._make_room(0, 0))
            self._publish_active()

    def _hold(self, name: str) -> None:
        self._inflight[name] += 1
        if self._inflight[name] == 1:
            self._publish_active()

    async def _load(self, name: str, local_path: Callable[[], Awaitable[Path]]) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._loading[name] = fut
        metrics.ADAPTER_CACHE.labels("miss", *metric_labels(name)).inc()
        try:
            path = await local_path()
            size = dir_bytes(path)
            await self._make_room(size)
            try:
                await self._timed_load(name, path)
            except EngineError:
                if path.exists():
                    raise
                # the disk tier evicted the files between their fetch and the engine's read: fetch once more
                path = await local_path()
                await self._timed_load(name, path)
            self._lru.add(name, size)
            self._paths[name] = path
            self._hold(name)
            self._publish()
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
        took = time.monotonic() - started
        self.loads += 1
        self.loaded_at[name] = time.monotonic()
        if len(self.loaded_at) > 4 * self.capacity + 64:  # bounded: only recent loads matter (cold first tokens)
            for old in list(self.loaded_at)[: len(self.loaded_at) // 2]:
                del self.loaded_at[old]
        metrics.ADAPTER_LOADS.labels(*labels, "ok").inc()
        metrics.ADAPTER_LOAD_SECONDS.labels(*labels).observe(took)
        metrics.COLD_START.labels("engine_load").observe(took)

    async def _make_room(self, size: int, count: int = 1) -> None:
        """Unload victims until `size` more bytes in `count` more adapters fit; in-flight and pinned ones stay
        (all kept: exceed the bound for now rather than break a running request or a pin)."""
        keep = lambda n: bool(self._inflight[n]) or self.pinned(n)  # noqa: E731
        for victim in self._lru.victims(size, count, keep=keep):
            self._lru.remove(victim)
            self._paths.pop(victim, None)
            metrics.ADAPTER_EVICTIONS.labels(*metric_labels(victim)).inc()
            self._publish()
            try:
                await self.engine.unload_lora(victim)
            except Exception:  # the engine forgets it on restart anyway
                log.warning("unloading %s failed", victim, exc_info=True)

    def _publish(self) -> None:
        """The engine tiers' gauges: registered (the CPU-side cache) and active (in a batch now)."""
        metrics.RESIDENT.set(len(self._lru))
        metrics.TIER_ADAPTERS.labels("engine").set(len(self._lru))
        metrics.TIER_BYTES.labels("engine").set(self._lru.bytes)
        self._publish_active()

    def _publish_active(self) -> None:
        """The active tier's gauges alone, when an adapter's first request starts or its last ends."""
        active = [n for n in self._inflight if n in self._lru]
        ACTIVE_ADAPTERS.set(len(active))
        ACTIVE_BYTES.set(sum(self._lru.size(n) for n in active))
