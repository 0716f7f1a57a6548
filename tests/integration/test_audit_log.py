"""The audit log on a real gateway and SeaweedFS (no engine: none is needed for writes): a sequence of writes
through the API comes back from `GET /admin/audit` and `loraplex audit` in order, with actors, request ids and
alias before → after; no key material in any stored object; tenant keys cannot read it; events are never
overwritten."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from typer.testing import CliRunner

from common.procs import free_port
from registry.audit import AUDIT_PREFIX, AuditEvent, AuditLog
from registry.errors import PreconditionFailed
from serving.settings import ServingSettings
from tests.e2e.helpers import start_gateway, upload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(seaweed, demo, tmp_path_factory):
    """A gateway built as `loraplex up` builds it, on a fresh bucket; no engine behind it."""
    engine = ServingSettings(base_model=demo.base_dir, engine_url=f"http://127.0.0.1:{free_port()}")
    st = start_gateway(engine, seaweed.endpoint, demo.base_dir, tmp_path_factory.mktemp("cache"))
    yield st
    st.close()


def _audit(st, **params) -> dict:
    with st.admin() as admin:
        r = admin.get("/admin/audit", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _raw_events(st) -> dict[str, bytes]:
    store = st.gateway.store
    return {k: store.get(k)[0] for k in store.list(AUDIT_PREFIX)}


def test_a_sequence_of_writes_is_audited_in_order_without_keys(gateway, demo):
    st = gateway
    with st.admin() as admin:
        created = admin.post("/admin/tenants", json={"name": "audited", "quotas": {"requests_per_minute": 60}})
        assert created.status_code == 201, created.text
        assert admin.post("/admin/tenants", json={"name": "audited"}).status_code == 409  # refused: recorded
    key = created.json()["api_key"]
    v1 = upload(st, key, "rev", demo.adapter_dirs["reverse"])["version"]
    v2 = upload(st, key, "rev", demo.adapter_dirs["caesar"])["version"]
    with st.client(key) as c:
        first = c.put("/v1/adapters/rev/aliases/prod", json={"version": v1, "expected_version": None})
        assert first.status_code == 200, first.text
        assert c.put("/v1/adapters/rev/aliases/prod", json={"version": v2, "expected_version": v1}).status_code == 200
        stale = c.put("/v1/adapters/rev/aliases/prod", json={"version": v1, "expected_version": v1})
        assert stale.status_code == 409
        assert c.delete(f"/v1/adapters/rev/versions/{v2}").status_code == 409  # prod points at it
        assert c.delete(f"/v1/adapters/rev/versions/{v1}").status_code == 204
    with st.admin() as admin:
        rotated = admin.post("/admin/tenants/audited/keys")
        assert rotated.status_code == 200
    new_key = rotated.json()["api_key"]

    events = _audit(st, tenant="audited")["data"]
    got = [(e["actor"], e["action"], e["target"], e["outcome"]) for e in reversed(events)]
    assert got == [
        ("admin", "tenant.create", None, "ok"),
        ("admin", "tenant.create", None, "tenant_exists"),
        ("audited", "adapter.upload", "rev", "ok"),
        ("audited", "adapter.upload", "rev", "ok"),
        ("audited", "adapter.alias", "rev@prod", "ok"),
        ("audited", "adapter.alias", "rev@prod", "ok"),
        ("audited", "adapter.alias", "rev@prod", "alias_conflict"),
        ("audited", "adapter.delete", f"rev@{v2}", "version_in_use"),
        ("audited", "adapter.delete", f"rev@{v1}", "ok"),
        ("admin", "tenant.rotate_key", None, "ok"),
    ]
    by_step = list(reversed(events))
    assert by_step[0]["detail"] == {"quotas": {"requests_per_minute": 60}}
    assert by_step[2]["detail"]["version"] == v1 and by_step[3]["detail"]["version"] == v2
    assert by_step[4]["detail"] == {"before": None, "after": v1}
    assert by_step[5]["detail"] == {"before": v1, "after": v2}
    assert by_step[6]["detail"] == {"version": v1, "expected_version": v1}
    assert by_step[4]["request_id"] == first.headers["x-request-id"]
    assert len({e["request_id"] for e in events}) == len(events)
    times = [e["time"] for e in by_step]
    assert times == sorted(times) and all(t.endswith("Z") for t in times)

    # No key material anywhere in the stored objects: neither key, nor its hash, nor the admin key.
    raw = b"".join(_raw_events(st).values())
    for secret in (key, new_key, st.admin_key, hashlib.sha256(key.encode()).hexdigest(),
                   hashlib.sha256(new_key.encode()).hexdigest()):
        assert secret.encode() not in raw
    assert b"lpx_" not in raw

    # Filters and pages.
    aliases = _audit(st, tenant="audited", action="adapter.alias")["data"]
    assert [e["detail"].get("after") for e in aliases] == [None, v2, v1]
    page = _audit(st, tenant="audited", limit=4)
    assert [e["id"] for e in page["data"]] == [e["id"] for e in events[:4]] and page["next"]
    rest = _audit(st, tenant="audited", limit=100, before=page["next"])
    assert [e["id"] for e in rest["data"]] == [e["id"] for e in events[4:]] and rest["next"] is None
    assert _audit(st, tenant="audited", since="2999-01-01")["data"] == []
    assert len(_audit(st, tenant="audited", since=by_step[5]["time"])["data"]) == 5  # since is inclusive


def test_only_the_admin_key_reads_the_audit_log(gateway):
    st = gateway
    key = st.add_tenant("snoop")
    with st.admin(key) as c:
        r = c.get("/admin/audit")
        assert r.status_code == 401 and "admin" in r.json()["error"]["message"]
    assert httpx.get(f"{st.admin_url}/admin/audit").status_code == 401  # no key at all
    for k in (key, st.admin_key):  # the tenants' port has no admin routes at all
        with st.client(k) as c:
            assert c.get("/admin/audit").status_code == 404
    with st.admin() as admin:
        assert admin.get("/admin/audit", params={"since": "yesterday"}).status_code == 400
        assert admin.get("/admin/audit", params={"action": "tenant.steal"}).status_code == 400


def test_events_are_never_overwritten(gateway):
    st = gateway
    st.add_tenant("immutable")
    before = _raw_events(st)
    key = next(k for k in before if k.endswith(".tenant.create.immutable.json"))
    event = AuditEvent.model_validate(json.loads(before[key]))
    with pytest.raises(PreconditionFailed):
        AuditLog(st.gateway.store).append(event.model_copy(update={"outcome": "forged"}))
    with pytest.raises(PreconditionFailed):
        st.gateway.store.put(key, b"{}", if_none_match=True)
    st.add_tenant("immutable2")  # more writes add objects and change none
    after = _raw_events(st)
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 1


def test_cli_audit_through_the_api(gateway):
    st = gateway
    st.add_tenant("clitenant")
    env = {"LORAPLEX_GATEWAY_URL": st.url, "LORAPLEX_ADMIN_URL": st.admin_url, "LORAPLEX_ADMIN_KEY": st.admin_key,
           "COLUMNS": "250"}
    from loraplex.cli import app

    result = CliRunner().invoke(app, ["audit", "--tenant", "clitenant", "--json"], env=env)
    assert result.exit_code == 0, result.output
    events = json.loads(result.stdout)
    assert [(e["actor"], e["action"], e["outcome"]) for e in events] == [("admin", "tenant.create", "ok")]
    table = CliRunner().invoke(app, ["audit", "--action", "tenant.create", "--limit", "2"], env=env)
    assert table.exit_code == 0 and "tenant.create" in table.output and "clitenant" in table.output, table.output


def test_quota_changes_are_audited(gateway):
    st = gateway
    st.add_tenant("quotaed")
    with st.admin() as admin:
        r = admin.patch("/admin/tenants/quotaed", json={"quotas": {"requests_per_minute": 5}})
        assert r.status_code == 200, r.text
        missing = admin.patch("/admin/tenants/ghost", json={"quotas": {"requests_per_minute": 5}})
        assert missing.status_code == 404, missing.text
    (event,) = _audit(st, tenant="quotaed", action="tenant.set_quotas")["data"]
    assert (event["actor"], event["outcome"]) == ("admin", "ok")
    assert event["detail"] == {"quotas": {"requests_per_minute": 5}}
    (refused,) = _audit(st, tenant="ghost")["data"]
    assert refused["action"] == "tenant.set_quotas" and refused["outcome"] == missing.json()["error"]["code"]
