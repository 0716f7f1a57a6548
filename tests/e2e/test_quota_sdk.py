"""Quota 429s and overload 503s as the unmodified `openai` SDK sees them (no retries: we want the refusal)."""

from __future__ import annotations

import threading

import pytest

from tests.e2e.helpers import delta, new_tenant, running_gateway, scrape, upload
from tests.waiting import wait_until
from training.demo import demo_prompt

openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency")

LONG = {"max_tokens": 230, "temperature": 0, "stream": True, "extra_body": {"ignore_eos": True}}


def _sdk(st, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{st.url}/v1", api_key=key, max_retries=0, timeout=60)


def _retry_after(exc) -> int:
    value = exc.response.headers.get("retry-after")
    assert value is not None, "a refusal must say when to come back"
    assert int(value) >= 1
    return int(value)


def test_requests_per_minute_quota_is_a_rate_limit_error(stack):
    _, key = new_tenant(stack, {"requests_per_minute": 2}, prefix="rpm")
    client = _sdk(stack, key)
    for _ in range(2):
        client.completions.create(model="base", prompt=demo_prompt("abc"), max_tokens=2, temperature=0)
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="base", prompt=demo_prompt("abc"), max_tokens=2, temperature=0)
    assert e.value.status_code == 429 and e.value.code == "rate_limit_exceeded"
    assert "2 requests per minute" in e.value.message
    assert 1 <= _retry_after(e.value) <= 60


def test_the_token_window_holds_what_the_engine_served(stack):
    """The estimate charged at admission is replaced by the engine's usage, for a whole answer and a stream."""
    tenant, key = new_tenant(stack, {"tokens_per_minute": 100_000}, prefix="tpm")
    client, ledger = _sdk(stack, key), stack.gateway.admission.quotas
    whole = client.completions.create(model="base", prompt=demo_prompt("abc"), max_tokens=200, temperature=0)
    assert ledger.tokens(tenant) == whole.usage.total_tokens
    chunks = list(client.completions.create(model="base", prompt=demo_prompt("xyz"), max_tokens=7, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    served = whole.usage.total_tokens + chunks[-1].usage.total_tokens
    wait_until(lambda: ledger.tokens(tenant) == served, what="the stream's usage charged")  # after [DONE]


@pytest.fixture(scope="module")
def one_slot_gateway(engine, seaweed, demo, tmp_path_factory):
    """A gateway that forwards one request at a time and lets a few wait."""
    yield from running_gateway(engine, seaweed, demo, tmp_path_factory, "cache-one", max_inflight=1, max_queue=4)


def test_concurrency_quota_is_a_rate_limit_error_while_a_request_waits_or_runs(one_slot_gateway):
    """max_concurrent counts a tenant's requests that are queued as well as running.

    A tiny model on a fast host can finish the tenant's first request before its second arrives; such an
    attempt says nothing and is repeated. A second request let in while the first still waits or runs fails."""
    st = one_slot_gateway
    _, filler = new_tenant(st, prefix="fill")
    tenant, key = new_tenant(st, {"max_concurrent": 1}, prefix="conc")
    for _ in range(5):
        _wait_idle(st)
        hold = _sdk(st, filler).completions.create(model="base", prompt=demo_prompt("abc"), **LONG)
        first: list = []
        waiter = threading.Thread(target=lambda out=first: out.extend(_sdk(st, key).completions.create(
            model="base", prompt=demo_prompt("abc"), **LONG)))
        try:
            next(iter(hold))  # the only engine slot is taken: the tenant's first request will wait for it
            waiter.start()
            # queued (or, if the filler ended, running)
            wait_until(lambda: st.gateway.admission.active[tenant], interval=0.005, what="the first request admitted")
            try:
                _sdk(st, key).completions.create(model="base", prompt=demo_prompt("abc"), max_tokens=2)
            except openai.RateLimitError as e:
                assert "1 concurrent requests" in e.message
                _retry_after(e)
                break
            assert not st.gateway.admission.active[tenant], "a second request was let in beside the first"
        finally:
            hold.close()
            waiter.join(timeout=60)
    else:
        pytest.fail("the first request ended before the second arrived in all 5 attempts")
    assert first and first[-1].choices[0].finish_reason == "length"  # the waiting request was served in full


@pytest.fixture(scope="module")
def tiny_gateway(engine, seaweed, demo, tmp_path_factory):
    """A gateway that forwards one request at a time and queues none: the second concurrent one is 503."""
    yield from running_gateway(engine, seaweed, demo, tmp_path_factory, "cache-tiny", max_inflight=1, max_queue=0)


def _refused_while_held(st, client, call, attempts: int = 5):
    """The error `call` gets while a long stream holds the gateway's only engine slot.

    A tiny model on a fast host can finish the holding stream before `call` arrives; such an attempt says
    nothing and is repeated. `call` succeeding while the holder still runs is the bug this looks for."""
    for _ in range(attempts):
        _wait_idle(st)  # an earlier holder may still be giving its slot back
        holder = client.completions.create(model="speak", prompt=demo_prompt("abc"), **LONG)
        try:
            next(iter(holder))  # admitted and streaming: the only slot is taken
            try:
                call()
            except openai.InternalServerError as e:
                return e
            assert st.gateway.admission.idle, "a request was admitted beside the one holding the only slot"
        finally:
            holder.close()
    pytest.fail(f"the holding stream ended before the next request arrived in all {attempts} attempts")


def _wait_idle(st) -> None:
    """The gateway noticed the hang-up of the previous attempt's stream and gave its slot back."""
    wait_until(lambda: st.gateway.admission.idle, what="a closed stream gave its engine slot back")


def test_overload_is_a_503_with_retry_after(tiny_gateway, demo):
    st = tiny_gateway
    tenant, key = new_tenant(st, prefix="busy")
    upload(st, key, "speak", demo.adapter_dirs["caesar"])
    client = _sdk(st, key)
    before = scrape(st)
    e = _refused_while_held(st, client, lambda: client.completions.create(
        model="speak", prompt=demo_prompt("abc"), max_tokens=2))
    assert e.status_code == 503 and e.code == "overloaded"
    _retry_after(e)
    # chat goes through the same admission
    e = _refused_while_held(st, client, lambda: client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "abc"}], max_tokens=2))
    assert e.status_code == 503 and e.code == "overloaded"
    after = scrape(st)
    assert delta(before, after, "loraplex_rejected_total", tenant=tenant, status="503", reason="overload") == 2
    assert delta(before, after, "loraplex_rejected_total", tenant=tenant, adapter="speak", status="503") == 1
    _wait_idle(st)
    out = client.completions.create(model="speak", prompt=demo_prompt("abc"), max_tokens=8, temperature=0)
    assert out.choices[0].text


@pytest.fixture(scope="module")
def short_queue_gateway(engine, seaweed, demo, tmp_path_factory):
    """One engine slot and room for two waiting requests."""
    yield from running_gateway(engine, seaweed, demo, tmp_path_factory, "cache-short-queue",
                               max_inflight=1, max_queue=2)


def test_a_flooder_that_fills_the_queue_cannot_lock_another_tenant_out(short_queue_gateway, demo):
    """Tenant A holds the slot and fills the queue; tenant B's request still gets in and is answered, in place
    of A's newest waiting request, which is refused with 503, Retry-After and a message that says why."""
    st = short_queue_gateway
    (ta, ka), (tb, kb) = new_tenant(st, prefix="flood"), new_tenant(st, prefix="calm")
    upload(st, ka, "speak", demo.adapter_dirs["caesar"])
    a, b = _sdk(st, ka), _sdk(st, kb)
    for _ in range(3):
        _wait_idle(st)
        before = scrape(st)
        holder = a.completions.create(model="speak", prompt=demo_prompt("abc"), **LONG)
        results: dict[str, object] = {}

        def call(name, client, model, results=results):
            try:
                results[name] = client.completions.create(model=model, prompt=demo_prompt("abc"), max_tokens=2)
            except openai.APIStatusError as e:
                results[name] = e

        try:
            next(iter(holder))  # A holds the only slot
            waiting = [threading.Thread(target=call, args=(f"a{i}", a, "speak")) for i in range(2)]
            for i, t in enumerate(waiting):
                t.start()
                wait_until(lambda n=i + 1: st.gateway.admission.queued >= n or st.gateway.admission.idle,
                           interval=0.01, what="the request queued")
            if st.gateway.admission.queued < 2:
                continue  # the holder ended before the queue filled: this attempt says nothing
            calm = threading.Thread(target=call, args=("b", b, "base"))
            calm.start()
            wait_until(lambda r=results: any(isinstance(r.get(k), openai.APIStatusError) for k in ("a0", "a1", "b")),
                       interval=0.01, what="a refusal while the queue was full")
        finally:
            holder.close()
        for t in [*waiting, calm]:
            t.join(60)
        refused = [k for k, v in results.items() if isinstance(v, openai.APIStatusError)]
        assert refused == ["a1"], f"expected only A's newest to be refused, got {results}"
        pushed_out = results["a1"]
        assert pushed_out.status_code == 503 and pushed_out.code == "overloaded"
        assert "holds the most" in pushed_out.message
        _retry_after(pushed_out)
        assert results["b"].choices[0].text and results["a0"].choices[0].text
        after = scrape(st)
        assert delta(before, after, "loraplex_rejected_total", tenant=ta, status="503", reason="pushed_out") == 1
        assert delta(before, after, "loraplex_rejected_total", tenant=tb) == 0
        return
    pytest.fail("the holding stream ended before the queue filled in all 3 attempts")
