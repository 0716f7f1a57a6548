"""The console's session and CSRF rules, and that it lives on the operator plane only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from serving.app import create_app
from serving.console import session as console_session
from serving.console.session import BAD_KEY, COOKIE, TENANT_KEY_REFUSED, ConsoleSessions
from serving.operator_app import create_operator_app
from serving.settings import ServingSettings

pytestmark = pytest.mark.unit

ADMIN = "admin-secret"


def test_only_the_admin_key_opens_a_session():
    sessions = ConsoleSessions(ADMIN)
    cookie, why = sessions.login(ADMIN)
    assert why is None and sessions.read(cookie) is not None
    assert sessions.login("lpx_" + "a" * 43) == (None, TENANT_KEY_REFUSED)
    assert sessions.login("admin-secreT") == (None, BAD_KEY)
    assert ConsoleSessions(None).login("")[0] is None  # no admin key: nobody logs in


def test_a_session_is_signed_expires_and_ends_at_logout(monkeypatch):
    sessions = ConsoleSessions(ADMIN)
    cookie, _ = sessions.login(ADMIN)
    session = sessions.read(cookie)
    assert sessions.read(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None  # tampered
    assert ConsoleSessions("another-admin-key").read(cookie) is None  # a new admin key ends every session
    assert sessions.csrf_ok(session, session.csrf) and not sessions.csrf_ok(session, None)
    assert not sessions.csrf_ok(session, sessions.read(sessions.login(ADMIN)[0]).csrf)  # tokens are per session
    monkeypatch.setattr(console_session, "MAX_AGE_S", -1)
    assert sessions.read(cookie) is None  # expired
    monkeypatch.undo()
    sessions.logout(session)
    assert sessions.read(cookie) is None


def _gateway():
    return SimpleNamespace(settings=ServingSettings(admin_key=SecretStr(ADMIN)))


def test_the_console_is_on_the_operator_plane_only():
    tenant_app = create_app()
    tenant_app.state.gateway = _gateway()
    assert TestClient(tenant_app).get("/console/login").status_code == 404  # not entered: no real gateway
    client = TestClient(create_operator_app(_gateway()))
    r = client.get("/console", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert client.get("/console/login").status_code == 200


def test_login_sets_a_strict_http_only_cookie_and_forms_need_the_csrf_token():
    client = TestClient(create_operator_app(_gateway()))
    r = client.post("/console/login", data={"key": "lpx_tenantkey"}, follow_redirects=False)
    assert r.status_code == 401 and "tenant&#39;s API key" in r.text and COOKIE not in r.cookies
    r = client.post("/console/login", data={"key": ADMIN}, follow_redirects=False)
    assert r.status_code == 303
    header = r.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header and "path=/console" in header and "max-age=" in header
    r = client.post("/console/tenants", data={"name": "x"}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post("/console/logout", data={"csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403
