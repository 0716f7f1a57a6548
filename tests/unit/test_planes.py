"""Two planes: the tenants' app serves no operator route; the operators' app guards the admin API and /metrics
(admin key; without one only from loopback, and only if LORAPLEX_METRICS_AUTH=loopback); it binds loopback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr

from serving.app import create_app
from serving.listeners import bind
from serving.operator_app import create_operator_app
from serving.settings import ServingSettings

pytestmark = pytest.mark.unit

ADMIN, TENANT = "admin-secret", "lpx_tenant"


def _gateway(**settings):
    async def authenticate(key):
        return SimpleNamespace(name="acme", quotas={})

    return SimpleNamespace(settings=ServingSettings(admin_key=SecretStr(ADMIN), **settings),
                           authenticate=authenticate)


def _auth(key):
    return {"Authorization": f"Bearer {key}"} if key else {}


def test_the_tenants_plane_has_no_operator_route():
    app = create_app()
    paths = {r.path for r in app.routes if isinstance(r, APIRoute)}
    assert not {p for p in paths if p.startswith("/admin") or p == "/metrics"}, paths
    assert {"/health", "/ready", "/v1/completions"} <= paths
    app.state.gateway = _gateway()
    client = TestClient(app)  # not entered: the lifespan would build a real gateway
    for key in (None, TENANT, ADMIN):
        for method, path in (("GET", "/metrics"), ("GET", "/admin/tenants"), ("POST", "/admin/tenants"),
                             ("GET", "/admin/audit")):
            r = client.request(method, path, headers=_auth(key), json={"name": "x"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (key, path)


def test_the_operators_plane_takes_only_the_admin_key():
    client = TestClient(create_operator_app(_gateway()), client=("127.0.0.1", 50000))
    for key in (None, TENANT, "admin-secreT"):
        for path in ("/admin/tenants", "/admin/audit", "/metrics"):
            r = client.get(path, headers=_auth(key))
            assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}, path
    r = client.get("/metrics", headers=_auth(ADMIN))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert client.get("/health").json() == {"status": "ok"}
    assert client.post("/v1/completions", headers=_auth(TENANT), json={}).status_code == 404  # no tenant API


@pytest.mark.parametrize("peer, ok", [("127.0.0.1", True), ("::1", True), ("10.1.2.3", False),
                                      ("testclient", False)])
def test_loopback_scrapes_without_a_key_only_in_loopback_mode(peer, ok):
    app = create_operator_app(_gateway(metrics_auth="loopback"))
    client = TestClient(app, client=(peer, 50000))
    assert client.get("/metrics").status_code == (200 if ok else 401)
    assert client.get("/metrics", headers=_auth(ADMIN)).status_code == 200  # the key works from anywhere
    assert client.get("/admin/tenants").status_code == 401  # the admin API never goes keyless
    keyed = TestClient(create_operator_app(_gateway()), client=(peer, 50000))
    assert keyed.get("/metrics").status_code == 401  # the default (key): loopback needs the key too


def test_the_operators_plane_binds_loopback_on_its_own_port_by_default():
    settings = ServingSettings()
    assert settings.admin_host == "127.0.0.1" and settings.metrics_auth == "key"
    assert settings.admin_port != settings.gateway_port
    sock = bind(settings.admin_host, 0, "operator")
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


def test_a_taken_port_names_the_setting_to_change():
    sock = bind("127.0.0.1", 0, "operator")
    try:
        with pytest.raises(OSError, match="LORAPLEX_ADMIN_PORT"):
            bind("127.0.0.1", sock.getsockname()[1], "operator")
    finally:
        sock.close()


def test_the_gateway_refuses_one_port_for_both_planes(monkeypatch):
    from serving.__main__ import main

    monkeypatch.setenv("LORAPLEX_GATEWAY_PORT", "8123")
    monkeypatch.setenv("LORAPLEX_ADMIN_PORT", "8123")
    with pytest.raises(SystemExit, match="must differ"):
        main()


def test_an_unexpected_error_is_a_500_in_openai_shape_with_the_request_id():
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    from serving.http_app import new_app

    router = APIRouter()

    @router.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    with TestClient(new_app("t", [router]), raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"] in r.json()["error"]["message"]
