"""Tenants and API keys on a real SeaweedFS."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.errors import AuthenticationFailed, InvalidName, ModelNotFound, TenantExists, TenantNotFound
from registry import layout
from registry.adapter_registry import AdapterRegistry
from registry.tenants import TenantRegistry, hash_key
from tests.helpers.tiny_artifacts import adapter_files

pytestmark = pytest.mark.integration


@pytest.fixture
def tenants(store) -> TenantRegistry:
    return TenantRegistry(store)


def test_create_and_authenticate(tenants, store):
    tenant, key = tenants.create("acme", {"max_adapters": 10})
    assert tenant.name == "acme" and tenant.quotas == {"max_adapters": 10}
    assert key.startswith("lpx_") and len(key) >= 4 + 43
    assert tenants.authenticate(key) == tenant
    assert tenants.get("acme") == tenant
    # only the key's SHA-256 is stored, nowhere the key itself
    for object_key in store.list(""):
        assert key not in store.get(object_key)[0].decode() and key not in object_key
    assert store.list("keys/") == [f"keys/{hash_key(key)}.json"]


def test_duplicate_create_refused(tenants):
    tenants.create("acme", {})
    with pytest.raises(TenantExists):
        tenants.create("acme", {})


def test_concurrent_create_has_one_winner(tenants):
    def create(_: int) -> str | None:
        try:
            return tenants.create("racer", {})[1]
        except TenantExists:
            return None

    with ThreadPoolExecutor(16) as pool:
        keys = [k for k in pool.map(create, range(16)) if k]
    assert len(keys) == 1
    assert tenants.authenticate(keys[0]).name == "racer"


def test_unknown_keys_refused(tenants):
    tenants.create("acme", {})
    for key in ["", "lpx_", "lpx_" + "A" * 43, "sk-not-ours", "lpx_" + "x" * 10_000, None, "lpx_../../x"]:
        with pytest.raises(AuthenticationFailed):
            tenants.authenticate(key)


def test_rotate_revokes_the_old_key_at_once(tenants):
    _, old = tenants.create("acme", {})
    assert tenants.authenticate(old).name == "acme"  # now in the in-process cache too
    new = tenants.rotate_key("acme")
    with pytest.raises(AuthenticationFailed):
        tenants.authenticate(old)
    assert tenants.authenticate(new).name == "acme"


def test_rotate_is_seen_by_another_process_without_cache(tenants, store):
    _, old = tenants.create("acme", {})
    other = TenantRegistry(store, auth_cache_ttl_s=0)
    assert other.authenticate(old).name == "acme"
    tenants.rotate_key("acme")
    with pytest.raises(AuthenticationFailed):
        other.authenticate(old)


def test_a_left_over_key_index_proves_nothing(tenants, store):
    _, old = tenants.create("acme", {})
    tenants.rotate_key("acme")
    store.put(f"keys/{hash_key(old)}.json", json.dumps({"tenant": "acme"}).encode())  # a crash left it
    with pytest.raises(AuthenticationFailed):
        tenants.authenticate(old)


def test_list_and_get(tenants):
    tenants.create("beta", {})
    tenants.create("acme", {"rpm": 5})
    assert [t.name for t in tenants.list()] == ["acme", "beta"]
    with pytest.raises(TenantNotFound):
        tenants.get("nobody")
    with pytest.raises(TenantNotFound):
        tenants.rotate_key("nobody")


def test_hostile_tenant_names(tenants, store):
    for name in ["../x", "%2e%2e", "/abs", "s3://x", "Ｘ", "a" * 100, "", "A", "x/y", None]:
        for action in (lambda n=name: tenants.create(n, {}), lambda n=name: tenants.get(n),
                       lambda n=name: tenants.delete(n), lambda n=name: tenants.rotate_key(n)):
            with pytest.raises(InvalidName):
                action()
    assert store.list("") == []


def test_delete_makes_key_and_adapters_unreachable(tenants, store, registry_settings):
    adapters = AdapterRegistry(store, registry_settings)
    _, key = tenants.create("acme", {})
    tenants.authenticate(key)
    adapters.publish("acme", "chat", adapter_files(), uploader="acme")
    tenants.delete("acme")
    with pytest.raises(AuthenticationFailed):
        tenants.authenticate(key)
    with pytest.raises(ModelNotFound):
        adapters.resolve("acme", "chat")
    assert store.list("") == [layout.GENERATION_KEY]  # nothing of the tenant; the registry's change marker
    # a new tenant of the same name starts empty, and the old key stays dead
    _, key2 = tenants.create("acme", {})
    assert adapters.list_adapters("acme") == []
    with pytest.raises(AuthenticationFailed):
        tenants.authenticate(key)
    assert tenants.authenticate(key2).name == "acme"


def test_create_clears_what_a_crashed_delete_left(tenants, store, registry_settings):
    adapters = AdapterRegistry(store, registry_settings)
    tenants.create("acme", {})
    adapters.publish("acme", "chat", adapter_files(), uploader="acme")
    store.delete("tenants/acme.json")  # the delete crashed right after its first step
    tenants.create("acme", {})
    with pytest.raises(ModelNotFound):
        adapters.resolve("acme", "chat")


def test_set_quotas_merges_and_keeps_the_key(tenants):
    _, key = tenants.create("acme", {"requests_per_minute": 5, "max_adapters": 10})
    tenants.authenticate(key)  # cached in this process with the old quotas
    tenant = tenants.set_quotas("acme", {"tokens_per_minute": 1000, "requests_per_minute": None})
    assert tenant.quotas == {"max_adapters": 10, "tokens_per_minute": 1000}  # None removed a limit
    assert tenants.get("acme") == tenant and tenants.authenticate(key) == tenant  # the key still works
    new = tenants.rotate_key("acme")
    assert tenants.authenticate(new).quotas == tenant.quotas  # a rotation keeps the quotas
    with pytest.raises(TenantNotFound):
        tenants.set_quotas("nobody", {"max_concurrent": 1})


def test_concurrent_quota_changes_are_all_kept(tenants):
    """Compare-and-swap on the record: a change that lost the race is merged in on a fresh read."""
    tenants.create("acme", {})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: tenants.set_quotas("acme", {f"limit_{i}": i}), range(8)))
    assert tenants.get("acme").quotas == {f"limit_{i}": i for i in range(8)}
