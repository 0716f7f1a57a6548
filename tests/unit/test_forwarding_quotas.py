"""Quota on the forwarding path: charged only after resolution, and corrected by the engine's usage."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from common.errors import ModelNotFound, Overloaded, QuotaExceeded
from serving.admission import Admission
from serving.forwarding import forward
from serving.settings import ServingSettings
from tests.unit.test_forwarding import LORA, MANIFEST, FakeReply, FakeTransport


def _gateway(transport, admission=None):
    async def resolve(tenant, ref):
        if ref != "rev":
            raise ModelNotFound(f"model {ref!r} not found")
        return MANIFEST

    return SimpleNamespace(settings=ServingSettings(), admission=admission or Admission(4, 16), resolve=resolve,
                           transport=transport, engine_failed=lambda: None)


def _tenant(**quotas):
    return SimpleNamespace(name="acme", quotas=quotas)


def test_an_unknown_model_is_404_and_costs_no_quota():
    gw = _gateway(FakeTransport(FakeReply(body={"model": LORA, "choices": []})))
    tenant = _tenant(requests_per_minute=1, tokens_per_minute=10_000)
    for _ in range(3):
        with pytest.raises(ModelNotFound):
            asyncio.run(forward(gw, tenant, {"model": "nope", "prompt": "p"}, "/v1/completions"))
    assert gw.admission.quotas.tokens("acme") == 0
    r = asyncio.run(forward(gw, tenant, {"model": "rev", "prompt": "p"}, "/v1/completions"))  # the one request
    assert r.status_code == 200
    with pytest.raises(QuotaExceeded, match="1 requests per minute"):
        asyncio.run(forward(gw, tenant, {"model": "rev", "prompt": "p"}, "/v1/completions"))


@pytest.mark.parametrize("served", [7, 900])
def test_a_whole_answers_usage_replaces_the_estimate(served):
    usage = {"prompt_tokens": 3, "completion_tokens": served - 3, "total_tokens": served}
    gw = _gateway(FakeTransport(FakeReply(body={"model": LORA, "choices": [], "usage": usage})))
    body = {"model": "rev", "prompt": "p" * 40, "max_tokens": 100}  # estimated 40/4 + 1 + 100 = 111
    asyncio.run(forward(gw, _tenant(), body, "/v1/completions"))
    assert gw.admission.quotas.tokens("acme") == served


def test_a_streams_final_usage_chunk_replaces_the_estimate():
    chunk = {"model": LORA, "choices": [{"text": "x"}]}
    usage = {"model": LORA, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}
    reply = FakeReply(lines=[f"data: {json.dumps(chunk)}", f"data: {json.dumps(usage)}", "data: [DONE]"])
    gw = _gateway(FakeTransport(reply))

    async def go():
        r = await forward(gw, _tenant(), {"model": "rev", "prompt": "p", "stream": True, "max_tokens": 50},
                          "/v1/completions")
        assert gw.admission.quotas.tokens("acme") == 51  # the estimate (1//4 + 1 + 50) while it runs
        _ = [line async for line in r.body_iterator]
        await r.background()
    asyncio.run(go())
    assert gw.admission.quotas.tokens("acme") == 6


def test_without_usage_the_estimate_stays():
    gw = _gateway(FakeTransport(FakeReply(body={"model": LORA, "choices": []})))
    asyncio.run(forward(gw, _tenant(), {"model": "rev", "prompt": "p", "max_tokens": 50}, "/v1/completions"))
    assert gw.admission.quotas.tokens("acme") == 51


def test_a_request_the_queue_refuses_keeps_its_request_but_gives_its_tokens_back():
    gw = _gateway(FakeTransport(), Admission(1, 0))

    async def go():
        await gw.admission.acquire("other", 1)  # the one slot is taken and nothing may wait
        with pytest.raises(Overloaded):
            await forward(gw, _tenant(requests_per_minute=1), {"model": "base", "prompt": "p"}, "/v1/completions")
        with pytest.raises(QuotaExceeded):
            await forward(gw, _tenant(requests_per_minute=1), {"model": "base", "prompt": "p"}, "/v1/completions")
    asyncio.run(go())
    assert gw.admission.quotas.tokens("acme") == 0
