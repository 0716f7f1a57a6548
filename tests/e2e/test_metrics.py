"""/metrics through real traffic: per-tenant and per-adapter series move by exactly what was sent."""

from __future__ import annotations

import json

from tests.e2e.helpers import delta, new_tenant, scrape, upload
from tests.waiting import wait_until
from training.demo import demo_prompt


def test_per_tenant_and_per_adapter_series_move_by_what_was_sent(stack, demo):
    tenant, key = new_tenant(stack)
    version = upload(stack, key, "speak", demo.adapter_dirs["reverse"])["version"]
    before = scrape(stack)
    usages = []
    with stack.client(key) as c:
        for model in ("speak", "speak", f"speak@{version}", "base"):
            r = c.post("/v1/completions", json={"model": model, "prompt": demo_prompt("metric"), "max_tokens": 8,
                                                 "temperature": 0})
            assert r.status_code == 200, r.text
            usages.append((model, r.json()["usage"]))
        # a stream whose client did not ask for usage: the gateway asks the engine, counts it, keeps it to itself
        with c.stream("POST", "/v1/completions", json={"model": "speak", "prompt": demo_prompt("metric"),
                                                        "max_tokens": 8, "temperature": 0, "stream": True}) as r:
            assert r.status_code == 200
            events = [json.loads(line[5:]) for line in r.iter_lines()
                      if line.startswith("data:") and line.strip() != "data: [DONE]"]
        assert events and all(e["choices"] and "usage" not in e for e in events)
        # a model that does not exist, and another tenant's would-be name: 404, and no label for them
        for model in ("ghost", "ghost@prod"):
            assert c.post("/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 1}).status_code == 404
    after = scrape(stack)

    adapter_usage = [u for m, u in usages if m != "base"] + [usages[0][1]]  # the stream = the first request
    base_usage = usages[3][1]
    d = lambda name, **kw: delta(before, after, name, tenant=tenant, **kw)  # noqa: E731
    assert d("loraplex_requests_total", adapter="speak", status="ok") == 4  # NAME and NAME@VERSION: one label
    assert d("loraplex_requests_total", adapter="base", status="ok") == 1
    assert d("loraplex_prompt_tokens_total", adapter="speak") == sum(u["prompt_tokens"] for u in adapter_usage)
    assert d("loraplex_completion_tokens_total", adapter="speak") == sum(u["completion_tokens"] for u in adapter_usage)
    assert d("loraplex_completion_tokens_total", adapter="base") == base_usage["completion_tokens"]
    assert d("loraplex_request_seconds_count", adapter="speak") == 4
    assert d("loraplex_request_seconds_sum", adapter="speak") > 0
    assert d("loraplex_time_to_first_token_seconds_count", adapter="speak") == 1  # streams only
    assert d("loraplex_adapter_residency_total", adapter="speak", result="miss") == 1  # one load ...
    assert d("loraplex_adapter_residency_total", adapter="speak", result="hit") == 3  # ... then resident
    assert d("loraplex_adapter_loads_total", adapter="speak", result="ok") == 1
    assert d("loraplex_adapter_load_seconds_count", adapter="speak") == 1
    # the cold start's stages: two names new to this gateway read from the registry ("speak", "speak@VERSION"),
    # the unknown ones not (they failed); one download, one engine load
    assert delta(before, after, "loraplex_cold_start_seconds_count", stage="resolve") == 2
    assert delta(before, after, "loraplex_cold_start_seconds_count", stage="download") == 1
    assert delta(before, after, "loraplex_cold_start_seconds_count", stage="engine_load") == 1
    tenant_labels = {dict(ls).get("adapter") for (n, ls) in after if dict(ls).get("tenant") == tenant}
    assert tenant_labels == {"speak", "base"}, tenant_labels  # no version, no "ghost": bounded label values


def test_quota_refusals_are_counted_under_the_adapter_name(stack, demo):
    tenant, key = new_tenant(stack, {"requests_per_minute": 1})
    version = upload(stack, key, "speak", demo.adapter_dirs["shout"])["version"]
    before = scrape(stack)
    with stack.client(key) as c:
        body = {"model": "speak", "prompt": demo_prompt("quota"), "max_tokens": 4, "temperature": 0}
        assert c.post("/v1/completions", json=body).status_code == 200
        assert c.post("/v1/completions", json=body).status_code == 429
        assert c.post("/v1/completions", json={**body, "model": f"speak@{version}"}).status_code == 429
        # a model that does not resolve is a 404 before any quota is charged
        assert c.post("/v1/completions", json={**body, "model": "speak@prod"}).status_code == 404
    after = scrape(stack)
    assert delta(before, after, "loraplex_rejected_total", tenant=tenant, adapter="speak", status="429",
                 reason="quota") == 2
    assert delta(before, after, "loraplex_requests_total", tenant=tenant, adapter="speak") == 1


def test_tenants_beyond_the_named_ones_share_one_series(stack):
    """A hundred tenants must not make a hundred sets of series: beyond the named (busiest) tenants, requests
    count under the tenant label `_other` with the adapter label `other`, through the real gateway."""
    from serving import metrics
    from serving.metric_labels import OTHER_TENANTS

    old = metrics.LABELS.tenants
    metrics.LABELS.tenants = len(metrics.LABELS.named()) + 1  # room for one more named tenant, the shared stack's
    try:
        tenants = [new_tenant(stack) for _ in range(3)]
        before = scrape(stack)
        for _name, key in tenants:
            with stack.client(key) as c:
                r = c.post("/v1/completions", json={"model": "base", "prompt": demo_prompt("bound"), "max_tokens": 2,
                                                     "temperature": 0})
                assert r.status_code == 200, r.text
        after = scrape(stack)
    finally:
        metrics.LABELS.tenants = old
    first, *rest = (name for name, _key in tenants)
    assert delta(before, after, "loraplex_requests_total", tenant=first, adapter="base", status="ok") == 1
    assert delta(before, after, "loraplex_requests_total", tenant=OTHER_TENANTS, adapter="base", status="ok") == 2
    assert not any(("tenant", name) in labels for name in rest for (_n, labels) in after)


def test_the_engine_tier_gauges_follow_an_adapter_while_its_request_runs(stack, demo):
    """serving/residency.py: `engine_active` counts an adapter while a request of it runs in the engine, and none
    once it ended; `engine` counts every adapter the engine holds (the same as loraplex_resident_adapters)."""
    _, key = new_tenant(stack)
    upload(stack, key, "tiered", demo.adapter_dirs["reverse"])

    def tier(sample, name, t):
        return sample[(name, frozenset({("tier", t)}))]

    body = {"model": "tiered", "prompt": demo_prompt("tier"), "max_tokens": 200, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with stack.client(key) as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: {"))  # generating: the adapter is held
        running = scrape(stack)
        for _ in lines:
            pass
    wait_until(lambda: stack.gateway.admission.idle, what="the request's end in the gateway")
    after = scrape(stack)
    assert tier(running, "loraplex_tier_adapters", "engine_active") >= 1
    assert tier(running, "loraplex_tier_bytes", "engine_active") > 0
    assert tier(after, "loraplex_tier_adapters", "engine_active") == 0
    assert tier(after, "loraplex_tier_bytes", "engine_active") == 0
    assert tier(after, "loraplex_tier_adapters", "engine") == after[("loraplex_resident_adapters", frozenset())] >= 1
