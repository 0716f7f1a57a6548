"""The gateway's checks of inference request bodies: hostile or malformed input is a 400 naming the field
(413 over the size limit), never another exception; valid bodies pass unchanged."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import InvalidRequest, RequestTooLarge
from serving.app import create_app
from serving.openai_requests import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    MAX_DEPTH,
    Limits,
    check_fields,
    model_limits,
    parse_body,
)
from serving.request_body import read_limited
from serving.settings import ServingSettings

LIMITS = Limits(context=256, vocab=259)
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


def _parse(body, path: str = COMPLETIONS) -> dict:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_body(raw, path, LIMITS)


def _refused(body, path: str = COMPLETIONS) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as e:
        _parse(body, path)
    return e.value


@pytest.mark.parametrize("body, path", [
    ({"model": "m", "prompt": "p", "max_tokens": 3, "temperature": 0, "stream": True}, COMPLETIONS),
    ({"model": "m", "prompt": [1, 2, 258], "n": 2, "best_of": 3, "logprobs": 5, "seed": -5,
      "logit_bias": {"5": -100, "7": 100}, "stop": ["a", "b"], "echo": True, }, COMPLETIONS),
    ({"model": "m", "prompt": [[1, 2], [3]], "top_p": 1, "top_k": -1, "min_p": 0.1, "ignore_eos": True,
      "stream": True, "stream_options": {"include_usage": True}}, COMPLETIONS),
    ({"model": "m", "prompt": ["a", "b"], "max_tokens": 256, "temperature": 2.0, "user": "u"}, COMPLETIONS),
    ({"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "hi"}]}], "max_completion_tokens": 4, "logprobs": True, "top_logprobs": 20},
     CHAT),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None,
      "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "content": "1", "tool_call_id": "c1"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
      "tool_choice": "auto", "response_format": {"type": "json_object"}}, CHAT),
])
def test_valid_bodies_pass_as_sent(body, path):
    assert _parse(body, path) == body  # nothing added, nothing coerced


@pytest.mark.parametrize("body, param, words", [
    ([], None, "JSON object"),
    ({"prompt": "p"}, "model", "'model' is required"),
    ({"model": "m"}, "prompt", "'prompt' is required"),
    ({"model": 3, "prompt": "p"}, "model", "'model' is required"),
    ({"model": "m", "prompt": "p", "chat_template": "x"}, "chat_template", "unsupported field(s) chat_template"),
    ({"model": "m", "prompt": "p", "lora_request": {}}, "lora_request", "unsupported"),
    ({"model": "m", "prompt": "p", "guided_regex": ".*"}, "guided_regex", "unsupported"),
    ({"model": "m", "prompt": "p", "top_logprobs": 2}, "top_logprobs", "unsupported"),  # chat only
    ({"model": "m" * 300, "prompt": "p"}, "model", "at most 256"),
    ({"model": "m", "prompt": ""}, "prompt", "1 to"),
    ({"model": "m", "prompt": []}, "prompt", "not empty"),
    ({"model": "m", "prompt": [1, 259]}, "prompt", "from 0 to 258"),
    ({"model": "m", "prompt": [-1]}, "prompt", "from 0 to 258"),
    ({"model": "m", "prompt": [True, 1]}, "prompt", "token ids"),
    ({"model": "m", "prompt": [1] * 257}, "prompt", "context is 256"),
    ({"model": "m", "prompt": [[1], []]}, "prompt", "empty list"),
    ({"model": "m", "prompt": [[1], "a"]}, "prompt", "not both"),
    ({"model": "m", "prompt": ["a"] * 65}, "prompt", "at most 64"),
    ({"model": "m", "prompt": {"a": 1}}, "prompt", "must be a string"),
    ({"model": "m", "prompt": "p", "n": 17}, "n", "16"),
    ({"model": "m", "prompt": "p", "n": 0}, "n", "1"),
    ({"model": "m", "prompt": "p", "best_of": 2, "n": 3}, "best_of", "at least n"),
    ({"model": "m", "prompt": "p", "logprobs": 21}, "logprobs", "20"),
    ({"model": "m", "prompt": "p", "max_tokens": 257}, "max_tokens", "context is 256"),
    ({"model": "m", "prompt": "p", "max_tokens": 0}, "max_tokens", "1"),
    ({"model": "m", "prompt": "p", "max_tokens": 2.0}, "max_tokens", "integer"),
    ({"model": "m", "prompt": "p", "min_tokens": 1000}, "min_tokens", "context"),
    ({"model": "m", "prompt": "p", "temperature": 2.5}, "temperature", "2"),
    ({"model": "m", "prompt": "p", "temperature": "0"}, "temperature", "number"),
    ({"model": "m", "prompt": "p", "top_p": 0}, "top_p", "greater than 0"),
    ({"model": "m", "prompt": "p", "stream": "false"}, "stream", "boolean"),
    ({"model": "m", "prompt": "p", "stream": 1}, "stream", "boolean"),
    ({"model": "m", "prompt": "p", "seed": 2**63}, "seed", "less than or equal"),
    ({"model": "m", "prompt": "p", "stop": ["a"] * 5}, "stop", "at most 4"),
    ({"model": "m", "prompt": "p", "stop": "a" * 257}, "stop", "256"),
    ({"model": "m", "prompt": "p", "logit_bias": {"259": 1}}, "logit_bias", "token ids from 0 to 258"),
    ({"model": "m", "prompt": "p", "logit_bias": {"-1": 1}}, "logit_bias", "not a token id"),
    ({"model": "m", "prompt": "p", "logit_bias": {"5": 101}}, "logit_bias", "100"),
    ({"model": "m", "prompt": "p", "stream_options": "yes"}, "stream_options", "valid dictionary"),
    ({"model": "m", "prompt": "p", "stream_options": {"include_usage": True}}, "stream_options", "streamed"),
    ({"model": "m", "prompt": "p", "stream_options": {"x": 1}}, "stream_options", "Extra inputs"),
])
def test_completion_bodies_refused_by_field(body, param, words):
    e = _refused(body)
    assert e.param == param and words in e.message, (e.param, e.message)
    assert e.status == 400


@pytest.mark.parametrize("messages, where", [
    ([], "messages"),
    ([{"role": "root", "content": "x"}], "messages.0.role"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
     "messages.0.content.0.type"),
    ([{"role": "user", "content": 5}], "messages.0.content"),
    ([{"role": "user", "content": "x", "chat_template": "y"}], "messages.0.chat_template"),
    ([{"role": "user", "content": "x"}] * 1025, "messages"),
])
def test_chat_messages_refused_with_the_path(messages, where):
    e = _refused({"model": "m", "messages": messages}, CHAT)
    assert e.param == "messages" and f"invalid {where}:" in e.message, e.message


@pytest.mark.parametrize("raw, words", [
    (b'{"model": "m", "prompt": "\xff"}', "not UTF-8"),
    (b"\xff\xfe{\x00}\x00", "not UTF-8"),
    (b"model=m", "not valid JSON"),
    (b"", "not valid JSON"),
    (b'{"model": "m", "prompt": "p", "temperature": NaN}', "NaN"),
    (b'{"model": "m", "prompt": "p", "temperature": -Infinity}', "Infinity"),
    (b'{"model": "m", "prompt": "p", "temperature": 1e400}', "out of range"),
    (b'{"model": "m", "prompt": "p", "seed": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b'{"model": "m", "prompt": "\\ud800"}', "surrogate"),
    (b'{"model": "m", "prompt": "p", "\\udfff": 1}', "surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"model": "m", "prompt": "p", "tools": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}",
     "nested too deeply"),
])
def test_unreadable_bodies_are_400(raw, words):
    assert words in _refused(raw).message


def test_check_fields_refuses_unknown_fields_by_name():
    with pytest.raises(InvalidRequest) as e:
        check_fields({"model": "m", "messages": [], "prompt": "x", "chat_template": "y"}, "messages")
    assert e.value.param == "chat_template" and "prompt" in e.value.message
    assert "prompt" in COMPLETION_FIELDS and "messages" in CHAT_FIELDS and "chat_template" not in CHAT_FIELDS


def test_model_limits_read_the_base_models_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 128, "vocab_size": 300}))
    assert model_limits(tmp_path, 256) == Limits(context=128, vocab=300)
    assert model_limits(tmp_path, 64) == Limits(context=64, vocab=300)
    multi = tmp_path / "multi"
    multi.mkdir()
    (multi / "config.json").write_text(json.dumps({"text_config": {"vocab_size": 50, "max_position_embeddings": 99}}))
    assert model_limits(multi, 256) == Limits(context=99, vocab=50)
    assert model_limits(tmp_path / "missing", 256) == Limits(context=256, vocab=None)
    assert model_limits(None, 256) == Limits(context=256, vocab=None)


def _request(chunks: list[bytes], headers: dict | None = None):
    from starlette.requests import Request

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "headers": raw_headers}, receive)


def test_read_limited_counts_while_reading():
    assert asyncio.run(read_limited(_request([b"ab", b"cd"]), 4)) == b"abcd"
    with pytest.raises(RequestTooLarge) as e:  # chunked: no Content-Length, stopped at the fifth byte
        asyncio.run(read_limited(_request([b"ab", b"cd", b"e"]), 4))
    assert e.value.status == 413 and "limit is 4 bytes" in e.value.message
    with pytest.raises(RequestTooLarge):  # declared too large: refused before reading
        asyncio.run(read_limited(_request([b""], {"Content-Length": "5000"}), 4))


@pytest.fixture
def client():
    """The gateway app over a stand-in gateway whose engine must never be called."""
    async def authenticate(key):
        return SimpleNamespace(name="acme", quotas={})

    app = create_app()
    app.state.gateway = SimpleNamespace(settings=ServingSettings(max_request_bytes=4096, max_model_len=256),
                                        authenticate=authenticate)
    return TestClient(app)  # not entered: the lifespan would build a real gateway


def _post(client, content: bytes, path: str = COMPLETIONS):
    return client.post(path, content=content, headers={"Authorization": "Bearer k"})


@pytest.mark.parametrize("content, status, code", [
    (b"x" * 5000, 413, "request_too_large"),
    (b"\xff", 400, "invalid_request"),
    (b'{"model": "base", "prompt": "p", "n": 1000}', 400, "invalid_request"),
    (b'{"model": "base", "prompt": "p", "temperature": NaN}', 400, "invalid_request"),
])
def test_the_routes_answer_openai_shaped_errors(client, content, status, code):
    r = _post(client, content)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["type"] == "invalid_request_error"


def test_chunked_body_over_the_limit_is_413(client):
    r = client.post(COMPLETIONS, content=iter([b"{" + b" " * 3000, b" " * 3000]),
                    headers={"Authorization": "Bearer k"})
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"]


# Property tests: whatever JSON (or bytes) arrives, the only exception is InvalidRequest, and what passes is
# a dict the transport can send (httpx encodes with allow_nan=False, UTF-8).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
FIELD_VALUES = st.one_of(JSON, st.integers(-(2**70), 2**70), st.lists(st.integers(-5, 400), max_size=5),
                         st.lists(st.lists(st.integers(-5, 400), max_size=3), max_size=3))


def _sendable_or_refused(raw: bytes, path: str) -> None:
    try:
        body = parse_body(raw, path, LIMITS)
    except InvalidRequest as e:
        assert e.status == 400 and e.message
        return
    assert isinstance(body, dict)
    json.dumps(body, allow_nan=False, ensure_ascii=False).encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([COMPLETIONS, CHAT]))
def test_random_bytes_never_raise_anything_else(raw, path):
    _sendable_or_refused(raw, path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON, st.sampled_from([COMPLETIONS, CHAT]))
def test_random_json_never_raises_anything_else(value, path):
    _sendable_or_refused(json.dumps(value).encode(), path)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([COMPLETIONS, CHAT]),
       st.dictionaries(st.sampled_from(sorted(COMPLETION_FIELDS | CHAT_FIELDS)), FIELD_VALUES, max_size=6),
       st.sampled_from(["p", [1, 2], None]))
def test_random_known_fields_never_raise_anything_else(path, fields, prompt):
    body = {"model": "base", **({"prompt": prompt} if path == COMPLETIONS else
                                {"messages": [{"role": "user", "content": "hi"}]}), **fields}
    _sendable_or_refused(json.dumps(body).encode(), path)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(1, 256))
def test_read_limited_returns_the_body_or_413(chunks, limit):
    try:
        got = asyncio.run(read_limited(_request(chunks or [b""]), limit))
    except RequestTooLarge:
        assert sum(map(len, chunks)) > limit
    else:
        assert got == b"".join(chunks) and len(got) <= limit
