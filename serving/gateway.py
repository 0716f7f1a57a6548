"""The gateway: everything one gateway process holds, built once from settings and shared by the routes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from common.errors import LoraplexError
from registry.adapter_registry import AdapterRegistry
from registry.base_spec import BaseModelSpec
from registry.cache import ArtifactCache
from registry.manifest import Manifest
from registry.noop_probe import default_probes
from registry.pins import PinRegistry
from registry.store import ObjectStore
from registry.tenants import Tenant, TenantRegistry, hash_key
from serving import metrics
from serving.admission import Admission
from serving.engine import EngineClient
from serving.fallback import LastGood
from serving.renewals import GenerationWatch
from serving.residency import AdapterResidency
from serving.settings import ServingSettings
from serving.tiers import Tiers
from serving.transport.base import Transport
from serving.transport.http import HttpTransport


@dataclass
class Gateway:
    settings: ServingSettings
    store: ObjectStore
    tenants: TenantRegistry
    adapters: AdapterRegistry
    cache: ArtifactCache
    residency: AdapterResidency  # adapters loaded in the local engine (HTTP transport)
    admission: Admission
    transport: Transport  # how inference requests reach an engine (serving/forwarding.py sends through it)
    supervisor: object | None = None  # an EngineSupervisor when the gateway owns the engine
    tiers: Tiers | None = None  # pins, prefetch and gauges over the engine and disk tiers
    known_keys: LastGood = field(default_factory=lambda: LastGood("tenant"))  # key hash -> Checked(tenant)
    known_models: LastGood = field(default_factory=lambda: LastGood("manifest"))  # (tenant, ref) -> Checked(manifest)
    generations: GenerationWatch = field(init=False)  # the registry's generation, shared by every renewal
    _ready: tuple[float, bool, dict] = field(default=(0.0, False, {}))

    def __post_init__(self) -> None:
        self.generations = GenerationWatch(self.store)

    @classmethod
    def from_settings(cls, settings: ServingSettings, transport: Transport | None = None) -> Gateway:
        """The gateway of `settings` (its registry's settings included); its transport is HTTP to the local
        engine unless one is given (Ray)."""
        store = ObjectStore(settings)
        base_spec = BaseModelSpec.from_dir(settings.base_model) if settings.base_model else None
        adapters = AdapterRegistry(store, settings, base_spec, probes=default_probes(settings, base_spec, warm=True))
        engine = EngineClient(settings)
        cache = ArtifactCache(settings, adapters.stream_file)
        residency = AdapterResidency(engine, settings.max_cpu_loras, settings.engine_adapter_max_bytes)
        return cls(
            settings=settings, store=store, tenants=TenantRegistry(store, auth_cache_ttl_s=0), adapters=adapters,
            cache=cache, residency=residency, admission=Admission.from_settings(settings),
            transport=transport or HttpTransport(settings, engine, residency, cache),
            tiers=None if transport else Tiers(settings, residency, cache, adapters, PinRegistry(store)),
        )

    async def authenticate(self, api_key: str) -> Tenant:
        # The gateway's one cache of keys and the tenant records they carry (quotas included; its registry
        # keeps none: a renewal must reach S3): reused for `auth_cache_s`, then renewed in the background
        # while used, never answered older than twice that (an idle key waits for a fresh read). So a key
        # revoked or a quota changed through another replica applies here within 2 x `auth_cache_s` (plus
        # the read's round trip); through this gateway at once (`forget_keys`).
        ttl = self.settings.auth_cache_s
        digest = hash_key(api_key)
        known = self.known_keys.peek(digest)

        renew = self.generations.renewal(known, lambda: (self.tenants.authenticate(api_key), None))
        checked = await self.known_keys.call(digest, renew, reuse_s=ttl, refresh_ahead=True, max_stale_s=2 * ttl,
                                             holds=self.generations.holds)
        return checked.value

    def forget_keys(self, name: str) -> None:
        """After a change of the tenant's record (quotas): its next request reads it afresh."""
        self.known_keys.forget(lambda _k, checked: checked.value.name == name)

    def forget_tenant(self, name: str) -> None:
        """After a key rotation or a delete: nothing of this tenant may be replayed during an S3 outage."""
        self.forget_keys(name)
        self.forget_models(name)

    def forget_models(self, tenant: str, name: str | None = None) -> None:
        """After an upload, alias move or delete through this gateway: resolve `tenant`'s names afresh."""
        def stale(key, _model) -> bool:
            return key[0] == tenant and (name is None or key[1].partition("@")[0] == name)

        self.known_models.forget(stale)

    async def resolve(self, tenant: str, ref: str) -> Manifest:
        """`ref` within `tenant` (404s as ModelNotFound). A success is reused for `resolve_cache_s`, then renewed
        in the background while still used: without it every inference request costs S3 round trips (alias,
        manifest) before admission, and a flooding tenant's lookups would queue the others' in the thread pool.
        Writes through this gateway take effect at once; an alias moved through another replica, within
        `resolve_cache_s` plus one round trip. A renewal costs one shared read of the registry's generation while
        nothing changed (serving/renewals.py), one listing of the name when something did (`resolve_tagged`):
        with a thousand names in use, full resolutions every 2 s cost the gateway more CPU than the requests."""
        key = (tenant, ref)
        known = self.known_models.peek(key)

        renew = self.generations.renewal(
            known, lambda: self.adapters.resolve_tagged(tenant, ref, known and (known.value, known.tag)))
        started = time.monotonic()
        checked = await self.known_models.call(key, renew, reuse_s=self.settings.resolve_cache_s, refresh_ahead=True,
                                               holds=self.generations.holds)
        if known is None:  # a name new to this gateway: its request waited for the registry's reads
            metrics.COLD_START.labels("resolve").observe(time.monotonic() - started)
        manifest = checked.value
        self.adapters.check_served(manifest)  # 409 for a version validated against another base
        return manifest

    def engine_failed(self) -> None:
        """A request saw the engine fail: the next /ready checks again (the supervisor may not have reaped a
        killed engine yet, and a cached 200 would hide the crash)."""
        self._ready = (0.0, False, {})

    async def readiness(self) -> tuple[bool, dict]:
        """Engine answers a real generate and S3 answers; the verdict is reused for a moment."""
        if getattr(self.supervisor, "down", False):  # never from the cache: a crash is news at once
            return False, self.supervisor.ready_detail()  # the engine's root cause where it failed
        at, ok, detail = self._ready
        if time.monotonic() - at < self.settings.ready_cache_s:
            return ok, detail
        detail = {"engine": "ok", "storage": "ok"}
        try:
            await asyncio.to_thread(self.store.ping)
        except LoraplexError as e:
            detail["storage"] = e.message
        except Exception as e:  # e.g. the bucket is missing: not ready, never a crash
            detail["storage"] = f"{type(e).__name__}: {e} (does bucket {self.store.bucket!r} exist?)"
        try:
            await self.transport.probe()
        except LoraplexError as e:
            detail["engine"] = e.message
        ok = detail == {"engine": "ok", "storage": "ok"}
        self._ready = (time.monotonic(), ok, detail)
        return ok, detail
