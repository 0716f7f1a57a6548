"""An adapter the engine lost behind the gateway's back (unloaded by another client, or by another gateway
that shares the engine) is loaded again on the next request instead of failing with the engine's 404."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.helpers import complete
from training.demo import demo_prompt
from training.tasks import answer

pytestmark = pytest.mark.e2e


def _text(r: httpx.Response, stream: bool) -> str:
    if not stream:
        return r.json()["choices"][0]["text"]
    chunks = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_adapter_unloaded_behind_the_gateways_back_is_loaded_again(stack, engine, stream):
    acme = stack.tenants["acme"]
    assert complete(stack, acme["key"], acme["adapter"], demo_prompt("hello")).strip() == answer(acme["task"], "hello")
    lost = next(n for n in stack.gateway.residency.resident if n.startswith(f"lpx:acme:{acme['adapter']}:"))
    r = httpx.post(f"{engine.engine_url}/v1/unload_lora_adapter", json={"lora_name": lost}, timeout=60)
    assert r.status_code == 200, r.text
    body = {"model": acme["adapter"], "prompt": demo_prompt("world"), "max_tokens": 16, "temperature": 0,
            "stream": stream}
    with stack.client(acme["key"]) as c:
        r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert _text(r, stream).strip() == answer(acme["task"], "world")
    assert lost in stack.gateway.residency.resident
