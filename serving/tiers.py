"""The residency tiers of one gateway together: engine (serving/residency.py), local disk (registry/cache.py),
S3 below them; the operators' pins that no tier evicts; loading ahead of traffic (pins, `warm: true`, requests
waiting in the admission queue); and the gauges of what each tier holds.

Pins are read from the registry (registry/pins.py) at start, every `pins_refresh_s`, and at once after a pin,
an unpin or an alias move through this gateway. A pin on an alias keeps the version the alias points at now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from common.errors import Conflict, LoraplexError
from registry.adapter_registry import AdapterRegistry
from registry.cache import ArtifactCache
from registry.manifest import Manifest
from registry.pins import Pin, PinRegistry, check_ref
from registry.settings import RegistrySettings
from registry.slru import TierUsage
from serving import metrics
from serving.residency import AdapterResidency, engine_lora_name

log = logging.getLogger(__name__)
MAX_PREFETCHES = 4  # downloads at once for queued requests: more would only evict each other from a full disk tier


def cache_key(manifest: Manifest) -> str:
    """The disk tier's key of a version (registry/cache.py's entry key)."""
    return f"{manifest.tenant}/{manifest.name}/{manifest.version}"


class Tiers:
    """Pins, prefetch and gauges over the engine and disk tiers of one gateway.

    Args:
        settings: budgets and `pins_refresh_s` (the engine's `max_cpu_loras` via `residency.capacity`).
        residency: the engine tier.
        cache: the disk tier.
        adapters: resolves a pin's alias to its version now.
        pins: the pins in the registry bucket.
    """

    def __init__(self, settings: RegistrySettings, residency: AdapterResidency, cache: ArtifactCache,
                 adapters: AdapterRegistry, pins: PinRegistry):
        self.settings, self.residency, self.cache, self.adapters, self.pins = settings, residency, cache, adapters, pins
        self.pinned: dict[str, Manifest] = {}  # engine-side name -> manifest of each pinned version
        self._pinned_keys: set[str] = set()
        self._refreshed = -float("inf")
        self._refreshing: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # prefetches and warm-ups (a reference keeps them alive)
        self._fetching: set[str] = set()
        residency.pinned = lambda name: name in self.pinned
        cache.keep = self._keep_on_disk
        cache.on_change = lambda usage: _publish("disk", usage)
        cache.observe = lambda stage, seconds: metrics.COLD_START.labels(stage).observe(seconds)
        metrics.TIER_BUDGET_BYTES.labels("engine").set(settings.engine_adapter_max_bytes)
        metrics.TIER_BUDGET_BYTES.labels("disk").set(settings.cache_max_bytes)

    def _keep_on_disk(self, key: str) -> bool:
        """The disk tier keeps pinned versions, every version the engine holds (vLLM reads an adapter's files
        again when it moves it into a batch slot after its own cache dropped it, and a missing file there fails
        the engine's worker, not just the request) and every version being loaded (fetched, not yet read by the
        engine: with many loads at once, the fetches of the others would evict it in between)."""
        if key in self._pinned_keys:
            return True
        tenant, _, rest = key.partition("/")
        name, _, version = rest.partition("/")
        engine_name = engine_lora_name(tenant, name, version)
        return self.residency.holds(engine_name) or self.residency.loading(engine_name)

    def local_path(self, manifest: Manifest) -> Callable[[], Awaitable[Path]]:
        """The disk tier's verified directory of `manifest`, fetched from S3 if missing (in a thread)."""
        return lambda: asyncio.to_thread(self.cache.ensure_local, manifest)

    async def warm(self, manifest: Manifest) -> None:
        """Load `manifest` into the engine now (disk tier first): its first request finds it resident."""
        name = engine_lora_name(manifest.tenant, manifest.name, manifest.version)
        await self.residency.warm(name, self.local_path(manifest))

    def warm_soon(self, manifest: Manifest) -> None:
        """`warm` in the background: an upload or alias move answers without waiting for the engine."""
        self._spawn(self.warm(manifest), f"warming {manifest.ref}")

    def prefetch(self, manifest: Manifest, queued: bool = False) -> None:
        """A request for `manifest` is about to ask for admission: fetch its files into the disk tier meanwhile.
        If it will wait (`queued`: others wait already), load it into the engine too, so that it pays no load at
        the front, or, if the engine holds it, mark it used (not the next one evicted before its turn). At most
        MAX_PREFETCHES at once; a no-op for a version already there or on its way."""
        self.refresh_soon()
        name = engine_lora_name(manifest.tenant, manifest.name, manifest.version)
        if self.residency.holds(name):
            if queued:
                self.residency.touch(name)
            return
        key = cache_key(manifest)
        if key in self._fetching or len(self._fetching) >= MAX_PREFETCHES or \
                (not queued and self.cache.holds(manifest)):
            return
        self._fetching.add(key)
        job = self.warm(manifest) if queued else self.local_path(manifest)()
        task = self._spawn(job, f"prefetching {manifest.ref}")
        task.add_done_callback(lambda _t: self._fetching.discard(key))

    def first_token(self, lora: str | None, arrived: float) -> None:
        """A streamed request saw its first token: a cold-start sample if its adapter was loaded after it came."""
        loaded = self.residency.loaded_at.get(lora) if lora else None
        if loaded is not None and loaded >= arrived:
            metrics.COLD_START.labels("first_token").observe(time.monotonic() - arrived)

    # --- pins -------------------------------------------------------------------------------------------

    async def pin(self, tenant: str, name: str, ref: str) -> dict:
        """Pin `tenant`'s `name@ref` (404 if it does not resolve, 409 if pins would crowd the engine), then keep
        and load its version now. Returns the pin with the version it holds."""
        check_ref(ref)
        manifest = await asyncio.to_thread(self.adapters.resolve, tenant, f"{name}@{ref}")
        self.check_room(manifest)
        await asyncio.to_thread(self.pins.pin, tenant, name, ref)
        await self.refresh_pins()
        return {"tenant": tenant, "name": name, "ref": ref, "version": manifest.version,
                "resident": self.residency.holds(engine_lora_name(tenant, name, manifest.version))}

    async def unpin(self, tenant: str, name: str, ref: str) -> None:
        """Drop the pin: its version becomes an ordinary LRU entry (evicted when its turn comes)."""
        await asyncio.to_thread(self.pins.unpin, tenant, name, ref)
        await self.refresh_pins()

    async def list_pins(self, tenant: str | None = None) -> list[dict]:
        """Every pin (of `tenant`) with the version it holds now (null: its alias or adapter is gone)."""
        rows = []
        for pin, manifest in await self.refresh_pins():
            if tenant is None or pin.tenant == tenant:
                name = engine_lora_name(pin.tenant, pin.name, manifest.version) if manifest else None
                rows.append({"tenant": pin.tenant, "name": pin.name, "ref": pin.ref,
                             "version": manifest.version if manifest else None,
                             "resident": bool(name and self.residency.holds(name))})
        return rows

    async def after_alias_move(self, manifest: Manifest, warm: bool) -> None:
        """An alias now points at `manifest`: load it before its traffic if asked (`warm`) or if the alias is
        pinned (the pin follows the alias: the old version is released, the new one kept)."""
        pinned = await asyncio.to_thread(self.pins.list, manifest.tenant)
        try:
            if any(p.name == manifest.name for p in pinned):
                await self.refresh_pins()
            elif warm:
                await self.warm(manifest)
        except LoraplexError as e:  # the alias moved all the same: the version loads on its first request
            log.warning("could not load %s ahead of its traffic: %s", manifest.ref, e.message)

    def check_room(self, manifest: Manifest) -> None:
        """Refuse (409) a pin that would leave the engine less than half its room for unpinned adapters."""
        name = engine_lora_name(manifest.tenant, manifest.name, manifest.version)
        if name in self.pinned:
            return
        most_count = max(1, self.residency.capacity // 2)
        most_bytes = self.settings.engine_adapter_max_bytes // 2
        held = sum(m.size_bytes for m in self.pinned.values())
        if len(self.pinned) + 1 > most_count or held + manifest.size_bytes > most_bytes:
            raise Conflict(f"pinning {manifest.ref} would pin {len(self.pinned) + 1} adapters "
                           f"({held + manifest.size_bytes} bytes); pins may take at most half of the engine tier "
                           f"({most_count} adapters, {most_bytes} bytes): unpin another adapter, or raise "
                           f"LORAPLEX_MAX_CPU_LORAS / LORAPLEX_ENGINE_ADAPTER_MAX_BYTES")

    async def refresh_pins(self) -> list[tuple[Pin, Manifest | None]]:
        """Read the pins, resolve each to its version now, keep those versions and load them into the engine.
        Returns each pin with its version (None: its adapter or alias is gone; the pin waits for it)."""
        self._refreshed = time.monotonic()
        pins = await asyncio.to_thread(self.pins.list)
        resolved: list[tuple[Pin, Manifest | None]] = []
        for pin in pins:
            try:
                manifest = await asyncio.to_thread(self.adapters.resolve, pin.tenant, pin.model)
            except LoraplexError:
                manifest = None
            resolved.append((pin, manifest))
        self.pinned = {engine_lora_name(m.tenant, m.name, m.version): m for _p, m in resolved if m is not None}
        self._pinned_keys = {cache_key(m) for m in self.pinned.values()}
        metrics.TIER_ADAPTERS.labels("pinned").set(len(self.pinned))
        metrics.TIER_BYTES.labels("pinned").set(sum(m.size_bytes for m in self.pinned.values()))
        for manifest in self.pinned.values():
            try:
                await self.warm(manifest)
            except LoraplexError as e:
                log.warning("could not load pinned adapter %s: %s", manifest.ref, e.message)
        return resolved

    def refresh_soon(self) -> None:
        """Re-read the pins in the background if they are older than `pins_refresh_s`."""
        stale = time.monotonic() - self._refreshed > self.settings.pins_refresh_s
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = self._spawn(self.refresh_pins(), "reading pins")

    def _spawn(self, coro, what: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s failed: %r", what, t.exception())

        task.add_done_callback(done)
        return task


def _publish(tier: str, usage: TierUsage) -> None:
    metrics.TIER_ADAPTERS.labels(tier).set(usage.count)
    metrics.TIER_BYTES.labels(tier).set(usage.bytes)
