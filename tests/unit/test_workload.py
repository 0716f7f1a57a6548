"""The load-test workload and the hot-swap report's bookkeeping (no engines, no network)."""

from __future__ import annotations

import json
import random

import pytest

from loadtest.workload import (
    Workload,
    WorkloadError,
    from_env,
    make_prompt,
    parse_tenants,
    summarize,
    to_env,
    zipf_weights,
)


def test_zipf_weights_follow_one_over_rank_and_zero_is_uniform():
    w = zipf_weights(4, 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(2.0) and w[0] / w[3] == pytest.approx(4.0)
    assert zipf_weights(3, 0.0) == pytest.approx([1 / 3] * 3)
    with pytest.raises(WorkloadError, match="ZIPF"):
        zipf_weights(3, -1)


def test_tenant_rates_split_the_offered_rate_by_popularity():
    tenants = parse_tenants({"a": {"api_key": "k1", "model": "m"}, "b": {"api_key": "k2", "adapters": ["x", "y"]}})
    wl = Workload(tenants=tenants, rate=9.0, zipf=1.0)
    assert [t.model for t in tenants] == ["m", "x"]  # stack.json's form: the first adapter
    assert wl.tenant_rates() == pytest.approx([6.0, 3.0])


def test_parse_tenants_names_what_is_missing():
    with pytest.raises(WorkloadError, match="'a' has no api_key"):
        parse_tenants({"a": {"model": "m"}})
    with pytest.raises(WorkloadError, match="neither a model nor adapters"):
        parse_tenants({"a": {"api_key": "k"}})


def test_prompt_length_and_body():
    rng = random.Random(1)
    assert len(make_prompt(32, rng)) == 32
    wl = Workload(tenants=parse_tenants({"a": {"api_key": "k", "model": "m"}}), max_tokens=7)
    body = wl.body(wl.tenants[0], rng)
    assert body["stream"] and body["ignore_eos"] and body["max_tokens"] == 7 and body["model"] == "m"
    assert body["stream_options"] == {"include_usage": True}


def test_env_round_trip_and_stack_file(tmp_path):
    wl = Workload(tenants=parse_tenants({"a": {"api_key": "k", "model": "m"}}), rate=3.5, zipf=0.0, prompt_tokens=9,
                  max_tokens=5, samples=tmp_path / "s.jsonl")
    back, url = from_env(to_env(wl))
    assert url is None and back == wl
    stack = tmp_path / "stack.json"
    stack.write_text(json.dumps({"gateway_url": "http://127.0.0.1:8000",
                                 "tenants": {"acme": {"api_key": "k", "adapters": ["reverse"]}}}))
    wl2, url2 = from_env({"LORAPLEX_LOADTEST_STACK": str(stack)})
    assert url2 == "http://127.0.0.1:8000" and wl2.tenants[0].model == "reverse"
    with pytest.raises(WorkloadError, match="make up"):
        from_env({"LORAPLEX_LOADTEST_STACK": str(tmp_path / "missing.json")})
    with pytest.raises(WorkloadError, match="not a number"):
        from_env({**to_env(wl), "LORAPLEX_LOADTEST_RATE": "fast"})


def test_summarize_charges_catching_up_and_counts_only_served():
    samples = [
        {"tenant": "a", "sent": 100.0, "status": 200, "ttft": 0.1, "latency": 1.0, "tokens": 10},
        {"tenant": "a", "sent": 101.0, "status": 200, "ttft": 0.3, "latency": 3.0, "tokens": 10},  # ends at 104
        {"tenant": "b", "sent": 102.0, "status": 404, "ttft": None, "latency": 0.01, "tokens": 0},
        {"tenant": "b", "sent": 102.5, "status": 0, "ttft": None, "latency": 0.0, "tokens": 0},  # dropped
    ]
    s = summarize(samples)
    assert s["sent"] == 4 and s["ok"] == 2 and s["served_pct"] == 50.0
    assert s["req_per_s"] == pytest.approx(2 / 4.0) and s["tok_per_s"] == pytest.approx(20 / 4.0)
    assert s["ttft_p50_ms"] == 100.0 and s["ttft_p99_ms"] == 300.0 and s["latency_p99_ms"] == 3000.0
    assert summarize([])["req_per_s"] == 0.0 and summarize([])["ttft_p99_ms"] is None
