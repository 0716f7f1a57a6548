"""`PATCH /admin/tenants/{name}` and `loraplex tenant set-quota` over a real gateway and SeaweedFS (no engine:
quota is decided before a request reaches one): validation, the change at once on the gateway that took it,
within 2 x LORAPLEX_AUTH_CACHE_S on another replica on the same bucket."""

from __future__ import annotations

import asyncio
import time

import pytest
from typer.testing import CliRunner

from common.procs import free_port
from registry.store import ObjectStore
from registry.tenants import TenantRegistry
from serving.gateway import Gateway
from serving.settings import ServingSettings
from tests.e2e.helpers import start_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(seaweed, tiny_base, tmp_path_factory):
    engine = ServingSettings(base_model=tiny_base, engine_url=f"http://127.0.0.1:{free_port()}")
    st = start_gateway(engine, seaweed.endpoint, tiny_base, tmp_path_factory.mktemp("cache"))
    yield st
    st.close()


def _patch(st, name: str, body, key: str | None = None):
    with st.admin(key) as c:
        return c.patch(f"/admin/tenants/{name}", json=body)


def _complete(st, key: str) -> int:
    with st.client(key) as c:
        return c.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1}).status_code


def test_patch_changes_only_the_named_quotas(gateway):
    gateway.add_tenant("patchy", {"requests_per_minute": 5, "max_concurrent": 2})
    r = _patch(gateway, "patchy", {"quotas": {"tokens_per_minute": 900, "max_concurrent": None}})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "patchy" and r.json()["quotas"] == {"requests_per_minute": 5, "tokens_per_minute": 900}
    with gateway.admin() as c:
        listed = {t["name"]: t["quotas"] for t in c.get("/admin/tenants").json()["data"]}
    assert listed["patchy"] == r.json()["quotas"]


@pytest.mark.parametrize("quotas, field", [
    ({"request_per_minute": 5}, "request_per_minute"),  # a typo is refused, not stored and ignored
    ({"max_concurrent": -1}, "max_concurrent"),
    ({"tokens_per_minute": "100"}, "tokens_per_minute"),
    ({"tokens_per_minute": 1.5}, "tokens_per_minute"),
])
def test_patch_refuses_what_is_not_a_known_non_negative_int_naming_the_field(gateway, quotas, field):
    """The body is checked before the tenant is looked up: 400 whether or not it exists."""
    r = _patch(gateway, "patchy", {"quotas": quotas})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == f"body.quotas.{field}" and field in r.json()["error"]["message"]


def test_patch_needs_the_admin_key_and_an_existing_tenant(gateway):
    key = gateway.add_tenant("selfish")
    assert _patch(gateway, "selfish", {"quotas": {"max_concurrent": 0}}, key=key).status_code == 401
    r = _patch(gateway, "nobody", {"quotas": {"max_concurrent": 1}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "tenant_not_found"


def test_a_quota_change_applies_at_once_on_this_gateway(gateway):
    key = gateway.add_tenant("loud")
    assert _complete(gateway, key) != 429  # no quota (no engine either: an engine error, not a refusal)
    assert _patch(gateway, "loud", {"quotas": {"requests_per_minute": 2}}).status_code == 200
    assert _complete(gateway, key) != 429  # the minute's second request...
    assert _complete(gateway, key) == 429  # ...and no more, though the key was cached with no quota


def test_another_replica_sees_the_change_within_twice_its_auth_cache(gateway):
    key = gateway.add_tenant("far")
    settings = gateway.gateway.settings.model_copy(update={"auth_cache_s": 0.5})
    store = ObjectStore(settings)
    other = Gateway(settings=settings, store=store, tenants=TenantRegistry(store, auth_cache_ttl_s=0), adapters=None,
                    cache=None, residency=None, admission=None, transport=None)

    async def go():
        assert (await other.authenticate(key)).quotas == {}
        assert _patch(gateway, "far", {"quotas": {"max_concurrent": 3}}).status_code == 200
        changed = time.monotonic()
        await asyncio.sleep(2 * settings.auth_cache_s)
        assert (await other.authenticate(key)).quotas == {"max_concurrent": 3}, \
            f"still the old quotas {time.monotonic() - changed:.2f}s after the change"
    asyncio.run(go())


def test_cli_set_quota(gateway):
    from loraplex.cli import app

    gateway.add_tenant("clied", {"max_concurrent": 4})
    env = {"LORAPLEX_GATEWAY_URL": gateway.url, "LORAPLEX_ADMIN_URL": gateway.admin_url,
           "LORAPLEX_ADMIN_KEY": gateway.admin_key, "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["tenant", "set-quota", "clied", "--requests-per-minute", "60",
                                      "--tokens-per-minute", "0"], env=env)
    assert result.exit_code == 0, result.output
    assert "'requests_per_minute': 60" in result.output and "'max_concurrent': 4" in result.output
    with gateway.api() as admin:
        quotas = {t["name"]: t["quotas"] for t in admin.call("GET", "/admin/tenants")["data"]}["clied"]
    assert quotas == {"max_concurrent": 4, "requests_per_minute": 60, "tokens_per_minute": 0}
    result = CliRunner().invoke(app, ["tenant", "set-quota", "clied"], env=env)
    assert result.exit_code != 0 and "--requests-per-minute" in result.output
    result = CliRunner().invoke(app, ["tenant", "set-quota", "clied", "--max-concurrent", "-1"], env=env)
    assert result.exit_code != 0


@pytest.mark.parametrize("quotas, field", [
    ({"max_concurrent": "2"}, "max_concurrent"),  # stored as is, it failed every request of the tenant (500)
    ({"rpm": 60}, "rpm"),
    ({"tokens_per_minute": -5}, "tokens_per_minute"),
])
def test_create_refuses_quotas_that_are_not_known_non_negative_ints(gateway, quotas, field):
    with gateway.admin() as admin:
        r = admin.post("/admin/tenants", json={"name": "badquota", "quotas": quotas})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == f"body.quotas.{field}"
        assert "badquota" not in {t["name"] for t in admin.get("/admin/tenants").json()["data"]}  # nothing stored
