"""The inference routes' short path (serving/inference_lane.py) answers as their FastAPI routes do.

The same requests go to the tenants' app with the lane and to one without it (the FastAPI routes alone), over
a scripted transport: status, body and the request id header agree, for good requests and every kind of
client mistake; and the lane, not FastAPI's router, served the inference paths."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from common.errors import AuthenticationFailed
from serving import inference_lane
from serving.app import create_app
from serving.http_app import new_app
from serving.routes import adapters, files, fine_tuning, inference, model_artifacts, ops
from tests.unit.test_forwarding import LORA, FakeReply, FakeTransport, _gateway

KEY = "lpx_acme"
ANSWER = {"model": LORA, "choices": [{"text": "x"}], "usage": {"total_tokens": 5}}


def _app(lane: bool):
    if lane:
        app = create_app()
    else:
        routers = (m.router for m in (ops, inference, adapters, model_artifacts, files, fine_tuning))
        app = new_app("loraplex gateway", routers)
    gw = _gateway(FakeTransport(*[FakeReply(body=ANSWER) for _ in range(4)]))

    async def authenticate(key):
        if key != KEY:
            raise AuthenticationFailed("invalid API key")
        return SimpleNamespace(name="acme", quotas={})

    gw.authenticate = authenticate
    app.state.gateway = gw
    return TestClient(app)  # not entered: the lifespan would build a real gateway


CASES = [
    ("POST", "/v1/completions", {"model": "rev", "prompt": "hi"}, KEY),
    ("POST", "/v1/chat/completions", {"model": "rev", "messages": [{"role": "user", "content": "hi"}]}, KEY),
    ("POST", "/v1/completions", {"model": "rev", "prompt": "hi"}, None),  # no key
    ("POST", "/v1/completions", {"model": "rev", "prompt": "hi"}, "wrong"),
    ("POST", "/v1/completions", {"prompt": "hi"}, KEY),  # no model
    ("POST", "/v1/completions", {"model": "rev", "prompt": "hi", "path": "/etc/passwd"}, KEY),  # unknown field
    ("POST", "/v1/completions", b"{not json", KEY),
    ("POST", "/v1/chat/completions", {"model": "rev", "messages": "hi"}, KEY),
    ("GET", "/v1/completions", None, KEY),  # 405 from FastAPI's router, lane or not
]


@pytest.mark.parametrize("method, path, body, key", CASES)
def test_the_lane_answers_as_the_fastapi_route(method, path, body, key, monkeypatch):
    served = []
    real = inference_lane.serve

    async def spy(*args):
        served.append(args[-1])
        return await real(*args)

    monkeypatch.setattr(inference_lane, "serve", spy)
    answers = []
    for lane in (True, False):
        client = _app(lane)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = client.request(method, path, headers=headers, **kwargs)
        assert r.headers.get("x-request-id"), "the request log wraps both"
        answers.append((r.status_code, r.json()))
    assert answers[0] == answers[1]
    status = answers[0][0]
    assert status != 500, answers[0]
    if status == 200:
        assert answers[0][1]["model"] == body["model"]  # the public name, not the engine's
    assert served == ([path] if method == "POST" and status not in (401,) else []), served


def test_the_access_line_names_the_tenant(caplog):
    client = _app(lane=True)
    with caplog.at_level(logging.INFO, logger="loraplex.access"):
        r = client.post("/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                        json={"model": "rev", "prompt": "hi"})
    assert r.status_code == 200
    (line,) = [rec for rec in caplog.records if rec.name == "loraplex.access"]
    assert line.fields["tenant"] == "acme" and line.fields["path"] == "/v1/completions" and line.fields["status"] == 200
