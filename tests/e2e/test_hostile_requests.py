"""Hostile inference requests through the real gateway and engine: each one gets a shaped 4xx, the engine
never sees it, and the stack still serves afterwards."""

from __future__ import annotations

import pytest

from training.demo import demo_prompt

MIB = 1024 * 1024
OK = {"model": "base", "prompt": "hi", "max_tokens": 2, "temperature": 0}


def _json(**fields) -> dict:
    return {"json": {**OK, **fields}}


def _chat(**fields) -> dict:
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}
    return {"json": body, "path": "/v1/chat/completions"}


def _raw(content: bytes | str, **kw) -> dict:
    return {"content": content.encode() if isinstance(content, str) else content, **kw}


def _chunked(total: int):
    def gen():
        for _ in range(total // 65536):
            yield b" " * 65536
    return gen()


# (id, request, expected status, expected `param` or None). Each is sent as tenant acme.
CASES = [
    ("oversized", _raw(b'{"model": "base", "prompt": "' + b"a" * (2 * MIB) + b'"}'), 413, None),
    ("oversized-chunked", {"content": "chunked"}, 413, None),
    ("non-utf8", _raw(b'{"model": "base", "prompt": "\xff\xfe\xfa"}'), 400, None),
    ("non-json", _raw("model=base&prompt=hi"), 400, None),
    ("json-array", _raw("[1, 2]"), 400, None),
    ("deep-nesting", _raw("[" * 200_000 + "]" * 200_000), 400, None),
    ("nan", _raw('{"model": "base", "prompt": "hi", "temperature": NaN}'), 400, None),
    ("lone-surrogate", _raw('{"model": "base", "prompt": "\\ud800"}'), 400, None),
    ("overflow-float", _raw('{"model": "base", "prompt": "hi", "top_p": 1e400}'), 400, None),
    ("oov-token-ids", _json(prompt=[1, 2, 10**6]), 400, "prompt"),
    ("oov-token-ids-batch", _json(prompt=[[1, 2], [3, 2**40]]), 400, "prompt"),
    ("negative-token-id", _json(prompt=[-1, 3]), 400, "prompt"),
    ("empty-prompt", _json(prompt=[]), 400, "prompt"),
    ("too-many-prompts", _json(prompt=["x"] * 10_000), 400, "prompt"),
    ("prompt-object", _json(prompt={"a": 1}), 400, "prompt"),
    ("huge-n", _json(n=10**6), 400, "n"),
    ("huge-logprobs", _json(logprobs=10**6), 400, "logprobs"),
    ("huge-best-of", _json(best_of=10**6), 400, "best_of"),
    ("max-tokens-beyond-context", _json(max_tokens=10**6), 400, "max_tokens"),
    ("max-tokens-zero", _json(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-float", _json(max_tokens=1.5), 400, "max_tokens"),
    ("negative-temperature", _json(temperature=-1), 400, "temperature"),
    ("top-p-above-one", _json(top_p=2), 400, "top_p"),
    ("temperature-string", _json(temperature="hot"), 400, "temperature"),
    ("stream-string", _json(stream="false"), 400, "stream"),
    ("seed-overflow", _json(seed=2**80), 400, "seed"),
    ("logit-bias-oov", _json(logit_bias={"999999": 5}), 400, "logit_bias"),
    ("logit-bias-huge", _json(logit_bias={"5": 1e9}), 400, "logit_bias"),
    ("many-stops", _json(stop=["x"] * 100), 400, "stop"),
    ("stream-options-string", _json(stream=True, stream_options="yes"), 400, "stream_options"),
    ("chat-template", _chat(chat_template="{{ 7 * 7 }}"), 400, "chat_template"),
    ("guided-json", _json(guided_json={"type": "object"}), 400, "guided_json"),
    ("lora-request", _json(lora_request={"lora_path": "/etc"}), 400, "lora_request"),
    ("chat-bad-role", _chat(messages=[{"role": "root", "content": "hi"}]), 400, "messages"),
    ("chat-image-part", _chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]), 400, "messages"),
    ("chat-too-many-messages", _chat(messages=[{"role": "user", "content": ""}] * 20_000), 400, "messages"),
    ("chat-huge-top-logprobs", _chat(logprobs=True, top_logprobs=10**6), 400, "top_logprobs"),
    ("chat-max-completion-tokens", _chat(max_completion_tokens=10**9), 400, "max_completion_tokens"),
    ("model-too-long", _json(model="a" * 100_000), 400, "model"),
    ("model-traversal", _json(model="../../etc/passwd"), 404, "model"),
    ("model-crlf", _json(model="reverse\r\nX-Injected: 1"), 404, "model"),
    ("model-encoded-traversal", _json(model="reverse@..%2f..%2fx"), 404, "model"),
]


@pytest.fixture
def engine_calls(stack, monkeypatch):
    """Requests the gateway sent to the engine during the test."""
    transport = stack.gateway.transport
    sent = []
    real = transport.send

    async def spy(call):
        sent.append(call.path)
        return await real(call)

    monkeypatch.setattr(transport, "send", spy)
    return sent


def _send(stack, key: str, spec: dict):
    spec = dict(spec)
    path = spec.pop("path", "/v1/completions")
    if spec.get("content") == "chunked":  # no Content-Length: the limit must hold while reading
        spec["content"] = _chunked(2 * MIB)
    with stack.client(key) as c:
        return c.post(path, headers={"Content-Type": "application/json"}, **spec)


@pytest.mark.parametrize("spec, status, param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_gets_a_shaped_4xx(stack, engine_calls, spec, status, param):
    r = _send(stack, stack.tenants["acme"]["key"], spec)
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["code"], error
    if param:
        assert error["param"] == param, error
    assert engine_calls == [], "the engine must never see a refused request"


def test_another_tenants_engine_side_name_is_404(stack, engine_calls):
    globex = stack.tenants["globex"]
    for model in (f"lpx:globex:{globex['adapter']}:{globex['version']}", f"{globex['adapter']}@{globex['version']}"):
        r = _send(stack, stack.tenants["acme"]["key"], _json(model=model))
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    assert engine_calls == []


def test_huge_bearer_token_is_refused_not_a_crash(stack):
    with stack.client("k" * 60_000) as c:
        r = c.post("/v1/completions", json=OK)
    assert r.status_code in (400, 401, 431), r.text[:300]


def test_stack_still_serves_after_the_hostile_requests(stack):
    acme = stack.tenants["acme"]
    with stack.client(acme["key"]) as c:
        assert c.get("/ready").status_code == 200
        r = c.post("/v1/completions", json={**OK, "model": acme["adapter"], "prompt": demo_prompt("abc")})
        assert r.status_code == 200, r.text
        r = c.post("/v1/completions", json={**OK, "prompt": [[3, 4, 5], [6, 7]], "logit_bias": {"5": -100}})
        assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text
