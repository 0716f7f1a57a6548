"""Upload → serve round trips, tenant isolation (auth, namespaces, batches) and output equivalence."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.e2e.helpers import complete, delta, scrape, upload
from tests.helpers.hf_reference import merged_greedy
from tests.waiting import wait_until
from training.demo import DEMO_WORDS, demo_prompt
from training.tasks import answer

MAX_TOKENS = 16


def test_each_tenant_gets_its_own_adapter(stack):
    outputs = {}
    for tenant, t in stack.tenants.items():
        got = [complete(stack, t["key"], t["adapter"], demo_prompt(w)).strip() for w in DEMO_WORDS[:4]]
        assert got == [answer(t["task"], w) for w in DEMO_WORDS[:4]], tenant
        outputs[tenant] = got
    base = [complete(stack, next(iter(stack.tenants.values()))["key"], "base", demo_prompt(w)).strip()
            for w in DEMO_WORDS[:4]]
    assert base == [answer("echo", w) for w in DEMO_WORDS[:4]]
    assert len({tuple(v) for v in outputs.values()} | {tuple(base)}) == len(outputs) + 1


def test_served_output_equals_peft_merged_reference(stack, demo):
    """The engine's LoRA path must give exactly what PEFT-merged weights give in transformers."""
    prompts = [demo_prompt(w) for w in DEMO_WORDS]
    for t in stack.tenants.values():
        ref = merged_greedy(demo.base_dir, demo.adapter_dirs[t["adapter"]], prompts, MAX_TOKENS)
        served = [complete(stack, t["key"], t["adapter"], p, MAX_TOKENS) for p in prompts]
        assert served == ref, t["adapter"]
    ref_base = merged_greedy(demo.base_dir, None, prompts, MAX_TOKENS)
    key = next(iter(stack.tenants.values()))["key"]
    assert [complete(stack, key, "base", p, MAX_TOKENS) for p in prompts] == ref_base


async def _fire(stack, jobs):
    async with httpx.AsyncClient(base_url=stack.url, timeout=300) as c:
        async def one(key, model, prompt):
            r = await c.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]
        return await asyncio.gather(*(one(*j) for j in jobs))


def test_mixed_concurrent_batch_equals_solo(stack):
    """Several tenants' adapters and base requests in shared batches: each answer equals its solo answer."""
    jobs = []
    for i, word in enumerate(DEMO_WORDS * 2):
        for t in stack.tenants.values():
            jobs.append((t["key"], t["adapter"], demo_prompt(word)))
        if i % 2 == 0:
            jobs.append((t["key"], "base", demo_prompt(word)))
    jobs = jobs[::2] + jobs[1::2]  # interleave tenants so neighbours in a batch differ
    solo = {j: complete(stack, j[0], j[1], j[2], MAX_TOKENS) for j in set(jobs)}
    mixed = asyncio.run(_fire(stack, jobs))
    assert len(jobs) >= 30
    for job, out in zip(jobs, mixed):
        assert out == solo[job], (job[1], job[2])


def test_cross_tenant_adapter_is_404_never_403(stack):
    (a, ta), (b, tb) = list(stack.tenants.items())[:2]
    for model in (tb["adapter"], f"{tb['adapter']}@prod", f"{tb['adapter']}@{tb['version']}", "nope"):
        with stack.client(ta["key"]) as c:
            r = c.post("/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 1})
        assert r.status_code == 404, model
        assert r.json()["error"]["code"] == "model_not_found"
    with stack.client(ta["key"]) as c:
        assert c.get(f"/v1/adapters/{tb['adapter']}").status_code == 404


def test_same_adapter_name_in_two_tenants_stays_separate(stack, demo):
    """Tenant A uploads B's adapter bytes under A's own name: each tenant's name resolves in its own space."""
    (a, ta), (b, tb) = list(stack.tenants.items())[:2]
    upload(stack, ta["key"], tb["adapter"], demo.adapter_dirs[ta["adapter"]])  # A's weights, B's name
    word = DEMO_WORDS[0]
    assert complete(stack, ta["key"], tb["adapter"], demo_prompt(word)).strip() == answer(ta["task"], word)
    assert complete(stack, tb["key"], tb["adapter"], demo_prompt(word)).strip() == answer(tb["task"], word)


def test_bad_or_missing_key_is_401(stack):
    for headers in ({}, {"Authorization": "Bearer lpx_nope"}, {"Authorization": "Basic abc"},
                    {"Authorization": f"Bearer {stack.admin_key}"}):
        with httpx.Client(base_url=stack.url) as c:
            r = c.post("/v1/completions", headers=headers, json={"model": "base", "prompt": "x"})
            assert r.status_code == 401, headers
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert c.get("/v1/models", headers=headers).status_code == 401
    tenant_key = next(iter(stack.tenants.values()))["key"]
    with stack.admin(tenant_key) as c:  # the operators' plane refuses a tenant key
        assert c.get("/admin/tenants").status_code == 401
    with stack.client(tenant_key) as c:  # the tenants' plane has no admin routes
        assert c.get("/admin/tenants").status_code == 404


def test_models_lists_only_the_callers_adapters(stack):
    for tenant, t in stack.tenants.items():
        with stack.client(t["key"]) as c:
            ids = {m["id"] for m in c.get("/v1/models").json()["data"]}
        assert "base" in ids and t["adapter"] in ids
        others = {o["adapter"] for n, o in stack.tenants.items() if n != tenant} - ids
        assert others, "another tenant's adapter leaked into /v1/models"


def test_streaming_equals_non_streaming(stack):
    t = next(iter(stack.tenants.values()))
    prompt = demo_prompt(DEMO_WORDS[1])
    with stack.client(t["key"]) as c:
        with c.stream("POST", "/v1/completions", json={"model": t["adapter"], "prompt": prompt,
                                                        "max_tokens": MAX_TOKENS, "temperature": 0,
                                                        "stream": True}) as r:
            assert r.status_code == 200
            events = [json.loads(line[5:]) for line in r.iter_lines()
                      if line.startswith("data:") and line.strip() != "data: [DONE]"]
    assert all(e["model"] == t["adapter"] for e in events)  # the engine-side name never shows
    assert "".join(e["choices"][0]["text"] for e in events) == complete(stack, t["key"], t["adapter"], prompt)


def test_a_stream_interval_sends_fewer_larger_chunks_with_the_same_text(stack):
    """vLLM's stream_interval, asked for by the client (or set by LORAPLEX_STREAM_INTERVAL): the engine sends
    the first token at once, then a chunk per 4 tokens; the text and the usage are those of a chunk per token."""
    t = next(iter(stack.tenants.values()))

    def stream(extra: dict) -> tuple[list[str], dict]:
        body = {"model": t["adapter"], "prompt": demo_prompt(DEMO_WORDS[1]), "max_tokens": 16, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}, **extra}
        with stack.client(t["key"]) as c, c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200, r.read()
            events = [json.loads(line[5:]) for line in r.iter_lines()
                      if line.startswith("data:") and line.strip() != "data: [DONE]"]
        texts = [e["choices"][0]["text"] for e in events if e["choices"] and e["choices"][0]["text"]]
        return texts, next(e["usage"] for e in events if e.get("usage"))

    each, each_usage = stream({})
    grouped, grouped_usage = stream({"stream_interval": 4})
    assert "".join(grouped) == "".join(each) and grouped_usage == each_usage
    assert each_usage["completion_tokens"] == 16
    assert len(grouped) <= 1 + 15 // 4 + 1 < len(each)  # the first token, then 4 at a time (and the rest)


def test_openai_sdk_works_unmodified(stack):
    openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency")
    t = next(iter(stack.tenants.values()))
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=t["key"])
    word = DEMO_WORDS[2]
    out = client.completions.create(model=t["adapter"], prompt=demo_prompt(word), max_tokens=MAX_TOKENS,
                                    temperature=0)
    assert out.choices[0].text.strip() == answer(t["task"], word)
    chat = client.chat.completions.create(model=t["adapter"], messages=[{"role": "user", "content": word}],
                                          max_tokens=MAX_TOKENS, temperature=0)
    assert chat.choices[0].message.content.strip() == answer(t["task"], word)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model=t["adapter"], messages=[{"role": "user", "content": word}], max_tokens=MAX_TOKENS,
        temperature=0, stream=True) if ch.choices)
    assert streamed.strip() == answer(t["task"], word)
    ids = {m.id for m in client.models.list()}
    assert t["adapter"] in ids and f"{t['adapter']}@prod" not in ids  # no alias set in the fixture
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="someone-elses", prompt="x", max_tokens=1)


def test_unknown_request_fields_are_refused(stack):
    t = next(iter(stack.tenants.values()))
    with stack.client(t["key"]) as c:
        r = c.post("/v1/chat/completions", json={"model": "base", "messages": [{"role": "user", "content": "x"}],
                                                  "chat_template": "{{ 7*7 }}"})
    assert r.status_code == 400 and "chat_template" in r.json()["error"]["message"]


def test_ops_endpoints(stack):
    with httpx.Client(base_url=stack.url) as c:
        assert c.get("/health").json() == {"status": "ok"}
        r = c.get("/ready")
        assert r.status_code == 200, r.text
        assert c.get("/metrics").status_code == 404  # the operators' plane only
    assert "loraplex_requests_total" in stack.metrics_text()
    with httpx.Client(base_url=stack.admin_url) as c:
        assert c.get("/health").json() == {"status": "ok"} and c.get("/ready").status_code == 200
        assert c.get("/metrics").status_code == 401  # LORAPLEX_METRICS_AUTH=key: the admin key, from anywhere


def _engine_counter(engine_url: str, name: str) -> float:
    text = httpx.get(f"{engine_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_client_disconnect_aborts_the_engine_request(stack, engine):
    """A client hanging up mid-stream stops generation in the engine (far fewer than max_tokens are made); the
    gateway gives the request's slot back and counts it as disconnected (serving/disconnect.py RelayResponse)."""
    name, t = next(iter(stack.tenants.items()))
    tokens = "vllm:generation_tokens_total"
    before = _engine_counter(engine.engine_url, tokens)
    metrics_before = scrape(stack)
    body = {"model": t["adapter"], "prompt": demo_prompt("abc"), "max_tokens": 230, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with stack.client(t["key"]) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            next(lines)
            next(lines)  # streaming has begun; now hang up
    last, stable_since = -1.0, time.monotonic()
    while time.monotonic() - stable_since < 3:  # wait until the engine has stopped producing tokens
        now = _engine_counter(engine.engine_url, tokens)
        if now != last:
            last, stable_since = now, time.monotonic()
        time.sleep(0.3)
    assert last - before < 200, f"the engine made {last - before:.0f} of 230 tokens for a client that left"
    wait_until(lambda: stack.gateway.admission.idle, what="the gateway gave the slot back")
    outcomes = {status: delta(metrics_before, scrape(stack), "loraplex_requests_total", tenant=name,
                              adapter=t["adapter"], status=status) for status in ("ok", "disconnected", "error")}
    assert outcomes == {"ok": 0, "disconnected": 1, "error": 0}, outcomes
