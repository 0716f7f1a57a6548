"""A gateway renews what it remembers (resolved names, keys) at one shared read while nothing changed, and sees a
change made through another replica within its cache time; real SeaweedFS, the gateway without an engine."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import AuthenticationFailed
from registry.adapter_registry import AdapterRegistry
from registry.store import ObjectStore
from registry.tenants import TenantRegistry
from serving.gateway import Gateway
from serving.settings import ServingSettings
from tests.helpers.tiny_artifacts import adapter_files

pytestmark = pytest.mark.integration


def _gateway(registry_settings, ttl: float) -> Gateway:
    settings = ServingSettings(**registry_settings.model_dump(), resolve_cache_s=ttl, auth_cache_s=ttl)
    store = ObjectStore(settings)
    return Gateway(settings=settings, store=store, tenants=TenantRegistry(store, auth_cache_ttl_s=0),
                   adapters=AdapterRegistry(store, settings), cache=None, residency=None, admission=None,
                   transport=None)


def _count_store_calls(gw: Gateway, monkeypatch) -> list[str]:
    calls: list[str] = []
    for method in ("get", "list_info", "head"):
        real = getattr(gw.store, method)
        monkeypatch.setattr(gw.store, method, lambda *a, _r=real, _m=method, **k: calls.append(_m) or _r(*a, **k))
    return calls


def test_renewals_read_only_the_generation_while_nothing_changed(store, registry_settings, monkeypatch):
    tenants, adapters = TenantRegistry(store, auth_cache_ttl_s=0), AdapterRegistry(store, registry_settings)
    _, key = tenants.create("acme", {})
    names = [f"a{i}" for i in range(5)]
    first = {n: adapters.publish("acme", n, adapter_files(seed=i), uploader="a") for i, n in enumerate(names)}
    gw = _gateway(registry_settings, ttl=0.05)
    calls = _count_store_calls(gw, monkeypatch)

    async def use_all() -> dict:
        assert (await gw.authenticate(key)).name == "acme"
        return {n: await gw.resolve("acme", n) for n in names}

    async def go():
        assert await use_all() == first  # cold
        for _ in range(3):  # renewals: each answer checked once on its own (the cold ones had no generation)
            await asyncio.sleep(0.1)
            await use_all()
        await asyncio.sleep(0.3)
        calls.clear()
        for _ in range(5):
            await asyncio.sleep(0.1)
            assert await use_all() == first
        await asyncio.sleep(0.1)  # the last renewals finish
        assert set(calls) <= {"head"} and 0 < len(calls) <= 5, calls  # the generation, shared, at most every 0.25 s

        other = AdapterRegistry(ObjectStore(registry_settings), registry_settings)  # another replica's write
        moved = other.publish("acme", "a0", adapter_files(seed=99), uploader="b")
        TenantRegistry(other.store, auth_cache_ttl_s=0).rotate_key("acme")
        changed = time.monotonic()
        while (await gw.resolve("acme", "a0")) != moved:
            assert time.monotonic() - changed < 2.0, "the new version was never seen"
            await asyncio.sleep(0.05)
        with pytest.raises(AuthenticationFailed):  # the rotated-away key, once the renewal saw the change
            for _ in range(40):
                await gw.authenticate(key)
                await asyncio.sleep(0.05)
    asyncio.run(go())


async def _renewed_at_the_generation_alone(gw: Gateway, calls: list[str], registry_settings, tenant: str, key: str,
                                           first: dict) -> None:
    """Cold answers, then their first renewals: the generation's read alone; then another replica's write shows."""
    assert (await gw.authenticate(key)).name == tenant
    assert {n: await gw.resolve(tenant, n) for n in first} == first  # cold
    await asyncio.sleep(0.1)
    calls.clear()
    assert (await gw.authenticate(key)).name == tenant
    assert {n: await gw.resolve(tenant, n) for n in first} == first
    await asyncio.sleep(0.1)  # the renewals finish
    assert set(calls) <= {"head"} and len(calls) <= 2, calls

    name = next(iter(first))
    moved = AdapterRegistry(ObjectStore(registry_settings), registry_settings).publish(
        tenant, name, adapter_files(seed=98), uploader="b")  # another replica's write
    changed = time.monotonic()
    while (await gw.resolve(tenant, name)) != moved:
        assert time.monotonic() - changed < 2.0, "the new version was never seen"
        await asyncio.sleep(0.05)


def test_first_answers_take_a_fresh_generation_so_their_first_renewal_is_not_a_full_check(
        store, registry_settings, monkeypatch):
    """A cold resolution or a new key, answered while the generation was read moments ago, is renewed at the
    generation's read alone (a thousand names' first renewals were each a listing); a write after the read is
    still seen."""
    tenants, adapters = TenantRegistry(store, auth_cache_ttl_s=0), AdapterRegistry(store, registry_settings)
    _, key = tenants.create("beta", {})
    first = {n: adapters.publish("beta", n, adapter_files(seed=10 + i), uploader="a")
             for i, n in enumerate(f"b{i}" for i in range(4))}
    gw = _gateway(registry_settings, ttl=0.05)
    calls = _count_store_calls(gw, monkeypatch)

    async def go():
        gw.generations.current()  # read moments ago, as under traffic
        await _renewed_at_the_generation_alone(gw, calls, registry_settings, "beta", key, first)
    asyncio.run(go())


def test_first_answers_after_this_gateways_own_write_are_renewed_at_the_generation_alone(
        registry_settings, monkeypatch):
    """Uploads through this gateway give it the generation (its own writes' bump): names first resolved after
    them, however long after and with no read of the generation since, are renewed without a listing."""
    gw = _gateway(registry_settings, ttl=0.05)
    _, key = TenantRegistry(gw.store, auth_cache_ttl_s=0).create("gamma", {})
    first = {n: gw.adapters.publish("gamma", n, adapter_files(seed=20 + i), uploader="a")
             for i, n in enumerate(f"c{i}" for i in range(4))}
    calls = _count_store_calls(gw, monkeypatch)

    async def go():
        await asyncio.sleep(0.3)  # no generation read is fresh any more
        await _renewed_at_the_generation_alone(gw, calls, registry_settings, "gamma", key, first)
    asyncio.run(go())
