"""/openapi.json documents the inference bodies (serving/routes/inference.py's openapi_extra) as the pydantic
models of serving/openai_requests.py check them, although the routes read the raw body themselves."""

from __future__ import annotations

import json

import jsonschema
import pytest

from serving.app import create_app
from serving.openai_requests import BODIES, Limits, parse_body

GOOD = {
    "/v1/completions": {"model": "base", "prompt": [[1, 2], [3]], "max_tokens": 4, "logit_bias": {"5": 1.5},
                        "stream": True, "stream_options": {"include_usage": True}},
    "/v1/chat/completions": {"model": "base", "max_completion_tokens": 4, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
}


@pytest.fixture(scope="module")
def spec() -> dict:
    return create_app().openapi()


@pytest.mark.parametrize("path", sorted(BODIES))
def test_the_body_is_documented_inline_with_every_field(spec, path):
    body = spec["paths"][path]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert body["required"] and "$ref" not in json.dumps(schema) and "$defs" not in schema
    assert set(schema["properties"]) == set(BODIES[path].model_fields)
    assert set(schema["required"]) == {"model", "prompt" if path == "/v1/completions" else "messages"}


@pytest.mark.parametrize("path", sorted(BODIES))
def test_the_schema_agrees_with_the_parser(spec, path):
    schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    good = GOOD[path]
    parse_body(json.dumps(good).encode(), path, Limits(context=256, vocab=1000))
    jsonschema.validate(good, schema)
    for bad in ({**good, "chat_template": "x"}, {**good, "logit_bias": {"x": 1}}, {**good, "n": 0},
                {k: v for k, v in good.items() if k != "model"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
